"""The runs a report reads: each run folder's summary.json (and results.jsonl), its row (the
method, from the registry) and its column (the data set), validated as untrusted input."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sttrl.algorithms import METHODS
from sttrl.errors import UserError
from sttrl.files import read_jsonl
from sttrl.reporting.stats import paired_bootstrap_ci

BASE = "base model"
# A per-question run with --steps_per_question 0 never updates: its before and after are both
# the untouched model's, so it is a base measurement, not a method, and fills no method cell.
NO_UPDATE = "base model (no update)"
CONTROLS = ("oracle", "random")  # --reward values other than the label-free vote


def control_row(name: str, reward: str, continuous: bool = False) -> str:
    """The row of a run trained on oracle or random rewards: never mistaken for a label-free one."""
    return f"{name} ({reward} reward{', continuous' if continuous else ''})"


def lora_row(row: str) -> str:
    """A --lora_rank run's row: a low-rank update at another lr is its own experiment."""
    return f"{row} + LoRA"


# Order of the rows under "base model": original dataset-level TTRL, then each registered
# method (STTRL first), reset and continuous; the controls after each; each row's LoRA twin
# right after it.
ROWS = tuple(r for row in (("TTRL",) + tuple(control_row("TTRL", r) for r in CONTROLS)
                           + tuple(row for m in METHODS.values()
                                   for row in (m.row, m.continuous_row,
                                               *(control_row(m.name, r, c)
                                                 for c in (False, True) for r in CONTROLS))))
             for r in (row, lora_row(row)))
MARKERS = "os^DvP*Xh"  # filled shapes, one per row in turn; drawn hollow so overlaps stay visible


