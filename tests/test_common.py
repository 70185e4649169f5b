"""The shared plumbing in common.py: config parsing, batching prompts and responses into
left-padded token tensors, decoding sampled tokens, and the JSONL files. CPU only."""

import dataclasses
import json
import os
import random
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import ConfigError, Logger, log_path, parse_config, setup, uses_bf16, write_jsonl  # noqa: E402
from data.chat import decode_responses, encode_pairs, encode_prompts  # noqa: E402
from data import world  # noqa: E402
from data.tokenizer import EOS, encode, get_tokenizer, save_ranks, train_bpe  # noqa: E402

torch.set_num_threads(1)


@dataclasses.dataclass
class Config:
    device: str = "cpu"
    seed: int = 1337
    lr: float = 3e-4
    batch_size: int = 8
    compile: bool = False
    out_dir: str = "out/test"


GPU = {"batch_size": 64, "lr": 1e-3, "compile": True}


# -----------------------------------------------------------------------------
# parse_config

def test_defaults():
    assert parse_config(Config, []) == Config()


def test_overrides_and_types():
    cfg = parse_config(Config, ["--seed=7", "--lr=1e-2", "--compile=true", "--out_dir=a=b/c",
                                "--batch-size=3"])
    assert cfg == Config(seed=7, lr=0.01, compile=True, out_dir="a=b/c", batch_size=3)
    assert type(cfg.seed) is int and type(cfg.lr) is float and type(cfg.compile) is bool
    assert parse_config(Config, ["--lr=2"]).lr == 2.0
    assert type(parse_config(Config, ["--lr=2"]).lr) is float
    for text, value in [("1", True), ("yes", True), ("On", True), ("0", False), ("False", False),
                        ("no", False), ("off", False)]:
        assert parse_config(Config, [f"--compile={text}"]).compile is value
    assert parse_config(Config, ["--out_dir="]).out_dir == ""
    # the last of a repeated option wins
    assert parse_config(Config, ["--seed=1", "--seed=2"]).seed == 2


def test_string_annotations():
    # under `from __future__ import annotations` a field's type is the string "int"
    cls = dataclasses.make_dataclass("C", [("n", "int", 1), ("x", "float", 0.5),
                                           ("on", "bool", False)])
    cfg = parse_config(cls, ["--n=4", "--x=0.25", "--on=true"])
    assert (cfg.n, cfg.x, cfg.on) == (4, 0.25, True)
    with pytest.raises(ConfigError, match="--n"):
        parse_config(cls, ["--n=four"])


def test_unknown_option_suggests():
    with pytest.raises(ConfigError) as e:
        parse_config(Config, ["--bach_size=4"])
    message = str(e.value)
    assert "--bach_size" in message and "did you mean --batch_size?" in message
    with pytest.raises(ConfigError, match="unknown option --zzz") as e:
        parse_config(Config, ["--zzz=1"])
    assert "did you mean" not in str(e.value)


@pytest.mark.parametrize("arg,option", [
    ("--seed=1.5", "--seed"), ("--seed=abc", "--seed"), ("--batch_size=", "--batch_size"),
    ("--lr=fast", "--lr"), ("--compile=maybe", "--compile"), ("--compile=", "--compile"),
])
def test_wrong_type_names_option(arg, option):
    with pytest.raises(ConfigError, match=option):
        parse_config(Config, [arg])


@pytest.mark.parametrize("arg", ["--seed", "seed=3", "-seed=3", "3", ""])
def test_malformed_argument(arg):
    with pytest.raises(ConfigError, match="--name=value"):
        parse_config(Config, [arg])


@pytest.mark.parametrize("script", ["sft", "reward", "dpo", "ppo", "pretrain"])
def test_setup_refuses_a_zero_count(script):
    name = "max_iters" if script == "pretrain" else "iters" if script == "ppo" else "epochs"
    module = __import__(script)
    cfg = module.Config(**{name: 0}, device="cpu")
    with pytest.raises(ConfigError, match=f"--{name} must be at least 1"):
        setup(cfg)


