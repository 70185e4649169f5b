"""
Comparison collection: the labelers' job (InstructGPT §3.4).

For each reward-model prompt, the SFT model samples K responses at temperature 1, and a
simulated labeler ranks them (data/labelers.py: Bradley-Terry noise on the gold score,
ties where it sees no difference), together with one answer that the model wrote for
another prompt of the same kind (other_answers): most often an answer to another
question, which a model fine-tuned on demonstrations seldom gives and a reward model must
still rank low.
Writes out/comparisons.jsonl, one {"prompt", "responses", "ranks"} row per prompt, best
first, equal ranks for a tie.
reward.py and dpo.py only read such files, so a real human-preference data set in the
same format (or a {"prompt", "chosen", "rejected"} pairs file) can take its place.

It also has a second, independent labeler rank the same K samples and prints how often the
two agree: the paper's inter-labeler agreement (72.6%), measured on real SFT samples (the
answer to another prompt, which they nearly always rank last, would only raise it).

Run: python -m data.collect            (K = 6; --k=9 for the paper's largest)
     python -m data.collect --start_prompt=2000 --n_prompts=2000 --seed=1338 --out=out/comparisons_b.jsonl
                                       (the 2,001st to 4,000th prompts, with other draws:
                                        pipeline.py ranks two halves side by side)
"""
import collections
import dataclasses
import os
import random
import sys
import time

from checkpoint import load_checkpoint
from common import ConfigError, parse_config, setup, write_jsonl
from data import labelers, world
from data.chat import row_check, sample_responses
from data.loader import load_jsonl
from data.tokenizer import get_tokenizer


@dataclasses.dataclass
class Config:
    data_dir: str = "out/data"
    policy: str = "out/sft.pt"       # made by: python sft.py
    out: str = "out/comparisons.jsonl"
    start_prompt: int = 0            # where to start in rm_prompts.jsonl, counting from 0
    n_prompts: int = 0               # 0: every prompt from there on; else the next n
    k: int = 6                       # responses per prompt, 4 to 9 as in the paper
    n_other: int = 1                 # and this many written for other prompts (other_answers)
    temperature: float = 1.0
    max_new_tokens: int = 48
    batch_size: int = 512            # sequences generated at once (finished ones leave the batch)
    noise: float = labelers.NOISE    # labeler noise, set for ~73% agreement on ranked pairs
    device: str = "auto"
    seed: int = 1337


def other_answers(prompts, groups, n_other, rng):
    """For each prompt, n_other responses sampled for other prompts of its family (another
    sum, another person's text, another animal: "Pandas eat bamboo." for "What do owls
    eat?"), one from each of n_other distinct prompts; why, see the module docstring.
    groups: the responses sampled for each prompt. Returns a list per prompt, empty where
    no other prompt has its family."""
    families = [world.parse(prompt)[0] for prompt in prompts]
    by_family = collections.defaultdict(list)
    for i, family in enumerate(families):
        by_family[family].append(i)
    others = []
    for i, family in enumerate(families):
        pool = by_family[family]
        picked = []  # distinct other prompts, one sample of each
        while len(picked) < min(n_other, len(pool) - 1):
            j = rng.choice(pool)
            if j != i and j not in picked:
                picked.append(j)
        others.append([rng.choice(groups[j]) for j in picked])
    return others


if __name__ == "__main__":
    cfg = parse_config(Config, sys.argv[1:])
    device, _ = setup(cfg)
    enc = get_tokenizer(cfg.data_dir)
    model, _ = load_checkpoint(cfg.policy, device, make_cmd="python sft.py", tokenizer=enc.name,
                               kind="language model")
    fits = row_check(enc, model.config.block_size, cfg.max_new_tokens, gold=True)
    prompts = [r["prompt"] for r in load_jsonl(os.path.join(cfg.data_dir, "rm_prompts.jsonl"), "prompts",
                                               check=fits)]
    if cfg.start_prompt >= len(prompts):
        raise ConfigError(f"--start_prompt={cfg.start_prompt}: rm_prompts.jsonl has only "
                          f"{len(prompts)} prompts")
    end = cfg.start_prompt + cfg.n_prompts if cfg.n_prompts else len(prompts)
    prompts = prompts[cfg.start_prompt:end]
    t0 = time.time()
    # every prompt K times in a row, so one batched pass samples all of them
    flat = [p for p in prompts for _ in range(cfg.k)]
    responses = sample_responses(model, enc, flat, cfg.max_new_tokens, cfg.temperature,
                                 cfg.batch_size, device, progress=True)
    groups = [(p, responses[i * cfg.k:(i + 1) * cfg.k]) for i, p in enumerate(prompts)]
    rng = random.Random(cfg.seed)
    others = other_answers(prompts, [group for _, group in groups], cfg.n_other, rng)
    rows = []
    n_pairs = 0
    for (prompt, group), other in zip(groups, others):
        group = group + other
        ranked, ranks = labelers.sort_ranking(group, labelers.rank(prompt, group, rng, cfg.noise))
        rows.append({"prompt": prompt, "responses": ranked, "ranks": ranks})
        n_pairs += len(labelers.ranked_pairs(ranks))
    write_jsonl(cfg.out, rows)
    agree, ties = labelers.agreement(groups, seed=cfg.seed + 1, noise=cfg.noise)
    rate = len(flat) / (time.time() - t0)
    print(f"wrote {cfg.out}: {len(rows)} prompts, {cfg.k} samples each and "
          f"{sum(map(len, others))} written for other prompts ranked, {n_pairs} ranked pairs "
          f"({rate:.0f} responses/s); of the policy's own samples, {ties:.1%} of pairs of "
          f"distinct responses are ties, and two independent labelers agree on {agree:.1%} of "
          "the pairs they rank (paper: 72.6%)")
