"""Reliability under a hostile user and a hostile machine (issue #22): resuming never redoes a
question on weights that saw it, never counts a line twice or a foreign one, a label-free set
runs, and every fault of the environment is one line, exit 2, naming the path and the fix."""
import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from sttrl.cli import main, parse_config
from sttrl.errors import UserError
from sttrl.run import run

from helpers import (REPO, lines, make_tiny_model, one_line_error, tiny_argv, tiny_config,
                     write_questions)


SMALL = dict(n_votes=4, n_train=4, n_eval=2, max_new_tokens=4, steps_per_question=1)


# ---- 2. the memory check counts the whole batch ----------------------------------------------

def test_the_memory_check_counts_the_votes_and_the_evaluation_together(tiny_model, tmp_path,
                                                                      monkeypatch):
    import sttrl.run as run_module
    from sttrl.engines.local import LocalEngine

    # 1,000 bytes a row; 12,500 free: 8 rows fit, the 8 votes + 8 evaluation samples do not
    monkeypatch.setattr(LocalEngine, "sampling_memory", lambda self, rows, p, m: (rows * 1000, "cpu"))
    monkeypatch.setattr(run_module, "available_memory", lambda device: 12_500)
    data = write_questions(tmp_path / "q.json", n=1)
    with pytest.raises(UserError, match="sampling 16 answers"):
        run(tiny_config(tiny_model, data, tmp_path / "out", n_votes=8, n_train=8, n_eval=8))


# ---- 3. a continuous run never resumes on weights that saw a lost line -------------------------

