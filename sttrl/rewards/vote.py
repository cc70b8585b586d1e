"""Cluster equivalent answers, elect a pseudo-label, and the per-sample voting weights."""
from __future__ import annotations

import math
from dataclasses import dataclass

from sttrl.errors import UserError
from sttrl.rewards.extract import check_task
from sttrl.rewards.grade import check_form, grade

WEIGHTINGS = ("majority", "energy", "confidence")
CONFIDENCE_MEASURES = ("mean", "tail", "bottom10", "lowest_group")  # DeepConf's trace measures
DEEPCONF_WINDOW = 2048  # DeepConf's tail length and sliding-window (group) size, in tokens


@dataclass
class VoteStats:
    label: str | None
    """Representative (first member) of the winning cluster; None when no answer voted."""
    majority_ratio: float
    """Winning cluster weight / total weight of all samples, unanswered ones included (TTRL's
    ratio: with majority voting, the winner's count over the number of samples; 0 if none
    voted)."""
    cluster_counts: dict[str, int]
    """Representative -> number of members."""
    cluster_weights: dict[str, float]
    """Representative -> summed weight."""
    n_voting: int
    n_none: int
    sample_cluster: list[int | None]
    """Per input answer, the index of its cluster in `representatives` (None for a None answer)."""
    representatives: list[str]
    """Cluster index -> representative, in order of first appearance."""
    winner: int | None
    """Index of the winning cluster; rewards can read sample_cluster == winner without re-grading."""
    answered_ratio: float = 0.0
    """Winning cluster weight / total weight of the answered samples only (the ratio before
    TTRL's: 3 agreeing among 5 answered of 16 is 0.6 here and 0.19 as majority_ratio)."""
    margin: float = 0.0
    """(Winning cluster weight - runner-up's) / total weight of all samples: the vote's lead.
    It told right votes from wrong ones better than the ratio (docs/RESULTS.md)."""


def vote(answers: list[str | None], weights: list[float] | None = None,
         task: str = "math", *, form: str = "strict") -> tuple[str | None, VoteStats]:
    """Weighted vote over clusters of equivalent answers.

    Answers are taken in order; each joins the first existing cluster whose representative
    (first member) it grades equal to, else starts a new cluster. Identical strings join without
    a grade call. None answers do not vote. The winner has the highest total weight (sums within
    1e-9 relative count as equal), then the most members, then the earliest first member.
    If every voting weight is 0 the weights carry no information: the winner is then the plain
    majority by that same rule and the ratios are member shares.
    The answer form decides what "equal" means (grade's form): under "strict" an unevaluated
    expression such as "9 - 4" never joins the cluster of the plain number "5".
    """
    task = check_task(task)
    check_form(form)
    if weights is None:
        weights = [1.0] * len(answers)
    if len(weights) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    if any(not w >= 0 or math.isinf(w) for w in weights):
        raise ValueError("voting weights must be finite and >= 0")

    reps: list[str] = []
    counts: list[int] = []
    sums: list[float] = []
    sample_cluster: list[int | None] = []
    seen: dict[str, int] = {}
    for answer, weight in zip(answers, weights):
        if answer is None or not answer.strip():  # a blank answer is no answer: it never votes
            sample_cluster.append(None)
            continue
        c = seen.get(answer)
        if c is None:
            c = next((j for j, rep in enumerate(reps) if grade(answer, rep, task, form=form)), None)
            if c is None:
                reps.append(answer)
                counts.append(0)
                sums.append(0.0)
                c = len(reps) - 1
            seen[answer] = c
        counts[c] += 1
        sums[c] += weight
        sample_cluster.append(c)

    n_voting = sum(counts)
    winner, ratio, answered, margin = None, 0.0, 0.0, 0.0
    if reps:
        best = max(sums)
        tied = [j for j in range(len(reps)) if sums[j] >= best - 1e-9 * max(1.0, best)]
        winner = max(tied, key=lambda j: (counts[j], -j))
        total = sum(sums)
        everyone = sum(weights)  # unanswered samples' weight too
        runner_up = max((sums[j] for j in range(len(reps)) if j != winner), default=0.0)
        if total > 0:
            ratio, answered = sums[winner] / everyone, sums[winner] / total
            margin = (sums[winner] - runner_up) / everyone
        else:  # weights that carry no information: the member shares
            ratio, answered = counts[winner] / len(answers), counts[winner] / n_voting
            second = max((counts[j] for j in range(len(reps)) if j != winner), default=0)
            margin = (counts[winner] - second) / len(answers)
    label = reps[winner] if winner is not None else None
    stats = VoteStats(
        label=label,
        majority_ratio=ratio,
        cluster_counts=dict(zip(reps, counts)),
        cluster_weights=dict(zip(reps, sums)),
        n_voting=n_voting,
        n_none=len(answers) - n_voting,
        sample_cluster=sample_cluster,
        representatives=reps,
        winner=winner,
        answered_ratio=answered,
        margin=margin,
    )
    return label, stats


