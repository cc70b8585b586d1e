"""The output folder under misuse: two runs at once, a lost checkpoint, a failed start, NaN,
corrupt files, and the user mistakes that deserve one line (exit 2) instead of a traceback."""
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sttrl.config import Config, resolve
from sttrl.errors import UserError
from sttrl.run import check_saved_config, lock_output_dir, run, unlock_output_dir

from helpers import REPO, lines, one_line_error, tiny_config, write_questions


# ---- 1. one run per folder -------------------------------------------------------------------

HOLD = ("import sys, time; from pathlib import Path; from sttrl.run import lock_output_dir; "
        "lock_output_dir(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)")


@pytest.mark.parametrize("mode", ["question", "dataset"])
def test_a_second_run_in_a_held_folder_is_refused_and_a_killed_holder_frees_it(tmp_path, mode):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "main.py", "--mode", mode, "--output_dir",
                                 str(out), "--device", "cpu", "--progress", "false"],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1
        assert str(out) in second.stderr and f"pid {holder.pid}" in second.stderr
        assert not (out / "results.jsonl").exists() and not (out / "config.json").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # SIGKILL leaves no stale lock: the OS released it with the process
    unlock_output_dir(lock_output_dir(out))


@pytest.mark.parametrize("mode", ["question", "dataset"])
def test_a_run_holds_the_lock_while_it_works(tiny_model, tmp_path, monkeypatch, mode):
    import sttrl.run as run_module

    data = write_questions(tmp_path / "q.json", n=1)
    out = tmp_path / "out"
    seen, build = [], run_module.build_engine

    def build_and_try_the_lock(*args):
        with pytest.raises(UserError, match=f"in use by another run \\(pid {os.getpid()}\\)"):
            lock_output_dir(out)
        seen.append(True)
        return build(*args)

    monkeypatch.setattr(run_module, "build_engine", build_and_try_the_lock)
    batch = {"prompts_per_step": 1} if mode == "dataset" else {}  # one full rollout batch
    run(tiny_config(tiny_model, data, out, mode=mode, n_votes=4, n_train=4, n_eval=2,
                    max_new_tokens=4, steps_per_question=1, **batch))
    assert seen == [True]
    unlock_output_dir(lock_output_dir(out))  # and released it at the end


# ---- 2. a continuous run's checkpoint is part of its results --------------------------------

def test_a_continuous_run_without_its_checkpoint_is_refused(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json", n=2)
    out = tmp_path / "out"
    cfg = tiny_config(tiny_model, data, out, continuous=True, n_votes=4, n_train=4, n_eval=2,
                      max_new_tokens=4, steps_per_question=1)
    run(dataclasses.replace(cfg, num_questions=1))
    (out / "checkpoint.pt").unlink()
    with pytest.raises(UserError, match="no checkpoint.pt.*--allow_missing_checkpoint.*start over"):
        run(cfg)
    assert len(lines(out)) == 1
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="checkpoint.pt cannot be read.*--allow_missing_checkpoint"):
        run(cfg)
    run(dataclasses.replace(cfg, allow_missing_checkpoint=True))
    assert [r["id"] for r in lines(out)] == ["q0", "q1"]


# ---- 3. a failed start leaves the folder as it was; spellings compare equal ------------------

