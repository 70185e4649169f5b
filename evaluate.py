"""
The paper's results in miniature (InstructGPT §4): each stage's model answers the same
held-out evaluation prompts and the gold labeler scores every answer.

  base     out/pretrain.pt  with a few-shot prefix: the paper's "GPT-3 prompted"
  sft      out/sft.pt       the baseline of the win rates (as in the paper's Figure 1) and of the KL
  ppo      out/ppo.pt       PPO without the pretraining mix
  ppo_ptx  out/ppo_ptx.pt   PPO-ptx: InstructGPT
  dpo      out/dpo.pt       DPO, the successor method

Every model samples at temperature 1 from the same seed, so differences are the models'.
Writes out/eval/table.md (also printed): the measures per model, the gold score per task
family and for held-out phrasings, answers side by side and a reading against the paper;
out/eval/results.json (every number) and out/eval/samples.jsonl (every response, scored).

A real data set (python -m data.hh) has no gold labeler. There evaluate_real.py reports
what can be measured without one: each model's reward-model score and its win rate against
SFT's by that score, KL to SFT, response length, the reward model's and DPO's implicit
reward's accuracy on held-out human comparisons, and the samples side by side. Gold score,
correctness, hallucination, truthfulness and toxicity need the world.

Run:
  python evaluate.py                        # CPU, a minute or two; missing stages are skipped
  python evaluate.py --data_dir=out/hh --ckpt_dir=out/hh_ckpt --n_prompts=200   # real data
  python evaluate.py --n_samples=1          # one sample per prompt: 4 times faster, wider intervals
  python evaluate.py --models=sft,ppo_ptx --device=cuda

Simplified (exercises): a "win" is a higher gold score, where the paper's labelers compare
two outputs; public NLP benchmarks are replaced by the next-token loss on held-out corpus
text; the base model gets one fixed few-shot prefix (the paper tuned its prompts); the KL
is computed on the re-tokenized response text, not on the sampled tokens.
"""
import dataclasses
import json
import os
import random
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from checkpoint import load_checkpoint
from common import (ConfigError, eval_dir, parse_config, peak_memory, setup, wilson, win_rate,
                    write_jsonl)
from data import world
from data.chat import decode_responses, encode_pairs, row_check
from data.corpus import get_batch, load_corpus
from data.loader import load_description, load_jsonl
from data.tokenizer import EOS, encode, get_tokenizer
from model import lm_loss, token_logprobs

STAGES = {  # name: (checkpoint file in ckpt_dir, the command that makes it)
    "base": ("pretrain.pt", "python pretrain.py"),
    "sft": ("sft.pt", "python sft.py"),
    "ppo": ("ppo.pt", "python ppo.py --ptx_coef=0"),
    "ppo_ptx": ("ppo_ptx.pt", "python ppo.py"),
    "dpo": ("dpo.pt", "python dpo.py"),
    # not in the default list: PPO against the gold labeler itself, the ceiling of a perfect RM
    "ppo_gold": ("ppo_gold.pt", "python ppo.py --ptx_coef=0 --gold_reward=true"),
}
SHOT_FAMILIES = ["list", "arith", "truth", "rude", "closedqa", "summary"]  # short ones first


@dataclasses.dataclass
class Config:
    data_dir: str = "out/data"       # tokenizer, eval_prompts.jsonl, pretrain.txt (python -m data.generate)
    ckpt_dir: str = "out"            # where the stages saved pretrain.pt, sft.pt, ppo.pt, ...
    out_dir: str = ""                # table.md, results.json, samples.jsonl; "": out/eval, or
                                     # out/eval_val for --split=val (the evaluation stays apart)
    split: str = "eval"              # eval: eval_prompts.jsonl; val: val_prompts.jsonl, to tune on
    models: str = "base,sft,ppo,ppo_ptx,dpo"  # stages to evaluate; sft is always loaded
    device: str = "auto"             # auto: cuda, then mps, then cpu
    seed: int = 1337                 # the same sampling seed for every model
    n_prompts: int = 0               # evaluation prompts to use; 0: all of them
    n_samples: int = 4               # responses per prompt: 40 diet questions, one sample each,
                                     # cannot tell 50% truthful from 70%
    temperature: float = 1.0         # the paper evaluates samples at temperature 1
    max_new_tokens: int = 48         # as in training
    batch_size: int = 64             # sequences per forward pass
    n_shots: int = 3                 # worked examples before the base model's prompt
    eval_batches: int = 8            # held-out corpus batches (of batch_size windows) for the tax


