"""What both run modes share: phase timers, per-question seeds, sampling answers."""
from __future__ import annotations

import time
import zlib
from collections import defaultdict
from contextlib import contextmanager

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


def question_seed(seed: int, question_id: str) -> int:
    """A per-question seed that does not depend on order, so a resumed run samples the same."""
    return (seed * 1_000_003 + zlib.crc32(question_id.encode())) % (2**31 - 1)


def sample_answers(engine, prompt: str, task: str, n: int, temperature: float, top_p: float,
                   max_new_tokens: int, seed: int) -> list[str | None]:
    samples = engine.generate(prompt, n, temperature, top_p, max_new_tokens, seed)
    return [extract_answer(s.text, task) for s in samples]
