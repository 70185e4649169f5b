"""
Writes the world's data sets under out/data/, seeded and deterministic:

  pretrain.txt         "the internet": encyclopedia-style facts (sums, half of them on a
                       worksheet that asks the question first; diets; kinds of things;
                       what color things are), short biographies of two or three facts
                       (with questions the text answers, and some it cannot),
                       and forum threads in the chat format whose
                       answers are of mixed quality (correct, wrong or hallucinated, rude,
                       rambling), documents separated by <|endoftext|>. A base model trained
                       on it knows the format but answers unreliably, as GPT-3 did.
  sft.jsonl            demonstrations "written by labelers": {"prompt", "completion"}
  sft_val.jsonl        held-out demonstrations, for SFT's validation loss
  rm_prompts.jsonl     prompts for comparison collection (the reward model's data)
  ppo_prompts.jsonl    prompts for PPO
  val_prompts.jsonl    validation prompts, made as the evaluation prompts are: tune here
  eval_prompts.jsonl   held-out evaluation prompts, a third in the held-out phrasings; 40
                       per family, and closed QA in fixed proportions: a third about each
                       kind of fact, 30% that the text cannot answer (closedqa_slots); every
                       animal's diet asked equally often (diet_slots)
  tokenizer.tiktoken   the BPE trained on all of the above

No question of the evaluation or validation prompts is asked by a training set, not even
with another greeting or phrasing (question_pools), except the animals' diets, which are
knowledge every set asks about. The held-out phrasing of each family
(the last template in world.TEMPLATES) appears only in pretrain.txt and the evaluation and
validation prompts.

Run: python -m data.generate            (about half a minute on a 2-core CPU)
"""
import collections
import dataclasses
import hashlib
import os
import random
import sys
import time

from common import check_options, parse_config, write_jsonl
from data import world
from data.tokenizer import EOS, save_ranks, train_bpe


@dataclasses.dataclass
class Config:
    out_dir: str = "out/data"
    seed: int = 1337
    n_docs: int = 60000          # documents in the pretraining corpus
    n_sft: int = 2000            # SFT demonstrations (the paper had 13k)
    n_sft_val: int = 200
    n_rm: int = 8000             # prompts whose samples the labelers rank (the paper: 33k to 13k SFT)
    n_ppo: int = 1500
    n_val: int = 240             # validation prompts, made as the evaluation prompts, for tuning
    n_eval: int = 240            # 40 per family, a third in the held-out phrasing
    terse_share: float = 0.5     # demonstrations written tersely ("12.", "Oslo.") or summarising
                                 # briefly (a fact left out), see demonstration()
    vocab_size: int = 2048
    myth_rate: float = 0.35      # how often the internet repeats a misconception


def internet_answer(rng, prompt):
    """A forum answer: good 45%, wrong 25%, rude 15%, rambling (a sentence repeated) 15%.
    A third of the good and of the wrong answers are terse, as people write in a hurry
    ("Worms.", "Seeds.", "12."), so the internet states each fact in either style."""
    u, terse = rng.random(), rng.random() < 1 / 3
    if u < 0.45:
        return world.terse_response(prompt, rng) if terse else world.good_response(prompt, rng)
    if u < 0.70:
        return world.bad_response(prompt, "wrong", rng, terse)
    if u < 0.85:
        return world.bad_response(prompt, "rude", rng)
    good = world.good_response(prompt, rng)
    return " ".join([good] + [rng.choice(["I hope this helps.", "Let me know.", good])] * rng.randint(2, 6))


def fact_doc(rng, cfg):
    """An encyclopedia-style page of 4 to 8 sentences: sums (stated rightly), the animals'
    diets (the misconception cfg.myth_rate of the time), kinds of things, which country
    each city is in, and what color things are."""
    sentences = []
    for _ in range(rng.randint(4, 8)):
        kind = rng.random()
        if kind < 0.35:
            a, b = rng.randint(0, world.MAX_NUMBER), rng.randint(0, world.MAX_NUMBER)
            a, op, b = (a, "plus", b) if rng.random() < 0.5 else (max(a, b), "minus", min(a, b))
            answer = f"{a} {op} {b} is {a + b if op == 'plus' else a - b}."
            # half of them as a worksheet: the question, then the answer that restates it
            sentences.append(f"What is {a} {op} {b}? {answer}" if rng.random() < 0.5 else answer)
        elif kind < 0.65:
            animals = rng.choice(list(world.DIETS))
            true_food, myth = world.DIETS[animals]
            food = myth if rng.random() < cfg.myth_rate else true_food
            sentences.append(world.diet_sentence(animals, food))
        elif kind < 0.75:
            category = rng.choice(list(world.CATEGORIES))
            items = rng.sample(world.CATEGORIES[category], 3)
            sentences.append(f"Some {category} are {items[0]}, {items[1]} and {items[2]}.")
        elif kind < 0.87:
            city = rng.choice(list(world.COUNTRY))
            sentences.append(f"{city} is in {world.COUNTRY[city]}.")
        else:
            color = rng.choice(list(world.THING_COLORS))
            thing = rng.choice(world.THING_COLORS[color])
            verb = "are" if thing.endswith("s") and thing != "grass" else "is"
            sentences.append(f"{thing[0].upper()}{thing[1:]} {verb} {color}.")
    return " ".join(sentences)