def test_a_failed_start_does_not_poison_the_folder(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json", n=1)
    out = tmp_path / "out"
    small = dict(n_votes=4, n_train=4, n_eval=2, max_new_tokens=4, steps_per_question=1)
    with pytest.raises(UserError, match="cannot load model '/nonexistent'"):
        run(tiny_config("/nonexistent", data, out, **small))
    assert not (out / "config.json").exists()
    run(tiny_config(tiny_model, data, out, **small))
    assert json.loads((out / "config.json").read_text())["model"] == tiny_model


def test_spellings_of_one_dataset_and_model_compare_equal(tmp_path):
    def resolved(**kw):
        return dataclasses.asdict(resolve(Config(output_dir=str(tmp_path), **kw), on_gpu=False))

    a = resolved(dataset="arith-ttt", model="smollm2")
    b = resolved(dataset="ARITH-TTT", model="SmolLM2-135M-Instruct")
    assert a == b and a["dataset"] == "ARITH-TTT" and a["model"] == "SmolLM2-135M-Instruct"
    # a folder whose config was saved with another spelling (before names were canonical)
    (tmp_path / "config.json").write_text(json.dumps({**b, "dataset": "Arith-TTT",
                                                      "model": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    check_saved_config(tmp_path, a, allow_change=False)
    with pytest.raises(UserError, match="different config"):
        check_saved_config(tmp_path, resolved(dataset="ARITH-TTT-L2"), allow_change=False)


# ---- 4. strict JSON: NaN is null, and a diverged update is flagged ---------------------------

def test_non_finite_training_stats_are_null_and_flagged(tiny_model, tmp_path, monkeypatch):
    from sttrl.engines.local import LocalEngine

    real = LocalEngine.train

    def diverging(self, batch, loss_fn, loss_kwargs, steps, **kw):
        history = real(self, batch, loss_fn, loss_kwargs, steps, **kw)
        return [{**h, "loss": float("nan"), "grad_norm": float("inf")} for h in history]

    monkeypatch.setattr(LocalEngine, "train", diverging)
    data = write_questions(tmp_path / "q.json", n=2)
    out = tmp_path / "out"
    run(tiny_config(tiny_model, data, out))

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))

    recs = [strict(x) for x in (out / "results.jsonl").read_text().splitlines()]
    trained = [r for r in recs if r["train"]]
    assert trained, "the tiny run trained on no question"
    for r in trained:
        assert r["diverged"] is True
        assert all(s["loss"] is None and s["grad_norm"] is None for s in r["train"])
    assert all("diverged" not in r for r in recs if not r["train"])
    summary = strict((out / "summary.json").read_text())
    assert summary["questions_diverged"] == len(trained)


def test_files_write_null_for_any_non_finite_float(tmp_path):
    from sttrl.files import append_jsonl, write_json_atomic

    append_jsonl(tmp_path / "a.jsonl", {"x": [1.0, float("nan")], "y": {"z": float("-inf")}})
    write_json_atomic(tmp_path / "b.json", {"x": float("inf")})
    assert json.loads((tmp_path / "a.jsonl").read_text()) == {"x": [1.0, None], "y": {"z": None}}
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": None}


# ---- one line, not a traceback ---------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_one_line(capsys, tmp_path, device):
    err = one_line_error(capsys, ["--device", device, "--output_dir", str(tmp_path / "o"),
                                  "--progress", "false"])
    assert f"--device {device}: CUDA is not available" in err


def test_an_output_dir_that_is_a_file_is_one_line(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    err = one_line_error(capsys, ["--output_dir", str(tmp_path / "f"), "--device", "cpu"])
    assert "is a file, not a folder" in err
    err = one_line_error(capsys, ["--output_dir", str(tmp_path / "f" / "sub"), "--device", "cpu"])
    assert f"is under {tmp_path / 'f'}" in err


def test_an_unwritable_output_dir_is_one_line(capsys, tmp_path):
    if os.geteuid() == 0:
        # root writes through any mode bits (and this venv's interpreter may not run as another
        # user): sysfs refuses new files to everyone
        if not os.path.isdir("/sys/kernel"):
            pytest.skip("running as root without /sys to test an unwritable folder")
        cases = [(Path("/sys/kernel"), "cannot create the lock file /sys/kernel/run.lock"),
                 (Path("/sys/sttrl-test/out"), "cannot create --output_dir /sys/sttrl-test/out")]
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cases = [(ro, "is not writable"), (ro / "sub", "cannot create --output_dir")]
    for out, expected in cases:
        err = one_line_error(capsys, ["--output_dir", str(out), "--device", "cpu",
                                      "--progress", "false"])
        assert expected in err


def test_a_lone_surrogate_in_a_prompt_is_one_line_with_the_id(capsys, tmp_path):
    path = tmp_path / "q.json"
    path.write_text('[{"prompt": "What is 1 + \\ud800?", "answer": "2", "source": "toy", '
                    '"id": "bad-1"}]')
    err = one_line_error(capsys, ["--data_path", str(path), "--output_dir", str(tmp_path / "o"),
                                  "--device", "cpu"])
    assert "'bad-1'" in err and "lone surrogate" in err


def test_a_huge_prompt_is_refused_before_tokenising(capsys, tmp_path):
    from sttrl.data.datasets import MAX_PROMPT_CHARS

    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"prompt": "1" * (MAX_PROMPT_CHARS + 1), "answer": "1",
                                 "source": "toy", "id": "huge"}]))
    err = one_line_error(capsys, ["--data_path", str(path), "--output_dir", str(tmp_path / "o"),
                                  "--device", "cpu"])
    assert "'huge'" in err and "characters" in err


