"""The paired bootstrap interval on known cases."""
import math

import numpy as np
import pytest

from sttrl.reporting.stats import excludes_zero, gain_summary, paired_bootstrap_ci


def test_a_constant_gain_has_a_zero_width_interval():
    assert paired_bootstrap_ci([0.2, 0.5, 0.1], [0.3, 0.6, 0.2]) == pytest.approx((0.1, 0.1))


def test_one_question_gives_its_own_gain_and_none_gives_zero():
    assert paired_bootstrap_ci([0.25], [0.75]) == (0.5, 0.5)
    assert paired_bootstrap_ci([], []) == (0.0, 0.0)


def test_the_interval_matches_the_normal_approximation_on_many_questions():
    rng = np.random.default_rng(1)
    before = rng.uniform(0, 1, 400)
    diffs = rng.normal(0.05, 0.2, 400)
    after = before + diffs
    lo, hi = paired_bootstrap_ci(list(before), list(after))
    se = diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert lo == pytest.approx(diffs.mean() - 1.96 * se, abs=0.25 * se)
    assert hi == pytest.approx(diffs.mean() + 1.96 * se, abs=0.25 * se)


def test_pairing_matters():
    """Before and after move together across questions: the paired interval is narrow even
    though each side alone varies a lot."""
    before = [0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.0, 1.0]
    after = [b + 0.1 for b in before[:-1]] + [1.0]
    lo, hi = paired_bootstrap_ci(before, after)
    assert 0 <= lo and hi <= 0.15 and excludes_zero((lo, hi)) is (lo > 0)


def test_fixed_seed_is_reproducible_and_summary_counts():
    b, a = [0.5, 0.25, 0.75, 0.0], [0.75, 0.25, 0.5, 0.5]
    assert paired_bootstrap_ci(b, a) == paired_bootstrap_ci(b, a)
    s = gain_summary(b, a)
    assert s["pass@1_gain"] == pytest.approx(0.125)
    assert s["questions_improved"] == 2 and s["questions_worse"] == 1
    lo, hi = s["pass@1_gain_ci95"]
    assert lo < 0.125 < hi and not excludes_zero(s["pass@1_gain_ci95"])


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        paired_bootstrap_ci([0.1], [0.1, 0.2])