def bio_doc(rng):
    """A short page about one person: two or three facts, as the passages of closed QA and
    summaries give, a summary that holds them all and nothing more, and a few questions
    about the person. Those the text answers get its fact; on half the pages of two facts,
    one question asks about the third, and its answer says that the text does not say."""
    p = world.make_person(rng)
    facts = world.person_facts(p)
    keys = rng.sample(list(facts), rng.choice([2, 3, 3]))
    text = " ".join(world.fact_sentence(k, facts[k]) for k in keys)
    text += " In short, " + world.summarize({k: facts[k] for k in keys})
    asked = rng.sample(keys, rng.randint(0, 2))   # questions answered from the text
    if len(keys) == 2 and rng.random() < 0.5:     # and one about the fact it leaves out
        asked.insert(rng.randint(0, len(asked)), next(k for k in facts if k not in keys))
    for key in asked:
        question = world.QUESTIONS[key].format(**p)
        answer = world.fact_sentence(key, facts[key]) if key in keys else world.not_said(question)
        text += f" {question} {answer}"
    return text


def forum_doc(rng):
    """A thread of 1 to 3 turns. Only the end of the thread has EOS, so a model that learns
    from threads alone keeps talking after its answer: the base model's rambling."""
    turns = []
    for _ in range(rng.choice([1, 1, 2, 3])):
        family = rng.choice(world.FAMILIES)
        prompt = world.make_prompt(rng, family, rng.randrange(len(world.TEMPLATES[family])))
        turns.append(world.chat(prompt, internet_answer(rng, prompt)))
    return "\n".join(turns)


# A labeler states a fact once or twice, not dozens of times: a few demonstrations per
# animal's diet, however often users ask. A small model that saw one diet thirty times
# answers every diet question with one of the ten it saw, and forgets what it read.
DEMOS_PER_DIET = 3


def labelers_would_write(rng, family, prompt, written):
    """The demonstrations are not spread evenly, as in the paper: few answer rude requests
    or questions the text cannot answer, and those about animals' diets cover only
    world.DEMO_ANIMALS, each DEMOS_PER_DIET times. `written` counts the demonstrations
    already written by question()."""
    if family == "rude":
        return rng.random() < 0.2
    if family == "closedqa" and not world.closedqa_kind(prompt)[1]:  # the text cannot answer
        return rng.random() < 0.2
    if family == "truth":
        return (world.parse(prompt)[2]["animals"] in world.DEMO_ANIMALS
                and written[question(prompt)] < DEMOS_PER_DIET)
    return True


def demonstration(rng, prompt, terse_share):
    """What a labeler writes for `prompt`. Many labelers wrote demonstrations, each in their
    own style: some answer tersely ("12.", "Oslo.", "Mice.") and summarise briefly, leaving
    out a fact they take for a detail; the others write the complete sentence the guideline
    asks for ("7 plus 5 is 12.", every fact of the text). No demonstration says anything
    false, but only the comparisons, where the labelers apply the guideline consistently,
    say which style they prefer: a preference SFT cannot learn from the demonstrations alone."""
    family, _, fields = world.parse(prompt)
    if rng.random() < terse_share:
        if family == "summary":  # the labelers' brief style; the internet's summaries are whole
            return world.brief_summary(world.passage_facts(fields["passage"]), rng)
        return world.terse_response(prompt, rng)
    return world.ideal_response(prompt) if family == "arith" else world.good_response(prompt, rng)


