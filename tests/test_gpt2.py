"""GPT-2's architecture in model.py (learned positions, tanh GELU) and gpt2_weights.py, the
reader of Hugging Face GPT-2 directories: the invariants of test_model.py on the GPT-2
variant, the safetensors reader against the safetensors package, and the logits of a tiny
random GPT-2 against transformers' own, in both weight formats. transformers and safetensors
are test-only dependencies; the tests that need them skip where they are absent."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from checkpoint import load_checkpoint  # noqa: E402
from gpt2_weights import load_gpt2, read_gpt2, read_safetensors  # noqa: E402
from model import GPT, GPTConfig, KVCache  # noqa: E402

torch.set_num_threads(1)
VOCAB = 64
GPT2_ARCH = dict(pos_emb="learned", gelu="tanh")
PROMPTS = [[5, 9, 13], [7, 22, 3, 40, 11], [2, 60, 33, 17, 8, 29, 44]]


def tiny_gpt2(seed=0, **kw):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=48, n_layer=2, n_head=2, n_embd=32,
                          **GPT2_ARCH, **kw)).eval()
    with torch.no_grad():  # larger weights than GPT-2's init: logits far from flat (test_model.py)
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(3.0 if name in ("wte.weight", "wpe.weight") else 8.0)
    return model


def left_pad(prompts):
    T = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def test_default_config_is_unchanged():
    config = GPTConfig()
    assert (config.pos_emb, config.gelu, config.ln_eps) == ("rotary", "none", 1e-5)
    assert "wpe.weight" not in GPT(config).state_dict()  # no table, no extra draw from the RNG
    with pytest.raises(ValueError, match="pos_emb"):
        GPT(GPTConfig(pos_emb="alibi"))
    for bad, match in ((dict(gelu="relu"), "gelu"), (dict(ln_eps=0.0), "ln_eps")):
        with pytest.raises(ValueError, match=match):
            GPTConfig(**bad)
    # an odd head size is fine with learned positions; rotary ones turn pairs of channels
    GPTConfig(n_head=2, n_embd=6, pos_emb="learned")
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig(n_head=2, n_embd=6)


def test_learned_positions_are_used_and_causal():
    model = tiny_gpt2()
    idx = torch.randint(2, VOCAB, (2, 12))
    emb = {}

    def keep_embeddings(module, inp, out):
        out.retain_grad()
        emb["x"] = out
    handle = model.wte.register_forward_hook(keep_embeddings)
    model(idx)[:, 5].sum().backward()
    handle.remove()
    assert torch.all(emb["x"].grad[:, 6:] == 0) and emb["x"].grad[:, :6].abs().sum() > 0
    assert model.wpe.weight.grad[:6].abs().sum() > 0 and torch.all(model.wpe.weight.grad[6:] == 0)
    same = torch.full((1, 6), 7)  # one token repeated: only the position tells them apart
    assert not torch.allclose(model(same)[0, 0], model(same)[0, 5])


@pytest.mark.parametrize("use_sdpa", [False, True])
def test_padding_invisible_and_cache_agrees(use_sdpa):
    model = tiny_gpt2(use_sdpa=use_sdpa)
    ids, mask = left_pad(PROMPTS)
    full = model(ids, mask)
    for i, p in enumerate(PROMPTS):  # each row counts its positions from its first real token
        torch.testing.assert_close(full[i, -len(p):], model(torch.tensor([p]))[0], atol=1e-5, rtol=0)
    cache = KVCache(model.config.n_layer, ids.size(1))
    steps = [model(ids[:, :4], mask[:, :4], kv_cache=cache)]
    steps += [model(ids[:, t:t + 1], mask[:, :t + 1], kv_cache=cache) for t in range(4, ids.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    batch = model.generate(ids, mask, max_new_tokens=10, temperature=0)
    for i, p in enumerate(PROMPTS):
        assert torch.equal(batch[i], model.generate(torch.tensor([p]), max_new_tokens=10, temperature=0)[0])


def test_read_safetensors_matches_the_package(tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="the safetensors package is a test-only dependency")
    tensors = {"a": torch.randn(3, 5), "half": torch.randn(4).half(), "bf": torch.randn(2, 2).bfloat16(),
               "ids": torch.arange(6).view(2, 3), "empty": torch.zeros(0, 4)}
    st.save_file(tensors, str(tmp_path / "t.safetensors"), metadata={"format": "pt"})
    ours = read_safetensors(str(tmp_path / "t.safetensors"))
    assert set(ours) == set(tensors)
    for name, t in tensors.items():
        assert ours[name].dtype == t.dtype and torch.equal(ours[name], t), name


def hf_gpt2(vocab_size=100, n_positions=64, seed=0):
    transformers = pytest.importorskip("transformers", reason="transformers is a test-only dependency "
                                       "(CI installs it): pip install transformers safetensors")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=vocab_size,
                                     n_positions=n_positions)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # every weight random, biases and LayerNorm gains too: a wrong map shows
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def save_hf(model, path, fmt):
    """The two layouts a GPT-2 download comes in: save_pretrained's safetensors (names with a
    "transformer." prefix, tied head left out), and the original pytorch_model.bin (no prefix,
    the attention-mask buffers saved too, the tied head written out)."""
    model.save_pretrained(str(path))
    if fmt == "bin":
        os.remove(path / "model.safetensors")
        state = {k.removeprefix("transformer."): v for k, v in model.state_dict().items()}
        n = model.config.n_positions
        for i in range(model.config.n_layer):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, n, n))
            state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        torch.save(state, path / "pytorch_model.bin")


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_gpt2_gives_transformers_logits(tmp_path, fmt):
    hf = hf_gpt2()
    save_hf(hf, tmp_path, fmt)
    ours = load_gpt2(str(tmp_path))
    assert ours.config.pos_emb == "learned" and ours.config.gelu == "tanh"
    assert ours.num_params() == hf.num_parameters()
    idx = torch.randint(0, 100, (3, 64))  # every position of the table
    with torch.no_grad():
        diff = (ours(idx) - hf(idx).logits).abs().max().item()
    print(f"{fmt}: max |logit difference| {diff:.2e}")
    assert diff < 1e-4


def test_gpt2_directory_starts_any_stage(tmp_path):
    hf = hf_gpt2()
    save_hf(hf, tmp_path, "safetensors")
    rm, ckpt = load_checkpoint(str(tmp_path), scalar_head=True)  # a reward model from GPT-2's body
    assert rm.config.scalar_head and ckpt["tokenizer"] is None
    torch.testing.assert_close(rm.h[0].attn.c_attn.weight, hf.transformer.h[0].attn.c_attn.weight.t())
    lm = load_gpt2(str(tmp_path), dropout=0.1)
    assert lm.config.dropout == 0.1 and lm.lm_head.weight is lm.wte.weight
    # a GPT-2 download is a language model: it passes where a policy is needed, not as a judge
    assert not load_checkpoint(str(tmp_path), kind="language model")[0].config.scalar_head
    with pytest.raises(ValueError, match="is a language model; this stage needs a reward model"):
        load_checkpoint(str(tmp_path), kind="reward model", make_cmd="python reward.py")


def test_unreadable_gpt2_directories(tmp_path):
    hf = hf_gpt2()
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_gpt2(str(tmp_path))
    save_hf(hf, tmp_path, "bin")
    config = json.load(open(tmp_path / "config.json"))
    json.dump({**config, "scale_attn_by_inverse_layer_idx": True, "activation_function": "relu"},
              open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError, match="activation_function, scale_attn_by_inverse_layer_idx"):
        read_gpt2(str(tmp_path))
    json.dump(config, open(tmp_path / "config.json", "w"))
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"])  # an untied head
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        read_gpt2(str(tmp_path))
    os.remove(tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        read_gpt2(str(tmp_path))
    # a config that cannot build a model is named by file, before any weights are read
    for broken, match in (({**config, "n_head": 3}, "n_embd 32 must be n_head 3 times"),
                          ({k: v for k, v in config.items() if k != "n_layer"}, "no 'n_layer'")):
        json.dump(broken, open(tmp_path / "config.json", "w"))
        with pytest.raises(ValueError, match=f"config.json: {match}"):
            read_gpt2(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not a JSON file"):
        read_gpt2(str(tmp_path))
