"""MEMO (Zhang, Levine, Finn, 2021), marginal entropy minimisation, carried to text.

The marginal p(a) is the share of sampled answers that fall in answer cluster a, pooled over B
phrasings of the prompt. Minimising its entropy H = -sum_a p(a) log p(a) by policy gradient gives
each sample the reward log p(a(y)) (the +1 in the exact gradient is absorbed by the baseline):
answers the model already favours across phrasings are pushed up, stray ones down.
"""
from __future__ import annotations

import math

from sttrl.algorithms.grpo import group_advantages, grpo_loss
from sttrl.data.prompts import format_prompt
from sttrl.rewards import extract_answer, ttrl_rewards, voting_weights
from sttrl.rewards import vote as elect
from sttrl.rewards.label import skip_reason
from sttrl.settings import SamplingSettings, UpdateSettings, VoteSettings
from sttrl.types import Adaptation, SampleGroup, TrainBatch


def marginal_rewards(answers: list[str | None], task: str,
                     form: str = "strict") -> tuple[list[float], float]:
    """Per-sample reward log p(a) under the pooled marginal, and that marginal's entropy.

    An unanswered sample counts as a cluster of its own (probability 1/N): it is never the mode.
    """
    _, stats = elect(answers, None, task, form=form)
    n = len(answers)
    shares = [stats.cluster_counts[rep] / n for rep in stats.representatives]
    rewards = [math.log(shares[c]) if c is not None else math.log(1 / n)
               for c in stats.sample_cluster]
    entropy = -sum(p * math.log(p) for p in shares if p > 0)
    n_none = stats.n_none
    if n_none:
        entropy -= n_none * (1 / n) * math.log(1 / n)
    return rewards, entropy


def variant_group(sampling: SamplingSettings, seed: int, v: int) -> SampleGroup:
    """The samples of phrasing v; phrasing 0 is the question's own prompt (Method.votes)."""
    return SampleGroup(max(1, sampling.n_votes // sampling.memo_variants), sampling.temperature,
                       sampling.top_p, seed + 1000 * v)


def adapt(engine, question, prompt: str, sampling: SamplingSettings, vote: VoteSettings,
          update: UpdateSettings, seed: int, timer, oracle=None, votes=None) -> Adaptation:
    """`votes`: phrasing 0's samples (variant_group(sampling, seed, 0)) if the mode drew them."""
    B = sampling.memo_variants
    per = max(1, sampling.n_votes // B)
    form = vote.answer_form
    prompts, samples = [], []
    with timer("generate"):
        for v in range(B):
            text = prompt if v == 0 else format_prompt(question, engine.tokenizer,
                                                       sampling.prompt_family, variant=v)
            g = variant_group(sampling, seed, v)
            got = votes if v == 0 and votes is not None else engine.generate(
                text, g.n, g.temperature, g.top_p, sampling.max_new_tokens, g.seed)
            prompts += [engine.encode(text)] * len(got)
            samples += got
    with timer("vote"):
        answers = [extract_answer(s.text, question.task) for s in samples]
        weights = voting_weights(vote.voting_function, samples, tau=vote.energy_tau,
                                 keep_frac=vote.confidence_keep, answers=answers,
                                 measure=vote.confidence_measure)
        label, stats = elect(answers, weights, question.task, form=form)
        memo_rewards, entropy = marginal_rewards(answers, question.task, form)
        # train on an equal share of each phrasing's samples
        take = [v * per + i for v in range(B) for i in range(max(1, sampling.n_train // B))]
        rewards = ttrl_rewards([answers[i] for i in take], label, question.task, form=form)
    reason = skip_reason(label, [memo_rewards[i] for i in take])
    history = []
    if reason is None and update.steps > 0:
        batch = TrainBatch([prompts[i] for i in take], [samples[i].token_ids for i in take],
                           group_advantages([memo_rewards[i] for i in take]),
                           temperature=sampling.temperature)
        with timer("train"):
            history = engine.train(batch, grpo_loss,
                                   {"clip_eps": update.clip_eps, "kl_coef": update.kl_coef},
                                   update.steps)
    # trained samples first, so answers[:len(rewards)] lines up with rewards for the metrics
    rest = sorted(set(range(len(answers))) - set(take))
    return Adaptation([answers[i] for i in take + rest], label, stats, rewards, reason, history,
                      extra={"marginal_entropy": entropy, "variants": B})
