"""
Stage 2: the reward model (InstructGPT §3.5, "Reward modeling").

The SFT model with a scalar head reads a prompt and a response and outputs one number:
the head's output at the response's last token (EOS), plus lm_coef times the mean log-prob
of the response's tokens under the unembedding it keeps, tied to its token embedding
(model.GPT.reward). The paper's reward model is the head alone (--lm_coef=0). Here the
log-prob is added because the small model cannot check a sum from its last token: its
language model, which predicts the number after "7 plus 5 is", can (see the README). It
learns from the labelers' rankings with the pairwise loss of InstructGPT eq. 1:

    loss = -1/C(K,2) * E[ log sigmoid( r(x, y_w) - r(x, y_l) ) ]

All C(K,2) comparisons of one prompt sit in one batch element, so each response goes
through the model once (K passes, not K(K-1)), and one epoch is enough, as in the paper.
The prompt goes through once as well: its keys and values are shared by its K responses
(data/chat.score_rankings), which here halves the tokens of a step.
After training a bias is added so the SFT demonstrations score 0 on average; their spread
is saved as `score_std`, which PPO divides by.

Reads out/comparisons.jsonl (rankings, best first, from: python -m data.collect) or any
{"prompt", "chosen", "rejected"} pairs file (--comparisons=path), or several such files
(--comparisons=a.jsonl,b.jsonl): the paper's comparisons came from more than one policy.

Run:
  python reward.py                   # CPU preset, under a minute
  python reward.py --device=cuda

Simplified (exercises): the paper's reward model (6B) is smaller than its policy; here both
are the same size. Pairs of identical responses carry no preference and are skipped. The
log-prob term is learned with the head by the same loss, with no language-modelling loss
to keep it a language model.
"""
import dataclasses
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import load_checkpoint, save_checkpoint
from common import Logger, check_finite, log_path, parse_config, peak_memory, setup
from data import world
from data.chat import row_check, score_rankings, score_responses
from data.loader import load_jsonl, preferences, split_comparisons
from data.tokenizer import get_tokenizer


@dataclasses.dataclass
class Config:
    data_dir: str = "out/data"
    comparisons: str = "out/comparisons.jsonl"  # made by: python -m data.collect; several: a,b
    init: str = "out/sft.pt"          # the reward model starts from the SFT model
    out: str = "out/reward.pt"
    device: str = "auto"
    seed: int = 1337
    epochs: int = 1                   # the paper: one epoch (more overfits)
    batch_size: int = 8               # prompts per step, each with all K of its responses
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    val_frac: float = 0.1             # prompts held out for accuracy
    n_rankings: int = 0               # 0: every ranking of each comparisons file; else its first n
    lm_coef: float = 1.0              # weight of the response's mean log-prob in the score
                                      # (GPT.reward); 0: the paper's, the score head alone
    log_interval: int = 10


GPU = dict(lr=1e-4, min_lr=1e-5)


def pairwise_loss(rewards, pair_mask):
    """InstructGPT eq. 1 for a batch of rankings.
    rewards: (B, K), response k of prompt b, ranked best first (k = 0 is best).
    pair_mask: (B, K, K) bool, True where (i, j) is a comparison to count: i ranked above j.
    Each prompt's loss is the mean over its pairs of -log sigmoid(r_i - r_j); then the
    mean over prompts (the 1/C(K,2) normalisation)."""
    diff = rewards[:, :, None] - rewards[:, None, :]  # (B, K, K): r_i - r_j
    per_pair = -F.logsigmoid(diff) * pair_mask
    n_pairs = pair_mask.sum(dim=(1, 2))  # (B,)
    per_prompt = per_pair.sum(dim=(1, 2)) / n_pairs.clamp(min=1)
    if not (n_pairs > 0).any():  # a batch of ties only: nothing to learn, a zero gradient
        return (rewards * 0).sum()
    return per_prompt[n_pairs > 0].mean()


def ranking_batch(rows):
    """Prompts (B,), responses (B lists of K) and the pair mask (B, K, K) for a batch of
    rankings (K may differ between rows). pair_mask[b, i, j] is True where row b ranks
    response i strictly above response j."""
    K = max(len(r["responses"]) for r in rows)
    prompts, responses = [], []
    pair_mask = torch.zeros(len(rows), K, K, dtype=torch.bool)
    for b, row in enumerate(rows):
        rs = row["responses"]
        for i, j in preferences(row):  # a tie is no comparison, nor are identical responses
            pair_mask[b, i, j] = True
        # short rankings are padded with copies of their last response, in no pair above
        prompts.append(row["prompt"])
        responses.append(rs + [rs[-1]] * (K - len(rs)))
    return prompts, responses, pair_mask


