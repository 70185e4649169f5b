"""
Stage 1: supervised fine-tuning (SFT) on the labelers' demonstrations (InstructGPT §3.5).

The pretrained base model is trained to continue each prompt with its demonstration:
the usual next-token loss, but counted on the response tokens only, so the model learns
to answer, not to write prompts. As in the paper: several epochs, cosine learning-rate
decay, residual dropout 0.2. The paper saw validation loss overfit after one epoch yet
preference keep improving, so both checkpoints are kept:
  out/sft.pt        the final model: what comparisons, reward model, PPO and DPO start from
  out/sft_best.pt   the lowest validation loss, for comparison
At the end the final model answers the held-out evaluation prompts and the gold labeler
scores them, next to the base model's score, so the reader sees what SFT bought.

Run:
  python sft.py                      # CPU preset, about a minute and a half
  python sft.py --device=cuda        # GPU preset
  python sft.py --epochs=8 --lr=3e-4
  python sft.py --init=gpt2 --data_dir=out/hh ...  # from GPT-2's weights (README, "Real model")

Simplified (exercises): the paper picks the final SFT model by reward-model score on a
validation set; here the last epoch is used. No packing of several demonstrations per row.
"""
import dataclasses
import math
import os
import sys
import time

import torch
from tqdm import tqdm

from checkpoint import load_checkpoint, save_checkpoint
from common import Logger, check_finite, log_path, parse_config, peak_memory, setup
from data.chat import encode_pairs, gold_check, load_eval_prompts, row_check
from data.loader import load_jsonl
from data.tokenizer import get_tokenizer
from model import token_logprobs


@dataclasses.dataclass
class Config:
    data_dir: str = "out/data"
    init: str = "out/pretrain.pt"    # the base model, made by: python pretrain.py; or a
                                     # Hugging Face GPT-2 directory (gpt2_weights.py)
    out: str = "out/sft.pt"          # final model (used by later stages)
    best_out: str = "out/sft_best.pt"  # lowest validation loss
    device: str = "auto"
    seed: int = 1337
    epochs: int = 4
    batch_size: int = 32
    lr: float = 3e-4                 # at 1e-3 it forgot what it had read: asked about an animal
    min_lr: float = 3e-5             # with no demonstration, it named one of the ten it was shown
    warmup_iters: int = 20
    dropout: float = 0.2             # residual dropout, as in the paper
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_interval: int = 20
    n_eval_prompts: int = 240        # gold-labeler check at the end; 0 skips it
    max_new_tokens: int = 48


GPU = dict(batch_size=64, epochs=8)


def sft_loss(logits, targets, loss_mask):
    """Mean negative log-likelihood of the response tokens only.
    logits (B, T, vocab) predict targets (B, T); loss_mask (B, T) is 1 on response tokens.
    Prompt and padding positions get exactly zero weight, so zero gradient."""
    logprobs = token_logprobs(logits, targets)  # (B, T)
    return -(logprobs * loss_mask).sum() / loss_mask.sum()


def batch_loss(model, enc, rows, device, block_size):
    prompts = [r["prompt"] for r in rows]
    completions = [r["completion"] for r in rows]
    ids, attn, resp = encode_pairs(enc, prompts, completions, device, block_size, add_eos=True)
    logits = model(ids[:, :-1], attention_mask=attn[:, :-1], fp32_head=False)  # (B, T-1, vocab)
    # position t predicts token t+1: the loss counts it when token t+1 is a response token
    return sft_loss(logits, ids[:, 1:], resp[:, 1:].float())


@torch.no_grad()
def validation_loss(model, enc, rows, cfg, device, autocast):
    model.eval()
    losses = []
    for i in range(0, len(rows), cfg.batch_size):
        with autocast:
            losses.append(batch_loss(model, enc, rows[i:i + cfg.batch_size], device,
                                     model.config.block_size).item())
    model.train()
    return sum(losses) / len(losses)