def test_a_prompt_longer_than_the_context_is_refused_per_question(tiny_model, tmp_path):
    # the tiny model's context is 512 tokens, one token per character
    rows = [{"prompt": "What is 1 + 1?", "answer": "2", "source": "toy", "id": "short"},
            {"prompt": "1 + " * 100 + "1?", "answer": "101", "source": "toy", "id": "long"}]
    path = tmp_path / "q.json"
    path.write_text(json.dumps(rows))
    out = tmp_path / "out"
    with pytest.raises(UserError, match="question 'long'.*--max_new_tokens 200.*context of 512"):
        run(tiny_config(tiny_model, str(path), out, max_new_tokens=200))
    assert not (out / "results.jsonl").exists() and not (out / "config.json").exists()
    rows[1]["prompt"] = "1" * (32 * 512 + 1)
    path.write_text(json.dumps(rows))
    with pytest.raises(UserError, match="question 'long'.*characters, far beyond"):
        run(tiny_config(tiny_model, str(path), out))


def test_a_million_votes_is_one_line(capsys, tmp_path):
    err = one_line_error(capsys, ["--n_votes", "1000000", "--output_dir", str(tmp_path / "o")])
    assert "--n_votes must be an integer from 1 to 4096" in err


def test_sampling_that_cannot_fit_in_memory_is_refused_before_sampling(tiny_model, tmp_path,
                                                                       monkeypatch):
    import sttrl.run as run_module

    monkeypatch.setattr(run_module, "available_memory", lambda device: 1000)
    data = write_questions(tmp_path / "q.json", n=1)
    with pytest.raises(UserError, match="sampling 12 answers.*GiB free on cpu; lower --n_votes"):
        run(tiny_config(tiny_model, data, tmp_path / "out"))
    assert not (tmp_path / "out" / "results.jsonl").exists()


@pytest.mark.parametrize("line,expected", [
    (b"{}\n", "line 2 is not a results record (no 'id')"),
    (b"[1, 2]\n", "line 2 is not a results record (a JSON list, not an object)"),
    (b'{"id": "q1", "pass@1_before": 0.5}\n', "line 2 is not a results record (no 'pass@1_after')"),
    (b"\xff\xfe\n", "line 2 is not UTF-8"),
])
def test_a_results_line_that_is_not_a_record_is_one_line(tiny_model, tmp_path, line, expected):
    data = write_questions(tmp_path / "q.json", n=3)
    out = tmp_path / "out"
    cfg = tiny_config(tiny_model, data, out, n_votes=4, n_train=4, n_eval=2, max_new_tokens=4,
                      steps_per_question=1, num_questions=1)
    run(cfg)
    good = (out / "results.jsonl").read_bytes()
    (out / "results.jsonl").write_bytes(good + line + good.replace(b'"q0"', b'"q2"'))
    with pytest.raises(UserError, match=r"results\.jsonl: " + expected.replace("(", r"\(")
                       .replace(")", r"\)") + ".*fix or remove it"):
        run(dataclasses.replace(cfg, num_questions=None))


def test_a_corrupt_config_json_is_one_line(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "config.json").write_text('{"lr": 0.1,')
    err = one_line_error(capsys, ["--output_dir", str(out), "--device", "cpu"])
    assert "config.json is not valid JSON" in err
    (out / "config.json").write_text("[]")
    err = one_line_error(capsys, ["--output_dir", str(out), "--device", "cpu"])
    assert "config.json is not a JSON object" in err


def test_a_results_jsonl_that_is_a_directory_is_one_line(capsys, tmp_path):
    out = tmp_path / "o"
    (out / "results.jsonl").mkdir(parents=True)
    err = one_line_error(capsys, ["--output_dir", str(out), "--device", "cpu"])
    assert "results.jsonl is a directory" in err