def test_a_continuous_run_whose_results_lost_lines_is_refused(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json", n=3)
    out = tmp_path / "out"
    cfg = tiny_config(tiny_model, data, out, continuous=True, num_questions=2, **SMALL)
    run(cfg)
    (out / "results.jsonl").unlink()
    with pytest.raises(UserError, match=r"saved after 2 finished question\(s\).*accounts for 1"):
        run(cfg)
    assert not (out / "results.jsonl").exists()  # refused before anything was written


# ---- 4. foreign and duplicate lines ---------------------------------------------------------

@pytest.mark.parametrize("edit, expected", [
    (lambda line: line.replace(b'"q0"', b'"elsewhere"'), "line 2 is question 'elsewhere', which is not"),
    (lambda line: line, "line 2 repeats question 'q0' of line 1"),
])
def test_a_foreign_or_repeated_results_line_is_refused(tiny_model, tmp_path, capsys, edit, expected):
    data = write_questions(tmp_path / "q.json", n=2)
    out = tmp_path / "out"
    argv = tiny_argv(tiny_model, data, out, "--num_questions", "1")
    assert main(argv) == 0
    capsys.readouterr()
    good = (out / "results.jsonl").read_bytes()
    (out / "results.jsonl").write_bytes(good + edit(good))
    before = (out / "summary.json").read_bytes()
    assert expected in one_line_error(capsys, argv)
    assert (out / "summary.json").read_bytes() == before  # never counted


def test_the_report_refuses_a_repeated_question(tmp_path):
    from sttrl.reporting.runs import read_results

    line = {"id": "a", "pass@1_before": 0.5, "pass@1_after": 1.0}
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(line) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(UserError, match="line 2 repeats question 'a' of line 1"):
        read_results(path)


# ---- 5. label-free data ---------------------------------------------------------------------

def label_free(path: Path, n: int = 2) -> str:
    rows = [{"prompt": f"What is {i} + {i + 1}?", "source": "toy", "id": f"q{i}"}
            for i in range(n)]
    path.write_text(json.dumps(rows))
    return str(path)


def test_a_label_free_set_runs_and_says_pass1_is_not_measured(tiny_model, tmp_path, capsys):
    from sttrl.modes.question import status
    from sttrl.reporting.report import build_table, cell_text, load_run

    data = label_free(tmp_path / "free.json")
    out = tmp_path / "out"
    assert main(tiny_argv(tiny_model, data, out)) == 0
    printed = capsys.readouterr().out
    assert "no references: pass@1 not measured" in printed
    records = lines(out)
    assert [r["id"] for r in records] == ["q0", "q1"]
    for r in records:
        assert r["pass@1_before"] is None and r["pass@1_after"] is None
        assert r["maj@N_before"] is None and r["label_correct"] is None
        assert len(r["answers_after"]) == 2 and "clusters" in r["vote"] and "pseudo_label" in r
    summary = json.loads((out / "summary.json").read_text())
    assert summary["questions"] == 2 and summary["questions_with_reference"] == 0
    assert summary["pass@1_note"] == "no references: pass@1 not measured"
    assert summary["pass@1_before"] is None and summary["pass@1_gain"] is None
    assert status(summary) == "no references: pass@1 not measured"  # the progress bar's line
    table = build_table([load_run(str(out))])
    assert "no references: pass@1 not measured" in cell_text(table, table.rows[0], "free")
    assert any("no references" in note for note in table.notes)
    # resuming it reads the null metrics back
    assert main(tiny_argv(tiny_model, data, out)) == 0


def test_a_label_free_set_in_dataset_mode(tiny_model, tmp_path):
    data = label_free(tmp_path / "free.json")
    summary = run(tiny_config(tiny_model, data, tmp_path / "out", mode="dataset",
                              prompts_per_step=2, **SMALL))
    assert summary["pass@1_before"] is None and summary["pass@1_note"].startswith("no references")


def test_the_oracle_reward_refuses_a_label_free_set(tiny_model, tmp_path, capsys):
    data = label_free(tmp_path / "free.json")
    err = one_line_error(capsys, tiny_argv(tiny_model, data, tmp_path / "out", "--reward", "oracle"))
    assert "--reward oracle" in err and "'q0'" in err and "--reward vote" in err


# ---- 6. environment faults: one line, exit 2 ------------------------------------------------

def as_user(uid: int, argv: list[str], env: dict, cwd: str) -> subprocess.CompletedProcess:
    """main.py as an unprivileged user (root ignores file permissions)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as an unprivileged user")
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                           sys.executable, str(REPO / "main.py"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def open_dir():
    """A folder every user may enter and write, with a tiny model in it (the session's is in
    root's private temporary folder)."""
    folder = Path(tempfile.mkdtemp(prefix="sttrl_faults_"))
    folder.chmod(0o777)
    make_tiny_model(folder / "model")
    for path in folder.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def check_one_line(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


NOBODY = 65534


def test_unreadable_files_and_homes_are_one_line_as_a_user(open_dir):
    data = write_questions(open_dir / "q.json", n=1)
    (open_dir / "q.json").chmod(0o600)  # root's, unreadable to others
    (open_dir / "c.yaml").write_text("lr: 1e-5\n")
    (open_dir / "c.yaml").chmod(0o600)
    base = {"PATH": os.environ["PATH"], "HOME": str(open_dir)}
    model = str(open_dir / "model")
    flags = ["--device", "cpu", "--progress", "false", "--max_new_tokens", "4"]
    proc = as_user(NOBODY, ["--model", model, "--data_path", data, "--output_dir",
                            str(open_dir / "o1"), *flags], base, str(open_dir))
    check_one_line(proc, "cannot read", "q.json", "permissions")
    assert not (open_dir / "o1").exists()  # a failed start leaves no folder behind
    proc = as_user(NOBODY, ["--config", str(open_dir / "c.yaml"), "--output_dir",
                            str(open_dir / "o2"), *flags], base, str(open_dir))
    check_one_line(proc, "cannot read", "c.yaml")
    # the embedded model's cache under an unreadable HOME, and with no HOME at all
    home = open_dir / "home"
    home.mkdir(mode=0o700)
    proc = as_user(NOBODY, ["--output_dir", str(open_dir / "o3"), *flags],
                   {**base, "HOME": str(home)}, str(open_dir))
    check_one_line(proc, "model cache", str(home), "STTRL_CACHE")
    proc = as_user(54321, ["--output_dir", str(open_dir / "o4"), *flags],
                   {"PATH": os.environ["PATH"]}, str(open_dir))  # no HOME, no passwd entry
    check_one_line(proc, "HOME", "STTRL_CACHE")
    # an output folder under one this user cannot search
    proc = as_user(NOBODY, ["--output_dir", str(home / "o5"), *flags], base, str(open_dir))
    check_one_line(proc, "--output_dir", str(home), "Permission denied")
    # (that these come before the ~30 s conversion: test_a_cache_that_is_a_file_is_refused_at_once)


def test_a_yaml_file_that_is_not_utf8_is_one_line(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"lr: 1e-5 # caf\xe9\n")
    err = one_line_error(capsys, ["--config", str(path), "--output_dir", str(tmp_path / "o")])
    assert str(path) in err and "not UTF-8" in err


def test_a_cache_that_is_a_file_is_refused_at_once(tmp_path, monkeypatch):
    from sttrl.engines.models import resolve_model

    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("STTRL_CACHE", str(tmp_path / "cache" / "inner"))
    start = time.time()
    with pytest.raises(UserError, match=r"model cache .*cache.*STTRL_CACHE"):
        resolve_model("SmolLM2-135M-Instruct")
    monkeypatch.setenv("STTRL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="is a file, not a folder"):
        resolve_model("SmolLM2-135M-Instruct")
    assert time.time() - start < 5


@pytest.fixture
def small_disk():
    """A 1 MiB tmpfs: a disk that fills up."""
    folder = Path(tempfile.mkdtemp(prefix="sttrl_disk_"))
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs",
                                            str(folder)], capture_output=True).returncode != 0:
        folder.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)])
    folder.rmdir()


