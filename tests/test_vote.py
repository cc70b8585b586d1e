import inspect
import math

import pytest

from sttrl.types import Sample
from sttrl.errors import UserError
from sttrl.rewards import ttrl_rewards, vote, voting_weights


def test_equivalent_answers_vote_together():
    label, stats = vote(["0.5", "\\frac{1}{2}", "3", "1/2", None, "3"])
    assert label == "0.5"  # the representative is the cluster's first member
    assert stats.cluster_counts == {"0.5": 3, "3": 2}
    assert stats.sample_cluster == [0, 0, 1, 0, None, 1]
    assert stats.representatives == ["0.5", "3"] and stats.winner == 0
    assert (stats.n_voting, stats.n_none) == (5, 1)
    # TTRL's ratio: the winner's count over every sample, the unanswered one included
    assert stats.majority_ratio == pytest.approx(3 / 6)
    assert stats.answered_ratio == pytest.approx(3 / 5)


def test_the_majority_ratio_is_ttrls_over_all_samples():
    """TTRL (ttt_metrics.py) divides the majority answer's count by the number of samples:
    3 agreeing among 5 answered of 16 is 3 / 16, not 3 / 5."""
    answers = ["7", "7", "7", "8", "9"] + [None] * 11
    _, stats = vote(answers)
    assert stats.majority_ratio == pytest.approx(3 / 16)
    assert stats.answered_ratio == pytest.approx(3 / 5)
    # weighted votes: the winner's weight over every sample's weight
    _, stats = vote(["1", "2", None], weights=[0.5, 0.2, 0.3])
    assert stats.majority_ratio == pytest.approx(0.5) and stats.answered_ratio == pytest.approx(0.5 / 0.7)


def test_the_margin_is_the_winners_lead_over_the_runner_up_among_all_samples():
    _, stats = vote(["7", "7", "7", "8", "8", "9"] + [None] * 2)
    assert stats.margin == pytest.approx((3 - 2) / 8)
    _, stats = vote(["4"] * 5)  # unanimous: the lead is everything
    assert stats.margin == pytest.approx(1.0)
    _, stats = vote(["1", "2", None], weights=[0.5, 0.2, 0.3])
    assert stats.margin == pytest.approx((0.5 - 0.2) / 1.0)
    _, stats = vote(["1", "2"])  # a tie has no lead
    assert stats.margin == 0.0


def test_the_weak_vote_rule_holds_back_a_narrow_lead_but_never_the_oracle():
    from sttrl.rewards.label import weak_vote
    _, narrow = vote(["7", "7", "7", "8", "8"] + [None] * 11)  # lead 1 of 16
    _, clear = vote(["7"] * 5 + ["8"] * 2 + [None] * 9)  # lead 3 of 16
    assert "margin" in weak_vote(narrow, 0.0, "vote", min_margin=0.125)
    assert weak_vote(clear, 0.0, "vote", min_margin=0.125) is None
    assert weak_vote(narrow, 0.0, "oracle", min_margin=0.125) is None
    assert weak_vote(narrow, 0.0, "vote", min_margin=0.0) is None


def test_none_answers_do_not_vote():
    label, stats = vote([None, None])
    assert label is None and stats.winner is None
    assert stats.majority_ratio == 0 and stats.n_voting == 0 and stats.n_none == 2
    assert vote([])[0] is None


def test_weights_sum_per_cluster():
    label, stats = vote(["1", "2", "2"], weights=[0.7, 0.2, 0.1])
    assert label == "1"
    assert stats.cluster_weights == pytest.approx({"1": 0.7, "2": 0.3})
    assert stats.majority_ratio == pytest.approx(0.7)


def test_tie_break_rule():
    # equal weight -> more members wins
    assert vote(["1", "2", "2"], weights=[2.0, 1.0, 1.0])[0] == "2"
    # equal weight and members -> earliest first member wins, whatever the order of later samples
    assert vote(["2", "1", "1", "2"])[0] == "2"
    assert vote(["1", "2", "2", "1"])[0] == "1"
    # float noise does not decide a tie: 0.1 + 0.2 is 0.30000000000000004 > 0.15 + 0.15
    assert vote(["2", "2", "1"], weights=[0.15, 0.15, 0.1 + 0.2])[0] == "2"


def test_zero_weights_fall_back_to_majority():
    label, stats = vote(["1", "2", "2"], weights=[0.0, 0.0, 0.0])
    assert label == "2" and stats.majority_ratio == pytest.approx(2 / 3)