@dataclass
class Run:
    dir: str
    row: str
    dataset: str
    model: str
    before: float | None  # the run's own pass@1 before adaptation, on its own questions
    after: float | None
    questions: int | None  # None: the summary does not say
    per_question: bool  # False for a dataset-level run from before its per-question records
    gain_ci: tuple[float, float] | None = None  # paired bootstrap 95% interval of the gain
    maj: float | None = None  # maj@N before adaptation; None: not recorded (a dataset-level run)
    config: dict = field(default_factory=dict)  # the resolved config (+ data_sha256 if saved)
    note: str | None = None  # why pass@1 was not measured (a label-free data set), if it was not

    @property
    def untouched_before(self) -> bool:
        """Whether `before` measures the untouched model: a dataset-level run's first evaluation
        and a reset run's are; a --continuous run's is the model adapted to the questions
        before it, unless it never updates (--steps_per_question 0)."""
        if not self.per_question:
            return True
        return not self.config.get("continuous", False) or self.row == NO_UPDATE

    @property
    def gain(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return self.after - self.before


# ---- reading run directories -----------------------------------------------------------------

def parse_json(text: str, path: Path, first_line: int = 1):
    """json.loads, but a syntax error names the file, line and column (first_line: where
    `text` starts in the file, for one line of a .jsonl)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        line = err.lineno + first_line - 1
        raise UserError(f"{path}: invalid JSON at line {line}, column {err.colno} "
                        f"({err.msg})") from None


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None


def read_results(path: Path) -> list[dict]:
    """results.jsonl's graded records, read-only. A torn last line (a run killed mid-write) is
    left out, as the question mode does on resume; any other bad line, and a question's second
    line, is an error naming it. A question without a reference (pass@1 null) has no numbers
    to report and is left out."""
    records, seen = [], {}
    for number, rec in read_jsonl(path, numbered=True):
        measured = isinstance(rec, dict) and all(is_number(rec.get(k)) for k in
                                                 ("pass@1_before", "pass@1_after"))
        unmeasured = isinstance(rec, dict) and rec.get("pass@1_before") is None \
            and rec.get("pass@1_after") is None
        if not (measured or unmeasured):
            raise UserError(f"{path} line {number}: expected an object with numeric "
                            "pass@1_before and pass@1_after")
        key = str(rec.get("id"))
        if "id" in rec and key in seen:
            raise UserError(f"{path} line {number} repeats question {rec['id']!r} of line "
                            f"{seen[key]}; remove one of the two lines")
        seen[key] = number
        if measured:
            records.append(rec)
    return records


def gain_interval(run_dir: Path, summary: dict) -> tuple[float, float] | None:
    """The gain's 95% interval: from the run's per-question records when it has them (so old
    runs get one too), else from summary.json, else None (an old dataset-level run has
    neither)."""
    path = run_dir / "results.jsonl"
    if path.is_file():
        records = read_results(path)
        if records:
            return paired_bootstrap_ci([r["pass@1_before"] for r in records],
                                       [r["pass@1_after"] for r in records])
    ci = summary.get("pass@1_gain_ci95")
    if isinstance(ci, list) and len(ci) == 2 and all(is_number(v) for v in ci):
        return (ci[0], ci[1])
    return None


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def row_name(summary: dict, where: Path) -> str:
    row = method_row(summary, where)
    rank = summary["config"].get("lora_rank", 0)  # runs from before --lora_rank trained all
    return lora_row(row) if is_number(rank) and rank > 0 else row


def method_row(summary: dict, where: Path) -> str:
    config = summary["config"]
    # runs from before the mode option have none: they are per question
    mode = config.get("mode") or summary.get("mode") or "question"
    reward = config.get("reward", "vote")  # runs from before --reward trained on the vote
    if reward != "vote" and reward not in CONTROLS:
        raise UserError(f"{where}: config reward must be vote, oracle or random, got {reward!r}")
    if mode == "dataset":
        return "TTRL" if reward == "vote" else control_row("TTRL", reward)
    if mode != "question":
        raise UserError(f"{where}: config mode must be question or dataset, got {mode!r}")
    method = config.get("adaptation_method")
    if method not in METHODS:
        raise UserError(f"{where}: config adaptation_method must be one of {', '.join(METHODS)}, "
                        f"got {method!r}")
    if config.get("steps_per_question") == 0:
        return NO_UPDATE
    entry, continuous = METHODS[method], config.get("continuous", False)
    if reward != "vote":
        return control_row(entry.name, reward, continuous)
    return entry.continuous_row if continuous else entry.row


def with_data_digest(run_dir: Path, config: dict) -> dict:
    """The config plus config.json's data_sha256 (summary.json does not carry it), so two runs
    can be checked to be on the same questions."""
    path = run_dir / "config.json"
    if not path.is_file():
        return config
    saved = parse_json(read_text(path), path)
    digest = saved.get("data_sha256") if isinstance(saved, dict) else None
    return {**config, "data_sha256": digest} if isinstance(digest, str) else config


def load_run(run_dir: str) -> Run:
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"{run_dir}: no such directory; pass run output directories")
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise UserError(f"{run_dir} has no summary.json; pass run output directories "
                        "(a run's --output_dir)")
    summary = parse_json(read_text(summary_path), summary_path)
    config = summary.get("config") if isinstance(summary, dict) else None
    if not isinstance(config, dict):
        raise UserError(f"{summary_path}: expected an object with a \"config\" object")
    for key in ("pass@1_before", "pass@1_after", "maj@N_before"):
        # None is what an unfinished run with no questions yet writes
        if summary.get(key) is not None and not is_number(summary[key]):
            raise UserError(f"{summary_path}: {key} must be a number, got {summary[key]!r}")
    dataset = Path(config["data_path"]).stem if config.get("data_path") else config.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise UserError(f"{summary_path}: config has neither dataset nor data_path")
    questions = summary.get("questions")
    row = row_name(summary, summary_path)
    return Run(dir=run_dir, row=row, dataset=dataset, model=str(config.get("model", "?")),
               gain_ci=gain_interval(path, summary), config=with_data_digest(path, config),
               before=summary.get("pass@1_before"), after=summary.get("pass@1_after"),
               maj=summary.get("maj@N_before"),
               questions=questions if type(questions) is int else None,
               note=summary.get("pass@1_note") if isinstance(summary.get("pass@1_note"), str)
               else None,
               # a dataset-level run pairs each question's first and last evaluation in its
               # results.jsonl (runs written before that have none)
               per_question=not row.startswith("TTRL") or (path / "results.jsonl").is_file())
