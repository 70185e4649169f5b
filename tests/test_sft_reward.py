"""SFT's masked loss, the reward model's pairwise loss (InstructGPT eq. 1) and its reading of
the last token, and tiny end-to-end runs of sft.py, data.collect and reward.py."""
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from checkpoint import load_checkpoint, save_checkpoint
from data.chat import encode_pairs, score_rankings, score_responses
from data import generate
from data.tokenizer import get_tokenizer
from model import GPT, GPTConfig
from reward import pairwise_loss, ranking_batch
from sft import sft_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sft_loss_hand_computation():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.5, 0.5, 3.0]]])  # (1, 3, 3)
    targets = torch.tensor([[2, 0, 1]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])  # the first position is prompt
    logp = F.log_softmax(logits, -1)
    expected = -(logp[0, 1, 0] + logp[0, 2, 1]) / 2
    assert torch.allclose(sft_loss(logits, targets, mask), expected)


def test_sft_prompt_tokens_give_exactly_zero_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    targets = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 1, 0]], dtype=torch.float)
    sft_loss(logits, targets, mask).backward()
    assert torch.all(logits.grad[mask == 0] == 0)
    assert torch.all(logits.grad[mask == 1].abs().sum(-1) > 0)


def test_pairwise_loss_equals_naive_pair_by_pair():
    torch.manual_seed(0)
    B, K = 3, 5
    rewards = torch.randn(B, K)
    rows = [{"prompt": "p", "responses": [f"r{i}" for i in range(K)]} for _ in range(B)]
    rows[1]["responses"] = rows[1]["responses"][:3]  # a ranking of 3 among rankings of 5
    _, responses, pair_mask = ranking_batch(rows)
    naive = []
    for b, row in enumerate(rows):
        k = len(row["responses"])
        pairs = list(itertools.combinations(range(k), 2))  # (better, worse)
        naive.append(sum(-F.logsigmoid(rewards[b, i] - rewards[b, j]) for i, j in pairs) / len(pairs))
    assert torch.allclose(pairwise_loss(rewards, pair_mask), torch.stack(naive).mean())
    # the short ranking is padded to five with copies of its last response, in no pair
    assert responses[1] == ["r0", "r1", "r2", "r2", "r2"] and not pair_mask[1, 3:].any()
    assert not pair_mask[1, :, 3:].any()


def test_tied_responses_are_not_compared():
    # InstructGPT eq. 1 counts the ranked pairs: a tie between "b" and "c" is no comparison
    rows = [{"prompt": "p", "responses": ["a", "b", "c", "d"], "ranks": [0, 1, 1, 2]}]
    _, _, pair_mask = ranking_batch(rows)
    expected = {(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)}
    assert {(i, j) for i in range(4) for j in range(4) if pair_mask[0, i, j]} == expected
    # the loss is the same whatever the two tied responses score against each other
    r = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    swapped = torch.tensor([[2.0, 0.0, 1.0, -1.0]])
    assert torch.allclose(pairwise_loss(r, pair_mask), pairwise_loss(swapped, pair_mask))


def test_identical_responses_are_not_compared():
    rows = [{"prompt": "p", "responses": ["a", "a", "b"]}]
    _, _, pair_mask = ranking_batch(rows)
    assert not pair_mask[0, 0, 1] and pair_mask[0, 0, 2] and pair_mask[0, 1, 2]


@pytest.fixture(scope="module")
def world_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    cfg = generate.Config(n_docs=200, n_sft=48, n_sft_val=8, n_rm=12, n_ppo=12, n_eval=12,
                          vocab_size=300, out_dir=str(out / "data"))
    generate.main(cfg)
    enc = get_tokenizer(os.path.join(cfg.out_dir, "tokenizer.tiktoken"))
    torch.manual_seed(0)
    base = GPT(GPTConfig(vocab_size=enc.n_vocab, block_size=192, n_layer=1, n_head=2, n_embd=32))
    save_checkpoint(str(out / "pretrain.pt"), base, {}, 0, enc.name)
    return out, enc


