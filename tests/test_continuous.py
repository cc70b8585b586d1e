"""Continuous mode that does not collapse (issue #21): the optimiser emptied between questions,
labels voted by the base model, the pull-back toward the initial weights, the collapse guard,
and SLOT's width-scaled default lr."""
import json
from pathlib import Path

import pytest
import torch

from sttrl.algorithms.grpo import grpo_loss
from sttrl.types import QuestionResult, TrainBatch
from helpers import lines, local_engine, run_parts, tiny_config, write_questions

PROMPT = "<|user|>What is 2 + 3?<|end|><|assistant|>"


def trained(engine, seed: int = 1, steps: int = 2):
    """The engine after `steps` GRPO steps on its own samples (weights and moments moved)."""
    samples = engine.generate(PROMPT, 4, 1.0, 1.0, 8, seed=seed)
    batch = TrainBatch.shared(engine.encode(PROMPT), [s.token_ids for s in samples],
                              [1.0, -1.0, 1.0, -1.0])
    engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=steps)
    return batch


# ---- the engine's operations ---------------------------------------------------------------

def test_an_emptied_optimizer_keeps_the_weights_and_steps_like_a_fresh_one(tiny_model):
    engine = local_engine(tiny_model, lr=1e-2)
    batch = trained(engine)
    assert len(engine.optimizer.state) > 0
    weights = [p.detach().clone() for p in engine.params]
    engine.reset_optimizer()
    assert len(engine.optimizer.state) == 0
    assert all(torch.equal(p, w) for p, w in zip(engine.params, weights))
    # its next step is that of a fresh optimiser from the same weights (no earlier direction)
    fresh = local_engine(tiny_model, lr=1e-2)
    with torch.no_grad():
        for p, w in zip(fresh.params, weights):
            p.copy_(w)
    for e in (engine, fresh):
        e.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.0}, steps=1)
    assert all(torch.equal(p, q) for p, q in zip(engine.params, fresh.params))


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_pull_back_interpolates_toward_the_initial_weights(tiny_model, lora_rank):
    engine = local_engine(tiny_model, lr=1e-2, lora_rank=lora_rank)
    initial = [p.detach().clone() for p in engine.params]
    trained(engine)
    moved = [p.detach().clone() for p in engine.params]
    assert any(not torch.equal(p, q) for p, q in zip(moved, initial))
    version = engine.policy_version
    engine.pull_back(1.0)  # off: nothing changes, not even the version
    assert all(torch.equal(p, q) for p, q in zip(engine.params, moved))
    assert engine.policy_version == version
    engine.pull_back(0.5)
    assert all(torch.allclose(p, (q + m) / 2, atol=1e-7)
               for p, q, m in zip(engine.params, initial, moved))
    assert engine.policy_version != version and not engine.pristine
    engine.pull_back(0.0)  # the initial weights bit for bit
    assert all(torch.equal(p, q) for p, q in zip(engine.params, initial))
    assert engine.pristine


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_base_policy_samples_the_initial_model(tiny_model, lora_rank):
    engine = local_engine(tiny_model, lr=5e-2, lora_rank=lora_rank)
    base = engine.generate(PROMPT, 6, 1.0, 1.0, 8, seed=3)
    trained(engine, steps=3)
    now = engine.generate(PROMPT, 6, 1.0, 1.0, 8, seed=3)
    assert [s.token_ids for s in now] != [s.token_ids for s in base]
    with engine.base_policy():
        again = engine.generate(PROMPT, 6, 1.0, 1.0, 8, seed=3)
    assert [s.token_ids for s in again] == [s.token_ids for s in base]
    assert [s.token_ids for s in engine.generate(PROMPT, 6, 1.0, 1.0, 8, seed=3)] == \
        [s.token_ids for s in now]  # outside it the policy samples again


# ---- the guard and what runs between questions ---------------------------------------------

