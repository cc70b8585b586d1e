"""results.jsonl (one line per finished question, flushed as it lands) and summary.json.

A run killed at any instant leaves at worst a partial last line; reading drops it, so a resumed
run redoes only the question that was in flight and never writes a line twice. Every other line
must be a results record (`sttrl.types.QuestionResult.from_json` says why one is not).
"""
from __future__ import annotations

from collections import Counter
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
        self.numbers: list[int] = []  # each record's line in the file, for messages
        if self.path.exists() or self.path.is_symlink():
            # a line torn by a kill is cut off: that question is redone
            seen: dict[str, int] = {}
            for number, line in read_jsonl(self.path, repair=True, numbered=True,
                                           problem=QuestionResult.problem,
                                           kind="results record"):
                record = QuestionResult.from_json(line)
                if str(record.id) in seen:
                    raise UserError(f"{self.path}: line {number} repeats question "
                                    f"{record.id!r} of line {seen[str(record.id)]}; remove one "
                                    "of the two lines")
                seen[str(record.id)] = number
                self.records.append(record)
                self.numbers.append(number)

    def done_ids(self) -> set[str]:
        return {str(r.id) for r in self.records}

    def check_ids(self, known: set[str]) -> None:
        """Every line is a question of the run's data set: a foreign line would be counted."""
        for number, record in zip(self.numbers, self.records):
            if str(record.id) not in known:
                raise UserError(f"{self.path}: line {number} is question {record.id!r}, which "
                                "is not in this run's data set; remove that line, or use the "
                                "data set the run started with")

    def append(self, record: QuestionResult) -> None:
        append_jsonl(self.path, record.to_json())
        self.records.append(record)
        self.numbers.append((self.numbers[-1] if self.numbers else 0) + 1)


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


NO_REFERENCES = "no references: pass@1 not measured"


def as_float(value) -> float | None:
    return None if value is None else float(value)


def mixed_configs(records: list[QuestionResult]) -> dict:
    """How many lines each config produced, when more than one did (--allow_config_change)."""
    counts = Counter(r.config_sha or "unrecorded" for r in records)
    if len(counts) < 2:
        return {}
    return {"configs": dict(counts), "config_note": f"the lines come from {len(counts)} configs "
            "(config_history.jsonl): these means mix them"}


def summarize(records: list[QuestionResult], config: dict) -> dict:
    """Run-level metrics: means over the questions finished so far; pass@1, maj@N and the gain
    over those whose data row has a reference answer (a label-free set has none)."""
    graded = [r for r in records if r.pass1_before is not None and r.pass1_after is not None]
    unmeasured = len(records) - len(graded)
    return {
        "reward": config.get("reward", "vote"),  # "oracle": trained on the reference answers
        "questions": len(records),
        "questions_with_reference": len(graded),
        **({"pass@1_note": NO_REFERENCES if not graded else
            f"{unmeasured} question(s) without a reference: pass@1 is over the other "
            f"{len(graded)}"} if unmeasured else {}),
        "pass@1_before": mean(r.pass1_before for r in graded),
        "pass@1_after": mean(r.pass1_after for r in graded),
        "maj@N_before": mean(as_float(r.majN_before) for r in records),
        "label_accuracy": mean(as_float(r.label_correct) for r in records),
        "reward_accuracy": mean(r.reward_accuracy for r in records),
        **gain_summary([r.pass1_before for r in graded], [r.pass1_after for r in graded]),
        "updates_skipped": sum(bool(r.skipped) for r in records),
        "questions_diverged": sum(bool(r.diverged) for r in records),
        **mixed_configs(records),
        # continuous mode's collapse guard: how often it rolled the weights back
        **({"guard_trips": sum(bool((r.guard or {}).get("tripped")) for r in records)}
           if config.get("continuous") and config.get("collapse_guard") else {}),
        "wall_seconds": sum(r.seconds["total"] for r in records),
        "seconds_per_question": mean(r.seconds["total"] for r in records),
        "config": config,
    }
