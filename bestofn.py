"""
Best-of-N: the simplest RLHF, and the ceiling PPO is measured against (Gao et al. 2022;
Nakano et al. 2021). For each prompt the SFT model samples N responses and a judge keeps
the one it scores highest. With the gold labeler as the judge it shows how much room the
SFT model's own samples hold; with the reward model, how much of that room the reward
model sees. Best-of-N moves the policy by a known amount: its KL to the SFT model is
log N - (N - 1) / N nats (Stiennon et al. 2020, appendix), whatever the task.

It also measures the reward model where PPO uses it: on fresh SFT samples, the share of
pairs with different gold scores that it orders as the gold labeler does; on the diet
questions, whether it prefers the true answer about the animal asked to another animal's
true answer, an answer SFT rarely gives and PPO finds when the reward model overrates it;
and on closed questions the text cannot answer, whether it prefers saying so to every
made-up answer, in the guideline's words and in any.

And it shows the ceiling of PPO at each KL coefficient beta. The policy that maximises
E[r] - beta * KL(pi || pi_SFT), the objective of InstructGPT eq. 2 without the ptx term,
is pi*(y) = pi_SFT(y) exp(r(y) / beta) / Z (Ziegler et al. 2019; Rafailov et al. 2023,
eq. 4). Weighting the N samples by softmax(r / beta) draws from it approximately, so the
gold score and win rate of that weighted sample say how far PPO with this reward could
get if it optimised perfectly, and with the gold labeler as r, how far a perfect reward
model would take it.

For every prompt, sample 0 is the SFT baseline (as in evaluate.py, ties count half) and
samples 1..N are the candidates, so the baseline never competes against itself.

Run:
  python bestofn.py                   # the evaluation prompts, N = 1, 4, 16, and the optimum
                                      # at beta = 0.1, 0.2, 0.3, 1; under a minute on a CPU
  python bestofn.py --split=val       # a validation split of training prompts: tune here
Writes out/eval/bestofn_eval.json (out/eval_val/bestofn_val.json with --split=val).

Simplified (exercises): one baseline sample per prompt; no curve of gold against KL for
PPO's checkpoints beside it (compare with out/ppo_ptx_log.jsonl by hand).
"""
import collections
import dataclasses
import json
import math
import os
import sys
import time

import torch

from checkpoint import load_checkpoint
from common import ConfigError, eval_dir, parse_config, setup, win_rate
from data import world
from data.chat import row_check, sample_responses, score_responses
from data.loader import load_jsonl
from data.tokenizer import get_tokenizer


@dataclasses.dataclass
class Config:
    data_dir: str = "out/data"
    sft: str = "out/sft.pt"          # the policy sampled (python sft.py)
    reward: str = "out/reward.pt"    # the judge beside the gold labeler (python reward.py)
    split: str = "eval"              # eval: eval_prompts.jsonl; val: val_prompts.jsonl (for tuning)
    out_dir: str = ""                # "": out/eval, or out/eval_val for --split=val
    ns: str = "1,4,16"               # the N of best-of-N
    betas: str = "0.1,0.2,0.3,1"     # KL coefficients of the optimum pi_SFT exp(r / beta) to show
    temperature: float = 1.0
    max_new_tokens: int = 48
    batch_size: int = 128
    device: str = "auto"
    seed: int = 1337


def best_of_n_kl(n):
    """KL(best-of-n || base) in nats, for a judge with no ties: log n - (n - 1) / n."""
    return math.log(n) - (n - 1) / n


def pick_best(judge_scores, n):
    """Index of the best of the first n candidates for each prompt: (P, M) -> (P,)."""
    return judge_scores[:, :n].argmax(1)


def gold_order_accuracy(rm_scores, gold_scores):
    """Share of pairs of one prompt's candidates with different gold scores that the reward
    model orders as the gold labeler does (a tie in RM score counts half). (P, M) each."""
    hits = n = 0.0
    for rm, gold in zip(rm_scores.tolist(), gold_scores.tolist()):
        for i in range(len(gold)):
            for j in range(i + 1, len(gold)):
                if gold[i] != gold[j]:
                    n += 1
                    d = (rm[i] - rm[j]) * (gold[i] - gold[j])
                    hits += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
    return hits / max(n, 1)


