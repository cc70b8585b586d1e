"""Fixed-seed runs on the tiny model write the lines recorded in tests/golden/.

The records were written by the code before a refactor; a refactor that keeps behaviour must
reproduce them. A change meant to alter results regenerates them on purpose:
`STTRL_WRITE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py`, and says so in its
commit. Floats are compared to 6 significant digits (timings are dropped).
"""
import json
import os
from pathlib import Path

import pytest

from helpers import tiny_config, write_questions

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "ttrl_reset": {},
    "ttrl_continuous": {"continuous": True},
    "ttrl_confidence_kl": {"voting_function": "confidence", "kl_coef": 0.01, "temperature": 0.8},
    "ttft": {"adaptation_method": "ttft"},
    "slot": {"adaptation_method": "slot", "lr": 0.1},
    "memo": {"adaptation_method": "memo"},
    "dataset": {"mode": "dataset", "prompts_per_step": 1, "eval_every": 1},
}


def canonical(value):
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items() if k not in ("seconds", "wall_seconds", "config_sha")}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def run_case(tiny_model, tmp_path, name):
    from sttrl.run import run as run_config

    data = write_questions(tmp_path / "q.json", n=2)
    out = tmp_path / name
    run_config(tiny_config(tiny_model, data, out, seed=3, **CASES[name]))
    files = ("steps.jsonl", "evals.jsonl") if CASES[name].get("mode") == "dataset" \
        else ("results.jsonl",)
    return {f: canonical([json.loads(x) for x in (out / f).read_text().splitlines()])
            for f in files}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixed_seed_run_matches_the_recorded_lines(tiny_model, tmp_path, name):
    got = run_case(tiny_model, tmp_path, name)
    path = GOLDEN / f"{name}.json"
    if os.environ.get("STTRL_WRITE_GOLDEN") == "1":
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert_close(got, json.loads(path.read_text()))


def assert_close(got, want, where="$"):
    """Everything a run decides (answers, votes, which steps ran) must match exactly; a float may
    differ in its last digits, because another CPU sums the chunked LM head in another order."""
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), f"{where}: {got} != {want}"
    elif isinstance(want, dict) and isinstance(got, dict):
        assert got.keys() == want.keys(), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list) and isinstance(got, list):
        assert len(got) == len(want), f"{where}: {len(got)} items != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"
