"""
Speed and memory on this machine, measured, not asserted (timed tests on shared machines
only flake). Prints medians over repeats, for the CPU and GPU presets:

  training tokens/s and peak memory (pretraining step: forward, backward, AdamW)
  generation tokens/s with and without the KV cache (128 new tokens)
  the written-out attention against PyTorch's fused scaled_dot_product_attention
  a PPO iteration and its split between rollout (sampling) and the rest (scoring and
  update), if out/sft.pt and out/reward.pt exist (python pipeline.py makes them)

Run:  python bench.py                 # presets that fit this device
      python bench.py --preset=cpu --repeats=5
Random weights and tokens: speed does not depend on what the model knows.
"""
import dataclasses
import os
import resource
import tempfile
import statistics
import sys
import time

import torch

import pretrain
from common import autocast_for, check_options, parse_config, resolve_device, uses_bf16
from model import GPT, GPTConfig, lm_loss


@dataclasses.dataclass
class Config:
    device: str = "auto"
    preset: str = "auto"       # cpu, gpu, or auto (cpu, plus gpu when cuda is there)
    repeats: int = 5           # timed repeats; the median is reported
    train_steps: int = 5       # steps per timed training repeat
    new_tokens: int = 128      # generated tokens per row
    gen_batch: int = 16
    ppo_iters: int = 4         # PPO iterations timed on the real checkpoints (0: skip)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeats, device):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_memory_mb(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # whole process, Linux


def model_for(preset, use_sdpa=False, vocab_size=1109):
    p = pretrain.Config() if preset == "cpu" else dataclasses.replace(pretrain.Config(), **pretrain.GPU)
    cfg = GPTConfig(vocab_size=vocab_size, block_size=max(p.block_size, 192), n_layer=p.n_layer,
                    n_head=p.n_head, n_embd=p.n_embd, use_sdpa=use_sdpa)
    return GPT(cfg), p


def bench_training(preset, device, cfg, use_sdpa=False):
    model, p = model_for(preset, use_sdpa)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, model.config.vocab_size, (p.batch_size, p.block_size), device=device)
    autocast = autocast_for(device)  # what the stages use: bf16 where the hardware has it

    def steps():
        for _ in range(cfg.train_steps):
            with autocast:
                loss = lm_loss(model, x, x)  # pretraining's loss: its head in bf16 where on
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = median_time(steps, cfg.repeats, device)
    return model.num_params(), p.batch_size * p.block_size * cfg.train_steps / t, peak_memory_mb(device)


def bench_generation(preset, device, cfg, use_cache):
    model, _ = model_for(preset)
    model.to(device).eval()
    prompt = torch.randint(0, model.config.vocab_size, (cfg.gen_batch, 32), device=device)
    # no eos_id: every row generates all new_tokens, so the two runs do equal work
    t = median_time(lambda: model.generate(prompt, max_new_tokens=cfg.new_tokens, use_cache=use_cache),
                    max(1, cfg.repeats // 2), device)
    return cfg.gen_batch * cfg.new_tokens / t


def main(cfg):
    check_options(cfg)
    device = resolve_device(cfg.device)
    presets = [cfg.preset] if cfg.preset != "auto" else (["cpu", "gpu"] if device == "cuda" else ["cpu"])
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'bf16 autocast' if uses_bf16(device) else 'fp32'} (RLHF_FP32=1: fp32)")
    print("| preset | params | attention | train tok/s | peak MB | gen tok/s, cache | gen tok/s, no cache | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in presets:
        for use_sdpa in (False, True):
            n, tps, mem = bench_training(preset, device, cfg, use_sdpa)
            attention = "sdpa" if use_sdpa else "written out"
            if use_sdpa:
                print(f"| {preset} | {n / 1e6:.2f}M | {attention} | {tps:,.0f} | {mem:,.0f} | | | |")
                continue
            cached = bench_generation(preset, device, cfg, True)
            uncached = bench_generation(preset, device, cfg, False)
            print(f"| {preset} | {n / 1e6:.2f}M | {attention} | {tps:,.0f} | {mem:,.0f} | "
                  f"{cached:,.0f} | {uncached:,.0f} | {cached / uncached:.1f}x |", flush=True)
    if cfg.ppo_iters and os.path.exists("out/sft.pt") and os.path.exists("out/reward.pt"):
        bench_ppo(device, cfg)
    elif cfg.ppo_iters:
        print("PPO timing skipped: out/sft.pt and out/reward.pt are made by: python pipeline.py")


def bench_ppo(device, cfg):
    """A few real PPO iterations (CPU or GPU preset by device) on the pipeline's checkpoints."""
    import ppo
    with tempfile.TemporaryDirectory() as tmp:  # the checkpoint and log are thrown away
        ppo_cfg = ppo.Config(iters=cfg.ppo_iters, sample_every=0, device=device,
                             out=os.path.join(tmp, "ppo.pt"))
        if device == "cuda":
            ppo_cfg = dataclasses.replace(ppo_cfg, **ppo.GPU, iters=cfg.ppo_iters)
        history = ppo.main(ppo_cfg)[1:]  # the first iteration warms up
    per_iter = statistics.median(h["s_per_iter"] for h in history)
    # rollout seconds = tokens generated / rollout tokens per second
    rollout = statistics.median(h["resp_len"] * ppo_cfg.batch_size / h["rollout_tok_s"] for h in history)
    print(f"PPO ({ppo_cfg.batch_size} prompts per iteration): {per_iter:.2f} s per iteration, "
          f"rollout {rollout:.2f} s ({rollout / per_iter:.0%}), scoring and update "
          f"{per_iter - rollout:.2f} s; rollout "
          f"{statistics.median(h['rollout_tok_s'] for h in history):,.0f} tokens/s")


if __name__ == "__main__":
    main(parse_config(Config, sys.argv[1:]))
