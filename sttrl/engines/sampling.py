"""Drawing the next token from logits: temperature and nucleus (top-p), fast on a CPU.

Rows of one batch may carry their own temperature and top-p, and their uniforms may come from
different generators (`Streams`): `LocalEngine.generate_groups` samples several groups of one
prompt in one batch that way. A row's token depends only on its logits, its temperature and
top-p, and its uniform, never on the other rows of the batch, so a group's rows sample in a
shared batch as they would alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

NUCLEUS_CANDIDATES = 1024  # top-p looks for its nucleus among these first (see sample_next)


@dataclass
class Streams:
    """Where each row's uniform comes from: row i draws from generators[group[i]].

    Each generator fills its own rows in row order with one torch.rand call per step, exactly
    as a batch of only those rows drawing from that generator alone would, so a group's random
    numbers do not depend on the other groups sharing the batch.
    """

    generators: list
    group: list[int]


def uniforms(generator, rows: list[int], n: int, device) -> torch.Tensor:
    """One float64 uniform [len(rows), 1] for each of `rows` (indices into the n rows of the
    batch), from one torch.Generator or from each row's stream."""
    if isinstance(generator, Streams) and len(generator.generators) == 1:
        generator = generator.generators[0]
    if not isinstance(generator, Streams):
        return torch.rand(len(rows), 1, generator=generator, dtype=torch.float64, device=device)
    u = torch.empty(len(rows), 1, dtype=torch.float64, device=device)
    for g, gen in enumerate(generator.generators):
        mine = [j for j, i in enumerate(rows) if generator.group[i] == g]
        if mine:
            u[torch.tensor(mine, device=device)] = torch.rand(
                len(mine), 1, generator=gen, dtype=torch.float64, device=device)
    return u


def draw(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One index per row of non-negative weights [N, K], in proportion to them, from one
    uniform per row u [N, 1] through the inverse CDF (float64, so rounding cannot favour any
    index)."""
    cdf = weights.double().cumsum(-1)  # [N, K]
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)  # [N]
    # u * total can round up to the total itself (about once in 2^53 draws): take the heaviest.
    return torch.where(idx < weights.shape[-1], idx, weights.argmax(-1))


def per_row(value, n: int) -> list[float]:
    """One float per row from a float, a list or a tensor [N]."""
    if isinstance(value, (int, float)):
        return [float(value)] * n
    values = value.tolist() if isinstance(value, torch.Tensor) else list(value)
    if len(values) != n:
        raise ValueError(f"{len(values)} per-row settings for {n} rows")
    return [float(v) for v in values]


def sample_next(logits: torch.Tensor, temperature, top_p, generator) -> torch.Tensor:
    """Sample one token per row from logits [N, V] with temperature and nucleus (top-p) filtering.

    `temperature` and `top_p`: one float for every row, or one per row (a list or a tensor
    [N]); a row at temperature <= 0 is greedy and draws no random number. `generator`: a
    torch.Generator, or `Streams` (each row's own generator).

    On a CPU, torch.multinomial and a full sort of a 49k-token vocabulary cost more per step
    than the 135M model's forward pass (benchmarks/profile_sampling.py); inverting the CDF and
    looking for the nucleus among the top NUCLEUS_CANDIDATES tokens first give the same
    distribution for a fraction of that.
    """
    n = logits.shape[0]
    temps, tops = per_row(temperature, n), per_row(top_p, n)
    sampling = [i for i in range(n) if temps[i] > 0]
    u = uniforms(generator, sampling, n, logits.device) if sampling else None
    settings = set(zip(temps, tops))
    if len(settings) == 1:  # the whole batch shares one setting: no rows to pick apart
        t, p = settings.pop()
        return sample_rows(logits, t, p, u)
    # Rows sharing a setting are sampled together, with a scalar temperature: the same
    # arithmetic as a batch of only them (on a GPU, dividing by a scalar and by a tensor of it
    # can differ in the last bit).
    out = logits.argmax(-1)
    slot = {i: j for j, i in enumerate(sampling)}  # row -> its uniform
    for t, p in settings:
        if t <= 0:
            continue  # greedy rows keep the argmax
        rows = [i for i in sampling if temps[i] == t and tops[i] == p]
        idx = torch.tensor(rows, device=logits.device)
        mine = u[torch.tensor([slot[i] for i in rows], device=logits.device)]
        out[idx] = sample_rows(logits[idx], t, p, mine)
    return out


def sample_rows(logits: torch.Tensor, temperature: float, top_p: float,
                u: torch.Tensor | None) -> torch.Tensor:
    """One token per row of logits [N, V] that share a temperature and top-p, from uniforms
    u [N, 1] (None when greedy)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # [N, V]
    if top_p >= 1.0:
        return draw(probs, u)
    top, order = probs.topk(min(NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)  # [N, k], sorted
    if top.shape[-1] < probs.shape[-1]:
        # A nucleus wider than the k candidates: sort that row's whole vocabulary. Decided per
        # row, so a row's draw never depends on the others in its batch.
        wide = top.sum(-1) < top_p  # [N]
        if bool(wide.any()):
            out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
            if not bool(wide.all()):
                out[~wide] = nucleus(top[~wide], order[~wide], top_p, u[~wide])
            full, full_order = probs[wide].sort(dim=-1, descending=True)
            out[wide] = nucleus(full, full_order, top_p, u[wide])
            return out
    return nucleus(top, order, top_p, u)


def nucleus(top: torch.Tensor, order: torch.Tensor, top_p: float, u: torch.Tensor) -> torch.Tensor:
    """The drawn token ids [N] from probabilities sorted in descending order [N, K] (their
    token ids: order) under top-p."""
    # Drop a token when the mass before it already reaches top_p; the top token always stays.
    keep = top.cumsum(-1) - top < top_p
    return order.gather(-1, draw(top * keep, u)[:, None]).squeeze(-1)
