"""Evaluation: every computation that reads a reference answer, to measure (never to train).

The metrics of one question's samples (pass@1, maj@N, pass@k, label and reward accuracy), a
question's results-line metrics before and after its update (`question_metrics`), and dataset
mode's mean pass@1 over the set (`evaluate_set`). The training path's one reader of a reference
is the oracle reward (sttrl/rewards/oracle.py), and only with --reward oracle.
"""
from __future__ import annotations

import math

from sttrl.engines.base import Engine
from sttrl.modes.common import question_seed, sample_answers
from sttrl.rewards.grade import check_form, grade
from sttrl.rewards.vote import vote
from sttrl.settings import SamplingSettings
from sttrl.types import Adaptation, Example


def question_metrics(example: Example, before: list, after: list, adapted: Adaptation,
                     form: str = "strict") -> dict:
    """A question's metrics for its results line (QuestionResult's fields): pass@1 of the
    answers before and after the update, and maj@N, label and reward accuracy of the vote."""
    reference, task = example.answer, example.question.task
    n_train = len(adapted.rewards)
    if reference is None:  # label-free data: the answers and the vote are kept, nothing graded
        return dict.fromkeys(("pass1_before", "pass1_after", "majN_before", "label_correct",
                              "reward_accuracy"))
    return {
        "pass1_before": pass_at_1(before, reference, task, form=form),
        "pass1_after": pass_at_1(after, reference, task, form=form),
        "majN_before": maj_at_n(adapted.answers, reference, task, form=form),
        "label_correct": label_accuracy(adapted.label, reference, task, form=form),
        "reward_accuracy": reward_accuracy(adapted.rewards, adapted.answers[:n_train],
                                           reference, task, form=form),
    }


def evaluate_set(engine: Engine, examples: list[Example], prompts: list[str],
                 sampling: SamplingSettings, form: str) -> tuple[list, list[list]]:
    """Each question's pass@1 (None where its data row has no reference) and answers: n_eval
    samples at val_temp / val_top_p, from the question's own evaluation seed (the per-question
    mode's, so the untouched model draws the same samples in both modes)."""
    scores, all_answers = [], []
    for ex, prompt in zip(examples, prompts):
        answers = sample_answers(engine, prompt, ex.question.task, sampling.n_eval,
                                 sampling.val_temp, sampling.val_top_p, sampling.max_new_tokens,
                                 question_seed(sampling.seed, ex.question.id) + 1)
        scores.append(None if ex.answer is None
                      else pass_at_1(answers, ex.answer, ex.question.task, form=form))
        all_answers.append([a if a is None else a[:200] for a in answers])
    return scores, all_answers


# ---- the metrics of one question's samples --------------------------------------------------

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
