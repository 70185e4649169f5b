"""The real-data path: Anthropic HH-RLHF's converter on a small hand-written file in HH's
exact format (tests/data/hh_tiny.jsonl, good rows among malformed ones), the data set's
description (chat template and tokenizer), and a tiny end-to-end run (SFT, reward model,
PPO, DPO, evaluation) from a tiny random GPT-2.

The tiny GPT-2 cannot read tiktoken's GPT-2 encoding in a test (downloading it would touch
the network), so the converter trains the world's byte-level BPE on the converted text
(--tokenizer=bpe) and the GPT-2 is built with that vocabulary: the same code path as the
real one, with another tokenizer behind get_tokenizer."""
import gzip
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from data import hh  # noqa: E402
from data.chat import chat_text, encode_pairs  # noqa: E402
from data.loader import DESCRIPTION, DataError, load_description, load_jsonl  # noqa: E402
from data.tokenizer import EOS, get_tokenizer  # noqa: E402

torch.set_num_threads(1)
TRAIN = os.path.join(ROOT, "tests", "data", "hh_tiny.jsonl")
TEST = os.path.join(ROOT, "tests", "data", "hh_tiny_test.jsonl")
# line -> reason of every malformed row of hh_tiny.jsonl (a blank line is not a row)
BAD = {3: "not valid JSON", 8: "expected a JSON object", 13: "field 'rejected' is missing",
       18: "field 'chosen' is missing or not a string", 23: "differ before the last Assistant turn",
       29: "has no '\\n\\nAssistant:' turn", 34: "identical", 39: "empty chosen or rejected",
       44: "ends with a Human turn", 49: "does not start with"}
LIMITS = dict(tokenizer="bpe", vocab_size=400, max_prompt_tokens=128, max_response_tokens=64)


def test_split_transcript():
    text = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is 2+2?\n\nAssistant: It is 4."
    prompt, reply = hh.split_transcript(text)
    assert prompt == "Hi\n\nAssistant: Hello!\n\nHuman: What is 2+2?" and reply == "It is 4."
    # the template puts back exactly what the prompt lost
    assert hh.TEMPLATE.replace("{prompt}", prompt) + " " + reply == text
    with pytest.raises(ValueError, match="Human turn"):
        hh.split_transcript(text + "\n\nHuman: thanks")


def test_converter_reports_every_bad_row_and_writes_the_stage_files(tmp_path, capsys):
    gz = tmp_path / "test.jsonl.gz"
    with open(TEST, "rb") as src, gzip.open(gz, "wb") as dst:  # HH ships gzipped files
        shutil.copyfileobj(src, dst)
    out = tmp_path / "hh"
    hh.main(hh.Config(train=TRAIN, test=str(gz), out_dir=str(out), **LIMITS))
    printed = capsys.readouterr().out
    assert "10 bad train rows skipped" in printed
    for line, reason in BAD.items():
        assert f"hh_tiny.jsonl:{line}: " in printed
    skipped = [json.loads(x) for x in open(out / "skipped.jsonl")]
    assert {s["line"]: s["reason"] for s in skipped}.keys() == BAD.keys()
    for s in skipped:
        assert BAD[s["line"]] in s["reason"] and s["file"] == TRAIN

    sft = load_jsonl(str(out / "sft.jsonl"), "sft")
    cmp = load_jsonl(str(out / "comparisons.jsonl"), "pairs")
    ppo = load_jsonl(str(out / "ppo_prompts.jsonl"), "prompts")
    val = load_jsonl(str(out / "sft_val.jsonl"), "sft")
    evals = load_jsonl(str(out / "eval_pairs.jsonl"), "pairs")
    assert len(sft) + len(cmp) + len(ppo) + len(val) == 41  # 44 good rows, 3 over the limits
    assert len(evals) == 6 and len(load_jsonl(str(out / "eval_prompts.jsonl"), "prompts")) == 6
    # disjoint prompt sets, as InstructGPT's; complete responses end with EOS
    sets = [{r["prompt"] for r in rows} for rows in (sft, cmp, ppo, val)]
    assert sum(map(len, sets)) == len(set().union(*sets))
    assert all(r["chosen"].endswith(EOS) and r["rejected"].endswith(EOS) for r in cmp + evals)
    assert not any(r["completion"].endswith(EOS) for r in sft)  # SFT adds it itself
    # the stand-in pretraining text: the chosen conversations of the SFT and comparison rows
    corpus = open(out / "pretrain.txt").read()
    assert corpus.count(EOS) == len(sft) + len(cmp) and chat_text(get_tokenizer(str(out)), sft[0]["prompt"]) in corpus

    # the description: HH's template, the BPE trained here, no gold labeler
    desc = load_description(str(out))
    assert desc["chat_template"] == "\n\nHuman: {prompt}\n\nAssistant:" and not desc["gold_labeler"]
    enc = get_tokenizer(str(out))
    multi = next(r for r in sft + cmp + ppo + val if "\n\nHuman: " in r["prompt"])
    original = [json.loads(x) for x in open(TRAIN) if multi["prompt"].split("\n")[0] in x][0]
    assert chat_text(enc, multi["prompt"]) + " " + hh.split_transcript(original["chosen"])[1] == \
        original["chosen"]
    ids, _, resp = encode_pairs(enc, [cmp[0]["prompt"]], [cmp[0]["chosen"]], "cpu", 192)
    assert enc.decode(ids[0].tolist()).startswith("\n\nHuman: ") and ids[0, -1] == enc.eot_token
    assert resp.sum() == len(enc.encode(" " + cmp[0]["chosen"][:-len(EOS)])) + 1


