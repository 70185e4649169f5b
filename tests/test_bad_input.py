"""Bad input, as a user would give it: each case ends in one line that names the problem
(`error: ...`, no traceback) and a non-zero exit, and leaves the checkpoint and the log of
the last finished run as they were. The scripts run as subprocesses on a tiny world with
stand-in checkpoints; the many option ranges and data rules are checked in-process."""
import importlib
import json
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
import common  # noqa: E402
import dpo  # noqa: E402
import evaluate  # noqa: E402
from common import ConfigError, check_options, parse_config  # noqa: E402
from data import generate, world  # noqa: E402
from data.chat import row_check  # noqa: E402
from data.corpus import load_corpus  # noqa: E402
from data.loader import DataError, load_jsonl  # noqa: E402
from data.tokenizer import EOS, get_tokenizer  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A generated world, stand-in checkpoints (untrained: nothing here needs a trained
    model), a comparisons file with ranked pairs, one of ties only, and earlier logs."""
    root = tmp_path_factory.mktemp("tiny")
    data = root / "data"
    generate.main(generate.Config(n_docs=200, n_sft=32, n_sft_val=8, n_rm=12, n_ppo=12,
                                  n_eval=12, vocab_size=300, out_dir=str(data)))
    enc = get_tokenizer(str(data / "tokenizer.tiktoken"))
    torch.manual_seed(0)
    lm = GPT(GPTConfig(vocab_size=enc.n_vocab, block_size=256, n_layer=1, n_head=2, n_embd=32))
    for name in ("pretrain", "sft", "dpo"):
        save_checkpoint(str(root / f"{name}.pt"), lm, {}, 0, enc.name)
    rm = GPT(GPTConfig(vocab_size=enc.n_vocab, block_size=256, n_layer=1, n_head=2, n_embd=32,
                       scalar_head=True))
    save_checkpoint(str(root / "reward.pt"), rm, {}, 0, enc.name, score_std=1.0)
    rankings, rng = [], random.Random(0)
    for row in load_jsonl(str(data / "rm_prompts.jsonl"), "prompts"):
        p = row["prompt"]
        rankings.append({"prompt": p, "responses": [world.ideal_response(p) + EOS,
                                                     world.bad_response(p, "rude", rng) + EOS]})
    with open(root / "comparisons.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rankings)
    with open(root / "ties.jsonl", "w") as f:
        f.writelines(json.dumps({**r, "ranks": [0, 0]}) + "\n" for r in rankings)
    for name in ("pretrain", "sft", "reward"):
        (root / f"{name}_log.jsonl").write_text('{"step": 0, "loss": 1.0}\n')
    return root


def run(args, cwd):
    """A script as a user runs it: (exit status, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True,
                            env=env, timeout=120)
    return result.returncode, result.stdout, result.stderr


def assert_one_line_error(rc, stderr, *fragments):
    message = stderr.strip().splitlines()[-1]
    assert rc == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert message.startswith("error: ") and all(f in message for f in fragments), message


def snapshot(root, *names):
    return {name: (root / name).read_bytes() for name in names}


# -----------------------------------------------------------------------------
# no NaN reaches a checkpoint

@pytest.mark.parametrize("script,args,stage", [
    ("pretrain.py", ["--max_iters=3", "--block_size=256", "--n_layer=1", "--n_head=2", "--n_embd=32", "--batch_size=4",
                     "--eval_iters=1", "--n_eval_prompts=2", "--max_new_tokens=8"], "pretrain step"),
    ("sft.py", ["--init={root}/pretrain.pt", "--best_out={root}/sft_best.pt", "--epochs=1",
                "--batch_size=8", "--min_lr=1e30", "--n_eval_prompts=0"], "sft step 1"),
    ("reward.py", ["--init={root}/sft.pt", "--comparisons={root}/comparisons.jsonl",
                   "--batch_size=2", "--val_frac=0.25", "--min_lr=1e30"], "reward step 1"),
])
def test_a_learning_rate_too_large_saves_nothing(tiny, script, args, stage):
    name = script[:-3]
    before = snapshot(tiny, f"{name}.pt", f"{name}_log.jsonl")
    rc, _, stderr = run([os.path.join(ROOT, script), f"--data_dir={tiny / 'data'}",
                         f"--out={tiny / name}.pt", "--device=cpu", "--lr=1e30"]
                        + [a.format(root=tiny) for a in args], tiny)
    assert_one_line_error(rc, stderr, stage, "is nan", "stopped without saving")
    assert snapshot(tiny, f"{name}.pt", f"{name}_log.jsonl") == before