if __name__ == "__main__":
    cfg = parse_config(Config, sys.argv[1:], gpu=GPU)
    device, autocast = setup(cfg)
    enc = get_tokenizer(cfg.data_dir)
    model, base_ckpt = load_checkpoint(cfg.init, device, make_cmd="python pretrain.py",
                                       tokenizer=enc.name, dropout=cfg.dropout,
                                       kind="language model")
    # a GPT-2 download does not name its tokenizer: its vocabulary size is what can be checked
    if os.path.isdir(cfg.init) and model.config.vocab_size != enc.n_vocab:
        raise ValueError(f"{cfg.init} has {model.config.vocab_size} token embeddings, the tokenizer "
                         f"of {cfg.data_dir} ({enc.name}) {enc.n_vocab} tokens: they do not belong together")
    fits = row_check(enc, model.config.block_size)  # every demonstration, checked now
    train_rows = load_jsonl(os.path.join(cfg.data_dir, "sft.jsonl"), "sft", check=fits)
    val_rows = load_jsonl(os.path.join(cfg.data_dir, "sft_val.jsonl"), "sft", check=fits)
    eval_prompts = load_eval_prompts(cfg.data_dir, enc, model.config.block_size,
                                     cfg.max_new_tokens, cfg.n_eval_prompts)
    print(f"SFT on {len(train_rows)} demonstrations, {len(val_rows)} held out; "
          f"{model.num_params() / 1e6:.2f}M parameters from {cfg.init}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    max_iters = cfg.epochs * steps_per_epoch
    logger = Logger(log_path(cfg.out))

    def lr_at(it):  # linear warmup, then cosine decay (as in the paper)
        if it < cfg.warmup_iters:
            return cfg.lr * (it + 1) / cfg.warmup_iters
        progress = (it - cfg.warmup_iters) / max(1, max_iters - cfg.warmup_iters)
        return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)

    best_val = validation_loss(model, enc, val_rows, cfg, device, autocast)
    print(f"epoch 0 | val_loss {best_val:.4f} (the base model)")
    t0, it = time.time(), 0
    model.train()
    generator = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(train_rows), generator=generator).tolist()
        for i in tqdm(range(0, len(order), cfg.batch_size), desc=f"sft epoch {epoch}",
                      leave=False, mininterval=2):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(it)
            with autocast:
                loss = batch_loss(model, enc, [train_rows[j] for j in order[i:i + cfg.batch_size]],
                                  device, model.config.block_size)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            check_finite(f"sft step {it}", {"loss": loss, "gradient norm": grad_norm})
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if it % cfg.log_interval == 0:
                logger.log(it, line=False, loss=loss.item(), lr=lr_at(it))
            it += 1
        val = validation_loss(model, enc, val_rows, cfg, device, autocast)
        check_finite(f"sft epoch {epoch}", {"validation loss": val})
        logger.log(it, epoch=epoch, loss=loss.item(), val_loss=val,
                   seconds=round(time.time() - t0, 1))
        if val < best_val:
            best_val = val
            save_checkpoint(cfg.best_out, model, dataclasses.asdict(cfg), it, enc.name,
                            val_loss=val, epoch=epoch)
    save_checkpoint(cfg.out, model, dataclasses.asdict(cfg), it, enc.name, val_loss=val,
                    epoch=cfg.epochs)
    print(f"saved {cfg.out} (final, val_loss {val:.4f}) and {cfg.best_out} "
          f"(best val_loss {best_val:.4f}); later stages start from {cfg.out}; "
          f"{time.time() - t0:.0f} s; {peak_memory(device)}")

    # The gold labeler's verdict on the held-out evaluation prompts, base model beside SFT.
    if cfg.n_eval_prompts:
        base, _ = load_checkpoint(cfg.init, device)
        gold_check({"base": base, "sft": model}, enc, eval_prompts, cfg.max_new_tokens, device,
                   cfg.seed, logger, it)
    logger.close()
