"""results.jsonl (one line per finished question, flushed as it lands) and summary.json.

A run killed at any instant leaves at worst a partial last line; reading drops it, so a resumed
run redoes only the question that was in flight and never writes a line twice.
"""
from __future__ import annotations

from pathlib import Path

from sttrl.errors import UserError
from sttrl.files import append_jsonl, read_jsonl
from sttrl.reporting.stats import gain_summary

# What summarize and a resumed run read from each line, and the JSON types each must have.
NUMBER = (int, float)
RECORD_FIELDS = {"id": (str, int), "pass@1_before": NUMBER, "pass@1_after": NUMBER,
                 "maj@N_before": (bool, *NUMBER), "label_correct": (bool, *NUMBER),
                 "reward_accuracy": NUMBER + (type(None),), "skipped": (bool,),
                 "seconds": (dict,)}


def record_problem(record) -> str | None:
    """Why `record` is not a results line, or None when it is one."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for key, types in RECORD_FIELDS.items():
        if key not in record:
            return f"no {key!r}"
        if not isinstance(record[key], types):
            return f"{key!r} is {type(record[key]).__name__}"
    if not isinstance(record["seconds"].get("total"), NUMBER):
        return "no 'total' in 'seconds'"
    return None


class ResultsFile:
    """Append-only per-question records, keyed by question id."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / "results.jsonl"
        self.records: list[dict] = []
        if self.path.exists() or self.path.is_symlink():
            # a line torn by a kill is cut off: that question is redone
            for number, record in read_jsonl(self.path, truncate_torn=True, numbered=True):
                problem = record_problem(record)
                if problem:
                    raise UserError(f"{self.path}: line {number} is not a results record "
                                    f"({problem}); fix or remove it")
                self.records.append(record)

    def done_ids(self) -> set[str]:
        return {str(r["id"]) for r in self.records}

    def append(self, record: dict) -> None:
        append_jsonl(self.path, record)
        self.records.append(record)


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(records: list[dict], config: dict) -> dict:
    """Run-level metrics: means over the questions finished so far."""
    return {
        "reward": config.get("reward", "vote"),  # "oracle": trained on the reference answers
        "questions": len(records),
        "pass@1_before": mean(r["pass@1_before"] for r in records),
        "pass@1_after": mean(r["pass@1_after"] for r in records),
        "maj@N_before": mean(float(r["maj@N_before"]) for r in records),
        "label_accuracy": mean(float(r["label_correct"]) for r in records),
        "reward_accuracy": mean(r["reward_accuracy"] for r in records),
        **gain_summary([r["pass@1_before"] for r in records],
                       [r["pass@1_after"] for r in records]),
        "updates_skipped": sum(bool(r["skipped"]) for r in records),
        "questions_diverged": sum(bool(r.get("diverged")) for r in records),
        "wall_seconds": sum(r["seconds"]["total"] for r in records),
        "seconds_per_question": mean(r["seconds"]["total"] for r in records),
        "config": config,
    }
