"""
The chat format as tensors: prompts in, responses out. Every stage that samples from or
scores a model goes through here, so the format, the left padding and the EOS convention
are defined once. The format is the data set's chat template, which its tokenizer carries
(data/tokenizer.py): the world's "User: {prompt}\nAssistant:", or a real data set's own,
such as HH-RLHF's "\n\nHuman: {prompt}\n\nAssistant:". A response follows after one space.
"""
import os

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common import autocast_for
from data import world
from data.loader import load_description, load_jsonl
from data.tokenizer import EOS, encode
from model import KVCache


def chat_text(enc, prompt):
    """The text a model reads before its response: the prompt in the data set's template."""
    return enc.chat_template.replace("{prompt}", prompt)


def left_pad(rows, pad, device):
    """Token lists, LEFT-padded with `pad` to the longest, so that every row ends in the
    last column. Returns ids (B, T) and attention_mask (B, T), 1 for real tokens."""
    T = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (T - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def encode_prompts(enc, prompts, device):
    """Chat-format and tokenize prompts, LEFT-padded so every row's last prompt token sits
    in the same column and generation continues all rows at once.
    Returns ids (B, T) and attention_mask (B, T), 1 for real tokens."""
    return left_pad([encode(enc, chat_text(enc, p)) for p in prompts], enc.eot_token, device)


def decode_responses(enc, new_tokens, eos_id):
    """Sampled tokens to text, cut after the first EOS; a response that ended keeps the
    literal "<|endoftext|>" at its end, which is how the gold labeler knows it ended."""
    out = []
    for row in new_tokens.tolist():
        if eos_id in row:
            row = row[: row.index(eos_id) + 1]
        out.append(enc.decode(row).lstrip(" "))
    return out


@torch.no_grad()
def sample_responses(model, enc, prompts, max_new_tokens, temperature=1.0, batch_size=64,
                     device="cpu", top_k=None, progress=False):
    """Generate one response per prompt, in batches, with the KV cache."""
    model.eval()
    out = []
    starts = range(0, len(prompts), batch_size)
    for i in tqdm(starts, desc="sampling", leave=False, disable=not progress):
        ids, mask = encode_prompts(enc, prompts[i:i + batch_size], device)
        with autocast_for(device):
            new = model.generate(ids, mask, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_k=top_k, eos_id=enc.eot_token)
        out += decode_responses(enc, new, enc.eot_token)
    return out


def row_check(enc, block_size, max_new_tokens=0, gold=False):
    """A check for load_jsonl, which names the file and line of a row it faults, so that a
    row a stage cannot use is found when the data is loaded, not when its batch comes up.
    The prompt in the chat format, with max_new_tokens sampled tokens or with each of the
    row's responses (a demonstration's EOS included), must fit in block_size tokens; with
    gold=True the gold labeler must be able to score answers to it (a prompt of this world)."""
    def check(row):
        if gold:
            try:
                world.parse(row["prompt"])
            except ValueError:
                return "not a prompt of this world: the gold labeler cannot score answers to it"
        responses = [row[k] for k in ("chosen", "rejected") if k in row] + row.get("responses", [])
        if "completion" in row:
            responses.append(row["completion"] + EOS)
        prompt = len(encode(enc, chat_text(enc, row["prompt"])))
        longest = max([max_new_tokens] + [len(encode(enc, " " + r)) for r in responses])
        if prompt + longest > block_size:
            what = "its longest response" if responses else "--max_new_tokens"
            return (f"the prompt ({prompt} tokens) and {what} ({longest}) are longer than the "
                    f"model's block_size ({block_size})")
        return None
    return check


def encode_pairs(enc, prompts, responses, device, block_size, add_eos=False):
    """Tokenize chat-formatted (prompt, response) pairs, LEFT-padded so that every row ends
    in the last column: a reward model reads its score head at [:, -1].
    A response that ended carries the text "<|endoftext|>", which becomes the EOS token;
    add_eos=True appends it (SFT demonstrations are stored without it).
    Returns ids, attention_mask, response_mask, each (B, T); response_mask is 1 on the
    response's tokens (EOS included), 0 on the prompt and the padding."""
    rows = []
    for prompt, response in zip(prompts, responses):
        p = encode(enc, chat_text(enc, prompt))
        r = encode(enc, " " + response) + ([enc.eot_token] if add_eos else [])
        if len(p) + len(r) > block_size:
            raise ValueError(f"prompt + response is {len(p) + len(r)} tokens, over the model's "
                             f"block_size {block_size}: {prompt[:60]!r}...")
        rows.append((p, r))
    T = max(len(p) + len(r) for p, r in rows)
    ids, attn, resp = [], [], []
    for p, r in rows:
        pad = T - len(p) - len(r)
        ids.append([enc.eot_token] * pad + p + r)
        attn.append([0] * pad + [1] * (len(p) + len(r)))
        resp.append([0] * (pad + len(p)) + [1] * len(r))
    as_tensor = lambda x: torch.tensor(x, device=device)
    return as_tensor(ids), as_tensor(attn), as_tensor(resp)


def score_responses(model, enc, prompts, responses, device, add_eos=False):
    """Reward-model score of each (prompt, response), (B,): model.reward, the score head at
    the last token plus lm_coef times the response's mean log-prob."""
    ids, attn, resp = encode_pairs(enc, prompts, responses, device, model.config.block_size,
                                   add_eos)
    hidden = model.hidden_states(ids, attention_mask=attn)  # (B, T, C)
    # left padding: the last column is the end; position t predicts token t + 1
    return model.reward(hidden[:, -1], hidden[:, :-1], ids[:, 1:], resp[:, 1:])


def score_rankings(model, enc, prompts, responses, device):
    """Reward-model scores of K responses to each of B prompts: prompts (B,), responses B
    lists of K -> (B, K). Each prompt goes through the model once, not K times: its keys
    and values go into a KV cache, which the K responses then read, as a sampled response
    reads its prompt's. The same scores as score_responses on the B * K pairs (with
    dropout off, as a reward model has it) for fewer tokens: here a prompt is two thirds of
    a pair, and the responses are padded only to the longest response. Gradients flow
    through the cache back into the prompt's pass."""
    K = len(responses[0])
    if any(len(group) != K for group in responses):
        raise ValueError("score_rankings needs K responses to every prompt; "
                         "reward.ranking_batch pads a short ranking")
    prompt_ids, prompt_attn = encode_prompts(enc, prompts, device)  # (B, Tp), left-padded
    flat = [r for group in responses for r in group]                  # B * K, prompt by prompt
    response_tokens = [encode(enc, " " + r) for r in flat]
    if prompt_ids.size(1) + max(map(len, response_tokens)) > model.config.block_size:
        # the longest prompt and the longest response do not fit in the context together:
        # each (prompt, response) pair as a row of its own, as score_responses reads them
        flat_prompts = [p for p in prompts for _ in range(K)]
        return score_responses(model, enc, flat_prompts, flat, device).view(-1, K)
    # responses LEFT-padded too, so that each one ends in the last column
    response_ids, response_attn = left_pad(response_tokens, enc.eot_token, device)  # (B * K, Tr)
    cache = KVCache(model.config.n_layer, prompt_ids.size(1) + response_ids.size(1))
    prompt_hidden = model.hidden_states(prompt_ids, attention_mask=prompt_attn, kv_cache=cache)
    cache.repeat(K)  # prompt b's keys and values for each of its K responses
    # the padding between a prompt and its response is masked out like any other, and
    # positions count real tokens only, so each response sits where it would sit alone
    attention_mask = torch.cat([prompt_attn.repeat_interleave(K, dim=0), response_attn], dim=1)
    hidden = model.hidden_states(response_ids, attention_mask=attention_mask, kv_cache=cache)
    # what predicts each response token: the token before it, or for its first token the
    # prompt's last (left padding: the last column of the prompt pass)
    prompt_last = prompt_hidden[:, -1:].repeat_interleave(K, dim=0)       # (B * K, 1, C)
    before = torch.cat([prompt_last, hidden[:, :-1]], dim=1)              # (B * K, Tr, C)
    before_is_response = F.pad(response_attn[:, :-1], (1, 0))  # (B * K, Tr)
    prev_hidden = torch.where(before_is_response[..., None].bool(), before, prompt_last)
    scores = model.reward(hidden[:, -1], prev_hidden, response_ids, response_attn)  # (B * K,)
    return scores.view(-1, K)  # (B, K)


def load_eval_prompts(data_dir, enc, block_size, max_new_tokens, n_prompts):
    """The first n_prompts held-out evaluation prompts, for gold_check. Loaded and checked
    with the stage's other data, so that a bad file stops the stage before it trains.
    None for a data set without a gold labeler (only the world has one)."""
    if not load_description(data_dir)["gold_labeler"]:
        return None
    if not n_prompts:  # no check at the end: no file needed
        return []
    rows = load_jsonl(os.path.join(data_dir, "eval_prompts.jsonl"), "prompts",
                      check=row_check(enc, block_size, max_new_tokens, gold=True))
    return [r["prompt"] for r in rows[:n_prompts]]


def gold_check(models, enc, prompts, max_new_tokens, device, seed, logger=None, step=0):
    """Each model of `models` (name -> model) answers `prompts` (held-out evaluation prompts,
    from load_eval_prompts) at temperature 1, from the same seed, and the gold labeler's
    report is printed: the end-of-stage check that a stage did what it should. Returns the
    prompts and the last model's responses."""
    if prompts is None:  # load_eval_prompts found no gold labeler
        print("\nno gold labeler for this data set (only the world has one); "
              "python evaluate.py measures what can be measured without it")
        return [], []
    for name, model in models.items():
        torch.manual_seed(seed)  # same sampling noise for every model
        responses = sample_responses(model, enc, prompts, max_new_tokens, device=device)
        report = world.report(prompts, responses)
        print(f"\n{name} model on {len(prompts)} evaluation prompts (temperature 1):")
        print(world.format_report(report))
        if logger:
            logger.log(step, line=False, model=name, gold=report)
    for p, r in list(zip(prompts, responses))[:3]:
        print(f"--- {p!r}\n    {name} -> {r!r}")
    return prompts, responses
