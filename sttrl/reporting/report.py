"""`sttrl report RUN_DIR [RUN_DIR ...] --out DIR`: one results table over finished runs.

Each run directory (a run's --output_dir) becomes one cell: its row is the method, its column
the data set. Writes DIR/table.md, DIR/table.csv and, with matplotlib installed, one
DIR/<dataset>_per_question.png per data set (pass@1 before vs after, one point per question).

Every number in the table is read from a summary.json; a cell with no run stays empty. Under
the base model's pass@1 stands its maj@N (row BASE_MAJ, and table.csv's maj@N column). Each
--continuous run is also set against the untouched base model (vsbase.py): a section of
table.md and DIR/vs_base.csv.
"""
from __future__ import annotations

import argparse
import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sttrl.errors import UserError
from sttrl.reporting import vsbase
from sttrl.reporting.runs import BASE, MARKERS, NO_UPDATE, ROWS, Run, load_run, read_results
from sttrl.reporting.stats import ci_text, excludes_zero, fmt, fmt_gain, paired_bootstrap_ci

__all__ = ["build_table", "load_run", "main"]

# The untouched model's vote over its N rollout samples, graded: the pseudo-labels reset mode
# trains on, so the level its after-number moves towards; shown beside the base pass@1.
BASE_MAJ = "base model maj@N"


# ---- the table -------------------------------------------------------------------------------

@dataclass
class Table:
    datasets: list[str]  # columns, in the order first given
    rows: list[str]  # method rows that have at least one run, in ROWS order
    cells: dict[tuple[str, str], Run]
    base: dict[str, Run]  # per data set, the run whose pass@1_before is the base model's
    models: list[str]
    notes: list[str]
    versus: list[vsbase.Versus]  # each continuous run against the base model

    def has_maj(self) -> bool:
        return any(run.maj is not None for run in self.base.values())

    def row_names(self) -> list[str]:
        return [BASE] + ([BASE_MAJ] if self.has_maj() else []) + self.rows

    def counts(self, dataset: str) -> set:
        shown = [run for (_, d), run in self.cells.items() if d == dataset]
        if dataset in self.base:  # a no-update base run fills no cell but shows its number
            shown.append(self.base[dataset])
        return {run.questions for run in shown}


def build_table(runs: list[Run], allow_mixed_models: bool = False) -> Table:
    models = list(dict.fromkeys(run.model for run in runs))
    if len(models) > 1 and not allow_mixed_models:
        by_model = "; ".join(f"{m}: {', '.join(r.dir for r in runs if r.model == m)}"
                             for m in models)
        raise UserError(f"runs use different models ({by_model}); report one model at a time "
                        "or pass --allow-mixed-models")
    cells = {}
    for run in runs:
        if run.row == NO_UPDATE:
            continue  # a base measurement: it feeds the base row, not a method cell
        key = (run.row, run.dataset)
        if key in cells:
            raise UserError(f"{cells[key].dir} and {run.dir} are both {run.row} on {run.dataset}; "
                            "a table cell holds one run, pass only one of them")
        cells[key] = run
    datasets = list(dict.fromkeys(run.dataset for run in runs))
    rows = [row for row in ROWS if any(r == row for r, _ in cells)]

    base, notes = {}, []
    for dataset in datasets:
        # Only runs whose before-evaluation is the untouched model can agree on it: a
        # continuous run's is the model adapted to the questions before each one.
        column = [run for run in runs if run.dataset == dataset and run.untouched_before]
        if not column:
            notes.append(f"{dataset}: every run is --continuous, so none measured the base "
                         f"model and the base row is empty; {vsbase.HINT}.")
            continue
        # A no-update run measures nothing else; a reset run measures it per question on the
        # untouched model, exactly like its after-number.
        chosen = next((r for r in column if r.row == NO_UPDATE),
                      cells.get(("STTRL (reset)", dataset), column[0]))
        base[dataset] = chosen
        if any(r.before != chosen.before or r.questions != chosen.questions for r in column):
            listed = ", ".join(f"{r.row} {fmt(r.before)} (n={count(r.questions)}, {r.dir})"
                               for r in column)
            notes.append(f"{dataset}: the runs disagree on base pass@1: {listed}. The base row "
                         f"shows {chosen.row}'s; each gain is over its own run's before-number.")
    for run in runs:
        if run.after is None and run.note:
            notes.append(f"{run.dir}: {run.note} (its data set has no reference answers).")
        elif run.after is None:
            notes.append(f"{run.dir}: no questions finished yet, so no pass@1.")
    return Table(datasets, rows, cells, base, models, notes, vsbase.versus_all(runs))


def count(questions: int | None) -> str:
    return "?" if questions is None else str(questions)


