"""evaluate.py: the win rate and its interval on hand cases, the KL to the reference, the
base model's few-shot prefix and its cut at a new turn, and a tiny end-to-end run on
stand-in checkpoints that writes the table and the results."""

import contextlib
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from checkpoint import save_checkpoint  # noqa: E402
import common  # noqa: E402
import evaluate  # noqa: E402
from data import generate, world  # noqa: E402
from data.loader import load_jsonl  # noqa: E402
from data.tokenizer import EOS, encode, get_tokenizer  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """Data, tokenizer and stand-in checkpoints (base, sft, ppo; no ppo_ptx, no dpo)."""
    root = tmp_path_factory.mktemp("world")
    data = str(root / "data")
    generate.main(generate.Config(n_docs=200, n_sft=60, n_sft_val=6, n_rm=30, n_ppo=30,
                                  n_eval=30, vocab_size=300, out_dir=data))
    enc = get_tokenizer(os.path.join(data, "tokenizer.tiktoken"))
    for i, name in enumerate(["pretrain", "sft", "ppo"]):
        torch.manual_seed(i)  # three different models
        model = GPT(GPTConfig(vocab_size=enc.n_vocab, block_size=256, n_layer=1, n_head=2, n_embd=32))
        save_checkpoint(str(root / f"{name}.pt"), model, {}, 0, enc.name)
    return root, data, enc


# -----------------------------------------------------------------------------
# pure functions

def test_win_rate_hand_cases():
    rate, lo, hi = common.win_rate([1.0] * 20, [0.0] * 20)
    assert rate == 1.0 and lo < 1.0 and hi == 1.0
    rate, lo, hi = common.win_rate([0.5] * 20, [0.5] * 20)
    assert rate == 0.5 and lo < 0.5 < hi
    rate, lo, hi = common.win_rate([0.0] * 20, [1.0] * 20)
    assert rate == 0.0 and lo == 0.0 and hi > 0.0
    # a win, a tie, a loss and a win: (1 + 0.5 + 0 + 1) / 4
    assert common.win_rate([1, 0.5, 0, 0.2], [0, 0.5, 1, -1])[0] == pytest.approx(0.625)
    with pytest.raises(ValueError):
        common.win_rate([1, 2], [1])


def test_win_rate_interval_contains_rate_and_shrinks_with_n():
    widths = []
    for n in (8, 40, 160, 640):
        a = [1.0, 0.0, 0.5, 1.0] * (n // 4)  # 62.5% wins at every n
        rate, lo, hi = common.win_rate(a, [0.5] * n)
        assert rate == pytest.approx(0.625) and lo <= rate <= hi
        widths.append(hi - lo)
    assert all(w1 > w2 for w1, w2 in zip(widths, widths[1:]))
    assert widths[-1] < 0.1


def test_wilson_by_hand():
    lo, hi = common.wilson(0.5, 100)  # 0.5 +- 1.96 * 0.05 / (1 + 1.96^2 / 100), about
    assert lo == pytest.approx(0.404, abs=0.001) and hi == pytest.approx(0.596, abs=0.001)
    assert common.wilson(0.0, 30)[0] == 0.0 < common.wilson(0.0, 30)[1]


def test_rate_intervals_count_only_their_cases():
    prompt = "Text: Tom lives in Oslo. Tom has a red cup.\nQuestion: Where does Tom live?"
    prompts = [prompt, prompt, "Insult Tom.", "What is 7 plus 5?"]
    responses = [r + EOS for r in ("Tom lives in Oslo.",      # no hallucination
                                   "Tom lives in Paris.",     # a made-up place
                                   "You are a fool.", "7 plus 5 is 12.")]
    comps = [world.components(p, r) for p, r in zip(prompts, responses)]
    assert [c["hallucinated"] for c in comps[:2]] == [False, True]
    iv = evaluate.rate_intervals(world.report(prompts, responses))
    assert iv["hallucination"] == common.wilson(0.5, 2)   # two closed-QA answers, one made up
    assert iv["toxic_on_rude"] == common.wilson(1.0, 1)   # the sum is no rude request
    assert iv["truthful"] is None                         # no diet was asked about


def test_kl_to_reference_by_hand_and_zero_for_itself():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -7.0], [-1.0, -0.25, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # row 0: 0.5 - 1.0 (the third token is masked); row 1: 0.5 - 0.25 - 9.0
    assert torch.allclose(evaluate.kl_to_reference(logprobs, ref, mask), torch.tensor([-0.5, -8.75]))
    assert torch.equal(evaluate.kl_to_reference(logprobs, logprobs.clone(), mask), torch.zeros(2))


def test_kl_is_exactly_zero_when_the_model_is_the_reference(tiny_world):
    root, data, enc = tiny_world
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=enc.n_vocab, block_size=256, n_layer=1, n_head=2, n_embd=32))
    rows = load_jsonl(os.path.join(data, "eval_prompts.jsonl"), "prompts")[:6]
    prompts = [r["prompt"] for r in rows]
    responses = [world.good_response(p) + ("" if i % 2 else EOS) for i, p in enumerate(prompts)]
    cfg = evaluate.Config(batch_size=4)
    kls = evaluate.response_kls(model, model, enc, prompts, responses, cfg, "cpu",
                                contextlib.nullcontext())
    assert kls.shape == (6,) and torch.equal(kls, torch.zeros(6))


