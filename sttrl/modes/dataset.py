"""The original TTRL (dataset level): RL on the whole unlabeled test set over episodes.

As TTRL's verl recipe trains: each rollout batch takes `prompts_per_step` questions, samples
`n_votes` answers per question, votes, rewards the first `n_train` of each group against its own
pseudo-label and normalises advantages within each group (a group whose rewards are all equal
keeps its zero advantages: its tokens still count in the token mean and still carry the KL
term). Then one optimiser step per mini-batch: the batch's samples are balanced over
`balance_ranks` data-parallel shares by token count and each step takes its slice of every
share, so a step mixes questions (sttrl/modes/schedule.py); all steps share the old log-probs
of the policy that sampled the batch.

An episode is the full rollout batches of one shuffle of the set (verl's drop_last). The lr
steps once per rollout batch, as verl's scheduler: every optimiser step of a batch shares it;
linear warm-up from 0 over int(warmup_ratio x batches), then a cosine to 0. Every question is
evaluated (pass@1 over n_eval samples, the per-question mode's evaluation seed) before
training, every `eval_every` rollout batches, and at the end; results.jsonl pairs each
question's first and last evaluation, so `sttrl report` gives the gain a paired interval and
the first evaluation can be a base model's row. steps.jsonl has one line per rollout batch,
with one entry per optimiser step under "updates".

Resume: the model, optimiser and batch counter are checkpointed at every evaluation, before the
evaluation's line is written; a killed run restarts from the last checkpoint.

The logger (--progress, --tensorboard, --wandb; logger.py) records each rollout batch: the
groups with a reward signal, its update statistics' means, and pass@1 where it was evaluated.
"""
from __future__ import annotations

import time
import zlib
from pathlib import Path

import torch

from sttrl.algorithms.grpo import group_advantages, grpo_loss
from sttrl.data import format_prompt
from sttrl.engines.base import Engine
from sttrl.errors import UserError
from sttrl.files import (append_jsonl, read_jsonl, rewrite_jsonl, write_json_atomic,
                         write_torch_atomic)
from sttrl.modes.evaluate import evaluate_set
from sttrl.modes.logger import RunLogger
from sttrl.modes.schedule import lr_at, mini_batch_rows, rollout_batches
from sttrl.reporting.results import NO_REFERENCES
from sttrl.reporting.stats import paired_bootstrap_ci
from sttrl.rewards.label import pseudo_label, train_rewards
from sttrl.rewards.oracle import OracleReward
from sttrl.settings import RunParts
from sttrl.types import Example, Question, TrainBatch


def train_step(engine: Engine, questions: list[Question], prompts: list[str], parts: RunParts,
               step_seed: int, lr: float, oracles: list | None = None) -> dict:
    """One rollout batch and its mini-batch GRPO (gae: PPO) steps, all at `lr`; the reference
    answers are not passed in (--reward oracle: `oracles`, one OracleReward per question, are).
    """
    sampling, update = parts.sampling, parts.update
    batch_prompts, responses, advantages, all_rewards, owner = [], [], [], [], []
    signal = 0  # groups whose rewards differ: the ones with a policy gradient
    for j, (q, prompt) in enumerate(zip(questions, prompts)):
        samples = engine.generate(prompt, sampling.n_votes, sampling.temperature, sampling.top_p,
                                  sampling.max_new_tokens, step_seed + j)
        answers, label, _ = pseudo_label(samples, q.task, parts.vote)
        rewards = train_rewards(answers[:sampling.n_train], label, q.task, parts.vote,
                                step_seed + j, oracles[j] if oracles else None)
        signal += len(set(rewards)) > 1
        ids = engine.encode(prompt)
        batch_prompts += [ids] * len(rewards)
        responses += [s.token_ids for s in samples[:sampling.n_train]]
        advantages += group_advantages(rewards)
        all_rewards += rewards
        owner += [j] * len(rewards)
    steps = len(questions) // update.mini_batch_prompts
    tokens = [len(p) + len(r) for p, r in zip(batch_prompts, responses)]
    mini_batches = mini_batch_rows(tokens, update.balance_ranks, steps)
    gae = update.advantage_estimator == "gae"  # the engine's critic makes per-token advantages
    batch = TrainBatch(batch_prompts, responses, advantages, all_rewards if gae else None,
                       temperature=sampling.temperature)
    history = engine.train(batch, grpo_loss, {"clip_eps": update.clip_eps,
                                              "kl_coef": update.kl_coef,
                                              "dual_clip": update.dual_clip},
                           steps=1, mini_batches=mini_batches, lrs=[lr] * steps)
    updates = [{"lr": lr, "questions": len({owner[r] for r in rows}), **stats}
               for rows, stats in zip(mini_batches, history)]
    return {"groups_with_signal": signal, "updates": updates}


def step_problem(record) -> str | None:
    """Why a steps.jsonl line is not one this mode wrote, or None."""
    if not isinstance(record, dict) or type(record.get("step")) is not int:
        return "not an object with an integer 'step'"
    return None


def batch_scalars(stats: dict) -> dict[str, float]:
    """What the logger records of one rollout batch: the groups with a reward signal and each
    update statistic's mean over the batch's optimiser steps."""
    scalars = {"groups_with_signal": float(stats["groups_with_signal"])}
    for key in sorted({k for u in stats["updates"] for k in u} - {"questions"}):
        values = [u[key] for u in stats["updates"] if isinstance(u.get(key), (int, float))]
        if values:
            scalars[f"train/{key}"] = sum(values) / len(values)
    return scalars


