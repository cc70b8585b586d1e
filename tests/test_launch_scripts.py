"""The scale-engine launchers: every seed model x dataset gives flags the CLI accepts."""
import os
import shlex
import subprocess

import pytest

from helpers import REPO
from sttrl.cli import parse_config

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


TTRL_MODELS = {"Math-1.5B": "Qwen/Qwen2.5-Math-1.5B", "Math-7B": "Qwen/Qwen2.5-Math-7B",
               "Qwen2.5-7B": "Qwen/Qwen2.5-7B",
               "Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B-Instruct"}
TTRL_SETS = {"aime": ("AIME-TTT", 80), "amc": ("AMC-TTT", 30), "math": ("MATH-TTT", 10),
             "gsm8k": ("GSM8K-TTT", 2), "gpqa": ("GPQA-TTT", 10)}


@pytest.mark.parametrize("model", TTRL_MODELS)
@pytest.mark.parametrize("name", TTRL_SETS)
def test_dataset_level_ttrl_scripts_run_the_papers_settings(model, name, monkeypatch):
    """examples/ttrl: the scale engine on 4 GPUs by default, ENGINE=local for one GPU, both
    with TTRL's 8 prompts x 32 samples, one step per prompt, lr 5e-7, weight decay 0.01."""
    monkeypatch.chdir(REPO)
    path = f"examples/ttrl/{model}/{name}.sh"
    dataset, episodes = TTRL_SETS[name]
    for engine in ("ray", "local"):
        env = {"PRINT": "1"} if engine == "ray" else {"PRINT": "1", "ENGINE": "local"}
        cfg = parse_config(shlex.split(script(path, env=env)))
        assert (cfg.mode, cfg.engine, cfg.model, cfg.dataset) == ("dataset", engine,
                                                                  TTRL_MODELS[model], dataset)
        assert (cfg.episodes, cfg.prompts_per_step, cfg.mini_batch_prompts) == (episodes, 8, 1)
        assert (cfg.n_votes, cfg.n_train, cfg.lr, cfg.weight_decay, cfg.warmup_ratio) == \
            (64, 32, 5e-7, 0.01, 0.03)
        assert (cfg.kl_coef, cfg.max_new_tokens, cfg.n_eval, cfg.val_temp) == (0.001, 3072, 16, 0.6)
        assert cfg.temperature == 1.0  # TTRL's recipe: rollout.temperature=1.0
        if engine == "ray":
            assert cfg.actor_num_gpus + cfg.vllm_num_engines == 4
            assert cfg.output_dir == f"runs/ttrl/{model}/{name}"
        else:
            assert cfg.actor_num_gpus is None and cfg.output_dir == f"runs/ttrl/{model}/{name}-local"
    more = shlex.split(script(path, "--actor_num_gpus", "4", "--vllm_num_engines", "4",
                              env={"PRINT": "1"}))
    assert parse_config(more).actor_num_gpus + parse_config(more).vllm_num_engines == 8


def test_dataset_level_ttrl_script_refuses_an_unknown_engine():
    out = subprocess.run(["bash", "examples/ttrl/Math-1.5B/aime.sh"], cwd=REPO, capture_output=True,
                         text=True, env={**os.environ, "ENGINE": "tpu", "PRINT": "1"})
    assert out.returncode == 2 and "ENGINE must be ray or local" in out.stderr
