"""The test-time reward: agreement with the voted pseudo-label.

This is the training path, so it never sees a reference answer; ground truth belongs to
metrics.py (evaluation only).
"""
from __future__ import annotations

from sttrl.rewards.grade import grade


def ttrl_rewards(answers: list[str | None], label: str | None, task: str = "math") -> list[float]:
    """1.0 for each answer that grades equal to the pseudo-label, else 0.0. With no label (nothing
    voted) every reward is 0.0; the caller flags the question."""
    if label is None:
        return [0.0] * len(answers)
    return [1.0 if grade(answer, label, task) else 0.0 for answer in answers]
