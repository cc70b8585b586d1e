"""`sttrl serve`: the real server in a subprocess on a free localhost port (the tiny model),
talked to with the official `openai` client and with raw HTTP where the client cannot send the
bad request. After every request, whatever its end, the base model is untouched: two samples
of a fixed prompt with a fixed seed (GET /test/probe, only with the test flag) have the same
tokens and log-probs as at the start, bit for bit."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import REPO
from sttrl.rewards import extract_answer

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "test-key"
QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]
SMALL = {"sttrl": {"n_votes": 4, "n_train": 4, "steps": 1}}  # a short request on any server
START_S = 600  # the subprocess imports torch and loads the model: minutes on a loaded machine


def start(model: str, *flags: str):
    """The server on a free port: (process, base URL); its stderr goes to a file it returns."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny matrices: more threads only contend
    proc = subprocess.Popen([sys.executable, "main.py", "serve", "--model", model,
                             "--device", "cpu", "--port", "0", "--test_probe", *flags],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    lines, deadline = [], time.time() + START_S
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
        if found:
            # keep draining its output, so a full pipe never blocks the server
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, found.group(1)
    proc.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines[-20:]))


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def probe(url: str) -> dict:
    """Two samples of a fixed prompt with a fixed seed: their tokens and log-probs."""
    return httpx.get(f"{url}/test/probe", timeout=300).json()


def wait_for(check, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tiny(tiny_model, tmp_path_factory) -> str:
    """The tiny model under the name the tests ask for: the server serves a model by its
    folder's name."""
    link = tmp_path_factory.mktemp("serve") / "tiny"
    link.symlink_to(tiny_model)
    return str(link)


@pytest.fixture(scope="module")
def server(tiny):
    """The everyday server: small sample counts, a key, two sessions."""
    proc, url = start(tiny, "--n_votes", "8", "--n_train", "6", "--n_eval", "4",
                      "--max_new_tokens", "8", "--steps_per_question", "2", "--lr", "5e-3",
                      "--temperature", "1.0", "--min_majority_ratio", "0", "--min_vote_margin",
                      "0", "--stop_agreement", "0", "--api_key", KEY, "--max_queue", "8",
                      "--max_sessions", "2")
    try:
        yield url, probe(url)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def busy_server(tiny):
    """A server whose default request is long (many votes and steps), whose queue holds one,
    and which trains every weight (--lora_rank 0: the reset restores them all)."""
    proc, url = start(tiny, "--lora_rank", "0", "--n_votes", "64", "--n_train", "32", "--n_eval", "4",
                      "--max_new_tokens", "300", "--steps_per_question", "50", "--lr", "5e-3",
                      "--temperature", "1.0", "--min_majority_ratio", "0", "--min_vote_margin",
                      "0", "--stop_agreement", "0", "--max_queue", "1",
                      # every step taken (no trust region to end the update early): a long request
                      "--max_step_kl", "0", "--max_kl", "0")
    try:
        yield url, probe(url)
    finally:
        stop(proc)


def client(url: str, key: str = KEY):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300)


def test_chat_completion_answers_with_the_sttrl_facts(server):
    url, _ = server
    c = client(url)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    out = c.chat.completions.create(model="tiny", messages=QUESTION, n=2, seed=3)
    assert out.object == "chat.completion" and len(out.choices) == 2
    assert all(isinstance(ch.message.content, str) and ch.finish_reason in ("stop", "length")
               for ch in out.choices)
    assert out.usage.completion_tokens > 0 and out.usage.prompt_tokens > 0
    facts = out.model_extra["sttrl"]
    assert facts["method"] == "ttrl" and facts["adapter"] == "lora8"
    assert facts["votes"]["n"] == 8 and facts["rewards"]["n"] == 6
    assert 0.0 <= facts["majority_ratio"] <= 1.0
    assert facts["skipped"] == (facts["skip_reason"] is not None)
    assert facts["steps"] == (0 if facts["skipped"] else 2)
    assert {"queue", "generate", "vote", "reset", "total"} <= set(facts["seconds"])
    # the same prompt and seed give the same answer: the server's work is reproducible
    again = c.chat.completions.create(model="tiny", messages=QUESTION, n=2, seed=3)
    assert [ch.message.content for ch in again.choices] == \
        [ch.message.content for ch in out.choices]


