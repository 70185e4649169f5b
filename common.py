"""
Shared plumbing for the stage scripts: config parsing, device and dtype, seeding,
JSONL logging and the one-line log. Nothing here is part of the learning algorithms;
each script keeps its own math and its own training loop.
"""
import contextlib
import dataclasses
import difflib
import json
import os
import random
import sys
import time

import numpy as np
import torch

OUT_DIR = "out"


# -----------------------------------------------------------------------------
# config: a @dataclass at the top of each script, overridden by --name=value

class ConfigError(ValueError):
    pass


def _convert(name, text, typ):
    """Turn the command-line string `text` into the field's type, or say why not."""
    if typ is bool or typ == "bool":
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{name} expects true or false, got {text!r}")
    for t, word in ((int, "an integer"), (float, "a number")):
        if typ is t or typ == t.__name__:
            try:
                return t(text)
            except ValueError:
                raise ConfigError(f"--{name} expects {word}, got {text!r}") from None
    return text  # str fields


def parse_config(cls, argv=None, gpu=None):
    """Build the dataclass `cls` from its defaults (the CPU preset), then the GPU preset
    `gpu` (a dict of overrides, applied when the chosen device is cuda), then every
    --name=value on the command line. Unknown names and wrong types raise ConfigError."""
    argv = sys.argv[1:] if argv is None else argv
    fields = {f.name: f for f in dataclasses.fields(cls)}
    given = {}
    for arg in argv:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"arguments look like --name=value, got {arg!r}")
        name, text = arg[2:].split("=", 1)
        name = name.replace("-", "_")
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise ConfigError(f"unknown option --{name}{hint}; options are: "
                              + ", ".join(fields))
        given[name] = _convert(name, text, fields[name].type)
    cfg = cls(**given)
    if gpu and "device" in fields and resolve_device(cfg.device) == "cuda":
        for name, value in gpu.items():
            if name not in fields:
                raise ConfigError(f"the GPU preset sets unknown option {name!r}")
            if name not in given:
                setattr(cfg, name, value)
    return cfg


# -----------------------------------------------------------------------------
# device, dtype, seed

def resolve_device(name="auto"):
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


_announced = set()


# options that count passes, steps or examples: zero would train nothing yet save a model
AT_LEAST_ONE = ("epochs", "max_iters", "iters", "batch_size", "minibatch_size", "update_epochs")


def setup(cfg):
    """Check the counting options, seed everything, pick the device and the autocast context;
    print the choice once."""
    for name in AT_LEAST_ONE:
        if getattr(cfg, name, 1) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    autocast = autocast_for(device)
    if device not in _announced:
        _announced.add(device)
        print(f"device: {device}, dtype: {'bfloat16 autocast' if bf16 else 'float32'}")
    return device, autocast


def autocast_for(device):
    """bf16 autocast on a GPU that has it; plain fp32 everywhere else."""
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -----------------------------------------------------------------------------
# files

def out_path(*parts):
    return os.path.join(OUT_DIR, *parts)


