"""
The GPT used by every stage of the pipeline: the SFT policy, the reward model, the
PPO value model and the frozen reference policy are all this one class.

What is here: a GPT-2 style decoder (pre-LayerNorm blocks, GELU MLP, tied unembedding)
with rotary positions, an optional scalar head for reward and value models (a reward
model's score may add its unembedding's log-prob of the response: GPT.reward), left-padding
aware attention masks, sampling with a KV cache and log-probs of given tokens. With
pos_emb="learned" and gelu="tanh" the class is GPT-2 exactly, so the real pretrained
weights can start the pipeline: gpt2_weights.py reads a Hugging Face GPT-2 download.
Saving and loading, one format for every stage, is checkpoint.py's.

Rotary positions (Su et al. 2021), not GPT-2's learned ones: attention then sees how far
apart two tokens are, which is what copying from the context needs. In this world's CPU
budget a 1M-parameter model learns to copy a fact from a passage with them (52% of its
greedy answers right, on pretrain.copy_probe's texts) and not at all with learned positions
(7%, chance); closed QA and summaries rest on that skill.

What is simplified, and could be exercises:
- no flash/paged attention of our own;
- the KV cache is a plain preallocated buffer per layer; a row that has ended leaves
  the batch, but no new row takes its place (no continuous batching);
- sampling is temperature and top-k only (no top-p, no beam search, no repetition penalty);
- no optimizer grouping, no torch.compile; the scripts choose the precision (bf16 autocast
  where the hardware has it, common.autocast_for), and the head runs in fp32 except for
  the language-modelling losses, averaged over thousands of tokens (fp32_head=False).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 2048
    block_size: int = 256      # longest sequence (prompt + response)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True          # biases in Linear and LayerNorm, as in GPT-2
    use_sdpa: bool = False     # False: attention written out; True: F.scaled_dot_product_attention
    scalar_head: bool = False  # True: a Linear(n_embd, 1) "score_head" replaces the unembedding
    lm_coef: float = 0.0       # reward models: weight, in their score, of the mean log-prob that
                               # the tied unembedding gives the response's tokens (GPT.reward)
    pos_emb: str = "rotary"    # "rotary" (Su et al. 2021) or "learned": GPT-2's table of block_size vectors
    gelu: str = "none"         # nn.GELU's approximate: "none" (exact erf) or "tanh" (GPT-2's)
    ln_eps: float = 1e-5       # LayerNorm epsilon (GPT-2's, and PyTorch's default)

    def __post_init__(self):
        # a config that cannot build a model says so here, by name, not as a shape error later
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number, at least 1, got {value!r}")
        if self.pos_emb not in ("rotary", "learned"):
            raise ValueError(f"pos_emb must be 'rotary' or 'learned', got {self.pos_emb!r}")
        rotary = self.pos_emb == "rotary"  # rotary positions turn pairs of channels
        if self.n_embd % self.n_head or (rotary and (self.n_embd // self.n_head) % 2):
            raise ValueError(f"n_embd {self.n_embd} must be n_head {self.n_head} times "
                             + ("an even head size (rotary positions turn pairs of channels)"
                                if rotary else "a whole head size"))
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be at least 0 and less than 1, got {self.dropout!r}")
        if self.gelu not in ("none", "tanh"):
            raise ValueError(f"gelu must be 'none' or 'tanh', got {self.gelu!r}")
        if not isinstance(self.ln_eps, (int, float)) or not self.ln_eps > 0:
            raise ValueError(f"ln_eps must be a number above 0, got {self.ln_eps!r}")
        if not isinstance(self.lm_coef, (int, float)) or not 0 <= self.lm_coef < math.inf:
            raise ValueError(f"lm_coef must be a finite number, at least 0, got {self.lm_coef!r}")


class KVCache:
    """Keys and values of every layer for the positions seen so far, so that each new
    token costs a one-token forward pass instead of re-running the whole sequence.
    Buffers are allocated on the first write, taking batch size, device and dtype from
    the keys themselves (so it also works under autocast). Gradients can flow through it:
    each layer has a buffer of its own, and a buffer is never written again while a graph
    still needs it, since repeat() and keep() make new ones. So a pass over a prompt, a
    repeat, and a pass over its continuations can be backpropagated together."""

    def __init__(self, n_layer, max_len):
        self.n_layer, self.max_len = n_layer, max_len
        self.k = [None] * n_layer  # per layer (B, nh, max_len, hs) once allocated
        self.v = [None] * n_layer
        self.pos = 0               # positions filled; GPT.forward advances it after the last layer

    def update(self, layer, k, v):
        # k, v: (B, nh, T, hs) for the T new positions -> all keys, values (B, nh, pos+T, hs)
        B, nh, T, hs = k.shape
        if self.k[layer] is None:
            self.k[layer] = k.new_zeros(B, nh, self.max_len, hs)
            self.v[layer] = v.new_zeros(B, nh, self.max_len, hs)
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked for {end}")
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def keep(self, rows):
        """Keep the batch rows where rows (B,) bool is True: the rows still generating."""
        self.k, self.v = [k[rows] for k in self.k], [v[rows] for v in self.v]

    def repeat(self, n):
        """Each batch row n times in a row, (B, ...) -> (B * n, ...): n continuations of
        each row, all reading its keys and values."""
        self.k = [k.repeat_interleave(n, dim=0) for k in self.k]
        self.v = [v.repeat_interleave(n, dim=0) for v in self.v]


def rotary(position_ids, head_size, base=10000.0):
    """Rotary position embedding tables (Su et al. 2021, RoFormer): channel pair i of every
    head turns by the angle position * base^(-2i / head_size). position_ids (B, T) ->
    cos, sin (B, 1, T, head_size / 2), to broadcast over heads."""
    freqs = base ** (-torch.arange(0, head_size, 2, device=position_ids.device).float() / head_size)
    angles = position_ids.float()[..., None] * freqs  # (B, T, hs/2)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rotary(x, cos, sin):
    """Rotate the channel pairs (x[i], x[i + hs/2]) of x (B, nh, T, hs) by their angles. After
    rotating queries at position m and keys at position n, q . k depends on m - n only."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # keep bf16 under autocast
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx  # which slot of the KV cache is ours
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.use_sdpa = config.use_sdpa

    def forward(self, x, attn_bias, rope, kv_cache=None):
        # attn_bias: (B, 1, T, S) float32, 0 where query t may attend to key s (S = cached + T),
        # -inf where it may not; added to the attention scores
        # rope: (cos, sin) of the T new positions, (B, 1, T, hs/2) each; None with learned positions
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)  # the cache keeps rotated keys
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)   # (B, nh, S, hs)
        if self.use_sdpa:
            # fused kernel; a float mask is added to the scores, as below
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias.to(q.dtype),
                                               dropout_p=self.dropout if self.training else 0.0)
        else:
            att = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, S)
            # adding -inf gives exactly zero weight, so masked keys cannot leak even a rounding
            # error; one addition, where a masked_fill in every layer cost 5% of a training step
            att = F.softmax(att.float() + attn_bias, dim=-1).to(v.dtype)  # fp32 under bf16 autocast too
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.ln_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.ln_eps, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, attn_bias, rope, kv_cache=None):
        # pre-LayerNorm: the residual stream itself is never normalised, which keeps deep stacks trainable
        x = x + self.attn(self.ln_1(x), attn_bias, rope, kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos_emb == "learned":  # made only when used, so rotary models draw the same init
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.ln_eps, bias=config.bias)
        if config.scalar_head:
            self.score_head = nn.Linear(config.n_embd, 1)
        else:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            self.lm_head.weight = self.wte.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layer),
        # so the variance of the stream does not grow with depth (two writes per block)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        if config.scalar_head:
            # std 1/sqrt(n_embd + 1), as in Ziegler et al.'s reward head: small opinions at
            # first, but large enough that gradient reaches the body from the first step
            # (a zero head would pass none back until it had grown)
            nn.init.normal_(self.score_head.weight, std=1 / math.sqrt(config.n_embd + 1))
            nn.init.zeros_(self.score_head.bias)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def forward(self, idx, attention_mask=None, position_ids=None, kv_cache=None, fp32_head=True,
                head_from=0):
        """idx (B, T) token ids; attention_mask (B, past + T), 1 = real token, 0 = padding;
        returns logits (B, T, vocab) in float32, or with the scalar head its output at every
        position (B, T): a value model's values. A reward model's score is GPT.reward.
        fp32_head=False: the head runs under the caller's autocast (bf16 logits where it is
        on), for a loss averaged over many tokens (pretraining, SFT, PPO's pretraining mix).
        head_from: the head reads positions head_from.. only, (B, T - head_from, ...): PPO
        needs no logits for the prompt, about two thirds of its tokens."""
        T = idx.size(1)
        if not 0 <= head_from < T:
            raise ValueError(f"head_from must be in [0, {T}) for {T} tokens, got {head_from}")
        x = self.hidden_states(idx, attention_mask, position_ids, kv_cache)[:, head_from:]  # (B, T', C)
        head = self.score_head if self.config.scalar_head else self.lm_head
        if fp32_head:
            # fp32 even under bf16 autocast: log-probs and scores of single responses need
            # more than bf16's three significant digits (PPO's ratios, a reward model's
            # small differences)
            with torch.autocast(x.device.type, enabled=False):
                out = head(x.float())
        else:
            # a mean over thousands of tokens moves by about 1e-4 with bf16 logits, and the
            # head is a fifth of the model's multiplications: a CPU step about 12% faster
            out = head(x)
        return out.squeeze(-1) if self.config.scalar_head else out  # (B, T) or (B, T, vocab)

    def hidden_states(self, idx, attention_mask=None, position_ids=None, kv_cache=None):
        """The last layer's output after the final LayerNorm, (B, T, C): what the head reads.
        Arguments as forward's."""
        B, T = idx.shape
        past = kv_cache.pos if kv_cache is not None else 0
        S = past + T  # number of keys every query can see at most
        if S > self.config.block_size:
            raise ValueError(f"sequence of {S} tokens is longer than block_size {self.config.block_size}")
        if attention_mask is None:
            attention_mask = torch.ones(B, S, dtype=torch.long, device=idx.device)
        if attention_mask.shape != (B, S):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, S)}")
        if position_ids is None:
            # each row counts positions from its first real token, so a left-padded prompt
            # sees exactly the positions it would see alone; padding sits at position 0
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]  # (B, T)

        # the mask: key s is visible to query t if it is not in the future and not padding;
        # a query always sees itself, so pure-padding rows never get an all -inf softmax (NaN)
        q_pos = torch.arange(past, S, device=idx.device)[:, None]  # (T, 1)
        k_pos = torch.arange(S, device=idx.device)[None, :]        # (1, S)
        mask = (k_pos <= q_pos)[None] & attention_mask.bool()[:, None, :]  # (B, T, S)
        mask = (mask | (k_pos == q_pos)[None])[:, None]  # (B, 1, T, S), broadcast over heads
        # made once for every layer: 0 where a key is visible, -inf where not
        attn_bias = torch.zeros(mask.shape, device=idx.device).masked_fill(~mask, float("-inf"))

        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.config.pos_emb == "learned":  # GPT-2: a learned vector per position, added once
            x = x + self.wpe(position_ids)
        else:  # rotary: positions enter every layer as rotations of q and k
            rope = rotary(position_ids, self.config.n_embd // self.config.n_head)
        x = self.drop(x)
        for block in self.h:
            x = block(x, attn_bias, rope, kv_cache)
        x = self.ln_f(x)
        if kv_cache is not None:
            kv_cache.pos = S  # every layer has written its T new positions
        return x

    def reward(self, last_hidden, prev_hidden, tokens, response_mask):
        """A reward model's score of each sequence, (B,) in float32: the score head at its
        last token, plus lm_coef times the mean log-prob of the response's tokens under the
        tied unembedding, the language model the reward model was made from.
        last_hidden (B, C): the hidden state at the last token. prev_hidden (B, T, C): the
        hidden state that predicts each of tokens (B, T), the one before it. response_mask
        (B, T): 1 on the response's tokens, 0 on the prompt and the padding.
        Why the log-prob: a small reward model reads "7 plus 5 is 13." at its last token and
        cannot tell the sum is wrong; its language model, which predicts the number after
        "is", can. With lm_coef 0 this is the paper's reward model: the head alone."""
        with torch.autocast(last_hidden.device.type, enabled=False):
            scores = self.score_head(last_hidden.float()).squeeze(-1)  # (B,)
            if self.config.lm_coef == 0:
                return scores
            logits = prev_hidden.float() @ self.wte.weight.float().t()  # (B, T, vocab)
            mask = response_mask.float()
            logprobs = token_logprobs(logits, tokens)                    # (B, T)
            mean_logprob = (logprobs * mask).sum(-1) / mask.sum(-1).clamp(min=1)
            return scores + self.config.lm_coef * mean_logprob

    @torch.no_grad()
    def generate(self, prompt_ids, attention_mask=None, max_new_tokens=64, temperature=1.0,
                 top_k=None, eos_id=None, use_cache=True, return_logprobs=False):
        """Sample continuations of LEFT-padded prompts (B, Tp). Returns new_tokens (B, N),
        N <= max_new_tokens, with everything after a row's first eos_id set to eos_id; and,
        if return_logprobs, the log-prob (B, N) of each token under the distribution it was
        drawn from (0.0 after EOS). With temperature 0 (greedy) that distribution is
        taken to be the plain softmax of the logits, the one a policy gradient needs."""
        assert not self.config.scalar_head, "generate needs the LM head"
        B, Tp = prompt_ids.shape
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if Tp + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt length {Tp} + max_new_tokens {max_new_tokens} "
                             f"exceeds block_size {self.config.block_size}")
        if attention_mask is None:
            attention_mask = torch.ones_like(prompt_ids)
        seq, mask = prompt_ids, attention_mask.long()
        cache = KVCache(self.config.n_layer, Tp + max_new_tokens) if use_cache else None
        # a row leaves the batch (and the cache) once it has emitted EOS, so a batch costs
        # what its unfinished rows cost, not what its longest row costs; alive holds the
        # batch indices of the b rows still generating. Ended rows read EOS, log-prob 0
        alive = torch.arange(B, device=prompt_ids.device)
        tokens = torch.full((B, max_new_tokens), 0 if eos_id is None else eos_id,
                            dtype=torch.long, device=prompt_ids.device)
        logprobs = torch.zeros(B, max_new_tokens, device=prompt_ids.device)
        for step in range(max_new_tokens):
            # with a cache, only the newest token goes through the model after the prompt
            inp = seq[:, -1:] if (use_cache and step > 0) else seq
            logits = self(inp, attention_mask=mask, kv_cache=cache)[:, -1, :]  # (b, vocab)
            if temperature == 0:
                next_tok = logits.argmax(-1)  # (b,)
                logp = F.log_softmax(logits, -1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))  # (b, k)
                    logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
                logp = F.log_softmax(logits, -1)
                next_tok = torch.multinomial(logp.exp(), num_samples=1).squeeze(-1)  # (b,)
            tokens[alive, step] = next_tok
            logprobs[alive, step] = logp.gather(-1, next_tok[:, None]).squeeze(-1)
            seq = torch.cat([seq, next_tok[:, None]], dim=1)     # (b, Tp + step + 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            if eos_id is not None:
                going = next_tok != eos_id  # (b,)
                if not going.all():
                    alive, seq, mask = alive[going], seq[going], mask[going]
                    if cache is not None:
                        cache.keep(going)
                if len(alive) == 0:
                    break
        n = step + 1  # steps taken: every row has ended, or max_new_tokens
        if return_logprobs:
            return tokens[:, :n], logprobs[:, :n]  # (B, N), (B, N)
        return tokens[:, :n]  # (B, N)


def response_mask(new_tokens, eos_id):
    """(B, N) bool: True up to and including the first eos_id of each row (all True if none)."""
    is_eos = (new_tokens == eos_id).long()
    eos_before = (is_eos.cumsum(dim=1) - is_eos) > 0  # an EOS strictly earlier in the row
    return ~eos_before


def token_logprobs(logits, tokens):
    """log p(tokens) under logits: (B, T, vocab), (B, T) -> (B, T). float32 for stable ratios."""
    return F.log_softmax(logits.float(), dim=-1).gather(-1, tokens[..., None]).squeeze(-1)


def lm_loss(model, x, y):
    """Mean next-token cross-entropy of inputs x against targets y, (B, T) each."""
    logits = model(x, fp32_head=False)  # (B, T, vocab), bf16 under bf16 autocast
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))


def entropy_from_logits(logits):
    """Entropy of the softmax at every position: (B, T, vocab) -> (B, T)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
