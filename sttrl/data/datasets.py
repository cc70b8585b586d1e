"""Test sets: the TTT file format, the registry of named sets, and the built-in ARITH-TTT.

A TTT file is a JSON list of objects with the fields `prompt`, `source` and `id` (required)
and `answer` (the reference; optional: a label-free set trains as well, and its pass@1 is not
measured). The reference answer lives only in `Example.answer`; `Question`, the part
that training code sees, has no answer field (both records are in sttrl/types.py).
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from sttrl.errors import UserError
from sttrl.types import Example, Question

DATASETS = ("AIME-TTT", "AMC-TTT", "MATH-TTT", "GSM8K-TTT", "GPQA-TTT")
ARITH_DATASETS = {"ARITH-TTT": 1, "ARITH-TTT-L2": 2, "ARITH-TTT-L3": 3}  # name -> level
TASKS = ("math", "gpqa")
MAX_FILE_BYTES = 512 * 1024 * 1024  # the largest real set is well under 1 MB
# A bound checked before any tokenising: the longest real prompt (GPQA) is ~3,000 characters,
# and 1M characters is past any model's context. run.py checks tokens against the model's.
MAX_PROMPT_CHARS = 1_000_000
DEFAULT_DATA_DIR = Path(__file__).parents[2] / "data"


# --- TTT files ---------------------------------------------------------------------------

class _NumberText(str):
    """A JSON number kept as the text the file wrote it with (142.0 stays "142.0")."""


def load_ttt(path) -> list[Example]:
    """Read a TTT file. Any malformed row is an error naming its index; nothing is skipped.

    Answers and ids may be JSON numbers: they become the number's text exactly as written
    in the file, so the AMC answer 142.0 is "142.0" and 025 would never be reformatted.
    A row may carry an optional `task` ("math" or "gpqa"); without it, a source that
    contains "gpqa" means "gpqa" and anything else means "math".
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a TTT JSON file (a list of "
                        "prompt/answer/source/id objects)")
    if not path.is_file():
        raise UserError(f"{path}: no such file; give a TTT JSON file (a list of prompt/answer/source/id objects)")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise UserError(f"{path}: file is {size / 2**20:.0f} MB; TTT files may be at most {MAX_FILE_BYTES // 2**20} MB")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a leading BOM (some Windows editors) is fine
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); TTT files must be UTF-8 JSON") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}; fix its permissions or copy "
                        "it somewhere readable") from None
    try:
        # keeping numbers as text is what lets answers round-trip faithfully
        rows = json.loads(text, parse_int=_NumberText, parse_float=_NumberText,
                          parse_constant=_bad_constant)
    except json.JSONDecodeError as e:
        # JSON lines (one object per line) fail at the second object
        hint = ("; a TTT file is one JSON list of objects ([{...}, {...}]), not JSON lines"
                if e.msg == "Extra data" else "")
        raise UserError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: "
                        f"{e.msg}{hint}") from None
    except ValueError as e:
        raise UserError(f"{path}: invalid JSON: {e}") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply; a TTT file is a flat list of objects") from None
    if not isinstance(rows, list):
        raise UserError(f"{path}: top level is a JSON {_kind(rows)}; a TTT file is a JSON list of objects")
    if not rows:
        raise UserError(f"{path}: the list is empty; a TTT file needs at least one row")

    examples, seen = [], {}
    for i, row in enumerate(rows):
        ex = _parse_row(row, i, path)
        qid = ex.question.id
        if qid in seen:
            raise UserError(f"{path}: row {i} repeats id {qid!r} of row {seen[qid]}; ids must be unique")
        seen[qid] = i
        examples.append(ex)
    return examples


def _bad_constant(name):
    raise ValueError(f"{name} is not allowed (JSON has no NaN/Infinity)")


def _kind(value) -> str:
    if isinstance(value, _NumberText):
        return "number"
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}[type(value)]


def _parse_row(row, i: int, path: Path) -> Example:
    where = f"{path}: row {i}"
    if not isinstance(row, dict):
        raise UserError(f"{where} is a JSON {_kind(row)}; each row must be an object with prompt, answer, source, id")
    for key in ("prompt", "source", "id"):
        if key not in row or row[key] is None:
            raise UserError(f"{where} has no {key!r}; each row needs prompt, source and id "
                            "(and answer, to measure pass@1)")

    prompt = row["prompt"]
    if type(prompt) is not str or not prompt.strip():
        raise UserError(f"{where}: 'prompt' must be a non-empty string, got {_describe(prompt)}")
    source = row["source"]
    if type(source) is not str or not source.strip():
        raise UserError(f"{where}: 'source' must be a non-empty string, got {_describe(source)}")
    answer = None if row.get("answer") is None else _scalar_text(row["answer"], "answer", where)
    qid = _scalar_text(row["id"], "id", where)

    named = f"{where} (id {qid!r})"
    for key, value in (("prompt", prompt), ("source", source), ("answer", answer or ""),
                       ("id", qid)):
        bad = _lone_surrogate(value)
        if bad is not None:
            raise UserError(f"{named}: {key!r} holds a lone surrogate (\\u{ord(value[bad]):04x} at "
                            f"character {bad}), which is not text; fix that row of the file")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserError(f"{named}: 'prompt' is {len(prompt):,} characters; prompts may be at most "
                        f"{MAX_PROMPT_CHARS:,}")
    task = row.get("task")
    if task is None:
        task = "gpqa" if "gpqa" in source.lower() else "math"
    elif task not in TASKS:
        raise UserError(f"{where}: 'task' must be one of {', '.join(TASKS)}, got {_describe(task)}")
    return Example(Question(id=qid, prompt=prompt, source=source, task=task), answer=answer)


