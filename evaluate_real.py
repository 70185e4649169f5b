"""
evaluate.py on a real data set (python -m data.hh), which has no gold labeler: the reward
model stands in as the judge, and held-out human comparisons test the judges. evaluate.py
calls main_without_gold when the data set's description says there is no gold labeler.

Measured, per model, on the evaluation prompts: its reward-model score and its win rate
against SFT's by that score, KL to SFT, response length, how often it ends with EOS; on the
held-out human comparisons: the reward model's accuracy and DPO's implicit reward's. Then
samples side by side. Gold score, correctness, hallucination, truthfulness and toxicity need
the world.

Run:
  python evaluate.py --data_dir=out/hh --ckpt_dir=out/hh_ckpt --n_prompts=200

Simplified (exercises): the judge is the very reward model PPO optimised, so its score can
rise from over-optimisation as well as from better answers; no second, held-out reward
model, and no human or model-as-judge comparison of the samples.
"""
import dataclasses
import json
import os

import numpy as np
import torch

from checkpoint import load_checkpoint
from common import peak_memory, win_rate, write_jsonl
from data.chat import chat_text, encode_pairs, row_check, score_responses
from data.loader import load_jsonl
from data.tokenizer import EOS, encode
from evaluate import STAGES, cell, fmt, response_kls, sample
from model import token_logprobs

NO_GOLD = ("No gold labeler: this data set is not the world's, so the gold score, the win rate "
           "by true preference, correctness, hallucination, truthfulness and toxicity cannot be "
           "measured (python pipeline.py measures them in the world). The RM score is the reward "
           "model's opinion, the very thing PPO optimised: a rise can be over-optimisation (Gao et "
           "al. 2022), and only people reading the samples can say which it is.")


