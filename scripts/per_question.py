"""Print one run's per-question lines as a markdown table: python scripts/per_question.py RUN_DIR

Also counts the evaluation answers (before and after the update) that box an arithmetic expression instead
of its value ("9 - 2" for 7). The symbolic answer form counts those right when the value is; the
strict form (the default) counts them wrong. The last lines give pass@1 both ways, for runs made
under either form.
"""
import json
import re
import sys
from pathlib import Path

from sttrl.config import Config
from sttrl.run import load_examples
from sttrl.rewards import grade

EXPRESSION = re.compile(r"\d\s*[-+*/^×÷]\s*\(?-?\d")  # a digit, an operator, a digit

run = Path(sys.argv[1])
config = json.loads((run / "config.json").read_text())
rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines() if x.strip()]
n_votes = config["n_votes"]
print(f"| id | pseudo-label | label right | maj@{n_votes} | pass@1 before | pass@1 after | "
      "update | seconds |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    update = r["skip_reason"] or f"{len(r['train'])} steps"
    print(f"| {r['id']} | {r['pseudo_label']} | {'yes' if r['label_correct'] else 'no'} | "
          f"{r['maj@N_before']:.0f} | {r['pass@1_before']:.3f} | {r['pass@1_after']:.3f} | "
          f"{update} | {r['seconds']['total']:.0f} |")
up = sum(r["pass@1_after"] > r["pass@1_before"] for r in rows)
down = sum(r["pass@1_after"] < r["pass@1_before"] for r in rows)
mean = lambda k: sum(r[k] for r in rows) / len(rows)
print(f"\n{len(rows)} questions: pass@1 {mean('pass@1_before'):.3f} -> {mean('pass@1_after'):.3f} "
      f"({up} up, {down} down), maj@{n_votes} {mean('maj@N_before'):.2f}, "
      f"{mean('label_correct'):.2f} of pseudo-labels right, "
      f"{sum(r['seconds']['total'] for r in rows) / len(rows):.0f} s per question")

fields = Config.__dataclass_fields__
cfg = Config(**{k: v for k, v in config.items() if k in fields})
reference = {e.question.id: e.answer for e in load_examples(cfg)}
for when in ("before", "after"):
    answers = [(a, reference[r["id"]]) for r in rows for a in r[f"answers_{when}"]]
    right = [a is not None and grade(a, ref, form="symbolic") for a, ref in answers]
    boxed_sums = [bool(a and EXPRESSION.search(a)) for a, _ in answers]
    strict = sum(ok and not expr for ok, expr in zip(right, boxed_sums)) / len(answers)
    print(f"{when}: {sum(boxed_sums)} of {len(answers)} evaluation answers box an expression, not "
          f"a number ({sum(ok and e for ok, e in zip(right, boxed_sums))} of them equal to the "
          f"reference); pass@1 with those counted wrong: {strict:.3f}")
