"""results.jsonl (one line per finished question, flushed as it lands) and summary.json.

A run killed at any instant leaves at worst a partial last line; reading drops it, so a resumed
run redoes only the question that was in flight and never writes a line twice.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from sttrl.errors import UserError


def write_json_atomic(path: Path, data) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResultsFile:
    """Append-only per-question records, keyed by question id."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / "results.jsonl"
        self.records: list[dict] = []
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        keep = 0  # bytes of complete, parseable lines
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # the run was killed mid-write; this question is redone
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{self.path}: line {len(self.records) + 1} is not valid JSON; "
                                "fix or remove it to resume") from None
            keep += len(line)
        if keep < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    def done_ids(self) -> set[str]:
        return {str(r["id"]) for r in self.records}

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(records: list[dict], config: dict) -> dict:
    """Run-level metrics: means over the questions finished so far."""
    return {
        "questions": len(records),
        "pass@1_before": mean(r["pass@1_before"] for r in records),
        "pass@1_after": mean(r["pass@1_after"] for r in records),
        "maj@N_before": mean(float(r["maj@N_before"]) for r in records),
        "label_accuracy": mean(float(r["label_correct"]) for r in records),
        "reward_accuracy": mean(r["reward_accuracy"] for r in records),
        "questions_improved": sum(r["pass@1_after"] > r["pass@1_before"] for r in records),
        "questions_worse": sum(r["pass@1_after"] < r["pass@1_before"] for r in records),
        "updates_skipped": sum(bool(r["skipped"]) for r in records),
        "wall_seconds": sum(r["seconds"]["total"] for r in records),
        "seconds_per_question": mean(r["seconds"]["total"] for r in records),
        "config": config,
    }
