"""Invariants of model.py on a tiny CPU model: causality, padding, the KV cache,
the two attention paths, generation, and the checkpoint format."""

import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from model import (GPT, GPTConfig, KVCache, apply_rotary, entropy_from_logits,  # noqa: E402
                   lm_loss, response_mask, rotary, token_logprobs)

# tensors this small run faster on one thread; several threads mostly spin-wait,
# and slow down badly when anything else is using the CPU
torch.set_num_threads(1)

VOCAB, EOS, PAD = 64, 1, 0


def tiny_config(**kw):
    cfg = dict(vocab_size=VOCAB, block_size=48, n_layer=2, n_head=2, n_embd=32)
    cfg.update(kw)
    return GPTConfig(**cfg)


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    model = GPT(tiny_config(**kw)).eval()
    # at GPT-2 init the logits are nearly flat and greedy decoding just repeats one token;
    # larger weights give varied, context-dependent text whose greedy choices are far from ties
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(3.0 if name == "wte.weight" else 8.0)
    return model


def left_pad(prompts):
    """list of 1-D token lists -> (B, Tp) ids, (B, Tp) mask, padded on the left."""
    Tp = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), Tp), PAD, dtype=torch.long)
    mask = torch.zeros(len(prompts), Tp, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, Tp - len(p):] = torch.tensor(p)
        mask[i, Tp - len(p):] = 1
    return ids, mask


PROMPTS = [[5, 9, 13], [7, 22, 3, 40, 11], [2, 60, 33, 17, 8, 29, 44]]


# -----------------------------------------------------------------------------
# forward


def test_shapes_and_scalar_head():
    lm = tiny_model()
    idx = torch.randint(2, VOCAB, (3, 10))
    assert lm(idx).shape == (3, 10, VOCAB)
    assert lm(idx).dtype == torch.float32
    rm = tiny_model(scalar_head=True)
    scores = rm(idx)
    assert scores.shape == (3, 10)
    assert torch.all(scores[:, 0] != 0)  # a small random head, not zero
    assert rm.score_head.bias.item() == 0
    assert not hasattr(rm, "lm_head")
    assert lm.lm_head.weight is lm.wte.weight  # tied
    assert lm.num_params() == sum(p.numel() for p in set(lm.parameters()))


def test_reward_adds_the_response_mean_log_prob_of_the_language_model_it_was_made_from():
    lm = tiny_model()
    rm = tiny_model(scalar_head=True)
    rm.load_state_dict(lm.state_dict(), strict=False)  # the same body and embedding
    idx = torch.randint(2, VOCAB, (3, 10))
    response_mask = torch.zeros(3, 10, dtype=torch.long)
    response_mask[0, 4:] = 1
    response_mask[1, 7:] = 1
    response_mask[2, 9:] = 1  # a one-token response
    hidden = rm.hidden_states(idx)
    args = (hidden[:, -1], hidden[:, :-1], idx[:, 1:], response_mask[:, 1:])
    head_alone = rm.reward(*args)
    torch.testing.assert_close(head_alone, rm(idx)[:, -1])  # lm_coef 0: the paper's reward model
    logprobs = torch.log_softmax(lm(idx)[:, :-1], -1).gather(-1, idx[:, 1:, None]).squeeze(-1)
    mask = response_mask[:, 1:].float()
    mean_logprob = (logprobs * mask).sum(1) / mask.sum(1)  # by hand, from the language model
    rm.config.lm_coef = 0.5
    torch.testing.assert_close(rm.reward(*args), head_alone + 0.5 * mean_logprob)
    with pytest.raises(ValueError, match="lm_coef must be a finite number, at least 0"):
        tiny_config(lm_coef=-1.0)


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_causality_gradient(use_sdpa):
    model = tiny_model(use_sdpa=use_sdpa)
    idx = torch.randint(2, VOCAB, (2, 12))
    captured = {}

    def keep_embeddings(module, inp, out):
        out.retain_grad()
        captured["emb"] = out
    handle = model.wte.register_forward_hook(keep_embeddings)
    t = 5
    model(idx)[:, t].sum().backward()
    handle.remove()
    grad = captured["emb"].grad  # (B, T, C)
    assert torch.all(grad[:, t + 1:] == 0)  # exactly zero: the future cannot leak
    assert grad[:, :t + 1].abs().sum() > 0


