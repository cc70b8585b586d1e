"""The local engine's measured update: every optimiser step followed by a forward pass over the
question's own responses, and kept only inside the trust region (algorithms/trust.py).

`LocalEngine.train(..., trust=...)` comes here; the plain loop (dataset mode's mini-batches,
no measurement) stays in local.py.
"""
from __future__ import annotations

import torch

from sttrl.algorithms.trust import controlled_step, next_scale, spent, token_mean_kl
from sttrl.engines.sequences import param_distance, response_mask, sequence_logratio
from sttrl.types import TrainBatch, TrustRegion


def train_measured(engine, batch: TrainBatch, loss_fn, loss_kwargs: dict, steps: int,
                   lrs, stop, trust: TrustRegion) -> list[dict]:
    """Up to `steps` optimiser steps on the whole batch, each measured after it.

    Old log-probs (the ratio's denominator) and the reference are measured once, before the
    first step, by the same scoring pass that measures every step: so the KLs compare like with
    like. While the weights are the initial ones the policy that sampled is the reference.
    """
    rows = list(range(len(batch.responses)))
    micro, n_tokens = engine._plan(batch, rows)
    mask = response_mask(batch.responses, engine.device)  # [B, T]
    probe = batch.probe or []
    prompts = batch.prompts + [batch.prompts[0]] * len(probe)
    responses = batch.responses + probe

    def measure() -> dict:
        lp = engine.score(prompts, responses, temperature=batch.temperature)  # [B + P, T']
        return {"train": lp[:len(rows), :mask.shape[1]], "probe": lp[len(rows):]}

    start = measure()
    ref = start["train"]  # [B, T]
    if not engine.pristine:  # continuous mode: the reference is the initial model
        ref = engine._reference_logprobs(batch)[:, :mask.shape[1]]
    pre, kl_ref = start["train"], token_mean_kl(start["train"], ref, mask)
    use_kl = loss_kwargs.get("kl_coef", 0.0) > 0
    base_lr = engine.optimizer.param_groups[0]["lr"]
    scale, history = 1.0, []
    for step in range(steps):
        engine.optimizer.zero_grad(set_to_none=True)
        sums: dict = {}
        for idx, mb_responses, mb_mask, adv in micro:
            width = mb_mask.shape[1]
            new = engine._logprobs(engine.model, batch.prompts[idx[0]], mb_responses,
                                   batch.temperature)  # [b, T]
            loss_sum, stats = loss_fn(new, start["train"][idx, :width],
                                      ref[idx, :width] if use_kl else None, adv, mb_mask,
                                      **loss_kwargs)
            (loss_sum / n_tokens).backward()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
        grad_norm = clip_gradient(engine)
        step_lr = lrs[step] if lrs is not None else base_lr
        was = (engine.pristine, engine.policy_version)
        kept: dict = {}
        outcome = controlled_step(
            trust, step_lr * scale, lambda lr: take_step(engine, lr), measure,
            keep=lambda: kept.update(keep_state(engine)),
            restore=lambda: restore_state(engine, kept, was),
            pre=pre, ref=ref, mask=mask, ref_before=kl_ref)
        merged = {k: v / n_tokens for k, v in sums.items()}
        merged.update(grad_norm=float(grad_norm), lr=outcome["lr"], undone=outcome["undone"],
                      accepted=outcome["accepted"], kl_step=outcome["kl_step"],
                      kl_ref=outcome["kl_ref"])
        if outcome["accepted"]:
            merged["param_change"] = param_distance(engine.params, kept["params"])
            post = outcome["measured"]
            pre, kl_ref = post["train"], outcome["kl_ref"]
            merged["train_logratio"] = sequence_logratio(post["train"], start["train"],
                                                         batch.responses)
            if probe:
                merged["probe_logratio"] = sequence_logratio(post["probe"], start["probe"], probe)
            scale = next_scale(trust, outcome["lr"] / step_lr, outcome["kl_step"])
        history.append(merged)
        if not outcome["accepted"] or spent(trust, kl_ref) or (stop is not None and stop(merged)):
            break
    engine.set_lr(base_lr)
    return history


def clip_gradient(engine) -> torch.Tensor:
    """Clip the gradient to norm grad_clip; with SGD scale it to exactly that norm, so a step's
    length is lr x grad_clip whatever the gradient's size. Returns the norm before."""
    norm = torch.nn.utils.clip_grad_norm_(engine.params, engine.grad_clip)
    if isinstance(engine.optimizer, torch.optim.SGD) and 0 < float(norm) < engine.grad_clip:
        for p in engine.params:
            if p.grad is not None:
                p.grad.mul_(engine.grad_clip / float(norm))
    return norm


def take_step(engine, lr: float) -> None:
    engine.set_lr(lr)
    engine.optimizer.step()
    engine.pristine, engine.policy_version = False, engine.policy_version + 1


def keep_state(engine) -> dict:
    """Copies of the weights and optimiser state, for an exact undo of the next step."""
    state = engine.optimizer.state
    return {"params": [p.detach().clone() for p in engine.params],
            "optimizer": {p: {k: v.clone() if torch.is_tensor(v) else v
                              for k, v in state[p].items()}
                          for p in engine.params if p in state}}


@torch.no_grad()
def restore_state(engine, kept: dict, was: tuple) -> None:
    """Undo a step: weights and optimiser state bit for bit as `keep_state` saw them, and the
    engine's record of them (pristine, policy version) as it was."""
    for p, saved in zip(engine.params, kept["params"]):
        p.copy_(saved)
    for p in engine.params:
        if p in kept["optimizer"]:
            engine.optimizer.state[p] = {k: v.clone() if torch.is_tensor(v) else v
                                         for k, v in kept["optimizer"][p].items()}
        else:
            engine.optimizer.state.pop(p, None)
    engine.pristine, engine.policy_version = was
