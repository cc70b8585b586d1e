"""STTRL's default method: vote on sampled answers, reward agreement, run a few GRPO steps.

`adapt` sees the question and the prompt, never the reference answer: that is what makes the
method label-free, and the signature is what keeps it so. The one exception is named: with
`--reward oracle` the mode hands in an `oracle` (sttrl/rewards/oracle.py) built from the
reference, and such a run is marked oracle everywhere it is reported.
"""
from __future__ import annotations

from sttrl.algorithms.grpo import (agreement_estimate, group_advantages, grpo_loss,
                                  heldout_agreement)
from sttrl.rewards.label import pseudo_label, skip_reason, train_rewards, weak_vote
from sttrl.rewards.reward import ttrl_rewards
from sttrl.settings import SamplingSettings, UpdateSettings, VoteSettings
from sttrl.types import Adaptation, SampleGroup, TrainBatch, TrustRegion


def vote_group(sampling: SamplingSettings, seed: int) -> SampleGroup:
    """The votes sample_and_vote draws from the question's prompt (Method.votes)."""
    return SampleGroup(sampling.n_votes, sampling.temperature, sampling.top_p, seed)


def sample_and_vote(engine, question, prompt: str, sampling: SamplingSettings,
                    vote: VoteSettings, seed: int, timer, oracle=None, exact: bool = False,
                    votes=None, label_votes=None):
    """Steps 1-2 of every method: sample n_votes (or take `votes`, the samples of
    vote_group(sampling, seed) that the mode drew), vote, reward the first n_train
    (rewards.label.train_rewards). With `label_votes` (--label_model base: the same group
    drawn from the initial model) those samples vote instead, and the policy's own samples
    are rewarded against their label.

    Returns (samples, answers, label, vote stats, rewards of the first n_train).
    """
    samples = votes
    if samples is None:
        with timer("generate"):
            samples = engine.generate(prompt, sampling.n_votes, sampling.temperature,
                                      sampling.top_p, sampling.max_new_tokens, seed)
    with timer("vote"):
        answers, label, stats = pseudo_label(samples, question.task, vote)
        if label_votes is not None:
            _, label, stats = pseudo_label(label_votes, question.task, vote)
        rewards = train_rewards(answers[:sampling.n_train], label, question.task, vote, seed,
                                oracle, exact)
    return samples, answers, label, stats, rewards


# The held-out estimate is not trusted once fewer than this share of the held-out votes carry
# the weight (effective sample size): the policy then samples responses the votes rarely show.
MIN_ESS_SHARE = 0.25


def trust_region(update: UpdateSettings) -> TrustRegion:
    """The per-question update's trust region (0 turns a budget off; with both off every step
    is still measured and logged, never undone)."""
    return TrustRegion(update.max_step_kl or 0.0, update.max_kl or 0.0, update.kl_backtracks)


def agreement(stats: dict, probe_agree: list[bool] | None) -> float | None:
    """The policy's estimated share of vote-agreeing answers after this step: from the held-out
    votes when there are some (`heldout_agreement`), else the trained samples' share."""
    if probe_agree and "probe_logratio" in stats:
        estimate, _ = heldout_agreement(stats["probe_logratio"], probe_agree,
                                        MIN_ESS_SHARE * len(probe_agree))
        return estimate
    return agreement_estimate(stats)


def budget(update: UpdateSettings, probe_agree: list[bool] | None = None):
    """The adaptive update budget, as the engines' `stop` rule: end the update after the step
    whose clipped share or KL passes its budget (the policy has moved far enough from the one
    that sampled), or after which the policy agrees with the vote often enough (`agreement`:
    with held-out votes, measured after the step; otherwise from the trained samples in the
    step's own forward pass, which describes the policy before the step, so the update then
    ends one step after the target is reached); None when no budget is set."""
    clip_frac, kl, target = update.stop_clip_frac, update.stop_kl, update.stop_agreement
    if clip_frac is None and kl is None and not target:
        return None

    def stop(stats: dict) -> bool:
        agree = agreement(stats, probe_agree)
        return ((clip_frac is not None and stats.get("clip_frac", 0.0) > clip_frac)
                or (kl is not None and stats.get("kl", 0.0) > kl)
                or (bool(target) and agree is not None and agree >= target))
    return stop


def with_agreement(history: list[dict], agree: list[bool]) -> list[dict]:
    """The step records with the log-ratio lists replaced by what they say (`agree` flags every
    voted sample, trained ones first): the policy's agreement with the vote after each step,
    estimated from the held-out votes (`agree_heldout`, with its effective sample size) and,
    in-sample, from the trained ones (`agree_trained`)."""
    out = []
    for stats in history:
        stats = dict(stats)
        trained = stats.pop("train_logratio", None)
        held = stats.pop("probe_logratio", None)
        if trained is not None:
            stats["agree_trained"], _ = heldout_agreement(trained, agree[:len(trained)])
        if held is not None:
            stats["agree_heldout"], stats["agree_ess"] = heldout_agreement(
                held, agree[len(agree) - len(held):])
        out.append(stats)
    return out


def adapt(engine, question, prompt: str, sampling: SamplingSettings, vote: VoteSettings,
          update: UpdateSettings, seed: int, timer, oracle=None, votes=None,
          label_votes=None) -> Adaptation:
    """One question's test-time update; returns what happened, for the results line."""
    samples, answers, label, stats, rewards = sample_and_vote(engine, question, prompt, sampling,
                                                              vote, seed, timer, oracle,
                                                              votes=votes, label_votes=label_votes)
    # which of the policy's samples agree with the label (the vote's clusters are the base
    # model's samples' when it voted)
    agree = ([c == stats.winner for c in stats.sample_cluster] if label_votes is None else
             [r > 0 for r in ttrl_rewards(answers, label, question.task, form=vote.answer_form)])
    train = samples[:sampling.n_train]
    weak = weak_vote(stats, update.min_majority_ratio, vote.reward, update.min_vote_margin)
    reason = skip_reason(label, rewards, weak)
    history = []
    if reason is None and update.steps > 0:
        gae = update.advantage_estimator == "gae"
        n_train = sampling.n_train
        # The votes after n_train were drawn with the trained ones and are never trained on:
        # after each step their importance weights say how often the policy now agrees.
        held_out = samples[n_train:] if not gae and update.agreement_estimate == "heldout" \
            else []
        probe_agree = agree[n_train:n_train + len(held_out)]
        # with gae the engine's critic turns the rewards into per-token advantages itself
        batch = TrainBatch.shared(engine.encode(prompt), [s.token_ids for s in train],
                                  group_advantages(rewards), rewards if gae else None,
                                  temperature=sampling.temperature,
                                  probe=[s.token_ids for s in held_out] or None)
        with timer("train"):
            history = engine.train(batch, grpo_loss,
                                   {"clip_eps": update.clip_eps, "kl_coef": update.kl_coef,
                                    **({"agreement": True} if update.stop_agreement else {})},
                                   update.steps, stop=budget(update, probe_agree),
                                   trust=None if gae else trust_region(update))
        history = with_agreement(history, agree[:n_train + len(held_out)])
    return Adaptation(answers, label, stats, rewards, reason, history)
