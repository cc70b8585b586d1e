"""Intervals for a gain: the paired bootstrap over questions.

A question's pass@1 from 16 samples has a standard error near 0.12, so a run-level gain is
only read with its interval: resample the questions (with replacement), keep each question's
before and after together, and take the 2.5th and 97.5th percentiles of the mean gain. Also
how the report writes a number, a gain and its interval (° when it includes zero), so the table
and the comparison with the base model mark intervals alike.
"""
from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 10_000


def paired_bootstrap_ci(before: list[float], after: list[float], level: float = 0.95,
                        samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """The percentile interval of mean(after - before) over questions resampled in pairs.

    Fixed seed: the same numbers always give the same interval. With one question (or none)
    the interval is that question's gain itself (nothing to resample)."""
    if len(before) != len(after):
        raise ValueError(f"{len(before)} before-numbers but {len(after)} after-numbers")
    diffs = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if diffs.size == 0:
        return (0.0, 0.0)
    if diffs.size == 1:
        return (float(diffs[0]), float(diffs[0]))
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 2_000_000 // diffs.size)  # bounded memory for large sets
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        idx = rng.integers(0, diffs.size, size=(stop - start, diffs.size))
        means[start:stop] = diffs[idx].mean(axis=1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return (float(lo), float(hi))


def gain_summary(before: list[float], after: list[float]) -> dict:
    """The run-level gain a user reads: mean, its 95% interval, and questions up / down."""
    n = len(before)
    gain = (sum(after) - sum(before)) / n if n else None
    lo, hi = paired_bootstrap_ci(before, after) if n else (None, None)
    return {"pass@1_gain": gain, "pass@1_gain_ci95": [lo, hi] if n else None,
            "questions_improved": sum(a > b for b, a in zip(before, after)),
            "questions_worse": sum(a < b for b, a in zip(before, after))}


def excludes_zero(ci: list[float] | tuple[float, float] | None) -> bool:
    """True when the interval lies wholly above or wholly below zero."""
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


# ---- how the report writes them --------------------------------------------------------------

def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def fmt_gain(gain: float) -> str:
    gain = round(gain, 3) + 0.0  # + 0.0 turns -0.0 into 0.0: no change prints +0.000, not -0.000
    return f"{gain:+.3f}"


def ci_text(ci: tuple[float, float] | None) -> str:
    """' [lo, hi]', and a ° when the interval includes zero (no measured gain); '' without one."""
    if ci is None:
        return ""
    return f" [{fmt_gain(ci[0])}, {fmt_gain(ci[1])}]" + ("" if excludes_zero(ci) else "°")