def voting_weights(name: str, samples: list, tau: float = 1.0, keep_frac: float = 1.0,
                   answers: list[str | None] | None = None,
                   measure: str = "mean") -> list[float]:
    """One non-negative weight per sample (sttrl.engines.base.Sample).

    majority:   w_i = 1
    energy:     E_i = -mean_t logsumexp_t,  w = softmax(-E / tau)   (lower energy, more weight)
    confidence: C_i = DeepConf's trace confidence over the token confidences -topk_logprob_mean_t
                (`measure`: mean, tail, bottom10 or lowest_group; trace_confidence), w_i = C_i;
                keep_frac < 1 keeps only the ceil(keep_frac * n) most confident samples (ties: earlier
                sample first) and gives the rest weight 0. With `answers` (one extracted answer per
                sample), the filter runs among the answered samples, as DeepConf does: n is the
                number of answers that are not None and an unanswered sample never takes a slot.
                Without `answers`, n is the number of samples (the old behaviour).
    A sample with no tokens (or a non-finite score) gets weight 0 and takes no part in the softmax
    or the ranking. If that leaves every weight 0, vote() falls back to the plain majority.
    """
    if name not in WEIGHTINGS:
        raise UserError(f"unknown voting weighting {name!r}; allowed: {', '.join(WEIGHTINGS)}")
    if not tau > 0:
        raise UserError(f"voting temperature tau must be > 0, got {tau!r}")
    if not 0 < keep_frac <= 1:
        raise UserError(f"keep_frac must be in (0, 1], got {keep_frac!r}")
    if answers is not None and len(answers) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(answers)} answers")
    if name == "majority":
        return [1.0] * len(samples)

    if name == "energy":
        scores = [_mean(s.logsumexp) for s in samples]
        scores = [None if x is None else x / tau for x in scores]  # -E_i / tau = mean logsumexp / tau
        top = max((x for x in scores if x is not None), default=0.0)
        exps = [0.0 if x is None else math.exp(x - top) for x in scores]  # minus the max: no overflow
        total = sum(exps)
        return [e / total if total > 0 else 0.0 for e in exps]

    conf = [trace_confidence([-v for v in s.topk_logprob_mean], measure) for s in samples]
    weights = [0.0 if c is None else max(c, 0.0) for c in conf]
    if keep_frac < 1:
        answered = [True] * len(samples) if answers is None else [a is not None for a in answers]
        keep = math.ceil(keep_frac * sum(answered) - 1e-9)  # 0.1 * 10 is 1.0000000000000002
        ranked = sorted((i for i, c in enumerate(conf) if c is not None and answered[i]),
                        key=lambda i: -conf[i])
        kept = set(ranked[:keep])
        weights = [w if i in kept else 0.0 for i, w in enumerate(weights)]
    return weights


def trace_confidence(confs: list[float], measure: str = "mean") -> float | None:
    """DeepConf's confidence of one trace from its token confidences (Fu et al. 2025,
    facebookresearch/deepconf): `mean` over all tokens; `tail`, the mean of the last
    DEEPCONF_WINDOW tokens; over the means of every window of DEEPCONF_WINDOW consecutive
    tokens, `lowest_group` the smallest and `bottom10` the mean of the lowest 10% (at least
    one). A trace shorter than the window has the mean for all four. None: no tokens."""
    if measure not in CONFIDENCE_MEASURES:
        raise UserError(f"unknown confidence measure {measure!r}; allowed: "
                        f"{', '.join(CONFIDENCE_MEASURES)}")
    w = DEEPCONF_WINDOW
    if measure == "mean" or len(confs) < w:
        return _mean(confs)
    if measure == "tail":
        return _mean(confs[-w:])
    sums = [math.fsum(confs[:w])]
    for i in range(w, len(confs)):  # slide by one token: add the new, drop the oldest
        sums.append(sums[-1] + confs[i] - confs[i - w])
    means = sorted(x / w for x in sums)
    if measure == "lowest_group":
        return means[0] if math.isfinite(means[0]) else None
    return _mean(means[:max(1, int(len(means) * 0.1))])


def _mean(values: list[float]) -> float | None:
    if not values:
        return None
    m = math.fsum(values) / len(values)
    return m if math.isfinite(m) else None
