"""The command line: every bad value is one line naming what is allowed, never a traceback."""
import subprocess
import sys

import pytest

from helpers import REPO
from sttrl.cli import main, parse_config

BAD = [
    (["--voting_function", "median"], "majority, energy, confidence"),
    (["--adaptation_method", "sft"], "ttrl, ttft, slot, memo"),
    (["--engine", "tpu"], "local, ray"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--lr", "fast"], "invalid float value"),
    (["--n_votes", "0"], "--n_votes must be an integer from 1"),
    (["--n_votes", "4", "--n_train", "8"], "must not exceed --n_votes"),
    (["--val_temp", "nan"], "finite number"),
    (["--top_p", "1.5"], "--top_p must be > 0 and <= 1"),
    (["--device", "gpu7"], "auto, cpu, cuda or cuda:N"),
    (["--continuous", "maybe"], "expected true or false"),
    (["--no_such_flag"], "unrecognized arguments"),
    (["--dataset", "NOPE-TTT"], "AIME-TTT"),
    (["--data_path", "/nonexistent/file.json"], "/nonexistent/file.json"),
    (["--advantage_estimator", "ppo"], "grpo, gae"),
    (["--vllm_num_engines", "0"], "--vllm_num_engines must be an integer from 1"),
    (["--sync_timeout", "0"], "--sync_timeout must be > 0"),
    (["--weight_sync", "nccl"], "--weight_sync must be one of broadcast, object_store"),
    (["--colocate", "--actor_num_gpus", "2", "--vllm_num_engines", "1"], "to equal --actor_num_gpus"),
    (["--engine", "ray", "--adaptation_method", "slot"], "slot needs --engine local"),
    (["--advantage_estimator", "gae"], "gae needs --engine ray"),
    (["--engine", "ray", "--advantage_estimator", "gae", "--adaptation_method", "memo"],
     "gae applies to --adaptation_method ttrl only"),
    (["--critic_lr", "0"], "--critic_lr must be > 0"),
    (["--value_clip", "-1"], "--value_clip must be > 0"),
    (["--lambd", "1.5"], "--lambd must be from 0 to 1"),
    (["--gamma", "2"], "--gamma must be from 0 to 1"),
]


@pytest.mark.parametrize("argv,expected", BAD)
def test_bad_flags_get_one_clear_line(argv, expected, capsys, tmp_path):
    try:
        code = main(argv + ["--output_dir", str(tmp_path / "out"), "--progress", "false"])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_yaml_config_is_overridden_by_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.002\nn_votes: 12\nvoting_function: energy\n")
    cfg = parse_config(["--config", str(path), "--lr", "0.003"])
    assert (cfg.lr, cfg.n_votes, cfg.voting_function) == (0.003, 12, "energy")


@pytest.mark.parametrize("text,expected", [
    ("lr: [1\n", "invalid YAML at line"),
    ("learning_rate: 1\n", "unknown option(s) learning_rate"),
    # the file, not the flag: the value came from c.yaml (issue #22)
    ("n_votes: many\n", "c.yaml: n_votes must be an integer"),
])
def test_bad_yaml_is_a_clear_error(tmp_path, capsys, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["--config", str(path)]) == 2
    assert expected in capsys.readouterr().err


def test_shipped_configs_parse():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        parse_config(["--config", str(path)])


def test_main_py_and_module_share_the_parser():
    out = subprocess.run([sys.executable, "main.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    for flag in ("--dataset", "--model", "--voting_function", "--adaptation_method",
                 "--continuous", "--lr", "--val_temp", "--separate_ref_gpu", "--data_path",
                 "--num_questions", "--n_votes", "--n_train", "--n_eval", "--steps_per_question",
                 "--max_new_tokens", "--temperature", "--seed", "--output_dir", "--device",
                 "--engine"):
        assert flag in out
    bad = subprocess.run([sys.executable, "main.py", "--lr", "0"], cwd=REPO, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("sttrl: error:")


def test_an_engine_failure_is_one_line_that_says_how_to_resume(monkeypatch, capsys):
    import sttrl.run
    from sttrl.errors import EngineError

    def fail(cfg):
        raise EngineError("sampling on the vLLM engines failed: vLLM engine 0 died")

    monkeypatch.setattr(sttrl.run, "run", fail)
    assert main(["--engine", "ray", "--progress", "false"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vLLM engine 0 died" in err and "re-run" in err


def test_the_default_yaml_is_the_no_flag_run_on_a_cpu():
    from sttrl.cli import load_yaml
    from sttrl.config import Config, resolve

    path = REPO / "configs" / "default.yaml"
    assert resolve(Config(**load_yaml(str(path))), on_gpu=False) == resolve(Config(), on_gpu=False)
