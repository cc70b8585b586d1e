"""`sttrl report`: fake run directories in, tables (and plots) out; no number is ever invented."""
import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from sttrl.cli import main as cli_main
from sttrl.errors import UserError
from sttrl.reporting.report import build_table, load_run, main

MODEL = "SmolLM2-135M-Instruct"


def make_run(root, name, before=0.4, after=0.5, dataset="ARITH-TTT", method="ttrl",
             continuous=False, mode=None, questions=4, model=MODEL, data_path=None,
             results=True):
    """A run directory as the driver leaves it: summary.json and, per question, results.jsonl."""
    run = root / name
    run.mkdir(parents=True)
    config = {"dataset": dataset, "data_path": data_path, "adaptation_method": method,
              "continuous": continuous, "model": model}
    if mode is not None:
        config["mode"] = mode
    summary = {"questions": questions, "pass@1_before": before, "pass@1_after": after,
               "config": config}
    (run / "summary.json").write_text(json.dumps(summary))
    if results:
        # questions that average to exactly `before` and `after`
        lines = [{"index": i, "id": f"q{i}", "pass@1_before": before, "pass@1_after": after}
                 for i in range(questions)]
        (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return str(run)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table_rows(markdown):
    """{first cell: [other cells]} for each row of the markdown table."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.parametrize("kwargs,row", [
    (dict(method="ttrl"), "STTRL (reset)"),
    (dict(method="ttrl", continuous=True), "STTRL (continuous)"),
    (dict(method="ttrl", mode="question"), "STTRL (reset)"),
    (dict(method="ttrl", mode="dataset"), "TTRL"),
    (dict(method="ttft"), "ttft"),
    (dict(method="slot"), "slot"),
    (dict(method="memo"), "memo"),
    (dict(method="memo", continuous=True), "memo (continuous)"),
])
def test_row_classification(tmp_path, kwargs, row):
    assert load_run(make_run(tmp_path, "r", **kwargs)).row == row


def test_column_is_data_path_stem_when_set(tmp_path):
    run = load_run(make_run(tmp_path, "r", data_path="/data/my_questions.json"))
    assert run.dataset == "my_questions"


def test_table_base_row_gain_and_csv(tmp_path, capsys):
    runs = [make_run(tmp_path, "reset", before=0.478, after=0.512),
            make_run(tmp_path, "cont", before=0.478, after=0.45, continuous=True),
            make_run(tmp_path, "ttft", before=0.478, after=0.478, method="ttft")]
    assert main(runs + ["--out", str(tmp_path / "out"), "--no-plots"]) == 0
    md = (tmp_path / "out" / "table.md").read_text()
    rows = table_rows(md)
    assert rows["method"] == ["ARITH-TTT"]
    assert rows["base model"] == ["0.478"]
    assert rows["STTRL (reset)"] == ["0.512 (+0.034 [+0.034, +0.034])"]
    assert rows["STTRL (continuous)"] == ["0.450 (-0.028 [-0.028, -0.028])"]
    assert rows["ttft"] == ["0.478 (+0.000 [+0.000, +0.000]°)"]  # no change is +0.000, never -0.000
    assert f"Model: {MODEL}. Questions: ARITH-TTT 4." in md
    assert md in capsys.readouterr().out  # the table is printed too

    by_row = {r["row"]: r for r in read_csv(tmp_path / "out" / "table.csv")}
    assert by_row["base model"] == {"row": "base model", "dataset": "ARITH-TTT", "pass@1": "0.478",
                                    "gain": "", "gain_ci95_lo": "", "gain_ci95_hi": "",
                                    "questions": "4", "run_dir": runs[0], "maj@N": "", "N": ""}
    assert by_row["STTRL (reset)"]["gain_ci95_lo"] == by_row["STTRL (reset)"]["gain_ci95_hi"]
    assert by_row["STTRL (reset)"]["pass@1"] == "0.512"
    assert by_row["STTRL (reset)"]["gain"] == "0.034"
    assert by_row["STTRL (continuous)"]["gain"] == "-0.028"


def test_one_run_fills_exactly_one_method_cell(tmp_path):
    run = make_run(tmp_path, "only", method="slot", before=0.25, after=0.5)
    main([run, "--out", str(tmp_path / "out"), "--no-plots"])
    rows = table_rows((tmp_path / "out" / "table.md").read_text())
    assert list(rows) == ["method", "base model", "slot"]
    assert rows["slot"] == ["0.500 (+0.250 [+0.250, +0.250])"]
    filled = [r for r in read_csv(tmp_path / "out" / "table.csv") if r["pass@1"]]
    assert [(r["row"], r["pass@1"]) for r in filled] == [("base model", "0.25"), ("slot", "0.5")]


def test_missing_runs_are_empty_cells(tmp_path):
    runs = [make_run(tmp_path, "a_reset", dataset="A-TTT"),
            make_run(tmp_path, "b_reset", dataset="B-TTT"),
            make_run(tmp_path, "a_memo", dataset="A-TTT", method="memo", after=0.75)]
    main(runs + ["--out", str(tmp_path / "out"), "--no-plots"])
    rows = table_rows((tmp_path / "out" / "table.md").read_text())
    assert rows["method"] == ["A-TTT", "B-TTT"]
    assert rows["memo"] == ["0.750 (+0.350 [+0.350, +0.350])", ""]
    memo_b = [r for r in read_csv(tmp_path / "out" / "table.csv")
              if r["row"] == "memo" and r["dataset"] == "B-TTT"]
    assert memo_b == [{"row": "memo", "dataset": "B-TTT", "pass@1": "", "gain": "",
                       "gain_ci95_lo": "", "gain_ci95_hi": "", "questions": "", "run_dir": "",
                       "maj@N": "", "N": ""}]


def test_dataset_level_run_lands_in_ttrl_row(tmp_path):
    run = make_run(tmp_path, "ttrl", mode="dataset", before=0.3, after=0.6, results=False)
    main([run, "--out", str(tmp_path / "out")])  # plots on: a run without results.jsonl is fine
    rows = table_rows((tmp_path / "out" / "table.md").read_text())
    assert rows["base model"] == ["0.300"]
    assert rows["TTRL"] == ["0.600 (+0.300)"]
    assert not list((tmp_path / "out").glob("*.png"))  # nothing per question to plot


def test_mode_written_only_at_the_top_level_counts(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    summary = {"mode": "dataset", "questions": 5, "pass@1_before": 0.2, "pass@1_after": 0.4,
               "evals": [{"step": 0, "pass@1": 0.2}, {"step": 5, "pass@1": 0.4}],
               "config": {"dataset": "ARITH-TTT", "adaptation_method": "ttrl", "model": MODEL}}
    (run / "summary.json").write_text(json.dumps(summary))
    assert load_run(str(run)).row == "TTRL"


def test_base_disagreement_prefers_reset_and_footnotes(tmp_path):
    runs = [make_run(tmp_path, "ttft", method="ttft", before=0.5, after=0.6, questions=10),
            make_run(tmp_path, "reset", before=0.4, after=0.45, questions=4)]
    main(runs + ["--out", str(tmp_path / "out"), "--no-plots"])
    md = (tmp_path / "out" / "table.md").read_text()
    rows = table_rows(md)
    assert rows["base model"] == ["0.400, n=4"]  # the reset run's, with counts per cell
    assert rows["ttft"] == ["0.600 (+0.100 [+0.100, +0.100]), n=10"]  # gain over its own before-number
    assert "ARITH-TTT varies by run (4, 10; shown in each cell)" in md  # sorted as numbers
    assert "the runs disagree on base pass@1" in md and "ttft 0.500 (n=10" in md


def test_duplicate_cell_is_an_error_naming_both(tmp_path):
    a = make_run(tmp_path, "first", after=0.5)
    b = make_run(tmp_path, "second", after=0.6)
    with pytest.raises(UserError, match=r"first and .*second are both STTRL \(reset\) on ARITH"):
        main([a, b, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_missing_summary_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty has no summary.json"):
        main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")])


def test_malformed_json_names_file_line_and_column(tmp_path):
    run = tmp_path / "bad"
    run.mkdir()
    (run / "summary.json").write_text('{\n  "questions": 3,\n  "pass@1_before": ,\n}')
    with pytest.raises(UserError, match=r"bad/summary.json: invalid JSON at line 3, column 20"):
        load_run(str(run))


def test_malformed_results_line_is_an_error(tmp_path):
    run = make_run(tmp_path, "r")
    with open(f"{run}/results.jsonl", "a") as f:
        f.write("{oops\n")
    pytest.importorskip("matplotlib")  # results.jsonl is only read for the plots
    with pytest.raises(UserError, match=r"results.jsonl: invalid JSON at line 5, column 2"):
        main([run, "--out", str(tmp_path / "out")])


def test_torn_last_results_line_is_left_out(tmp_path):
    pytest.importorskip("matplotlib")
    run = make_run(tmp_path, "r")
    with open(f"{run}/results.jsonl", "a") as f:
        f.write('{"index": 4, "pass@1_')  # a run killed mid-write
    assert main([run, "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "ARITH-TTT_per_question.png").exists()
    # the report never edits a run (resuming it drops the torn line)
    assert (tmp_path / "r" / "results.jsonl").read_text().endswith('"pass@1_')


def test_mixed_models_are_an_error_unless_allowed(tmp_path):
    runs = [make_run(tmp_path, "small", model="small-model"),
            make_run(tmp_path, "big", model="big-model", method="ttft")]
    with pytest.raises(UserError, match="small-model.*big-model.*--allow-mixed-models"):
        build_table([load_run(r) for r in runs])
    assert main(runs + ["--out", str(tmp_path / "out"), "--no-plots", "--allow-mixed-models"]) == 0
    assert "Models (mixed): small-model, big-model." in (tmp_path / "out" / "table.md").read_text()


def test_cli_prints_user_errors_as_one_line(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nope: no such directory" in err and err.count("\n") == 1


def test_bad_flag_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--out", str(tmp_path / "out"), "--colour"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --colour" in err and err.count("\n") == 1


HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.mark.skipif(not HAVE_MATPLOTLIB, reason="matplotlib not installed")
def test_plots_written_per_dataset(tmp_path, capsys):
    runs = [make_run(tmp_path, "a_reset", dataset="A-TTT", before=0.25, after=0.5),
            make_run(tmp_path, "a_slot", dataset="A-TTT", method="slot"),
            make_run(tmp_path, "b_ttrl", dataset="B-TTT", mode="dataset", results=False)]
    main(runs + ["--out", str(tmp_path / "out")])
    png = tmp_path / "out" / "A-TTT_per_question.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "out" / "B-TTT_per_question.png").exists()
    assert f"wrote {png}" in capsys.readouterr().out


def test_the_default_install_draws_the_plots(tmp_path, capsys):
    """matplotlib is in requirements.txt, so after scripts/setup.sh a report over two run folders
    writes the per-question PNG and never says the plots were skipped."""
    requirements = (Path(__file__).resolve().parents[1] / "requirements.txt").read_text()
    assert "matplotlib" in [line.split("#")[0].strip() for line in requirements.splitlines()]
    pytest.importorskip("matplotlib")
    runs = [make_run(tmp_path, "reset", before=0.25, after=0.5),
            make_run(tmp_path, "ttft", method="ttft", before=0.25, after=0.75)]
    assert main(runs + ["--out", str(tmp_path / "out")]) == 0
    png = tmp_path / "out" / "ARITH-TTT_per_question.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert f"wrote {png}" in out and "plots skipped" not in out


def test_without_matplotlib_tables_are_written_and_plots_skipped(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    main([make_run(tmp_path, "r"), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "table.md").exists() and (tmp_path / "out" / "table.csv").exists()
    assert not list((tmp_path / "out").glob("*.png"))
    out = capsys.readouterr().out
    assert "plots skipped: matplotlib is not installed (pip install matplotlib" in out


def test_per_question_script_counts_boxed_expressions_as_restating_the_question(tmp_path):
    """scripts/per_question.py: `9 - 5` for 4 has the right value (the grader says right) but
    only restates the question; the last line counts such answers and their pass@1 without them."""
    import dataclasses
    import subprocess
    from pathlib import Path

    from sttrl.config import Config

    cfg = Config(dataset="ARITH-TTT", num_questions=2, n_votes=4)
    (tmp_path / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    row = {"pseudo_label": "x", "label_correct": True, "maj@N_before": 1.0, "skip_reason": None,
           "train": [{}], "seconds": {"total": 1.0}}
    rows = [  # arith-L1-0000: 7 + 7 = 14; arith-L1-0001: 9 - 5 = 4
        {**row, "id": "arith-L1-0000", "pass@1_before": 0.5, "pass@1_after": 0.75,
         "answers_before": ["14", "13", None, "14"], "answers_after": ["14", "7 + 7", "14", "7+8"]},
        {**row, "id": "arith-L1-0001", "pass@1_before": 0.25, "pass@1_after": 1.0,
         "answers_before": ["4", "5", "5", "5"], "answers_after": ["9 - 5", "4", "9-5", "4"]},
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = Path(__file__).resolve().parents[1] / "scripts" / "per_question.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[-2].startswith("before: 0 of 8 ") and out[-2].endswith("counted wrong: 0.375")
    # after: 4 expressions, 3 of them equal to the reference; right without them: "14", "14", "4", "4"
    assert out[-1].startswith("after: 4 of 8 evaluation answers box an expression")
    assert "(3 of them equal to the reference)" in out[-1]
    assert out[-1].endswith("pass@1 with those counted wrong: 0.500")


def test_a_gain_inside_the_noise_is_marked_and_the_csv_has_its_interval(tmp_path):
    run = tmp_path / "noisy"
    make_run(tmp_path, "noisy", before=0.5, after=0.55, results=False)
    per_question = [(0.5, 1.0), (0.5, 0.0), (0.5, 0.75), (0.5, 0.45)]  # mean gain +0.05
    (run / "results.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "pass@1_before": b, "pass@1_after": a}) + "\n"
        for i, (b, a) in enumerate(per_question)))
    assert main([str(run), "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    cell = table_rows((tmp_path / "out" / "table.md").read_text())["STTRL (reset)"][0]
    assert cell.startswith("0.550 (+0.050 [-") and cell.endswith("]°)")
    row = next(r for r in read_csv(tmp_path / "out" / "table.csv") if r["row"] == "STTRL (reset)")
    assert float(row["gain_ci95_lo"]) < 0 < float(row["gain_ci95_hi"])



def test_control_rows_and_the_vote_against_oracle_and_random(tmp_path):
    vote = make_run(tmp_path, "vote", before=0.4, after=0.5)
    oracle = make_run(tmp_path, "oracle", before=0.4, after=0.6)
    rand = make_run(tmp_path, "random", before=0.4, after=0.45)
    for name, reward in (("oracle", "oracle"), ("random", "random")):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        summary["config"]["reward"] = reward
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    assert load_run(oracle).row == "STTRL (oracle reward)"
    assert load_run(rand).row == "STTRL (random reward)"
    assert main([vote, oracle, rand, "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    md = (tmp_path / "out" / "table.md").read_text()
    rows = table_rows(md)
    assert rows["STTRL (oracle reward)"][0].startswith("0.600 (+0.200")
    assert rows["STTRL (random reward)"][0].startswith("0.450 (+0.050")
    assert "ARITH-TTT: the vote recovers 50% of the oracle's gain (+0.100 of +0.200)." in md
    assert "ARITH-TTT: the vote's margin over random rewards: +0.050 [+0.050, +0.050] over 4 " \
           "paired questions." in md


# ---- continuous runs against the untouched base model ----------------------------------------

EVAL = {"model": MODEL, "prompt_family": "chatml", "answer_form": "strict", "n_eval": 16,
        "val_temp": 0.6, "val_top_p": 0.95, "max_new_tokens": 128, "seed": 0, "n_votes": 64,
        "data_path": None}


def eval_run(root, name, rows, continuous=False, mode=None, steps=3, sha=None, **settings):
    """A run folder with the resolved evaluation settings and per-question records:
    rows = [(id, pass@1_before, pass@1_after, maj@N_before), ...]."""
    run = root / name
    run.mkdir(parents=True)
    config = {**EVAL, "dataset": "ARITH-TTT", "adaptation_method": "ttrl",
              "continuous": continuous, "steps_per_question": steps, **settings}
    if mode is not None:
        config["mode"] = mode
    n = len(rows)
    summary = {"questions": n, "config": config,
               "pass@1_before": sum(r[1] for r in rows) / n if n else None,
               "pass@1_after": sum(r[2] for r in rows) / n if n else None}
    (run / "summary.json").write_text(json.dumps(summary))
    if sha is not None:
        (run / "config.json").write_text(json.dumps({**config, "data_sha256": sha}))
    if mode != "dataset":
        (run / "results.jsonl").write_text("".join(
            json.dumps({"id": q, "pass@1_before": b, "pass@1_after": a, "maj@N_before": m}) + "\n"
            for q, b, a, m in rows))
    return str(run)


def report(tmp_path, runs):
    out = tmp_path / "out"
    assert main(runs + ["--out", str(out), "--no-plots"]) == 0
    md = (out / "table.md").read_text()
    versus = read_csv(out / "vs_base.csv") if (out / "vs_base.csv").exists() else []
    return md, versus


def versus_line(md, run_dir):
    """The report's line for the continuous run in run_dir (and its sub-items)."""
    lines = md.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("- ") and f"({run_dir})" in l)
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  - ")),
               len(lines))
    return "\n".join(lines[start:end])


