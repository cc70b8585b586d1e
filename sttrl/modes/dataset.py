"""The original TTRL (dataset level): RL on the whole unlabeled test set over episodes.

As TTRL's verl recipe trains: each rollout batch takes `prompts_per_step` questions, samples
`n_votes` answers per question, votes, rewards the first `n_train` of each group against its own
pseudo-label and normalises advantages within each group; then it takes one optimiser step per
mini-batch of `mini_batch_prompts` questions (PPO epochs over disjoint mini-batches, all sharing
the old log-probs of the policy that sampled the batch). Groups whose rewards are all equal
teach nothing and are left out; a mini-batch left with none takes no step.

The learning rate follows optimiser steps, not rollout batches: mini-batch k of a batch is one
slot of the schedule whether or not it trains, so the schedule is fixed before the run. It warms
up linearly from 0 over `warmup_ratio` of the slots (verl's: lr = peak * step / warm), then
decays along a cosine. Mean pass@1 over the set is evaluated before training, every
`eval_every` rollout batches, and at the end. steps.jsonl has one line per rollout batch, with
one entry per optimiser step taken under "updates".

Resume: the model, optimiser and batch counter are checkpointed at every evaluation, before the
evaluation's line is written; a killed run restarts from the last checkpoint.

The logger (--progress, --tensorboard, --wandb; logger.py) records each rollout batch: the
groups it trained, its update statistics' means, and pass@1 where it was evaluated.
"""
from __future__ import annotations

import math
import time
import zlib
from pathlib import Path

import torch

from sttrl.algorithms.grpo import group_advantages, grpo_loss
from sttrl.data import format_prompt
from sttrl.engines.base import Engine
from sttrl.files import (append_jsonl, read_jsonl, rewrite_jsonl, write_json_atomic,
                         write_torch_atomic)
from sttrl.modes.evaluate import evaluate_set
from sttrl.modes.logger import RunLogger
from sttrl.reporting.results import NO_REFERENCES
from sttrl.rewards.label import pseudo_label, train_rewards
from sttrl.rewards.oracle import OracleReward
from sttrl.settings import RunParts
from sttrl.types import Example, Question, TrainBatch


def lr_at(step: int, total: int, peak: float, warmup_ratio: float) -> float:
    """Linear warm-up from 0 to `peak` (verl's: step 0 has lr 0), then cosine decay to zero;
    `step` counts optimiser steps from 0."""
    warm = max(1, math.ceil(total * warmup_ratio)) if warmup_ratio > 0 else 0
    if step < warm:
        return peak * step / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def batch_slots(n_questions: int, prompts_per_step: int, mini_batch_prompts: int) -> list[int]:
    """Optimiser-step slots of each rollout batch of one episode (the last batch may be short)."""
    sizes = [min(prompts_per_step, n_questions - k) for k in range(0, n_questions, prompts_per_step)]
    return [math.ceil(size / mini_batch_prompts) for size in sizes]


