"""
The whole InstructGPT pipeline in one command, on the world's embedded data:

  1. data        python -m data.generate    the internet, demonstrations, prompts, tokenizer
  2. pretrain    python pretrain.py         the base model ("GPT-3")
  3. sft         python sft.py              supervised fine-tuning on demonstrations
  4. compare     python -m data.collect     SFT samples ranked by the simulated labelers, each
                                            prompt's with one written for another prompt:
                                            the first 2,000 reward-model prompts
  5. compare_b   python -m data.collect     the same for the next 2,000
  6. reward_r1   python reward.py           a first reward model, from this first round
  7. ppo_r1      python ppo.py              a first, short PPO run against it
  8. compare_r2  python -m data.collect     the first PPO policy's samples ranked, on the
                                            next 2,000 prompts
  9. reward_r2   python reward.py           a second reward model, from both rounds so far
 10. ppo_r2      python ppo.py              a second short PPO run, against it
 11. compare_r3  python -m data.collect     the second PPO policy's samples ranked, on the
                                            last 2,000 prompts
 12. reward      python reward.py           the reward model, from all three rounds
 13. ppo_ptx     python ppo.py              PPO with the pretraining mix (InstructGPT)
 14. ppo         python ppo.py --ptx_coef=0 plain PPO
 15. dpo         python dpo.py              DPO on the same comparisons
 16. bestofn     python bestofn.py          best-of-N: the room in SFT's samples, and the RM's view of it
 17. evaluate    python evaluate.py         the paper's table in miniature

Three rounds of comparisons, as in the paper, whose labelers ranked samples of SFT models
and of earlier PPO policies. A reward model trained on SFT samples alone has never seen what
a PPO policy finds to please it; the labelers of the first round also rank one answer that
SFT wrote for another prompt of the same kind (an answer to another question, which SFT
itself seldom gives), and ranking the PPO policies' samples shows it the rest. Each round
mends what the reward model before it overrated and may overrate something else: the first
PPO policy may say "The text does not say" to questions the text answers, and a reward model
taught otherwise by its samples may then prefer a made-up pet to "The text does not say"
where the text names none, which the second PPO policy finds and the third round shows.

Each stage is a script that also runs alone. A stage whose output already exists is
skipped; --redo=sft,reward (or --redo=all) runs those stages again, and every stage after
a redone one as well, since its input changed. A stage that failed or was interrupted is
run again by the next `python pipeline.py`, with every stage after it: out/pipeline_unfinished
names it until the last stage is done. --device=cuda (or cpu, mps) is passed on;
--seed=N goes to data.generate and makes another world (run it in a fresh out/).

On a CPU, stages 4 and 5, and then stages 12 to 16, run in two lanes side by side (LANES),
each process with half the threads, their output in out/logs/STAGE.log: the two halves of
the first round's comparisons; then the reward model and PPO-ptx, beside DPO, then plain
PPO and best-of-N once the reward model is there. --jobs=1 runs them one after another, as
everything else.

Run:  python pipeline.py
"""
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch

# The 8,000 reward-model prompts in quarters of 2,000: the first round ranks SFT's samples
# on the first 4,000, in two halves of HALF prompts ranked side by side; the second and
# third rounds a PPO policy's samples on ROUND_PROMPTS prompts each, the next 2,000 and the
# last 2,000, so that no round asks another's questions. The first reward model learns from the
# first round; the second from the first two rounds; the reward model from all three. A
# round's PPO run needs only as long as it takes to find what its reward model overrates,
# and a looser KL penalty (ROUND_BETA), so that it finds it.
HALF, ROUND_ITERS, ROUND_BETA, ROUND_PROMPTS = 2000, 30, 0.1, 2000
ROUND1_COMPARISONS = "out/comparisons.jsonl,out/comparisons_b.jsonl"
ROUND2_COMPARISONS = ROUND1_COMPARISONS + ",out/comparisons_r2.jsonl"
COMPARISONS = ROUND2_COMPARISONS + ",out/comparisons_r3.jsonl"