# the base model on four questions; the continuous run lists them in another order, has one
# more, and its own before-numbers (0.9) are the adapted model's, which must not be used
BASE_ROWS = [("q0", 0.0, 0.5, False), ("q1", 0.25, 0.25, True), ("q2", 0.5, 0.5, True),
             ("q3", 0.25, 0.75, False)]
CONT_ROWS = [("q3", 0.9, 0.25, True), ("q9", 0.9, 1.0, True), ("q2", 0.9, 0.75, True),
             ("q0", 0.9, 0.5, True), ("q1", 0.9, 0.5, True)]


def test_continuous_vs_base_pairs_by_id_with_the_reset_runs_before(tmp_path):
    from sttrl.reporting.stats import ci_text, paired_bootstrap_ci

    base = eval_run(tmp_path, "reset", BASE_ROWS)
    cont = eval_run(tmp_path, "cont", CONT_ROWS, continuous=True)
    md, versus = report(tmp_path, [cont, base])
    after = [0.5, 0.5, 0.75, 0.25]  # the continuous run's after, q0..q3
    pass_ci = paired_bootstrap_ci([0.0, 0.25, 0.5, 0.25], after)
    maj_ci = paired_bootstrap_ci([0.0, 1.0, 1.0, 0.0], after)
    line = versus_line(md, cont)
    assert line.startswith(f"- STTRL (continuous) on ARITH-TTT ({cont}), over 4 common "
                           f"questions: pass@1 0.500; vs the base model's pass@1 0.250: "
                           f"+0.250{ci_text(pass_ci)}; vs the base model's maj@64 0.500: "
                           f"+0.000{ci_text(maj_ci)}: not shown to exceed")
    assert f"Base: {base} (STTRL (reset), its before-evaluation)." in line
    assert versus == [{"row": "STTRL (continuous)", "dataset": "ARITH-TTT", "run_dir": cont,
                       "base_dir": base, "questions": "4", "pass@1_after": "0.5",
                       "base_pass@1": "0.25", "vs_pass@1_ci95_lo": repr(round(pass_ci[0], 9)),
                       "vs_pass@1_ci95_hi": repr(round(pass_ci[1], 9)), "base_maj@N": "0.5",
                       "vs_maj@N_ci95_lo": repr(round(maj_ci[0], 9)),
                       "vs_maj@N_ci95_hi": repr(round(maj_ci[1], 9)), "exceeds_maj@N": "false"}]
    # the main table's base row is the reset run's, and no note blames the continuous run
    assert table_rows(md)["base model"] == ["0.250, n=4"]
    assert "disagree" not in md


