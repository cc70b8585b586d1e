"""The development sets of the efficacy study, written as TTT files (generated, never tuned on
the hidden sets; the same files for the same seed).

- gain (48 questions): where the 135M default model's vote is usually right. 32 ARITH-TTT
  level-1 questions from seed 7 (the default run uses seed 0) and 16 single-digit questions in
  phrasings of our own ("Compute 7 + 8.", "What is 6 times 3?", ...).
- noharm (40 questions): short word problems from our own templates, where the model's vote is
  almost never right; there the method must not lower pass@1.

Both use the ARITH instruction (source "arith": put the answer in \\boxed{}, no step-by-step), so
an answer stays short on a 2-core CPU.

    .venv/bin/python benchmarks/devsets.py --out runs/devsets   # writes gain.json, noharm.json
"""
from __future__ import annotations

import argparse
import json
import random
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


def noharm_set(seed: int = 7) -> list[dict]:
    return word_problems(40, seed)


def write_sets(out: Path, seed: int = 7) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in (("gain", gain_set(seed)), ("noharm", noharm_set(seed))):
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
