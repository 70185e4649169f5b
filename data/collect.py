"""
Comparison collection: the labelers' job (InstructGPT §3.4).

For each reward-model prompt, the SFT model samples K responses at temperature 1, and a
simulated labeler ranks them (data/labelers.py: Bradley-Terry noise on the gold score,
ties where it sees no difference). Writes out/comparisons.jsonl, one
{"prompt", "responses", "ranks"} row per prompt, best first, equal ranks for a tie.
reward.py and dpo.py only read such files, so a real human-preference data set in the
same format (or a {"prompt", "chosen", "rejected"} pairs file) can take its place.

It also has a second, independent labeler rank the same samples and prints how often the
two agree: the paper's inter-labeler agreement (72.6%), measured on real SFT samples.

Run: python -m data.collect            (K = 6; --k=9 for the paper's largest)
"""
import dataclasses
import os
import random
import sys
import time

from checkpoint import load_checkpoint
from common import parse_config, setup, write_jsonl
from data import labelers
from data.chat import row_check, sample_responses
from data.loader import load_jsonl
from data.tokenizer import get_tokenizer


@dataclasses.dataclass
class Config:
    data_dir: str = "out/data"
    policy: str = "out/sft.pt"       # made by: python sft.py
    out: str = "out/comparisons.jsonl"
    n_prompts: int = 0               # 0: every prompt of rm_prompts.jsonl; else its first n
    k: int = 6                       # responses per prompt, 4 to 9 as in the paper
    temperature: float = 1.0
    max_new_tokens: int = 48
    batch_size: int = 512            # sequences generated at once (finished ones leave the batch)
    noise: float = labelers.NOISE    # labeler noise, set for ~73% agreement on ranked pairs
    device: str = "auto"
    seed: int = 1337


if __name__ == "__main__":
    cfg = parse_config(Config, sys.argv[1:])
    device, _ = setup(cfg)
    enc = get_tokenizer(cfg.data_dir)
    model, _ = load_checkpoint(cfg.policy, device, make_cmd="python sft.py", tokenizer=enc.name,
                               kind="language model")
    fits = row_check(enc, model.config.block_size, cfg.max_new_tokens, gold=True)
    prompts = [r["prompt"] for r in load_jsonl(os.path.join(cfg.data_dir, "rm_prompts.jsonl"), "prompts",
                                               check=fits)]
    prompts = prompts[:cfg.n_prompts or len(prompts)]
    t0 = time.time()
    # every prompt K times in a row, so one batched pass samples all of them
    flat = [p for p in prompts for _ in range(cfg.k)]
    responses = sample_responses(model, enc, flat, cfg.max_new_tokens, cfg.temperature,
                                 cfg.batch_size, device, progress=True)
    groups = [(p, responses[i * cfg.k:(i + 1) * cfg.k]) for i, p in enumerate(prompts)]
    rng = random.Random(cfg.seed)
    rows = []
    n_pairs = 0
    for prompt, group in groups:
        ranked, ranks = labelers.sort_ranking(group, labelers.rank(prompt, group, rng, cfg.noise))
        rows.append({"prompt": prompt, "responses": ranked, "ranks": ranks})
        n_pairs += len(labelers.ranked_pairs(ranks))
    write_jsonl(cfg.out, rows)
    agree, ties = labelers.agreement(groups, seed=cfg.seed + 1, noise=cfg.noise)
    print(f"wrote {cfg.out}: {len(rows)} prompts x {cfg.k} ranked responses, {n_pairs} ranked "
          f"pairs ({len(flat) / (time.time() - t0):.0f} responses/s); {ties:.1%} of pairs of "
          f"distinct responses are ties; two independent labelers agree on {agree:.1%} of "
          "the pairs they rank (paper: 72.6%)")
