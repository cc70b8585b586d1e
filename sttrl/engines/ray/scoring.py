"""The scale engine's read-only queries: log-probs on the actor ranks and on the vLLM engines,
the critic's values. `RayEngine` inherits them; they need its actors, `_get` and `settings`."""
from __future__ import annotations

from sttrl.engines.ray.zero import micro_batches, shard


class ActorScoring:
    """Scoring calls, gathered back into the batch's row order."""

    def score_on_actor(self, prompts: list[list[int]], responses: list[list[int]],
                       with_logsumexp: bool = False, temperature: float = 1.0,
                       reference: bool = False) -> list[tuple]:
        """Per response: (log-probs,) or (log-probs, logsumexp) under the actor's weights (with
        `reference`, the initial model's), the log-probs at `temperature` (the logsumexp
        always of the raw logits)."""
        plan = shard(prompts, responses, len(self.trainers), self.settings.micro_batch_size)
        calls = [t.score.remote(micro_batches(p, prompts, responses), with_logsumexp,
                                reference=reference, temperature=temperature)
                 for t, p in zip(self.trainers, plan)]
        rows: list = [None] * len(responses)
        for rank_plan, rank_out in zip(plan, self._get(calls, "scoring on the actor ranks")):
            for idx, got in zip(rank_plan, rank_out):
                for j, i in enumerate(idx):
                    rows[i] = tuple(g[j, :len(responses[i])].tolist() for g in got)
        return rows

    def logprobs_on_actor(self, prompts, responses, temperature: float,
                          reference: bool = False):
        """Token log-probs [B, T] (zero on padding) under the actor's weights (with `reference`,
        the initial model's) at `temperature`."""
        import torch

        out = torch.zeros(len(responses), max(1, max(len(r) for r in responses)))
        for i, (lp,) in enumerate(self.score_on_actor(prompts, responses, temperature=temperature,
                                                      reference=reference)):
            out[i, :len(lp)] = torch.tensor(lp)
        return out

    def score_on_engines(self, prompt_ids: list[int], response_ids: list[int]) -> list[list[float]]:
        """Token log-probs of one fixed response under the weights each vLLM engine holds."""
        return self._get([r.score.remote(prompt_ids, response_ids) for r in self.rollouts],
                         "scoring on the vLLM engines")

    def check_weights(self, prompt_ids: list[int], response_ids: list[int]) -> float:
        """Largest |log p| gap, over tokens and engines, between vLLM and the actor: the test
        for silently stale engine weights (fp32 on CPU: ~1e-5; bf16 on GPU is much looser)."""
        actor = self.score_on_actor([prompt_ids], [response_ids])[0][0]
        return max(abs(a - b) for lps in self.score_on_engines(prompt_ids, response_ids)
                   for a, b in zip(actor, lps))

    def critic_values(self, prompts: list[list[int]], responses: list[list[int]]):
        """The critic's V [B, T] of the state before each response token (zero on padding)."""
        import torch

        critics = self.actors.critics
        plan = shard(prompts, responses, len(critics), self.settings.micro_batch_size)
        calls = [c.values.remote(micro_batches(p, prompts, responses))
                 for c, p in zip(critics, plan)]
        out = torch.zeros(len(responses), max(1, max(len(r) for r in responses)))  # [B, T]
        for rank_plan, rank_out in zip(plan, self._get(calls, "values on the critic ranks")):
            for idx, got in zip(rank_plan, rank_out):
                for j, i in enumerate(idx):
                    out[i, :len(responses[i])] = got[j, :len(responses[i])]
        return out