def test_dpo_with_a_learning_rate_too_large_saves_nothing(tiny):
    before = snapshot(tiny, "dpo.pt")
    cfg = dpo.Config(data_dir=str(tiny / "data"), comparisons=str(tiny / "comparisons.jsonl"),
                     init=str(tiny / "sft.pt"), out=str(tiny / "dpo.pt"), device="cpu",
                     batch_size=2, val_frac=0.25, lr=1e30, min_lr=1e30, n_eval_prompts=0)
    with pytest.raises(FloatingPointError, match="dpo step 1: loss is nan"):
        dpo.main(cfg)
    assert snapshot(tiny, "dpo.pt") == before


def test_check_finite_names_the_quantity():
    common.check_finite("sft step 3", {"loss": torch.tensor(1.0), "gradient norm": 2.0})
    with pytest.raises(FloatingPointError, match="sft step 3: gradient norm is inf"):
        common.check_finite("sft step 3", {"loss": 1.0, "gradient norm": torch.tensor(float("inf"))})
    with pytest.raises(FloatingPointError, match="ppo iteration 0: value is not finite"):
        common.check_finite("ppo iteration 0", {"value": torch.tensor([0.0, float("nan")])})


# -----------------------------------------------------------------------------
# every option is checked before any work starts

def test_a_bad_option_stops_the_script_at_once(tiny):
    before = snapshot(tiny, "pretrain.pt", "pretrain_log.jsonl")
    rc, stdout, stderr = run([os.path.join(ROOT, "pretrain.py"), "--log_interval=0"], tiny)
    assert_one_line_error(rc, stderr, "--log_interval must be at least 1, got 0")
    assert stdout == "" and snapshot(tiny, "pretrain.pt", "pretrain_log.jsonl") == before
    rc, stdout, stderr = run(["-m", "data.collect", "--temperature=-1"], ROOT)
    assert_one_line_error(rc, stderr, "--temperature must be more than 0, got -1.0")


@pytest.mark.parametrize("module,option,value,allowed", [
    ("pretrain", "eval_iters", 0, "at least 1"),
    ("pretrain", "dropout", 1.0, "at least 0 and less than 1"),
    ("pretrain", "seed", -1, "between 0 and 4294967295"),
    ("pretrain", "device", "gpu", "auto, cpu, cuda, cuda:N or mps"),
    ("sft", "lr", 0.0, "more than 0"),
    ("sft", "warmup_iters", -1, "at least 0"),
    ("reward", "val_frac", 1.0, "more than 0 and less than 1"),
    ("reward", "lm_coef", -1.0, "at least 0"),
    ("dpo", "val_frac", 0.0, "more than 0 and less than 1"),
    ("dpo", "pairs_per_prompt", -1, "at least 0"),
    ("ppo", "lam", 1.5, "between 0 and 1"),
    ("ppo", "clip_eps", 0.0, "more than 0 and less than 1"),
    ("ppo", "beta", -0.1, "at least 0"),
    ("ppo", "kl_target", 0.0, "more than 0"),
    ("ppo", "max_new_tokens", 0, "at least 1"),
    ("data.collect", "k", 1, "between 2 and 9"),
    ("data.collect", "noise", 0.0, "more than 0"),
    ("data.collect", "start_prompt", -1, "at least 0"),
    ("evaluate", "split", "test", "one of eval, val"),
    ("evaluate", "n_samples", 0, "at least 1"),
    ("bestofn", "batch_size", 0, "at least 1"),
    ("data.generate", "terse_share", 1.5, "between 0 and 1"),
    ("data.generate", "vocab_size", 100, "between 257 and 65536"),
    ("bench", "preset", "tpu", "one of auto, cpu, gpu"),
])
def test_option_ranges(module, option, value, allowed):
    cfg = importlib.import_module(module).Config(**{option: value})
    with pytest.raises(ConfigError, match=f"--{option} must be {allowed}, got"):
        check_options(cfg)


