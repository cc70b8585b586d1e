"""GRPO for one question: group-normalised advantages and the clipped policy-gradient loss.

Read top to bottom: rewards -> advantages -> per-token loss. The engine runs the forward pass
and hands the loss per-token log-probs; the loss returns token sums so micro-batches add up to
one token mean over the whole batch.
"""
from __future__ import annotations

import math

import torch

# verl's `low_var_kl` clamps each token's k3 to [-10, 10] in the loss; k3 >= 0, so only the top
# bound acts, and it ends the KL gradient of a token whose policy has run far from the reference.
KL_CLAMP = 10.0


def group_advantages(rewards: list[float], eps: float = 1e-6) -> list[float]:
    """(r - mean) / (std + eps) over the group, with the sample (unbiased, n - 1) std as TRL,
    verl and OpenRLHF use; all-equal rewards give zeros, and so does a group of one (no std)."""
    r = torch.tensor(rewards, dtype=torch.float64)
    if r.numel() < 2:
        return [0.0] * r.numel()
    adv = (r - r.mean()) / (r.std() + eps)
    return adv.tolist()


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || ref) per token: exp(d) - d - 1 with d = ref - new.

    Unbiased, always >= 0, and low-variance when the two are close, as they are within a question.
    """
    d = ref_logprobs - logprobs
    return torch.exp(d) - d - 1


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask,
              clip_eps: float = 0.2, kl_coef: float = 0.0, agreement: bool = False,
              dual_clip: float = 0.0, kl_clamp: float = KL_CLAMP):
    """Clipped-ratio policy gradient plus k3 KL to the reference, summed over response tokens.

    The KL term is k3 clamped to [-kl_clamp, kl_clamp] per token (verl's `low_var_kl`);
    `dual_clip` c > 1 caps a negative-advantage token's loss at -A * c (dual-clip PPO, Ye et
    al. 2020, verl's `clip_ratio_c`), so a ratio far above 1 cannot push its token down without
    bound; 0 leaves it off.

    logprobs, old_logprobs, ref_logprobs, mask: [B, T]; advantages: [B] (one per response,
    GRPO) or [B, T] (one per token, PPO with GAE: sttrl/algorithms/gae.py).
    Returns (loss summed over unmasked tokens, stats summed over unmasked tokens). With
    `agreement` (GRPO only) the stats also hold `agree_w` and `all_w`, whose ratio is
    `agreement_estimate`.
    """
    adv = advantages[:, None] if advantages.dim() == 1 else advantages  # [B, 1] or [B, T]
    ratio = torch.exp(logprobs - old_logprobs)  # [B, T]
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    per_token = torch.maximum(unclipped, clipped)  # pessimistic bound, as in PPO
    stats = {"clip_frac": float(((clipped > unclipped) * mask).sum())}
    if dual_clip > 0:
        capped = torch.minimum(per_token, -adv * dual_clip)
        stats["clip_frac_lower"] = float(((capped < per_token) * (adv < 0) * mask).sum())
        per_token = torch.where(adv < 0, capped, per_token)
    if kl_coef > 0 and ref_logprobs is not None:
        kl = kl_k3(logprobs, ref_logprobs).clamp(-kl_clamp, kl_clamp)
        per_token = per_token + kl_coef * kl
        stats["kl"] = float((kl.detach() * mask).sum())
    if agreement and advantages.dim() == 1:
        # Importance weights of whole responses under the current policy, relative to the one
        # that sampled them; clamped so a long response cannot overflow the sum.
        seq = ((logprobs - old_logprobs).detach() * mask).sum(-1).clamp(-30.0, 30.0)  # [B]
        w = torch.exp(seq.double())
        stats["agree_w"] = float((w * (advantages > 0)).sum())
        stats["all_w"] = float(w.sum())
    loss = (per_token * mask).sum()
    stats["loss"] = float(loss.detach())
    return loss, stats


def agreement_estimate(stats: dict) -> float | None:
    """The current policy's probability of a response that agreed with the vote, estimated
    without sampling: the self-normalised importance-weighted share of the trained responses
    with a positive advantage (at the first step, before any update, simply their share).
    Both sums are divided alike when the engines merge micro-batches and ranks, so the ratio
    survives merging. None when the loss did not compute it."""
    total = stats.get("all_w")
    return stats["agree_w"] / total if total else None


def heldout_agreement(logratios: list[float], agree: list[bool],
                      min_ess: float = 0.0) -> tuple[float | None, float]:
    """The current policy's chance of a response agreeing with the vote, from responses it was
    not trained on: the self-normalised importance-weighted share of agreeing ones among the
    held-out votes, each weighted by exp(its summed log-ratio, current over sampling policy).

    The held-out votes are independent draws from the policy that sampled, outside the
    gradient, so unlike the trained samples' share (`agreement_estimate`) the estimate is not
    pulled up by the step having raised exactly those responses. Returns (estimate, effective
    sample size); the estimate is None when there are no held-out votes or the effective sample
    size (sum w)^2 / sum w^2 is below `min_ess` (a few responses carry all the weight).
    """
    if not logratios:
        return None, 0.0
    top = max(logratios)
    w = [math.exp(x - top) for x in logratios]  # minus the max: no overflow
    total, squares = sum(w), sum(x * x for x in w)
    ess = total * total / squares if squares > 0 else 0.0
    if ess < min_ess:
        return None, ess
    return sum(x for x, a in zip(w, agree) if a) / total, ess
