"""The adaptation methods, registered in one place: config, the modes and the report read
`METHODS`, so a new method is one module and one entry here.

Every method's `adapt(engine, question, prompt, sampling, vote, update, seed, timer, oracle,
votes) -> sttrl.types.Adaptation` sees the question and the prompt, never the reference answer,
and of the run's settings only its parts (sttrl/settings.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from sttrl.algorithms import memo, slot, ttft, ttrl


@dataclass(frozen=True)
class Method:
    """One adaptation method and the defaults that belong to it."""

    adapt: Callable
    """adapt(engine, question, prompt, sampling, vote, update, seed, timer, oracle=None,
    votes=None) -> Adaptation."""
    lr: float
    """Default learning rate in reset mode."""
    continuous_lr: float
    """Default learning rate with --continuous (learning carries over, so it may be smaller)."""
    steps: int
    """Default optimiser steps per question."""
    name: str
    """The method's name in the report ("STTRL (oracle reward)" and the like)."""
    row: str
    """The report's row for a reset-mode run."""
    continuous_row: str
    """The report's row for a --continuous run."""
    votes: Callable | None = None
    """votes(sampling, seed) -> SampleGroup: what `adapt` first samples from the question's own
    prompt, before it changes anything. The per-question mode draws that group in one batch
    with its before-evaluation and hands the samples to adapt as `votes` (None: adapt samples
    them itself)."""
    trains_weights: bool = True
    """Whether the method updates the model's weights (an adapter with --lora_rank); slot does not."""
    cpu_reset: dict = field(default_factory=dict)
    """Config defaults that replace the general ones on a CPU in reset mode with GRPO: the
    development study's choice (docs/RESULTS.md), measured there and only there."""
    trust: dict = field(default_factory=dict)
    """The per-question update's trust region (max_step_kl, max_kl) in question mode with GRPO,
    on every device: stated in how far the policy moves, not in a learning rate."""


# The development study's choice for the embedded model on a CPU (docs/RESULTS.md): up to 5
# steps that end once the held-out votes say the policy agrees with the vote 0.8 of the time,
# and no update on a vote whose winner leads the runner-up by less than 2 of 16 votes (there
# the label is usually wrong). The lr only starts the step-size search: the trust region
# shrinks it (a fresh AdamW step at 3e-5 moves this model by ~2 nats a token).
TTRL_CPU_RESET = {"lr": 3e-5, "steps_per_question": 5, "stop_agreement": 0.8,
                  "min_vote_margin": 0.125}
# Per token: 0.05 nats a step, 0.2 from the initial model in all (docs/RESULTS.md).
TTRL_TRUST = {"max_step_kl": 0.05, "max_kl": 0.2}

METHODS: dict[str, Method] = {
    "ttrl": Method(ttrl.adapt, lr=1e-5, continuous_lr=1e-5, steps=3, name="STTRL",
                   row="STTRL (reset)", continuous_row="STTRL (continuous)",
                   votes=ttrl.vote_group, cpu_reset=TTRL_CPU_RESET, trust=TTRL_TRUST),
    "ttft": Method(ttft.adapt, lr=1e-4, continuous_lr=5e-5, steps=3, name="ttft",
                   row="ttft", continuous_row="ttft (continuous)", votes=ttrl.vote_group),
    "slot": Method(slot.adapt, lr=0.1, continuous_lr=0.1, steps=5, name="slot",
                   row="slot", continuous_row="slot (continuous)", votes=ttrl.vote_group,
                   trains_weights=False),
    "memo": Method(memo.adapt, lr=1e-5, continuous_lr=1e-5, steps=3, name="memo",
                   row="memo", continuous_row="memo (continuous)",
                   votes=lambda sampling, seed: memo.variant_group(sampling, seed, 0)),
}