@torch.no_grad()
def evaluate(model, enc, rows, device, batch_size):
    """Accuracy against the labelers' (noisy) order, accuracy against the gold labeler's
    order (pairs whose gold scores differ), and the correlation of RM and gold scores."""
    model.eval()
    hits = n = gold_hits = gold_n = 0
    rm_all, gold_all = [], []
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        prompts, responses, pair_mask = ranking_batch(batch)
        r = score_rankings(model, enc, prompts, responses, device).cpu()  # (B, K)
        hits += ((r[:, :, None] > r[:, None, :]) & pair_mask).sum().item()
        n += pair_mask.sum().item()
        for b, row in enumerate(batch):
            try:
                g = [world.score(row["prompt"], y) for y in row["responses"]]
            except ValueError:  # not a prompt of this world (a real data set): no gold
                continue
            rm_all += r[b, :len(g)].tolist()
            gold_all += g
            for a in range(len(g)):
                for c in range(a + 1, len(g)):
                    if g[a] != g[c]:
                        gold_n += 1
                        gold_hits += (r[b, a] > r[b, c]).item() == (g[a] > g[c])
    model.train()
    rm_t, gold_t = torch.tensor(rm_all), torch.tensor(gold_all)
    # a real data set has no gold labeler: nan, not a 0% that looks measured
    corr = torch.corrcoef(torch.stack([rm_t, gold_t]))[0, 1].item() if gold_all else float("nan")
    return hits / max(n, 1), gold_hits / gold_n if gold_n else float("nan"), corr


if __name__ == "__main__":
    cfg = parse_config(Config, sys.argv[1:], gpu=GPU)
    device, autocast = setup(cfg)
    enc = get_tokenizer(cfg.data_dir)
    # SFT body, a fresh scalar head (small random weights, model.GPT): opinions at chance
    model, _ = load_checkpoint(cfg.init, device, make_cmd="python sft.py", tokenizer=enc.name,
                               scalar_head=True, dropout=0.0, kind="language model")
    model.config.lm_coef = cfg.lm_coef  # saved with the model: PPO and best-of-N score alike
    train_rows, val_rows = split_comparisons(cfg.comparisons, cfg.val_frac, cfg.n_rankings,
                                             check=row_check(enc, model.config.block_size))
    model.train()
    print(f"reward model: {len(train_rows)} rankings to train on, {len(val_rows)} held out")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    max_iters = cfg.epochs * math.ceil(len(train_rows) / cfg.batch_size)
    logger = Logger(log_path(cfg.out))

    t0, it = time.time(), 0
    generator = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(train_rows), generator=generator).tolist()
        for i in tqdm(range(0, len(order), cfg.batch_size), desc="reward", leave=False, mininterval=2):
            lr = cfg.min_lr + 0.5 * (1 + math.cos(math.pi * it / max_iters)) * (cfg.lr - cfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            prompts, responses, pair_mask = ranking_batch([train_rows[j] for j in order[i:i + cfg.batch_size]])
            with autocast:
                rewards = score_rankings(model, enc, prompts, responses, device)  # (B, K), fp32
            loss = pairwise_loss(rewards, pair_mask.to(device))
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            check_finite(f"reward step {it}", {"loss": loss, "gradient norm": grad_norm})
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if it % cfg.log_interval == 0:
                batch_acc = ((rewards[:, :, None] > rewards[:, None, :]) & pair_mask.to(device)).sum() / pair_mask.sum().clamp(min=1)
                logger.log(it, loss=loss.item(), train_acc=batch_acc.item(), lr=lr)
            it += 1

    # Normalise as the paper did: a bias so the labelers' demonstrations score 0 on average.
    demos = load_jsonl(os.path.join(cfg.data_dir, "sft.jsonl"), "sft")
    model.eval()
    with torch.no_grad():
        demo_scores = torch.cat([score_responses(model, enc, [d["prompt"] for d in demos[i:i + 64]],
                                                 [d["completion"] for d in demos[i:i + 64]],
                                                 device, add_eos=True).float()
                                 for i in range(0, len(demos), 64)])
        model.score_head.bias -= demo_scores.mean()
    score_std = demo_scores.std().item()
    acc, gold_acc, corr = evaluate(model, enc, val_rows, device, cfg.batch_size)
    logger.log(it, val_acc=acc, val_gold_acc=gold_acc, val_corr=corr, score_std=score_std)
    save_checkpoint(cfg.out, model, dataclasses.asdict(cfg), it, enc.name, score_std=score_std,
                    val_acc=acc, val_gold_acc=gold_acc)
    print(f"saved {cfg.out}: held-out accuracy {acc:.1%} against the labelers (whose agreement "
          f"with each other, printed by data.collect, is the ceiling), {gold_acc:.1%} against the "
          f"gold order; correlation with the gold score {corr:.2f}; demonstrations score "
          f"0 +- {score_std:.3f}; {time.time() - t0:.0f} s")
    print(peak_memory(device))
    logger.close()