def test_majority_answer_agrees_with_the_answers(server):
    url, _ = server
    out = client(url).chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=4,
        extra_body={"sttrl": {"steps": 0, "answer_mode": "majority"}})
    facts = out.model_extra["sttrl"]
    assert facts["skipped"] and facts["skip_reason"] == "steps is 0" and facts["steps"] == 0
    assert facts["answers_from_votes"]  # nothing changed the model: its votes are its answers
    if facts["answer"] is not None:
        # the returned completion is a sample whose answer is the majority's
        assert extract_answer(out.choices[0].message.content, "math") == facts["answer"]
        assert facts["answer_agreement"] >= 1 / len(facts["answers"])


def test_plain_completions_and_one_sample(server):
    url, _ = server
    out = client(url).completions.create(model="tiny", prompt="2 + 3 =", max_tokens=5, n=3,
                                         extra_body={"sttrl": {"answer_mode": "sample", "steps": 1}})
    assert out.object == "text_completion" and len(out.choices) == 3
    assert out.model_extra["sttrl"]["answer_mode"] == "sample"
    assert out.usage.completion_tokens <= 15


def raw(url: str, body, key: str | None = KEY, path: str = "/v1/chat/completions"):
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{url}{path}", content=data, headers=headers, timeout=120)


@pytest.mark.parametrize("body, status, param", [
    (b'{"model": "tiny", "messages": [', 400, None),  # malformed JSON
    (b"[1, 2]", 400, None),
    ({"model": "tiny"}, 400, "messages"),
    ({"model": "tiny", "messages": []}, 400, "messages"),
    ({"model": "other", "messages": QUESTION}, 404, "model"),
    ({"model": "tiny", "messages": QUESTION, "max_tokens": 100_000}, 400, "max_tokens"),
    ({"model": "tiny", "messages": QUESTION, "n": 5}, 400, "n"),
    ({"model": "tiny", "messages": QUESTION, "stream": True}, 400, "stream"),
    ({"model": "tiny", "messages": QUESTION, "sttrl": {"steps": 3}}, 400, "sttrl.steps"),
    ({"model": "tiny", "messages": QUESTION, "sttrl": {"model_path": "/etc"}}, 400,
     "sttrl.model_path"),
    ({"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}, 400, None),
    ({"model": "tiny", "messages": [{"role": "user", "content": "1" * 20_000}]}, 400,
     "messages"),
    (b"x" * (2 << 20), 413, None),
])
def test_bad_request_is_an_openai_error_and_the_server_goes_on(server, body, status, param):
    url, _ = server
    r = raw(url, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]
    if param:
        assert error["param"] == param
    assert httpx.get(f"{url}/health").status_code == 200


def test_the_client_sees_openai_exceptions_then_is_served(server):
    url, _ = server
    with pytest.raises(openai.AuthenticationError):
        client(url, key="wrong").chat.completions.create(model="tiny", messages=QUESTION)
    assert raw(url, {"model": "tiny", "messages": QUESTION}, key=None).status_code == 401
    with pytest.raises(openai.NotFoundError):
        client(url).chat.completions.create(model="gpt-4", messages=QUESTION)
    with pytest.raises(openai.BadRequestError):
        client(url).chat.completions.create(model="tiny", messages=QUESTION, max_tokens=10**6)
    out = client(url).chat.completions.create(model="tiny", messages=QUESTION,
                                              extra_body=SMALL)
    assert out.choices[0].message.content is not None


def test_load_no_5xx_and_the_base_model_untouched(server):
    """20 requests from 4 clients at once: every one answered, and the probe's log-probs
    after them equal the initial ones bit for bit."""
    url, initial = server
    c = client(url)

    def ask(i):
        return c.chat.completions.with_raw_response.create(
            model="tiny", messages=[{"role": "user", "content": f"What is {i} + {i}?"}],
            seed=i, extra_body={"sttrl": {"steps": 1 + i % 2}})

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(ask, range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert sum(r.parse().model_extra["sttrl"]["steps"] for r in responses) > 0, \
        "no request updated the adapter: the probe would compare nothing"
    assert probe(url) == initial


def test_session_keeps_its_adapter_and_others_start_from_the_base(server):
    url, initial = server
    c = client(url)

    def texts(user, steps):
        out = c.chat.completions.create(model="tiny", messages=QUESTION, n=4, seed=11,
                                        user=user, extra_body={"sttrl": {"steps": steps}})
        return [ch.message.content for ch in out.choices], out.model_extra["sttrl"]

    trained = texts("alice", 2)[1]
    assert trained["session"] == "alice"
    if trained["skipped"]:
        pytest.skip(f"the vote gave nothing to train on ({trained['skip_reason']})")
    alice, _ = texts("alice", 0)  # answered from alice's adapted model
    bob, _ = texts("bob", 0)
    carol, _ = texts("carol", 0)
    assert bob == carol  # two fresh sessions: the base model, the same samples
    assert alice != bob
    assert probe(url) == initial


def test_full_queue_gives_429_with_retry_after(busy_server):
    url, initial = busy_server
    results = {}

    def ask(name, body):
        results[name] = raw(url, body, key=None)

    long = threading.Thread(target=ask, args=("long", {"model": "tiny", "messages": QUESTION,
                                                       "sttrl": {"steps": 3}}))
    long.start()
    wait_for(lambda: metric(url, "sttrl_running") == 1)
    short = {"model": "tiny", "messages": QUESTION, "max_tokens": 4, **SMALL}
    queued = threading.Thread(target=ask, args=("queued", short))
    queued.start()
    wait_for(lambda: metric(url, "sttrl_queue_length") == 1)
    r = raw(url, short, key=None)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "queue_full"
    long.join()
    queued.join()
    assert results["long"].status_code == 200 and results["queued"].status_code == 200
    assert results["long"].json()["sttrl"]["adapter"] == "full"
    assert probe(url) == initial


def test_disconnect_cancels_the_request(busy_server):
    url, initial = busy_server
    ok = metric(url, 'sttrl_requests_total{outcome="ok"}')
    cancelled = metric(url, 'sttrl_requests_total{outcome="cancelled"}')
    steps = metric(url, "sttrl_steps_total")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny", "messages": QUESTION},
                   timeout=httpx.Timeout(120, read=1.0))
    wait_for(lambda: metric(url, 'sttrl_requests_total{outcome="cancelled"}') == cancelled + 1)
    assert metric(url, 'sttrl_requests_total{outcome="ok"}') == ok
    assert metric(url, "sttrl_steps_total") < steps + 50  # its update ended early, if it began
    assert probe(url) == initial
    out = client(url).chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4,
                                              extra_body=SMALL)
    assert out.choices


@pytest.mark.parametrize("flags, text", [
    (["--host", "0.0.0.0"], "--api_key"),
    (["--max_sessions", "2", "--lora_rank", "0"], "--lora_rank"),
    (["--continuous"], "--max_sessions"),
    (["--adaptation_method", "memo"], "not served"),
    (["--max_queue", "0"], "--max_queue"),
])
def test_serve_refuses_bad_flags_in_one_line(capsys, flags, text):
    from sttrl.cli import main

    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and text in err


def test_serve_refuses_a_port_in_use(capsys, monkeypatch):
    from sttrl.cli import main

    monkeypatch.delenv("STTRL_API_KEY", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1