def test_bad_weights():
    with pytest.raises(ValueError):
        vote(["1", "2"], weights=[1.0])
    with pytest.raises(ValueError):
        vote(["1"], weights=[-1.0])
    with pytest.raises(ValueError):
        vote(["1"], weights=[math.nan])


def test_gpqa_vote():
    label, stats = vote(["C", "(C)", "\\text{B}", None], task="gpqa")
    assert label == "C" and stats.cluster_counts == {"C": 2, "\\text{B}": 1}


def _sample(lse, topk):
    return Sample(text="", token_ids=[0] * len(lse), logsumexp=lse, topk_logprob_mean=topk)


SAMPLES = [
    _sample([1.0, 3.0], [-2.0, -4.0]),  # mean lse 2, confidence 3
    _sample([0.0], [-1.0]),             # mean lse 0, confidence 1
    _sample([], []),                    # no tokens
    _sample([4.0], [-5.0]),             # mean lse 4, confidence 5
]


def test_majority_weights():
    assert voting_weights("majority", SAMPLES) == [1.0] * 4


def test_energy_weights():
    w = voting_weights("energy", SAMPLES, tau=2.0)
    expected = [math.exp(1.0), math.exp(0.0), 0.0, math.exp(2.0)]  # exp(-E / tau), E = -mean lse
    assert w == pytest.approx([x / sum(expected) for x in expected])
    assert sum(w) == pytest.approx(1.0)
    # huge logits: the max is subtracted before exp
    big = voting_weights("energy", [_sample([1e4], []), _sample([1e4 - 1], [])])
    assert big == pytest.approx([1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))])


def test_confidence_weights():
    assert voting_weights("confidence", SAMPLES) == pytest.approx([3.0, 1.0, 0.0, 5.0])
    # keep the ceil(0.5 * 4) = 2 most confident
    assert voting_weights("confidence", SAMPLES, keep_frac=0.5) == pytest.approx([3.0, 0.0, 0.0, 5.0])
    # 0.1 * 10 is 1.0000000000000002 in floats; it must keep 1, not 2
    ten = [_sample([0.0], [-float(i)]) for i in range(1, 11)]
    assert sum(w > 0 for w in voting_weights("confidence", ten, keep_frac=0.1)) == 1


def test_empty_samples_do_not_crash():
    empty = [_sample([], []), _sample([], [])]
    assert voting_weights("energy", empty) == [0.0, 0.0]
    assert voting_weights("confidence", empty, keep_frac=0.5) == [0.0, 0.0]
    assert voting_weights("energy", []) == []


def test_weighting_errors():
    with pytest.raises(UserError, match="majority, energy, confidence"):
        voting_weights("entropy", SAMPLES)
    with pytest.raises(UserError):
        voting_weights("energy", SAMPLES, tau=0)
    with pytest.raises(UserError):
        voting_weights("confidence", SAMPLES, keep_frac=0)


def test_weighted_vote_end_to_end():
    answers = ["1", "2", "1", "2"]
    samples = [_sample([0.0], [-1.0]), _sample([5.0], [-9.0]), _sample([0.0], [-1.0]), _sample([5.0], [-9.0])]
    assert vote(answers, voting_weights("majority", samples))[0] == "1"  # tie -> earliest
    assert vote(answers, voting_weights("energy", samples))[0] == "2"
    assert vote(answers, voting_weights("confidence", samples))[0] == "2"


def test_rewards():
    assert ttrl_rewards(["0.5", "\\frac12", "3", None], "1/2") == [1.0, 1.0, 0.0, 0.0]
    assert ttrl_rewards(["1", None], None) == [0.0, 0.0]
    assert ttrl_rewards(["B", "(B)", "C"], "B", task="gpqa") == [1.0, 1.0, 0.0]


def test_reward_never_sees_a_reference():
    params = list(inspect.signature(ttrl_rewards).parameters)
    assert params == ["answers", "label", "task", "form"]
    for name in params:
        assert not any(word in name for word in ("ref", "gold", "truth", "target", "solution"))


# --- item 7: DeepConf filters among answered traces ---------------------------------------------

def _conf(c):
    return _sample([0.0], [-float(c)])  # confidence c


