"""The trust region of a per-question update (algorithms/trust.py) on the local engine: every
step measured after it, an overshooting step undone exactly, retried smaller, and the held-out
agreement estimate computed from the probes' importance weights."""
import math

import pytest
import torch

from sttrl.algorithms.grpo import group_advantages, grpo_loss, heldout_agreement
from sttrl.algorithms.trust import over_budget, shrink, token_mean_kl
from sttrl.types import TrainBatch, TrustRegion
from helpers import local_engine

PROMPT = "<|user|>What is 2 + 3?<|end|><|assistant|>"
LOSS = {"clip_eps": 0.2, "kl_coef": 0.001}


def batch_of(engine, probe=None):
    tok = engine.tokenizer
    good = tok("5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    bad = tok("7", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    rewards = [1.0] * 5 + [0.0] * 3
    return TrainBatch.shared(engine.encode(PROMPT), [good] * 5 + [bad] * 3,
                             group_advantages(rewards), temperature=1.0, probe=probe), good, bad


def weights(engine):
    return [p.detach().clone() for p in engine.params]


def test_a_step_past_the_budget_is_undone_bit_for_bit_and_ends_the_update(tiny_model):
    engine = local_engine(tiny_model, lr=1e-2)
    batch, _, _ = batch_of(engine)
    before, version = weights(engine), engine.policy_version
    history = engine.train(batch, grpo_loss, LOSS, steps=3,
                           trust=TrustRegion(max_step_kl=1e-12, max_kl=0.0, backtracks=2))
    assert len(history) == 1 and history[0]["accepted"] is False
    assert history[0]["undone"] == 3  # the first try and both retries went past the budget
    assert all(torch.equal(a, b) for a, b in zip(before, weights(engine)))
    assert len(engine.optimizer.state) == 0  # the fresh optimiser is fresh again
    assert engine.pristine and engine.policy_version == version


def test_an_overshooting_step_is_retried_smaller_until_it_fits(tiny_model):
    engine = local_engine(tiny_model, lr=0.5)  # far too large: the first try overshoots
    batch, good, _ = batch_of(engine)
    budget = TrustRegion(max_step_kl=0.05, max_kl=0.08, backtracks=8)
    history = engine.train(batch, grpo_loss, LOSS, steps=3, trust=budget)
    assert history[0]["undone"] >= 1 and history[0]["lr"] < 0.5
    for step in history:
        if step["accepted"]:
            assert step["kl_step"] <= 0.05 and step["kl_ref"] <= 0.08
            assert step["param_change"] > 0
    # the logged KL to the initial model is the KL of the weights left in place
    engine2 = local_engine(tiny_model)
    initial = engine2.score(batch.prompts, batch.responses, temperature=1.0)
    now = engine.score(batch.prompts, batch.responses, temperature=1.0)
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (initial.shape[1] - len(r))
                         for r in batch.responses])
    last = [s for s in history if s["accepted"]][-1]
    assert token_mean_kl(now, initial, mask) == pytest.approx(last["kl_ref"], rel=1e-4, abs=1e-7)


def test_without_budgets_every_step_is_measured_and_kept(tiny_model):
    engine = local_engine(tiny_model, lr=3e-3)
    batch, _, _ = batch_of(engine)
    history = engine.train(batch, grpo_loss, LOSS, steps=3,
                           trust=TrustRegion(max_step_kl=0.0, max_kl=0.0))
    assert len(history) == 3 and all(s["accepted"] and s["undone"] == 0 for s in history)
    assert all(s["kl_step"] >= 0 and s["lr"] > 0 for s in history)
    # the KL to the initial model grows as the steps pile up
    assert history[0]["kl_ref"] == pytest.approx(history[0]["kl_step"], rel=1e-5, abs=1e-9)
    assert history[-1]["kl_ref"] > history[0]["kl_ref"]


def test_the_measured_update_is_the_plain_update(tiny_model):
    """Measuring changes nothing while no step is undone: same weights as the plain loop."""
    plain, measured = local_engine(tiny_model, lr=3e-3), local_engine(tiny_model, lr=3e-3)
    batch, _, _ = batch_of(plain)
    plain.train(batch, grpo_loss, LOSS, steps=3)
    measured.train(batch, grpo_loss, LOSS, steps=3, trust=TrustRegion(0.0, 0.0))
    for a, b in zip(weights(plain), weights(measured)):
        assert torch.allclose(a, b, atol=1e-6)


