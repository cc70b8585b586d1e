"""The contract both engines implement in full: everything the modes, the methods and `run.py`
use of an engine, and nothing else (tests/test_engine_contract.py checks both engines against it).

`LocalEngine` (sttrl/engines/local.py) and `RayEngine` (sttrl/engines/ray/engine.py) are built
the same way, `Engine(settings, model_path)`, from their own `sttrl.settings.EngineSettings`, and
the modes cannot tell them apart. Records come from `sttrl.types`.
"""
from __future__ import annotations

from typing import Any, Callable, ContextManager, Protocol

from sttrl.settings import EngineSettings
from sttrl.types import Sample, SampleGroup, TrainBatch, TrustRegion

HeadHook = Callable[[Any], Any]
"""Maps the final hidden states [..., d] entering the LM head to the ones the head should see."""


class Engine(Protocol):
    """What the modes and the methods need from a model runtime (local or distributed)."""

    tokenizer: Any
    """A Hugging Face tokenizer, for prompt templates and token counts."""
    max_context: int | None
    """The most tokens a prompt and its response may hold together (None: no known limit);
    `run.py` refuses a question whose prompt and --max_new_tokens do not fit."""

    def __init__(self, settings: EngineSettings, model_path: str) -> None:
        """Load the model at `model_path` as `settings` say (device, optimiser, layout, ...)."""

    def sampling_memory(self, rows: int, prompt_tokens: int,
                        max_new_tokens: int) -> tuple[int, str] | None:
        """A lower estimate of the bytes one sampling call of `rows` samples holds at once, and
        the device whose free memory must hold them; None where the engine cannot tell
        (`run.py` refuses a run whose largest call would not fit, before any sampling)."""

    def encode(self, prompt: str) -> list[int]:
        """The token ids of a formatted prompt, as generate and train see it."""

    def generate(self, prompt: str, n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int) -> list[Sample]:
        """Sample n responses to one prompt; the same seed gives the same samples."""

    def generate_groups(self, prompt: str, groups: list[SampleGroup],
                        max_new_tokens: int) -> list[list[Sample]]:
        """Several groups of samples of one prompt in one batch, one list per group, each group
        with its own n, temperature, top-p and seed. A group's samples are those of
        `generate(prompt, g.n, g.temperature, g.top_p, max_new_tokens, g.seed)`, up to the
        floating-point differences of a larger batch."""

    @property
    def policy_version(self) -> int:
        """Changes whenever what generate samples from may have changed (weights, head hook);
        the same value means the same samples for the same seed."""

    def train(self, batch: TrainBatch, loss_fn: Callable, loss_kwargs: dict, steps: int,
              mini_batches: list[list[int]] | None = None,
              lrs: list[float] | None = None,
              stop: Callable[[dict], bool] | None = None,
              trust: TrustRegion | None = None) -> list[dict]:
        """Run `steps` optimiser steps on one batch, or with `mini_batches` (row indices) `steps`
        epochs of one optimiser step per mini-batch; `lrs`: each optimiser step's learning
        rate; `stop(stats)`: end the update after the first step whose stats it accepts (the
        adaptive budget). Returns one stats dict per optimiser step taken.

        `loss_fn(logprobs, old_logprobs, ref_logprobs, advantages, mask, **loss_kwargs)` gets
        tensors shaped [B, T] (advantages [B], or [B, T] when the engine computes per-token
        advantages from `batch.rewards` with its critic) and returns (sum of per-token losses,
        stats).
        The engine divides by the batch's token count, so the loss is a token mean.
        Every log-prob is taken at `batch.temperature` (the rollout's). old_logprobs are those
        of the policy that sampled (the weights when train is called): every step's ratio is
        against it, and the first step is exactly on-policy.
        ref_logprobs are the initial weights' (None unless loss_kwargs['kl_coef'] > 0).

        `trust`: measure every step (a scoring pass after it: `kl_step` to the policy before
        it, `kl_ref` to the initial model, `param_change`), undo a step that passes the
        region's budget exactly and retry it at a smaller lr (`measured.py` on each engine);
        with `batch.probe`, also the held-out responses' log-ratios after each step.
        """

    def set_lr(self, lr: float) -> None:
        """The optimiser's learning rate from now on (benchmarks/accuracy.py runs grid points
        of different lrs on one engine)."""

    def reset(self) -> None:
        """Back to the initial weights, an empty optimiser state and no head hook."""

    @property
    def pristine(self) -> bool:
        """True while the weights are the initial ones (so the policy is the base model)."""

    def reset_optimizer(self) -> None:
        """Empty the optimiser's state (moments and step count), keeping the weights: continuous
        mode's default between questions."""

    def pull_back(self, rho: float) -> None:
        """theta <- theta0 + rho (theta - theta0) for every trained weight, theta0 the initial
        ones (rho 0: the initial weights exactly; 1: nothing changes). The optimiser state stays."""

    def base_policy(self) -> ContextManager:
        """A context inside which generate and generate_groups sample from the initial model (no
        adapter, no head hook), whatever the weights are now (--label_model base; the scale
        engine refuses with a UserError)."""

    def snapshot(self) -> Any:
        """A copy of the weights, optimiser state and head hook that `restore` returns to (the
        scale engine keeps only the newest one besides the initial one)."""

    def restore(self, state: Any) -> None:
        """Back to a `snapshot()`."""

    def state_dict(self) -> dict:
        """Everything a continuous run's checkpoint needs to resume this engine."""

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`'s output."""

    def prompt_hidden(self, prompt_ids: list[int]) -> Any:
        """The final hidden states [P, d] of a prompt as they enter the LM head, without the
        head hook (SLOT; the scale engine refuses with a UserError)."""

    def head_logits(self, hidden: Any) -> Any:
        """The LM head on hidden states [..., d], without the head hook: logits [..., V]."""

    def set_head_hook(self, hook: HeadHook | None) -> None:
        """Apply `hook` to the hidden states before the LM head in every later forward pass
        (generation and training); None removes it. Reset removes it too."""

    @property
    def head_hook(self) -> HeadHook | None:
        """The hook set by `set_head_hook` (None when there is none)."""

    def close(self) -> None:
        """Release what the engine holds (Ray actors, vLLM engines); a no-op where nothing is."""
