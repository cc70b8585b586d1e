"""Dataset mode's schedule as TTRL's verl recipe runs it: how many rollout batches an episode
has, the learning rate of each, and which samples each optimiser step of a batch trains on.

- verl's data loader drops the last partial batch (`drop_last=True`): an episode is
  floor(questions / prompts_per_step) rollout batches.
- verl steps its lr scheduler once per rollout batch (after `update_actor`), so every optimiser
  step of one batch shares its lr: batch b of B = batches x episodes trains at
  peak x b / W while b < W = int(warmup_ratio x B) (the first batch at lr 0), then at
  peak x max(0, (1 + cos(pi x (b - W) / max(1, B - W))) / 2).
- verl balances each rollout batch's samples over its data-parallel ranks by token count
  (Karmarkar-Karp's largest differencing, equal-size parts), and each rank cuts its part into
  mini-batches in order: optimiser step k takes the k-th slice of every rank's part, so one step
  mixes questions. With 1 rank, step k holds questions k*m .. k*m+m-1.
"""
from __future__ import annotations

import heapq
import math


def rollout_batches(n_questions: int, prompts_per_step: int) -> int:
    """Rollout batches per episode: full batches only (verl's drop_last)."""
    return n_questions // prompts_per_step


def lr_at(batch: int, total: int, peak: float, warmup_ratio: float) -> float:
    """The lr of every optimiser step of rollout batch `batch` (from 0) of `total`."""
    warm = int(warmup_ratio * total)
    if batch < warm:
        return peak * batch / max(1, warm)
    progress = (batch - warm) / max(1, total - warm)
    return peak * max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))


class _Part:
    """One rank's share while the parts are built: its rows (index, tokens) and their sum."""

    def __init__(self, items=()):
        self.items = list(items)
        self.sum = sum(t for _, t in self.items)

    def key(self):
        # heavier first; then more rows; then the rows themselves, as verl orders its sets
        return (self.sum, len(self.items), self.items)


class _State:
    """k parts, heaviest first; the heap pops the state whose parts differ most."""

    def __init__(self, parts: list[_Part]):
        self.parts = sorted(parts, key=_Part.key, reverse=True)

    def spread(self) -> int:
        return self.parts[0].sum - self.parts[-1].sum

    def __lt__(self, other: "_State") -> bool:
        if self.spread() != other.spread():
            return self.spread() > other.spread()
        return self.parts[0].key() > other.parts[0].key()

    def merge(self, other: "_State") -> None:
        """Pair this state's heaviest part with the other's lightest, and so on down."""
        k = len(self.parts)
        merged = [_Part(self.parts[i].items + other.parts[k - 1 - i].items) for i in range(k)]
        self.parts = sorted(merged, key=_Part.key, reverse=True)


def balanced_parts(tokens: list[int], ranks: int) -> list[list[int]]:
    """Row indices of each rank's equal-size part, token sums balanced by Karmarkar-Karp's
    largest differencing over groups of `ranks` rows taken in order of length; each part's rows
    in ascending order (verl's `get_seqlen_balanced_partitions(..., equal_size=True)`)."""
    if len(tokens) % ranks:
        raise ValueError(f"{len(tokens)} rows do not split into {ranks} equal parts")
    ordered = sorted((t, i) for i, t in enumerate(tokens))
    heap: list[_State] = []
    for start in range(0, len(ordered), ranks):
        chunk = ordered[start:start + ranks]
        heapq.heappush(heap, _State([_Part([(i, t)]) for t, i in chunk]))
    while len(heap) > 1:
        first, second = heapq.heappop(heap), heapq.heappop(heap)
        first.merge(second)
        heapq.heappush(heap, first)
    return [sorted(i for i, _ in part.items) for part in heap[0].parts]


def mini_batch_rows(tokens: list[int], ranks: int, steps: int) -> list[list[int]]:
    """The rows of each of `steps` optimiser steps over one rollout batch (`tokens`: each row's
    prompt + response length): step k takes the k-th of `steps` equal slices of every rank's
    part, in rank order."""
    parts = balanced_parts(tokens, ranks)
    size = len(parts[0]) // steps
    if size * steps != len(parts[0]):
        raise ValueError(f"a rank's {len(parts[0])} rows do not split into {steps} mini-batches")
    return [[r for part in parts for r in part[k * size:(k + 1) * size]] for k in range(steps)]
