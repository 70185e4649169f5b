"""
Shared plumbing for the stage scripts: config parsing and the options' allowed ranges,
device and dtype, seeding, peak memory and offloading a frozen model, JSONL logging and the
one-line log, the check that stops a run before a NaN reaches its weights, and one-line
error messages. Nothing here is part of the learning algorithms; each script keeps its own
math and its own training loop.
"""
import contextlib
import dataclasses
import difflib
import json
import math
import os
import random
import re
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


# Mistakes a user can make (an option out of range, a missing or malformed file, a checkpoint
# of the wrong kind, a run that went non-finite) end a script with one line naming them and
# exit status 1; any other exception is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def one_line_errors(kind, error, tb):
    """sys.excepthook for the scripts (parse_config installs it)."""
    if issubclass(kind, USER_ERRORS):
        print(f"error: {error}", file=sys.stderr)
    elif issubclass(kind, KeyboardInterrupt):
        print("interrupted; files are written whole or not at all, so what is on disk is "
              "the last finished work", file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, tb)


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
                value = t(text)
            except ValueError:
                raise ConfigError(f"--{name} expects {word}, got {text!r}") from None
            if not math.isfinite(value):  # float("nan") and float("inf") parse
                raise ConfigError(f"--{name} expects a finite number, got {text!r}")
            return value
    return text  # str fields


def parse_config(cls, argv=None, gpu=None):
    """Build the dataclass `cls` from its defaults (the CPU preset), then the GPU preset
    `gpu` (a dict of overrides, applied when the chosen device is cuda), then every
    --name=value on the command line. Unknown names and wrong types raise ConfigError.
    Every script calls it first, so from here on a user's error prints as one line."""
    sys.excepthook = one_line_errors
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
# the allowed values of the options, by name, the same in every script that has the option

def at_least(lo):
    return (lambda x: x >= lo), f"at least {lo}"


def above(lo):
    return (lambda x: x > lo), f"more than {lo}"


def between(lo, hi):
    return (lambda x: lo <= x <= hi), f"between {lo} and {hi}"


def inside(lo, hi):
    return (lambda x: lo < x < hi), f"more than {lo} and less than {hi}"


def one_of(*choices):
    return (lambda x: x in choices), "one of " + ", ".join(choices)


OPTION_RANGES = {
    # counts, sizes and intervals: zero would train nothing yet save a model, or divide by zero
    **dict.fromkeys(["epochs", "max_iters", "iters", "update_epochs", "batch_size",
                     "minibatch_size", "ptx_batch_size", "gen_batch", "eval_iters",
                     "eval_interval", "log_interval", "eval_batches", "max_new_tokens",
                     "new_tokens", "n_layer", "n_head", "n_embd", "block_size", "kl_horizon",
                     "n_samples", "repeats", "train_steps", "n_docs", "n_sft", "n_sft_val",
                     "n_rm", "n_ppo", "n_val", "n_eval"], at_least(1)),
    # where 0 means none, or all, or never
    **dict.fromkeys(["warmup_iters", "n_eval_prompts", "n_prompts", "n_shots", "pairs_per_prompt",
                     "sample_every", "save_every", "ppo_iters", "max_rows", "n_rankings",
                     "n_other"],
                    at_least(0)),
    # data.hh's token limits: a row longer than these is dropped
    **dict.fromkeys(["max_prompt_tokens", "max_response_tokens"], at_least(1)),
    # coefficients: 0 switches a term off (beta 0: no KL penalty in PPO); below, nonsense
    **dict.fromkeys(["min_lr", "weight_decay", "ptx_coef", "beta", "lm_coef"], at_least(0)),
    # rates, clips and temperatures: at 0 nothing moves, or sampling divides by zero
    **dict.fromkeys(["lr", "vf_lr", "grad_clip", "max_grad_norm", "kl_target", "clip_value",
                     "temperature", "noise"], above(0)),
    **dict.fromkeys(["val_frac", "clip_eps", "sft_share", "rm_share"], inside(0, 1)),
    **dict.fromkeys(["gamma", "lam", "terse_share", "myth_rate"], between(0, 1)),
    "dropout": ((lambda x: 0 <= x < 1), "at least 0 and less than 1"),
    "start_prompt": at_least(0),             # an index: 0 is the first prompt
    "k": between(2, 9),                      # the paper ranked 4 to 9 responses
    "seed": between(0, 2**32 - 1),           # what numpy accepts
    "vocab_size": between(257, 65536),       # 256 bytes and EOS; the corpus is stored as uint16
    "split": one_of("eval", "val"),
    "preset": one_of("auto", "cpu", "gpu"),
    "tokenizer": one_of("gpt2", "bpe"),      # data.hh: GPT-2's encoding, or a BPE trained there
}


