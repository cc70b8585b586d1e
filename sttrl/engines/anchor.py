"""What continuous mode asks of the local engine besides training: an emptied optimiser between
questions, a pull-back toward the initial weights, and samples from the initial model for the
vote (`--carry_optimizer`, `--anchor_rho`, `--label_model base`; sttrl/modes/carry.py).

A mixin of `LocalEngine` (its own file keeps local.py short); it reads the engine's `params`,
`optimizer`, `initial` snapshot, `lora` flag and reference model.
"""
from __future__ import annotations

import contextlib

import torch


class ContinuousOps:
    """reset_optimizer, pull_back and base_policy of the engine contract, for LocalEngine."""

    def reset_optimizer(self) -> None:
        """Empty AdamW's moments and step counts (the weights stay): a later step is a fresh
        optimiser's, as after a reset, instead of repeating earlier questions' directions."""
        self.optimizer.state.clear()

    @torch.no_grad()
    def pull_back(self, rho: float) -> None:
        """theta <- theta0 + rho (theta - theta0) for every trained weight (with LoRA the
        adapter's). rho 0 gives the initial weights bit for bit: (theta - theta0) x 0 + theta0."""
        if rho == 1.0:
            return
        for p, start in zip(self.params, self.initial["params"]):
            p.sub_(start).mul_(rho).add_(start)
        self.pristine = self.pristine or rho == 0.0
        self.policy_version += 1

    @contextlib.contextmanager
    def base_policy(self):
        """Sample the initial model inside: with LoRA the same weights with the adapter off;
        with full weights the frozen reference copy the KL penalty loads (one more copy of the
        weights, loaded on first need, none while the weights are still the initial ones).
        The head hook (SLOT) is off either way: the base model has none."""
        if self.pristine and self._head_hook is None:
            yield
            return
        self._head_hook_on = False
        try:
            if self.lora:
                with self.model.disable_adapter():
                    yield
            else:
                self._sampler = (self.reference_model(), self.ref_device)
                try:
                    yield
                finally:
                    self._sampler = None
        finally:
            self._head_hook_on = True