def test_small_steps_let_the_next_step_grow(tiny_model):
    engine = local_engine(tiny_model, lr=1e-6)  # far inside any reasonable budget
    batch, _, _ = batch_of(engine)
    history = engine.train(batch, grpo_loss, LOSS, steps=3,
                           trust=TrustRegion(max_step_kl=1.0, max_kl=0.0, max_lr_scale=16.0))
    assert [s["lr"] for s in history] == pytest.approx([1e-6, 2e-6, 4e-6])


def test_probes_give_the_importance_weights_of_responses_never_trained_on(tiny_model):
    engine = local_engine(tiny_model, lr=3e-3)
    tok = engine.tokenizer
    probe = [tok("5", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
             tok("9", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
    batch, _, _ = batch_of(engine, probe=probe)
    pid = engine.encode(PROMPT)
    start = engine.score([pid] * 2, probe)
    history = engine.train(batch, grpo_loss, LOSS, steps=2, trust=TrustRegion(0.0, 0.0))
    end = engine.score([pid] * 2, probe)
    want = [float((end[i, :len(r)] - start[i, :len(r)]).sum()) for i, r in enumerate(probe)]
    assert history[-1]["probe_logratio"] == pytest.approx(want, abs=1e-4)
    assert want[0] > 0 > want[1]  # the trained answer "5" rose, the unseen "9" fell


def test_heldout_agreement_is_the_self_normalised_share():
    est, ess = heldout_agreement([0.0, 0.0, 0.0, 0.0], [True, False, False, True])
    assert est == pytest.approx(0.5) and ess == pytest.approx(4.0)
    est, ess = heldout_agreement([math.log(3), 0.0], [True, False])
    assert est == pytest.approx(0.75) and ess == pytest.approx(16 / 10)
    assert heldout_agreement([50.0, 0.0, 0.0, 0.0], [True] * 4, min_ess=2.0)[0] is None
    assert heldout_agreement([], []) == (None, 0.0)


def test_the_budget_rules():
    trust = TrustRegion(max_step_kl=0.1, max_kl=0.2)
    assert not over_budget(trust, 0.1, 0.2) and over_budget(trust, 0.11, 0.0)
    assert over_budget(trust, 0.0, 0.21) and over_budget(trust, float("nan"), 0.0)
    assert not over_budget(TrustRegion(0.0, 0.0), 1e9, 1e9)
    # aim under the broken budget, assuming KL grows with the square of the step
    assert shrink(trust, 0.4, 0.0, 0.0) == pytest.approx(0.8 * math.sqrt(0.1 / 0.4))
    assert shrink(trust, 1e9, 0.0, 0.0) == pytest.approx(1 / 16)
    # the reference budget counts what this step added to what was already there
    assert shrink(trust, 0.0, 0.3, 0.15) == pytest.approx(0.8 * math.sqrt(0.05 / 0.15))


def test_the_update_ends_once_the_budget_to_the_initial_model_is_nearly_spent(tiny_model):
    """No more backtracking for crumbs: an accepted step that brings the KL to the initial model
    within 90% of --max_kl is the last one."""
    from sttrl.algorithms.trust import spent

    assert spent(TrustRegion(0.05, 0.2), 0.181) and not spent(TrustRegion(0.05, 0.2), 0.17)
    assert not spent(TrustRegion(0.05, 0.0), 1e9)  # no budget to the initial model
    engine = local_engine(tiny_model, lr=0.5)
    batch, _, _ = batch_of(engine)
    history = engine.train(batch, grpo_loss, LOSS, steps=20,
                           trust=TrustRegion(max_step_kl=0.0, max_kl=0.05, backtracks=8))
    assert history[-1]["accepted"] and history[-1]["kl_ref"] >= 0.9 * 0.05
    assert all(s["kl_ref"] <= 0.05 for s in history) and len(history) < 20
