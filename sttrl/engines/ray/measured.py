"""The scale engine's measured update: every optimiser step followed by a scoring pass on the
actor ranks over the question's own responses, and kept only inside the trust region
(algorithms/trust.py). The local engine's twin is engines/measured.py.

Undoing a step restores every rank's fp32 partition and Adam state from a snapshot taken before
it; the retry runs the step's forward and backward again (the same gradient: the same weights
and batch) with a smaller learning rate. vLLM is synced once, after the last kept step.
"""
from __future__ import annotations

from sttrl.algorithms.trust import controlled_step, next_scale, spent, token_mean_kl
from sttrl.engines.sequences import response_mask, sequence_logratio
from sttrl.types import TrainBatch, TrustRegion

STEP_KEY = "step"  # the ranks' snapshot of the state before the current step


def train_measured(engine, batch: TrainBatch, loss_fn, loss_kwargs: dict, steps: int,
                   lrs, stop, trust: TrustRegion, mini_batches=None) -> list[dict]:
    """Up to `steps` optimiser steps on the whole batch, each measured after it (as
    LocalEngine's). Old log-probs and the reference come from the same scoring pass that
    measures every step."""
    if mini_batches is not None or engine.actors.critics:
        raise ValueError("a trust region applies to one GRPO batch, not mini-batches or a critic")
    rows = list(range(len(batch.responses)))
    mask = response_mask(batch.responses, "cpu")  # [B, T]
    probe = batch.probe or []
    prompts = batch.prompts + [batch.prompts[0]] * len(probe)
    responses = batch.responses + probe

    def measure() -> dict:
        lp = engine.logprobs_on_actor(prompts, responses, batch.temperature)  # [B + P, T']
        return {"train": lp[:len(rows), :mask.shape[1]], "probe": lp[len(rows):]}

    start = measure()
    ref = start["train"]
    if not engine.pristine:
        ref = engine.logprobs_on_actor(batch.prompts, batch.responses, batch.temperature,
                                       reference=True)[:, :mask.shape[1]]
    # every step's ratio is against the policy that sampled; the ranks need no reference pass
    per_token = {"old": start["train"], "ref": ref}
    pre, kl_ref = start["train"], token_mean_kl(start["train"], ref, mask)
    base_lr = engine.settings.lr
    engine.untouched = False
    engine._on_rollouts("sleep")
    scale, history, moved = 1.0, [], False
    try:
        for step in range(steps):
            step_lr = lrs[step] if lrs is not None else base_lr
            tried: list[dict] = []

            def take_step(lr: float) -> None:
                engine.set_lr(lr)
                tried[:] = engine._train_rows(batch, rows, per_token, loss_fn, loss_kwargs, 1,
                                              use_ref=True)

            outcome = controlled_step(
                trust, step_lr * scale, take_step, measure,
                keep=lambda: engine._get([r.snapshot.remote(STEP_KEY, STEP_KEY)
                                          for r in engine.trainers], "snapshot"),
                restore=lambda: engine._get([r.restore.remote(STEP_KEY)
                                             for r in engine.trainers], "undoing a step"),
                pre=pre, ref=ref, mask=mask, ref_before=kl_ref)
            merged = dict(tried[0])
            merged.update(lr=outcome["lr"], undone=outcome["undone"],
                          accepted=outcome["accepted"], kl_step=outcome["kl_step"],
                          kl_ref=outcome["kl_ref"])
            if outcome["accepted"]:
                moved = True
                merged["param_change"] = sum(engine._get(
                    [r.distance_sq.remote(STEP_KEY) for r in engine.trainers],
                    "measuring the step")) ** 0.5
                post = outcome["measured"]
                pre, kl_ref = post["train"], outcome["kl_ref"]
                merged["train_logratio"] = sequence_logratio(post["train"], start["train"],
                                                             batch.responses)
                if probe:
                    merged["probe_logratio"] = sequence_logratio(post["probe"], start["probe"],
                                                                 probe)
                scale = next_scale(trust, outcome["lr"] / step_lr, outcome["kl_step"])
            history.append(merged)
            if (not outcome["accepted"] or spent(trust, kl_ref)
                    or (stop is not None and stop(merged))):
                break
    finally:
        engine._get([r.release.remote(STEP_KEY) for r in engine.trainers], "releasing a snapshot")
        engine.set_lr(base_lr)
        if moved:
            engine.weights.changed()
        engine._on_rollouts("wake_up")
        engine.weights.sync(engine.timeout)
    return history
