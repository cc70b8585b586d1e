"""Evaluation metrics. These take the reference answer and must never feed a reward."""
from __future__ import annotations

import math

from sttrl.rewards.grade import check_form, grade
from sttrl.rewards.vote import vote


def pass_at_1(answers: list[str | None], reference: str, task: str = "math", *,
              form: str = "strict") -> float:
    """Mean correctness over the k samples of one question (0.0 for no samples)."""
    check_form(form)
    if not answers:
        return 0.0
    return sum(grade(a, reference, task, form=form) for a in answers) / len(answers)


def maj_at_n(answers: list[str | None], reference: str, task: str = "math",
             weights: list[float] | None = None, *, form: str = "strict") -> float:
    """1.0 if the (weighted) vote's label is correct, else 0.0; the form decides both the
    clusters and the grade of the label."""
    label, _ = vote(answers, weights, task, form=form)
    return label_accuracy(label, reference, task, form=form)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every size-k subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def label_accuracy(label: str | None, reference: str, task: str = "math", *,
                   form: str = "strict") -> float:
    """1.0 if the pseudo-label is correct, else 0.0 (a missing label counts as wrong)."""
    return 1.0 if grade(label, reference, task, form=form) else 0.0


def reward_accuracy(pseudo_rewards: list[float], answers: list[str | None], reference: str,
                    task: str = "math", *, form: str = "strict") -> float:
    """Share of samples whose pseudo-reward equals the reward the reference would give
    (rewards are read as correct when > 0.5); 0.0 for no samples."""
    check_form(form)
    if len(pseudo_rewards) != len(answers):
        raise ValueError(f"{len(pseudo_rewards)} rewards but {len(answers)} answers")
    if not answers:
        return 0.0
    true = [grade(a, reference, task, form=form) for a in answers]
    return sum((r > 0.5) == t for r, t in zip(pseudo_rewards, true)) / len(answers)
