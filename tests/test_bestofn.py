"""best-of-N: its KL formula, its pick, the reward model's gold-order accuracy, and a tiny
end-to-end run of bestofn.py."""
import collections
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from checkpoint import save_checkpoint  # noqa: E402
import bestofn  # noqa: E402
from data import generate, world  # noqa: E402
from data.loader import load_jsonl  # noqa: E402
from data.tokenizer import get_tokenizer  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

torch.set_num_threads(1)


def test_best_of_n_kl():
    assert bestofn.best_of_n_kl(1) == 0.0
    assert bestofn.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    kls = [bestofn.best_of_n_kl(n) for n in (1, 2, 4, 16, 64)]
    assert kls == sorted(kls) and kls[-1] < math.log(64)  # grows, but slower than log N


def test_pick_best_looks_at_the_first_n_only():
    scores = torch.tensor([[0.1, 0.5, 0.2, 9.0], [3.0, 0.0, 1.0, 2.0]])
    assert pick_list(scores, 1) == [0, 0]
    assert pick_list(scores, 3) == [1, 0]
    assert pick_list(scores, 4) == [3, 0]


def pick_list(scores, n):
    return bestofn.pick_best(scores, n).tolist()


def test_gold_order_accuracy_by_hand():
    gold = torch.tensor([[1.0, 0.0, 0.0]])  # pairs with different gold: (0, 1), (0, 2)
    assert bestofn.gold_order_accuracy(torch.tensor([[2.0, 1.0, 3.0]]), gold) == 0.5
    assert bestofn.gold_order_accuracy(torch.tensor([[2.0, 1.0, 1.0]]), gold) == 1.0
    assert bestofn.gold_order_accuracy(torch.tensor([[1.0, 1.0, 0.0]]), gold) == 0.75  # a tie: half


def test_kl_regularised_optimum_by_hand():
    cand_gold = torch.tensor([[1.0, 0.0]])
    baseline = torch.tensor([0.0])  # candidate 0 wins, candidate 1 ties
    judge = torch.tensor([[1.0, 0.0]])
    # beta = 1: weights e / (e + 1) and 1 / (e + 1)
    w = math.e / (math.e + 1)
    gold, win, kl = bestofn.kl_regularised_optimum(judge, cand_gold, baseline, 1.0)
    assert gold == pytest.approx(w)
    assert win == pytest.approx(w + 0.5 * (1 - w))
    assert kl == pytest.approx(w * math.log(2 * w) + (1 - w) * math.log(2 * (1 - w)))
    # a huge beta is SFT itself (uniform weights, KL 0); a tiny one is best-of-N (KL log N)
    gold, win, kl = bestofn.kl_regularised_optimum(judge, cand_gold, baseline, 1e6)
    assert gold == pytest.approx(0.5) and kl == pytest.approx(0.0, abs=1e-6)
    gold, win, kl = bestofn.kl_regularised_optimum(judge, cand_gold, baseline, 1e-3)
    assert gold == pytest.approx(1.0) and win == pytest.approx(1.0) and kl == pytest.approx(math.log(2))


def test_optimum_gold_falls_with_beta():
    torch.manual_seed(0)
    cand_gold = torch.randn(50, 8)
    baseline = torch.randn(50)
    rows = [bestofn.kl_regularised_optimum(cand_gold, cand_gold, baseline, b) for b in (0.1, 0.3, 1, 3)]
    golds, kls = [r[0] for r in rows], [r[2] for r in rows]
    assert golds == sorted(golds, reverse=True)  # a judge that is the gold: the less KL, the less gold
    assert kls == sorted(kls, reverse=True) and all(0 <= k <= math.log(8) for k in kls)


