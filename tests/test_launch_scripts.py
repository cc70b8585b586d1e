"""The scale-engine launchers: every seed model x dataset gives flags the CLI accepts."""
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from sttrl.cli import parse_config

REPO = Path(__file__).resolve().parents[1]
MODELS = {"qwen2.5-math-1.5b": "Qwen/Qwen2.5-Math-1.5B", "qwen2.5-math-7b": "Qwen/Qwen2.5-Math-7B",
          "qwen2.5-7b": "Qwen/Qwen2.5-7B", "llama-3.1-8b-instruct": "meta-llama/Llama-3.1-8B-Instruct"}
DATASETS = ["AIME-TTT", "AMC-TTT", "MATH-TTT", "GSM8K-TTT", "GPQA-TTT"]


def script(*args, env=None) -> str:
    out = subprocess.run(["bash", *args], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    return out.stdout


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_launch_parses(model, dataset, monkeypatch):
    monkeypatch.chdir(REPO)  # --config paths are relative to the repo
    flags = shlex.split(script("scripts/launch_ray.sh", "--print", model, dataset))
    cfg = parse_config(flags)
    assert (cfg.engine, cfg.model, cfg.dataset) == ("ray", MODELS[model], dataset)
    assert cfg.actor_num_gpus + cfg.vllm_num_engines in (4, 8)
    # extra flags are passed on and override the launcher's defaults
    more = shlex.split(script("scripts/launch_ray.sh", "--print", model, dataset,
                              "--actor_num_gpus", "1", "--num_questions", "3"))
    assert (parse_config(more).actor_num_gpus, parse_config(more).num_questions) == (1, 3)


def test_job_submit_uploads_the_repo_and_runs_main(monkeypatch):
    monkeypatch.chdir(REPO)
    line = script("scripts/ray_job_submit.sh", "qwen2.5-7b", "GSM8K-TTT", "--data_dir", "/d",
                  env={"DRY_RUN": "1", "RAY_ADDRESS": "http://head:8265"})
    cmd = shlex.split(line)
    assert cmd[:5] == ["ray", "job", "submit", "--address", "http://head:8265"]
    assert "--working-dir" in cmd
    entry = cmd[cmd.index("--") + 1:]
    assert entry[:2] == ["python", "main.py"]
    cfg = parse_config(entry[2:])
    assert (cfg.engine, cfg.dataset, cfg.data_dir, cfg.ray_address) == ("ray", "GSM8K-TTT", "/d", "auto")


def test_unknown_model_lists_the_choices():
    out = subprocess.run(["bash", "scripts/launch_ray.sh", "gpt-5", "AIME-TTT"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "qwen2.5-math-1.5b" in out.stderr