def cell_text(table: Table, row: str, dataset: str) -> str:
    base_row = row in (BASE, BASE_MAJ)
    run = table.base.get(dataset) if base_row else table.cells.get((row, dataset))
    if run is None:
        return ""  # no run: never a number we did not measure
    if row == BASE_MAJ:
        # from the run that gives the base pass@1, so the two numbers are of the same questions
        if run.maj is None:
            return f"not recorded ({run.row}'s summary has no maj@N)"
        return f"{fmt(run.maj)} ({vsbase.maj_name(run)})"
    value = run.before if row == BASE else run.after
    text = fmt(value) if value is not None else run.note or "no results"
    if row != BASE and run.gain is not None:
        text += f" ({fmt_gain(run.gain)}{ci_text(run.gain_ci)})"
    if len(table.counts(dataset)) > 1:  # the column mixes question counts: say which per cell
        text += f", n={count(run.questions)}"
    return text


def header_line(table: Table) -> str:
    label = "Model" if len(table.models) == 1 else "Models (mixed)"
    parts = []
    for dataset in table.datasets:
        counts = table.counts(dataset)
        if len(counts) == 1:
            parts.append(f"{dataset} {count(counts.pop())}")
        else:
            shown = ", ".join(count(c) for c in sorted(counts, key=lambda c: (c is None, c or 0)))
            parts.append(f"{dataset} varies by run ({shown}; shown in each cell)")
    return f"{label}: {', '.join(table.models)}. Questions: {'; '.join(parts)}."


def to_markdown(table: Table, title: str) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [f"# {title}", "", header_line(table),
           "Cells: pass@1 after adaptation (gain over the same run's pass@1 before adaptation "
           "[its 95% paired-bootstrap interval over questions]); ° marks an interval that "
           "includes zero, i.e. no measured gain; an empty cell means no run."
           + (f" {BASE_MAJ}: the untouched model's majority vote over its N rollout samples, "
              "graded against the reference (the labels reset mode trains on, so the level its "
              "pass@1 moves towards)." if table.has_maj() else ""), "",
           line(["method"] + table.datasets),
           line(["---"] * (len(table.datasets) + 1))]
    for row in table.row_names():
        out.append(line([row] + [cell_text(table, row, d) for d in table.datasets]))
    controls = control_lines(table)
    if controls:
        out += ["", "Controls (STTRL, reset mode):", ""] + [f"- {c}" for c in controls]
    out += vsbase.section(table.versus)
    if table.notes:
        out += ["", "Notes:", ""] + [f"{i}. {note}" for i, note in enumerate(table.notes, 1)]
    return "\n".join(out) + "\n"


def control_lines(table: Table) -> list[str]:
    """Per data set: the share of the oracle's gain the vote recovers, and the vote's margin
    over random rewards (a paired interval over the questions both runs finished)."""
    lines = []
    for d in table.datasets:
        vote = table.cells.get(("STTRL (reset)", d))
        oracle = table.cells.get(("STTRL (oracle reward)", d))
        rand = table.cells.get(("STTRL (random reward)", d))
        if vote is None or vote.gain is None:
            continue
        if oracle is not None and oracle.gain is not None:
            share = (f"{100 * vote.gain / oracle.gain:.0f}% of the oracle's gain"
                     if oracle.gain > 0 else "nothing: the oracle itself does not gain")
            lines.append(f"{d}: the vote recovers {share} ({fmt_gain(vote.gain)} of "
                         f"{fmt_gain(oracle.gain)}).")
        if rand is not None and rand.after is not None:
            lines.append(f"{d}: the vote's margin over random rewards: {margin_text(vote, rand)}.")
    return lines


def margin_text(vote: Run, rand: Run) -> str:
    """pass@1 after, vote minus random, paired per question when both have results.jsonl."""
    paths = [Path(r.dir) / "results.jsonl" for r in (vote, rand)]
    if all(p.is_file() for p in paths):
        a, b = ({str(r["id"]): r["pass@1_after"] for r in read_results(p)} for p in paths)
        ids = sorted(set(a) & set(b))
        if ids:
            lo, hi = paired_bootstrap_ci([b[i] for i in ids], [a[i] for i in ids])
            diff = sum(a[i] - b[i] for i in ids) / len(ids)
            return (f"{fmt_gain(diff)} [{fmt_gain(lo)}, {fmt_gain(hi)}]"
                    f"{'' if excludes_zero((lo, hi)) else '°'} over {len(ids)} paired questions")
    return f"{fmt_gain(vote.after - rand.after)} (no per-question records: no interval)"


def csv_number(value: float | None) -> str:
    # full precision, less the float noise of a subtraction (0.034000000000000003)
    return "" if value is None else repr(round(value, 9))


