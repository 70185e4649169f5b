r"""
Anthropic's HH-RLHF (Bai et al. 2022) as a data directory the stage scripts read, in place
of the world's out/data/.

Each HH row is a pair of whole transcripts that agree up to the last assistant turn:

  {"chosen":   "\n\nHuman: What do owls eat?\n\nAssistant: Mostly mice and voles.",
   "rejected": "\n\nHuman: What do owls eat?\n\nAssistant: Seeds."}

The shared part is the prompt, the two last assistant turns the chosen and rejected
responses. The prompt is stored without its first "\n\nHuman: " and its last
"\n\nAssistant:", which the chat template puts back; a multi-turn prompt keeps its inner
turns ("Q1\n\nAssistant: A1\n\nHuman: Q2"). Rows that cannot be read this way are
reported by file and line, counted, listed in skipped.jsonl and left out, never silently.

Writes into out_dir, the same files data.generate writes for the world:
  sft.jsonl, sft_val.jsonl      {"prompt", "completion"}: the chosen responses, for SFT
  comparisons.jsonl             {"prompt", "chosen", "rejected"}: reward.py and dpo.py; the
                                responses end in "<|endoftext|>", as the world's comparisons
                                of SFT samples that ended do, so the reward model reads its
                                score at EOS, where PPO's responses end
  ppo_prompts.jsonl             {"prompt"}: PPO's prompts
  val_prompts.jsonl, val_pairs.jsonl     held out from the train files, to tune on
  eval_prompts.jsonl, eval_pairs.jsonl   from the test files, for evaluate.py
  pretrain.txt                  the chosen conversations of the SFT and reward-model rows, a
                                stand-in for GPT-2's pretraining text (PPO-ptx, alignment tax)
  dataset.json                  the description: chat template, tokenizer, no gold labeler
  tokenizer.tiktoken            with --tokenizer=bpe only
The SFT, reward-model and PPO rows are disjoint, as InstructGPT's prompt sets are.

Run:
  python -m data.hh --train=hh/helpful-base/train.jsonl.gz --test=hh/helpful-base/test.jsonl.gz
  python -m data.hh --train=a.jsonl.gz,b.jsonl.gz --max_rows=20000   # several files, a subset
  python -m data.hh --train=tests/data/hh_tiny.jsonl --tokenizer=bpe --vocab_size=512  # offline

--tokenizer=gpt2 (the default, for GPT-2's weights) uses tiktoken's GPT-2 encoding, which
tiktoken downloads once; --tokenizer=bpe trains the world's byte-level BPE on the converted
text instead, offline, for a model trained from scratch or a test.

Simplified: rows whose prompt or responses are longer than the token limits are dropped,
not truncated; duplicate prompts are kept; HH's red-team file has another format and is
not read.
"""
import collections
import dataclasses
import gzip
import json
import os
import random
import sys

from common import ConfigError, check_options, parse_config, write_jsonl
from data.loader import DESCRIPTION, DataError
from data.tokenizer import EOS, encode, get_tokenizer, save_ranks, train_bpe

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
TEMPLATE = HUMAN + " {prompt}" + ASSISTANT  # HH's own format; the response follows after a space


@dataclasses.dataclass
class Config:
    train: str = ""                  # HH train file(s), .jsonl or .jsonl.gz, comma-separated
    test: str = ""                   # HH test file(s): evaluation prompts and pairs ("": use val)
    out_dir: str = "out/hh"
    tokenizer: str = "gpt2"          # gpt2: tiktoken's GPT-2 encoding; bpe: train one here, offline
    vocab_size: int = 2048           # with --tokenizer=bpe
    max_prompt_tokens: int = 256     # longer rows are dropped (and counted)
    max_response_tokens: int = 128   # EOS included
    sft_share: float = 0.3           # of the train rows: SFT demonstrations,
    rm_share: float = 0.4            # comparisons (reward model, DPO); the rest: PPO prompts
    val_frac: float = 0.05           # train rows held out for validation
    max_rows: int = 0                # read at most this many good train rows (0: all)
    seed: int = 1337                 # the shuffle before the split