def kl_regularised_optimum(judge_scores, cand_gold, baseline, beta):
    """The best policy at KL coefficient beta, pi* proportional to pi_SFT exp(r / beta),
    seen through N samples of pi_SFT per prompt: self-normalised importance weights
    w = softmax(r / beta) over each prompt's N candidates. judge_scores (the r, in the
    units PPO's reward has), cand_gold (P, N); baseline (P,) the SFT sample it plays against.
    Returns (its expected gold score, its expected win rate against the baseline with ties
    half, KL(w || uniform) in nats averaged over prompts: the KL to SFT, underestimated for
    small N, since pi* can put weight where N samples never land)."""
    gold, win, kl = optimum_per_prompt(judge_scores, cand_gold, baseline, beta)
    return gold.mean().item(), win.mean().item(), kl.mean().item()


def optimum_per_prompt(judge_scores, cand_gold, baseline, beta):
    """kl_regularised_optimum's three measures for each prompt: (P,) each."""
    w = torch.softmax(judge_scores / beta, dim=1)                  # (P, N)
    wins = (cand_gold > baseline[:, None]).float() + 0.5 * (cand_gold == baseline[:, None]).float()
    kl = (w * torch.log(w * w.size(1) + 1e-30)).sum(1)             # (P,)
    return (w * cand_gold).sum(1), (w * wins).sum(1), kl


def other_animal_accuracy(score_fn, prompts):
    """The reward model on answers that are true but answer another question. For each diet
    question, the true answer about the animal asked ("Owls eat mice.") against each other
    animal's true answer ("Mice eat seeds."), which states a fact and names a food, and which
    the gold labeler scores lower. score_fn(prompts, responses) -> scores (n,). Returns the
    share of those pairs the reward model orders as the gold labeler does (a tie counts
    half; nan without a diet question), the number of pairs, and the other animals' answers
    that outscored the right one, most often first. A reward model that asks whether a
    sentence is true, not whether it answers the question, scores near 50%, and PPO finds
    the answers it overrates."""
    hits, n, beaten_by = 0.0, 0, collections.Counter()
    for p in prompts:
        family, _, f = world.parse(p)
        if family != "truth":
            continue
        right = world.diet_sentence(f["animals"]) + world.EOS_TEXT
        others = [world.diet_sentence(a) + world.EOS_TEXT for a in world.DIETS if a != f["animals"]]
        scores = score_fn([p] * (1 + len(others)), [right] + others).tolist()
        for other, s in zip(others, scores[1:]):
            n += 1
            hits += 1.0 if scores[0] > s else 0.5 if scores[0] == s else 0.0
            if s > scores[0]:
                beaten_by[other] += 1
    return (hits / n if n else float("nan")), n, [o for o, _ in beaten_by.most_common()]


def made_up_answers(question):
    """Every answer to a closed question that names something: "Tom has a pet cat.", one for
    each pet (place, color) of the world. Where the text does not say, each is made up."""
    key, fields = world.parse_question(question)
    pool = {"place": world.PLACES, "color": world.COLORS, "pet": world.PETS}[key]
    rest = (fields["object"],) if key == "color" else ()  # a color fact names the object too
    return [world.fact_sentence(key, (fields["name"], x) + rest) for x in pool]


