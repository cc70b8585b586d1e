"""From samples to what an update trains on, as every method and both modes take it: the
answers and their vote (the pseudo-label), the trained samples' rewards under --reward, and the
reasons an update is not taken."""
from __future__ import annotations

from sttrl.rewards.extract import extract_answer
from sttrl.rewards.reward import random_rewards, ttrl_rewards
from sttrl.rewards.vote import vote, voting_weights
from sttrl.settings import VoteSettings

RANDOM_REWARD_SEED = 7_368_787  # offsets the question's seed, so the rewards do not share its draws


def pseudo_label(samples, task: str, settings: VoteSettings):
    """Extract every sample's answer and vote: (answers, label or None, vote stats)."""
    answers = [extract_answer(s.text, task) for s in samples]
    weights = voting_weights(settings.voting_function, samples, tau=settings.energy_tau,
                             keep_frac=settings.confidence_keep, answers=answers,
                             measure=settings.confidence_measure)
    label, stats = vote(answers, weights, task, form=settings.answer_form)
    return answers, label, stats


def train_rewards(answers, label, task: str, settings: VoteSettings, seed: int, oracle=None,
                  exact: bool = False) -> list[float]:
    """The rewards of the trained samples under --reward: agreement with the vote; the
    oracle's correctness; or random rewards at the vote's positive rate (exact: a random
    subset of exactly as many), seeded per question."""
    rewards = ttrl_rewards(answers, label, task, form=settings.answer_form)
    if settings.reward == "random":
        return random_rewards(rewards, seed + RANDOM_REWARD_SEED, exact)
    if settings.reward == "oracle":
        if oracle is None:
            raise ValueError("--reward oracle: the mode must hand the method an OracleReward")
        return oracle(answers)
    return rewards


def skip_reason(label, rewards: list[float], weak: str | None = None) -> str | None:
    """Why an update would teach nothing: no label, or every reward the same (zero advantages);
    or `weak`, the weak-vote rule's reason (`weak_vote`), which comes before the rewards."""
    if label is None:
        return "no answer could be extracted from any sample"
    if weak is not None:
        return weak
    if len(set(rewards)) <= 1:
        return "all rewards equal" + (" (unanimous vote)" if rewards and rewards[0] == 1 else "")
    return None


def weak_vote(stats, min_majority_ratio: float, reward: str,
              min_margin: float = 0.0) -> str | None:
    """The weak-vote rules' reason to skip: a vote weaker than --min_majority_ratio, or whose
    lead over the runner-up is under --min_vote_margin (its label is then often wrong, and
    training on a wrong label is where the damage is); never for an oracle run, which knows
    its rewards are right."""
    if reward == "oracle":
        return None
    if stats.majority_ratio < (min_majority_ratio or 0.0):
        return f"weak vote (majority ratio {stats.majority_ratio:.2f} < {min_majority_ratio})"
    if stats.margin < (min_margin or 0.0) - 1e-9:
        return f"weak vote (margin {stats.margin:.4f} < {min_margin})"
    return None