def test_converter_options_and_bytes(tmp_path, capsys):
    from common import ConfigError
    for bad, match in ((dict(sft_share=0.6, rm_share=0.4), "leave no rows for PPO"),
                       (dict(max_response_tokens=0), "--max_response_tokens must be at least 1"),
                       (dict(tokenizer="gpt3"), "--tokenizer must be one of gpt2, bpe"),
                       (dict(train=""), "--train")):
        with pytest.raises(ConfigError, match=match):
            hh.main(hh.Config(**{"train": TRAIN, "out_dir": str(tmp_path / "hh"), **LIMITS, **bad}))
    latin1 = tmp_path / "latin1.jsonl"  # a row that is not UTF-8 is one more bad row, by line
    latin1.write_bytes(open(TRAIN, "rb").read() + b'{"chosen": "caf\xe9"}\n')
    hh.main(hh.Config(train=str(latin1), out_dir=str(tmp_path / "hh"), **LIMITS))
    n_lines = open(TRAIN, "rb").read().count(b"\n") + 1
    assert "11 bad train rows skipped" in capsys.readouterr().out
    skipped = [json.loads(x) for x in open(tmp_path / "hh" / "skipped.jsonl")]
    assert skipped[-1]["line"] == n_lines and skipped[-1]["reason"].startswith("not UTF-8 text")


def test_world_is_the_default_description(tmp_path):
    assert load_description(str(tmp_path))["chat_template"] == "User: {prompt}\nAssistant:"
    (tmp_path / DESCRIPTION).write_text(json.dumps({"chat_template": "Q: {question}"}))
    with pytest.raises(DataError, match="one {prompt}"):
        load_description(str(tmp_path))


def test_gpt2_tokenizer_where_tiktoken_has_it(tmp_path, monkeypatch):
    """Only where tiktoken's GPT-2 files are cached: a test never downloads them."""
    import tiktoken.load

    def no_network(url):
        raise ConnectionError(f"a test tried to download {url}")
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    (tmp_path / DESCRIPTION).write_text(json.dumps({"chat_template": hh.TEMPLATE, "tokenizer": "gpt2"}))
    try:
        enc = get_tokenizer(str(tmp_path))
    except ConnectionError:
        pytest.skip("tiktoken's gpt2 encoding is not cached here (it is downloaded on first use)")
    assert enc.name == "gpt2" and enc.n_vocab == 50257 and enc.eot_token == 50256
    assert enc.chat_template == hh.TEMPLATE and get_tokenizer("gpt2").chat_template != hh.TEMPLATE


def test_gpt2_tokenizer_is_a_fresh_copy(tmp_path, monkeypatch):
    """Offline, with a stand-in for tiktoken's encoding: the data set's template goes on a copy
    named "gpt2", never on the Encoding that tiktoken shares with every caller."""
    import tiktoken
    from data.tokenizer import PAT
    shared = tiktoken.Encoding(name="gpt2", pat_str=PAT, mergeable_ranks={bytes([i]): i for i in range(256)},
                               special_tokens={EOS: 256})
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: shared if name == "gpt2" else None)
    (tmp_path / DESCRIPTION).write_text(json.dumps({"chat_template": hh.TEMPLATE, "tokenizer": "gpt2"}))
    enc = get_tokenizer(str(tmp_path))
    assert enc is not shared and enc.name == "gpt2" and enc.chat_template == hh.TEMPLATE
    assert not hasattr(shared, "chat_template") and enc.encode("owls") == shared.encode("owls")


# -----------------------------------------------------------------------------
# end to end, from a tiny random GPT-2

