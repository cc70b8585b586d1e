"""The ground-truth reward (`--reward oracle`): TTRL's upper bound, RL on the test labels.

This is the one module of the training path that reads a reference answer. It is separate on
purpose: the vote and random rewards (reward.py) have no parameter through which a reference
could arrive, and the modes build an `OracleReward` only when the run asks for it, so every
oracle run is marked as such (config, summary, results lines, report rows).
"""
from __future__ import annotations

from sttrl.rewards.grade import grade


class OracleReward:
    """r_i = 1 if answer i grades equal to the reference, else 0."""

    def __init__(self, reference: str, task: str = "math", form: str = "strict"):
        self.reference, self.task, self.form = reference, task, form

    @classmethod
    def of(cls, example, form: str = "strict") -> "OracleReward":
        """The oracle of one question (an `Example`): its reference answer under `form`."""
        return cls(example.answer, example.question.task, form)

    def __call__(self, answers: list[str | None]) -> list[float]:
        return [1.0 if grade(a, self.reference, self.task, form=self.form) else 0.0
                for a in answers]