def split_transcript(text):
    """'\\n\\nHuman: ...\\n\\nAssistant: reply' -> (prompt, reply): the prompt is everything between
    the first Human marker and the last Assistant marker. ValueError if that is not the shape."""
    if not text.startswith(HUMAN):
        raise ValueError("does not start with '\\n\\nHuman:'")
    i = text.rfind(ASSISTANT)
    if i < 0:
        raise ValueError("has no '\\n\\nAssistant:' turn")
    prompt, reply = text[len(HUMAN):i].strip(), text[i + len(ASSISTANT):].strip()
    if HUMAN in reply:
        raise ValueError("ends with a Human turn, not an Assistant one")
    if not prompt:
        raise ValueError("has an empty prompt")
    return prompt, reply


def convert_row(row):
    """One HH row -> (prompt, chosen, rejected), or ValueError saying what is wrong with it."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for field in ("chosen", "rejected"):
        if not isinstance(row.get(field), str):
            raise ValueError(f"field {field!r} is missing or not a string")
    try:
        prompt, chosen = split_transcript(row["chosen"])
        prompt_r, rejected = split_transcript(row["rejected"])
    except ValueError as e:
        raise ValueError(f"a transcript {e}") from None
    if prompt != prompt_r:
        raise ValueError("chosen and rejected differ before the last Assistant turn")
    if not chosen or not rejected:
        raise ValueError("empty chosen or rejected response")
    if chosen == rejected:
        raise ValueError("chosen and rejected responses are identical: no preference")
    return prompt, chosen, rejected


def read_hh(paths):
    """Every non-blank line of the files (gzipped or not): good (prompt, chosen, rejected)
    triples, and {"file", "line", "reason"} for each bad one (a line that is not UTF-8 too)."""
    good, bad = [], []
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:  # bytes: a line that is not UTF-8 is one bad row
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                    if not line.strip():
                        continue
                    good.append(convert_row(json.loads(line)))
                except UnicodeDecodeError as e:
                    bad.append({"file": path, "line": lineno,
                                "reason": f"not UTF-8 text: byte {raw[e.start]:#04x} at column {e.start + 1}"})
                except json.JSONDecodeError as e:
                    bad.append({"file": path, "line": lineno,
                                "reason": f"not valid JSON: {e.msg} (column {e.colno})"})
                except ValueError as e:
                    bad.append({"file": path, "line": lineno, "reason": str(e)})
    return good, bad


def report(bad, kind, n_shown=10):
    """Print the bad rows by file and line (the first n_shown) and their count by reason."""
    if not bad:
        return
    for b in bad[:n_shown]:
        print(f"  skipped {b['file']}:{b['line']}: {b['reason']}")
    if len(bad) > n_shown:
        print(f"  ... and {len(bad) - n_shown} more")
    counts = collections.Counter(b["reason"].split(": ")[0] for b in bad)  # JSON errors as one
    print(f"{len(bad)} bad {kind} rows skipped: " + "; ".join(f"{n} {r}" for r, n in counts.most_common()))


def fits(enc, triple, cfg):
    """Whether the chat-formatted prompt and both responses (with EOS) are within the limits."""
    prompt, chosen, rejected = triple
    n_prompt = len(encode(enc, TEMPLATE.replace("{prompt}", prompt)))
    n_response = max(len(encode(enc, " " + chosen)), len(encode(enc, " " + rejected))) + 1
    return n_prompt <= cfg.max_prompt_tokens and n_response <= cfg.max_response_tokens


def main(cfg):
    check_options(cfg)
    if not cfg.train:
        raise ConfigError("--train: the HH-RLHF file(s) to convert, e.g. "
                          "--train=hh/helpful-base/train.jsonl.gz (README, 'Real model')")
    if cfg.sft_share + cfg.rm_share >= 1:
        raise ConfigError(f"--sft_share={cfg.sft_share} and --rm_share={cfg.rm_share} leave no "
                          "rows for PPO: together they must be less than 1")
    train_files = [p for p in cfg.train.split(",") if p]
    test_files = [p for p in cfg.test.split(",") if p]
    for path in train_files + test_files:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found; the README's 'Real model' section shows "
                                    "how to download HH-RLHF")
    train, bad = read_hh(train_files)
    report(bad, "train")
    test, bad_test = read_hh(test_files)
    report(bad_test, "test")
    os.makedirs(cfg.out_dir, exist_ok=True)
    write_jsonl(os.path.join(cfg.out_dir, "skipped.jsonl"), bad + bad_test)

    # the description first: the tokenizer it names is the one the limits are counted in
    tokenizer = "gpt2"
    if cfg.tokenizer == "bpe":
        text = "\n".join(TEMPLATE.replace("{prompt}", p) + f" {c} {r}" for p, c, r in train)
        save_ranks(train_bpe(text, cfg.vocab_size), os.path.join(cfg.out_dir, "tokenizer.tiktoken"))
        tokenizer = "tokenizer.tiktoken"
    desc = {"name": "Anthropic/hh-rlhf", "source": train_files + test_files,
            "chat_template": TEMPLATE, "tokenizer": tokenizer, "gold_labeler": False}
    with open(os.path.join(cfg.out_dir, DESCRIPTION), "w") as f:
        json.dump(desc, f, indent=1)
    enc = get_tokenizer(cfg.out_dir)

    n_read = len(train)
    train = [t for t in train if fits(enc, t, cfg)]
    test = [t for t in test if fits(enc, t, cfg)]
    print(f"{len(train)} of {n_read} good train rows within {cfg.max_prompt_tokens} prompt and "
          f"{cfg.max_response_tokens} response tokens; {len(test)} test rows")
    random.Random(cfg.seed).shuffle(train)
    train = train[:cfg.max_rows] if cfg.max_rows else train
    n_val = max(1, round(cfg.val_frac * len(train)))
    val, rest = train[:n_val], train[n_val:]
    n_sft, n_rm = round(cfg.sft_share * len(rest)), round(cfg.rm_share * len(rest))
    sft, rm, ppo = rest[:n_sft], rest[n_sft:n_sft + n_rm], rest[n_sft + n_rm:]
    if not test:
        print("no --test rows: the evaluation files hold the validation rows")
        test = val
    if not all((sft, rm, ppo)):
        raise DataError(f"{cfg.train}: too few usable rows to split: {len(sft)} SFT, {len(rm)} "
                        f"comparisons, {len(ppo)} PPO")

    def write(name, rows):
        write_jsonl(os.path.join(cfg.out_dir, name), rows)

    write("sft.jsonl", [{"prompt": p, "completion": c} for p, c, _ in sft])
    write("sft_val.jsonl", [{"prompt": p, "completion": c} for p, c, _ in val])
    def pairs(rows):
        return [{"prompt": p, "chosen": c + EOS, "rejected": r + EOS} for p, c, r in rows]

    write("comparisons.jsonl", pairs(rm))
    write("ppo_prompts.jsonl", [{"prompt": p} for p, _, _ in ppo])
    for split, rows in (("val", val), ("eval", test)):
        write(f"{split}_prompts.jsonl", [{"prompt": p} for p, _, _ in rows])
        write(f"{split}_pairs.jsonl", pairs(rows))
    path = os.path.join(cfg.out_dir, "pretrain.txt")
    with open(path + ".tmp", "w", encoding="utf-8") as f:  # then renamed: never half a corpus
        f.write("".join(TEMPLATE.replace("{prompt}", p) + f" {c}{EOS}" for p, c, _ in sft + rm))
    os.replace(path + ".tmp", path)
    print(f"wrote {cfg.out_dir}: {len(sft)} demonstrations, {len(rm)} comparisons, {len(ppo)} PPO "
          f"prompts, {len(val)} validation and {len(test)} evaluation rows; tokenizer {enc.name}, "
          f"chat template {TEMPLATE!r}")
    return desc


if __name__ == "__main__":
    main(parse_config(Config, sys.argv[1:]))