def fill(folder: Path, leave: int) -> Path:
    """Fill the disk until `leave` bytes are free; returns the filler, to free it later."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_at_the_checkpoint_is_one_line_and_loses_nothing(tiny_model, tmp_path,
                                                                     small_disk, capsys):
    data = write_questions(tmp_path / "q.json", n=2)
    out = small_disk / "out"
    argv = tiny_argv(tiny_model, data, out, "--continuous")
    filler = fill(small_disk, 64 * 1024)  # room for config.json, not for the checkpoint
    err = one_line_error(capsys, argv)
    assert "checkpoint.pt" in err and "No space left on device" in err and "resume" in err
    assert not list(out.glob("*.tmp")) and not (out / "results.jsonl").exists()
    filler.unlink()
    assert main(argv) == 0  # with room again, the same command finishes it
    assert [r["id"] for r in lines(out)] == ["q0", "q1"]


def test_a_full_disk_at_the_cache_is_refused_before_converting(small_disk, monkeypatch):
    from sttrl.engines.models import resolve_model

    monkeypatch.setenv("STTRL_CACHE", str(small_disk / "cache"))
    with pytest.raises(UserError, match=r"model cache .* MB free.*needs 600 MB"):
        resolve_model("SmolLM2-135M-Instruct")


@pytest.mark.parametrize("name", ["results.jsonl", "summary.json"])
def test_a_full_disk_at_the_results_is_one_line_and_loses_nothing(tiny_model, tmp_path,
                                                                  monkeypatch, capsys, name):
    import builtins

    import sttrl.files as files

    data = write_questions(tmp_path / "q.json", n=2)
    out = tmp_path / "out"
    argv = tiny_argv(tiny_model, data, out)
    real_open = builtins.open

    def full_at_the_second_question(path, *args, **kwargs):
        if Path(path).name.startswith(name) and (out / "results.jsonl").exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(files, "open", full_at_the_second_question, raising=False)
    err = one_line_error(capsys, argv)
    assert name in err and "No space left on device" in err
    monkeypatch.undo()
    assert [r["id"] for r in lines(out)] == ["q0"]  # the first question's line is kept
    assert main(argv) == 0
    assert [r["id"] for r in lines(out)] == ["q0", "q1"]


# ---- 7. a foreign checkpoint ----------------------------------------------------------------

@pytest.mark.parametrize("state", [{"weights": 1}, {"engine": {"optimizer": {}}},
                                   {"engine": {"model": {"x": torch.zeros(2)}, "optimizer": {}}}])
def test_a_foreign_checkpoint_is_one_line(tiny_model, tmp_path, capsys, state):
    data = write_questions(tmp_path / "q.json", n=2)
    out = tmp_path / "out"
    argv = tiny_argv(tiny_model, data, out, "--continuous", "--num_questions", "1")
    assert main(argv) == 0
    torch.save(state, out / "checkpoint.pt")
    err = one_line_error(capsys, argv[:-2])
    assert "checkpoint.pt" in err and len(err) < 400


def test_a_foreign_dataset_checkpoint_is_one_line(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    torch.save({"engine": {"x": 1}, "step": 1, "evals": []}, out / "checkpoint.pt")
    err = one_line_error(capsys, ["--mode", "dataset", "--output_dir", str(out), "--device", "cpu"])
    assert "checkpoint.pt cannot be read" in err


def test_a_corrupt_checkpoint_is_a_short_line(tiny_model, tmp_path, capsys):
    data = write_questions(tmp_path / "q.json", n=2)
    out = tmp_path / "out"
    argv = tiny_argv(tiny_model, data, out, "--continuous", "--num_questions", "1")
    assert main(argv) == 0
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04" + b"\0" * 5000)
    err = one_line_error(capsys, argv[:-2])
    assert "checkpoint.pt cannot be read" in err and len(err) < 400


# ---- 8. --allow_config_change keeps the history ---------------------------------------------

def test_a_config_change_keeps_the_old_config_and_marks_each_line(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json", n=2)
    out = tmp_path / "out"
    cfg = tiny_config(tiny_model, data, out, num_questions=1, **SMALL)
    run(cfg)
    summary = run(dataclasses.replace(cfg, num_questions=None, lr=1e-3, allow_config_change=True))
    history = [json.loads(x) for x in (out / "config_history.jsonl").read_text().splitlines()]
    assert [h["config"]["lr"] for h in history] == [cfg.lr, 1e-3]
    shas = [r["config_sha"] for r in lines(out)]
    assert shas == [h["config_sha"] for h in history] and shas[0] != shas[1]
    assert summary["configs"] == {shas[0]: 1, shas[1]: 1} and "mix" in summary["config_note"]
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-3
    run(dataclasses.replace(cfg, num_questions=None, lr=1e-3))  # the same again: no new entry
    assert len((out / "config_history.jsonl").read_text().splitlines()) == 2


# ---- 9, 10, 11: seed, empty STTRL_CACHE, --continuous --mode dataset --------------------------

def test_a_huge_seed_is_one_line(capsys, tmp_path):
    err = one_line_error(capsys, ["--seed", str(10**30), "--output_dir", str(tmp_path / "o")])
    assert "--seed must be an integer from 0 to 4294967295" in err


def test_the_largest_seed_runs_with_lora_and_in_dataset_mode(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json", n=1)
    top = 2**32 - 1
    run(tiny_config(tiny_model, data, tmp_path / "lora", seed=top, lora_rank=2, **SMALL))
    run(tiny_config(tiny_model, data, tmp_path / "ds", seed=top, mode="dataset", prompts_per_step=1,
                    mini_batch_prompts=1, **SMALL))


def test_an_empty_sttrl_cache_means_unset(monkeypatch, tmp_path):
    from sttrl.engines.models import cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STTRL_CACHE", "")
    assert cache_dir() == tmp_path / ".cache" / "sttrl"


def test_continuous_dataset_mode_is_refused(capsys, tmp_path):
    err = one_line_error(capsys, ["--continuous", "--mode", "dataset", "--output_dir",
                                  str(tmp_path / "o")])
    assert "--continuous applies to --mode question" in err


# ---- 12. messages a newcomer trips on -------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["--lr", "-1e-5"], "--lr must be > 0 and <= 10, got -1e-05"),
    (["--lr", "-5"], "--lr must be > 0"),
    (["--n_vote", "4"], "unrecognized arguments: --n_vote 4"),
    (["--num_questions", "200000"], "--num_questions for ARITH-TTT must be an integer from 1 to 100,000"),
])
def test_newcomer_flags_get_the_right_line(capsys, tmp_path, argv, expected):
    err = one_line_error(capsys, [*argv, "--output_dir", str(tmp_path / "o"), "--device", "cpu"])
    assert expected in err and "arith_n" not in err


def test_yaml_numbers_and_yaml_errors(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-5\nkl_coef: 1E-3\n")
    cfg = parse_config(["--config", str(path)])
    assert cfg.lr == 1e-5 and cfg.kl_coef == 1e-3
    path.write_text("n_votes: many\n")
    err = one_line_error(capsys, ["--config", str(path)])
    assert err.startswith(f"sttrl: error: {path}: n_votes must be an integer") and "--n_votes" not in err
    path.write_text("lr: -1\n")
    assert f"{path}: lr must be > 0" in one_line_error(capsys, ["--config", str(path)])


def test_data_given_as_a_directory_or_as_json_lines(capsys, tmp_path):
    err = one_line_error(capsys, ["--data_path", str(tmp_path), "--output_dir", str(tmp_path / "o")])
    assert f"{tmp_path} is a directory" in err
    path = tmp_path / "q.jsonl"
    path.write_text('{"prompt": "p", "answer": "1", "source": "s", "id": 1}\n'
                    '{"prompt": "q", "answer": "2", "source": "s", "id": 2}\n')
    err = one_line_error(capsys, ["--data_path", str(path), "--output_dir", str(tmp_path / "o")])
    assert "Extra data" in err and "one JSON list of objects" in err


def test_a_failed_start_leaves_no_folder(capsys, tmp_path):
    out = tmp_path / "a" / "b"
    one_line_error(capsys, ["--model", str(tmp_path / "nope"), "--output_dir", str(out),
                            "--device", "cpu"])
    assert not (tmp_path / "a").exists()


def test_the_scale_engines_known_future_warnings_are_silenced_and_no_others(monkeypatch):
    import warnings

    import torch.distributed as dist

    from sttrl.engines.ray import rollout, trainer, zero
    from sttrl.engines.ray.common import quiet_known_warnings

    # every actor silences them first thing, in its own process (constructors only store)
    calls = []
    for module in (rollout, trainer, zero):
        monkeypatch.setattr(module, "quiet_known_warnings", lambda: calls.append(1))
    rollout.RolloutActor(0, [0], None)
    trainer.TrainerActor(0, 1, 0, None)
    trainer.ReferenceActor(0, None)
    assert len(calls) == 3
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        quiet_known_warnings()
        vars(dist.reduce_op)  # torch's own deprecation, as vLLM's dispatcher trips it
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Please use "
                      "`torch.distributed.all_gather_single` instead.", FutureWarning)
        warnings.warn("some other deprecation", FutureWarning)
    assert [str(w.message) for w in shown] == ["some other deprecation"]