def test_options_a_script_checks_itself(tiny):
    with pytest.raises(ConfigError, match="--beta must be more than 0"):  # DPO's beta only
        dpo.main(dpo.Config(beta=0.0, device="cpu"))
    for text in ("nan", "inf", "-inf"):
        with pytest.raises(ConfigError, match="--lr expects a finite number"):
            parse_config(dpo.Config, [f"--lr={text}"])
    with pytest.raises(ValueError, match="n_embd 128 must be n_head 3 times an even head size"):
        GPTConfig(n_head=3)


# -----------------------------------------------------------------------------
# data problems name the file and the line, when the data is loaded

def copy_data(tiny, tmp_path):
    shutil.copytree(tiny / "data", tmp_path / "data")
    return tmp_path / "data"


def test_a_byte_that_is_not_utf8_names_file_and_line(tiny, tmp_path):
    data = copy_data(tiny, tmp_path)
    lines = (data / "sft.jsonl").read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"prompt": "', b'"prompt": "\xff', 1)
    (data / "sft.jsonl").write_bytes(b"\n".join(lines))
    rc, _, stderr = run([os.path.join(ROOT, "sft.py"), f"--data_dir={data}", "--device=cpu",
                         f"--init={tiny / 'pretrain.pt'}", f"--out={tmp_path / 'sft.pt'}"], tmp_path)
    assert_one_line_error(rc, stderr, f"{data / 'sft.jsonl'}:3: not UTF-8 text (byte 0xff")
    text = (data / "pretrain.txt").read_bytes()
    (data / "pretrain.txt").write_bytes(text[:100] + b"\n\n\xc3(" + text[100:])
    enc = get_tokenizer(str(data / "tokenizer.tiktoken"))
    line = text[:100].count(b"\n") + 3
    with pytest.raises(DataError, match=f"pretrain.txt:{line}: not UTF-8 text"):
        load_corpus(str(data), enc)


def test_an_empty_evaluation_prompt_is_named_not_a_hang(tiny, tmp_path):
    data = copy_data(tiny, tmp_path)
    rows = (data / "eval_prompts.jsonl").read_text().splitlines()
    rows[4] = json.dumps({**json.loads(rows[4]), "prompt": ""})
    (data / "eval_prompts.jsonl").write_text("\n".join(rows) + "\n")
    rc, _, stderr = run([os.path.join(ROOT, "evaluate.py"), f"--data_dir={data}", "--device=cpu",
                         f"--ckpt_dir={tiny}", f"--out_dir={tmp_path / 'eval'}"], tmp_path)
    assert_one_line_error(rc, stderr, f"{data / 'eval_prompts.jsonl'}:5: empty prompt")
    # the few-shot examples avoid every evaluation prompt, and "" is in every prompt: the
    # search for an example used to go on forever
    with pytest.raises(ValueError, match="few-shot prefix avoids every evaluation prompt"):
        evaluate.few_shot_shots({"What is 2 plus 2?", ""}, n_shots=3, seed=0)