def test_few_shot_prefix_contains_no_eval_prompt(tiny_world):
    root, data, enc = tiny_world
    eval_prompts = {r["prompt"] for r in load_jsonl(os.path.join(data, "eval_prompts.jsonl"), "prompts")}
    shots = evaluate.few_shot_shots(eval_prompts, n_shots=3, seed=0)
    prefix = evaluate.few_shot_prefix(shots)
    assert not any(p in prefix for p in eval_prompts)
    assert prefix.count("User: ") == 3 and prefix.count("\nAssistant: ") == 3 and prefix.endswith("\n")
    assert all(world.score(p, r + EOS) == 1.0 for p, r in shots)  # the examples are good answers
    # forbid exactly the prompts it would choose: it must choose others
    taken = {p for p, _ in evaluate.few_shot_shots(set(), n_shots=3, seed=0)}
    assert not taken & {p for p, _ in evaluate.few_shot_shots(taken, n_shots=3, seed=0)}


def test_few_shot_context_drops_the_earliest_shots_to_fit(tiny_world):
    root, data, enc = tiny_world
    shots = evaluate.few_shot_shots(set(), n_shots=3, seed=0)
    prompt = "What is 2 plus 3?"
    text, k = evaluate.few_shot_context(shots, prompt, enc, max_tokens=10_000)
    assert k == 3 and text == evaluate.few_shot_prefix(shots) + world.chat(prompt)
    alone = len(encode(enc, world.chat(prompt)))
    assert evaluate.few_shot_context(shots, prompt, enc, alone) == (world.chat(prompt), 0)
    one = len(encode(enc, evaluate.few_shot_prefix(shots[2:]) + world.chat(prompt)))
    assert evaluate.few_shot_context(shots, prompt, enc, one)[1] == 1  # keeps the last shot
    with pytest.raises(ValueError):
        evaluate.few_shot_context(shots, prompt, enc, alone - 1)


def test_cut_at_new_turn_counts_as_ended():
    cut = evaluate.cut_at_new_turn("7 plus 5 is 12.\nUser: What is 1 plus 1?\nAssistant: 2")
    assert cut == "7 plus 5 is 12." + EOS
    assert world.components("What is 7 plus 5?", cut)["correct"]
    assert evaluate.cut_at_new_turn("7 plus 5 is 12." + EOS) == "7 plus 5 is 12." + EOS
    assert evaluate.cut_at_new_turn("7 plus 5 is 12. I think") == "7 plus 5 is 12. I think"


# -----------------------------------------------------------------------------
# end to end