def write_csv(table: Table, path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        # maj@N and N last, so readers of the older eight columns by position still work
        writer.writerow(["row", "dataset", "pass@1", "gain", "gain_ci95_lo", "gain_ci95_hi",
                         "questions", "run_dir", "maj@N", "N"])
        for row in [BASE] + table.rows:
            for dataset in table.datasets:
                run = table.base.get(dataset) if row == BASE else table.cells.get((row, dataset))
                if run is None:
                    writer.writerow([row, dataset, "", "", "", "", "", "", "", ""])
                    continue
                value = run.before if row == BASE else run.after
                gain = None if row == BASE else run.gain
                ci = (None, None) if row == BASE or run.gain_ci is None else run.gain_ci
                votes = run.config.get("n_votes")
                maj = (csv_number(run.maj), votes if type(votes) is int else "") \
                    if row == BASE and run.maj is not None else ("", "")
                writer.writerow([row, dataset, csv_number(value), csv_number(gain),
                                 csv_number(ci[0]), csv_number(ci[1]),
                                 "" if run.questions is None else run.questions, run.dir, *maj])


# ---- plots -----------------------------------------------------------------------------------

def plot_dataset(plt, dataset: str, runs: list[Run], records: dict[str, list[dict]],
                 path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="no change (y = x)")
    for run in runs:
        recs = records[run.dir]
        # pass@1 takes few distinct values (k / n_eval), so many questions share a point:
        # draw each point once, its area proportional to how many questions landed there.
        points = Counter((r["pass@1_before"], r["pass@1_after"]) for r in recs)
        up = sum(r["pass@1_after"] > r["pass@1_before"] for r in recs)
        down = sum(r["pass@1_after"] < r["pass@1_before"] for r in recs)
        i = ROWS.index(run.row)
        ax.scatter([b for b, _ in points], [a for _, a in points],
                   s=[30 * n for n in points.values()], marker=MARKERS[i % len(MARKERS)], facecolors="none",
                   edgecolors=f"C{i}", linewidths=1.5,
                   label=f"{run.row}: {up} up, {down} down of {len(recs)}")
    ax.set(xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), aspect="equal",
           xlabel="pass@1 before adaptation", ylabel="pass@1 after adaptation",
           title=f"{dataset}: per question (marker area = questions)")
    # below the axes: inside, it would hide points in whichever corner it took
    legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize="small")
    for handle in getattr(legend, "legend_handles", []):
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([30])  # legend markers at one size, not the first point's
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_file(dataset: str) -> str:
    return dataset.replace("/", "_").replace("\\", "_") + "_per_question.png"


def import_pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is absent."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # no display needed, and none on a server
    import matplotlib.pyplot as plt
    return plt


def read_all_results(runs: list[Run]) -> dict[str, list[dict]]:
    records = {}
    for run in runs:
        if not run.per_question or run.row == NO_UPDATE:
            continue  # a dataset-level run has no per-question before/after; a no-update run's
            # points all lie on the diagonal
        path = Path(run.dir) / "results.jsonl"
        if path.is_file():
            records[run.dir] = read_results(path)
        else:
            print(f"{run.dir} has no results.jsonl; it is left out of the plots")
    return records


def write_plots(plt, table: Table, runs: list[Run], records: dict, out: Path) -> list[Path]:
    written = []
    for dataset in table.datasets:
        plotted = [r for r in runs if r.dataset == dataset and records.get(r.dir)]
        plotted.sort(key=lambda r: ROWS.index(r.row))
        if not plotted:
            print(f"no per-question results on {dataset}; no plot")
            continue
        path = out / plot_file(dataset)
        plot_dataset(plt, dataset, plotted, records, path)
        written.append(path)
    return written


# ---- command line ----------------------------------------------------------------------------

class OneLineParser(argparse.ArgumentParser):
    """A bad flag gets one line saying what is allowed, not the whole usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sttrl report", description="Tabulate finished runs: pass@1 per "
                           "method (rows) and data set (columns), with per-question plots.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run's output directory (holds summary.json)")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for table.md, table.csv and the plots")
    parser.add_argument("--title", default="STTRL results", help="heading of table.md")
    parser.add_argument("--no-plots", action="store_true", help="write only the tables")
    parser.add_argument("--allow-mixed-models", action="store_true",
                        help="allow runs of different models in one table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = [load_run(d) for d in args.run_dirs]
    table = build_table(runs, args.allow_mixed_models)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out} is a file; give a folder")

    # Read everything the plots need before writing anything, so an error leaves no half report.
    plt = None if args.no_plots else import_pyplot()
    records = read_all_results(runs) if plt else {}

    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(table, args.title)
    (out / "table.md").write_text(markdown)
    write_csv(table, out / "table.csv")
    print(markdown)
    written = [out / "table.md", out / "table.csv"]
    if table.versus:
        vsbase.write_csv(table.versus, out / "vs_base.csv")
        written.append(out / "vs_base.csv")
    if plt is not None:
        written += write_plots(plt, table, runs, records, out)
    elif not args.no_plots:
        print("plots skipped: matplotlib is not installed (pip install matplotlib, "
              "or pip install 'sttrl[plot]')")
    for path in written:
        print(f"wrote {path}")
    return 0
