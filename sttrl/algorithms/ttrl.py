"""STTRL's default method: vote on sampled answers, reward agreement, run a few GRPO steps.

`adapt` sees the question and the prompt, never the reference answer: that is what makes the
method label-free, and the signature is what keeps it so. The one exception is named: with
`--reward oracle` the mode hands in an `oracle` (sttrl/rewards/oracle.py) built from the
reference, and such a run is marked oracle everywhere it is reported.
"""
from __future__ import annotations

from sttrl.algorithms.grpo import (agreement_estimate, group_advantages, grpo_loss,
                                  heldout_agreement)
from sttrl.rewards import extract_answer, random_rewards, ttrl_rewards, vote, voting_weights
from sttrl.types import Adaptation, SampleGroup, TrainBatch, TrustRegion


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


# The held-out estimate is not trusted once fewer than this share of the held-out votes carry
# the weight (effective sample size): the policy then samples responses the votes rarely show.
MIN_ESS_SHARE = 0.25


def trust_region(cfg) -> TrustRegion:
    """The per-question update's trust region from the config (0 turns a budget off; with both
    off every step is still measured and logged, never undone)."""
    return TrustRegion(cfg.max_step_kl or 0.0, cfg.max_kl or 0.0, cfg.kl_backtracks)


def agreement(stats: dict, probe_agree: list[bool] | None) -> float | None:
    """The policy's estimated share of vote-agreeing answers after this step: from the held-out
    votes when there are some (`heldout_agreement`), else the trained samples' share."""
    if probe_agree and "probe_logratio" in stats:
        estimate, _ = heldout_agreement(stats["probe_logratio"], probe_agree,
                                        MIN_ESS_SHARE * len(probe_agree))
        return estimate
    return agreement_estimate(stats)


def budget(cfg, probe_agree: list[bool] | None = None):
    """The adaptive update budget, as the engines' `stop` rule: end the update after the step
    whose clipped share or KL passes its budget (the policy has moved far enough from the one
    that sampled), or after which the policy agrees with the vote often enough (`agreement`:
    with held-out votes, measured after the step; otherwise from the trained samples in the
    step's own forward pass, which describes the policy before the step, so the update then
    ends one step after the target is reached); None when no budget is set."""
    if cfg.stop_clip_frac is None and cfg.stop_kl is None and not cfg.stop_agreement:
        return None

    def stop(stats: dict) -> bool:
        agree = agreement(stats, probe_agree)
        return ((cfg.stop_clip_frac is not None and stats.get("clip_frac", 0.0) > cfg.stop_clip_frac)
                or (cfg.stop_kl is not None and stats.get("kl", 0.0) > cfg.stop_kl)
                or (bool(cfg.stop_agreement) and agree is not None
                    and agree >= cfg.stop_agreement))
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


def adapt(engine, question, prompt: str, cfg, seed: int, timer, oracle=None,
          votes=None) -> Adaptation:
    """One question's test-time update; returns what happened, for the results line."""
    samples, answers, label, stats, rewards = sample_and_vote(engine, question, prompt, cfg,
                                                              seed, timer, oracle, votes=votes)
    train = samples[:cfg.n_train]
    reason = skip_reason(label, rewards, stats, cfg)
    history = []
    if reason is None and cfg.steps_per_question > 0:
        gae = cfg.advantage_estimator == "gae"
        # The votes after n_train were drawn with the trained ones and are never trained on:
        # after each step their importance weights say how often the policy now agrees.
        held_out = samples[cfg.n_train:] if not gae and cfg.agreement_estimate == "heldout" \
            else []
        probe_agree = [stats.sample_cluster[i] == stats.winner
                       for i in range(cfg.n_train, cfg.n_train + len(held_out))]
        # with gae the engine's critic turns the rewards into per-token advantages itself
        batch = TrainBatch.shared(engine.encode(prompt), [s.token_ids for s in train],
                                  group_advantages(rewards), rewards if gae else None,
                                  temperature=cfg.temperature,
                                  probe=[s.token_ids for s in held_out] or None)
        with timer("train"):
            history = engine.train(batch, grpo_loss,
                                   {"clip_eps": cfg.clip_eps, "kl_coef": cfg.kl_coef,
                                    **({"agreement": True} if cfg.stop_agreement else {})},
                                   cfg.steps_per_question, stop=budget(cfg, probe_agree),
                                   trust=None if gae else trust_region(cfg))
        history = with_agreement(history, [c == stats.winner for c in
                                           stats.sample_cluster[:cfg.n_train + len(held_out)]])
    return Adaptation(answers, label, stats, rewards, reason, history)