def test_end_to_end_tiny(tiny_world, tmp_path):
    root, data, enc = tiny_world
    cfg = evaluate.Config(data_dir=data, ckpt_dir=str(root), out_dir=str(tmp_path / "eval"),
                          device="cpu", n_samples=2, max_new_tokens=8, batch_size=32,
                          eval_batches=2)
    results = evaluate.main(cfg)
    assert list(results["models"]) == ["base", "sft", "ppo"]
    assert len(results["skipped"]) == 2 and "python ppo.py" in results["skipped"][0]
    saved = json.load(open(tmp_path / "eval" / "results.json"))
    assert list(saved["models"]) == ["base", "sft", "ppo"]
    keys = {"score", "win_vs_sft", "win_vs_base", "correct", "hallucination", "truthful",
            "toxic_on_rude", "toxic", "ended", "length", "heldout_loss", "kl_to_sft",
            "families", "held_out_phrasing", "trained_phrasing"}
    for name, r in saved["models"].items():
        assert keys <= set(r), name
        assert -2.75 <= r["score"] <= 1 and r["win_vs_sft"]["n"] == 60
        assert r["win_vs_sft"]["lo"] <= r["win_vs_sft"]["rate"] <= r["win_vs_sft"]["hi"]
        for key in ("hallucination", "truthful"):  # 30 prompts in turn: both families asked
            assert r["intervals"][key][0] <= r[key] <= r["intervals"][key][1], (name, key)
    assert saved["models"]["sft"]["kl_to_sft"] == 0.0 and saved["models"]["base"]["kl_to_sft"] is None
    assert saved["models"]["sft"]["win_vs_sft"]["rate"] == 0.5
    assert saved["models"]["base"]["shots"] > 0
    table = open(tmp_path / "eval" / "table.md").read()
    assert "| base |" in table and "| ppo |" in table and "held out phrasings" in table
    assert "python dpo.py" in table and "Against the paper" in table
    samples = [json.loads(line) for line in open(tmp_path / "eval" / "samples.jsonl")]
    assert len(samples) == 3 * 30 * 2 and {s["sample"] for s in samples} == {0, 1}
    # the ceiling: a perfect answer beats every imperfect SFT sample and ties the perfect ones
    sft_perfect = sum(s["score"] == 1.0 for s in samples if s["model"] == "sft") / 60
    assert saved["perfect_vs_sft"]["rate"] == pytest.approx(1 - sft_perfect / 2)


def test_missing_files_name_the_command(tiny_world, tmp_path):
    root, data, enc = tiny_world
    with pytest.raises(FileNotFoundError, match="tokenizer.*python -m data.generate"):
        evaluate.main(evaluate.Config(data_dir=str(tmp_path), device="cpu"))
    cfg = evaluate.Config(data_dir=data, ckpt_dir=str(tmp_path), out_dir=str(tmp_path / "eval"),
                          device="cpu")
    with pytest.raises(FileNotFoundError, match="sft.pt.*python sft.py"):
        evaluate.main(cfg)


def test_reading_sets_best_of_n_beside_the_policy():
    win = dict(rate=0.7, lo=0.6, hi=0.8)
    m = {"sft": dict(win_vs_sft=dict(rate=0.5, lo=0.4, hi=0.6), kl_to_sft=0.0,
                     held_out_phrasing=0.5, trained_phrasing=0.5),
         "ppo_ptx": dict(win_vs_sft=win, kl_to_sft=1.2, held_out_phrasing=0.6, trained_phrasing=0.7)}
    best_of = {f"{n}_{judge}": dict(n=n, kl=0.0 if n == 1 else 1.84, win=w)
               for n, judge, w in ((1, "gold", 0.5), (1, "reward_model", 0.5),
                                   (16, "gold", 0.8), (16, "reward_model", 0.64))}
    text = "\n".join(evaluate.reading(m, best_of=best_of))
    assert "best-of-16" in text and "64%" in text and "80%" in text and "KL 1.20" in text
    assert "best-of" not in "\n".join(evaluate.reading(m))  # only when bestofn.py has run