def unanswerable_accuracy(score_fn, prompts):
    """The reward model where the text does not say what is asked. For each closed question
    whose text leaves out the fact asked about, the answers that say so, the guideline's
    ("The text does not say what pet Tom has.") and the terse ones ("The text does not
    say.", "It does not say."), against every made-up answer ("Tom has a pet cat.", each pet
    of the world). Returns {kind: {"complete": share of the made-up answers scored below the
    guideline's answer, "any": share scored below the best-scored of the answers that say
    so}} for the kinds asked (place, color, pet), a tie counting half. PPO finds the
    best-scored answer: where "any" is low, the reward model teaches it to make things up."""
    hits = collections.defaultdict(float)
    n = collections.Counter()
    for p in prompts:
        family, _, f = world.parse(p)
        if family != "closedqa":
            continue
        kind, text_says = world.closedqa_kind(p)
        if text_says:  # then a named answer may be right, not made up
            continue
        says_so = [world.not_said(f["question"]), *world.TERSE_NOT_SAID]
        answers = says_so + made_up_answers(f["question"])
        scores = score_fn([p] * len(answers), [a + world.EOS_TEXT for a in answers]).tolist()
        complete, best = scores[0], max(scores[:len(says_so)])
        for s in scores[len(says_so):]:
            n[kind] += 1
            hits[kind, "complete"] += 1.0 if complete > s else 0.5 if complete == s else 0.0
            hits[kind, "any"] += 1.0 if best > s else 0.5 if best == s else 0.0
    return {kind: {form: hits[kind, form] / n[kind] for form in ("complete", "any")}
            for kind in sorted(n)}


