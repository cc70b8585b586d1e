"""STTRL's default method: vote on sampled answers, reward agreement, run a few GRPO steps.

`adapt` sees the question and the prompt, never the reference answer: that is what makes the
method label-free, and the signature is what keeps it so.
"""
from __future__ import annotations

from sttrl.algorithms.grpo import group_advantages, grpo_loss
from sttrl.rewards import extract_answer, ttrl_rewards, vote, voting_weights
from sttrl.types import Adaptation, TrainBatch


def pseudo_label(samples, task: str, cfg):
    """Extract every sample's answer and vote: (answers, label or None, vote stats)."""
    answers = [extract_answer(s.text, task) for s in samples]
    weights = voting_weights(cfg.voting_function, samples, tau=cfg.energy_tau,
                             keep_frac=cfg.confidence_keep)
    label, stats = vote(answers, weights, task)
    return answers, label, stats


def sample_and_vote(engine, question, prompt: str, cfg, seed: int, timer):
    """Steps 1-2 of every method: sample n_votes, vote, reward the first n_train against the label.

    Returns (samples, answers, label, vote stats, rewards of the first n_train).
    """
    with timer("generate"):
        samples = engine.generate(prompt, cfg.n_votes, cfg.temperature, cfg.top_p,
                                  cfg.max_new_tokens, seed)
    with timer("vote"):
        answers, label, stats = pseudo_label(samples, question.task, cfg)
        rewards = ttrl_rewards(answers[:cfg.n_train], label, question.task)
    return samples, answers, label, stats, rewards


def skip_reason(label, rewards: list[float]) -> str | None:
    """Why an update would teach nothing: no label, or every reward the same (zero advantages)."""
    if label is None:
        return "no answer could be extracted from any sample"
    if len(set(rewards)) <= 1:
        return "all rewards equal" + (" (unanimous vote)" if rewards and rewards[0] == 1 else "")
    return None


def adapt(engine, question, prompt: str, cfg, seed: int, timer) -> Adaptation:
    """One question's test-time update; returns what happened, for the results line."""
    samples, answers, label, stats, rewards = sample_and_vote(engine, question, prompt, cfg,
                                                              seed, timer)
    train = samples[:cfg.n_train]
    reason = skip_reason(label, rewards)
    history = []
    if reason is None and cfg.steps_per_question > 0:
        # with gae the engine's critic turns the rewards into per-token advantages itself
        batch = TrainBatch.shared(engine.encode(prompt), [s.token_ids for s in train],
                                  group_advantages(rewards),
                                  rewards if cfg.advantage_estimator == "gae" else None,
                                  temperature=cfg.temperature)
        with timer("train"):
            history = engine.train(batch, grpo_loss,
                                   {"clip_eps": cfg.clip_eps, "kl_coef": cfg.kl_coef},
                                   cfg.steps_per_question)
    return Adaptation(answers, label, stats, rewards, reason, history)
