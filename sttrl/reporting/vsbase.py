"""A --continuous run against the untouched base model.

A continuous run's before-number for question i is measured on the model already adapted to
questions 0..i-1, so its gain over it says nothing about the base model. The claim to check is
TTRL's: adapted pass@1 above the base model's maj@N. The base model's numbers come from a run
whose before-evaluation is the untouched model (a reset run, a --steps_per_question 0 run, or a
dataset-level run's first evaluation) with the same evaluation settings: each question's
sampling seed derives from --seed and its id, so the two runs draw the same evaluation samples
from the base model, and the comparison pairs them question by question.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from sttrl.reporting.runs import NO_UPDATE, Run, is_number, read_results
from sttrl.reporting.stats import ci_text, fmt, fmt_gain, paired_bootstrap_ci

# What decides the evaluation samples: the same values give the base model the same draws.
EVAL_KEYS = ("model", "prompt_family", "answer_form", "n_eval", "val_temp", "val_top_p",
             "max_new_tokens", "seed")
DATA_KEYS = ("dataset", "data_path")

HINT = ("no base-model run to compare with: run the same command without --continuous (or with "
        "--steps_per_question 0, which never updates, and its own --output_dir) and pass its "
        "folder to `sttrl report` too")


@dataclass
class Versus:
    run: Run  # the continuous run
    base: Run | None = None
    questions: int = 0  # questions both runs finished (all of the run's, for a dataset-level base)
    after: float | None = None  # the continuous run's pass@1 after, over those questions
    base_pass: float | None = None
    pass_ci: tuple[float, float] | None = None
    base_maj: float | None = None
    maj_ci: tuple[float, float] | None = None
    rejected: list[str] = field(default_factory=list)  # "DIR (why not)" per unusable base run

    @property
    def exceeds_maj(self) -> bool:
        return self.maj_ci is not None and self.maj_ci[0] > 0


def is_continuous(run: Run) -> bool:
    return run.per_question and bool(run.config.get("continuous")) and run.row != NO_UPDATE


def mismatches(run: Run, base: Run) -> list[str]:
    """Why `base`'s before-evaluation is not the base model under `run`'s settings ([] if it is)."""
    problems = []
    for key in DATA_KEYS + EVAL_KEYS:
        if key not in run.config or key not in base.config:
            # an unrecorded setting cannot be shown equal, and an unequal one changes the samples
            problems.append(f"{key} not recorded")
        elif run.config[key] != base.config[key]:
            problems.append(f"{key} {base.config[key]!r}, this run's {run.config[key]!r}")
    digests = (run.config.get("data_sha256"), base.config.get("data_sha256"))
    if None not in digests and digests[0] != digests[1]:
        problems.append("other questions (data_sha256 differs)")
    return problems


def records_by_id(run: Run) -> dict[str, dict]:
    path = Path(run.dir) / "results.jsonl"
    if not path.is_file():
        return {}
    return {str(r["id"]): r for r in read_results(path) if "id" in r}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def compare(run: Run, runs: list[Run]) -> Versus:
    """The continuous `run` against the best base run among `runs`: the per-question one that
    shares the most questions with it; failing that, a dataset-level run on the same questions."""
    vs = Versus(run)
    mine = records_by_id(run)
    candidates = [r for r in runs if r is not run and r.dataset == run.dataset
                  and r.untouched_before]
    paired, whole = [], []
    for base in candidates:
        problems = mismatches(run, base)
        if not base.per_question:
            # its one number is a mean over the whole set: usable only when this run has
            # finished exactly that set
            if not problems and (base.before is None or base.questions != len(mine)):
                problems.append(f"{base.questions} questions, this run has {len(mine)}")
            if problems:
                vs.rejected.append(f"{base.dir} ({'; '.join(problems)})")
            else:
                whole.append(base)
            continue
        theirs = records_by_id(base)
        common = sorted(set(mine) & set(theirs))
        if not problems and not common:
            problems.append("this run has no results.jsonl records" if not mine else
                            "no question in common" if theirs else "no results.jsonl records")
        if problems:
            vs.rejected.append(f"{base.dir} ({'; '.join(problems)})")
        else:
            paired.append((len(common), base, theirs, common))
    if paired:
        # on a tie a no-update run, as in the table's base row (max keeps the first tie)
        _, vs.base, theirs, common = max(paired, key=lambda p: (p[0], p[1].row == NO_UPDATE))
        after = [mine[i]["pass@1_after"] for i in common]
        before = [theirs[i]["pass@1_before"] for i in common]
        vs.questions, vs.after, vs.base_pass = len(common), mean(after), mean(before)
        vs.pass_ci = paired_bootstrap_ci(before, after)
        maj = [theirs[i].get("maj@N_before") for i in common]
        if all(is_number(m) or isinstance(m, bool) for m in maj):
            maj = [float(m) for m in maj]
            vs.base_maj, vs.maj_ci = mean(maj), paired_bootstrap_ci(maj, after)
    elif whole and mine:
        vs.base, vs.questions = whole[0], len(mine)
        vs.after = mean([r["pass@1_after"] for r in mine.values()])
        vs.base_pass = vs.base.before
    return vs


def maj_name(base: Run) -> str:
    n = base.config.get("n_votes")
    name = f"maj@{n}" if type(n) is int else "maj@N"
    if base.config.get("adaptation_method") == "memo":
        return f"{name} (pooled over {base.config.get('memo_variants', '?')} prompt phrasings)"
    return name


def verdict(vs: Versus) -> str:
    if vs.exceeds_maj:
        return "exceeds the base model's maj@N"
    if vs.maj_ci is not None and vs.maj_ci[1] < 0:
        return "below the base model's maj@N"
    return "not shown to exceed the base model's maj@N (the interval includes zero)"


def versus_lines(vs: Versus) -> list[str]:
    run, base = vs.run, vs.base
    head = f"{run.row} on {run.dataset} ({run.dir})"
    rejected = [f"not used as its base: {r}" for r in vs.rejected]
    if base is None:
        return [f"{head}: {HINT}."] + rejected
    if not base.per_question:
        return [f"{head}: pass@1 {fmt(vs.after)} vs the base model's {fmt(vs.base_pass)} "
                f"({base.dir}, {base.row}'s evaluation before training): "
                f"{fmt_gain(vs.after - vs.base_pass)}, over {vs.questions} questions; no interval "
                f"and no maj@N, as a dataset-level run keeps no per-question records; for "
                f"them, {HINT}."] + rejected
    text = (f"{head}, over {vs.questions} common questions: pass@1 {fmt(vs.after)}; vs the base "
            f"model's pass@1 {fmt(vs.base_pass)}: {fmt_gain(vs.after - vs.base_pass)}"
            f"{ci_text(vs.pass_ci)}; ")
    if vs.maj_ci is None:
        text += "the base run's records have no maj@N_before, so no comparison with maj@N"
    else:
        text += (f"vs the base model's {maj_name(base)} {fmt(vs.base_maj)}: "
                 f"{fmt_gain(vs.after - vs.base_maj)}{ci_text(vs.maj_ci)}: {verdict(vs)}")
    return [f"{text}. Base: {base.dir} ({base.row}, its before-evaluation)."] + rejected


def versus_all(runs: list[Run]) -> list[Versus]:
    return [compare(run, runs) for run in runs if is_continuous(run)]


def section(comparisons: list[Versus]) -> list[str]:
    """The markdown section, or [] with no continuous run."""
    if not comparisons:
        return []
    lines = ["", "Continuous runs vs the base model (a continuous run's before-number is the model "
             "already adapted to the earlier questions, so its gain above is not over the base "
             "model; here its after-answers are paired per question with a run that measured "
             "the untouched model under the same evaluation settings; differences with their "
             "95% paired-bootstrap interval, ° where it includes zero):", ""]
    for vs in comparisons:
        first, *rest = versus_lines(vs)
        lines.append(f"- {first}")
        lines += [f"  - {r}" for r in rest]
    return lines


def write_csv(comparisons: list[Versus], path: Path) -> None:
    def num(value):
        return "" if value is None else repr(round(value, 9))

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "dataset", "run_dir", "base_dir", "questions", "pass@1_after",
                         "base_pass@1", "vs_pass@1_ci95_lo", "vs_pass@1_ci95_hi", "base_maj@N",
                         "vs_maj@N_ci95_lo", "vs_maj@N_ci95_hi", "exceeds_maj@N"])
        for vs in comparisons:
            pass_ci, maj_ci = vs.pass_ci or (None, None), vs.maj_ci or (None, None)
            writer.writerow([vs.run.row, vs.run.dataset, vs.run.dir,
                             vs.base.dir if vs.base else "", vs.questions or "", num(vs.after),
                             num(vs.base_pass), num(pass_ci[0]), num(pass_ci[1]),
                             num(vs.base_maj), num(maj_ci[0]), num(maj_ci[1]),
                             "" if vs.maj_ci is None else str(vs.exceeds_maj).lower()])