def test_rows_a_stage_cannot_use(tiny, tmp_path):
    enc = get_tokenizer(str(tiny / "data" / "tokenizer.tiktoken"))
    path = tmp_path / "rows.jsonl"
    long = {"prompt": "What is 1 plus 2?", "completion": "1 plus 2 is 3. " * 60}
    path.write_text(json.dumps({"prompt": "What is 1 plus 2?", "completion": "3."}) + "\n\n"
                    + json.dumps(long) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl:3: the prompt \(\d+ tokens\) and its longest "
                                        r"response \(\d+\) are longer than the model's block_size \(256\)"):
        load_jsonl(str(path), "sft", check=row_check(enc, 256))
    path.write_text(json.dumps({"prompt": "Write a poem about the sea."}) + "\n")
    with pytest.raises(DataError, match="rows.jsonl:1: not a prompt of this world"):
        load_jsonl(str(path), "prompts", check=row_check(enc, 256, 48, gold=True))
    path.write_text(json.dumps({"prompt": "What is 1 plus 2?"}) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl:1: .* and --max_new_tokens \(250\)"):
        load_jsonl(str(path), "prompts", check=row_check(enc, 256, 250))


def test_comparisons_of_ties_only_train_nothing(tiny, tmp_path):
    before = snapshot(tiny, "reward.pt", "reward_log.jsonl")
    rc, _, stderr = run([os.path.join(ROOT, "reward.py"), f"--data_dir={tiny / 'data'}",
                         f"--comparisons={tiny / 'ties.jsonl'}", f"--init={tiny / 'sft.pt'}",
                         f"--out={tiny / 'reward.pt'}", "--device=cpu"], tiny)
    assert_one_line_error(rc, stderr, "ties.jsonl: the 11 rankings to train on hold no ranked pair")
    assert snapshot(tiny, "reward.pt", "reward_log.jsonl") == before
    cfg = dpo.Config(data_dir=str(tiny / "data"), comparisons=str(tiny / "ties.jsonl"),
                     init=str(tiny / "sft.pt"), out=str(tiny / "dpo.pt"), device="cpu")
    with pytest.raises(DataError, match="ties.jsonl: the 11 rankings to train on hold no ranked"):
        dpo.main(cfg)
    one = tmp_path / "one.jsonl"  # one prompt: held out, whatever --val_frac says
    one.write_text((tiny / "comparisons.jsonl").read_text().splitlines()[0] + "\n")
    cfg.comparisons = str(one)
    with pytest.raises(DataError, match="--val_frac=0.1 holds out all 1 of its rankings, leaving "
                                        "none to train on"):
        dpo.main(cfg)


# -----------------------------------------------------------------------------
# a checkpoint of the wrong kind is named

def test_a_checkpoint_of_the_wrong_kind_is_named(tiny, tmp_path):
    rc, _, stderr = run([os.path.join(ROOT, "sft.py"), f"--data_dir={tiny / 'data'}",
                         f"--init={tiny / 'reward.pt'}", f"--out={tmp_path / 'sft.pt'}",
                         "--device=cpu"], tmp_path)
    assert_one_line_error(rc, stderr, f"{tiny / 'reward.pt'} is a reward model; this stage needs "
                                      "a language model, made by: python pretrain.py")
    with pytest.raises(ValueError, match="sft.pt is a language model; this stage needs a reward "
                                         "model, made by: python reward.py"):
        load_checkpoint(str(tiny / "sft.pt"), make_cmd="python reward.py", kind="reward model")
    ckpt = torch.load(str(tiny / "sft.pt"), weights_only=True)
    ckpt["model_config"]["n_head"] = 3
    torch.save(ckpt, str(tmp_path / "odd.pt"))
    with pytest.raises(ValueError, match="odd.pt: its model_config cannot build a model: n_embd 32"):
        load_checkpoint(str(tmp_path / "odd.pt"))


# -----------------------------------------------------------------------------
# one line for a user's mistake, a traceback for a bug

def test_user_errors_print_one_line(capsys):
    common.one_line_errors(FileNotFoundError, FileNotFoundError("no checkpoint at x.pt"), None)
    assert capsys.readouterr().err == "error: no checkpoint at x.pt\n"
    try:
        raise KeyError("a bug")
    except KeyError as e:
        common.one_line_errors(KeyError, e, e.__traceback__)
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "KeyError: 'a bug'" in err