@pytest.mark.parametrize("script,name", [("pretrain", "log_interval"), ("pretrain", "eval_interval"),
                                         ("sft", "log_interval"), ("reward", "log_interval")])
def test_setup_refuses_a_zero_interval(script, name):
    cfg = __import__(script).Config(**{name: 0}, device="cpu")
    with pytest.raises(ConfigError, match=f"--{name} must be at least 1"):
        setup(cfg)


@pytest.mark.parametrize("module", ["data.collect", "evaluate", "bestofn", "ppo"])
@pytest.mark.parametrize("temperature", [-1.0, 0.0])
def test_setup_refuses_a_temperature_that_is_not_positive(module, temperature):
    # 0 is refused too: evaluate divides by it, and K greedy samples are one sample K times
    import importlib
    cfg = importlib.import_module(module).Config(temperature=temperature, device="cpu")
    with pytest.raises(ConfigError, match="--temperature must be more than 0"):
        setup(cfg)


def test_gpu_preset_only_on_cuda():
    # an explicit device name is taken as given, so no GPU is needed to test this
    assert parse_config(Config, ["--device=cpu"], gpu=GPU) == Config()
    cfg = parse_config(Config, ["--device=cuda"], gpu=GPU)
    assert (cfg.batch_size, cfg.lr, cfg.compile) == (64, 1e-3, True)
    # the command line beats the preset
    cfg = parse_config(Config, ["--device=cuda", "--batch_size=2"], gpu=GPU)
    assert (cfg.batch_size, cfg.lr) == (2, 1e-3)
    assert parse_config(Config, ["--device=mps"], gpu=GPU).batch_size == 8
    if not torch.cuda.is_available():
        assert parse_config(Config, ["--device=auto"], gpu=GPU).batch_size == 8


# -----------------------------------------------------------------------------
# batching and decoding

@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    rng = random.Random(0)
    prompts = [world.make_prompt(rng, fam, 0) for fam in world.FAMILIES for _ in range(15)]
    text = "\n".join(world.chat(p, world.good_response(p, rng)) for p in prompts)
    path = str(tmp_path_factory.mktemp("tok") / "tokenizer.tiktoken")
    save_ranks(train_bpe(text, 320), path)
    return get_tokenizer(path)


PROMPTS = ["What is 7 plus 5?", "Hi! Name three fruits. Thanks!",
           "Text: Tom lives in Oslo. Tom has a pet cat.\nQuestion: Where does Tom live?"]
RESPONSES = ["7 plus 5 is 12.", "Here are three fruits: apple, pear and plum. 🍐",
             "Tom lives in Oslo." + EOS]


def test_encode_prompts_left_pads(enc):
    ids, mask = encode_prompts(enc, PROMPTS, "cpu")
    lengths = [len(encode(enc, world.chat(p))) for p in PROMPTS]
    assert ids.shape == mask.shape == (3, max(lengths))
    assert ids.dtype == torch.long
    for i, (p, n) in enumerate(zip(PROMPTS, lengths)):
        T = ids.shape[1]
        assert mask[i].tolist() == [0] * (T - n) + [1] * n
        assert ids[i, :T - n].tolist() == [enc.eot_token] * (T - n)
        assert enc.decode(ids[i, T - n:].tolist()) == world.chat(p)
    # every row's last prompt token sits in the last column
    assert (ids[:, -1] == ids[0, -1]).all() and enc.decode([ids[0, -1].item()]).endswith(":")


