"""
GPT-2's own weights, from a Hugging Face download: a directory with config.json and
model.safetensors or pytorch_model.bin. Nothing is downloaded here; the README shows the
one command that does ("Real model").

With pos_emb="learned" and gelu="tanh" our GPT (model.py) is GPT-2's architecture exactly,
so reading the weights is bookkeeping: GPT-2's parameter names are ours (nanoGPT kept them)
less a "transformer." prefix, and its Conv1D layers store their weights transposed. The
result is a checkpoint dict in checkpoint.py's format, so load_checkpoint, and with it
every --init, takes such a directory as it takes a checkpoint file.

Simplified (exercises): only GPT-2 itself is read (no GPT-Neo, no untied unembedding); a
sharded download (model-00001-of-0000N.safetensors) is not read; the safetensors reader
loads the whole file into memory rather than mapping it.
"""

import json
import os
import sys
from dataclasses import asdict

import torch

from checkpoint import load_checkpoint
from model import GPTConfig

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path):
    """{name: tensor} from a .safetensors file, with json and torch alone. The format: the
    header's size as 8 little-endian bytes, the JSON header {name: {"dtype", "shape",
    "data_offsets": [begin, end]}} with offsets into the bytes after it, then the raw
    little-endian tensor data."""
    if sys.byteorder != "little":
        raise ValueError(f"{path}: safetensors data is little-endian; this machine is not")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not a safetensors file ({e})") from e
        data = bytearray(os.path.getsize(path) - 8 - n)  # writable, so tensors can share it
        f.readinto(data)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info.get('dtype')!r}, not one this reader knows")
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        count = (end - begin) // dtype.itemsize
        flat = torch.frombuffer(data, dtype=dtype, count=count, offset=begin) if count else \
            torch.empty(0, dtype=dtype)
        tensors[name] = flat.view(info["shape"])
    return tensors


def read_gpt2(path):
    """A Hugging Face GPT-2 directory as a checkpoint dict of ours (as load_checkpoint reads
    them). GPT-2's names are ours (nanoGPT kept them), less a "transformer." prefix; its
    Conv1D layers store weights as (in, out) where nn.Linear has (out, in), so those are
    transposed; the causal-mask buffers of old files are not weights and are skipped."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory: no config.json")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            hf = json.load(f)
    except ValueError as e:  # not JSON, or not UTF-8
        raise ValueError(f"{cfg_path} is not a JSON file ({e})") from None
    if not isinstance(hf, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object")
    if hf.get("model_type") != "gpt2":
        raise ValueError(f"{cfg_path}: model_type is {hf.get('model_type')!r}; only 'gpt2' is read")
    gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}.get(
        hf.get("activation_function", "gelu_new"))
    # settings of Hugging Face's GPT2Config that this GPT does not have
    unsupported = [k for k, fine in (
        ("activation_function", gelu is not None),
        ("n_inner", hf.get("n_inner") in (None, 4 * hf.get("n_embd", 0))),
        ("scale_attn_weights", hf.get("scale_attn_weights", True)),
        ("scale_attn_by_inverse_layer_idx", not hf.get("scale_attn_by_inverse_layer_idx")),
        ("add_cross_attention", not hf.get("add_cross_attention")),
        ("tie_word_embeddings", hf.get("tie_word_embeddings", True))) if not fine]
    if unsupported:
        raise ValueError(f"{cfg_path}: unsupported settings {', '.join(unsupported)}")
    try:  # a missing or impossible size is named here, not met as a shape error later
        config = GPTConfig(vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx")),
                           n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                           bias=True, pos_emb="learned", gelu=gelu,
                           ln_eps=hf.get("layer_norm_epsilon", 1e-5))
    except KeyError as e:
        raise ValueError(f"{cfg_path}: no {e.args[0]!r}") from None
    except ValueError as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    if os.path.exists(os.path.join(path, "model.safetensors")):
        weights = read_safetensors(os.path.join(path, "model.safetensors"))
    elif os.path.exists(os.path.join(path, "pytorch_model.bin")):
        weights = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu",
                             weights_only=True)
    else:
        raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin "
                                "(a sharded download is not read)")
    state = {}
    for name, tensor in weights.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue  # mask buffers; the unembedding is tied to wte, checked below
        if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
        state[name] = tensor.float()
    head = weights.get("lm_head.weight")
    if head is not None and "wte.weight" in state and not torch.equal(head.float(), state["wte.weight"]):
        raise ValueError(f"{path}: lm_head.weight differs from wte.weight; only tied GPT-2s are read")
    if "wte.weight" in state:
        state["lm_head.weight"] = state["wte.weight"]  # our state dict names the tied weight twice
    return {"model": state, "model_config": asdict(config), "train_config": {"init": path},
            "step": 0, "tokenizer": None}


def load_gpt2(path, device="cpu", dropout=0.0):
    """Our GPT, in eval mode, with the weights of a Hugging Face GPT-2 directory."""
    return load_checkpoint(path, device, dropout=dropout)[0]
