"""
The pretraining corpus as the models read it: one token stream, its held-out tail, and
random windows of it. pretrain.py trains on it; PPO-ptx mixes it into RL (InstructGPT
eq. 2), and evaluate.py measures the alignment tax on its held-out part.
"""
import os

import numpy as np
import torch

from data.loader import DataError, decode
from data.tokenizer import encode


def load_corpus(data_dir, enc, block_size=None):
    """The corpus as one token stream; the last 5% is held out for the validation loss.
    Later stages import this for the pretraining-mix term and the alignment tax. With
    block_size, both parts must hold a window of block_size + 1 tokens."""
    path = os.path.join(data_dir, "pretrain.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; make it with: python -m data.generate")
    with open(path, "rb") as f:
        tokens = np.array(encode(enc, decode(f.read(), path)), dtype=np.uint16)
    split = int(0.95 * len(tokens))
    if block_size is not None and len(tokens) - split < block_size + 2:
        raise DataError(f"{path}: {len(tokens):,} tokens, too few for windows of block_size "
                        f"{block_size}: its held-out 5% must hold more than {block_size + 1}")
    return tokens[:split], tokens[split:]


def get_batch(tokens, batch_size, block_size, device):
    """Random windows of the token stream: inputs x and next-token targets y, (B, T) each."""
    if len(tokens) < block_size + 2:
        raise ValueError(f"a stream of {len(tokens)} tokens holds no window of block_size + 1 = "
                         f"{block_size + 1}: the pretraining text is too short for the model")
    starts = np.random.randint(0, len(tokens) - block_size - 1, size=batch_size)
    x = torch.from_numpy(np.stack([tokens[s:s + block_size] for s in starts]).astype(np.int64))
    y = torch.from_numpy(np.stack([tokens[s + 1:s + 1 + block_size] for s in starts]).astype(np.int64))
    return x.to(device), y.to(device)