def test_a_no_update_run_is_the_base_and_fills_no_method_cell(tmp_path):
    reset = eval_run(tmp_path, "reset", [(q, b + 0.25, a, m) for q, b, a, m in BASE_ROWS])
    none = eval_run(tmp_path, "none", [(q, b, b, m) for q, b, _, m in BASE_ROWS], steps=0)
    cont = eval_run(tmp_path, "cont", CONT_ROWS, continuous=True)
    assert load_run(none).row == "base model (no update)"
    md, versus = report(tmp_path, [reset, none, cont])  # not two runs in one cell
    assert "base model (no update)" not in table_rows(md)
    assert table_rows(md)["base model"] == ["0.250, n=4"]  # the no-update run's, not the reset's
    assert [v["base_dir"] for v in versus] == [none]  # on a tie, the no-update run
    # a continuous run that never updates measures the untouched model too
    steady = eval_run(tmp_path, "steady", BASE_ROWS, continuous=True, steps=0)
    assert load_run(steady).untouched_before and not load_run(cont).untouched_before


@pytest.mark.parametrize("key,value", [("n_eval", 8), ("val_temp", 1.0), ("val_top_p", 1.0),
                                       ("max_new_tokens", 64), ("seed", 1),
                                       ("prompt_family", "qwen"), ("answer_form", "symbolic"),
                                       ("data_path", "other.json")])
