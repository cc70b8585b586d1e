"""`sttrl prepare`: rebuild the five TTT test files from their public Hugging Face datasets.

Needs network access and the `datasets` package (`pip install datasets`), which the core
install does not pull in. GPQA is gated: accept its terms on the hub and log in
(`huggingface-cli login` or HF_TOKEN) first. Each `convert_*` function below is pure, so
the field mapping is testable offline; only `fetch` touches the network.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from pathlib import Path
from typing import Iterable

from sttrl.data.datasets import DATASETS, load_ttt, resolve_data_dir
from sttrl.errors import UserError

# name -> (hub dataset id, config, split). The mapping to TTT fields is in each convert_*.
HUB = {
    "AIME-TTT": ("HuggingFaceH4/aime_2024", None, "train"),      # problem, answer, url -> AIME I 1-15, II 1-15
    "AMC-TTT": ("AI-MO/aimo-validation-amc", None, "train"),     # problem, answer (float: 142.0), id
    "MATH-TTT": ("HuggingFaceH4/MATH-500", None, "test"),        # problem, answer, unique_id -> id
    "GSM8K-TTT": ("openai/gsm8k", "main", "test"),               # question, answer after "####"
    "GPQA-TTT": ("Idavidrein/gpqa", "gpqa_diamond", "train"),    # Question, Correct Answer, Incorrect Answer 1-3
}
EXPECTED_ROWS = {"AIME-TTT": 30, "AMC-TTT": 83, "MATH-TTT": 500, "GSM8K-TTT": 1319, "GPQA-TTT": 198}
GPQA_SEED = 0  # option order is shuffled per row from this seed, so reruns give the same letters
LETTERS = "ABCD"


def _need(row: dict, keys: Iterable[str], name: str, i: int) -> None:
    for key in keys:
        if row.get(key) is None:
            raise UserError(f"{name}: hub row {i} has no {key!r}; the dataset layout changed, expected {', '.join(keys)}")


def convert_aime(rows: Iterable[dict]) -> list[dict]:
    """problem -> prompt; answer zero-padded to three digits as AIME writes it ("025").

    Rows are put in contest order (I 1-15, then II 1-15) when every row has an AoPS url,
    and ids are that order's index "0".."29".
    """
    rows = list(rows)
    for i, r in enumerate(rows):
        _need(r, ("problem", "answer"), "AIME", i)
    keys = [_aime_order(r.get("url")) for r in rows]
    if all(keys):
        rows = [r for _, r in sorted(zip(keys, rows), key=lambda kr: kr[0])]
    out = []
    for i, r in enumerate(rows):
        answer = str(r["answer"]).strip()
        out.append({"prompt": r["problem"], "answer": answer.zfill(3) if answer.isdigit() else answer,
                    "source": "aime", "id": str(i)})
    return out


def _aime_order(url):
    # e.g. .../2024_AIME_II_Problems/Problem_4 -> (2024, 2, 4)
    m = re.search(r"(\d{4})_AIME_(I{1,2})_Problems/Problem_(\d+)", url or "")
    return (int(m[1]), len(m[2]), int(m[3])) if m else None


def convert_amc(rows: Iterable[dict]) -> list[dict]:
    """problem -> prompt; the float answer is written as Python prints it (142.0 -> "142.0")."""
    out = []
    for i, r in enumerate(rows):
        _need(r, ("problem", "answer"), "AMC", i)
        out.append({"prompt": r["problem"], "answer": str(r["answer"]).strip(),
                    "source": "amc", "id": str(r.get("id", i))})
    return out


def convert_math500(rows: Iterable[dict]) -> list[dict]:
    """problem -> prompt, answer -> answer, unique_id ("test/algebra/1.json") -> id."""
    out = []
    for i, r in enumerate(rows):
        _need(r, ("problem", "answer", "unique_id"), "MATH-500", i)
        out.append({"prompt": r["problem"], "answer": r["answer"], "source": "math", "id": r["unique_id"]})
    return out


def convert_gsm8k(rows: Iterable[dict]) -> list[dict]:
    """question -> prompt; answer = text after "####", commas removed ("1,200" -> "1200")."""
    out = []
    for i, r in enumerate(rows):
        _need(r, ("question", "answer"), "GSM8K", i)
        if "####" not in r["answer"]:
            raise UserError(f"GSM8K: hub row {i} answer has no '####' line; the dataset layout changed")
        answer = r["answer"].split("####")[-1].replace(",", "").strip()
        out.append({"prompt": r["question"], "answer": answer, "source": "gsm8k", "id": str(i)})
    return out


def convert_gpqa(rows: Iterable[dict], seed: int = GPQA_SEED) -> list[dict]:
    """Question + the four options shuffled into "A. ..".."D. .." lines; answer = the correct letter."""
    option_keys = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
    out = []
    for i, r in enumerate(rows):
        _need(r, ("Question", *option_keys), "GPQA", i)
        options = [str(r[k]).strip() for k in option_keys]
        order = list(range(4))
        # a generator per row: dropping or reordering other rows cannot change this row's letters
        random.Random(f"{seed}:{i}").shuffle(order)
        lines = [f"{LETTERS[j]}. {options[k]}" for j, k in enumerate(order)]
        out.append({"prompt": r["Question"].strip() + "\n\n" + "\n".join(lines),
                    "answer": LETTERS[order.index(0)], "source": "gpqa_diamond", "id": str(i)})
    return out


CONVERTERS = {"AIME-TTT": convert_aime, "AMC-TTT": convert_amc, "MATH-TTT": convert_math500,
              "GSM8K-TTT": convert_gsm8k, "GPQA-TTT": convert_gpqa}


def fetch(name: str) -> list[dict]:
    """Download one set's hub rows as plain dicts."""
    try:
        import datasets  # optional: only this command needs it
    except ImportError:
        raise UserError("`sttrl prepare` needs the datasets package: pip install datasets") from None
    repo, config, split = HUB[name]
    try:
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as e:  # network, auth (GPQA is gated) and hub errors all end the same way
        detail = " ".join(str(e).split())[:300]
        raise UserError(f"could not download {repo} for {name} ({type(e).__name__}: {detail}); "
                        "check the network, and for GPQA accept its terms and log in to the hub") from None
    return [dict(row) for row in ds]


def write_ttt(rows: list[dict], path) -> None:
    """Write a TTT file atomically: a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="sttrl prepare", description="Rebuild the five TTT test files from their public Hugging Face datasets.")
    parser.add_argument("--out", default=None, help="folder to write <NAME>/test.json into "
                        "(default: $STTRL_DATA_DIR, else the repo's data/ folder)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"sets to build (default all: {' '.join(DATASETS)})")
    args = parser.parse_args(argv)

    names = list(DATASETS)
    if args.only:
        by_upper = {n.upper(): n for n in DATASETS}
        unknown = [n for n in args.only if n.upper() not in by_upper]
        if unknown:
            raise UserError(f"--only got {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
        names = list(dict.fromkeys(by_upper[n.upper()] for n in args.only))

    out_dir = resolve_data_dir(args.out)
    for name in names:
        rows = CONVERTERS[name](fetch(name))
        path = out_dir / name / "test.json"
        write_ttt(rows, path)
        load_ttt(path)  # what we wrote must load; a converter bug shows up here, not mid-run
        note = "" if len(rows) == EXPECTED_ROWS[name] else f" (expected {EXPECTED_ROWS[name]}: the hub data changed)"
        print(f"{name}: wrote {len(rows)} rows to {path}{note}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        sys.exit(f"error: {e}")
