"""
The tokenizer: a byte-level BPE trained on the world's own text, run by tiktoken.

Byte-level means the 256 single bytes are tokens 0..255, so any string, in any script,
round-trips exactly; the merges learned on the corpus (most common adjacent pair first,
as in GPT-2) make the world's words one or two tokens each. The ranks are stored in
tiktoken's rank-file format (one "base64(token) rank" per line), and `<|endoftext|>` is
the one special token, used as EOS and as the padding id.

Simplified: the merges are counted over distinct pre-tokenized words (weighted by count)
and recounted from scratch after each merge, which is fine for a few thousand words.
"""
import base64
import collections
import hashlib
import os
import re

import tiktoken

EOS = "<|endoftext|>"
# Splits text into words before BPE, as GPT-2 does: a leading space stays with its word.
# Written to mean the same in Python's re (training here) and in tiktoken's regex engine.
PAT = r"""'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"""
DEFAULT_PATH = os.path.join("out", "data", "tokenizer.tiktoken")


def train_bpe(text, vocab_size):
    """Learn merges until the vocabulary (256 bytes + merges + EOS) has vocab_size tokens.
    Returns {token bytes: rank}, ranks in the order the merges were learned."""
    words = collections.Counter(re.findall(PAT, text.replace(EOS, "\n")))
    # each distinct word as a list of token ids, with how often it occurs
    seqs = [[bytes([b]) for b in w.encode("utf-8")] for w in words]
    counts = list(words.values())
    ranks = {bytes([i]): i for i in range(256)}
    while len(ranks) < vocab_size - 1:  # the last id is EOS
        pairs = collections.Counter()
        for seq, n in zip(seqs, counts):
            for pair in zip(seq, seq[1:]):
                pairs[pair] += n
        if not pairs:
            break
        # most frequent pair; ties broken by the bytes themselves so training is deterministic
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        ranks[a + b] = len(ranks)
        for seq in seqs:
            i = 0
            while i < len(seq) - 1:
                if seq[i] == a and seq[i + 1] == b:
                    seq[i:i + 2] = [a + b]
                i += 1
    return ranks


def save_ranks(ranks, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")
    os.replace(tmp, path)


def load_ranks(path):
    """Read a tiktoken rank file, naming the file and line of anything malformed."""
    ranks = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: not a 'base64 rank' line: {line!r}") from None
    return ranks


def get_tokenizer(path=DEFAULT_PATH):
    """The project's tokenizer as a tiktoken.Encoding. Its .name identifies it exactly
    (it hashes the ranks), and checkpoints record that name."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer {path} not found; make it with: python -m data.generate")
    ranks = load_ranks(path)
    digest = hashlib.sha1(open(path, "rb").read()).hexdigest()[:10]
    return tiktoken.Encoding(name=f"world-bpe-{len(ranks) + 1}-{digest}", pat_str=PAT,
                             mergeable_ranks=ranks, special_tokens={EOS: len(ranks)})


def encode(enc, text):
    """Text to token ids; the literal "<|endoftext|>" becomes the EOS token."""
    return enc.encode(text, allowed_special={EOS})