def test_future_tokens_do_not_change_past_logits():
    model = tiny_model()
    idx = torch.randint(2, VOCAB, (2, 12))
    idx2 = idx.clone()
    idx2[:, 7:] = torch.randint(2, VOCAB, (2, 5))
    assert torch.equal(model(idx)[:, :7], model(idx2)[:, :7])


def test_padding_is_invisible():
    """A left-padded row gives the same logits on its real tokens as the row alone,
    whatever token ids sit in the padding."""
    model = tiny_model()
    ids, mask = left_pad(PROMPTS)
    ids_other_pad = torch.where(mask.bool(), ids, torch.full_like(ids, 37))
    out, out2 = model(ids, mask), model(ids_other_pad, mask)
    for i, p in enumerate(PROMPTS):
        alone = model(torch.tensor([p]))[0]
        torch.testing.assert_close(out[i, -len(p):], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(out2[i, -len(p):], alone, atol=1e-5, rtol=0)
    assert not torch.isnan(out).any()  # padding rows attend to themselves, no empty softmax


def test_rotary_scores_depend_on_the_offset_alone():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)  # (B, nh, T, hs)
    pos = torch.arange(5).repeat(2, 1)                         # (B, T)

    def scores(shift):
        cos, sin = rotary(pos + shift, 8)
        return apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).transpose(-2, -1)

    assert torch.allclose(scores(0), scores(17), atol=1e-5)   # the same text later on
    assert not torch.allclose(scores(0), q @ k.transpose(-2, -1), atol=1e-3)  # positions do count
    cos, sin = rotary(pos, 8)
    assert torch.allclose(apply_rotary(q, cos, sin).norm(dim=-1), q.norm(dim=-1), atol=1e-5)  # a rotation
    assert torch.equal(apply_rotary(q, *rotary(torch.zeros_like(pos), 8)), q)  # position 0: identity


def attention_twins(padded):
    """The same weights with the written-out attention and with sdpa, and a batch for them."""
    torch.manual_seed(0)
    ref = GPT(tiny_config())
    fast = GPT(tiny_config(use_sdpa=True))
    fast.load_state_dict(ref.state_dict())
    ids, mask = left_pad(PROMPTS) if padded else (torch.randint(2, VOCAB, (3, 9)), None)
    return ref, fast, ids, mask


@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_matches_handwritten(padded):
    ref, fast, ids, mask = attention_twins(padded)
    out_ref, out_fast = ref(ids, mask), fast(ids, mask)
    torch.testing.assert_close(out_fast, out_ref, atol=1e-5, rtol=0)
    out_ref.square().sum().backward()
    out_fast.square().sum().backward()
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p_fast.grad, p_ref.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_matches_handwritten_under_bf16_autocast(padded):
    # the CPU preset trains under bf16 autocast: there the two attentions round differently
    # (about 1e-3 on these logits), but a mask that fails in bf16 would differ by far more
    ref, fast, ids, mask = attention_twins(padded)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ref, out_fast = ref(ids, mask), fast(ids, mask)
    assert torch.isfinite(out_ref).all() and torch.isfinite(out_fast).all()
    torch.testing.assert_close(out_fast, out_ref, atol=1e-2, rtol=0)
    torch.testing.assert_close(out_ref, ref(ids, mask), atol=1e-2, rtol=0)   # and the fp32 pass


def test_kv_cache_forward_matches_full_forward():
    model = tiny_model()
    ids, mask = left_pad(PROMPTS)
    full = model(ids, mask)
    cache = KVCache(model.config.n_layer, ids.size(1))
    first = model(ids[:, :4], mask[:, :4], kv_cache=cache)
    rest = [model(ids[:, t:t + 1], mask[:, :t + 1], kv_cache=cache) for t in range(4, ids.size(1))]
    assert cache.pos == ids.size(1)
    torch.testing.assert_close(torch.cat([first] + rest, dim=1), full, atol=1e-5, rtol=0)