def test_a_base_run_with_other_evaluation_settings_is_not_used_and_the_report_says_why(
        tmp_path, key, value):
    base = eval_run(tmp_path, "reset", BASE_ROWS, **{key: value})
    cont = eval_run(tmp_path, "cont", CONT_ROWS, continuous=True)
    if key == "data_path":  # another file is another column; the same stem is the same column
        base = eval_run(tmp_path, "reset2", BASE_ROWS, data_path="/elsewhere/ARITH-TTT.json")
    md, versus = report(tmp_path, [cont, base])
    line = versus_line(md, cont)
    assert "common questions" not in line and "no base-model run to compare with" in line
    shown = "'/elsewhere/ARITH-TTT.json'" if key == "data_path" else repr(value)
    assert f"not used as its base: {base} ({key} {shown}, this run's {EVAL[key]!r})" in line
    assert versus[0]["base_dir"] == "" and versus[0]["exceeds_maj@N"] == ""


def test_other_questions_under_the_same_name_are_not_the_base(tmp_path):
    base = eval_run(tmp_path, "reset", BASE_ROWS, sha="aaa")
    cont = eval_run(tmp_path, "cont", CONT_ROWS, continuous=True, sha="bbb")
    line = versus_line(report(tmp_path, [cont, base])[0], cont)
    assert f"{base} (other questions (data_sha256 differs))" in line