STAGES = [  # name, command, the file it makes
    ("data", ["-m", "data.generate"], "out/data/tokenizer.tiktoken"),
    ("pretrain", ["pretrain.py"], "out/pretrain.pt"),
    ("sft", ["sft.py"], "out/sft.pt"),
    ("compare", ["-m", "data.collect", f"--n_prompts={HALF}"], "out/comparisons.jsonl"),
    # the second half with a seed of its own: its samples and labels drawn afresh
    ("compare_b", ["-m", "data.collect", f"--start_prompt={HALF}", f"--n_prompts={HALF}",
                   "--seed=1338", "--out=out/comparisons_b.jsonl"], "out/comparisons_b.jsonl"),
    ("reward_r1", ["reward.py", f"--comparisons={ROUND1_COMPARISONS}", "--out=out/reward_r1.pt"],
     "out/reward_r1.pt"),
    ("ppo_r1", ["ppo.py", "--reward=out/reward_r1.pt", f"--iters={ROUND_ITERS}",
                f"--beta={ROUND_BETA}", "--out=out/ppo_r1.pt"], "out/ppo_r1.pt"),
    ("compare_r2", ["-m", "data.collect", "--policy=out/ppo_r1.pt", f"--start_prompt={2 * HALF}",
                    f"--n_prompts={ROUND_PROMPTS}", "--n_other=0", "--out=out/comparisons_r2.jsonl"],
     "out/comparisons_r2.jsonl"),
    ("reward_r2", ["reward.py", f"--comparisons={ROUND2_COMPARISONS}", "--out=out/reward_r2.pt"],
     "out/reward_r2.pt"),
    ("ppo_r2", ["ppo.py", "--reward=out/reward_r2.pt", f"--iters={ROUND_ITERS}",
                f"--beta={ROUND_BETA}", "--out=out/ppo_r2.pt"], "out/ppo_r2.pt"),
    # a seed of its own as well: its samples and labels drawn afresh
    ("compare_r3", ["-m", "data.collect", "--policy=out/ppo_r2.pt",
                    f"--start_prompt={2 * HALF + ROUND_PROMPTS}", f"--n_prompts={ROUND_PROMPTS}",
                    "--n_other=0", "--seed=1339", "--out=out/comparisons_r3.jsonl"],
     "out/comparisons_r3.jsonl"),
    ("reward", ["reward.py", f"--comparisons={COMPARISONS}"], "out/reward.pt"),
    ("ppo_ptx", ["ppo.py"], "out/ppo_ptx.pt"),
    ("ppo", ["ppo.py", "--ptx_coef=0"], "out/ppo.pt"),
    ("dpo", ["dpo.py", f"--comparisons={COMPARISONS}"], "out/dpo.pt"),
    ("bestofn", ["bestofn.py"], "out/eval/bestofn_eval.json"),
    ("evaluate", ["evaluate.py"], "out/eval/table.md"),
]
# Stages that need what the stages before them made, but not each other: on a CPU, two
# lanes run side by side, each its stages in turn, each process with half the threads. The
# small matrix products of these models keep one thread busier than two, so on a 2-core
# machine two 1-thread processes train 1.5 times, and sample 1.5 to 2 times, as fast as
# one 2-thread process. Each group of two lanes starts when the stage before its first
# stage is done. The first round's two halves of prompts are ranked side by side. DPO needs
# only the comparisons, so it trains beside the reward model; plain PPO needs the reward
# model too, so it waits for it (WAITS_FOR) if DPO finishes first, and best-of-N, which
# needs it as well, comes after plain PPO. On a 2-core machine (pretraining at 18,891
# tokens/s) the halves of the comparisons took 49 and 50 s; the reward model 144 s and
# PPO-ptx 193 s, beside DPO 134 s, plain PPO 166 s and best-of-N 24 s.
LANES = [  # groups of two lanes; a group's stages follow one another in STAGES
    [["compare"], ["compare_b"]],
    [["reward", "ppo_ptx"], ["dpo", "ppo", "bestofn"]],
]
WAITS_FOR = {"ppo": "reward"}  # a stage -> the stage of the other lane that it needs
LOG_DIR = "out/logs"
# the stages that have started and not yet finished, one per line: written before a stage
# starts, removed after the last, so a stage that failed or was killed is never taken for
# done, whatever it left
UNFINISHED = "out/pipeline_unfinished"
USAGE = ("usage: python pipeline.py [--redo=all|STAGE,STAGE...] [--device=auto|cpu|cuda|mps] "
         "[--seed=N] [--jobs=1|2]")


def threads_per_lane(device, jobs):
    """Threads for each of the two lanes, or None to run every stage one after another: on
    a GPU the lanes would only queue for it."""
    on_cpu = device == "cpu" or (device in (None, "auto") and not torch.cuda.is_available()
                                 and not torch.backends.mps.is_available())
    threads = torch.get_num_threads()
    return threads // 2 if jobs == 2 and on_cpu and threads >= 2 else None


def mark_unfinished(names):
    os.makedirs(os.path.dirname(UNFINISHED), exist_ok=True)
    with open(UNFINISHED, "w") as f:
        f.write("".join(name + "\n" for name in sorted(names)))


