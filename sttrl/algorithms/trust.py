"""The trust region of a per-question update: how far a step moved the policy, and what to do
about it. Both engines call these after every optimiser step, with the log-probs of a forward
pass over the question's own samples taken after the step.

A fresh AdamW's first step is lr x sign(g) on every weight, so a learning rate alone does not
say how far the policy moves: on the 135M model one step at lr 3e-5 moved the per-token KL
anywhere from 0.01 to 538,155 depending on the question. Here every step is judged by the KL it
caused, and a step that goes past the budget is undone (the weights and optimiser state put
back exactly) and taken again smaller, as TRPO's line search does; a step well inside the
budget lets the next one grow. The budget is in nats per token, not in a learning rate, so it
means the same thing on any model.
"""
from __future__ import annotations

import math

import torch

from sttrl.algorithms.grpo import kl_k3
from sttrl.types import TrustRegion

# A step whose KL is under this share of the step budget was needlessly small: the next step
# doubles its learning rate (never past TrustRegion.max_lr_scale times the base lr).
GROW_BELOW = 0.25
# After an overshoot the next try aims a little under the budget: KL grows about with the
# square of a small step, so the step is scaled by sqrt(budget / KL) times this margin.
AIM = 0.8


def token_mean_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                  mask: torch.Tensor) -> float:
    """Mean per-token k3 KL of the policy giving `logprobs` to the one giving `ref_logprobs`,
    over the response tokens in `mask` ([B, T] each): the estimator the loss's KL term uses."""
    n = float(mask.sum())
    if n == 0:
        return 0.0
    return float((kl_k3(logprobs, ref_logprobs) * mask).sum()) / n


def over_budget(trust: TrustRegion, kl_step: float, kl_ref: float) -> bool:
    """Whether a step went past the trust region (a non-finite KL always does)."""
    if not (math.isfinite(kl_step) and math.isfinite(kl_ref)):
        return True
    return ((trust.max_step_kl > 0 and kl_step > trust.max_step_kl)
            or (trust.max_kl > 0 and kl_ref > trust.max_kl))


def shrink(trust: TrustRegion, kl_step: float, kl_ref: float, ref_before: float) -> float:
    """The factor to retry an overshooting step with: aim just under whichever budget it broke.

    KL grows about with the square of a small step (the Fisher quadratic), so sqrt(budget / KL)
    would land on the budget; the factor stays between 1/16 and 1/2 so a wild estimate can
    neither stall the search nor leave it where it was.
    """
    ratios = []
    if trust.max_step_kl > 0 and kl_step > trust.max_step_kl:
        ratios.append(trust.max_step_kl / kl_step if math.isfinite(kl_step) else 0.0)
    if trust.max_kl > 0 and kl_ref > trust.max_kl:
        room = max(trust.max_kl - ref_before, 0.0)  # what this step may add to the total
        added = kl_ref - ref_before
        ratios.append(room / added if math.isfinite(added) and added > 0 else 0.0)
    if not ratios:
        return 0.5
    return min(0.5, max(1 / 16, AIM * math.sqrt(min(ratios))))


# Once the KL to the initial model is within this share of --max_kl, the update ends: the
# traces of the study spent 2-4 backtracks per step there for changes too small to matter.
SPENT = 0.9


def spent(trust: TrustRegion, kl_ref: float) -> bool:
    """Whether the budget to the initial model is (nearly) used up: end the update."""
    return trust.max_kl > 0 and kl_ref >= SPENT * trust.max_kl


def next_scale(trust: TrustRegion, scale: float, kl_step: float) -> float:
    """The learning-rate scale of the next step after an accepted one: doubled when this step
    used under GROW_BELOW of the step budget, capped at max_lr_scale."""
    if trust.max_step_kl > 0 and kl_step < GROW_BELOW * trust.max_step_kl:
        return min(scale * 2.0, trust.max_lr_scale)
    return scale


def controlled_step(trust: TrustRegion | None, lr: float, take_step, measure, keep, restore,
                    pre: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor,
                    ref_before: float) -> dict:
    """One optimiser step, measured, and undone and retried smaller while it overshoots.

    The engine supplies the mechanics: `take_step(lr)` applies the gradients it already holds
    (retries reuse them: the direction is fixed, only its length changes), `measure()` returns
    the log-probs [B, T] of the trained responses under the current weights (and those of the
    probe responses), `keep()` / `restore()` save and put back weights and optimiser state
    exactly. `pre` [B, T]: the log-probs before this step; `ref` [B, T]: the reference (initial)
    model's; `ref_before`: the KL to the reference before this step.

    Returns the step's record: `accepted` (False: every try overshot, the weights are back to
    where they were and the update should end), `lr` (the last one tried), `undone` (tries put
    back), `kl_step`, `kl_ref` and `measured` (measure()'s output for the weights left in place;
    None when nothing was accepted).
    """
    keep()
    undone = 0
    while True:
        take_step(lr)
        measured = measure()
        post = measured["train"]
        kl_step = token_mean_kl(post, pre, mask)
        kl_ref = token_mean_kl(post, ref, mask)
        if trust is None or not over_budget(trust, kl_step, kl_ref):
            return {"accepted": True, "lr": lr, "undone": undone, "kl_step": kl_step,
                    "kl_ref": kl_ref, "measured": measured}
        restore()
        undone += 1
        if undone > trust.backtracks:
            return {"accepted": False, "lr": lr, "undone": undone, "kl_step": kl_step,
                    "kl_ref": kl_ref, "measured": None}
        lr *= shrink(trust, kl_step, kl_ref, ref_before)