def test_unrecorded_settings_are_not_taken_for_equal(tmp_path):
    base = make_run(tmp_path, "old_reset")  # a summary without the evaluation settings
    cont = eval_run(tmp_path, "cont", CONT_ROWS, continuous=True, model=MODEL)
    line = versus_line(report(tmp_path, [cont, base])[0], cont)
    assert "n_eval not recorded" in line and "no base-model run" in line


@pytest.mark.parametrize("after,expect", [
    ((1.0, 1.0, 1.0, 1.0), "exceeds the base model's maj@N."),  # +0.5, +0.25, +0.25, +0.5
    ((0.5, 1.0, 1.0, 0.0), "not shown to exceed the base model's maj@N"),  # 0, +.25, +.25, -.5
    ((0.5, 0.75, 0.75, 0.5), "not shown to exceed the base model's maj@N"),  # [+0, +0]: no gain
    ((0.0, 0.5, 0.5, 0.0), "below the base model's maj@N."),  # -0.5, -0.25, -0.25, -0.5
])
def test_the_maj_verdict_follows_the_interval_and_marks_zero(tmp_path, after, expect):
    base = eval_run(tmp_path, "reset", [("q0", 0.5, 0.5, 0.5), ("q1", 0.5, 0.5, 0.75),
                                        ("q2", 0.5, 0.5, 0.75), ("q3", 0.5, 0.5, 0.5)])
    rows = [(f"q{i}", 0.0, a, True) for i, a in enumerate(after)]
    cont = eval_run(tmp_path, "cont", rows, continuous=True)
    md, versus = report(tmp_path, [cont, base])
    line = versus_line(md, cont)
    assert expect in line
    maj_part = line.split("maj@64")[1]
    lo, hi = float(versus[0]["vs_maj@N_ci95_lo"]), float(versus[0]["vs_maj@N_ci95_hi"])
    includes_zero = lo <= 0 <= hi
    assert ("]°:" in maj_part) == includes_zero  # ° exactly when the interval includes zero
    assert versus[0]["exceeds_maj@N"] == ("true" if lo > 0 else "false")
    assert ("exceeds" in line and "not shown" not in line) == (lo > 0)