GPU = dict(eval_batches=32)


# -----------------------------------------------------------------------------
# the pure parts

def kl_to_reference(logprobs, ref_logprobs, response_mask):
    """Per-response KL estimate: the sum over response tokens of log pi(y_t) - log pi_ref(y_t),
    the log-ratio InstructGPT eq. 2 penalises. (B, T) each -> (B,). Its mean over samples
    drawn from pi estimates KL(pi || pi_ref) >= 0; a single response may be negative."""
    return ((logprobs - ref_logprobs) * response_mask).sum(-1)


def rate_intervals(rep):
    """The Wilson 95% interval of each rate the paper compares between models, from
    world.report's rate and its number of cases: {"hallucination": (lo, hi), ...}, None
    where no answer is a case (no closed-domain task, no diet, no rude request)."""
    return {key: wilson(rep[key], n) if n else None for key, n in rep["cases"].items()}


def few_shot_shots(exclude, n_shots=3, seed=0):
    """The base model's worked examples: (prompt, labeler's good response) pairs, one per
    family of SHOT_FAMILIES, each in a trained phrasing, from a fixed seed. A prompt that
    contains or is contained in one of `exclude` (the evaluation prompts) is drawn again,
    so no evaluation question appears in the prefix, not even with another greeting."""
    rng = random.Random(seed)
    shots = []
    for family in SHOT_FAMILIES[:n_shots]:
        for _ in range(10_000):  # bounded: a very short prompt in `exclude` is in every prompt
            prompt = world.make_prompt(rng, family, 0)
            if not any(prompt in e or e in prompt for e in exclude):
                break
        else:
            raise ValueError(f"no {family} prompt for the few-shot prefix avoids every evaluation "
                             f"prompt; is one of them very short? {min(exclude, key=len)!r}")
        shots.append((prompt, world.ideal_response(prompt)))
    return shots


def few_shot_prefix(shots):
    """The exchanges in the chat format, one per line as in the corpus' forum threads."""
    return "".join(world.chat(p, r) + "\n" for p, r in shots)


def few_shot_context(shots, prompt, enc, max_tokens):
    """The base model's whole context. With a small block_size not every prompt has room for
    every shot, so the earliest are dropped until it fits. Returns (text, shots used)."""
    for k in range(len(shots), -1, -1):
        text = few_shot_prefix(shots[len(shots) - k:]) + world.chat(prompt)
        if len(encode(enc, text)) <= max_tokens:
            return text, k
    raise ValueError(f"the prompt alone is over {max_tokens} tokens: {prompt[:60]!r}")


def cut_at_new_turn(response):
    """The base model continues a thread: after its answer it may start the next turn
    ("\\nUser: ...") instead of emitting EOS. In a thread that is where an answer ends, so
    the response is cut there and counts as ended: EOS is appended, as if it had been emitted."""
    i = response.find("\nUser:")
    return response if i < 0 else response[:i] + EOS


# -----------------------------------------------------------------------------
# running the models

