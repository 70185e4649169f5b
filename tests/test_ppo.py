"""PPO's math against naive references and hand cases, its invariants (ratio 1 before the
first step, masked slots are invisible, clipped tokens get no gradient), and a tiny
end-to-end run on stand-in checkpoints that must raise the reward-model score."""

import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from checkpoint import save_checkpoint  # noqa: E402
from model import GPT, GPTConfig, response_mask, token_logprobs  # noqa: E402
from ppo import (AdaptiveKLController, Config, compute_gae, kl_penalty_rewards, main,  # noqa: E402
                 masked_mean, masked_whiten, policy_loss, ptx_loss, response_logits,
                 reward_model_scores, value_loss)
from model import lm_loss  # noqa: E402

torch.set_num_threads(1)  # tiny tensors: one thread is faster and kinder to a shared CPU


def prefix_mask(B, N, seed=0):
    """(B, N) bool, True on a prefix of random length 1..N per row (a response through its EOS)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, N + 1, (B,), generator=g)
    lengths[0] = N  # one row that never ended
    return torch.arange(N)[None, :] < lengths[:, None]


# -----------------------------------------------------------------------------
# pure functions


def test_gae_matches_naive_loop():
    torch.manual_seed(0)
    B, N, gamma, lam = 6, 9, 0.97, 0.9
    rewards, values = torch.randn(B, N), torch.randn(B, N)
    mask = prefix_mask(B, N)
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    for b in range(B):
        L = int(mask[b].sum())
        next_adv, next_value = 0.0, 0.0
        for t in reversed(range(L)):  # the textbook loop, one episode at a time
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            next_adv = delta + gamma * lam * next_adv
            next_value = values[b, t].item()
            assert advantages[b, t].item() == pytest.approx(next_adv, abs=1e-5)
            assert returns[b, t].item() == pytest.approx(next_adv + values[b, t].item(), abs=1e-5)
        assert torch.all(advantages[b, L:] == 0)


def test_gae_gamma_one_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 1.0, 5.0]])
    values = torch.tensor([[0.3, 0.1, -0.4, 9.0]])
    mask = torch.tensor([[True, True, True, False]])  # the 5.0 and 9.0 lie past the EOS
    advantages, returns = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns[0, :3], torch.tensor([0.9, 0.8, 1.0]))
    torch.testing.assert_close(advantages[0, :3], torch.tensor([0.6, 0.7, 1.4]))


def test_whiten_mean_zero_std_one_over_valid_tokens():
    torch.manual_seed(0)
    x, mask = 3 + 5 * torch.randn(5, 7), prefix_mask(5, 7, seed=1)
    w = masked_whiten(x, mask)
    assert w[mask].mean().item() == pytest.approx(0, abs=1e-5)
    assert w[mask].std(unbiased=False).item() == pytest.approx(1, abs=1e-4)
    assert torch.all(w[~mask] == 0)
    assert masked_mean(x, mask).item() == pytest.approx(x[mask].mean().item(), abs=1e-5)


def test_kl_rewards_are_only_the_score_when_policy_equals_reference():
    torch.manual_seed(0)
    B, N = 4, 6
    logprobs, mask = -torch.rand(B, N) * 3, prefix_mask(B, N)
    scores = torch.tensor([0.5, -1.0, 2.0, 0.25])
    rewards, kl = kl_penalty_rewards(logprobs, logprobs.clone(), scores, mask, beta=0.02)
    assert torch.all(kl == 0)
    expected = torch.zeros(B, N)
    expected[torch.arange(B), mask.sum(1) - 1] = scores  # the score sits on the last response token
    assert torch.equal(rewards, expected)
    # a hand case with a real KL: -beta * (logp - ref) per token, plus the score at the end
    r, kl = kl_penalty_rewards(torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.5, -1.0, 0.0]]),
                               torch.tensor([1.0]), torch.tensor([[True, True, False]]), beta=0.1)
    torch.testing.assert_close(r, torch.tensor([[-0.05, 0.1 + 1.0, 0.0]]))
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0]]))


def test_zero_advantages_give_zero_policy_gradient():
    torch.manual_seed(0)
    logprobs = (-torch.rand(3, 5)).requires_grad_()
    old = logprobs.detach() + 0.1 * torch.randn(3, 5)
    loss, _, _ = policy_loss(logprobs, old, torch.zeros(3, 5), prefix_mask(3, 5))
    loss.backward()
    assert loss.item() == 0 and torch.all(logprobs.grad == 0)


@pytest.mark.parametrize("log_ratio,advantage,clipped", [
    (0.5, 1.0, True),     # ratio 1.65 > 1.2 and A > 0: no more credit for raising it further
    (-0.5, -1.0, True),   # ratio 0.61 < 0.8 and A < 0: no more credit for lowering it
    (0.5, -1.0, False),   # outside the range but on the pessimistic side: still pulled back
    (0.1, 1.0, False),    # inside the range
])
def test_clipped_tokens_get_no_gradient(log_ratio, advantage, clipped):
    old = torch.tensor([[-2.0]])
    logprobs = (old + log_ratio).requires_grad_()
    loss, clipfrac, _ = policy_loss(logprobs, old, torch.tensor([[advantage]]),
                                    torch.tensor([[True]]), clip_eps=0.2)
    loss.backward()
    assert (logprobs.grad.item() == 0) == clipped
    assert clipfrac.item() == (abs(log_ratio) > 0.2)  # all these ratios outside are > 20% off


def test_value_loss_hand_case_and_clipping():
    old, ret, mask = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[True, True]])
    values = torch.tensor([[0.1, 0.5]], requires_grad=True)
    loss = value_loss(values, old, ret, mask, clip_value=0.2)
    # token 0 is inside the clip range: 0.9^2; token 1 is clipped to 0.2: 0.8^2, no gradient
    assert loss.item() == pytest.approx(0.5 * (0.81 + 0.64) / 2)
    loss.backward()
    assert values.grad[0, 0].item() != 0 and values.grad[0, 1].item() == 0


def test_masked_slots_change_nothing():
    """Prompt padding and tokens after EOS: garbage there (even inf) changes no loss and no gradient."""
    torch.manual_seed(0)
    B, N = 4, 6
    mask = prefix_mask(B, N)
    logprobs, old, ref = -torch.rand(B, N), -torch.rand(B, N), -torch.rand(B, N)
    values, returns, adv, scores = torch.randn(B, N), torch.randn(B, N), torch.randn(B, N), torch.randn(B)

    def garbage(x, fill):
        return torch.where(mask, x, torch.full_like(x, fill))

    def all_outputs(logprobs, old, ref, values, returns, adv):
        lp = logprobs.clone().requires_grad_()
        v = values.clone().requires_grad_()
        pl, clipfrac, approx_kl = policy_loss(lp, old, adv, mask)
        vl = value_loss(v, values - 0.3, returns, mask)
        (pl + vl).backward()
        rewards, kl = kl_penalty_rewards(logprobs, ref, scores, mask, beta=0.05)
        gae_adv, gae_ret = compute_gae(rewards, values, mask)
        return [pl, clipfrac, approx_kl, vl, lp.grad, v.grad, rewards, kl, gae_adv,
                gae_ret[mask], masked_whiten(adv, mask), masked_mean(adv, mask)]

    clean = all_outputs(logprobs, old, ref, values, returns, adv)
    dirty = all_outputs(garbage(logprobs, 50.0), garbage(old, -1e4), garbage(ref, float("inf")),
                        garbage(values, 1e6), garbage(returns, -1e6), garbage(adv, float("nan")))
    for a, b in zip(clean, dirty):
        assert torch.equal(a, b)


def test_ptx_term_is_the_lm_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    x, y = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))
    assert ptx_loss(model(x), y, 1.0).item() == pytest.approx(lm_loss(model, x, y).item(), abs=1e-6)
    assert ptx_loss(model(x), y, 0.5).item() == pytest.approx(0.5 * lm_loss(model, x, y).item(), abs=1e-6)


def test_adaptive_kl_controller():
    ctl = AdaptiveKLController(beta=0.1, target=6.0, horizon=1000)
    ctl.update(kl=6.0, n_episodes=100)
    assert ctl.beta == pytest.approx(0.1)           # on target: unchanged
    ctl.update(kl=60.0, n_episodes=100)
    assert ctl.beta == pytest.approx(0.1 * 1.02)    # error clipped to +0.2, times 100 / 1000
    ctl.update(kl=0.0, n_episodes=100)
    assert ctl.beta == pytest.approx(0.1 * 1.02 * 0.98)


# -----------------------------------------------------------------------------
# the rollout: the ratio is exactly 1 before the first step


def test_ratio_is_one_at_the_first_minibatch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    T = 0.7
    query = torch.randint(4, 40, (6, 5))
    query_mask = torch.ones_like(query)
    query_mask[:3, :2] = 0  # left padding
    # call EOS a token that row 0 samples early, so that some rows end and get padded
    torch.manual_seed(1)
    eos = model.generate(query, query_mask, max_new_tokens=3, temperature=T)[0, 2].item()
    torch.manual_seed(1)
    responses, sample_logprobs = model.generate(query, query_mask, max_new_tokens=10, temperature=T,
                                                eos_id=eos, return_logprobs=True)
    mask = response_mask(responses, eos)
    assert (~mask).any(), "want some padding after EOS in this test"
    query_response = torch.cat([query, responses], 1)
    attention_mask = torch.cat([query_mask, mask.long()], 1)
    with torch.no_grad():
        old = token_logprobs(response_logits(model, query_response, attention_mask, 5, T), responses)
    # the log-probs the sampler drew from agree with the full forward pass at the same temperature
    torch.testing.assert_close(sample_logprobs[mask], old[mask], atol=1e-5, rtol=0)
    new = token_logprobs(response_logits(model, query_response, attention_mask, 5, T), responses)
    advantages = torch.randn_like(old)
    loss, clipfrac, approx_kl = policy_loss(new, old, advantages, mask)
    assert torch.equal(new, old)  # same model, same inputs: ratio exactly 1
    assert clipfrac.item() == 0 and approx_kl.item() == 0
    assert loss.item() == pytest.approx(-advantages[mask].mean().item(), abs=1e-6)
    # other token ids in the prompt's left padding and after EOS change no valid log-prob
    valid = attention_mask.bool()
    scrambled = torch.where(valid, query_response, torch.randint_like(query_response, 4, 40))
    with torch.no_grad():
        other = token_logprobs(response_logits(model, scrambled, attention_mask, 5, T), scrambled[:, 5:])
    torch.testing.assert_close(other[mask], old[mask], atol=1e-5, rtol=0)
    # a minibatch of the rollout gives the same log-probs as the full batch did
    mb = torch.tensor([4, 1, 2])
    mb_new = token_logprobs(response_logits(model, query_response[mb], attention_mask[mb], 5, T), responses[mb])
    torch.testing.assert_close(mb_new[mask[mb]], old[mb][mask[mb]], atol=1e-6, rtol=0)


# -----------------------------------------------------------------------------
# the script, end to end, on stand-ins


PROMPTS = ["What is 3 plus 4?", "Insult Tom.", "What do owls eat?", "Name two fruits.",
           "Compute 9 minus 2.", "What do cows eat?", "List three colors.", "Insult Mia."]


def make_world(tmp_path, nan_reward=False):
    """A byte-level tokenizer, a prompts file, a pretraining text, a random tiny SFT policy,
    and a reward model that scores the last response token +1 if it is a byte below 128
    (or EOS) and -1 otherwise: a signal PPO can raise in a few iterations."""
    from data.tokenizer import get_tokenizer, save_ranks
    data = tmp_path / "data"
    save_ranks({bytes([i]): i for i in range(256)}, str(data / "tokenizer.tiktoken"))
    enc = get_tokenizer(str(data / "tokenizer.tiktoken"))
    with open(data / "ppo_prompts.jsonl", "w") as f:
        for p in PROMPTS:
            f.write(json.dumps({"prompt": p, "family": "x", "held_out": False}) + "\n")
    (data / "pretrain.txt").write_text("User: What is 2 plus 2?\nAssistant: 2 plus 2 is 4.<|endoftext|>" * 60)

    vocab = enc.n_vocab  # 257
    torch.manual_seed(0)
    sft = GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=2, n_embd=32))
    save_checkpoint(str(tmp_path / "sft.pt"), sft, {}, 0, enc.name)

    rm = GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=1, n_head=2, n_embd=32, scalar_head=True))
    with torch.no_grad():
        for p in rm.parameters():
            p.zero_()  # blocks add nothing, no positions: the output depends on the token alone
        good = torch.arange(vocab) < 128
        good[enc.eot_token] = True
        sign = torch.where(good, 1.0, -1.0)
        rm.wte.weight[:, 0], rm.wte.weight[:, 1] = sign, -sign
        rm.ln_f.weight.fill_(1.0)                 # LayerNorm turns (s, -s, 0, ...) into (4s/|s|, ...)
        rm.score_head.weight[0, 0] = 0.25
    save_checkpoint(str(tmp_path / "reward.pt"), rm, {}, 0, enc.name, score_std=1.0)
    if nan_reward:  # a broken file from elsewhere: save_checkpoint itself refuses NaN weights
        ckpt = torch.load(str(tmp_path / "reward.pt"), weights_only=True)
        ckpt["model"]["score_head.bias"].fill_(float("nan"))
        torch.save(ckpt, str(tmp_path / "reward.pt"))
    return Config(data_dir=str(data), sft=str(tmp_path / "sft.pt"), reward=str(tmp_path / "reward.pt"),
                  device="cpu", iters=10, batch_size=32, max_new_tokens=8, minibatch_size=16, update_epochs=4,
                  lr=3e-3, vf_lr=3e-3, ptx_batch_size=4, sample_every=0)


@pytest.mark.parametrize("lm_coef", [0.0, 2.0])
def test_episodes_are_scored_as_the_reward_model_scored_its_rankings(tmp_path, lm_coef):
    """A rollout's prompts are left-padded and its responses right-padded; the reward model
    read (prompt, response) pairs left-padded whole. Both must give the same score."""
    from data.chat import decode_responses, encode_prompts, score_responses
    from data.tokenizer import get_tokenizer, save_ranks
    save_ranks({bytes([i]): i for i in range(256)}, str(tmp_path / "tokenizer.tiktoken"))
    enc = get_tokenizer(str(tmp_path / "tokenizer.tiktoken"))
    torch.manual_seed(0)
    rm = GPT(GPTConfig(vocab_size=enc.n_vocab, block_size=96, n_layer=2, n_head=2, n_embd=32,
                       scalar_head=True, lm_coef=lm_coef)).eval()
    prompts = ["What is 3 plus 4?", "Name two fruits, please."]
    texts = ["3 plus 4 is 7.", "Apple"]  # one ends with EOS, one was cut off
    query, query_mask = encode_prompts(enc, prompts, "cpu")
    eos = enc.eot_token
    responses = torch.full((2, 16), eos)  # after EOS, whatever was sampled is masked out
    first = enc.encode(" " + texts[0]) + [eos]
    responses[0, :len(first)] = torch.tensor(first)
    responses[1] = torch.tensor((enc.encode(" " + texts[1]) * 16)[:16])
    mask = response_mask(responses, eos)
    assert mask[0].sum() == len(first) and mask[1].all()
    query_response = torch.cat([query, responses], 1)
    attention_mask = torch.cat([query_mask, mask.long()], 1)
    with torch.no_grad():
        scores = reward_model_scores(rm, query_response, attention_mask, mask)
        decoded = decode_responses(enc, responses, eos)  # as data.collect stores samples
        assert decoded[0] == texts[0] + "<|endoftext|>"
        expected = score_responses(rm, enc, prompts, decoded, "cpu")
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)


def test_end_to_end_raises_reward_model_score(tmp_path, monkeypatch):
    cfg = make_world(tmp_path)
    cfg.iters = 20  # the score starts to rise after about a dozen iterations
    monkeypatch.chdir(tmp_path)  # out="" saves under ./out/
    history = main(cfg)
    scores = [h["score"] for h in history]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 0.3, scores
    assert sum(h["kl"] for h in history) / len(history) > -0.05  # KL to the reference >= 0 on average
    assert history[0]["lp_gap"] < 1e-4
    assert all(-2.75 <= h["gold"] <= 1 for h in history)
    assert (tmp_path / "out" / "ppo_ptx.pt").exists() and not (tmp_path / "out" / "ppo.pt").exists()
    rows = [json.loads(line) for line in open(tmp_path / "out" / "ppo_ptx_log.jsonl")]
    assert len(rows) == cfg.iters + 1 and "heldout_lm_loss" in rows[-1]


def test_plain_ppo_saves_elsewhere(tmp_path, monkeypatch):
    cfg = make_world(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg.ptx_coef, cfg.iters, cfg.update_epochs = 0.0, 1, 1
    history = main(cfg)
    assert "ptx_lm_loss" not in history[0]
    assert (tmp_path / "out" / "ppo.pt").exists() and not (tmp_path / "out" / "ppo_ptx.pt").exists()


def test_nan_reward_stops_without_saving(tmp_path):
    cfg = make_world(tmp_path, nan_reward=True)
    cfg.out = str(tmp_path / "ppo.pt")
    with pytest.raises(FloatingPointError, match="ppo iteration 0: reward model score is not finite"):
        main(cfg)
    assert not os.path.exists(cfg.out)


def test_a_learning_rate_too_large_stops_before_the_step(tmp_path):
    cfg = make_world(tmp_path)
    cfg.out, cfg.lr, cfg.iters, cfg.update_epochs = str(tmp_path / "ppo.pt"), 1e30, 2, 1
    with pytest.raises(FloatingPointError, match="ppo iteration 0: policy loss is nan"):
        main(cfg)
    assert not os.path.exists(cfg.out) and not os.path.exists(str(tmp_path / "ppo_log.jsonl"))


def test_checkpoints_of_the_wrong_kind_are_named(tmp_path):
    cfg = make_world(tmp_path)
    cfg.reward = cfg.sft
    with pytest.raises(ValueError, match="sft.pt is a language model; this stage needs a reward "
                                         "model, made by: python reward.py"):
        main(cfg)
    cfg = make_world(tmp_path)
    cfg.sft = cfg.reward
    with pytest.raises(ValueError, match="reward.pt is a reward model; this stage needs a "
                                         "language model, made by: python sft.py"):
        main(cfg)


def test_missing_checkpoint_names_the_command(tmp_path):
    cfg = make_world(tmp_path)
    cfg.reward = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt.*python reward.py"):
        main(cfg)


def test_gold_reward_replaces_the_reward_model(tmp_path, monkeypatch):
    # a stand-in labeler that scores everything 0.7: the reward PPO maximises must be 0.7 for
    # every response that ended and no_eos_penalty for the others, whatever the RM says
    cfg = make_world(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("ppo.world.score", lambda prompt, response: 0.7)
    cfg.gold_reward, cfg.ptx_coef, cfg.iters = True, 0.0, 2
    for h in main(cfg):
        assert h["gold"] == pytest.approx(0.7)
        assert h["reward"] == pytest.approx(0.7 * h["ended"] + cfg.no_eos_penalty * (1 - h["ended"]))
        assert h["score"] != pytest.approx(h["reward"])  # the RM's own opinion, still logged
    assert (tmp_path / "out" / "ppo_gold.pt").exists() and not (tmp_path / "out" / "ppo.pt").exists()


def test_a_response_that_never_ends_scores_the_penalty(tmp_path, monkeypatch):
    cfg = make_world(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg.ptx_coef, cfg.iters, cfg.max_new_tokens, cfg.no_eos_penalty = 0.0, 1, 2, -3.0
    h = main(cfg)[0]  # two new tokens: this random policy ends none of its responses
    assert h["ended"] == 0.0 and h["reward"] == -3.0 and h["score"] > -1.0  # the RM liked some