def test_no_base_run_gives_the_hint_and_no_number(tmp_path):
    cont = eval_run(tmp_path, "cont", CONT_ROWS, continuous=True)
    md, versus = report(tmp_path, [cont])
    assert versus_line(md, cont) == (
        f"- STTRL (continuous) on ARITH-TTT ({cont}): no base-model run to compare with: run the "
        "same command without --continuous (or with --steps_per_question 0, which never "
        "updates, and its own --output_dir) and pass its folder to `sttrl report` too.")
    # the adapted before-number is never shown as the base model's
    assert table_rows(md)["base model"] == [""]
    assert "every run is --continuous, so none measured the base model" in md


def test_a_dataset_level_run_gives_the_base_pass_at_1_without_interval(tmp_path):
    ttrl = eval_run(tmp_path, "ttrl", BASE_ROWS, mode="dataset")  # before: mean 0.25
    whole = eval_run(tmp_path, "cont", [r for r in CONT_ROWS if r[0] != "q9"], continuous=True)
    line = versus_line(report(tmp_path, [whole, ttrl])[0], whole)
    assert ("pass@1 0.500 vs the base model's 0.250 (" + ttrl + ", TTRL's evaluation before "
            "training): +0.250, over 4 questions; no interval and no maj@N") in line
    (tmp_path / "out").rename(tmp_path / "out1")
    cont = eval_run(tmp_path, "cont5", CONT_ROWS, continuous=True)  # 5 questions: another set
    line = versus_line(report(tmp_path, [cont, ttrl])[0], cont)
    assert f"{ttrl} (4 questions, this run has 5)" in line and "no base-model run" in line