def train_step(engine: Engine, questions: list[Question], prompts: list[str], parts: RunParts,
               step_seed: int, first_slot: int, total_slots: int,
               oracles: list | None = None) -> dict:
    """One rollout batch and its mini-batch GRPO (gae: PPO) steps; the reference answers are
    not passed in (--reward oracle: `oracles`, one OracleReward per question, are). Mini-batch k
    holds questions k*m .. k*m+m-1 and trains at slot first_slot+k."""
    sampling, update = parts.sampling, parts.update
    batch_prompts, responses, advantages, all_rewards = [], [], [], []
    group_rows: list[list[int]] = []  # per question: its rows in the batch (empty: skipped)
    for j, (q, prompt) in enumerate(zip(questions, prompts)):
        samples = engine.generate(prompt, sampling.n_votes, sampling.temperature, sampling.top_p,
                                  sampling.max_new_tokens, step_seed + j)
        answers, label, _ = pseudo_label(samples, q.task, parts.vote)
        rewards = train_rewards(answers[:sampling.n_train], label, q.task, parts.vote,
                                step_seed + j, oracles[j] if oracles else None)
        if label is None or len(set(rewards)) <= 1:
            group_rows.append([])  # this group has nothing to teach
            continue
        ids = engine.encode(prompt)
        group_rows.append(list(range(len(responses), len(responses) + len(rewards))))
        batch_prompts += [ids] * len(rewards)
        responses += [s.token_ids for s in samples[:sampling.n_train]]
        advantages += group_advantages(rewards)
        all_rewards += rewards
    kept = sum(1 for rows in group_rows if rows)
    m = update.mini_batch_prompts
    mini_batches, slots, counts = [], [], []
    for k in range(0, len(questions), m):
        rows = [r for group in group_rows[k:k + m] for r in group]
        if rows:
            mini_batches.append(rows)
            slots.append(first_slot + k // m)
            counts.append(sum(1 for group in group_rows[k:k + m] if group))
    if not mini_batches:
        return {"groups_trained": 0, "updates": []}
    gae = update.advantage_estimator == "gae"  # the engine's critic makes per-token advantages
    batch = TrainBatch(batch_prompts, responses, advantages, all_rewards if gae else None,
                       temperature=sampling.temperature)
    lrs = [lr_at(slot, total_slots, update.lr, update.warmup_ratio) for slot in slots]
    history = engine.train(batch, grpo_loss, {"clip_eps": update.clip_eps,
                                              "kl_coef": update.kl_coef},
                           steps=1, mini_batches=mini_batches, lrs=lrs)
    updates = [{"optimizer_step": slot, "lr": lr, "prompts": n, **stats}
               for slot, lr, n, stats in zip(slots, lrs, counts, history)]
    return {"groups_trained": kept, "updates": updates}


def step_problem(record) -> str | None:
    """Why a steps.jsonl line is not one this mode wrote, or None."""
    if not isinstance(record, dict) or type(record.get("step")) is not int:
        return "not an object with an integer 'step'"
    return None


def batch_scalars(stats: dict) -> dict[str, float]:
    """What the logger records of one rollout batch: the groups trained and each update
    statistic's mean over the batch's optimiser steps."""
    scalars = {"groups_trained": float(stats["groups_trained"])}
    for key in sorted({k for u in stats["updates"] for k in u} - {"optimizer_step", "prompts"}):
        values = [u[key] for u in stats["updates"] if isinstance(u.get(key), (int, float))]
        if values:
            scalars[f"train/{key}"] = sum(values) / len(values)
    return scalars


def run_dataset(parts: RunParts, examples: list[Example], engine: Engine) -> dict:
    sampling, loop = parts.sampling, parts.loop
    out = Path(loop.output_dir)
    prompts = [format_prompt(ex.question, engine.tokenizer, sampling.prompt_family)
               for ex in examples]
    form = parts.vote.answer_form
    steps_per_episode = math.ceil(len(examples) / loop.prompts_per_step)  # rollout batches
    total = loop.episodes * steps_per_episode
    slots = batch_slots(len(examples), loop.prompts_per_step, parts.update.mini_batch_prompts)
    total_slots = loop.episodes * sum(slots)  # optimiser-step slots: what the lr schedule counts
    evals_path, steps_path, ckpt = out / "evals.jsonl", out / "steps.jsonl", out / "checkpoint.pt"
    start, evals = 0, []
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        engine.load_state_dict(state["engine"])
        start, evals = state["step"], state["evals"]
    rewrite_jsonl(evals_path, evals)
    if steps_path.exists():  # drop steps taken after the checkpoint: they are redone
        kept = read_jsonl(steps_path, repair=True, problem=step_problem, kind="step record")
        rewrite_jsonl(steps_path, [r for r in kept if r["step"] <= start])
    with RunLogger(loop, parts.record, total, start, "batches", "batch") as log:
        if not evals:
            evals.append({"step": 0,
                          "pass@1": evaluate_set(engine, examples, prompts, sampling, form)})
            rewrite_jsonl(evals_path, evals)
        order = list(range(len(examples)))
        began = time.perf_counter()
        for step in range(start, total):
            episode, k = divmod(step, steps_per_episode)
            if k == 0 or step == start:  # a fixed shuffle per episode, so a resume sees the same
                order = sorted(range(len(examples)), key=lambda i: zlib.crc32(
                    f"{sampling.seed}/{episode}/{examples[i].question.id}".encode()))
            chosen = order[k * loop.prompts_per_step:(k + 1) * loop.prompts_per_step]
            first_slot = episode * sum(slots) + sum(slots[:k])
            stats = train_step(engine, [examples[i].question for i in chosen],
                               [prompts[i] for i in chosen], parts,
                               sampling.seed * 7919 + step * 1000, first_slot, total_slots,
                               [OracleReward.of(examples[i], form) for i in chosen]
                               if parts.vote.reward == "oracle" else None)
            append_jsonl(steps_path, {"step": step + 1, "episode": episode,
                                      "first_optimizer_step": first_slot, **stats})
            scalars = batch_scalars(stats)
            if (step + 1) % loop.eval_every == 0 or step + 1 == total:
                evals.append({"step": step + 1,
                              "pass@1": evaluate_set(engine, examples, prompts, sampling, form)})
                state = {"engine": engine.state_dict(), "step": step + 1, "evals": evals}
                write_torch_atomic(ckpt, state)
                rewrite_jsonl(evals_path, evals)
                if evals[-1]["pass@1"] is not None:
                    scalars["pass@1"] = evals[-1]["pass@1"]
            log.log(scalars, step + 1, NO_REFERENCES if evals[0]["pass@1"] is None else
                    f"pass@1 {evals[0]['pass@1']:.3f} -> {evals[-1]['pass@1']:.3f}")
    summary = {"mode": "dataset", "reward": parts.vote.reward, "questions": len(examples),
               "steps": total, "optimizer_steps": total_slots,
               "pass@1_before": evals[0]["pass@1"], "pass@1_after": evals[-1]["pass@1"],
               **({"pass@1_note": NO_REFERENCES} if evals[0]["pass@1"] is None else {}),
               "evals": evals, "wall_seconds": time.perf_counter() - began,
               "config": parts.record}
    write_json_atomic(out / "summary.json", summary)
    return summary