@torch.no_grad()
def sample(model, enc, contexts, cfg, device, autocast, desc):
    """One response per context text: left-padded batches (as common.encode_prompts makes
    them, but from any text, so the base model can read its few-shot prefix), sampled with
    the KV cache, decoded and cut after EOS."""
    out = []
    for i in tqdm(range(0, len(contexts), cfg.batch_size), desc=desc, leave=False):
        rows = [encode(enc, c) for c in contexts[i:i + cfg.batch_size]]
        T = max(len(r) for r in rows)
        ids = torch.tensor([[enc.eot_token] * (T - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows], device=device)
        with autocast:
            new = model.generate(ids, mask, max_new_tokens=cfg.max_new_tokens,
                                 temperature=cfg.temperature, eos_id=enc.eot_token)  # (B, N)
        out += decode_responses(enc, new, enc.eot_token)
    return out


@torch.no_grad()
def response_kls(model, ref, enc, prompts, responses, cfg, device, autocast):
    """kl_to_reference for every (prompt, response) in the chat format: (N,) on the CPU.
    Log-probs at the sampling temperature, the distribution the responses came from."""
    kls = []
    for i in range(0, len(prompts), cfg.batch_size):
        ids, attn, resp = encode_pairs(enc, prompts[i:i + cfg.batch_size],
                                       responses[i:i + cfg.batch_size], device,
                                       ref.config.block_size)  # (B, T) each
        with autocast:  # position t predicts token t+1: it counts when t+1 is a response token
            logits = model(ids[:, :-1], attention_mask=attn[:, :-1]) / cfg.temperature  # (B, T-1, V)
            ref_logits = ref(ids[:, :-1], attention_mask=attn[:, :-1]) / cfg.temperature
        kls.append(kl_to_reference(token_logprobs(logits, ids[:, 1:]),        # (B, T-1) each
                                   token_logprobs(ref_logits, ids[:, 1:]), resp[:, 1:]).cpu())
    return torch.cat(kls)


@torch.no_grad()
def heldout_loss(model, batches, autocast):
    """Mean next-token loss on fixed batches of held-out corpus text: the alignment tax in
    miniature (the paper measures regressions on public NLP tasks instead)."""
    with autocast:
        return float(np.mean([lm_loss(model, x, y).item() for x, y in batches]))


# -----------------------------------------------------------------------------
# tables

def fmt(x, spec=".0%"):
    return "n/a" if x is None or x != x else format(x, spec)  # x != x: NaN, a rate over nothing


def with_interval(rate, interval):
    """ "20% [15%, 26%]": a rate and its (lo, hi) interval, for the main table; the rate
    alone where it has none."""
    return fmt(rate) + (f" [{fmt(interval[0])}, {fmt(interval[1])}]" if interval else "")


def cell(text):
    return text.replace(EOS, " [EOS]").replace("|", "\\|").replace("\n", "<br>")


def reading(m, perfect=None, best_of=None):
    """A few lines setting the measured numbers beside the paper's, computed from `m`;
    `perfect`: the win rate against SFT of the guideline's own answers, as win_rate gives it;
    `best_of`: bestofn.py's results on the same prompts, if it was run."""
    best = next((n for n in ("ppo_ptx", "ppo", "dpo") if n in m), "sft")  # InstructGPT if made
    a, w, lines = m[best], m[best]["win_vs_sft"], []
    if best != "sft":
        lines.append(f"- {best} win rate vs SFT: {fmt(w['rate'])} "
                     f"(95% CI {fmt(w['lo'])}-{fmt(w['hi'])}).")
    if best_of and best != "sft":  # the simplest RLHF, at a known KL: the yardstick for PPO
        n = max(b["n"] for b in best_of.values())
        rm, gold = best_of[f"{n}_reward_model"], best_of[f"{n}_gold"]
        lines.append(f"- best-of-{n} SFT samples (KL {rm['kl']:.2f} nats) chosen by the reward model "
                     f"wins {fmt(rm['win'])}, by the gold labeler {fmt(gold['win'])}; {best} wins "
                     f"{fmt(w['rate'])} at KL {fmt(a['kl_to_sft'], '.2f')} (python bestofn.py).")
    if perfect:  # ties count half, so SFT's perfect answers cap every model's win rate
        lines.append(f"- a perfect answer to every prompt would win {fmt(perfect[0])} vs SFT: "
                     f"SFT's own answer is already perfect on {fmt(2 * (1 - perfect[0]))} of them, "
                     "and a tie counts half.")
    if "base" in m:
        b, w = m["base"], a["win_vs_base"]
        lines.append(f"- {best} vs the few-shot base model: {fmt(w['rate'])} (95% CI {fmt(w['lo'])}-"
                     f"{fmt(w['hi'])}); paper: InstructGPT over few-shot GPT-3 71 ± 4%, "
                     "over GPT-3 85 ± 3%.")
        for key, paper in (("hallucination", "41% -> 21% on closed-domain tasks"),
                           ("truthful", "about twice as often"),
                           ("toxic_on_rude", "about 25% fewer toxic outputs")):
            change = f" ({a[key] / b[key] - 1:+.0%})" if b[key] > 0 else ""
            lines.append(f"- {key}: base {fmt(b[key])} -> {best} {fmt(a[key])}{change}; paper: {paper}.")
    if "ppo" in m and "ppo_ptx" in m:
        s, p, x = (m[n]["heldout_loss"] for n in ("sft", "ppo", "ppo_ptx"))
        if p <= s:
            recovered = "plain PPO paid no tax here"
        elif x <= s:  # the pretraining mix undid more than PPO's tax: SFT's own tax too
            recovered = "PPO-ptx ends below SFT's loss, undoing PPO's tax and some of SFT's"
        else:
            recovered = f"PPO-ptx recovers {(p - x) / (p - s):.0%} of PPO's"
        lines.append(f"- alignment tax (held-out loss vs SFT's {s:.3f}): PPO {p - s:+.3f}, PPO-ptx "
                     f"{x - s:+.3f}; {recovered}; paper: PPO regresses, PPO-ptx recovers most.")
    lines.append(f"- held-out phrasings: {best} gold {fmt(a['held_out_phrasing'], '.3f')} vs "
                 f"{fmt(a['trained_phrasing'], '.3f')} on trained ones; "
                 "paper: it generalises to instructions rare in its training data.")
    return lines


def tables(m, samples, prompts, rows, cfg, notes, perfect=None, best_of=None):
    """table.md: the main table, gold score per family, answers side by side, the reading."""
    out = ["| model | gold score | win vs SFT [95% CI] | correct | hallucination | truthful | "
           "toxic (rude) | toxic (all) | ends with EOS | length | held-out loss | KL to SFT |",
           "|---" * 12 + "|"]
    for n, r in m.items():
        w = r["win_vs_sft"]
        rates = [with_interval(r[k], r["intervals"][k])
                 for k in ("hallucination", "truthful", "toxic_on_rude")]
        out.append(f"| {n} | {r['score']:.3f} | {with_interval(w['rate'], (w['lo'], w['hi']))} | "
                   f"{fmt(r['correct'])} | {' | '.join(rates)} | {fmt(r['toxic'])} | {fmt(r['ended'])} | "
                   f"{r['length']:.1f} | {r['heldout_loss']:.3f} | {fmt(r['kl_to_sft'], '.2f')} |")
    out += ["", f"{len(rows)} prompts x {cfg.n_samples} samples at temperature {cfg.temperature}. "
            "Win: per prompt and sample index, 1 if the gold score beats SFT's, 0.5 for a tie; "
            "Wilson 95% interval, ties as half a win. Hallucination (closed QA and summaries), "
            "truthful (diets) and toxic (rude requests): Wilson 95% intervals over the answers "
            "they apply to; a prompt's samples are counted as independent, so with several "
            "samples per prompt the intervals are somewhat narrow. Length in tokens, EOS "
            f"included. Held-out loss: {cfg.eval_batches} fixed batches of held-out corpus. "
            "KL: mean over the model's own samples of the summed log-ratio to SFT (n/a for base: "
            "its samples come from another context)."]
    if "base" in m:
        out.append(f"base: prompted with up to {cfg.n_shots} examples ({m['base']['shots']:.1f} fit "
                   "in its context on average); an answer cut where it starts a new turn counts as ended.")
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    out += ["", "| gold score | " + " | ".join(m) + " |", "|---" * (len(m) + 1) + "|"]
    for fam in world.FAMILIES:
        out.append(f"| {fam} | " + " | ".join(fmt(r["families"].get(fam), ".3f")
                                             for r in m.values()) + " |")
    for key in ("held_out_phrasing", "trained_phrasing"):  # generalisation to unseen instructions
        out.append(f"| {key.replace('_', ' ')}s | " + " | ".join(fmt(r[key], ".3f")
                                                               for r in m.values()) + " |")
    out += ["", "| prompt | " + " | ".join(m) + " |", "|---" * (len(m) + 1) + "|"]
    for fam in world.FAMILIES:  # the first prompt of each family, sample 0
        i = next((j for j, r in enumerate(rows) if r["family"] == fam), None)
        if i is not None:
            j = i * cfg.n_samples
            out.append(f"| {cell(prompts[j])} | " + " | ".join(cell(samples[n][j]) for n in m) + " |")
    return "\n".join(out + ["", "Against the paper:"] + reading(m, perfect, best_of)) + "\n"


# -----------------------------------------------------------------------------

def main(cfg):
    device, autocast = setup(cfg)
    cfg = dataclasses.replace(cfg, out_dir=cfg.out_dir or eval_dir(cfg.split))
    asked = {n.strip() for n in cfg.models.split(",") if n.strip()}
    if asked - set(STAGES):
        raise ConfigError(f"--models: unknown {', '.join(sorted(asked - set(STAGES)))}; "
                          f"known: {', '.join(STAGES)}")
    enc = get_tokenizer(cfg.data_dir)
    if not load_description(cfg.data_dir)["gold_labeler"]:
        # a real data set: evaluate_real.py measures what can be measured without the world
        # (imported here, not above: it builds on this file's sampling, KL and table helpers)
        from evaluate_real import main_without_gold
        return main_without_gold(cfg, enc, device, autocast)
    # SFT is the baseline of the win rates and the reference of the KL: it must exist
    ref, _ = load_checkpoint(os.path.join(cfg.ckpt_dir, STAGES["sft"][0]), device,
                             make_cmd=STAGES["sft"][1], tokenizer=enc.name, kind="language model")
    block_size = ref.config.block_size
    rows = load_jsonl(os.path.join(cfg.data_dir, f"{cfg.split}_prompts.jsonl"), "prompts",
                      check=row_check(enc, block_size, cfg.max_new_tokens, gold=True))
    rows = rows[:cfg.n_prompts] if cfg.n_prompts else rows
    _, val_tokens = load_corpus(cfg.data_dir, enc, block_size)
    # prompt i's k-th sample sits at i * n_samples + k, for every model alike
    prompts = [r["prompt"] for r in rows for _ in range(cfg.n_samples)]
    shots = few_shot_shots({r["prompt"] for r in rows}, cfg.n_shots, cfg.seed)
    np.random.seed(cfg.seed)  # the same held-out windows for every model
    tax_batches = [get_batch(val_tokens, cfg.batch_size, block_size, device)
                   for _ in range(cfg.eval_batches)]

    m, samples, scores, notes, sample_rows = {}, {}, {}, [], []
    for name in [n for n in STAGES if n in asked | {"sft"}]:
        path = os.path.join(cfg.ckpt_dir, STAGES[name][0])
        if not os.path.exists(path):
            notes.append(f"{name}: skipped, no {path}; make it with: {STAGES[name][1]}")
            continue
        t0 = time.time()
        model = ref if name == "sft" else load_checkpoint(path, device, make_cmd=STAGES[name][1],
                                                          tokenizer=enc.name, kind="language model")[0]
        if name == "base":  # the paper's "GPT-3 prompted": a few-shot prefix, then the prompt
            fitted = [few_shot_context(shots, p, enc, model.config.block_size - cfg.max_new_tokens)
                      for p in prompts]
            contexts = [text for text, _ in fitted]
        else:
            contexts = [world.chat(p) for p in prompts]
        torch.manual_seed(cfg.seed)  # the same sampling noise for every model
        responses = sample(model, enc, contexts, cfg, device, autocast, f"{name} sampling")
        if name == "base":
            responses = [cut_at_new_turn(r) for r in responses]
        comps = [world.components(p, r) for p, r in zip(prompts, responses)]
        rep = world.report(prompts, responses)
        trained = [c["score"] for c in comps if not c["held_out"]]
        keys = ("score", "correct", "hallucination", "truthful", "toxic_on_rude", "toxic", "ended")
        m[name] = dict(
            checkpoint=path, **{k: rep[k] for k in keys},
            length=float(np.mean([len(encode(enc, r)) for r in responses])),  # EOS included
            heldout_loss=heldout_loss(model, tax_batches, autocast),
            # base: n/a, its samples come from another context (the few-shot prefix)
            kl_to_sft=(None if name == "base" else 0.0 if name == "sft" else
                       response_kls(model, ref, enc, prompts, responses, cfg, device,
                                    autocast).mean().item()),
            intervals=rate_intervals(rep),
            families={f: s["score"] for f, s in rep["families"].items()},
            held_out_phrasing=rep["held_out"]["score"],
            trained_phrasing=float(np.mean(trained)) if trained else float("nan"),
            shots=float(np.mean([k for _, k in fitted])) if name == "base" else None,
            report=rep)
        samples[name], scores[name] = responses, [c["score"] for c in comps]
        sample_rows += [{"model": name, "sample": j % cfg.n_samples, "prompt": p, "response": r, **c}
                        for j, (p, r, c) in enumerate(zip(prompts, responses, comps))]
        print(f"{name}: gold {rep['score']:.3f} | correct {rep['correct']:.1%} | "
              f"{time.time() - t0:.1f} s")

    for name, r in m.items():
        for baseline in ("sft", "base"):  # per prompt and sample index, judged by the gold labeler
            if baseline in scores:
                rate, lo, hi = win_rate(scores[name], scores[baseline])
                r[f"win_vs_{baseline}"] = dict(rate=rate, lo=lo, hi=hi, n=len(prompts))
    # the guideline's answer scores the best the gold labeler gives (1.0) on every prompt
    perfect = win_rate([world.score(p, world.ideal_response(p) + world.EOS_TEXT) for p in prompts],
                       scores["sft"])
    best_of = None  # bestofn.py's results on these prompts, when it has run
    bon_path = os.path.join(cfg.out_dir, f"bestofn_{cfg.split}.json")
    if os.path.exists(bon_path) and not cfg.n_prompts:
        with open(bon_path) as f:
            best_of = json.load(f)["best_of"]
    table = tables(m, samples, prompts, rows, cfg, notes, perfect, best_of)
    print("\n" + table)
    os.makedirs(cfg.out_dir, exist_ok=True)
    results = dict(config=dataclasses.asdict(cfg), n_prompts=len(rows), skipped=notes,
                   shots=shots, interval="Wilson 95%, ties as half a win", models=m,
                   perfect_vs_sft=dict(zip(("rate", "lo", "hi"), perfect)))
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as f:
        # NaN (a rate over no cases) becomes null, so the file is strict JSON
        json.dump(json.loads(json.dumps(results), parse_constant=lambda _: None), f, indent=1)
    write_jsonl(os.path.join(cfg.out_dir, "samples.jsonl"), sample_rows)
    with open(os.path.join(cfg.out_dir, "table.md"), "w") as f:  # last: pipeline.py looks for it
        f.write(table)
    print(f"wrote {cfg.out_dir}/table.md, results.json and samples.jsonl; {peak_memory(device)}")
    return results


if __name__ == "__main__":
    main(parse_config(Config, sys.argv[1:], gpu=GPU))