@pytest.mark.parametrize("add_eos", [False, True])
def test_encode_pairs(enc, add_eos):
    ids, attn, resp = encode_pairs(enc, PROMPTS, RESPONSES, "cpu", block_size=200,
                                   add_eos=add_eos)
    B, T = ids.shape
    assert attn.shape == resp.shape == (B, T) == (3, T)
    assert (attn[:, -1] == 1).all()  # every row ends in the last column
    assert (resp[:, -1] == 1).all()
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        n_prompt = len(encode(enc, world.chat(p)))
        n_resp = len(encode(enc, " " + r)) + add_eos
        pad = T - n_prompt - n_resp
        assert attn[i].tolist() == [0] * pad + [1] * (n_prompt + n_resp)
        assert resp[i].tolist() == [0] * (pad + n_prompt) + [1] * n_resp
        row = ids[i].tolist()
        assert row[:pad] == [enc.eot_token] * pad
        assert enc.decode(row[pad:pad + n_prompt]) == world.chat(p)
        response_ids = ids[i][resp[i] == 1].tolist()
        assert enc.decode(response_ids) == " " + r + (EOS if add_eos else "")
        if add_eos or r.endswith(EOS):
            assert response_ids[-1] == enc.eot_token
        else:
            assert response_ids[-1] != enc.eot_token
        # the whole row reads as the chat transcript
        assert enc.decode(row[pad:]) == world.chat(p, r) + (EOS if add_eos else "")
    assert min(T - attn.sum(1)) == 0  # the longest row has no padding


def test_encode_pairs_block_size(enc):
    n = max(len(encode(enc, world.chat(p, r))) for p, r in zip(PROMPTS, RESPONSES))
    encode_pairs(enc, PROMPTS, RESPONSES, "cpu", block_size=n)  # fits exactly
    with pytest.raises(ValueError, match="block_size"):
        encode_pairs(enc, PROMPTS, RESPONSES, "cpu", block_size=n - 1)
    with pytest.raises(ValueError, match="block_size"):
        encode_pairs(enc, PROMPTS, RESPONSES, "cpu", block_size=n, add_eos=True)


def test_decode_responses(enc):
    eos = enc.eot_token
    ended = encode(enc, " Owls eat mice.")
    rows = [ended + [eos] + encode(enc, " Cows eat grass.") + [eos],  # cut after the first EOS
            [eos] + ended,                                            # EOS at once
            ended + [eos]]
    T = max(map(len, rows))
    new_tokens = torch.tensor([r + [eos] * (T - len(r)) for r in rows])  # (B, T)
    out = decode_responses(enc, new_tokens, eos)
    assert out == ["Owls eat mice." + EOS, EOS, "Owls eat mice." + EOS]
    assert world.components("What do owls eat?", out[0])["correct"]
    # a response that never ended has no EOS text, so the gold labeler sees it did not end
    unended = decode_responses(enc, torch.tensor([encode(enc, " Owls eat mice. Owls eat")]), eos)
    assert unended == ["Owls eat mice. Owls eat"]
    assert not world.components("What do owls eat?", unended[0])["ended"]


# -----------------------------------------------------------------------------
# files

def test_write_jsonl(tmp_path):
    rows = [{"prompt": "What is 7 plus 5?", "n": 1}, {"prompt": "Insult Tom. 🦉", "n": 2}]
    path = tmp_path / "deep" / "rows.jsonl"
    write_jsonl(str(path), rows)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows
    assert os.listdir(path.parent) == ["rows.jsonl"]  # no temporary file left behind
    write_jsonl(str(path), rows[:1])  # overwrites
    assert len(path.read_text().splitlines()) == 1


def test_logger(tmp_path, capsys):
    path = tmp_path / "logs" / "log.jsonl"
    log = Logger(str(path))
    log.log(10, loss=1.23456, lr=3e-4, note="ok")
    log.log(20, line=False, loss=0.5)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["step 10 | loss 1.235 | lr 0.0003 | note ok"]
    assert not path.exists()  # the rows replace the log once the run has finished
    log.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20]
    assert rows[0]["loss"] == 1.23456 and rows[0]["note"] == "ok" and rows[1]["loss"] == 0.5
    assert all(isinstance(r["time"], float) for r in rows)
    assert os.listdir(path.parent) == ["log.jsonl"]


