"""
Stage 0: pretrain the base model ("GPT-3" of this world) from scratch on the world's
internet text, with the plain next-token loss.

The corpus mixes facts, biographies and forum threads whose answers are right, wrong,
rude or never-ending, so the base model learns the chat format but answers unreliably,
which is the starting point InstructGPT improves on.

Run:
  python -m data.generate && python pretrain.py           # CPU preset, ~1M parameters
  python pretrain.py --device=cuda                        # GPU preset, ~10M parameters
  python pretrain.py --max_iters=200 --n_layer=2          # any field, as --name=value

Simplified (exercises): no gradient accumulation, no data loader workers, no
torch.compile, no resuming from a checkpoint mid-run; batches are random windows.
"""
import collections
import dataclasses
import math
import os
import random
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from checkpoint import save_checkpoint
from common import Logger, check_finite, log_path, parse_config, setup
from data import world
from data.chat import load_eval_prompts, sample_responses
from data.tokenizer import encode, get_tokenizer
from data.corpus import get_batch, load_corpus
from model import GPT, GPTConfig, lm_loss


@dataclasses.dataclass
class Config:
    data_dir: str = "out/data"       # made by: python -m data.generate
    out: str = "out/pretrain.pt"
    device: str = "auto"             # auto: cuda, then mps, then cpu
    seed: int = 1337
    # model (the CPU preset: about 1M parameters)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128            # context; prompt + response must fit in later stages
    dropout: float = 0.0
    use_sdpa: bool = False           # PyTorch's fused attention instead of the written-out one
    # optimisation
    batch_size: int = 16
    max_iters: int = 2000            # 4M tokens, about 1.3 passes over the corpus
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_iters: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    # reporting
    eval_interval: int = 200
    eval_iters: int = 20
    log_interval: int = 50
    n_eval_prompts: int = 240        # base model's answers scored by the gold labeler at the end
    max_new_tokens: int = 48


# the GPU preset: about 10M parameters, for a laptop GPU
GPU = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, max_iters=3000,
           lr=1e-3, min_lr=1e-4, eval_iters=50)