def test_confidence_filter_skips_unanswered_traces():
    samples = [_conf(c) for c in (9, 8, 7, 2, 1)]
    answers = [None, None, "5", "3", "3"]
    # the old call shape (no answers) behaves as before: the two unanswered traces take both slots
    old = voting_weights("confidence", samples, keep_frac=0.4)
    assert old == pytest.approx([9.0, 8.0, 0.0, 0.0, 0.0])
    assert vote(answers, old)[0] == "3"
    # with answers, ceil(0.4 * 3 answered) = 2 slots go to the two most confident answered traces
    new = voting_weights("confidence", samples, keep_frac=0.4, answers=answers)
    assert new == pytest.approx([0.0, 0.0, 7.0, 2.0, 0.0])
    assert vote(answers, new)[0] == "5"
    # keep_frac = 1 is unchanged by answers
    assert voting_weights("confidence", samples, answers=answers) == pytest.approx([9, 8, 7, 2, 1])
    # the rounding rule is the same: 0.1 * 10 answered keeps 1
    ten = [_conf(i) for i in range(1, 11)]
    kept = voting_weights("confidence", ten + [_conf(99)], keep_frac=0.1, answers=["1"] * 10 + [None])
    assert sum(w > 0 for w in kept) == 1 and kept[9] == pytest.approx(10.0)
    # other weightings accept answers and ignore them
    assert voting_weights("majority", samples, answers=answers) == [1.0] * 5
    assert voting_weights("energy", samples, answers=answers) == voting_weights("energy", samples)
    with pytest.raises(ValueError):
        voting_weights("confidence", samples, keep_frac=0.4, answers=answers[:2])


def test_confidence_filter_with_no_answered_traces():
    samples = [_conf(3), _conf(2)]
    assert voting_weights("confidence", samples, keep_frac=0.5, answers=[None, None]) == [0.0, 0.0]


# --- item 8: strict answer form in clusters and rewards -------------------------------------------

def test_strict_vote_does_not_merge_unevaluated_expressions():
    # "9 - 4" must never join the "5" cluster (nor "5" the "9 - 4" one, whichever comes first)
    label, stats = vote(["5", "9 - 4", "5.0", "9-4", "\\frac{10}{2}", "5"])
    assert label == "5" and stats.cluster_counts == {"5": 3, "9 - 4": 3}
    assert stats.sample_cluster == [0, 1, 0, 1, 1, 0]
    label, stats = vote(["9 - 4", "5", "9-4", "5.0", "5"])
    assert label == "5" and stats.cluster_counts == {"9 - 4": 2, "5": 3}
    # two unevaluated expressions of the same value still agree with each other
    assert vote(["2+3", "9-4"])[1].cluster_counts == {"2+3": 2}
    # symbolic merges them all, as before
    label, stats = vote(["9 - 4", "5", "9-4", "5.0", "5"], form="symbolic")
    assert label == "9 - 4" and stats.cluster_counts == {"9 - 4": 5}


def test_strict_rewards():
    assert ttrl_rewards(["5", "9-4", "5.0", "10/2", None], "5") == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert ttrl_rewards(["5", "9-4", "5.0", "10/2", None], "5", form="symbolic") == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert ttrl_rewards(["\\sqrt{18}", "3\\sqrt{2}", "4"], "3\\sqrt2") == [1.0, 1.0, 0.0]
    assert ttrl_rewards(["0.5", "1/2", "2/4"], "\\frac{1}{2}") == [1.0, 1.0, 0.0]


def test_vote_unknown_form():
    with pytest.raises(UserError, match="strict, symbolic"):
        vote(["1"], form="exact")


# --- item 10: comma lists do not merge with numbers ------------------------------------------------

def test_comma_list_does_not_merge_with_a_number():
    label, stats = vote(["12, 345", "12345", "12,345"])
    assert stats.cluster_counts == {"12, 345": 1, "12345": 2} and label == "12345"
    _, stats = vote(["12, 345", "12345"], form="symbolic")
    assert stats.cluster_counts == {"12, 345": 1, "12345": 1}


def test_blank_answers_neither_vote_nor_earn_a_reward():
    from sttrl.rewards import ttrl_rewards

    label, stats = vote([None, "", "  ", ""])
    assert label is None and stats.n_voting == 0
    assert vote(["", "", "5"])[0] == "5"
    assert ttrl_rewards(["", " ", "5"], "") == [0.0, 0.0, 0.0]
    assert ttrl_rewards(["", "5"], "5") == [0.0, 1.0]
