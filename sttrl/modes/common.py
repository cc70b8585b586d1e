"""What both run modes share: phase timers, per-question seeds, sampling answers."""
from __future__ import annotations

import time
import zlib
from collections import defaultdict
from contextlib import contextmanager

from sttrl.engines.base import Engine
from sttrl.rewards import extract_answer


class Timer:
    """Accumulates wall seconds per phase: `with timer("train"): ...`."""

    def __init__(self):
        self.seconds = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds


def question_seed(seed: int, question_id: str) -> int:
    """A per-question seed that does not depend on order, so a resumed run samples the same."""
    return (seed * 1_000_003 + zlib.crc32(question_id.encode())) % (2**31 - 1)


def sample_answers(engine: Engine, prompt: str, task: str, n: int, temperature: float, top_p: float,
                   max_new_tokens: int, seed: int) -> list[str | None]:
    samples = engine.generate(prompt, n, temperature, top_p, max_new_tokens, seed)
    return [extract_answer(s.text, task) for s in samples]


def generate_shared(engine: Engine, prompt: str, groups: list, phases: list[str],
                    max_new_tokens: int, timer: Timer) -> list[list]:
    """One `generate_groups` call for several phases' groups of samples. Its seconds are
    split between the phases in proportion to the tokens each group generated: the batch's
    work is per token, and the groups' rows share every step."""
    start = time.perf_counter()
    out = engine.generate_groups(prompt, groups, max_new_tokens)
    spent = time.perf_counter() - start
    tokens = [sum(len(s.token_ids) for s in samples) for samples in out]
    total = sum(tokens)
    for phase, n in zip(phases, tokens):
        timer.add(phase, spent * n / total if total else spent / len(groups))
    return out