def evaluation(step: int, scores: list[float], answers: list | None = None) -> dict:
    """One evals.jsonl line: the mean pass@1 and each question's, in set order (with the
    answers for the first and the last evaluation, which results.jsonl pairs)."""
    graded = [x for x in scores if x is not None]  # a label-free question has no score
    line = {"step": step, "pass@1": sum(graded) / len(graded) if graded else None,
            "scores": scores}
    return line if answers is None else {**line, "answers": answers}


def gain_of(before: list, after: list) -> dict:
    """The summary's paired gain over the questions that have a reference."""
    pairs = [(b, a) for b, a in zip(before, after) if b is not None and a is not None]
    b, a = [p[0] for p in pairs], [p[1] for p in pairs]
    return {"pass@1_gain": sum(a) / len(a) - sum(b) / len(b),
            "pass@1_gain_ci95": list(paired_bootstrap_ci(b, a))}


def question_lines(examples: list[Example], first: dict, last: dict) -> list[dict]:
    """results.jsonl: each question's pass@1 before training and after it. No vote is taken
    before training, so maj@N_before, label_correct and reward_accuracy are null."""
    return [{"index": i, "id": ex.question.id, "mode": "dataset",
             "pass@1_before": first["scores"][i], "pass@1_after": last["scores"][i],
             "answers_before": first["answers"][i], "answers_after": last["answers"][i],
             "maj@N_before": None, "label_correct": None, "reward_accuracy": None}
            for i, ex in enumerate(examples)]


def run_dataset(parts: RunParts, examples: list[Example], engine: Engine) -> dict:
    sampling, loop = parts.sampling, parts.loop
    out = Path(loop.output_dir)
    prompts = [format_prompt(ex.question, engine.tokenizer, sampling.prompt_family)
               for ex in examples]
    form = parts.vote.answer_form
    per_episode = rollout_batches(len(examples), loop.prompts_per_step)
    if per_episode == 0:
        raise UserError(f"--mode dataset needs at least --prompts_per_step "
                        f"({loop.prompts_per_step}) questions, got {len(examples)}: a rollout "
                        "batch is never partial (verl drops it)")
    total = loop.episodes * per_episode  # rollout batches: what the lr schedule counts
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

    def evaluate(step: int, keep_answers: bool) -> dict:
        scores, answers = evaluate_set(engine, examples, prompts, sampling, form)
        return evaluation(step, scores, answers if keep_answers else None)

    with RunLogger(loop, parts.record, total, start, "batches", "batch") as log:
        if not evals:
            evals.append(evaluate(0, keep_answers=True))
            rewrite_jsonl(evals_path, evals)
        order = list(range(len(examples)))
        began = time.perf_counter()
        for step in range(start, total):
            episode, k = divmod(step, per_episode)
            if k == 0 or step == start:  # a fixed shuffle per episode, so a resume sees the same
                order = sorted(range(len(examples)), key=lambda i: zlib.crc32(
                    f"{sampling.seed}/{episode}/{examples[i].question.id}".encode()))
            chosen = order[k * loop.prompts_per_step:(k + 1) * loop.prompts_per_step]
            lr = lr_at(step, total, parts.update.lr, parts.update.warmup_ratio)
            stats = train_step(engine, [examples[i].question for i in chosen],
                               [prompts[i] for i in chosen], parts,
                               sampling.seed * 7919 + step * 1000, lr,
                               [OracleReward.of(examples[i], form) for i in chosen]
                               if parts.vote.reward == "oracle" else None)
            append_jsonl(steps_path, {"step": step + 1, "episode": episode, **stats})
            scalars = batch_scalars(stats)
            if (step + 1) % loop.eval_every == 0 or step + 1 == total:
                evals.append(evaluate(step + 1, keep_answers=step + 1 == total))
                state = {"engine": engine.state_dict(), "step": step + 1, "evals": evals}
                write_torch_atomic(ckpt, state)
                rewrite_jsonl(evals_path, evals)
                if evals[-1]["pass@1"] is not None:
                    scalars["pass@1"] = evals[-1]["pass@1"]
            log.log(scalars, step + 1, NO_REFERENCES if evals[0]["pass@1"] is None else
                    f"pass@1 {evals[0]['pass@1']:.3f} -> {evals[-1]['pass@1']:.3f}")
    first, last = evals[0], evals[-1]
    rewrite_jsonl(out / "results.jsonl", question_lines(examples, first, last))
    summary = {"mode": "dataset", "reward": parts.vote.reward, "questions": len(examples),
               "steps": total, "optimizer_steps": total * (loop.prompts_per_step
                                                            // parts.update.mini_batch_prompts),
               "pass@1_before": first["pass@1"], "pass@1_after": last["pass@1"],
               **(gain_of(first["scores"], last["scores"]) if first["pass@1"] is not None
                  else {"pass@1_note": NO_REFERENCES}),
               "evals": [{"step": e["step"], "pass@1": e["pass@1"]} for e in evals],
               "wall_seconds": time.perf_counter() - began, "config": parts.record}
    write_json_atomic(out / "summary.json", summary)
    return summary