def lr_at(it, cfg):
    """Linear warmup, then cosine decay from lr to min_lr."""
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / cfg.warmup_iters
    progress = min(1.0, (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


@torch.no_grad()
def estimate_loss(model, tokens, cfg, device, autocast):
    model.eval()
    losses = []
    for _ in range(cfg.eval_iters):
        x, y = get_batch(tokens, cfg.batch_size, cfg.block_size, device)
        with autocast:
            losses.append(lm_loss(model, x, y).item())
    model.train()
    return float(np.mean(losses))


@torch.no_grad()
def copy_probe(model, enc, device, n=100, seed=0):
    """Can the model read its context? Facts about a random person, then a sentence that
    repeats one, cut before the answer ("In short, Tom lives in"): for each of the place,
    the pet and the color, the mean probability the model gives the right one: how often a
    sample at temperature 1 copies it (a greedy answer can be right where a third of the
    samples are wrong). This is induction (Olsson et al. 2022), the skill closed QA and
    summaries rest on; naming one of the world's places, pets or colors at random scores 6
    to 9%. RLHF can reward a skill the model has, not teach it one from nothing.
    Returns {"place": probability, "pet": ..., "color": ...}."""
    rng, hits = random.Random(seed), collections.defaultdict(list)
    for _ in range(n):
        facts = world.person_facts(world.make_person(rng))
        text = " ".join(world.fact_sentence(k, facts[k]) for k in rng.sample(list(facts), 3))
        name, color = facts["place"][0], facts["color"][1]
        # the color comes after "has a", as a pet does ("has a pet cat"): so its text holds
        # the place and the color alone, and "has a" can only go on to the color
        place_color = " ".join(world.fact_sentence(k, facts[k])
                               for k in rng.sample(["place", "color"], 2))
        for kind, context, answer in (
                ("place", f"{text} In short, {name} lives in", facts["place"][1]),
                ("pet", f"{text} What pet does {name} have? {name} has a pet", facts["pet"][1]),
                ("color", f"{place_color} In short, {name} lives in {facts['place'][1]} and "
                          f"has {world.article(color).split()[0]}", color)):
            ids = encode(enc, context)
            target = encode(enc, f"{context} {answer}")[len(ids)]  # the answer's first token
            logits = model(torch.tensor([ids], device=device))     # (1, T, vocab)
            hits[kind].append(logits[0, -1].float().softmax(-1)[target].item())
    return {kind: float(np.mean(h)) for kind, h in hits.items()}


if __name__ == "__main__":
    cfg = parse_config(Config, sys.argv[1:], gpu=GPU)
    device, autocast = setup(cfg)
    enc = get_tokenizer(os.path.join(cfg.data_dir, "tokenizer.tiktoken"))
    model_cfg = GPTConfig(vocab_size=enc.n_vocab, block_size=cfg.block_size, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout,
                          use_sdpa=cfg.use_sdpa)  # checks that the options make a model
    train_tokens, val_tokens = load_corpus(cfg.data_dir, enc, cfg.block_size)
    print(f"corpus: {len(train_tokens):,} train tokens, {len(val_tokens):,} held out")
    prompts = load_eval_prompts(cfg.data_dir, enc, cfg.block_size, cfg.max_new_tokens,
                                cfg.n_eval_prompts)  # for the end; checked now

    model = GPT(model_cfg).to(device)
    print(f"model: {model.num_params() / 1e6:.2f}M parameters")
    # weight decay on matrices and embeddings only, not on biases or LayerNorm gains
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, 0.95))
    logger = Logger(log_path(cfg.out))

    model.train()
    t0, tokens_seen = time.time(), 0
    for it in tqdm(range(cfg.max_iters), desc="pretrain", mininterval=5):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, cfg)
        x, y = get_batch(train_tokens, cfg.batch_size, cfg.block_size, device)
        with autocast:
            loss = lm_loss(model, x, y)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        check_finite(f"pretrain step {it}", {"loss": loss, "gradient norm": grad_norm})
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += x.numel()

        if it % cfg.log_interval == 0 or it == cfg.max_iters - 1:
            metrics = {"loss": loss.item(), "lr": lr_at(it, cfg),
                       "tok_per_s": round(tokens_seen / (time.time() - t0))}
            if it % cfg.eval_interval == 0 or it == cfg.max_iters - 1:
                metrics["val_loss"] = estimate_loss(model, val_tokens, cfg, device, autocast)
                check_finite(f"pretrain step {it}", {"held-out loss": metrics["val_loss"]})
            logger.log(it, line="val_loss" in metrics, **metrics)

    val_loss = estimate_loss(model, val_tokens, cfg, device, autocast)
    check_finite(f"pretrain step {cfg.max_iters}", {"held-out loss": val_loss})
    save_checkpoint(cfg.out, model, dataclasses.asdict(cfg), cfg.max_iters, enc.name,
                    val_loss=val_loss)
    print(f"saved {cfg.out}: held-out loss {val_loss:.4f}, "
          f"{tokens_seen / (time.time() - t0):,.0f} training tokens/s")

    # The base model, asked in the chat format, answers the held-out evaluation prompts.
    responses = sample_responses(model, enc, prompts, cfg.max_new_tokens, temperature=1.0,
                                 device=device, progress=True)
    for p, r in list(zip(prompts, responses))[:4]:
        print(f"--- {p!r}\n    -> {r!r}  (gold {world.score(p, r):.2f})")
    rep = world.report(prompts, responses)
    print(world.format_report(rep))
    model.eval()
    copying = copy_probe(model, enc, device)
    print("copies from its context a " + ", a ".join(f"{k} {v:.0%}" for k, v in copying.items())
          + " of the time at temperature 1 (chance 6 to 9%)")
    logger.log(cfg.max_iters, line=False, final_val_loss=val_loss, gold=rep, copy_probe=copying)
    logger.close()