class FakeEngine:
    """Records what continuous mode asks between questions."""

    def __init__(self):
        self.calls, self.snapshots = [], 0

    def reset(self):
        self.calls.append("reset")

    def reset_optimizer(self):
        self.calls.append("reset_optimizer")

    def pull_back(self, rho):
        self.calls.append(f"pull_back {rho}")

    def snapshot(self):
        self.snapshots += 1
        return f"state {self.snapshots}"

    def restore(self, state):
        self.calls.append(f"restore {state}")


def record(i: int, answers: list, kl: float | None = None) -> QuestionResult:
    train = [] if kl is None else [{"kl_ref": kl, "accepted": True}]
    return QuestionResult(index=i, id=f"q{i}", reward="vote", pseudo_label=None, vote={},
                          rewards={}, skipped=False, skip_reason=None, flagged=False,
                          train=train, answers_before=["1", "2", "3", None],
                          answers_after=answers, pass1_before=0.0, pass1_after=0.0,
                          majN_before=0.0, label_correct=0.0, reward_accuracy=0.0,
                          seconds={"total": 1.0})


def loop(**kw):
    return run_parts(continuous=True, **kw).loop


def healthy(i: int) -> QuestionResult:
    return record(i, [str(i), str(i), str(i + 1), str(i + 2)])


def test_between_questions_the_optimizer_is_emptied_and_the_weights_pulled_back():
    from sttrl.modes.carry import Carry

    engine = FakeEngine()
    carry = Carry(engine, loop(anchor_rho=0.9), [])
    carry.after(healthy(0))
    assert engine.calls == ["pull_back 0.9", "reset_optimizer"]
    engine = FakeEngine()
    Carry(engine, loop(carry_optimizer=True), []).after(healthy(0))
    assert engine.calls == ["pull_back 1.0"]  # (1.0: a no-op on the engines)


def test_the_guard_rolls_back_to_the_last_good_state_then_to_the_base():
    from sttrl.modes.carry import WINDOW, Carry

    engine = FakeEngine()
    carry = Carry(engine, loop(), [])
    done = []
    for i in range(WINDOW):  # a full window of different answers: the state is kept
        done.append(healthy(i))
        carry.after(done[-1])
        assert done[-1].guard["tripped"] == []
    assert done[-1].guard["kept"] and engine.snapshots == 1
    collapsed = [record(WINDOW + i, ["7"] * 4) for i in range(3)]
    for r in collapsed:
        engine.calls.clear()
        carry.after(r)
    # the third question in a row that answers 7: the same answer won on 3 questions
    assert collapsed[-1].guard["tripped"] == ["same_answer"]
    assert collapsed[-1].guard["rolled_back_to"] == f"q{WINDOW - 1}"
    assert engine.calls == [f"restore state 1"]  # the kept state, nothing pulled or emptied
    again = [record(10 + i, ["7"] * 4) for i in range(3)]
    for r in again:
        engine.calls.clear()
        carry.after(r)
    assert [r.guard["tripped"] != [] for r in again] == [False, False, True]  # a fresh window
    assert again[-1].guard["rolled_back_to"] == "base" and engine.calls == ["reset"]


def test_the_guard_reads_unanswered_samples_against_the_base_and_the_kl():
    from sttrl.modes.carry import signals

    quiet = [record(i, [None, None, None, str(i)]) for i in range(3)]
    assert signals(quiet, base_unanswered=0.1)["tripped"] == ["unanswered"]
    # a base model that mostly does not answer within the token limit is not collapsing
    assert signals(quiet, base_unanswered=0.75)["tripped"] == []
    assert signals([record(0, ["1", "2"], kl=0.6)])["tripped"] == ["kl_ref"]
    assert signals([record(0, ["1", "2"], kl=0.1)])["tripped"] == []
    assert signals([healthy(0), healthy(1)] + [record(2, ["1", "1"])])["tripped"] == []


