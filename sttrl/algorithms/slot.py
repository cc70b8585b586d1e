"""SLOT (Hu et al., 2025): one vector added to the final hidden states, fitted to the prompt.

For each question a delta in R^hidden starts at zero, is optimised by next-token cross-entropy
on the prompt tokens alone (the hidden states come from one prefill and stay fixed, so each step
costs only the LM head), and is then added before the LM head at every decoding step through
the engine's head hook. The model's weights never change; reset removes the hook (delta zero).
"""
from __future__ import annotations

import torch

from sttrl.algorithms.ttrl import sample_and_vote
from sttrl.settings import SamplingSettings, UpdateSettings, VoteSettings
from sttrl.types import Adaptation

WEIGHT_DECAY = 1e-8
ADAM_EPS = 1e-5
# The paper's lr (0.1) was set for its models, the narrowest 1,536 wide (Qwen2.5-Math-1.5B).
# Each AdamW step moves every coordinate of the delta by about lr, so a narrower model takes a
# proportionally smaller default: at 0.1 the 576-wide embedded model stopped answering
# (docs/RESULTS.md, "SLOT's lr on the embedded model").
PAPER_WIDTH = 1536


def default_lr(paper_lr: float, width: int | None) -> float:
    """SLOT's default lr for a model of hidden width `width`: the paper's at 1,536 and wider,
    scaled down in proportion below (the paper's when the width is not known)."""
    return paper_lr * min(1.0, width / PAPER_WIDTH) if width else paper_lr


class HiddenDelta:
    """The head hook SLOT hands the engine: hidden states [..., d] -> hidden + delta."""

    def __init__(self, delta: torch.Tensor):
        self.delta = delta  # [d], fp32

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.delta.to(hidden.dtype)


def fit_delta(engine, prompt_ids: list[int], lr: float, steps: int,
              start: torch.Tensor | None = None) -> tuple[torch.Tensor, list[dict]]:
    hidden = engine.prompt_hidden(prompt_ids).float()  # [P, d], fixed
    targets = torch.tensor(prompt_ids[1:], device=hidden.device)  # [P-1]
    delta = torch.zeros(hidden.shape[-1], device=hidden.device, dtype=torch.float32)
    if start is not None:
        delta = start.detach().clone().float()
    delta.requires_grad_(True)
    opt = torch.optim.AdamW([delta], lr=lr, weight_decay=WEIGHT_DECAY, eps=ADAM_EPS)
    history = []
    for _ in range(steps):
        # hidden and delta in fp32; head_logits casts to the head's dtype (bf16 on a GPU);
        # the loss in fp32
        logits = engine.head_logits(hidden[:-1] + delta).float()  # [P-1, V]
        loss = torch.nn.functional.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append({"loss": float(loss.detach()), "delta_norm": float(delta.detach().norm())})
    return delta.detach(), history


def adapt(engine, question, prompt: str, sampling: SamplingSettings, vote: VoteSettings,
          update: UpdateSettings, seed: int, timer, oracle=None, votes=None) -> Adaptation:
    # SLOT does not use the vote; it is taken so every method reports the same metrics.
    _, answers, label, stats, rewards = sample_and_vote(engine, question, prompt, sampling, vote,
                                                        seed, timer, votes=votes)
    history = []
    if update.steps > 0:
        with timer("train"):
            # continuous mode starts from the delta the previous questions left behind
            previous = engine.head_hook.delta if isinstance(engine.head_hook, HiddenDelta) else None
            delta, history = fit_delta(engine, engine.encode(prompt), update.lr, update.steps,
                                       previous)
            engine.set_head_hook(HiddenDelta(delta))
    return Adaptation(answers, label, stats, rewards, None, history)
