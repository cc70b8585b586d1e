"""Drawing the next token from logits: temperature and nucleus (top-p), fast on a CPU."""
from __future__ import annotations

import torch

NUCLEUS_CANDIDATES = 1024  # top-p looks for its nucleus among these first (see sample_next)


def draw(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of non-negative weights [N, K], in proportion to them: one uniform per
    row through the inverse CDF (float64, so rounding cannot favour any index)."""
    cdf = weights.double().cumsum(-1)  # [N, K]
    u = torch.rand(weights.shape[0], 1, generator=generator, dtype=torch.float64,
                   device=weights.device)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)  # [N]
    # u * total can round up to the total itself (about once in 2^53 draws): take the heaviest.
    return torch.where(idx < weights.shape[-1], idx, weights.argmax(-1))


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator) -> torch.Tensor:
    """Sample one token per row from logits [N, V] with temperature and nucleus (top-p) filtering.

    On a CPU, torch.multinomial and a full sort of a 49k-token vocabulary cost more per step
    than the 135M model's forward pass (benchmarks/profile_sampling.py); inverting the CDF and
    looking for the nucleus among the top NUCLEUS_CANDIDATES tokens first give the same
    distribution for a fraction of that.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # [N, V]
    if top_p >= 1.0:
        return draw(probs, generator)
    top, order = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)  # [N, k], sorted
    if top.shape[-1] < probs.shape[-1] and bool((top.sum(-1) < top_p).any()):
        top, order = probs.sort(dim=-1, descending=True)  # a nucleus wider than k: sort it all
    # Drop a token when the mass before it already reaches top_p; the top token always stays.
    keep = top.cumsum(-1) - top < top_p
    return order.gather(-1, draw(top * keep, generator)[:, None]).squeeze(-1)