def test_steps_per_question_0_never_updates(tiny_model, tmp_path, monkeypatch):
    """The base-model run the hint asks for: accepted by the command line, and its before and
    after are the same samples of the untouched model, continuous or not."""
    import dataclasses

    import sttrl.modes.common
    from sttrl.cli import parse_config
    from sttrl.engines.local import LocalEngine
    from sttrl.run import run

    def no_training(*args, **kwargs):
        raise AssertionError("--steps_per_question 0 trained")

    monkeypatch.setattr(LocalEngine, "train", no_training)
    # the random model's texts hold no answer: record the evaluation texts themselves, so
    # "the same samples" is a real comparison and not None == None
    monkeypatch.setattr(sttrl.modes.common, "extract_answer", lambda text, task: text)

    data = tmp_path / "q.json"
    data.write_text(json.dumps([{"prompt": f"What is {i} + 1?", "answer": str(i + 1),
                                 "source": "toy", "id": f"q{i}"} for i in range(3)]))
    cfg = parse_config(["--model", tiny_model, "--data_path", str(data), "--device", "cpu",
                        "--n_votes", "4", "--n_train", "4", "--n_eval", "4",
                        "--max_new_tokens", "6", "--temperature", "1.0", "--val_temp", "1.0",
                        "--steps_per_question", "0", "--lr", "0.5", "--progress", "false",
                        "--output_dir", str(tmp_path / "none")])
    run(cfg)
    run(dataclasses.replace(cfg, continuous=True, output_dir=str(tmp_path / "none_cont")))
    reset = [json.loads(x) for x in (tmp_path / "none" / "results.jsonl").read_text().splitlines()]
    cont = [json.loads(x) for x in
            (tmp_path / "none_cont" / "results.jsonl").read_text().splitlines()]
    for r in reset + cont:
        assert r["answers_after"] == r["answers_before"] and r["train"] == []
    assert [r["answers_before"] for r in cont] == [r["answers_before"] for r in reset]
    assert len({a for r in reset for a in r["answers_before"]}) > 1  # real, varied samples
    assert load_run(str(tmp_path / "none")).row == "base model (no update)"