def test_gradients_flow_through_a_cache_repeated_for_several_continuations():
    # a prompt's pass, its cache repeated for two continuations each, the continuations'
    # pass: the same outputs and gradients as the whole sequences, each prompt written twice
    model = tiny_model(scalar_head=True)
    ids, mask = left_pad(PROMPTS)
    torch.manual_seed(1)
    more = torch.randint(1, VOCAB, (2 * len(PROMPTS), 3))
    weights = torch.randn(2 * len(PROMPTS), 3)
    model.zero_grad()
    cache = KVCache(model.config.n_layer, ids.size(1) + 3)
    model(ids, mask, kv_cache=cache)
    cache.repeat(2)
    twice = mask.repeat_interleave(2, dim=0)
    shared = model(more, torch.cat([twice, torch.ones_like(more)], 1), kv_cache=cache)
    (shared * weights).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    whole = model(torch.cat([ids.repeat_interleave(2, dim=0), more], 1),
                  torch.cat([twice, torch.ones_like(more)], 1))[:, -3:]
    (whole * weights).sum().backward()
    torch.testing.assert_close(shared, whole, atol=1e-5, rtol=0)
    for (name, p), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_token_logprobs_and_entropy():
    logits = torch.randn(2, 3, VOCAB)
    tokens = torch.randint(0, VOCAB, (2, 3))
    ref = torch.log(torch.softmax(logits, -1))[torch.arange(2)[:, None], torch.arange(3), tokens]
    torch.testing.assert_close(token_logprobs(logits, tokens), ref)
    uniform = torch.zeros(2, 3, VOCAB)
    torch.testing.assert_close(entropy_from_logits(uniform), torch.full((2, 3), float(torch.log(torch.tensor(VOCAB)))))
    peaked = torch.full((1, 1, VOCAB), -1e4)
    peaked[..., 3] = 0
    assert entropy_from_logits(peaked).abs().item() < 1e-6


# -----------------------------------------------------------------------------
# generation


def test_cached_and_uncached_greedy_agree():
    model = tiny_model()
    ids, mask = left_pad(PROMPTS)
    a, la = model.generate(ids, mask, max_new_tokens=20, temperature=0, use_cache=True, return_logprobs=True)
    b, lb = model.generate(ids, mask, max_new_tokens=20, temperature=0, use_cache=False, return_logprobs=True)
    assert a.shape == (3, 20)
    assert torch.equal(a, b)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=0)
    assert len(set(a[0].tolist())) > 1  # not a degenerate constant output


@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_batch_matches_each_prompt_alone(use_cache):
    model = tiny_model()
    ids, mask = left_pad(PROMPTS)
    batch = model.generate(ids, mask, max_new_tokens=15, temperature=0, use_cache=use_cache)
    for i, p in enumerate(PROMPTS):
        alone = model.generate(torch.tensor([p]), max_new_tokens=15, temperature=0, use_cache=use_cache)
        assert torch.equal(batch[i], alone[0]), f"row {i}"


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_stops_at_eos_and_pads(use_cache):
    """A row that ends leaves the batch (and the cache); the others go on as if it were there."""
    model = tiny_model()
    ids, mask = left_pad(PROMPTS)
    free = model.generate(ids, mask, max_new_tokens=12, temperature=0)  # (B, 12), no EOS
    # call EOS a token that row 0 first writes a few steps in, so it stops mid-response
    k = next(k for k in range(2, 12) if free[0, k] not in free[0, :k])
    eos = free[0, k].item()
    out, logp = model.generate(ids, mask, max_new_tokens=12, temperature=0, eos_id=eos,
                               return_logprobs=True, use_cache=use_cache)
    rmask = response_mask(out, eos)
    firsts = []
    for i in range(3):
        hits = (free[i] == eos).nonzero()
        first = hits[0].item() if len(hits) else 11
        firsts.append(first)
        assert torch.equal(out[i, :first + 1], free[i, :first + 1])  # same tokens up to EOS
        assert torch.all(out[i, first + 1:] == eos)                   # then only EOS
        assert torch.all(logp[i, first + 1:] == 0)
        assert rmask[i].sum().item() == first + 1
    assert firsts[0] == k
    # the loop ends as soon as every row has finished
    assert out.size(1) == max(firsts) + 1
    single = model.generate(ids[:1, -3:], max_new_tokens=12, temperature=0, eos_id=eos)
    assert single.shape == (1, k + 1) and single[0, -1].item() == eos


