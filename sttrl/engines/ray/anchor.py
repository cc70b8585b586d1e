"""Continuous mode's operations on the scale engine (the engine contract's reset_optimizer,
pull_back and base_policy): each ZeRO-3 rank edits its own shard (zero.ZeroRank), then the vLLM
engines get the new weights. A mixin of `RayEngine`, in its own file to keep engine.py short."""
from __future__ import annotations

from sttrl.errors import UserError


class RayContinuousOps:
    def reset_optimizer(self) -> None:
        """Every rank (actor and critic) loads the initial snapshot's empty Adam state over its
        current partition: the weights stay, no sync is needed."""
        self._get([r.reset_optimizer.remote() for r in self.ranks], "emptying the optimizer")

    def pull_back(self, rho: float) -> None:
        """theta <- theta0 + rho (theta - theta0) on every actor rank's shard (the critic keeps
        its values), then one weight sync."""
        if rho == 1.0:
            return
        self.untouched = False
        self._get([t.pull_back.remote(rho) for t in self.trainers], "pulling the weights back")
        self.weights.changed()
        self.weights.sync(self.timeout)

    def base_policy(self):
        raise UserError("--label_model base needs --engine local: the vLLM engines hold only "
                        "the adapted weights")