def _lone_surrogate(text: str) -> int | None:
    """The index of the first lone surrogate in `text` (JSON "\\ud800" escapes decode to one;
    no tokenizer accepts it), or None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as err:
        return err.start


def _scalar_text(value, key: str, where: str) -> str:
    """A string or a JSON number (as written) that is not blank."""
    if not isinstance(value, str) or not value.strip():  # _NumberText is a str
        raise UserError(f"{where}: {key!r} must be a non-empty string or a number, got {_describe(value)}")
    return str(value)  # drop the _NumberText marker


def _describe(value) -> str:
    if isinstance(value, str) and not isinstance(value, _NumberText):
        return "an empty string" if not value.strip() else f"the string {value[:40]!r}"
    return f"a JSON {_kind(value)}"


# --- registry ----------------------------------------------------------------------------

def resolve_data_dir(data_dir=None) -> Path:
    """Where named sets live: the argument, else $STTRL_DATA_DIR, else the repo's data/ folder."""
    if data_dir:
        return Path(data_dir)
    env = os.environ.get("STTRL_DATA_DIR")
    if env:
        return Path(env)
    return DEFAULT_DATA_DIR


def dataset_path(name: str, data_dir=None) -> Path:
    """The file a registry name maps to: <data_dir>/<NAME>/test.json."""
    return resolve_data_dir(data_dir) / _canonical(name) / "test.json"


def canonical_dataset(name: str) -> str:
    """A registry name in its registry spelling ("arith-ttt" -> "ARITH-TTT")."""
    return _canonical(name)


def _canonical(name: str) -> str:
    # names are matched case-insensitively so "aime-ttt" on a command line works
    for known in (*DATASETS, *ARITH_DATASETS):
        if name.upper() == known:
            return known
    known = ", ".join((*DATASETS, *ARITH_DATASETS))
    raise UserError(f"unknown dataset {name!r}; known: {known} (or pass --data_path FILE)")


def load_dataset(name: str | None = None, data_path=None, data_dir=None,
                 arith_n: int = 100, seed: int = 0) -> list[Example]:
    """Load a set by registry name, or any TTT file by path (give exactly one of the two).

    `arith_n` and `seed` only matter for the generated ARITH-TTT sets.
    """
    if (name is None) == (data_path is None):
        raise UserError("give exactly one of a dataset name or a data path")
    if data_path is not None:
        return load_ttt(data_path)

    name = _canonical(name)
    if name in ARITH_DATASETS:
        return make_arith(n=arith_n, seed=seed, level=ARITH_DATASETS[name])
    path = dataset_path(name, data_dir)
    if not path.is_file():
        raise UserError(f"{name}: no file at {path}; run `sttrl prepare` to build it, "
                        f"or point --data_dir / STTRL_DATA_DIR at a folder holding {name}/test.json")
    return load_ttt(path)


# --- ARITH-TTT: generated arithmetic, no files needed --------------------------------------

MAX_ARITH_N = 100_000


def make_arith(n: int = 100, seed: int = 0, level: int = 1) -> list[Example]:
    """n arithmetic questions, the same for the same (n, seed, level).

    Level 1: one operation on single-digit numbers ("What is 7 + 8?").
    Level 2: one operation on two-digit numbers.
    Level 3: three operations with brackets or precedence ("What is (12 + 7) * 3 - 5?").
    Subtraction never goes below zero, so every answer is a non-negative integer.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_ARITH_N:
        raise UserError(f"--num_questions for ARITH-TTT must be an integer from 1 to "
                        f"{MAX_ARITH_N:,} (the questions it generates), got {n!r}")
    if level not in (1, 2, 3):
        raise UserError(f"ARITH-TTT level must be 1, 2 or 3, got {level!r}")
    rng = random.Random(seed)  # a private generator: global random state stays untouched
    draw = {1: _one_op(1, 9), 2: _one_op(10, 99), 3: _multi_step}[level]

    examples, seen = [], set()
    for i in range(n):
        # redraw repeats so small levels give distinct questions; after many tries (a set
        # larger than the level has questions) a repeat is allowed rather than looping forever
        for _ in range(100):
            text, value = draw(rng)
            if text not in seen:
                break
        seen.add(text)
        q = Question(id=f"arith-L{level}-{i:04d}", prompt=f"What is {text}?", source="arith", task="math")
        examples.append(Example(q, str(value)))
    return examples


def _one_op(lo: int, hi: int):
    def draw(rng: random.Random):
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        op = rng.choice("+-*")
        if op == "-" and a < b:
            a, b = b, a
        return f"{a} {op} {b}", _apply(a, op, b)
    return draw


def _multi_step(rng: random.Random):
    while True:
        a, b, d = rng.randint(2, 50), rng.randint(2, 50), rng.randint(1, 50)
        c = rng.randint(2, 9)
        op1, op2 = rng.choice("+-"), rng.choice("+-")
        shape = rng.randrange(3)
        if shape == 0:    # (a op1 b) * c op2 d
            inner = _apply(a, op1, b)
            text, value = f"({a} {op1} {b}) * {c} {op2} {d}", _apply(inner * c, op2, d)
        elif shape == 1:  # a * c op1 b * d: precedence without brackets
            inner = 0
            text, value = f"{a} * {c} {op1} {b} * {d}", _apply(a * c, op1, b * d)
        else:             # a op1 c * (b op2 d)
            inner = _apply(b, op2, d)
            text, value = f"{a} {op1} {c} * ({b} {op2} {d})", _apply(a, op1, c * inner)
        if inner >= 0 and value >= 0:  # no negative numbers anywhere, as in levels 1 and 2
            return text, value


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b