def test_reward_score_is_read_at_the_last_token_whatever_the_padding(world_data):
    out, enc = world_data
    rm, _ = load_checkpoint(str(out / "pretrain.pt"), scalar_head=True)
    prompts = ["What is 1 plus 2?", "Text: Tom lives in Oslo.\nQuestion: Where does Tom live?"]
    responses = ["3.<|endoftext|>", "Tom lives in Oslo.<|endoftext|>"]
    with torch.no_grad():
        batched = score_responses(rm, enc, prompts, responses, "cpu")
        alone = [score_responses(rm, enc, [p], [r], "cpu").item() for p, r in zip(prompts, responses)]
        # right padding, read at each row's own last token, gives the same numbers
        ids, attn, _ = encode_pairs(enc, prompts, responses, "cpu", 192)
        lengths = attn.sum(1)
        right = torch.stack([torch.cat([row[m == 1], row[m == 0]]) for row, m in zip(ids, attn)])
        right_mask = (torch.arange(ids.size(1))[None] < lengths[:, None]).long()
        scores = rm(right, attention_mask=right_mask)
        right_scores = scores[torch.arange(2), lengths - 1]
    assert torch.allclose(batched, torch.tensor(alone), atol=1e-5)
    assert torch.allclose(right_scores, batched, atol=1e-5)


@pytest.mark.parametrize("lm_coef", [0.0, 1.0])
def test_a_prompt_read_once_for_its_k_responses_gives_the_same_scores_and_gradients(world_data,
                                                                                     lm_coef):
    out, enc = world_data
    rm, _ = load_checkpoint(str(out / "pretrain.pt"), scalar_head=True)
    rm.config.lm_coef = lm_coef  # with it, the first response token is read off the prompt's pass
    prompts = ["What is 1 plus 2?", "Text: Tom lives in Oslo.\nQuestion: Where does Tom live?"]
    responses = [["3.<|endoftext|>", "1 plus 2 is 3.<|endoftext|>", "4"],
                 ["Tom lives in Oslo.<|endoftext|>", "Oslo.<|endoftext|>", "The text does not say."]]
    flat_prompts = [p for p in prompts for _ in range(3)]
    flat = [r for group in responses for r in group]
    weights = torch.arange(1.0, 7.0).view(2, 3)  # a gradient through every score

    calls = []  # (rows, columns, through a cache) of each pass through the body
    body = rm.hidden_states

    def counted(idx, *args, kv_cache=None, **kwargs):
        calls.append((*idx.shape, kv_cache is not None))
        return body(idx, *args, kv_cache=kv_cache, **kwargs)
    rm.hidden_states = counted
    rm.zero_grad()
    shared = score_rankings(rm, enc, prompts, responses, "cpu")
    (shared * weights).sum().backward()
    shared_grads = [p.grad.clone() for p in rm.parameters()]
    del rm.hidden_states
    # the two prompts once, then the six responses reading their prompt's keys and values
    assert [(rows, cached) for rows, _, cached in calls] == [(2, True), (6, True)]

    rm.zero_grad()
    flat_scores = score_responses(rm, enc, flat_prompts, flat, "cpu").view(2, 3)
    (flat_scores * weights).sum().backward()
    assert shared.shape == (2, 3)
    torch.testing.assert_close(shared, flat_scores, atol=1e-5, rtol=0)
    # the prompt's pass gets its gradient through the cache: the prompt tokens' embeddings too
    for p, g in zip(rm.parameters(), shared_grads):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)

    # where the longest prompt and the longest response do not fit in the context together,
    # though every pair does, each pair is a row of its own, as score_responses reads them
    responses = [["3.", "1 plus 2 is 3, and 3 is 1 plus 2.<|endoftext|>"], ["Oslo.", "Oslo"]]
    flat_prompts, flat = [p for p in prompts for _ in range(2)], sum(responses, [])
    ids, attn, resp = encode_pairs(enc, flat_prompts, flat, "cpu", 192)
    rm.config.block_size = attn.sum(1).max().item()  # the longest pair just fits
    longest_prompt = (attn - resp).sum(1).max().item()
    assert longest_prompt + resp.sum(1).max().item() > rm.config.block_size
    with torch.no_grad():
        expected = score_responses(rm, enc, flat_prompts, flat, "cpu").view(2, 2)
        torch.testing.assert_close(score_rankings(rm, enc, prompts, responses, "cpu"), expected)
    with pytest.raises(ValueError, match="K responses to every prompt"):
        score_rankings(rm, enc, prompts, [["3."], ["Oslo.", "Oslo"]], "cpu")


