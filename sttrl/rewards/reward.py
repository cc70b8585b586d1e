"""The test-time reward: agreement with the voted pseudo-label.

This is the training path, so it never sees a reference answer; ground truth belongs to
evaluation (sttrl/modes/evaluate.py).
"""
from __future__ import annotations

from sttrl.rewards.extract import check_task
from sttrl.rewards.grade import check_form, grade


def ttrl_rewards(answers: list[str | None], label: str | None, task: str = "math", *,
                 form: str = "strict") -> list[float]:
    """1.0 for each answer that grades equal to the pseudo-label (under the answer form: with
    "strict", a plain-number label rewards only plain numbers), else 0.0. With no label (nothing
    voted) every reward is 0.0; the caller flags the question."""
    check_task(task)
    check_form(form)
    if label is None:
        return [0.0] * len(answers)
    # a blank answer earns nothing, even against a blank label: agreeing on nothing is no answer
    return [1.0 if answer and answer.strip() and grade(answer, label, task, form=form) else 0.0
            for answer in answers]


def random_rewards(like: list[float], seed: int, exact: bool = False) -> list[float]:
    """The spurious-rewards control: rewards that carry no information about the answers, with
    the positive rate of `like` (the vote's rewards for the same samples), so the update has the
    same size. Bernoulli draws at that rate, or with `exact` a random subset of exactly as many
    positives. Seeded per question: the same seed gives the same rewards."""
    import random

    rng = random.Random(seed)
    positives = sum(r > 0 for r in like)
    if exact:
        chosen = set(rng.sample(range(len(like)), positives))
        return [1.0 if i in chosen else 0.0 for i in range(len(like))]
    rate = positives / len(like) if like else 0.0
    return [1.0 if rng.random() < rate else 0.0 for _ in like]
