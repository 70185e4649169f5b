"""
Checkpoints: one format for every stage, so any stage can start from any other. A
checkpoint is a dict of tensors and plain data (the weights, model.GPTConfig as a dict,
the stage's config, its step and the tokenizer's name), written whole or not at all and
never with a non-finite weight; loading refuses, by name, a file that is not one, a
checkpoint of another tokenizer, and one of the wrong kind (a reward model where a policy
is needed, or the reverse). load_checkpoint also takes a Hugging Face GPT-2 directory
(gpt2_weights.py), a language model.
"""

import os
import pickle
from dataclasses import asdict

import torch

from model import GPT, GPTConfig


def save_checkpoint(path, model, train_config, step, tokenizer, **extra):
    """Write atomically: a crash mid-save leaves the old checkpoint, never half of a new one,
    and non-finite weights are refused. Everything saved must be tensors or plain Python
    data, so loading can use weights_only."""
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile, keeping key names clean
    state = model.state_dict()
    for name, tensor in state.items():  # a NaN never reaches the disk
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FloatingPointError(f"not saving {path}: weight {name} is not finite at step "
                                     f"{step} (a learning rate too large?); the file on disk, "
                                     "if any, is the last good one")
    ckpt = {"model": state, "model_config": asdict(model.config),
            "train_config": train_config, "step": step, "tokenizer": tokenizer, **extra}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"  # same directory, so os.replace is a rename on one filesystem
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # a save that failed or was interrupted leaves nothing behind
            os.remove(tmp)


def load_checkpoint(path, device="cpu", make_cmd=None, tokenizer=None, scalar_head=None,
                    dropout=None, kind=None):
    """Returns (model in eval mode on device, checkpoint dict). kind="language model" or
    "reward model" refuses a checkpoint of the other kind, naming it and make_cmd, before
    any shape error could. scalar_head=True on an LM checkpoint keeps the body and starts a
    fresh score head (SFT -> reward model). `path` may also be a Hugging Face GPT-2
    directory (gpt2_weights.read_gpt2), a language model."""
    if not os.path.exists(path):
        msg = f"no checkpoint at {path}"
        raise FileNotFoundError(msg + (f"; make it with: {make_cmd}" if make_cmd else ""))
    if os.path.isdir(path):
        # a Hugging Face GPT-2 download; it does not record its tokenizer (the caller checks
        # that the vocabulary sizes agree). Imported here, not above: gpt2_weights.py builds
        # on this file, and a model read from checkpoint files needs nothing but torch.
        from gpt2_weights import read_gpt2
        ckpt = read_gpt2(path)
    else:
        try:
            # weights_only: a checkpoint is data; unpickling arbitrary objects could run code
            ckpt = torch.load(path, map_location=device, weights_only=True)
        except pickle.UnpicklingError as e:  # torch's own message suggests weights_only=False: no
            raise ValueError(f"{path} is not a checkpoint of tensors and plain data, the only "
                             "kind this code loads (it never runs code from a file)") from e
        except Exception as e:
            raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from e
        if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
            raise ValueError(f"{path} is not a checkpoint: expected a dict with 'model' and 'model_config'")
        if tokenizer is not None and ckpt.get("tokenizer") != tokenizer:
            raise ValueError(f"{path} was trained with tokenizer {ckpt.get('tokenizer')!r}, "
                             f"but this run uses {tokenizer!r}")
    try:
        config = GPTConfig(**ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its model_config cannot build a model: {e}") from e
    saved_scalar = config.scalar_head
    saved_kind = "reward model" if saved_scalar else "language model"
    if kind is not None and kind != saved_kind:
        raise ValueError(f"{path} is a {saved_kind}; this stage needs a {kind}"
                         + (f", made by: {make_cmd}" if make_cmd else ""))
    if dropout is not None:  # fine-tuning may use another dropout than pretraining did
        config.dropout = dropout
    if scalar_head is not None:
        config.scalar_head = scalar_head
    model = GPT(config)
    state = ckpt["model"]
    head_keys = {"lm_head.weight", "score_head.weight", "score_head.bias"}
    allowed_missing = set()
    if config.scalar_head != saved_scalar:
        # a different head: load the body only; the new head keeps its init
        # (a small random score head, or an lm_head tied to the loaded wte)
        state = {k: v for k, v in state.items() if k not in head_keys}
        allowed_missing = head_keys
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, AttributeError) as e:  # shape mismatches, or not a state dict
        raise ValueError(f"{path}: weights do not fit the model config: {e}") from e
    missing = [k for k in missing if k not in allowed_missing]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the model config "
                         f"(missing {missing}, unexpected {unexpected})")
    return model.to(device).eval(), ckpt
