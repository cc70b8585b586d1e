"""PPO's critic (`--advantage_estimator gae`): its DeepSpeed ZeRO-3 ranks (`CriticActor`) and the
driver's step from their values to the policy's advantages and the critic's targets
(`gae_targets`; the maths is sttrl/algorithms/gae.py).

Each update: the critic ranks score the batch, the driver runs GAE on their values and the
outcome rewards ([B, T] floats, cheap) and whitens the advantages over the batch, then the
actor ranks take the policy steps on per-token advantages while the critic ranks take as many
steps of the clipped value loss towards the returns, both at once.
"""
from __future__ import annotations

from sttrl.engines.ray.zero import ZeroRank
from sttrl.errors import UserError


class CriticActor(ZeroRank):
    """One data-parallel DeepSpeed ZeRO-3 rank of PPO's critic.

    The critic ranks are their own Ray processes with their own process group (critic rank 0
    picks its rendezvous), on the rank base the actor ranks use (ZeRO-3 set-up, micro-batching,
    dummy rows, snapshots and checkpoints); only the model and the loss differ. The value model
    is `AutoModelForTokenClassification` with one label: the policy's backbone plus a linear head
    on every position, one HF module that `from_pretrained` loads and partitions under ZeRO-3
    init like the actor (no hand-written wrapper whose head would need partitioning by hand);
    it exists for Llama, Qwen2 and Mistral. The head starts at zero, so every initial value is
    0 and the first advantages are the discounted reward, not a random head's noise.
    """

    role = "critic"

    def _pretrained(self, dtype):
        import deepspeed
        from transformers import AutoModelForTokenClassification

        s = self.settings
        try:
            model = AutoModelForTokenClassification.from_pretrained(
                s.model_path, num_labels=1, dtype=dtype, trust_remote_code=s.trust_remote_code)
        except ValueError as err:  # an architecture without a token-classification class
            first = str(err).splitlines()[0] if str(err) else ""
            raise ValueError("--advantage_estimator gae needs a model with a token-classification "
                             f"class in transformers for its critic: {first}") from None
        head = list(model.score.parameters())
        with deepspeed.zero.GatheredParameters(head, modifier_rank=0):  # partitioned: gather
            for p in head:
                p.data.zero_()
        return model

    def _values(self, ids, attn, pos, T: int):
        """V of the state before each response token [b, T]: the head on the position before it,
        the one whose logits predict that token in the policy."""
        out = self.engine(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
        return out.logits[:, -T - 1:-1, 0].float()  # [b, T]

    def values(self, micro_batches: list[dict]) -> list:
        """Per micro-batch: values [b, T] as CPU tensors (None for a dummy)."""
        import torch

        out = []
        with torch.no_grad():
            for mb in micro_batches:
                ids, attn, pos, mask, dummy = self._batch(mb)
                values = self._values(ids, attn, pos, mask.shape[1])
                out.append(None if dummy else values.cpu())
        return out

    def train(self, micro_batches: list[dict], steps: int, n_tokens: float,
              value_clip: float) -> list[dict]:
        """`steps` optimiser steps of the clipped value loss towards mb["returns"] ([b, T]),
        clipped around mb["old_values"] ([b, T], the values GAE used); token mean as the actor."""
        from sttrl.algorithms.gae import value_loss

        def loss(j, mb, ids, attn, pos, mask):
            values = self._values(ids, attn, pos, mask.shape[1])  # [b, T]
            if mb["returns"] is None:  # a dummy row: fully masked, any targets will do
                return value_loss(values, values.detach(), values.detach(), mask, value_clip)
            return value_loss(values, mb["old_values"].to(self.device),
                              mb["returns"].to(self.device), mask, value_clip)

        return self._steps(micro_batches, steps, n_tokens, loss)


def gae_targets(batch, critic_values, gamma: float, lambd: float):
    """(whitened advantages, returns, values), each [B, T], for `batch` (a TrainBatch): the
    critic's values (`critic_values(prompts, responses)`, zero on padding), GAE on them and
    the outcome rewards, the advantages whitened over the batch's tokens."""
    from sttrl.algorithms.gae import gae, token_rewards, whiten
    from sttrl.engines.sequences import response_mask

    if batch.rewards is None:
        raise UserError("--advantage_estimator gae trains on each response's reward; this "
                        "update has none (gae applies to --adaptation_method ttrl only)")
    values = critic_values(batch.prompts, batch.responses)  # [B, T]
    mask = response_mask(batch.responses, "cpu")  # [B, T]
    advantages, returns = gae(token_rewards(batch.rewards, mask), values, mask, gamma, lambd)
    return whiten(advantages, mask), returns, values
