"""Rewards layer: extract answers, grade them, vote a pseudo-label, turn agreement into rewards
(`label.py`: what every method and mode takes from samples). Evaluation's metrics, which read
the reference answer, are in sttrl/modes/evaluate.py."""
from sttrl.rewards.extract import extract_answer
from sttrl.rewards.grade import ANSWER_FORMS, clear_grade_cache, grade, set_grade_timeout
from sttrl.rewards.reward import random_rewards, ttrl_rewards
from sttrl.rewards.vote import VoteStats, vote, voting_weights

# --reward: agreement with the vote (label-free), the ground truth (oracle.py: an upper bound),
# or random rewards at the vote's positive rate (the null)
REWARDS = ("vote", "oracle", "random")

__all__ = [
    "ANSWER_FORMS", "extract_answer", "grade", "clear_grade_cache", "set_grade_timeout", "vote", "VoteStats",
    "voting_weights", "ttrl_rewards", "random_rewards", "REWARDS",
]
