"""The baselines do what their definitions say, on a tiny random model."""
import json
import math

import pytest
import torch

from sttrl.algorithms import memo, slot, ttft
from sttrl.algorithms.grpo import group_advantages
from sttrl.config import Config
from sttrl.run import run
from sttrl.types import TrainBatch
from conftest import local_engine

PROMPT = "<|user|>What is 2 + 3? Give the answer.<|end|><|assistant|>"


def test_slot_changes_outputs_not_weights_and_reset_zeroes_the_delta(tiny_model):
    engine = local_engine(tiny_model)
    before = [p.detach().clone() for p in engine.params]
    ids = engine.encode(PROMPT)
    plain = engine.score([ids], [ids[1:4]])
    delta, history = slot.fit_delta(engine, ids, lr=0.1, steps=5)
    assert history[-1]["loss"] < history[0]["loss"]  # fits the prompt
    engine.set_head_hook(slot.HiddenDelta(delta))
    assert not torch.allclose(engine.score([ids], [ids[1:4]]), plain)  # decoding sees the delta
    assert all(torch.equal(p, q) for p, q in zip(engine.params, before))  # weights untouched
    engine.reset()
    assert engine.head_hook is None
    assert torch.allclose(engine.score([ids], [ids[1:4]]), plain)


def test_ttft_lowers_the_loss_on_agreeing_responses(tiny_model):
    engine = local_engine(tiny_model, lr=1e-3)
    ids = engine.encode(PROMPT)
    agree = [engine.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("5", "it is 5")]
    batch = TrainBatch.shared(ids, agree, [1.0, 1.0])
    history = engine.train(batch, ttft.sft_loss, {}, steps=5)
    assert history[-1]["loss"] < history[0]["loss"]


def test_memo_rewards_follow_the_marginal():
    rewards, entropy = memo.marginal_rewards(["5", "5", "5", "3"], "math")
    assert rewards[0] == pytest.approx(math.log(0.75)) and rewards[3] == pytest.approx(math.log(0.25))
    assert entropy == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert memo.marginal_rewards(["5", "5"], "math")[1] == 0.0


def test_memo_gradient_lowers_marginal_entropy_on_a_toy_policy():
    """A categorical policy over 4 answers, updated with MEMO's reward, grows more certain."""
    torch.manual_seed(0)
    logits = torch.tensor([0.5, 0.3, 0.0, -0.2], requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    answers = ["1", "2", "3", "4"]

    def entropy():
        p = torch.softmax(logits.detach(), -1)
        return float(-(p * p.log()).sum())

    start = entropy()
    for _ in range(30):
        draws = torch.multinomial(torch.softmax(logits.detach(), -1), 64, replacement=True)
        rewards, _ = memo.marginal_rewards([answers[i] for i in draws.tolist()], "math")
        adv = torch.tensor(group_advantages(rewards), dtype=torch.float32)
        loss = -(adv * torch.log_softmax(logits, -1)[draws]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert entropy() < start - 0.3


@pytest.mark.parametrize("method", ["ttft", "slot", "memo"])
@pytest.mark.parametrize("continuous", [False, True])
def test_every_method_runs_and_reports_the_same_metrics(tiny_model, tmp_path, method, continuous):
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "source": "toy", "id": i}
            for i in range(2)]
    (tmp_path / "q.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    summary = run(Config(model=tiny_model, data_path=str(tmp_path / "q.json"), output_dir=str(out),
                         device="cpu", n_votes=8, n_train=4, n_eval=4, max_new_tokens=8,
                         temperature=1.0, adaptation_method=method, continuous=continuous,
                         progress=False))
    assert summary["questions"] == 2
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    for r in lines:
        assert {"pass@1_before", "pass@1_after", "maj@N_before", "seconds", "skipped"} <= set(r)
    if method == "slot":
        assert all(len(r["train"]) == 5 for r in lines)  # SLOT's default: 5 steps
    if method == "memo":
        assert all(r["extra"]["variants"] == 2 for r in lines)


def test_dataset_level_ttrl_runs_an_episode_and_evaluates(tiny_model, tmp_path):
    from sttrl.modes.dataset import lr_at

    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1), "source": "toy", "id": i}
            for i in range(5)]
    (tmp_path / "q.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    cfg = Config(model=tiny_model, data_path=str(tmp_path / "q.json"), output_dir=str(out),
                 device="cpu", mode="dataset", episodes=2, prompts_per_step=2, eval_every=2,
                 n_votes=8, n_train=4, n_eval=2, max_new_tokens=6, temperature=1.0, lr=1e-3,
                 progress=False)
    summary = run(cfg)
    assert summary["mode"] == "dataset" and summary["steps"] == 6
    evals = [json.loads(x) for x in (out / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2, 4, 6]
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert summary["pass@1_before"] == evals[0]["pass@1"]
    assert summary["pass@1_after"] == evals[-1]["pass@1"]
    # warm-up then cosine decay
    lrs = [lr_at(i, 100, 1.0, 0.03) for i in range(100)]
    assert lrs[0] < lrs[2] == 1.0 and lrs[49] > 0.5 > lrs[52] and lrs[-1] < 0.01