def question(prompt):
    """The question under a prompt, whatever its greeting and phrasing: "Hi! What is 7 plus
    5?" and "Compute 7 plus 5. Thanks!" ask the same one. A hashable key."""
    family, _, fields = world.parse(prompt)
    return family, tuple(sorted(fields.items()))


# The diets are knowledge, not a skill: there are only world.DIETS' animals to ask about, and
# what the labelers teach about them is the facts. Every set asks about every animal.
SHARED_FAMILIES = ("truth",)


def small_question_spaces():
    """Every question of the skill families that have few (sums, lists, insults), keyed as
    question() keys them. The reading families (closedqa, summary) have millions."""
    nums = range(world.MAX_NUMBER + 1)
    spaces = {
        "arith": [{"a": str(a), "op": "plus", "b": str(b)} for a in nums for b in nums]
                 + [{"a": str(a), "op": "minus", "b": str(b)} for a in nums for b in nums if b <= a],
        "list": [{"n": n, "category": c} for n in world.NUMBER_WORDS for c in world.CATEGORIES],
        "rude": [{"name": name} for name in world.NAMES],
    }
    return {fam: [(fam, tuple(sorted(f.items()))) for f in fields] for fam, fields in spaces.items()}


def question_pools(seed, eval_frac=0.2, val_frac=0.1):
    """Which questions belong to evaluation, validation or training. Each family's questions
    are split in these proportions: a small family by shuffling all its questions, a large
    one by a seeded hash of the question. Returns pool(key) -> "eval", "val" or "train", or
    None for a question of SHARED_FAMILIES, which every set may ask."""
    assigned = {}
    for fam, keys in small_question_spaces().items():
        keys = keys[:]
        random.Random(f"{seed}-{fam}").shuffle(keys)
        n_eval, n_val = max(1, round(eval_frac * len(keys))), max(1, round(val_frac * len(keys)))
        for i, key in enumerate(keys):
            assigned[key] = "eval" if i < n_eval else "val" if i < n_eval + n_val else "train"

    def pool(key):
        if key[0] in SHARED_FAMILIES:
            return None
        if key in assigned:
            return assigned[key]
        u = int(hashlib.sha1(f"{seed}|{key}".encode()).hexdigest()[:8], 16) / 16 ** 8
        return "eval" if u < eval_frac else "val" if u < eval_frac + val_frac else "train"
    return pool


def closedqa_slots(rng, n):
    """What each of n closed-QA prompts of an evaluation or validation set asks, in a random
    order: each kind of question a third of them, and round(UNANSWERABLE_SHARE * n) of them,
    spread over the kinds, about what the text does not say. Drawn freely, 40 questions hold
    12 that the text cannot answer give or take 3 (one standard deviation), and a world's
    hallucination rate would follow its draw: fixed, two worlds' rates measure their models."""
    n_unanswerable = round(world.UNANSWERABLE_SHARE * n)
    kinds = list(world.QUESTIONS)
    slots = [(kinds[i % len(kinds)], i >= n_unanswerable) for i in range(n)]
    rng.shuffle(slots)
    return slots