def main(cfg):
    device, autocast = setup(cfg)
    cfg = dataclasses.replace(cfg, out_dir=cfg.out_dir or eval_dir(cfg.split))
    if not all(x.strip().isdigit() and int(x) >= 1 for x in cfg.ns.split(",")):
        raise ConfigError(f"--ns must be whole numbers, each at least 1, separated by commas; "
                          f"got {cfg.ns!r}")
    ns = [int(x) for x in cfg.ns.split(",")]
    try:
        betas = [float(x) for x in cfg.betas.split(",")]
    except ValueError:
        betas = []
    if not betas or not all(0 < b < float("inf") for b in betas):
        raise ConfigError(f"--betas must be numbers more than 0, separated by commas; got {cfg.betas!r}")
    enc = get_tokenizer(cfg.data_dir)
    policy, _ = load_checkpoint(cfg.sft, device, make_cmd="python sft.py", tokenizer=enc.name,
                                kind="language model")
    reward_model, rm_ckpt = load_checkpoint(cfg.reward, device, make_cmd="python reward.py",
                                      tokenizer=enc.name, scalar_head=True, kind="reward model")
    if "score_std" not in rm_ckpt:  # the unit of PPO's reward, which the optimum needs
        raise ValueError(f"{cfg.reward} is not a reward model with a score_std; make one with: python reward.py")
    rows = load_jsonl(os.path.join(cfg.data_dir, f"{cfg.split}_prompts.jsonl"), "prompts",
                      check=row_check(enc, policy.config.block_size, cfg.max_new_tokens, gold=True))
    prompts = [r["prompt"] for r in rows]
    reward_model.eval()
    M = max(ns)
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    # prompt i's sample k sits at i * (M + 1) + k; k = 0 is the baseline
    flat = [p for p in prompts for _ in range(M + 1)]
    responses = sample_responses(policy, enc, flat, cfg.max_new_tokens, cfg.temperature,
                                 cfg.batch_size, device, progress=True)
    gold = torch.tensor([world.score(p, r) for p, r in zip(flat, responses)]).view(-1, M + 1)
    with torch.no_grad(), autocast:
        rm = torch.cat([score_responses(reward_model, enc, flat[i:i + cfg.batch_size],
                                        responses[i:i + cfg.batch_size], device).float().cpu()
                        for i in range(0, len(flat), cfg.batch_size)]).view(-1, M + 1)
    baseline, cand_gold, cand_rm = gold[:, 0], gold[:, 1:], rm[:, 1:]
    families = [world.parse(p)[0] for p in prompts]
    rows_of = {fam: [i for i, f in enumerate(families) if f == fam] for fam in world.FAMILIES}
    rows_of = {fam: rows for fam, rows in rows_of.items() if rows}   # the families asked
    by_family = {fam: gold_order_accuracy(cand_rm[rows], cand_gold[rows])
                 for fam, rows in rows_of.items()}
    results = dict(split=cfg.split, n_prompts=len(prompts), sft_gold=baseline.mean().item(),
                   rm_gold_order_accuracy=gold_order_accuracy(cand_rm, cand_gold),
                   rm_gold_order_accuracy_by_family=by_family, best_of={})
    print(f"{len(prompts)} {cfg.split} prompts x {M + 1} SFT samples, {time.time() - t0:.0f} s; "
          f"SFT gold score {results['sft_gold']:.3f}")
    print(f"reward model on fresh SFT samples: orders {results['rm_gold_order_accuracy']:.1%} of "
          "the pairs with different gold scores as the gold labeler does; by family: "
          + ", ".join(f"{fam} {acc:.0%}" for fam, acc in by_family.items()))
    # the diets: does it check which animal an answer is about, or only that it is true?
    with torch.no_grad(), autocast:
        acc, n_pairs, beaten_by = other_animal_accuracy(
            lambda ps, rs: score_responses(reward_model, enc, ps, rs, device).float().cpu(), prompts)
    if n_pairs:
        results["rm_other_animal_accuracy"] = acc
        print(f"reward model on diets: orders {acc:.1%} of {n_pairs} pairs as the gold labeler does, "
              "the true answer about the animal asked above another animal's true answer (ties "
              "count half)" + (f"; most often beaten by {beaten_by[0][:-len(world.EOS_TEXT)]!r}"
                               if beaten_by else ""))
    # questions the text cannot answer: does it prefer saying so to any made-up answer?
    with torch.no_grad(), autocast:
        by_kind = unanswerable_accuracy(
            lambda ps, rs: score_responses(reward_model, enc, ps, rs, device).float().cpu(), prompts)
    if by_kind:
        results["rm_unanswerable_accuracy"] = by_kind
        print("reward model where the text does not say: scores the made-up answers below the "
              "guideline's answer, and below the best of the answers that say so: " + ", ".join(
                  f"{kind} {acc['complete']:.0%} and {acc['any']:.0%}" for kind, acc in by_kind.items()))
    print("| N | KL (nats) | judge | gold score | win vs SFT [95% CI] |\n|---|---|---|---|---|")
    for n in ns:
        for judge, scores in (("gold", cand_gold), ("reward model", cand_rm)):
            best = cand_gold[torch.arange(len(prompts)), pick_best(scores, n)]
            rate, lo, hi = win_rate(best.tolist(), baseline.tolist())
            results["best_of"][f"{n}_{judge.replace(' ', '_')}"] = dict(
                n=n, judge=judge, kl=best_of_n_kl(n), gold=best.mean().item(), win=rate, lo=lo, hi=hi)
            print(f"| {n} | {best_of_n_kl(n):.2f} | {judge} | {best.mean().item():.3f} | "
                  f"{rate:.0%} [{lo:.0%}, {hi:.0%}] |")
    # PPO's reward is the RM score in units of its std on the demonstrations, or the raw
    # gold score with --gold_reward: the same units here, so one beta means the same in both
    rm_reward = cand_rm / rm_ckpt["score_std"]
    print("| beta | judge | KL (nats) | gold score | win vs SFT | win by family |\n|---|---|---|---|---|---|")
    results["optimum"] = {}
    for beta in betas:
        for judge, scores in (("gold", cand_gold), ("reward model", rm_reward)):
            gold_p, win_p, kl_p = optimum_per_prompt(scores, cand_gold, baseline, beta)
            gold_mean, win, kl = gold_p.mean().item(), win_p.mean().item(), kl_p.mean().item()
            # where the win comes from: the same optimum, task family by family
            win_by_family = {fam: win_p[rows].mean().item() for fam, rows in rows_of.items()}
            results["optimum"][f"{beta:g}_{judge.replace(' ', '_')}"] = dict(
                beta=beta, judge=judge, kl=kl, gold=gold_mean, win=win, win_by_family=win_by_family)
            print(f"| {beta:g} | {judge} | {kl:.2f} | {gold_mean:.3f} | {win:.0%} | "
                  + ", ".join(f"{fam} {w:.0%}" for fam, w in win_by_family.items()) + " |")
    os.makedirs(cfg.out_dir, exist_ok=True)
    path = os.path.join(cfg.out_dir, f"bestofn_{cfg.split}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main(parse_config(Config, sys.argv[1:]))
