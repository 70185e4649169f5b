"""
Loading the JSONL data sets, with the field names the open-source ecosystem uses:

  sft        {"prompt": str, "completion": str}
  pairs      {"prompt": str, "chosen": str, "rejected": str}
  rankings   {"prompt": str, "responses": [str, ...]}      best first, 2 or more;
             optional "ranks": [int, ...], one per response, 0 the best, equal for a tie
  prompts    {"prompt": str, ...}

Every line is checked (UTF-8, JSON, the fields, a prompt that is not empty, and whatever
the stage itself needs, through `check`); a bad one raises DataError naming the file and
the line number.

A data directory may also hold dataset.json, the data set's description: its chat template
(how a prompt is shown to the model), its tokenizer, and whether the world's gold labeler
can score it. Without one, a directory is the world's (python -m data.generate).
"""
import json
import os

from data import world
from data.labelers import ranked_pairs

SCHEMAS = {
    "sft": {"prompt": str, "completion": str},
    "pairs": {"prompt": str, "chosen": str, "rejected": str},
    "rankings": {"prompt": str, "responses": list},
    "prompts": {"prompt": str},
}


class DataError(ValueError):
    pass


def decode(data, path, first_line=1):
    """Bytes as UTF-8 text, or a DataError naming the file and line where they are not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at column "
                        f"{column})") from None


def load_jsonl(path, kind, make_cmd="python -m data.generate", check=None):
    """Rows of the JSONL file `path`, each checked against SCHEMAS[kind], and by check(row),
    the stage's own test, which returns None or what is wrong with the row."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path} not found; make it with: {make_cmd}")
    schema = SCHEMAS[kind]
    rows = []
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is named, not a crash
        for lineno, raw in enumerate(f, 1):
            line = decode(raw, path, lineno)
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for field, typ in schema.items():
                if field not in row:
                    raise DataError(f"{where}: missing field {field!r} (a {kind} row has "
                                    f"{', '.join(schema)})")
                if not isinstance(row[field], typ):
                    raise DataError(f"{where}: field {field!r} should be a {typ.__name__}, "
                                    f"got {type(row[field]).__name__}")
            if kind == "rankings" and (len(row["responses"]) < 2 or
                                       not all(isinstance(r, str) for r in row["responses"])):
                raise DataError(f"{where}: 'responses' must be a list of 2 or more strings")
            if kind == "rankings" and "ranks" in row:
                ranks = row["ranks"]
                if (not isinstance(ranks, list) or len(ranks) != len(row["responses"])
                        or not all(isinstance(r, int) for r in ranks) or ranks != sorted(ranks)):
                    raise DataError(f"{where}: 'ranks' must be one integer per response, "
                                    "best (lowest) first, equal for a tie")
            if not row["prompt"].strip():
                raise DataError(f"{where}: empty prompt")
            problem = check(row) if check else None
            if problem:
                raise DataError(f"{where}: {problem}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def ranks_of(row):
    """A ranking row's ranks: its "ranks" field, or 0, 1, 2, ... (no ties) without one."""
    return row.get("ranks") or list(range(len(row["responses"])))


def load_comparisons(path, check=None):
    """A rankings file, or a pairs file read as rankings of two (chosen first)."""
    first = {}
    if os.path.exists(path):
        with open(path, "rb") as f:
            try:
                first = json.loads(next((line for line in f if line.strip()), b"{}"))
            except ValueError:
                pass  # not JSON, or not UTF-8: load_jsonl below names the file and line
    if isinstance(first, dict) and "chosen" in first:
        return [{"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]]}
                for r in load_jsonl(path, "pairs", check=check)]
    return load_jsonl(path, "rankings", make_cmd="python -m data.collect", check=check)


def preferences(row):
    """The comparisons a ranking holds: (i, j) for every response i ranked strictly above a
    different response j. A tie, or two identical responses, carries no preference."""
    rs = row["responses"]
    return [(i, j) for i, j in ranked_pairs(ranks_of(row)) if rs[i] != rs[j]]


def split_comparisons(paths, val_frac, n_rankings=0, check=None):
    """Rankings to train on and to hold out, from one comparisons file or several separated
    by commas (the rounds of comparisons, each from another policy's samples), each file's
    first n_rankings only if n_rankings > 0. The last val_frac of each file's prompts are
    held out, so every round is measured. Each part must hold at least one preference."""
    train, val = [], []
    for path in paths.split(","):
        rows = load_comparisons(path, check=check)
        rows = rows[:n_rankings or len(rows)]
        n_val = max(1, int(val_frac * len(rows)))
        if n_val >= len(rows):
            raise DataError(f"{path}: --val_frac={val_frac} holds out all {len(rows)} of its "
                            "rankings, leaving none to train on")
        train, val = train + rows[:-n_val], val + rows[-n_val:]
    for part, name in ((train, "to train on"), (val, "held out")):
        if not any(preferences(row) for row in part):
            raise DataError(f"{paths}: the {len(part)} rankings {name} hold no ranked pair of "
                            "distinct responses, only ties; it needs more comparisons, or "
                            "another --val_frac")
    return train, val


DESCRIPTION = "dataset.json"
# the world's description, and the default of every field
WORLD = {"name": "world", "chat_template": world.chat("{prompt}"),
         "tokenizer": "tokenizer.tiktoken", "gold_labeler": True}


def load_description(data_dir):
    """The description of the data set in data_dir (its dataset.json), with the world's
    values for anything it does not say:
      name            "world"
      chat_template   "User: {prompt}\nAssistant:"; a response follows after one space
      tokenizer       "tokenizer.tiktoken" (a rank file in data_dir) or "gpt2" (tiktoken's)
      gold_labeler    true only for the world: data/world.py can score its prompts"""
    path = os.path.join(data_dir, DESCRIPTION)
    if not os.path.exists(path):
        return dict(WORLD)
    with open(path, "rb") as f:
        text = decode(f.read(), path)
    try:
        given = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(given, dict):
        raise DataError(f"{path}: expected a JSON object")
    desc = {**WORLD, "gold_labeler": False, **given}  # a data set of its own is not the world's
    template = desc["chat_template"]
    if not isinstance(template, str) or template.count("{prompt}") != 1:
        raise DataError(f"{path}: chat_template must be a string with one {{prompt}}, got {template!r}")
    if not isinstance(desc["tokenizer"], str) or not isinstance(desc["gold_labeler"], bool):
        raise DataError(f"{path}: tokenizer must be a string and gold_labeler true or false")
    return desc