def test_response_mask_hand_case():
    new_tokens = torch.tensor([[5, 2, 7, 2], [1, 3, 4, 6], [2, 2, 2, 2]])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(response_mask(new_tokens, eos_id=2), expected)


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, 5)])
def test_sampled_logprobs_match_forward_pass(temperature, top_k):
    """The logprobs generate returns are those of a fresh forward pass over prompt + response,
    under the distribution the tokens were drawn from (the PPO old-policy logprobs)."""
    model = tiny_model()
    ids, mask = left_pad(PROMPTS)
    torch.manual_seed(1)
    out, logp = model.generate(ids, mask, max_new_tokens=10, temperature=temperature, top_k=top_k,
                               eos_id=EOS, return_logprobs=True)
    full = torch.cat([ids, out], dim=1)                       # (B, Tp + N)
    full_mask = torch.cat([mask, torch.ones_like(out)], dim=1)
    logits = model(full, full_mask)[:, ids.size(1) - 1:-1]    # (B, N, vocab): logits that predicted each new token
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]     # (B, N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    ref = token_logprobs(logits, out)
    valid = response_mask(out, EOS)
    torch.testing.assert_close(logp[valid], ref[valid], atol=1e-5, rtol=0)
    assert torch.all(logp[~valid] == 0)


def test_top_k_one_is_greedy_and_temperature_scales():
    model = tiny_model()
    ids, mask = left_pad(PROMPTS)
    greedy = model.generate(ids, mask, max_new_tokens=8, temperature=0)
    torch.manual_seed(3)
    topk1, logp = model.generate(ids, mask, max_new_tokens=8, temperature=2.0, top_k=1, return_logprobs=True)
    assert torch.equal(topk1, greedy)
    assert torch.all(logp == 0)  # a one-token distribution: log-prob exactly 0


def test_head_runs_in_fp32_under_bf16_autocast():
    """The body may run in bf16; the logits and scores come from an fp32 head."""
    model = tiny_model()
    ids, mask = left_pad(PROMPTS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, mask)
    assert logits.dtype == torch.float32
    assert (logits != logits.bfloat16().float()).any()  # more digits than a bf16 matmul gives
    torch.testing.assert_close(logits, model(ids, mask), atol=0.1, rtol=0.05)  # bf16's rounding only