def test_a_corrupt_dataset_checkpoint_is_one_line(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 torn")
    err = one_line_error(capsys, ["--mode", "dataset", "--output_dir", str(out), "--device", "cpu"])
    assert "checkpoint.pt cannot be read" in err


def test_dataset_mode_drops_a_torn_steps_line_and_redoes_the_step(tiny_model, tmp_path,
                                                                 monkeypatch):
    import sttrl.modes.dataset as dataset_mode

    data = write_questions(tmp_path / "q.json", n=2)
    small = dict(mode="dataset", prompts_per_step=1, eval_every=1, n_votes=4, n_train=4,
                 n_eval=2, max_new_tokens=4, seed=3)
    run(tiny_config(tiny_model, data, tmp_path / "whole", **small))
    real, calls = dataset_mode.train_step, []

    def dies_on_the_second_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during step 2, after step 1's checkpoint
        return real(*args, **kwargs)

    monkeypatch.setattr(dataset_mode, "train_step", dies_on_the_second_step)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(tiny_model, data, out, **small))
    with open(out / "steps.jsonl", "a") as f:
        f.write('{"step": 2, "epi')
    monkeypatch.setattr(dataset_mode, "train_step", real)
    run(tiny_config(tiny_model, data, out, **small))

    def read(path):
        return [json.loads(x) for x in path.read_text().splitlines()]

    assert read(out / "steps.jsonl") == read(tmp_path / "whole" / "steps.jsonl")
    assert read(out / "evals.jsonl") == read(tmp_path / "whole" / "evals.jsonl")


HUB = [{"HF_ENDPOINT": "http://127.0.0.1:9"}, {"HF_HUB_OFFLINE": "1"}]


@pytest.mark.parametrize("env", HUB, ids=["unreachable", "offline"])
def test_an_unknown_hub_model_without_network_fails_fast_in_one_line(tmp_path, env):
    start = time.time()
    done = subprocess.run([sys.executable, "main.py", "--model", "some-org/unknown-model",
                           "--output_dir", str(tmp_path / "o"), "--device", "cpu", "--progress",
                           "false"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HOME": str(tmp_path / "hf"), **env})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "cannot load model 'some-org/unknown-model'" in done.stderr
    assert time.time() - start < 30
    assert not (tmp_path / "o" / "config.json").exists()


# ---- smaller -------------------------------------------------------------------------------

def test_a_start_removes_temporaries_a_killed_save_left(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json", n=1)
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / "checkpoint.pt.k2j4x9.tmp", out / "summary.json.abc123.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1024)
    keep = out / "notes.tmp"
    keep.write_text("mine")
    run(tiny_config(tiny_model, data, out, n_votes=4, n_train=4, n_eval=2, max_new_tokens=4,
                    steps_per_question=1))
    assert not any(p.exists() for p in stale) and keep.exists()


def test_every_file_of_a_run_gets_the_same_mode(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json", n=1)
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        run(tiny_config(tiny_model, data, out, continuous=True, n_votes=4, n_train=4, n_eval=2,
                        max_new_tokens=4, steps_per_question=1))
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir() if p.is_file()}
    assert {"config.json", "summary.json", "results.jsonl", "checkpoint.pt"} <= set(modes)
    assert set(modes.values()) == {0o644}, modes


def test_an_edited_data_file_is_refused_unless_accepted(tiny_model, tmp_path):
    data = write_questions(tmp_path / "q.json", n=2)
    out = tmp_path / "out"
    cfg = tiny_config(tiny_model, data, out, n_votes=4, n_train=4, n_eval=2, max_new_tokens=4,
                      steps_per_question=1, num_questions=1)
    run(cfg)
    assert len(json.loads((out / "config.json").read_text())["data_sha256"]) == 64
    run(dataclasses.replace(cfg, num_questions=2))  # more questions of the same file: fine
    rows = json.loads(Path(data).read_text())
    rows[0]["answer"] = "999"
    Path(data).write_text(json.dumps(rows))
    with pytest.raises(UserError, match="has changed.*--allow_data_change"):
        run(cfg)
    run(dataclasses.replace(cfg, allow_data_change=True))
    run(cfg)  # the accepted data is now the folder's
