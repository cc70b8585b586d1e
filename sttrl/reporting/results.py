"""results.jsonl (one line per finished question, flushed as it lands) and summary.json.

A run killed at any instant leaves at worst a partial last line; reading drops it, so a resumed
run redoes only the question that was in flight and never writes a line twice. Every other line
must be a results record (`sttrl.types.QuestionResult.from_json` says why one is not).
"""
from __future__ import annotations

from pathlib import Path

from sttrl.errors import UserError
from sttrl.files import append_jsonl, read_jsonl
from sttrl.reporting.stats import gain_summary
from sttrl.types import QuestionResult


class ResultsFile:
    """Append-only per-question records, keyed by question id."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / "results.jsonl"
        self.records: list[QuestionResult] = []
        if self.path.exists() or self.path.is_symlink():
            # a line torn by a kill is cut off: that question is redone
            for number, line in read_jsonl(self.path, truncate_torn=True, numbered=True):
                try:
                    self.records.append(QuestionResult.from_json(line))
                except ValueError as problem:
                    raise UserError(f"{self.path}: line {number} is not a results record "
                                    f"({problem}); fix or remove it") from None

    def done_ids(self) -> set[str]:
        return {str(r.id) for r in self.records}

    def append(self, record: QuestionResult) -> None:
        append_jsonl(self.path, record.to_json())
        self.records.append(record)


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(records: list[QuestionResult], config: dict) -> dict:
    """Run-level metrics: means over the questions finished so far."""
    return {
        "reward": config.get("reward", "vote"),  # "oracle": trained on the reference answers
        "questions": len(records),
        "pass@1_before": mean(r.pass1_before for r in records),
        "pass@1_after": mean(r.pass1_after for r in records),
        "maj@N_before": mean(float(r.majN_before) for r in records),
        "label_accuracy": mean(float(r.label_correct) for r in records),
        "reward_accuracy": mean(r.reward_accuracy for r in records),
        **gain_summary([r.pass1_before for r in records], [r.pass1_after for r in records]),
        "updates_skipped": sum(bool(r.skipped) for r in records),
        "questions_diverged": sum(bool(r.diverged) for r in records),
        # continuous mode's collapse guard: how often it rolled the weights back
        **({"guard_trips": sum(bool((r.guard or {}).get("tripped")) for r in records)}
           if config.get("continuous") and config.get("collapse_guard") else {}),
        "wall_seconds": sum(r.seconds["total"] for r in records),
        "seconds_per_question": mean(r.seconds["total"] for r in records),
        "config": config,
    }
