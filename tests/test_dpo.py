"""dpo.py: the loss against a hand computation and its invariants, the masking of the
summed log-probs, and a tiny end-to-end run on a stand-in SFT model."""

import json
import math
import os
import random
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
import dpo  # noqa: E402
from data import generate, world  # noqa: E402
from data.loader import load_comparisons, load_jsonl  # noqa: E402
from data.tokenizer import get_tokenizer  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

torch.set_num_threads(1)


def test_dpo_loss_by_hand():
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    loss, chosen, rejected = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5)
    # pair 0: r_w = 0.5 * 0.5 = 0.25, r_l = 0.5 * -1 = -0.5, margin 0.75
    # pair 1: r_w = 0.5 * -1 = -0.5, r_l = 0.5 * 1 = 0.5, margin -1
    assert torch.allclose(chosen, torch.tensor([0.25, -0.5]))
    assert torch.allclose(rejected, torch.tensor([-0.5, 0.5]))
    by_hand = (math.log(1 + math.exp(-0.75)) + math.log(1 + math.exp(1.0))) / 2
    assert abs(loss.item() - by_hand) < 1e-6


def test_loss_is_log2_when_policy_is_reference():
    logp_c, logp_r = torch.randn(8) * 10, torch.randn(8) * 10
    loss, chosen, rejected = dpo.dpo_loss(logp_c, logp_r, logp_c.clone(), logp_r.clone(), 0.1)
    assert abs(loss.item() - math.log(2)) < 1e-7
    assert (chosen == 0).all() and (rejected == 0).all()


def test_gradient_raises_chosen_lowers_rejected():
    logp_c = torch.tensor([-4.0, -6.0], requires_grad=True)
    logp_r = torch.tensor([-5.0, -3.0], requires_grad=True)
    loss, _, _ = dpo.dpo_loss(logp_c, logp_r, torch.tensor([-4.0, -5.0]),
                              torch.tensor([-5.5, -3.0]), beta=0.1)
    loss.backward()
    # gradient descent moves against the gradient: chosen up, rejected down, equal and opposite
    assert (logp_c.grad < 0).all() and (logp_r.grad > 0).all()
    assert torch.allclose(logp_c.grad, -logp_r.grad)


def tiny_gpt(vocab_size, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=256, n_layer=1, n_head=2, n_embd=32))


def test_sequence_logprobs_ignores_prompt_and_padding():
    model = tiny_gpt(50).eval()
    # (prompt, response) token lists of different lengths, left-padded into one batch
    examples = [([5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14, 15]), ([3, 4, 5, 6, 7, 8], [2])]
    T = max(len(p) + len(r) for p, r in examples)
    ids, attn, resp = (torch.zeros(3, T, dtype=torch.long) for _ in range(3))
    for b, (p, r) in enumerate(examples):
        n = len(p) + len(r)
        ids[b, T - n:] = torch.tensor(p + r)
        attn[b, T - n:] = 1
        resp[b, T - len(r):] = 1
    with torch.no_grad():
        batched = dpo.sequence_logprobs(model, ids, attn, resp)
        for b, (p, r) in enumerate(examples):
            alone = torch.tensor([p + r])
            logp = torch.log_softmax(model(alone[:, :-1]), -1)[0]  # (n-1, vocab)
            naive = sum(logp[t - 1, tok] for t, tok in enumerate(p + r) if t >= len(p))
            assert abs(batched[b].item() - naive.item()) < 1e-4
        # whatever token sits in the padding, the sums do not move
        ids2 = ids.clone()
        ids2[attn == 0] = 49
        assert torch.allclose(dpo.sequence_logprobs(model, ids2, attn, resp), batched, atol=1e-5)


def test_make_pairs_expands_rankings_and_skips_identical():
    rows = [{"prompt": "p", "responses": ["a", "b", "b", "c"]}]
    pairs = dpo.make_pairs(rows)
    assert len(pairs) == 5  # C(4,2) = 6, less the identical ("b", "b")
    assert ("p", "a", "c") in pairs and ("p", "b", "b") not in pairs
    some = dpo.make_pairs(rows, pairs_per_prompt=2, rng=random.Random(0))
    assert len(some) == 2 and set(some) <= set(pairs)


def test_make_pairs_skips_ties():
    # "b" and "c" tied: the ranking holds a > b, a > c, a > d, b > d and c > d
    rows = [{"prompt": "p", "responses": ["a", "b", "c", "d"], "ranks": [0, 1, 1, 2]}]
    pairs = dpo.make_pairs(rows)
    assert sorted(pairs) == sorted([("p", "a", "b"), ("p", "a", "c"), ("p", "a", "d"),
                                    ("p", "b", "d"), ("p", "c", "d")])
    all_tied = [{"prompt": "p", "responses": ["a", "b"], "ranks": [0, 0]}]
    assert dpo.make_pairs(all_tied) == []


def test_end_to_end_tiny(tmp_path):
    data_dir = str(tmp_path / "data")
    generate.main(generate.Config(n_docs=200, n_sft=60, n_sft_val=6, n_rm=30, n_ppo=30,
                                  n_eval=30, vocab_size=300, out_dir=data_dir))
    enc = get_tokenizer(os.path.join(data_dir, "tokenizer.tiktoken"))
    # a stand-in SFT model: untrained, but with the tokenizer's vocabulary and name
    init = str(tmp_path / "sft.pt")
    save_checkpoint(init, tiny_gpt(enc.n_vocab), {}, 0, enc.name)
    # rankings of three responses, best first by the gold score
    comparisons = str(tmp_path / "comparisons.jsonl")
    with open(comparisons, "w") as f:
        for i, row in enumerate(load_jsonl(os.path.join(data_dir, "rm_prompts.jsonl"), "prompts")):
            rng = random.Random(i)
            p = row["prompt"]
            ys = [world.good_response(p, rng) + "<|endoftext|>",
                  world.bad_response(p, "wrong", rng) + "<|endoftext|>",
                  world.bad_response(p, "rude", rng)]
            ys.sort(key=lambda y: -world.score(p, y))
            f.write(json.dumps({"prompt": p, "responses": ys}) + "\n")
    out = str(tmp_path / "dpo.pt")
    cfg = dpo.Config(data_dir=data_dir, comparisons=comparisons, init=init, out=out,
                     device="cpu", epochs=3, batch_size=16, lr=3e-3, min_lr=3e-4,
                     warmup_iters=2, n_eval_prompts=4, max_new_tokens=8)
    val = dpo.main(cfg)
    assert set(val) == {"loss", "acc", "margin", "gold_acc"}

    # on the training pairs, the trained policy beats the log 2 of the start
    rows = load_comparisons(comparisons)
    pairs = dpo.make_pairs(rows[:-max(1, int(cfg.val_frac * len(rows)))])
    ref, _ = load_checkpoint(init)
    ref_c, ref_r = dpo.all_logprobs(ref, enc, pairs, "cpu", torch.no_grad(), 64)
    before = dpo.evaluate(ref, enc, pairs, ref_c, ref_r, cfg, "cpu", torch.no_grad())
    policy, ckpt = load_checkpoint(out, tokenizer=enc.name)
    after = dpo.evaluate(policy, enc, pairs, ref_c, ref_r, cfg, "cpu", torch.no_grad())
    assert abs(before["loss"] - math.log(2)) < 1e-5
    assert after["loss"] < before["loss"] - 0.1
    assert after["acc"] > 0.7 and after["margin"] > 0
    assert ckpt["beta"] == cfg.beta