def check_options(cfg, **ranges):
    """Check every option of cfg that has an allowed range, in OPTION_RANGES or in `ranges`
    (a script's own, where it differs), and the device, before any work starts."""
    ranges = {**OPTION_RANGES, **ranges}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in ranges and not ranges[f.name][0](value):
            raise ConfigError(f"--{f.name} must be {ranges[f.name][1]}, got {value!r}")
    if hasattr(cfg, "device"):
        check_device(cfg.device)


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


def check_device(name):
    """--device names auto, cpu, cuda, cuda:N or mps, and one this machine has."""
    if name not in ("auto", "cpu", "mps") and not re.fullmatch(r"cuda(:\d+)?", name):
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device={name}, but this machine has no CUDA device; "
                          "use --device=auto or --device=cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise ConfigError("--device=mps, but this machine has no MPS device; use --device=auto")


_announced = set()


def setup(cfg, **ranges):
    """Check the options (check_options), seed everything, pick the device and the autocast
    context; print the choice once."""
    check_options(cfg, **ranges)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    autocast = autocast_for(device)
    if device not in _announced:
        _announced.add(device)
        print(f"device: {device}, dtype: {'bfloat16 autocast' if uses_bf16(device) else 'float32'}")
    return device, autocast


def uses_bf16(device):
    """bf16 autocast where the hardware multiplies bf16 natively: a GPU that has it, or a CPU
    with AVX512-BF16 or AMX (about 1.5 times fp32's training speed; elsewhere bf16 is emulated,
    and slower). RLHF_FP32=1 in the environment keeps every stage in fp32."""
    if os.environ.get("RLHF_FP32") == "1":
        return False
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    if device == "cpu":  # these checks are private to torch.cpu, and older versions lack them
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def autocast_for(device):
    """The autocast context every forward pass runs under: bf16 where uses_bf16, else none.
    Matrix multiplies run in bf16; the model takes its softmaxes and log-probs in fp32."""
    if uses_bf16(device):
        return torch.autocast(device, dtype=torch.bfloat16)
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
    try:
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):  # a failed write leaves nothing behind
            os.remove(tmp)


def eval_dir(split):
    """Where evaluate.py and bestofn.py write: out/eval for the evaluation prompts,
    out/eval_val for the validation prompts, so tuning never overwrites the evaluation."""
    return "out/eval" if split == "eval" else f"out/eval_{split}"


def log_path(checkpoint):
    """Where a stage logs its metrics: beside its checkpoint, out/sft.pt -> out/sft_log.jsonl."""
    return os.path.splitext(checkpoint)[0] + "_log.jsonl"


class Logger:
    """One line per interval on stdout and the same numbers as a JSONL row. The rows go to
    path + ".tmp" as they come, and close() moves that file over `path` when the run has
    finished: a run that fails or is stopped leaves the last finished run's log in place."""

    def __init__(self, path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self.f = open(path + ".tmp", "w")
        self.t0 = time.time()

    def log(self, step, line=True, **metrics):
        row = {"step": step, "time": round(time.time() - self.t0, 2), **metrics}
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        if line:
            parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in metrics.items()]
            print(f"step {step} | " + " | ".join(parts), flush=True)

    def close(self):
        self.f.close()
        os.replace(self.path + ".tmp", self.path)


def check_finite(where, values):
    """Stop a run before a NaN or inf reaches its weights, its log or a checkpoint. `values`
    maps names to tensors or numbers; the training loops pass the loss and the gradient norm
    (clip_grad_norm_ returns it, measured before clipping) before the optimiser step."""
    for name, value in values.items():
        value = torch.as_tensor(value)
        if not torch.isfinite(value).all():
            shown = f"{value.item()}" if value.numel() == 1 else "not finite"
            raise FloatingPointError(f"{where}: {name} is {shown}; stopped without saving, so "
                                     "any checkpoint already on disk is the last good one")


# -----------------------------------------------------------------------------
# statistics

def wilson(rate, n, z=1.96):
    """The Wilson score interval (95% for z=1.96) of a rate measured on n cases: (lo, hi).
    Unlike the normal approximation, it does not collapse to a point at 0% or 100%."""
    center = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    # it lies in [0, 1] and contains the rate; min/max only absorb float rounding at 0 and 1
    return max(0.0, min(center - half, rate)), min(1.0, max(center + half, rate))


def win_rate(scores_a, scores_b, z=1.96):
    """How often a beats b, paired (same prompt, same sample index): win 1, tie 0.5, loss 0.
    Returns (rate, lo, hi) with the Wilson interval, ties counted as half a win; a tie
    varies less than a coin flip, so the interval is slightly conservative."""
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ValueError(f"need paired scores, got {len(scores_a)} and {len(scores_b)}")
    n = len(scores_a)
    rate = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores_a, scores_b)) / n
    return (rate, *wilson(rate, n, z))