def test_an_lm_loss_may_run_its_head_in_bf16_and_moves_little():
    """fp32_head=False leaves the head to the autocast: bf16 logits, and a mean loss over
    many tokens within bf16's rounding of the fp32 head's."""
    model = tiny_model()
    torch.manual_seed(1)
    x, y = torch.randint(2, VOCAB, (4, 40)), torch.randint(2, VOCAB, (4, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x, fp32_head=False).dtype == torch.bfloat16
        loss_bf16 = lm_loss(model, x, y)
        logits = model(x)  # the default: fp32
        loss_fp32 = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
    assert logits.dtype == torch.float32
    assert loss_bf16.item() != loss_fp32.item()  # the head did run in bf16
    assert loss_bf16.item() == pytest.approx(loss_fp32.item(), rel=0.01)
    assert model(x, fp32_head=False).dtype == torch.float32  # no autocast: fp32 anyway


def test_head_from_gives_the_full_forwards_logits_from_that_position():
    """PPO asks for the logits of the response positions alone; they are the full pass's."""
    model = tiny_model()
    ids, mask = left_pad(PROMPTS)
    full = model(ids, mask)
    part = model(ids, mask, head_from=5)
    assert part.shape == (full.size(0), full.size(1) - 5, VOCAB)
    torch.testing.assert_close(part, full[:, 5:])
    value_model = tiny_model(scalar_head=True)  # a value model's values alike
    torch.testing.assert_close(value_model(ids, mask, head_from=5), value_model(ids, mask)[:, 5:])
    with pytest.raises(ValueError, match="head_from"):
        model(ids, mask, head_from=ids.size(1))


def test_generate_rejects_overlong():
    model = tiny_model()
    with pytest.raises(ValueError, match="block_size"):
        model.generate(torch.ones(1, 40, dtype=torch.long), max_new_tokens=10)


# -----------------------------------------------------------------------------
# checkpoints


def test_checkpoint_round_trip(tmp_path):
    model = tiny_model()
    path = str(tmp_path / "sub" / "sft.pt")
    save_checkpoint(path, model, {"lr": 3e-4}, step=7, tokenizer="bpe-64", note="hi")
    assert os.listdir(tmp_path / "sub") == ["sft.pt"]  # no .tmp left behind
    loaded, ckpt = load_checkpoint(path, tokenizer="bpe-64")
    assert not loaded.training
    assert ckpt["step"] == 7 and ckpt["train_config"] == {"lr": 3e-4} and ckpt["note"] == "hi"
    idx = torch.randint(2, VOCAB, (2, 9))
    assert torch.equal(loaded(idx), model(idx))


def test_non_finite_weights_are_never_saved(tmp_path):
    path = str(tmp_path / "sft.pt")
    good = tiny_model()
    save_checkpoint(path, good, {}, step=1, tokenizer="bpe-64")
    before = open(path, "rb").read()
    bad = tiny_model()
    with torch.no_grad():
        next(bad.parameters())[0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite at step 2"):
        save_checkpoint(path, bad, {}, step=2, tokenizer="bpe-64")
    assert open(path, "rb").read() == before  # the last good checkpoint is untouched
    assert os.listdir(tmp_path) == ["sft.pt"]


def test_missing_checkpoint_names_path_and_command(tmp_path):
    path = str(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError) as err:
        load_checkpoint(path, make_cmd="python sft.py")
    assert path in str(err.value) and "make it with: python sft.py" in str(err.value)


def test_tokenizer_mismatch_rejected(tmp_path):
    path = str(tmp_path / "sft.pt")
    save_checkpoint(path, tiny_model(), {}, step=0, tokenizer="bpe-64")
    with pytest.raises(ValueError, match="bpe-64.*char"):
        load_checkpoint(path, tokenizer="char")


def test_lm_to_scalar_head_keeps_body(tmp_path):
    lm = tiny_model()
    path = str(tmp_path / "sft.pt")
    save_checkpoint(path, lm, {}, step=0, tokenizer="t")
    rm, _ = load_checkpoint(path, scalar_head=True)
    assert rm.config.scalar_head
    lm_state, rm_state = lm.state_dict(), rm.state_dict()
    for k, v in rm_state.items():
        if k == "score_head.bias":
            assert torch.all(v == 0)
        elif k == "score_head.weight":  # fresh head, std 1/sqrt(n_embd + 1)
            assert 0.05 < v.std().item() < 0.4
        else:
            assert torch.equal(v, lm_state[k]), k
    # reward model -> value model: a trained head is kept
    with torch.no_grad():
        rm.score_head.bias.fill_(0.5)
    path2 = str(tmp_path / "rm.pt")
    save_checkpoint(path2, rm, {}, step=0, tokenizer="t")
    vm, _ = load_checkpoint(path2, scalar_head=True)
    idx = torch.randint(2, VOCAB, (2, 6))
    assert torch.equal(vm(idx), rm(idx)) and vm(idx).shape == (2, 6)


class _Payload:
    """Unpickling this calls os.mkdir: if the loader executed pickled code, the folder appears."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_load_is_weights_only(tmp_path):
    path, marker = str(tmp_path / "evil.pt"), str(tmp_path / "code_ran")
    torch.save({"model": {}, "model_config": {}, "x": _Payload(marker)}, path)
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(path)
    assert not os.path.exists(marker)  # the pickled call was never made


def test_corrupt_and_mismatched_files_give_value_error(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(str(junk))
    model = tiny_model()
    path = str(tmp_path / "bad.pt")
    save_checkpoint(path, model, {}, step=0, tokenizer="t")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"]["wte.weight"] = torch.zeros(3, 32)  # wrong shape
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(path)