def run(args, cwd):
    result = subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_end_to_end_from_a_tiny_gpt2(tmp_path, monkeypatch, capsys):
    transformers = pytest.importorskip("transformers", reason="transformers is a test-only dependency "
                                       "(CI installs it): pip install transformers safetensors")
    transformers.logging.set_verbosity_error()
    data = tmp_path / "hh"
    hh.main(hh.Config(train=TRAIN, test=TEST, out_dir=str(data), **LIMITS))
    enc = get_tokenizer(str(data))
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=32, vocab_size=enc.n_vocab, n_positions=192)).save_pretrained(
        str(tmp_path / "gpt2"))
    d, ck = f"--data_dir={data}", tmp_path / "ckpt"
    stdout = run([os.path.join(ROOT, "sft.py"), d, f"--init={tmp_path / 'gpt2'}", f"--out={ck / 'sft.pt'}",
                  f"--best_out={ck / 'sft_best.pt'}", "--epochs=3", "--batch_size=4", "--lr=3e-3",
                  "--warmup_iters=2", "--device=cpu"], tmp_path)
    assert "no gold labeler for this data set" in stdout and "peak memory" in stdout
    val_losses = [json.loads(x)["val_loss"] for x in open(ck / "sft_log.jsonl") if "val_loss" in x]
    start = float(stdout.split("val_loss ")[1].split()[0])  # "epoch 0 | val_loss 5.98 (the base model)"
    assert len(val_losses) == 3 and val_losses[-1] < start  # GPT-2 learns the demonstrations
    stdout = run([os.path.join(ROOT, "reward.py"), d, f"--comparisons={data / 'comparisons.jsonl'}",
                  f"--init={ck / 'sft.pt'}", f"--out={ck / 'reward.pt'}", "--batch_size=4",
                  "--device=cpu"], tmp_path)
    assert "held-out accuracy" in stdout and "nan% against the gold order" in stdout

    import dpo
    import evaluate
    import ppo
    with monkeypatch.context() as mp:  # PPO asks the description, not the world, for a gold labeler
        mp.setattr("ppo.world.score", lambda *a: pytest.fail("the world's labeler scored HH"))
        history = ppo.main(ppo.Config(data_dir=str(data), sft=str(ck / "sft.pt"),
                                      reward=str(ck / "reward.pt"), out=str(ck / "ppo_ptx.pt"),
                                      device="cpu", iters=3, batch_size=4, minibatch_size=2,
                                      max_new_tokens=16, ptx_batch_size=2, sample_every=0,
                                      offload=True))
    assert len(history) == 3 and all(h["gold"] != h["gold"] for h in history)  # NaN: no gold
    assert all(h["lp_gap"] < 1e-4 for h in history[:1])
    val = dpo.main(dpo.Config(data_dir=str(data), comparisons=str(data / "comparisons.jsonl"),
                              init=str(ck / "sft.pt"), out=str(ck / "dpo.pt"), device="cpu",
                              batch_size=4))
    assert val["loss"] < 0.75 and val["gold_acc"] != val["gold_acc"]
    results = evaluate.main(evaluate.Config(data_dir=str(data), ckpt_dir=str(ck), models="sft,ppo_ptx,dpo",
                                            out_dir=str(tmp_path / "eval"), device="cpu",
                                            max_new_tokens=16, n_samples=2))
    assert list(results["models"]) == ["sft", "ppo_ptx", "dpo"] and not results["gold_labeler"]
    assert 0 <= results["rm_pair_accuracy"] <= 1 and results["n_pairs"] == 6
    assert 0 <= results["models"]["dpo"]["implicit_reward_acc"] <= 1
    assert results["models"]["sft"]["kl_to_sft"] == 0.0 and results["models"]["sft"]["win_vs_sft"]["rate"] == 0.5
    table = open(tmp_path / "eval" / "table.md").read()
    assert "No gold labeler" in table and "| ppo_ptx |" in table and "held-out human comparisons" in table
    samples = [json.loads(x) for x in open(tmp_path / "eval" / "samples.jsonl")]
    assert len(samples) == 3 * 6 * 2 and all(isinstance(s["rm_score"], float) for s in samples)

    # the checks of every stage hold on this path too: a policy where the judge should be
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    shutil.copy(ck / "sft.pt", swapped / "sft.pt")
    shutil.copy(ck / "sft.pt", swapped / "reward.pt")
    with pytest.raises(ValueError, match="reward.pt is a language model; this stage needs a reward model"):
        evaluate.main(evaluate.Config(data_dir=str(data), ckpt_dir=str(swapped), device="cpu"))
