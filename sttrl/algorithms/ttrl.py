"""STTRL's default method: vote on sampled answers, reward agreement, run a few GRPO steps.

`adapt` sees the question and the prompt, never the reference answer: that is what makes the
method label-free, and the signature is what keeps it so. The one exception is named: with
`--reward oracle` the mode hands in an `oracle` (sttrl/rewards/oracle.py) built from the
reference, and such a run is marked oracle everywhere it is reported.
"""
from __future__ import annotations

from sttrl.algorithms.grpo import agreement_estimate, group_advantages, grpo_loss
from sttrl.rewards.label import pseudo_label, skip_reason, train_rewards, weak_vote
from sttrl.settings import SamplingSettings, UpdateSettings, VoteSettings
from sttrl.types import Adaptation, SampleGroup, TrainBatch


def vote_group(sampling: SamplingSettings, seed: int) -> SampleGroup:
    """The votes sample_and_vote draws from the question's prompt (Method.votes)."""
    return SampleGroup(sampling.n_votes, sampling.temperature, sampling.top_p, seed)


def sample_and_vote(engine, question, prompt: str, sampling: SamplingSettings,
                    vote: VoteSettings, seed: int, timer, oracle=None, exact: bool = False,
                    votes=None):
    """Steps 1-2 of every method: sample n_votes (or take `votes`, the samples of
    vote_group(sampling, seed) that the mode drew), vote, reward the first n_train
    (rewards.label.train_rewards).

    Returns (samples, answers, label, vote stats, rewards of the first n_train).
    """
    samples = votes
    if samples is None:
        with timer("generate"):
            samples = engine.generate(prompt, sampling.n_votes, sampling.temperature,
                                      sampling.top_p, sampling.max_new_tokens, seed)
    with timer("vote"):
        answers, label, stats = pseudo_label(samples, question.task, vote)
        rewards = train_rewards(answers[:sampling.n_train], label, question.task, vote, seed,
                                oracle, exact)
    return samples, answers, label, stats, rewards


def budget(update: UpdateSettings):
    """The adaptive update budget, as the engines' `stop` rule: end the update after the step
    whose clipped share or KL passes its budget (the policy has moved far enough from the one
    that sampled), or whose forward pass finds the policy agreeing with the vote often enough
    (`agreement_estimate`: the step's stats describe the policy before that step's update, so
    the update ends one step after the target is reached); None when no budget is set."""
    clip_frac, kl, agreement = update.stop_clip_frac, update.stop_kl, update.stop_agreement
    if clip_frac is None and kl is None and not agreement:
        return None

    def stop(stats: dict) -> bool:
        agree = agreement_estimate(stats)
        return ((clip_frac is not None and stats.get("clip_frac", 0.0) > clip_frac)
                or (kl is not None and stats.get("kl", 0.0) > kl)
                or (bool(agreement) and agree is not None and agree >= agreement))
    return stop


def adapt(engine, question, prompt: str, sampling: SamplingSettings, vote: VoteSettings,
          update: UpdateSettings, seed: int, timer, oracle=None, votes=None) -> Adaptation:
    """One question's test-time update; returns what happened, for the results line."""
    samples, answers, label, stats, rewards = sample_and_vote(engine, question, prompt, sampling,
                                                              vote, seed, timer, oracle,
                                                              votes=votes)
    train = samples[:sampling.n_train]
    reason = skip_reason(label, rewards, weak_vote(stats, update.min_majority_ratio, vote.reward))
    history = []
    if reason is None and update.steps > 0:
        # with gae the engine's critic turns the rewards into per-token advantages itself
        batch = TrainBatch.shared(engine.encode(prompt), [s.token_ids for s in train],
                                  group_advantages(rewards),
                                  rewards if update.advantage_estimator == "gae" else None,
                                  temperature=sampling.temperature)
        with timer("train"):
            history = engine.train(batch, grpo_loss,
                                   {"clip_eps": update.clip_eps, "kl_coef": update.kl_coef,
                                    **({"agreement": True} if update.stop_agreement else {})},
                                   update.steps, stop=budget(update))
    return Adaptation(answers, label, stats, rewards, reason, history)