def test_other_animal_accuracy_tells_a_subject_check_from_a_truth_check():
    eos = world.EOS_TEXT
    prompts = ["What do owls eat?", "What food do cows eat?", "Name two fruits."]

    def checks_the_animal(ps, rs):  # right only if the answer names the animal asked
        return torch.tensor([float(world.parse(p)[2]["animals"] in r.lower()) for p, r in zip(ps, rs)])
    acc, n, beaten_by = bestofn.other_animal_accuracy(checks_the_animal, prompts)
    assert (acc, n, beaten_by) == (1.0, 2 * (len(world.DIETS) - 1), [])  # the list question adds none

    def likes_true_sentences(ps, rs):  # blind to the question: every true diet sentence alike
        return torch.tensor([1.0 for _ in rs])
    assert bestofn.other_animal_accuracy(likes_true_sentences, prompts)[0] == 0.5  # ties count half

    # blind to the question, with favourites: "Mice eat seeds." above all, then owls and cows
    liked = {"Mice eat seeds.": 2.0, "Owls eat mice.": 1.0, "Cows eat grass.": 1.0}

    def likes_mice(ps, rs):
        return torch.tensor([liked.get(r[:-len(eos)], 0.0) for r in rs])
    acc, n, beaten_by = bestofn.other_animal_accuracy(likes_mice, prompts)
    # each question: beats the 17 it does not like, ties the other favourite, loses to the mice
    assert acc == pytest.approx(2 * (17 + 0.5) / n)
    assert beaten_by == ["Mice eat seeds." + eos]
    # "Cows eat grass." beats the owls' answer, "Mice eat seeds." beats both: most often first
    liked["Cows eat grass."] = 1.5
    assert bestofn.other_animal_accuracy(likes_mice, prompts)[2] == ["Mice eat seeds." + eos,
                                                                      "Cows eat grass." + eos]
    # the gold labeler itself orders every pair; no diet question, no pairs
    gold = lambda ps, rs: torch.tensor([world.score(p, r) for p, r in zip(ps, rs)])  # noqa: E731
    assert bestofn.other_animal_accuracy(gold, prompts)[0] == 1.0
    acc, n, beaten_by = bestofn.other_animal_accuracy(gold, ["Name two fruits."])
    assert math.isnan(acc) and (n, beaten_by) == (0, [])


def test_unanswerable_accuracy_tells_saying_so_from_making_up():
    eos = world.EOS_TEXT
    no_pet = "Text: Tom lives in Oslo. Tom has a red cup.\nQuestion: What pet does Tom have?"
    no_place = "Text: Ann has a pet cat. Ann has a red cup.\nQuestion: Where does Ann live?"
    answered = "Text: Tom lives in Oslo. Tom has a pet cat.\nQuestion: What pet does Tom have?"
    prompts = [no_pet, no_place, answered, "What do owls eat?"]
    answers = bestofn.made_up_answers("What pet does Tom have?")
    assert len(answers) == len(world.PETS) and "Tom has a pet cat." in answers
    first_color = world.article(world.COLORS[0])
    assert bestofn.made_up_answers("What color is Tom's hat?")[0] == f"Tom has {first_color} hat."
    gold = lambda ps, rs: torch.tensor([world.score(p, r) for p, r in zip(ps, rs)])  # noqa: E731
    # only the questions the text cannot answer count, by kind
    perfect = {"complete": 1.0, "any": 1.0}
    assert bestofn.unanswerable_accuracy(gold, prompts) == {"pet": perfect, "place": perfect}

    def likes_cats(ps, rs):  # "The text does not say" above every made-up answer but the cat
        return torch.tensor([2.0 if "pet cat" in r else 1.0 if "does not say" in r else 0.0
                             for r in rs])
    by_kind = bestofn.unanswerable_accuracy(likes_cats, prompts)
    below_but_cat = (len(world.PETS) - 1) / len(world.PETS)
    assert by_kind["pet"] == pytest.approx({"complete": below_but_cat, "any": below_but_cat})
    assert by_kind["place"] == perfect

    def likes_terse(ps, rs):  # the guideline's answer below every made-up one, the terse above
        return torch.tensor([1.0 if r.startswith("It does not say.") else
                             -1.0 if "does not say" in r else 0.0 for r in rs])
    assert bestofn.unanswerable_accuracy(likes_terse, [no_pet]) == {"pet": {"complete": 0.0,
                                                                            "any": 1.0}}
    assert bestofn.unanswerable_accuracy(gold, [answered, "Name two fruits."]) == {}