# ---- the base model's maj@N beside its pass@1 ------------------------------------------------

def with_summary(run, **fields):
    path = Path(run) / "summary.json"
    summary = json.loads(path.read_text())
    for key, value in fields.items():
        if key == "config":
            summary["config"].update(value)
        else:
            summary[key] = value
    path.write_text(json.dumps(summary))
    return run


def test_the_base_model_maj_at_n_shows_beside_its_pass_at_1(tmp_path):
    reset = with_summary(make_run(tmp_path, "reset", before=0.453, after=0.547),
                         **{"maj@N_before": 0.625, "config": {"n_votes": 16}})
    ttft = with_summary(make_run(tmp_path, "ttft", method="ttft", before=0.453, after=0.5),
                        **{"maj@N_before": 0.5, "config": {"n_votes": 16}})
    assert main([ttft, reset, "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    md = (tmp_path / "out" / "table.md").read_text()
    rows = table_rows(md)
    # right under the base pass@1, from the same run (the reset run's, not ttft's 0.5)
    assert list(rows)[:3] == ["method", "base model", "base model maj@N"]
    assert rows["base model"] == ["0.453"]
    assert rows["base model maj@N"] == ["0.625 (maj@16)"]
    assert "base model maj@N: the untouched model's majority vote over its N rollout" in md
    by_row = {r["row"]: r for r in read_csv(tmp_path / "out" / "table.csv")}
    assert (by_row["base model"]["pass@1"], by_row["base model"]["maj@N"],
            by_row["base model"]["N"]) == ("0.453", "0.625", "16")
    assert by_row["STTRL (reset)"]["maj@N"] == "" and by_row["ttft"]["maj@N"] == ""


def test_a_base_maj_at_n_that_was_not_recorded_is_said_so_not_invented(tmp_path):
    ttrl = make_run(tmp_path, "ttrl", mode="dataset", dataset="A-TTT", results=False)
    reset = with_summary(make_run(tmp_path, "reset", dataset="B-TTT"),
                         **{"maj@N_before": 0.75, "config": {"n_votes": 8}})
    main([ttrl, reset, "--out", str(tmp_path / "out"), "--no-plots"])
    rows = table_rows((tmp_path / "out" / "table.md").read_text())
    assert rows["base model maj@N"] == ["not recorded (TTRL's summary has no maj@N)",
                                        "0.750 (maj@8)"]
    base = [r for r in read_csv(tmp_path / "out" / "table.csv") if r["row"] == "base model"]
    assert [(r["dataset"], r["maj@N"], r["N"]) for r in base] == [("A-TTT", "", ""),
                                                                   ("B-TTT", "0.75", "8")]


def test_a_base_maj_at_n_that_is_not_a_number_is_an_error(tmp_path):
    run = with_summary(make_run(tmp_path, "r"), **{"maj@N_before": "high"})
    with pytest.raises(UserError, match="maj@N_before must be a number, got 'high'"):
        load_run(run)
