"""
Loading the JSONL data sets, with the field names the open-source ecosystem uses:

  sft        {"prompt": str, "completion": str}
  pairs      {"prompt": str, "chosen": str, "rejected": str}
  rankings   {"prompt": str, "responses": [str, ...]}      best first, 2 or more;
             optional "ranks": [int, ...], one per response, 0 the best, equal for a tie
  prompts    {"prompt": str, ...}

Every line is checked; a bad one raises DataError naming the file and the line number.

A data directory may also hold dataset.json, the data set's description: its chat template
(how a prompt is shown to the model), its tokenizer, and whether the world's gold labeler
can score it. Without one, a directory is the world's (python -m data.generate).
"""
import json
import os

from data import world

SCHEMAS = {
    "sft": {"prompt": str, "completion": str},
    "pairs": {"prompt": str, "chosen": str, "rejected": str},
    "rankings": {"prompt": str, "responses": list},
    "prompts": {"prompt": str},
}


class DataError(ValueError):
    pass


def load_jsonl(path, kind, make_cmd="python -m data.generate"):
    """Rows of the JSONL file `path`, each checked against SCHEMAS[kind]."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file {path} not found; make it with: {make_cmd}")
    schema = SCHEMAS[kind]
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
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
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def ranks_of(row):
    """A ranking row's ranks: its "ranks" field, or 0, 1, 2, ... (no ties) without one."""
    return row.get("ranks") or list(range(len(row["responses"])))


def load_comparisons(path):
    """A rankings file, or a pairs file read as rankings of two (chosen first)."""
    first = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            try:
                first = json.loads(next((line for line in f if line.strip()), "{}"))
            except json.JSONDecodeError:
                pass  # load_jsonl below names the file and line
    if isinstance(first, dict) and "chosen" in first:
        return [{"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]]}
                for r in load_jsonl(path, "pairs")]
    return load_jsonl(path, "rankings", make_cmd="python -m data.collect")


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
    try:
        with open(path, encoding="utf-8") as f:
            given = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg})") from None
    if not isinstance(given, dict):
        raise DataError(f"{path}: expected a JSON object")
    desc = {**WORLD, "gold_labeler": False, **given}  # a data set of its own is not the world's
    template = desc["chat_template"]
    if not isinstance(template, str) or template.count("{prompt}") != 1:
        raise DataError(f"{path}: chat_template must be a string with one {{prompt}}, got {template!r}")
    if not isinstance(desc["tokenizer"], str) or not isinstance(desc["gold_labeler"], bool):
        raise DataError(f"{path}: tokenizer must be a string and gold_labeler true or false")
    return desc
