"""
The simulated labelers: they rank K responses to a prompt, as InstructGPT's labelers did,
by the gold score plus noise, and declare a tie where they see no difference.

Responses with the same gold score are tied: the labeler sees no difference between two
polite refusals or two wrong cities, and says so (the paper's labelers could rank
responses equal). Between distinct scores, a labeler's ranking is a Plackett-Luce draw
with weights exp(score / noise): add Gumbel noise to score / noise and sort. Any two
responses of different scores then come out in the order
P(a above b) = sigmoid((score_a - score_b) / noise), the Bradley-Terry model that the
reward model's loss (InstructGPT eq. 1) assumes. Ties carry no preference, so the reward
model and DPO learn from the strictly ranked pairs only.

NOISE is set so that two independent labelers agree on about 73% of the pairs of
responses that they do not tie, sampled from the SFT model (the paper: 72.6 +- 1.5%):
0.32 gives 71-74% on the comparisons of three worlds, where 0.26 gave 75-78%. `agreement`
measures it and the tie rate beside it; data.collect prints both on the real samples it
ranks, and `python -m data.labelers` on samples of roughly SFT quality made by the world,
whose wrong answers are further from the right ones, so they agree more often.
"""
import itertools
import math
import random

from data import world

NOISE = 0.32


def rank(prompt, responses, rng, noise=NOISE):
    """One noisy labeler's ranking of `responses`: a rank per response, 0 the best, equal
    ranks for a tie. Responses of equal gold score share a rank; the distinct scores are
    ordered by a Plackett-Luce draw."""
    scores = [world.score(prompt, r) for r in responses]
    levels = sorted(set(scores))
    gumbel = {s: -math.log(-math.log(rng.random() or 1e-12)) for s in levels}
    order = sorted(levels, key=lambda s: -(s / noise + gumbel[s]))  # best first
    return [order.index(s) for s in scores]


def sort_ranking(responses, ranks):
    """(responses, ranks) ordered best first, ties kept together."""
    order = sorted(range(len(responses)), key=lambda i: ranks[i])
    return [responses[i] for i in order], [ranks[i] for i in order]


def ranked_pairs(ranks):
    """The comparisons a ranking holds: (i, j) for every pair that i is ranked above j.
    Ties hold none (eq. 1 counts the ranked pairs only)."""
    return [(i, j) for i, j in itertools.permutations(range(len(ranks)), 2) if ranks[i] < ranks[j]]


def agreement(rankings, seed=0, noise=NOISE):
    """How often two independent labelers agree, over pairs of distinct responses that
    neither ties: (agreement, tie rate). The tie rate is the share of pairs of distinct
    responses that a labeler ties. rankings: list of (prompt, responses)."""
    rng_a, rng_b = random.Random(seed), random.Random(seed + 1)
    agree = ranked = pairs = ties = 0
    for prompt, responses in rankings:
        ranks_a = rank(prompt, responses, rng_a, noise)
        ranks_b = rank(prompt, responses, rng_b, noise)
        for i, j in itertools.combinations(range(len(responses)), 2):
            if responses[i] == responses[j]:
                continue
            pairs += 1
            if ranks_a[i] == ranks_a[j]:  # same gold score: both labelers tie it
                ties += 1
                continue
            ranked += 1
            agree += (ranks_a[i] < ranks_a[j]) == (ranks_b[i] < ranks_b[j])
    return agree / max(ranked, 1), ties / max(pairs, 1)


def sft_like_samples(n_prompts, k=4, seed=0):
    """K responses per prompt of roughly an SFT model's quality at temperature 1: mostly
    right (in either style), sometimes wrong, now and then rude or never ending."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_prompts):
        family = rng.choice(world.FAMILIES)
        prompt = world.make_prompt(rng, family, rng.randrange(len(world.TEMPLATES[family]) - 1))
        responses = []
        for _ in range(k):
            u = rng.random()
            if u < 0.3:
                r = world.ideal_response(prompt) + world.EOS_TEXT
            elif u < 0.6:
                r = world.terse_response(prompt, rng) + world.EOS_TEXT
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
    for noise in (0.2, NOISE, 0.32, 0.5):
        agree, ties = agreement(samples, noise=noise)
        print(f"noise {noise}: two labelers agree on {agree:.1%} of the pairs they rank; "
              f"{ties:.1%} of pairs of distinct responses are ties")
