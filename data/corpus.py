"""
The pretraining corpus as the models read it: one token stream, its held-out tail, and
random windows of it. pretrain.py trains on it; PPO-ptx mixes it into RL (InstructGPT
eq. 2), and evaluate.py measures the alignment tax on its held-out part.
"""
import os

import numpy as np
import torch

from data.tokenizer import encode


def load_corpus(data_dir, enc):
    """The corpus as one token stream; the last 5% is held out for the validation loss.
    Later stages import this for the pretraining-mix term and the alignment tax."""
    path = os.path.join(data_dir, "pretrain.txt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; make it with: python -m data.generate")
    tokens = np.array(encode(enc, open(path, encoding="utf-8").read()), dtype=np.uint16)
    split = int(0.95 * len(tokens))
    return tokens[:split], tokens[split:]


def get_batch(tokens, batch_size, block_size, device):
    """Random windows of the token stream: inputs x and next-token targets y, (B, T) each."""
    starts = np.random.randint(0, len(tokens) - block_size - 1, size=batch_size)
    x = torch.from_numpy(np.stack([tokens[s:s + block_size] for s in starts]).astype(np.int64))
    y = torch.from_numpy(np.stack([tokens[s + 1:s + 1 + block_size] for s in starts]).astype(np.int64))
    return x.to(device), y.to(device)
