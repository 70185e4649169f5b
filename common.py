"""
Shared plumbing for the stage scripts: config parsing, device and dtype, seeding,
JSONL logging and the one-line log. Nothing here is part of the learning algorithms;
each script keeps its own math and its own training loop.
"""
import contextlib
import dataclasses
import difflib
import json
import math
import os
import random
import resource
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


# options that count passes, steps, examples or an interval: zero would train nothing yet
# save a model, or divide by zero
AT_LEAST_ONE = ("epochs", "max_iters", "iters", "batch_size", "minibatch_size", "update_epochs",
                "log_interval", "eval_interval", "eval_iters")


def setup(cfg):
    """Check the counting options and the temperature, seed everything, pick the device and
    the autocast context; print the choice once."""
    for name in AT_LEAST_ONE:
        if getattr(cfg, name, 1) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    if getattr(cfg, "temperature", 0) < 0:  # 0 is greedy decoding; below it, nonsense
        raise ConfigError(f"--temperature must be 0 (greedy) or more, got {cfg.temperature}")
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


def peak_memory(device):
    """The stage's peak memory as a line to print: on a GPU the most its tensors ever held
    (torch.cuda.max_memory_allocated); elsewhere the process's peak resident size, which
    also counts Python, PyTorch itself and the data."""
    if device == "cuda":
        return f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return f"peak memory {kib / (2**30 if sys.platform == 'darwin' else 2**20):.2f} GiB (whole process)"


@contextlib.contextmanager
def visiting(model, device, offload):
    """Run a frozen model on `device` inside the block. With offload it lives in CPU memory
    and visits the device only for the block: two copies over PCIe per visit instead of
    GPU memory held through the update, where the trained models need it."""
    if offload:
        model.to(device)
    try:
        yield model
    finally:
        if offload:
            model.to("cpu")


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
# statistics

def win_rate(scores_a, scores_b, z=1.96):
    """How often a beats b, paired (same prompt, same sample index): win 1, tie 0.5, loss 0.
    Returns (rate, lo, hi) with the Wilson score interval (95% for z=1.96), ties counted as
    half a win; a tie varies less than a coin flip, so the interval is slightly conservative.
    Unlike the normal approximation, it does not collapse to a point at 0% or 100%."""
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ValueError(f"need paired scores, got {len(scores_a)} and {len(scores_b)}")
    n = len(scores_a)
    rate = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores_a, scores_b)) / n
    center = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    # it lies in [0, 1] and contains the rate; min/max only absorb float rounding at 0 and 1
    return rate, max(0.0, min(center - half, rate)), min(1.0, max(center + half, rate))
