"""PPO's advantages with a critic: outcome reward on the last token, GAE, the clipped value loss.

Read top to bottom: rewards -> per-token rewards -> GAE (with the critic's values) -> whitening,
and the critic's own loss. The policy's loss is `grpo_loss` with per-token advantages [B, T].
The reward is the one GRPO uses (1 if the response agrees with the vote, else 0): nothing here
sees a reference answer. The scale engine (`--advantage_estimator gae`) calls these; responses
are right-padded, so `mask` is 1 on a prefix of each row.
"""
from __future__ import annotations

import torch


def token_rewards(rewards: list[float], mask: torch.Tensor) -> torch.Tensor:
    """Each response's outcome reward on its last token, zero elsewhere: [B, T]."""
    out = torch.zeros_like(mask)  # [B, T]
    last = mask.sum(-1).long() - 1  # [B] index of each response's last token
    rows = last >= 0  # an empty response has no token to carry its reward
    out[rows, last[rows]] = torch.tensor(rewards, dtype=out.dtype, device=out.device)[rows]
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lambd: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; returns (advantages, returns), both [B, T].

    rewards, values, mask: [B, T]; values[:, t] is V of the state before token t, and the state
    after the last token is terminal (V = 0). delta_t = r_t + gamma V_{t+1} - V_t and
    A_t = delta_t + gamma lambd A_{t+1}; returns = A + V are the critic's targets.
    """
    values = values * mask  # padded positions hold no state: V = 0 there, and after the end
    B, T = mask.shape
    advantages = torch.zeros_like(values)  # [B, T]
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)  # [B]
    next_adv = torch.zeros_like(next_value)  # [B]
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lambd * next_adv) * mask[:, t]
        next_value = values[:, t]
        advantages[:, t] = next_adv
    return advantages, (advantages + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the valid tokens of the whole batch; zero on padding. [B, T]"""
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * mask


def value_loss(values, old_values, returns, mask, value_clip: float = 0.5):
    """PPO's clipped value loss, 0.5 max((V - R)^2, (clip(V, V_old +- eps) - R)^2), token sums.

    values, old_values, returns, mask: [B, T]. Like the policy's ratio clip, the clip keeps one
    batch from moving a value further than eps from where it was when the batch was scored.
    Returns (loss summed over unmasked tokens, stats summed over unmasked tokens).
    """
    clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)  # [B, T]
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped - returns) ** 2
    loss = (0.5 * torch.maximum(unclipped_err, clipped_err) * mask).sum()
    stats = {"value_loss": float(loss.detach()),
             "value_clip_frac": float(((clipped_err > unclipped_err) * mask).sum()),
             "value_mean": float((values.detach() * mask).sum())}
    return loss, stats
