"""TTFT, test-time fine-tuning: cross-entropy on the samples that agree with the vote.

Self-consistency filtering turns the vote into supervised data: the responses whose answer
matches the pseudo-label are treated as demonstrations. Unlike GRPO there is no negative signal,
so a unanimous vote still trains (it sharpens what the model already says).
"""
from __future__ import annotations

from sttrl.algorithms.ttrl import sample_and_vote
from sttrl.rewards.label import weak_vote
from sttrl.settings import SamplingSettings, UpdateSettings, VoteSettings
from sttrl.types import Adaptation, TrainBatch


def sft_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask):
    """Negative log-likelihood summed over response tokens, each response weighted by advantages."""
    nll = -(logprobs * mask * advantages[:, None]).sum()
    return nll, {"loss": float(nll.detach())}


def adapt(engine, question, prompt: str, sampling: SamplingSettings, vote: VoteSettings,
          update: UpdateSettings, seed: int, timer, oracle=None, votes=None,
          label_votes=None) -> Adaptation:
    # --reward random: a random subset of the same size as the agreeing samples
    samples, answers, label, stats, rewards = sample_and_vote(engine, question, prompt, sampling,
                                                              vote, seed, timer, oracle,
                                                              exact=True, votes=votes,
                                                              label_votes=label_votes)
    keep = [s.token_ids for s, r in zip(samples, rewards) if r > 0]
    reason = None if keep else ("no answer could be extracted from any sample" if label is None
                                else "no trained sample agrees with the vote")
    weak = weak_vote(stats, update.min_majority_ratio, vote.reward, update.min_vote_margin)
    if keep and weak is not None:
        keep, reason = [], weak
    history = []
    if keep and update.steps > 0:
        # SFT on the samples: untempered log-likelihood (temperature 1.0), as TRL's SFT
        # trainer computes it, whatever temperature the samples were drawn at.
        batch = TrainBatch.shared(engine.encode(prompt), keep, [1.0] * len(keep))
        with timer("train"):
            history = engine.train(batch, sft_loss, {}, update.steps)
    return Adaptation(answers, label, stats, rewards, reason, history)