def test_end_to_end_tiny(tmp_path):
    data_dir = str(tmp_path / "data")
    generate.main(generate.Config(n_docs=200, n_sft=30, n_sft_val=6, n_rm=12, n_ppo=12, n_val=12,
                                  n_eval=12, vocab_size=300, out_dir=data_dir))
    enc = get_tokenizer(os.path.join(data_dir, "tokenizer.tiktoken"))
    torch.manual_seed(0)
    # room for the checks' answers ("The text does not say ...") in this tiny vocabulary
    config = dict(vocab_size=enc.n_vocab, block_size=256, n_layer=1, n_head=2, n_embd=16)
    save_checkpoint(str(tmp_path / "sft.pt"), GPT(GPTConfig(**config)), {}, 0, enc.name)
    save_checkpoint(str(tmp_path / "reward.pt"), GPT(GPTConfig(**config, scalar_head=True)), {}, 0,
                    enc.name, score_std=1.0)
    cfg = bestofn.Config(data_dir=data_dir, sft=str(tmp_path / "sft.pt"),
                         reward=str(tmp_path / "reward.pt"), split="val",
                         out_dir=str(tmp_path / "eval"), ns="1,2,4", max_new_tokens=8, device="cpu")
    results = bestofn.main(cfg)
    assert os.path.exists(tmp_path / "eval" / "bestofn_val.json")
    has_diets = any(world.parse(r["prompt"])[0] == "truth"
                    for r in load_jsonl(os.path.join(data_dir, "val_prompts.jsonl"), "prompts"))
    assert ("rm_other_animal_accuracy" in results) == has_diets
    if has_diets:
        assert 0.0 <= results["rm_other_animal_accuracy"] <= 1.0
    for acc in results.get("rm_unanswerable_accuracy", {}).values():
        assert 0.0 <= acc["complete"] <= acc["any"] <= 1.0
    assert set(results["best_of"]) == {f"{n}_{j}" for n in (1, 2, 4) for j in ("gold", "reward_model")}
    # the gold labeler picking among more samples never does worse on average
    gold = [results["best_of"][f"{n}_gold"]["gold"] for n in (1, 2, 4)]
    assert gold == sorted(gold)
    # best-of-1 is one plain sample: whichever judge, the same response
    assert results["best_of"]["1_gold"]["gold"] == results["best_of"]["1_reward_model"]["gold"]
    assert set(results["optimum"]) == {f"{b}_{j}" for b in ("0.1", "0.2", "0.3", "1")
                                       for j in ("gold", "reward_model")}
    # the gold labeler's own optimum: a stronger pull (smaller beta) never scores less gold
    gold = [results["optimum"][f"{b}_gold"]["gold"] for b in ("1", "0.3", "0.2", "0.1")]
    assert gold == sorted(gold)
    # the win by family averages back to the whole win, each family weighted by its prompts
    counts = collections.Counter(world.parse(r["prompt"])[0]
                                 for r in load_jsonl(os.path.join(data_dir, "val_prompts.jsonl"), "prompts"))
    for row in results["optimum"].values():
        by_family = row["win_by_family"]
        assert set(by_family) == set(counts)
        mean = sum(by_family[f] * counts[f] for f in counts) / sum(counts.values())
        assert mean == pytest.approx(row["win"], abs=1e-5)
    with pytest.raises(ValueError, match="--betas"):
        bestofn.main(bestofn.Config(**{**cfg.__dict__, "betas": "0.3,0"}))
    with pytest.raises(ValueError, match="--ns"):
        bestofn.main(bestofn.Config(**{**cfg.__dict__, "ns": "0,4"}))
