"""The small interface every engine implements, and the record it returns per sample.

Data flows one way: an engine turns a prompt into `Sample`s; rewards read them; algorithms
turn rewards into a `TrainBatch`; the engine applies it. Nothing here imports torch, so the
rewards layer can read `Sample` without pulling in a deep-learning stack.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


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


class Engine(Protocol):
    """What the per-question driver needs from a model runtime (local or distributed)."""

    tokenizer: Any
    """A Hugging Face tokenizer, for prompt templates and token counts."""

    def generate(self, prompt: str, n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int) -> list[Sample]:
        """Sample n responses to one prompt; the same seed gives the same samples."""

    def train(self, batch: "TrainBatch", loss_fn: Callable, loss_kwargs: dict,
              steps: int) -> list[dict]:
        """Run `steps` optimiser steps on one batch; returns one stats dict per step.

        `loss_fn(logprobs, old_logprobs, ref_logprobs, advantages, mask, **loss_kwargs)` gets
        tensors shaped [B, T] (advantages [B], or [B, T] when the engine computes per-token
        advantages from `batch.rewards` with its critic) and returns (sum of per-token losses,
        stats).
        The engine divides by the batch's token count, so the loss is a token mean.
        old_logprobs are the policy's own at the first step, so that step is exactly on-policy.
        ref_logprobs are the initial weights' (None unless loss_kwargs['kl_coef'] > 0).
        """

    def snapshot(self) -> Any:
        """Capture the trainable state (weights and optimiser) for a later exact restore."""

    def restore(self, state: Any) -> None:
        """Return weights and optimiser to a snapshot, bit-exactly."""


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

    @classmethod
    def shared(cls, prompt_ids: list[int], responses: list[list[int]],
               advantages: list[float], rewards: list[float] | None = None) -> "TrainBatch":
        """All responses continue the same prompt."""
        return cls([prompt_ids] * len(responses), responses, advantages, rewards)
