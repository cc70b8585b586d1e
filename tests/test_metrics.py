import math

import pytest

from sttrl.modes.evaluate import label_accuracy, maj_at_n, pass_at_1, pass_at_k, reward_accuracy


def test_pass_at_1():
    assert pass_at_1(["1/2", "0.5", "3", None], "\\frac{1}{2}", "math") == pytest.approx(0.5)
    assert pass_at_1([], "1", "math") == 0.0
    assert pass_at_1(["A", "B"], "B", "gpqa") == 0.5


def test_maj_at_n():
    assert maj_at_n(["3", "0.5", "1/2"], "\\frac12", "math") == 1.0
    assert maj_at_n(["3", "0.5", "1/2"], "3", "math") == 0.0
    assert maj_at_n(["3", "0.5", "1/2"], "3", "math", weights=[5.0, 1.0, 1.0]) == 1.0
    assert maj_at_n([None, None], "3", "math") == 0.0


def _brute_pass_at_k(n, c, k):
    return 1 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize("n, c, k", [(10, 0, 1), (10, 3, 1), (10, 3, 5), (10, 10, 4), (64, 1, 8), (5, 3, 3)])
def test_pass_at_k_matches_the_binomial_formula(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k))


def test_pass_at_k_is_stable_for_large_n():
    value = pass_at_k(100_000, 1, 10)  # C(100000, 10) is ~1e43; the product form never builds it
    assert value == pytest.approx(1e-4) and math.isfinite(value)
    assert pass_at_k(5, 1, 1) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 0)


def test_label_accuracy():
    assert label_accuracy("0.5", "\\frac{1}{2}", "math") == 1.0
    assert label_accuracy(None, "1", "math") == 0.0
    assert label_accuracy("C", "D", "gpqa") == 0.0


def test_reward_accuracy():
    answers = ["1", "2", "1", None]
    # pseudo-label "2" rewards sample 1; truth is "1", which rewards samples 0 and 2
    assert reward_accuracy([0.0, 1.0, 0.0, 0.0], answers, "1", "math") == pytest.approx(1 / 4)
    assert reward_accuracy([1.0, 0.0, 1.0, 0.0], answers, "1", "math") == 1.0
    assert reward_accuracy([], [], "1", "math") == 0.0
    with pytest.raises(ValueError):
        reward_accuracy([1.0], [], "1", "math")


@pytest.mark.parametrize("form, expected", [("strict", 0.0), ("symbolic", 1.0)])
def test_metrics_pass_the_form_down(form, expected):
    answers = ["9-4", "2+3", "9 - 4"]
    assert pass_at_1(answers, "5", "math", form=form) == expected
    assert maj_at_n(answers, "5", "math", form=form) == expected
    assert maj_at_n(answers, "5", "math", weights=[1.0, 1.0, 1.0], form=form) == expected
    assert label_accuracy("9-4", "5", "math", form=form) == expected
    # truth under strict: nobody is right, so rewarding everyone is 0% accurate; under symbolic 100%
    assert reward_accuracy([1.0, 1.0, 1.0], answers, "5", "math", form=form) == expected


def test_metrics_default_form_is_strict():
    assert pass_at_1(["9-4", "5"], "5") == 0.5
    assert label_accuracy("\\frac{10}{2}", "5") == 0.0
    assert pass_at_1(["18"], "18", "gsm8k") == 1.0