def run(args, cwd):
    result = subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_sft_collect_reward_end_to_end(world_data):
    out, enc = world_data
    d = f"--data_dir={out / 'data'}"
    stdout = run([os.path.join(ROOT, "sft.py"), d, f"--init={out / 'pretrain.pt'}",
                  f"--out={out / 'sft.pt'}", f"--best_out={out / 'sft_best.pt'}", "--epochs=2",
                  "--batch_size=8", "--n_eval_prompts=6", "--device=cpu"], out)
    assert "base model on 6 evaluation prompts" in stdout and "sft model" in stdout
    log = [line for line in open(out / "sft_log.jsonl") if '"val_loss"' in line]
    assert len(log) == 2  # one validation per epoch
    run(["-m", "data.collect", d, f"--policy={out / 'sft.pt'}", f"--out={out / 'cmp.jsonl'}",
         "--k=4", "--max_new_tokens=12", "--device=cpu"], ROOT)
    rows = [json.loads(line) for line in open(out / "cmp.jsonl")]
    # four samples and one answer to another prompt of the family, where it has another
    sizes = {len(r["responses"]) for r in rows}
    assert sizes <= {4, 5} and 5 in sizes
    # a later stretch of the prompts (pipeline.py ranks two halves side by side)
    run(["-m", "data.collect", d, f"--policy={out / 'sft.pt'}", f"--out={out / 'cmp_b.jsonl'}",
         "--start_prompt=3", "--n_prompts=2", "--k=2", "--max_new_tokens=12", "--device=cpu"], ROOT)
    later = [json.loads(line)["prompt"] for line in open(out / "cmp_b.jsonl")]
    assert later == [r["prompt"] for r in rows[3:5]]
    result = subprocess.run([sys.executable, "-m", "data.collect", d, f"--policy={out / 'sft.pt'}",
                             f"--out={out / 'cmp_c.jsonl'}", f"--start_prompt={len(rows)}",
                             "--device=cpu"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and f"--start_prompt={len(rows)}" in result.stderr
    assert "Traceback" not in result.stderr  # one line, as every bad option
    assert not os.path.exists(out / "cmp_c.jsonl")
    stdout = run([os.path.join(ROOT, "reward.py"), d, f"--comparisons={out / 'cmp.jsonl'}",
                  f"--init={out / 'sft.pt'}", f"--out={out / 'reward.pt'}", "--batch_size=4",
                  "--val_frac=0.25", "--lm_coef=0.5", "--device=cpu"], out)
    assert "held-out accuracy" in stdout
    rm, ckpt = load_checkpoint(str(out / "reward.pt"))
    assert rm.config.scalar_head and ckpt["score_std"] > 0
    assert rm.config.lm_coef == 0.5  # saved with the model, so PPO and best-of-N score alike
    # the bias was set so that the demonstrations score 0 on average
    demos = [json.loads(line) for line in open(out / "data" / "sft.jsonl")]
    with torch.no_grad():
        s = score_responses(rm, enc, [x["prompt"] for x in demos], [x["completion"] for x in demos],
                            "cpu", add_eos=True)
    assert abs(s.mean().item()) < 1e-4


def test_missing_checkpoint_names_the_command(world_data, tmp_path):
    out, _ = world_data
    result = subprocess.run([sys.executable, os.path.join(ROOT, "reward.py"),
                             f"--data_dir={out / 'data'}", f"--init={out / 'pretrain.pt'}",
                             f"--comparisons={tmp_path / 'nope.jsonl'}", "--device=cpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "python -m data.collect" in result.stderr