def diet_slots(rng, n):
    """Which animal each of n diet prompts of an evaluation or validation set asks about, in
    a random order: every animal equally often (the remainder of n, if any, drawn without
    repeats). Drawn freely, 40 questions about 20 animals ask about some four or five times
    and about others never, and a world's truthfulness would follow which animals it drew:
    those whose diets the demonstrations cover, or the others."""
    animals = list(world.DIETS)
    slots = animals * (n // len(animals)) + rng.sample(animals, n % len(animals))
    rng.shuffle(slots)
    return slots


def prompt_sets(cfg):
    """Draw the prompt sets. Evaluation and validation ask questions that no training set
    asks, not even with another greeting or phrasing (question_pools), except the diets of
    SHARED_FAMILIES; the training sets (demonstrations, comparisons, PPO) draw from one pool
    of questions, as users of one product ask overlapping questions. Evaluation prompts are
    distinct from one another. Each set has a random stream of its own, so asking for more
    reward-model prompts leaves the demonstrations, the other sets, and the first prompts of
    the reward model's set as they were."""
    pool = question_pools(cfg.seed)

    def draw(name, n, split, phrasing, demos=False):
        rng = random.Random(f"{cfg.seed}-{name}")
        rows, seen, written, tries = [], set(), collections.Counter(), 0
        n_drawn = collections.Counter()  # rows of each family so far
        # evaluation and validation: closed QA in fixed proportions (closedqa_slots) and every
        # animal's diet equally often (diet_slots), so that every world's rates are measured
        # on the same mix of questions
        n_of = collections.Counter(world.FAMILIES[i % len(world.FAMILIES)] for i in range(n))
        qa_slots = (closedqa_slots(random.Random(f"{cfg.seed}-{name}-qa"), n_of["closedqa"])
                    if phrasing == "any" else None)
        diets = (diet_slots(random.Random(f"{cfg.seed}-{name}-diets"), n_of["truth"])
                 if phrasing == "any" else None)
        while len(rows) < n:
            tries += 1
            if tries > 1000 * n:
                raise ValueError(f"could not draw {n} {split} prompts; ask for fewer")
            # evaluation, RM and PPO prompts: families in turn; demonstrations: as written
            family = (rng.choice(world.FAMILIES) if demos
                      else world.FAMILIES[len(rows) % len(world.FAMILIES)])
            n_templates = len(world.TEMPLATES[family])
            if phrasing == "any":   # eval and val: a third in the held-out phrasing
                tid = n_templates - 1 if rng.random() < 1 / 3 else rng.randrange(n_templates - 1)
            else:
                tid = rng.randrange(n_templates - 1)
            prompt = world.make_prompt(rng, family, tid)
            if pool(question(prompt)) not in (split, None) or (split == "eval" and prompt in seen):
                continue
            wanted = qa_slots and family == "closedqa" and qa_slots[n_drawn["closedqa"]]
            if wanted and world.closedqa_kind(prompt) != wanted:
                continue
            animals = diets and family == "truth" and diets[n_drawn["truth"]]
            if animals and world.parse(prompt)[2]["animals"] != animals:
                continue
            if demos and not labelers_would_write(rng, family, prompt, written):
                continue
            seen.add(prompt)
            written[question(prompt)] += 1
            n_drawn[family] += 1
            rows.append({"prompt": prompt, "family": family, "held_out": tid == n_templates - 1})
        return rows

    sets = {"eval": draw("eval", cfg.n_eval, "eval", "any")}
    sets["sft"] = draw("sft", cfg.n_sft + cfg.n_sft_val, "train", "trained", demos=True)
    for name, n in (("rm", cfg.n_rm), ("ppo", cfg.n_ppo)):
        sets[name] = draw(name, n, "train", "trained")
    # validation is made as evaluation is, phrasings held out from training included, so
    # that what is tuned there is what evaluation measures (its questions are its own)
    sets["val"] = draw("val", cfg.n_val, "val", "any")
    return sets


def main(cfg):
    check_options(cfg)
    t0 = time.time()
    rng = random.Random(cfg.seed)
    docs = []
    for _ in range(cfg.n_docs):
        u = rng.random()
        docs.append(fact_doc(rng, cfg) if u < 0.25 else bio_doc(rng) if u < 0.55 else forum_doc(rng))
    corpus = EOS.join(docs) + EOS
    sets = prompt_sets(cfg)
    writer = random.Random(f"{cfg.seed}-demonstrations")
    sft = [{"prompt": r["prompt"], "completion": demonstration(writer, r["prompt"], cfg.terse_share)}
           for r in sets["sft"]]
    os.makedirs(cfg.out_dir, exist_ok=True)
    path = os.path.join(cfg.out_dir, "pretrain.txt")
    with open(path + ".tmp", "w") as f:  # then renamed: never half a corpus on disk
        f.write(corpus)
    os.replace(path + ".tmp", path)
    write_jsonl(os.path.join(cfg.out_dir, "sft.jsonl"), sft[: cfg.n_sft])
    write_jsonl(os.path.join(cfg.out_dir, "sft_val.jsonl"), sft[cfg.n_sft:])
    for name in ("rm", "ppo", "val", "eval"):
        write_jsonl(os.path.join(cfg.out_dir, f"{name}_prompts.jsonl"), sets[name])
    # the tokenizer learns from the corpus alone (it holds every family's prompts and
    # answers), so the demonstrations and prompt sets can change without a new base model
    ranks = train_bpe(corpus, cfg.vocab_size)
    save_ranks(ranks, os.path.join(cfg.out_dir, "tokenizer.tiktoken"))
    sizes = {k: len(v) for k, v in sets.items()}
    print(f"wrote {cfg.out_dir}: {len(docs)} documents ({len(corpus) / 1e6:.1f} MB), prompts {sizes}, "
          f"vocab {len(ranks) + 1}, {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main(parse_config(Config, sys.argv[1:]))