def write_jsonl(path, rows):
    """Write rows atomically: a reader never sees half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


class Logger:
    """One line per interval on stdout and the same numbers as a JSONL row."""

    def __init__(self, path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.f = open(path, "w")
        self.t0 = time.time()

    def log(self, step, line=True, **metrics):
        row = {"step": step, "time": round(time.time() - self.t0, 2), **metrics}
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        if line:
            parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in metrics.items()]
            print(f"step {step} | " + " | ".join(parts), flush=True)


# -----------------------------------------------------------------------------
# prompts in, text out: batching for generation

def encode_prompts(enc, prompts, device):
    """Chat-format and tokenize prompts, LEFT-padded so every row's last prompt token sits
    in the same column and generation continues all rows at once.
    Returns ids (B, T) and attention_mask (B, T), 1 for real tokens."""
    from data.tokenizer import encode
    from data.world import chat
    rows = [encode(enc, chat(p)) for p in prompts]
    T = max(len(r) for r in rows)
    pad = enc.eot_token
    ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def decode_responses(enc, new_tokens, eos_id):
    """Sampled tokens to text, cut after the first EOS; a response that ended keeps the
    literal "<|endoftext|>" at its end, which is how the gold labeler knows it ended."""
    out = []
    for row in new_tokens.tolist():
        if eos_id in row:
            row = row[: row.index(eos_id) + 1]
        out.append(enc.decode(row).lstrip(" "))
    return out


@torch.no_grad()
def sample_responses(model, enc, prompts, max_new_tokens, temperature=1.0, batch_size=64,
                     device="cpu", top_k=None, progress=False):
    """Generate one response per prompt, in batches, with the KV cache."""
    from tqdm import tqdm
    model.eval()
    out = []
    starts = range(0, len(prompts), batch_size)
    for i in tqdm(starts, desc="sampling", leave=False, disable=not progress):
        ids, mask = encode_prompts(enc, prompts[i:i + batch_size], device)
        with autocast_for(device):
            new = model.generate(ids, mask, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_k=top_k, eos_id=enc.eot_token)
        out += decode_responses(enc, new, enc.eot_token)
    return out


def encode_pairs(enc, prompts, responses, device, block_size, add_eos=False):
    """Tokenize chat-formatted (prompt, response) pairs, LEFT-padded so that every row ends
    in the last column: a reward model reads its score at [:, -1].
    A response that ended carries the text "<|endoftext|>", which becomes the EOS token;
    add_eos=True appends it (SFT demonstrations are stored without it).
    Returns ids, attention_mask, response_mask, each (B, T); response_mask is 1 on the
    response's tokens (EOS included), 0 on the prompt and the padding."""
    from data.tokenizer import encode
    from data.world import chat
    rows = []
    for prompt, response in zip(prompts, responses):
        p = encode(enc, chat(prompt))
        r = encode(enc, " " + response) + ([enc.eot_token] if add_eos else [])
        if len(p) + len(r) > block_size:
            raise ValueError(f"prompt + response is {len(p) + len(r)} tokens, over the model's "
                             f"block_size {block_size}: {prompt[:60]!r}...")
        rows.append((p, r))
    T = max(len(p) + len(r) for p, r in rows)
    ids, attn, resp = [], [], []
    for p, r in rows:
        pad = T - len(p) - len(r)
        ids.append([enc.eot_token] * pad + p + r)
        attn.append([0] * pad + [1] * (len(p) + len(r)))
        resp.append([0] * (pad + len(p)) + [1] * len(r))
    as_tensor = lambda x: torch.tensor(x, device=device)
    return as_tensor(ids), as_tensor(attn), as_tensor(resp)


def gold_check(models, enc, data_dir, n_prompts, max_new_tokens, device, seed, logger=None, step=0):
    """Each model of `models` (name -> model) answers the first n_prompts held-out evaluation
    prompts at temperature 1, from the same seed, and the gold labeler's report is printed:
    the end-of-stage check that a stage did what it should. Returns the prompts and the
    last model's responses."""
    from data import world
    from data.loader import load_jsonl
    rows = load_jsonl(os.path.join(data_dir, "eval_prompts.jsonl"), "prompts")
    prompts = [r["prompt"] for r in rows[:n_prompts]]
    for name, model in models.items():
        torch.manual_seed(seed)  # same sampling noise for every model
        responses = sample_responses(model, enc, prompts, max_new_tokens, device=device)
        report = world.report(prompts, responses)
        print(f"\n{name} model on {len(prompts)} evaluation prompts (temperature 1):")
        print(world.format_report(report))
        if logger:
            logger.log(step, line=False, model=name, gold=report)
    for p, r in list(zip(prompts, responses))[:3]:
        print(f"--- {p!r}\n    {name} -> {r!r}")
    return prompts, responses
