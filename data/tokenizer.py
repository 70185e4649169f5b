"""
The tokenizer: a byte-level BPE trained on the world's own text, run by tiktoken; or, for
GPT-2's real weights, tiktoken's own "gpt2" encoding. get_tokenizer picks one.

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

from data.loader import WORLD, load_description

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


def get_tokenizer(source=DEFAULT_PATH):
    """The tokenizer as a tiktoken.Encoding; `source` is one of
      a data directory   the tokenizer its dataset.json names (data/loader.py), by default
                         the world's BPE in tokenizer.tiktoken there;
      a rank file        the world's BPE, written by train_bpe (path ending in .tiktoken);
      "gpt2"             tiktoken's GPT-2 encoding, the one GPT-2's weights read. tiktoken
                         fetches it from the internet on first use and caches it.
    Its .name identifies it exactly ("gpt2", or "world-bpe-..." with a hash of the ranks),
    and checkpoints record that name. It also carries .chat_template, the data set's chat
    format (the world's unless a dataset.json says otherwise): every text that template
    makes is tokenized next, so the two travel together."""
    template = WORLD["chat_template"]
    if source != "gpt2" and not source.endswith(".tiktoken"):  # a data directory
        desc = load_description(source)
        template = desc["chat_template"]
        source = "gpt2" if desc["tokenizer"] == "gpt2" else os.path.join(source, desc["tokenizer"])
    if source == "gpt2":
        # a new Encoding with GPT-2's ranks (tiktoken's own recipe for extending one), so the
        # template set below is this data set's alone, not on tiktoken's shared object
        gpt2 = tiktoken.get_encoding("gpt2")
        enc = tiktoken.Encoding(name="gpt2", pat_str=gpt2._pat_str,
                                mergeable_ranks=gpt2._mergeable_ranks,
                                special_tokens=gpt2._special_tokens)
    else:
        if not os.path.exists(source):
            raise FileNotFoundError(f"tokenizer {source} not found; make it with: python -m data.generate")
        ranks = load_ranks(source)
        digest = hashlib.sha1(open(source, "rb").read()).hexdigest()[:10]
        enc = tiktoken.Encoding(name=f"world-bpe-{len(ranks) + 1}-{digest}", pat_str=PAT,
                                mergeable_ranks=ranks, special_tokens={EOS: len(ranks)})
    enc.chat_template = template
    return enc


def encode(enc, text):
    """Text to token ids; the literal "<|endoftext|>" becomes the EOS token."""
    return enc.encode(text, allowed_special={EOS})
