"""STTRL's default method: vote on sampled answers, reward agreement, run a few GRPO steps.

`adapt` sees the question and the prompt, never the reference answer: that is what makes the
method label-free, and the signature is what keeps it so. The one exception is named: with
`--reward oracle` the mode hands in an `oracle` (sttrl/rewards/oracle.py) built from the
reference, and such a run is marked oracle everywhere it is reported.
"""
from __future__ import annotations

from sttrl.algorithms.grpo import agreement_estimate, group_advantages, grpo_loss
from sttrl.rewards import extract_answer, random_rewards, ttrl_rewards, vote, voting_weights
from sttrl.types import Adaptation, SampleGroup, TrainBatch


def pseudo_label(samples, task: str, cfg):
    """Extract every sample's answer and vote: (answers, label or None, vote stats)."""
    answers = [extract_answer(s.text, task) for s in samples]
    weights = voting_weights(cfg.voting_function, samples, tau=cfg.energy_tau,
                             keep_frac=cfg.confidence_keep, answers=answers)
    label, stats = vote(answers, weights, task, form=cfg.answer_form)
    return answers, label, stats


RANDOM_REWARD_SEED = 7_368_787  # offsets the question's seed, so the rewards do not share its draws


def train_rewards(answers, label, task: str, cfg, seed: int, oracle=None,
                  exact: bool = False) -> list[float]:
    """The rewards of the trained samples under --reward: agreement with the vote; the
    oracle's correctness; or random rewards at the vote's positive rate (exact: a random
    subset of exactly as many), seeded per question."""
    rewards = ttrl_rewards(answers, label, task, form=cfg.answer_form)
    if cfg.reward == "random":
        return random_rewards(rewards, seed + RANDOM_REWARD_SEED, exact)
    if cfg.reward == "oracle":
        if oracle is None:
            raise ValueError("--reward oracle: the mode must hand the method an OracleReward")
        return oracle(answers)
    return rewards


def vote_group(cfg, seed: int) -> SampleGroup:
    """The votes sample_and_vote draws from the question's prompt (Method.votes)."""
    return SampleGroup(cfg.n_votes, cfg.temperature, cfg.top_p, seed)


def sample_and_vote(engine, question, prompt: str, cfg, seed: int, timer, oracle=None,
                    exact: bool = False, votes=None):
    """Steps 1-2 of every method: sample n_votes (or take `votes`, the samples of
    vote_group(cfg, seed) that the mode drew), vote, reward the first n_train (train_rewards).

    Returns (samples, answers, label, vote stats, rewards of the first n_train).
    """
    samples = votes
    if samples is None:
        with timer("generate"):
            samples = engine.generate(prompt, cfg.n_votes, cfg.temperature, cfg.top_p,
                                      cfg.max_new_tokens, seed)
    with timer("vote"):
        answers, label, stats = pseudo_label(samples, question.task, cfg)
        rewards = train_rewards(answers[:cfg.n_train], label, question.task, cfg, seed, oracle,
                                exact)
    return samples, answers, label, stats, rewards


def skip_reason(label, rewards: list[float], stats=None, cfg=None) -> str | None:
    """Why an update would teach nothing: no label, or every reward the same (zero advantages);
    or why it is not worth the risk: a vote weaker than --min_majority_ratio (the label is
    then often wrong, and training on a wrong label is where the damage is; an oracle run
    knows its rewards are right and is not held back)."""
    if label is None:
        return "no answer could be extracted from any sample"
    weak = weak_vote(stats, cfg) if stats is not None and cfg is not None else None
    if weak is not None:
        return weak
    if len(set(rewards)) <= 1:
        return "all rewards equal" + (" (unanimous vote)" if rewards and rewards[0] == 1 else "")
    return None


def weak_vote(stats, cfg) -> str | None:
    """The weak-vote rule's reason to skip, or None (never for an oracle run)."""
    if cfg.reward != "oracle" and stats.majority_ratio < (cfg.min_majority_ratio or 0.0):
        return f"weak vote (majority ratio {stats.majority_ratio:.2f} < {cfg.min_majority_ratio})"
    return None


def budget(cfg):
    """The adaptive update budget, as the engines' `stop` rule: end the update after the step
    whose clipped share or KL passes its budget (the policy has moved far enough from the one
    that sampled), or whose forward pass finds the policy agreeing with the vote often enough
    (`agreement_estimate`: the step's stats describe the policy before that step's update, so
    the update ends one step after the target is reached); None when no budget is set."""
    if cfg.stop_clip_frac is None and cfg.stop_kl is None and not cfg.stop_agreement:
        return None

    def stop(stats: dict) -> bool:
        agree = agreement_estimate(stats)
        return ((cfg.stop_clip_frac is not None and stats.get("clip_frac", 0.0) > cfg.stop_clip_frac)
                or (cfg.stop_kl is not None and stats.get("kl", 0.0) > cfg.stop_kl)
                or (bool(cfg.stop_agreement) and agree is not None
                    and agree >= cfg.stop_agreement))
    return stop


def adapt(engine, question, prompt: str, cfg, seed: int, timer, oracle=None,
          votes=None) -> Adaptation:
    """One question's test-time update; returns what happened, for the results line."""
    samples, answers, label, stats, rewards = sample_and_vote(engine, question, prompt, cfg,
                                                              seed, timer, oracle, votes=votes)
    train = samples[:cfg.n_train]
    reason = skip_reason(label, rewards, stats, cfg)
    history = []
    if reason is None and cfg.steps_per_question > 0:
        # with gae the engine's critic turns the rewards into per-token advantages itself
        batch = TrainBatch.shared(engine.encode(prompt), [s.token_ids for s in train],
                                  group_advantages(rewards),
                                  rewards if cfg.advantage_estimator == "gae" else None,
                                  temperature=cfg.temperature)
        with timer("train"):
            history = engine.train(batch, grpo_loss,
                                   {"clip_eps": cfg.clip_eps, "kl_coef": cfg.kl_coef,
                                    **({"agreement": True} if cfg.stop_agreement else {})},
                                   cfg.steps_per_question, stop=budget(cfg))
    return Adaptation(answers, label, stats, rewards, reason, history)