def test_log_path_is_beside_the_checkpoint_and_never_the_checkpoint():
    assert log_path("out/sft.pt") == "out/sft_log.jsonl"
    assert log_path("out/model.bin") == "out/model_log.jsonl"
    assert log_path("runs.pt/model") == "runs.pt/model_log.jsonl"


def test_a_run_that_stops_keeps_the_last_finished_log(tmp_path):
    path = tmp_path / "log.jsonl"
    first = Logger(str(path))
    first.log(0, line=False, loss=1.0)
    first.close()
    failed = Logger(str(path))  # a rerun that fails after logging a row, never closing
    failed.log(0, line=False, loss=float("nan"))
    failed.f.flush()
    assert [json.loads(line)["loss"] for line in path.read_text().splitlines()] == [1.0]


# -----------------------------------------------------------------------------
# pretrain.copy_probe: can a model read its context?

class Induction(torch.nn.Module):
    """A stand-in model that copies perfectly: it predicts the token that followed the last
    earlier occurrence of the current two tokens (an induction head, written out)."""

    def __init__(self, vocab_size, copy=True):
        super().__init__()
        self.vocab_size, self.copy = vocab_size, copy

    def forward(self, ids):  # (1, T) -> (1, T, vocab); only the last position is read
        logits = torch.zeros(1, ids.size(1), self.vocab_size)
        seq = ids[0].tolist()
        earlier = [j for j in range(1, len(seq) - 1) if seq[j - 1:j + 1] == seq[-2:]]
        logits[0, -1, seq[earlier[-1] + 1] if self.copy and earlier else 0] = 100.0
        return logits


def test_copy_probe_tells_copying_from_guessing(enc):
    from pretrain import copy_probe
    copying = copy_probe(Induction(enc.n_vocab), enc, "cpu", n=20)
    guessing = copy_probe(Induction(enc.n_vocab, copy=False), enc, "cpu", n=20)
    assert set(copying) == set(guessing) == {"place", "pet", "color"}
    assert all(v > 0.999 for v in copying.values()) and all(v < 1e-6 for v in guessing.values())


def test_pipeline_stages_pass_options_their_scripts_accept():
    import importlib
    import pipeline
    for name, cmd, output in pipeline.STAGES:
        module = cmd[1] if cmd[0] == "-m" else cmd[0].removesuffix(".py")
        args = cmd[2:] if cmd[0] == "-m" else cmd[1:]
        config = importlib.import_module(module).Config
        cfg = parse_config(config, args)  # an unknown option or a bad value raises here
        if "--out" in {a.split("=")[0] for a in args}:
            assert output.endswith(cfg.out), name  # the stage makes the file the pipeline checks
    # each round reads the PPO policy before it, and the last reward model every round
    made = [output for _, _, output in pipeline.STAGES]
    for path in pipeline.COMPARISONS.split(","):
        assert path in made
    assert (made.index("out/ppo_r1.pt") < made.index("out/comparisons_r2.jsonl")
            < made.index("out/reward_r2.pt") < made.index("out/ppo_r2.pt")
            < made.index("out/comparisons_r3.jsonl") < made.index("out/reward.pt"))
    stages = {name: cmd for name, cmd, _ in pipeline.STAGES}
    assert "--reward=out/reward_r2.pt" in stages["ppo_r2"]
    assert "--policy=out/ppo_r2.pt" in stages["compare_r3"]
    assert len(pipeline.COMPARISONS.split(",")) == 4


def test_rlhf_fp32_keeps_every_stage_in_fp32(monkeypatch):
    monkeypatch.setenv("RLHF_FP32", "1")
    assert not uses_bf16("cpu") and not uses_bf16("cuda")
    monkeypatch.delenv("RLHF_FP32")
    assert uses_bf16("mps") is False  # no bf16 autocast on Apple GPUs here
