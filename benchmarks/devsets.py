"""The development sets of the efficacy study, written as TTT files (generated, never tuned on
the hidden sets; the same files for the same seed).

- gain (48 questions): where the 135M default model's vote is usually right. 32 ARITH-TTT
  level-1 questions from seed 7 (the default run uses seed 0) and 16 single-digit questions in
  phrasings of our own ("Compute 7 + 8.", "What is 6 times 3?", ...).
- noharm (40 questions): short word problems from our own templates, where the model's vote is
  almost never right; there the method must not lower pass@1.
- gain2 (128 questions): the controlled-update study's gain set. The 48 of `gain` first, then 64
  more ARITH-TTT level-1 questions and 16 more phrasings from the same seed.
- noharm2 (64 questions): the 40 of `noharm`, then 24 more.
- confirm (64 questions): held back until the study's choices are made, then run once: 48
  ARITH-TTT level-1 questions from seed + 1 and 16 phrasings, none of whose sums (a, op, b)
  is in gain2, so it is new questions, not new ids.

Both use the ARITH instruction (source "arith": put the answer in \\boxed{}, no step-by-step), so
an answer stays short on a 2-core CPU.

    .venv/bin/python benchmarks/devsets.py --out runs/devsets   # writes gain.json, noharm.json, gain2.json, ...
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

PHRASINGS = {
    "+": ("Compute {a} + {b}.", "What is {a} plus {b}?", "Add {a} and {b}.",
          "What is the sum of {a} and {b}?"),
    "-": ("Compute {a} - {b}.", "What is {a} minus {b}?", "Subtract {b} from {a}.",
          "What is the difference {a} - {b}?"),
    "*": ("Compute {a} * {b}.", "What is {a} times {b}?", "Multiply {a} by {b}.",
          "What is the product of {a} and {b}?"),
}
NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo")
THINGS = ("apples", "marbles", "stickers", "books", "pencils", "coins", "shells", "cards")
WORD_TEMPLATES = (
    ("{n} has {a} {t}. {n} buys {b} more and then gives away {c}. How many {t} does {n} have now?",
     lambda a, b, c: a + b - c),
    ("A box holds {a} {t}. There are {b} boxes, and {c} {t} are lost. How many {t} are left?",
     lambda a, b, c: a * b - c),
    ("{n} reads {a} pages a day for {b} days, then {c} more pages. How many pages is that in all?",
     lambda a, b, c: a * b + c),
    ("{n} had {a} {t} and shared them equally among {b} friends, keeping none. Each friend then "
     "found {c} more. How many {t} does each friend have?", None),
)


def arith_rephrased(n: int, seed: int) -> list[dict]:
    rng, rows, seen = random.Random(seed), [], set()
    while len(rows) < n:
        a, b, op = rng.randint(1, 9), rng.randint(1, 9), rng.choice("+-*")
        if op == "-" and a < b:
            a, b = b, a
        text = rng.choice(PHRASINGS[op]).format(a=a, b=b)
        if text in seen:
            continue
        seen.add(text)
        value = a + b if op == "+" else a - b if op == "-" else a * b
        rows.append({"prompt": text, "answer": str(value), "source": "arith",
                     "id": f"dev-phrase-{len(rows):03d}"})
    return rows


def word_problems(n: int, seed: int) -> list[dict]:
    rng, rows = random.Random(seed), []
    while len(rows) < n:
        k = rng.randrange(len(WORD_TEMPLATES))
        template, value_of = WORD_TEMPLATES[k]
        name, things = rng.choice(NAMES), rng.choice(THINGS)
        if value_of is None:  # a divides evenly among b friends
            b, each, c = rng.randint(2, 6), rng.randint(2, 9), rng.randint(1, 5)
            a, value = b * each, each + c
        else:
            a, b, c = rng.randint(3, 19), rng.randint(2, 9), rng.randint(1, 9)
            value = value_of(a, b, c)
            if value <= 0:
                continue
        rows.append({"prompt": template.format(n=name, t=things, a=a, b=b, c=c),
                     "answer": str(value), "source": "arith", "id": f"dev-word-{len(rows):03d}"})
    return rows


def gain_set(seed: int = 7) -> list[dict]:
    from sttrl.data import make_arith

    arith = [{"prompt": ex.question.prompt, "answer": ex.answer, "source": "arith",
              "id": f"dev-{ex.question.id}"} for ex in make_arith(32, seed=seed, level=1)]
    return arith + arith_rephrased(16, seed)


def noharm_set(seed: int = 7, n: int = 40) -> list[dict]:
    return word_problems(n, seed)


def gain2_set(seed: int = 7) -> list[dict]:
    """128 questions whose first 48 are `gain_set(seed)`: the same generators run longer."""
    from sttrl.data import make_arith

    arith = [{"prompt": ex.question.prompt, "answer": ex.answer, "source": "arith",
              "id": f"dev-{ex.question.id}"} for ex in make_arith(96, seed=seed, level=1)]
    phrased = arith_rephrased(32, seed)
    return arith[:32] + phrased[:16] + arith[32:] + phrased[16:]


SUM = re.compile(r"(\d+)\D+?(\d+)")


def sum_key(row: dict) -> tuple:
    """(a, op, b) of a single-operation question in any of our phrasings."""
    text = row["prompt"]
    a, b = map(int, SUM.search(text).groups())
    low = text.lower()
    if "subtract" in low:  # "Subtract b from a."
        a, b = b, a
    op = ("+" if "+" in text or "plus" in low or "add" in low or "sum" in low else
          "-" if "-" in text or "minus" in low or "subtract" in low or "difference" in low else "*")
    return a, op, b


def confirm_set(seed: int = 7) -> list[dict]:
    """64 questions from seed + 1 whose sums are not in gain2_set(seed)."""
    from sttrl.data import make_arith

    taken = {sum_key(r) for r in gain2_set(seed)}
    rows = []
    for ex in make_arith(400, seed=seed + 1, level=1):
        row = {"prompt": ex.question.prompt, "answer": ex.answer, "source": "arith",
               "id": f"conf-{ex.question.id}"}
        if sum_key(row) not in taken and len(rows) < 48:
            taken.add(sum_key(row))
            rows.append(row)
    phrased = []
    for row in arith_rephrased(200, seed + 1):
        if sum_key(row) not in taken and len(phrased) < 16:
            taken.add(sum_key(row))
            phrased.append({**row, "id": row["id"].replace("dev-", "conf-")})
    return rows + phrased


SETS = {"gain": gain_set, "noharm": noharm_set, "gain2": gain2_set,
        "noharm2": lambda seed: noharm_set(seed, 64), "confirm": confirm_set}


def write_sets(out: Path, seed: int = 7) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in ((name, make(seed)) for name, make in SETS.items()):
        paths[name] = out / f"{name}.json"
        paths[name].write_text(json.dumps(rows, indent=1) + "\n")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/devsets")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for name, path in write_sets(Path(args.out), args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