def run_stage(i, name, args, threads=None):
    """One stage as its own process: in this terminal, or with `threads` (a lane) in
    out/logs/NAME.log with OMP_NUM_THREADS set. Returns its exit status."""
    print(f"\n[{i}/{len(STAGES)}] {name}: python {' '.join(args)}"
          + (f"  (OMP_NUM_THREADS={threads}, output in {LOG_DIR}/{name}.log)" if threads else ""),
          flush=True)
    t0 = time.time()
    if threads is None:
        returncode = subprocess.run([sys.executable] + args).returncode
    else:
        os.makedirs(LOG_DIR, exist_ok=True)
        with open(os.path.join(LOG_DIR, f"{name}.log"), "w") as log:
            returncode = subprocess.run([sys.executable] + args, stdout=log, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, OMP_NUM_THREADS=str(threads))).returncode
    if returncode == 0:
        print(f"[{i}/{len(STAGES)}] {name}: done in {time.time() - t0:.0f} s", flush=True)
    else:
        print(f"[{i}/{len(STAGES)}] {name}: failed (exit {returncode})"
              + (f"; its output is in {LOG_DIR}/{name}.log" if threads else ""), flush=True)
    return returncode


def run_lane(lane, to_run, threads, ended, ok):
    """A lane's stages in turn, until one fails: returns its name, or None. ended: an Event
    for each stage of the lanes, set when it has ended; ok: its outcome. A stage that needs
    a stage of the other lane (WAITS_FOR) waits for it, and does not start if it failed
    (the other lane names that one)."""
    for name in lane:
        needed = WAITS_FOR.get(name)
        if needed in ended:
            ended[needed].wait()
            if not ok[needed]:
                return None
        ok[name] = False
        try:
            ok[name] = run_stage(*to_run[name], threads) == 0
        finally:
            ended[name].set()
        if not ok[name]:
            return name
    return None


def run_lanes(lanes, to_run, threads):
    """Two lanes side by side, each with `threads` threads; stops the pipeline if a stage
    failed. Every stage of the group was marked unfinished, so the next run runs the whole
    group again, and every later stage."""
    names = [n for lane in lanes for n in lane]
    ended, ok = {n: threading.Event() for n in names}, {}
    with ThreadPoolExecutor(len(lanes)) as pool:
        failed = [n for n in pool.map(lambda lane: run_lane(lane, to_run, threads, ended, ok), lanes)
                  if n]
    if failed:
        raise SystemExit(f"error: stage {' and '.join(failed)} failed; fix it and run "
                         "python pipeline.py, which runs the lanes again, and every later stage")


def main(argv):
    redo, device, seed, jobs = set(), None, None, 2
    names = [name for name, _, _ in STAGES]
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "--redo" and value:
            redo = set(names) if value == "all" else set(value.split(","))
            unknown = redo - set(names)
            if unknown:
                raise SystemExit(f"error: --redo: unknown stage {', '.join(sorted(unknown))}; "
                                 f"stages are {', '.join(names)}")
        elif key == "--device" and value:
            device = value
        elif key == "--seed" and value.isdigit():
            seed = value
        elif key == "--jobs" and value in ("1", "2"):
            jobs = int(value)
        else:
            raise SystemExit(f"error: unknown argument {arg!r}\n{USAGE}")
    unfinished = set(open(UNFINISHED).read().split()) if os.path.exists(UNFINISHED) else set()

    # which stages run: those not done, and every stage after one that runs
    to_run, changed = {}, False
    for i, (name, cmd, output) in enumerate(STAGES, 1):
        if name in unfinished and not changed:
            print(f"[{i}/{len(STAGES)}] {name}: the last run of this stage did not finish; "
                  "running it and every later stage again")
        elif os.path.exists(output) and name not in redo and not changed:
            print(f"[{i}/{len(STAGES)}] {name}: {output} exists, skipped (--redo={name} to run it again)")
            continue
        args = cmd + ([f"--device={device}"] if device and name != "data" else [])
        args += [f"--seed={seed}"] if seed and name == "data" else []
        to_run[name] = (i, name, args)
        changed = True

    threads = threads_per_lane(device, jobs)
    groups = []  # the groups of lanes that run side by side: those where both lanes have work
    if threads:
        for group in LANES:
            to_run_here = [[n for n in lane if n in to_run] for lane in group]
            if all(to_run_here):
                groups.append(to_run_here)
    group_of = {n: g for g, lanes in enumerate(groups) for lane in lanes for n in lane}
    t_start, running, groups_run = time.time(), [], set()
    try:
        for name in to_run:
            if name in group_of:  # the first of a group starts both lanes; the rest ran there
                g = group_of[name]
                if g not in groups_run:
                    running = [n for lane in groups[g] for n in lane]
                    mark_unfinished(running)
                    run_lanes(groups[g], to_run, threads)
                    groups_run.add(g)
                continue
            running = [name]
            mark_unfinished(running)
            if run_stage(*to_run[name]) != 0:
                raise SystemExit(f"error: stage {name} failed; fix it and run python pipeline.py, "
                                 "which runs it again, with every later stage")
    except KeyboardInterrupt:
        raise SystemExit(f"\ninterrupted during stage {' and '.join(running)}; python pipeline.py "
                         "runs it again, with every later stage") from None
    if os.path.exists(UNFINISHED):
        os.remove(UNFINISHED)
    print(f"\npipeline finished in {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main(sys.argv[1:])