def test_a_resumed_run_rebuilds_the_window_and_keeps_the_loaded_state():
    from sttrl.modes.carry import WINDOW, Carry

    done = [healthy(i) for i in range(WINDOW)]
    first = Carry(FakeEngine(), loop(), [])
    for r in done:
        first.after(r)
    engine = FakeEngine()
    resumed = Carry(engine, loop(), [QuestionResult.from_json(r.to_json()) for r in done])
    assert [r.id for r in resumed.window] == [r.id for r in first.window]
    assert resumed.last_good == ("state 1", f"q{WINDOW - 1}")  # the checkpoint just loaded


def test_a_forced_collapse_trips_the_guard_and_the_run_continues_from_the_base(
        tiny_model, tmp_path, monkeypatch):
    """Every evaluation answer forced to 7 (the policy "answers 7 to everything"); the votes
    and the updates are the model's own. The third question trips the guard, which has no
    kept state yet and so goes back to the initial weights: the fourth question starts there
    (its label is voted by the current model, which is the base again)."""
    import sttrl.modes.common as common
    import sttrl.modes.question as question
    from sttrl.run import run

    monkeypatch.setattr(common, "extract_answer", lambda text, task: "7")
    monkeypatch.setattr(question, "extract_answer", lambda text, task: "7")
    data = write_questions(tmp_path / "q.json", n=4)
    out = tmp_path / "out"
    run(tiny_config(tiny_model, data, out, continuous=True, n_votes=6, n_train=4, n_eval=2,
                    max_new_tokens=6))
    got = lines(out)
    assert [bool(r["guard"]["tripped"]) for r in got] == [False, False, True, False]
    assert got[2]["guard"]["rolled_back_to"] == "base" and "same_answer" in got[2]["guard"]["tripped"]
    moved = [bool(r["train"]) for r in got]
    assert moved[0]  # the first update moved the weights: the second label is the base's
    assert got[1]["vote"]["from"] == "base"
    assert "from" not in got[3]["vote"]  # rolled back: the weights are the initial ones
    summary = json.loads((out / "summary.json").read_text())
    assert summary["guard_trips"] == 1
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["record"]["id"] == "q3" and state["engine"]["optimizer"]["state"] == {}


# ---- settings --------------------------------------------------------------------------------

def test_continuous_defaults_and_refusals(tiny_model):
    from sttrl.config import Config, resolve
    from sttrl.errors import UserError

    cont = resolve(Config(continuous=True), on_gpu=False)
    assert (cont.label_model, cont.carry_optimizer, cont.anchor_rho, cont.collapse_guard) == \
        ("base", False, 1.0, True)
    assert resolve(Config(), on_gpu=False).label_model == "current"  # reset: the same model
    assert resolve(Config(continuous=True, adaptation_method="memo"),
                   on_gpu=False).label_model == "current"
    with pytest.raises(UserError, match="--label_model base needs --engine local"):
        resolve(Config(continuous=True, engine="ray", label_model="base"), on_gpu=False)
    with pytest.raises(UserError, match="anchor_rho"):
        resolve(Config(continuous=True, anchor_rho=1.5), on_gpu=False)


def test_slot_default_lr_is_scaled_to_the_hidden_width(tiny_model):
    from sttrl.config import Config, resolve

    def lr(**kw):
        return resolve(Config(adaptation_method="slot", **kw), on_gpu=False).lr

    assert lr() == pytest.approx(0.1 * 576 / 1536)  # the embedded model: 0.0375
    assert lr(model=tiny_model) == pytest.approx(0.1 * 32 / 1536)
    assert lr(model=tiny_model, lr=0.1) == 0.1  # an explicit lr is the lr
    wide = Path(tiny_model).parent / "wide"
    wide.mkdir(exist_ok=True)
    (wide / "config.json").write_text(json.dumps({"hidden_size": 3584}))
    assert lr(model=str(wide)) == 0.1  # the paper's models keep the paper's value
