"""The original TTRL (dataset level): RL on the whole unlabeled test set over episodes.

Each step takes `prompts_per_step` questions, samples `n_votes` answers per question, votes,
rewards the first `n_train` of each group against its own pseudo-label, normalises advantages
within each group, and takes one GRPO step on all groups together. The learning rate warms up
linearly over `warmup_ratio` of the steps, then decays along a cosine. Mean pass@1 over the set
is evaluated before training, every `eval_every` steps, and at the end.

Resume: the model, optimiser and step counter are checkpointed at every evaluation, before the
evaluation's line is written; a killed run restarts from the last checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
import time
import zlib
from pathlib import Path

import torch

from sttrl.algorithms.grpo import group_advantages, grpo_loss
from sttrl.algorithms.ttrl import pseudo_label
from sttrl.data import format_prompt
from sttrl.files import append_jsonl, read_jsonl, rewrite_jsonl, write_atomic, write_json_atomic
from sttrl.modes.common import question_seed, sample_answers
from sttrl.rewards import ttrl_rewards
from sttrl.rewards.metrics import pass_at_1
from sttrl.types import TrainBatch


def lr_at(step: int, total: int, peak: float, warmup_ratio: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to zero (step counts from 0)."""
    warm = max(1, math.ceil(total * warmup_ratio)) if warmup_ratio > 0 else 0
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def evaluate_set(engine, examples, prompts, cfg) -> float:
    """Mean pass@1 over the set: n_eval samples per question at val_temp / val_top_p."""
    scores = []
    for ex, prompt in zip(examples, prompts):
        answers = sample_answers(engine, prompt, ex.question.task, cfg.n_eval, cfg.val_temp,
                                 cfg.val_top_p, cfg.max_new_tokens,
                                 question_seed(cfg.seed, ex.question.id) + 1)
        scores.append(pass_at_1(answers, ex.answer, ex.question.task))
    return sum(scores) / len(scores)


def train_step(engine, questions, prompts, cfg, step_seed: int) -> dict:
    """One GRPO (gae: PPO) step over a batch of questions; the reference answers are not passed in."""
    batch_prompts, responses, advantages, all_rewards, kept = [], [], [], [], 0
    for j, (q, prompt) in enumerate(zip(questions, prompts)):
        samples = engine.generate(prompt, cfg.n_votes, cfg.temperature, cfg.top_p,
                                  cfg.max_new_tokens, step_seed + j)
        answers, label, _ = pseudo_label(samples, q.task, cfg)
        rewards = ttrl_rewards(answers[:cfg.n_train], label, q.task)
        if label is None or len(set(rewards)) <= 1:
            continue  # this group has nothing to teach
        kept += 1
        ids = engine.encode(prompt)
        batch_prompts += [ids] * len(rewards)
        responses += [s.token_ids for s in samples[:cfg.n_train]]
        advantages += group_advantages(rewards)
        all_rewards += rewards
    if not kept:
        return {"groups_trained": 0}
    gae = cfg.advantage_estimator == "gae"  # the engine's critic makes per-token advantages
    batch = TrainBatch(batch_prompts, responses, advantages, all_rewards if gae else None,
                       temperature=cfg.temperature)
    history = engine.train(batch, grpo_loss,
                           {"clip_eps": cfg.clip_eps, "kl_coef": cfg.kl_coef}, steps=1)
    return {"groups_trained": kept, **history[0]}


def run_dataset(cfg, examples, engine) -> dict:
    out = Path(cfg.output_dir)
    prompts = [format_prompt(ex.question, engine.tokenizer, cfg.prompt_family) for ex in examples]
    steps_per_episode = math.ceil(len(examples) / cfg.prompts_per_step)
    total = cfg.episodes * steps_per_episode
    evals_path, steps_path, ckpt = out / "evals.jsonl", out / "steps.jsonl", out / "checkpoint.pt"
    start, evals = 0, []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        engine.load_state_dict(state["engine"])
        start, evals = state["step"], state["evals"]
    rewrite_jsonl(evals_path, evals)
    if steps_path.exists():  # drop steps taken after the checkpoint: they are redone
        kept = read_jsonl(steps_path)
        rewrite_jsonl(steps_path, [r for r in kept if r["step"] <= start])
    if not evals:
        evals.append({"step": 0, "pass@1": evaluate_set(engine, examples, prompts, cfg)})
        rewrite_jsonl(evals_path, evals)
    order = list(range(len(examples)))
    began = time.perf_counter()
    for step in range(start, total):
        episode, k = divmod(step, steps_per_episode)
        if k == 0 or step == start:  # a fixed shuffle per episode, so a resume sees the same
            order = sorted(range(len(examples)), key=lambda i: zlib.crc32(
                f"{cfg.seed}/{episode}/{examples[i].question.id}".encode()))
        chosen = order[k * cfg.prompts_per_step:(k + 1) * cfg.prompts_per_step]
        engine.set_lr(lr_at(step, total, cfg.lr, cfg.warmup_ratio))
        stats = train_step(engine, [examples[i].question for i in chosen],
                           [prompts[i] for i in chosen], cfg, cfg.seed * 7919 + step * 1000)
        append_jsonl(steps_path, {"step": step + 1, "episode": episode, "lr": lr_at(
            step, total, cfg.lr, cfg.warmup_ratio), **stats})
        if (step + 1) % cfg.eval_every == 0 or step + 1 == total:
            evals.append({"step": step + 1,
                          "pass@1": evaluate_set(engine, examples, prompts, cfg)})
            state = {"engine": engine.state_dict(), "step": step + 1, "evals": evals}
            write_atomic(ckpt, lambda tmp: torch.save(state, tmp))
            rewrite_jsonl(evals_path, evals)
    summary = {"mode": "dataset", "questions": len(examples), "steps": total,
               "pass@1_before": evals[0]["pass@1"], "pass@1_after": evals[-1]["pass@1"],
               "evals": evals, "wall_seconds": time.perf_counter() - began,
               "config": dataclasses.asdict(cfg)}
    write_json_atomic(out / "summary.json", summary)
    return summary

