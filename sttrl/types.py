"""The records passed between layers: samples out of an engine, a batch into it, and what a
method's adaptation of one question produced.

Nothing here imports torch or any other STTRL module, so every layer can read them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """One generated response and the per-token summaries the voting functions need.

    All lists have one entry per generated token (the response only, never the prompt).
    """

    text: str
    """Decoded response, special tokens stripped."""
    token_ids: list[int]
    """Generated token ids, including the end-of-sequence token when one was produced."""
    logprobs: list[float] = field(default_factory=list)
    """log p(token_t | prefix) under the untempered model (temperature 1, no top-p)."""
    logsumexp: list[float] = field(default_factory=list)
    """logsumexp of the raw logits z_t at each step; energy E = -mean_t logsumexp(z_t)."""
    topk_logprob_mean: list[float] = field(default_factory=list)
    """Mean of the top-k (k=20) untempered log-probs at each step; DeepConf confidence is its negation."""
    finished: bool = True
    """False when generation stopped at max_new_tokens rather than at end-of-sequence."""


@dataclass(frozen=True)
class SampleGroup:
    """One group of an engine's `generate_groups` call: n samples of the prompt at this
    temperature and top-p, whose random numbers come from a generator seeded with `seed`, as
    `generate(prompt, n, temperature, top_p, max_new_tokens, seed)` would draw them."""

    n: int
    temperature: float
    top_p: float
    seed: int


@dataclass
class TrainBatch:
    """What an update trains on: responses, each continuing its own prompt, with advantages."""

    prompts: list[list[int]]
    """Prompt token ids, one list per response (per-question methods repeat one prompt)."""
    responses: list[list[int]]
    """Token ids of each response, as generated."""
    advantages: list[float]
    """One scalar per response (GRPO: group-normalised reward; SFT: 1 keeps a response)."""
    rewards: list[float] | None = None
    """Each response's outcome reward, for an engine with a critic (gae), which then computes
    per-token advantages itself and ignores `advantages`; None for every other update."""
    temperature: float = 1.0
    """The temperature the responses were sampled at. The engines compute the training
    log-probs (new, old and reference) from logits / temperature, so the ratio and its clip are
    those of the policy that sampled (as TRL, verl and OpenRLHF do). 1.0 for SFT on the samples
    (ttft: TRL's SFT uses untempered logits); <= 0 (greedy rollouts) trains as 1.0."""

    probe: list[list[int]] | None = None
    """Responses to prompts[0] drawn with the trained ones but not trained on (the votes after
    n_train). A measured update (`train(..., trust=...)`) reports after each step every probe
    response's summed log-ratio, current policy over the one that sampled, at `temperature`
    (`probe_logratio`; `train_logratio` likewise for the trained responses): importance
    weights from samples the step never saw."""

    @classmethod
    def shared(cls, prompt_ids: list[int], responses: list[list[int]],
               advantages: list[float], rewards: list[float] | None = None,
               temperature: float = 1.0, probe: list[list[int]] | None = None) -> "TrainBatch":
        """All responses continue the same prompt."""
        return cls([prompt_ids] * len(responses), responses, advantages, rewards, temperature,
                   probe)


@dataclass(frozen=True)
class TrustRegion:
    """How far each optimiser step of a per-question update may move the policy, measured as
    the mean per-token k3 KL over the question's own trained responses, in a forward pass after
    the step. A step past either budget is undone exactly and retried smaller."""

    max_step_kl: float
    """Budget of one step's KL to the policy before it (0: none)."""
    max_kl: float
    """Budget of the KL to the initial (reference) model after any step (0: none)."""
    backtracks: int = 4
    """How often an overshooting step is undone and retried smaller before the update ends."""
    max_lr_scale: float = 16.0
    """How far steps well inside the step budget may grow the learning rate (times the base)."""


@dataclass
class Adaptation:
    """What a method's `adapt` did with one question, for the results line and the metrics.

    Alignment rule: `rewards[i]` is the reward of `answers[i]` for i < len(rewards); the
    answers after those are the voted samples that were not trained on.
    """

    answers: list[str | None]
    """Every voted sample's extracted answer (None: nothing extractable), trained ones first."""
    label: str | None
    """The pseudo-label the vote elected; None when no sample had an answer."""
    vote: Any
    """The vote's statistics (sttrl.rewards.vote.VoteStats)."""
    rewards: list[float]
    """The reward of each trained sample, aligned with answers[:len(rewards)]."""
    skip_reason: str | None = None
    """Why no update was taken (None: it was)."""
    train: list[dict] = field(default_factory=list)
    """One stats dict per optimiser step taken."""
    extra: dict | None = None
    """Method-specific numbers for the results line (MEMO: the marginal's entropy)."""
