"""Print one run's per-question lines as a markdown table: python scripts/per_question.py RUN_DIR"""
import json
import sys
from pathlib import Path

run = Path(sys.argv[1])
rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines() if x.strip()]
n_votes = json.loads((run / "config.json").read_text())["n_votes"]
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