@torch.no_grad()
def sequence_logprobs(model, enc, prompts, responses, cfg, device, autocast):
    """log pi(y|x), the sum over each response's tokens (EOS included): (N,) on the CPU."""
    out = []
    for i in range(0, len(prompts), cfg.batch_size):
        ids, attn, resp = encode_pairs(enc, prompts[i:i + cfg.batch_size],
                                       responses[i:i + cfg.batch_size], device,
                                       model.config.block_size)  # (B, T) each
        with autocast:
            logits = model(ids[:, :-1], attention_mask=attn[:, :-1])  # (B, T-1, vocab)
        out.append((token_logprobs(logits, ids[:, 1:]) * resp[:, 1:]).sum(-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def rm_scores(rm, enc, prompts, responses, cfg, device, autocast):
    """The reward model's score of every (prompt, response): (N,) on the CPU."""
    out = []
    for i in range(0, len(prompts), cfg.batch_size):
        with autocast:
            out.append(score_responses(rm, enc, prompts[i:i + cfg.batch_size],
                                       responses[i:i + cfg.batch_size], device).float().cpu())
    return torch.cat(out)


def main_without_gold(cfg, enc, device, autocast):
    """evaluate.py on a data set without a gold labeler (python -m data.hh): the reward
    model stands in as the judge, and held-out human comparisons test the judges."""
    ref, _ = load_checkpoint(os.path.join(cfg.ckpt_dir, STAGES["sft"][0]), device,
                             make_cmd=STAGES["sft"][1], tokenizer=enc.name, kind="language model")
    rm, _ = load_checkpoint(os.path.join(cfg.ckpt_dir, "reward.pt"), device,
                            make_cmd="python reward.py", tokenizer=enc.name, kind="reward model")
    # every row checked now, by file and line: a prompt with its sampled tokens, and a pair,
    # must fit the models (the policies and the reward model)
    block_size = min(ref.config.block_size, rm.config.block_size)
    split = os.path.join(cfg.data_dir, cfg.split)
    rows = load_jsonl(f"{split}_prompts.jsonl", "prompts", make_cmd="python -m data.hh",
                      check=row_check(enc, block_size, cfg.max_new_tokens))
    pairs = load_jsonl(f"{split}_pairs.jsonl", "pairs", make_cmd="python -m data.hh",
                       check=row_check(enc, block_size))
    rows, pairs = (rows[:cfg.n_prompts], pairs[:cfg.n_prompts]) if cfg.n_prompts else (rows, pairs)
    prompts = [r["prompt"] for r in rows for _ in range(cfg.n_samples)]
    pair_prompts = [r["prompt"] for r in pairs]
    # 1. the reward model on held-out human comparisons: the judge's own accuracy
    chosen, rejected = (rm_scores(rm, enc, pair_prompts, [r[k] for r in pairs], cfg, device, autocast)
                        for k in ("chosen", "rejected"))
    rm_acc = (chosen > rejected).float().mean().item()

    asked = {n.strip() for n in cfg.models.split(",") if n.strip()} | {"sft"}
    m, samples, scores, notes, sample_rows = {}, {}, {}, [], []
    for name in [n for n in STAGES if n in asked]:
        path = os.path.join(cfg.ckpt_dir, STAGES[name][0])
        if name == "base" or not os.path.exists(path):
            notes.append(f"{name}: skipped, " + ("its few-shot prefix is the world's" if name == "base"
                                                  else f"no {path}; make it with: {STAGES[name][1]}"))
            continue
        model = ref if name == "sft" else load_checkpoint(path, device, make_cmd=STAGES[name][1],
                                                          tokenizer=enc.name, kind="language model")[0]
        # 2. samples from the same seed, scored by the reward model
        torch.manual_seed(cfg.seed)
        responses = sample(model, enc, [chat_text(enc, p) for p in prompts], cfg, device, autocast,
                           f"{name} sampling")
        scores[name] = rm_scores(rm, enc, prompts, responses, cfg, device, autocast).tolist()
        m[name] = dict(checkpoint=path, rm_score=float(np.mean(scores[name])),
                       win_vs_sft=dict(zip(("rate", "lo", "hi"), win_rate(scores[name], scores["sft"]))),
                       length=float(np.mean([len(encode(enc, r)) for r in responses])),
                       ended=float(np.mean([r.endswith(EOS) for r in responses])),
                       kl_to_sft=0.0 if name == "sft" else response_kls(
                           model, ref, enc, prompts, responses, cfg, device, autocast).mean().item())
        # 3. DPO's implicit reward, log pi(y|x) - log pi_ref(y|x) (times beta, which does not
        #    change the order), on the same held-out comparisons
        if name == "dpo":
            lp = [sequence_logprobs(net, enc, pair_prompts, [r[k] for r in pairs], cfg, device, autocast)
                  for net in (model, ref) for k in ("chosen", "rejected")]
            m[name]["implicit_reward_acc"] = ((lp[0] - lp[2]) > (lp[1] - lp[3])).float().mean().item()
        samples[name] = responses
        sample_rows += [{"model": name, "prompt": p, "response": r, "rm_score": x}
                        for p, r, x in zip(prompts, responses, scores[name])]
        print(f"{name}: RM score {m[name]['rm_score']:.3f} | KL to SFT {m[name]['kl_to_sft']:.2f} | "
              f"length {m[name]['length']:.1f}")

    out = ["| model | RM score | win vs SFT by RM score [95% CI] | KL to SFT | length | "
           "ends with EOS |", "|---" * 6 + "|"]
    for name, r in m.items():
        w = r["win_vs_sft"]
        out.append(f"| {name} | {r['rm_score']:.3f} | {fmt(w['rate'])} [{fmt(w['lo'])}, {fmt(w['hi'])}] | "
                   f"{r['kl_to_sft']:.2f} | {r['length']:.1f} | {fmt(r['ended'])} |")
    out += ["", f"{len(rows)} prompts x {cfg.n_samples} samples at temperature {cfg.temperature}. "
            f"On {len(pairs)} held-out human comparisons, the reward model prefers the chosen "
            f"response {fmt(rm_acc)} of the time, DPO's implicit reward "
            f"{fmt(m.get('dpo', {}).get('implicit_reward_acc'))} (chance: 50%)."]
    out += [""] + [f"- {n}" for n in notes + [NO_GOLD]]
    out += ["", "| prompt | " + " | ".join(m) + " |", "|---" * (len(m) + 1) + "|"]
    for j in range(0, min(len(prompts), 4 * cfg.n_samples), cfg.n_samples):  # four prompts, sample 0
        out.append(f"| {cell(prompts[j])} | " + " | ".join(cell(samples[n][j]) for n in m) + " |")
    table = "\n".join(out) + "\n"
    print("\n" + table)
    os.makedirs(cfg.out_dir, exist_ok=True)
    results = dict(config=dataclasses.asdict(cfg), n_prompts=len(rows), n_pairs=len(pairs),
                   skipped=notes, gold_labeler=False, rm_pair_accuracy=rm_acc, models=m)
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_jsonl(os.path.join(cfg.out_dir, "samples.jsonl"), sample_rows)
    with open(os.path.join(cfg.out_dir, "table.md"), "w") as f:
        f.write(table)
    print(f"wrote {cfg.out_dir}/table.md, results.json and samples.jsonl; {peak_memory(device)}")
    return results
