"""
The simulated labelers: they rank K responses to a prompt, as InstructGPT's labelers did,
by the gold score plus noise.

A labeler's ranking is a Plackett-Luce draw with weights exp(score / noise): add Gumbel
noise to score / noise and sort. Any two responses then come out in the order
P(a above b) = sigmoid((score_a - score_b) / noise), the Bradley-Terry model that the
reward model's loss (InstructGPT eq. 1) assumes. Responses with the same gold score are
a coin flip, as they would be for people with no preference.

NOISE is set so that two independent labelers agree on about 73% of the pairs of distinct
responses sampled from an SFT model (the paper: 72.6 +- 1.5%); `agreement` measures it,
and `python -m data.labelers` prints it on samples of SFT quality made by the world.
"""
import itertools
import math
import random

from data import world

NOISE = 0.35


def rank(prompt, responses, rng, noise=NOISE):
    """Indices of `responses`, best first, as one noisy labeler orders them."""
    gumbel = [-math.log(-math.log(rng.random() or 1e-12)) for _ in responses]
    keys = [world.score(prompt, r) / noise + g for r, g in zip(responses, gumbel)]
    return sorted(range(len(responses)), key=lambda i: -keys[i])


def agreement(rankings, seed=0, noise=NOISE):
    """Share of pairs of distinct responses that two independent labelers put in the same
    order. rankings: list of (prompt, responses)."""
    rng_a, rng_b = random.Random(seed), random.Random(seed + 1)
    agree = total = 0
    for prompt, responses in rankings:
        pos_a = {i: p for p, i in enumerate(rank(prompt, responses, rng_a, noise))}
        pos_b = {i: p for p, i in enumerate(rank(prompt, responses, rng_b, noise))}
        for i, j in itertools.combinations(range(len(responses)), 2):
            if responses[i] != responses[j]:
                total += 1
                agree += (pos_a[i] < pos_a[j]) == (pos_b[i] < pos_b[j])
    return agree / max(total, 1)


def sft_like_samples(n_prompts, k=4, seed=0):
    """K responses per prompt of roughly an SFT model's quality at temperature 1: mostly
    right, sometimes wrong, now and then rude or never ending."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_prompts):
        family = rng.choice(world.FAMILIES)
        prompt = world.make_prompt(rng, family, rng.randrange(len(world.TEMPLATES[family]) - 1))
        responses = []
        for _ in range(k):
            u = rng.random()
            if u < 0.6:
                r = world.good_response(prompt, rng) + world.EOS_TEXT
            elif u < 0.85:
                r = world.bad_response(prompt, "wrong", rng) + world.EOS_TEXT
            elif u < 0.92:
                r = world.bad_response(prompt, "rude", rng) + world.EOS_TEXT
            else:
                r = world.good_response(prompt, rng)  # never ended
            responses.append(r)
        out.append((prompt, responses))
    return out


if __name__ == "__main__":
    samples = sft_like_samples(2000)
    for noise in (0.25, NOISE, 0.5):
        print(f"noise {noise}: two labelers agree on {agreement(samples, noise=noise):.1%} of pairs")
