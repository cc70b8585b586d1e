"""Where one question's seconds go, for the default CPU configuration; writes results/question.json.

The default CPU config (SmolLM2-135M-Instruct, 16 votes, 8 trained, 3 GRPO steps, 128 new tokens,
8 eval samples, ARITH-TTT) runs through the driver exactly as `main.py` does: `run_question`,
then `engine.reset()`. One untimed warm-up question first, cut to --warmup_tokens new tokens (it
starts the math-verify worker and warms the allocator), then `--questions` timed ones.

Phases come from the driver's own Timer: `generate` (n_votes samples), `vote` (extract + vote +
grade the trained samples against the label), `train`, `eval` (n_eval samples before and after),
plus `reset`; `other` is the rest of the wall time (prompt formatting, pass@1 grading).
Generated tokens are counted by wrapping the engine's `generate`.

    .venv/bin/python benchmarks/bench_question.py [--questions 3] [--model DIR]
"""
from __future__ import annotations

import argparse
import time

from benchutil import machine_info, median, peak_rss_mib, rnd, write_result

PHASES = ("generate", "vote", "train", "eval")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=3, help="timed questions (median over them)")
    parser.add_argument("--model", default=None, help="model directory (default: the embedded SmolLM2)")
    parser.add_argument("--dataset", default="ARITH-TTT")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="override (debugging only)")
    parser.add_argument("--warmup_tokens", type=int, default=16, help="new tokens in the untimed warm-up")
    parser.add_argument("--name", default="question", help="result file name")
    args = parser.parse_args()

    import torch

    import dataclasses

    from sttrl.config import Config, resolve
    from sttrl.driver import build_engine, load_examples, run_question
    from sttrl.engines.models import resolve_model

    machine = machine_info()
    cfg = resolve(Config(model=resolve_model(args.model), dataset=args.dataset,
                         num_questions=args.questions + 1, max_new_tokens=args.max_new_tokens,
                         progress=False, output_dir="unused"), on_gpu=False)
    examples = load_examples(cfg)
    start = time.perf_counter()
    engine = build_engine(cfg)
    load_seconds = time.perf_counter() - start

    tokens = {"n": 0}
    generate = engine.generate

    def counting_generate(*a, **kw):
        samples = generate(*a, **kw)
        tokens["n"] += sum(len(s.token_ids) for s in samples)
        return samples

    train = engine.train

    def counting_train(batch, *a, **kw):
        lens = [len(r) for r in batch.responses]
        mb = engine.micro_batch_size
        tokens["trained"] = sum(lens)
        tokens["padded"] = sum(len(lens[i:i + mb]) * max(lens[i:i + mb]) for i in range(0, len(lens), mb))
        return train(batch, *a, **kw)

    engine.generate, engine.train = counting_generate, counting_train

    rows = []
    for i, ex in enumerate(examples):
        tokens.update(n=0, trained=0, padded=0)
        start = time.perf_counter()
        qcfg = dataclasses.replace(cfg, max_new_tokens=args.warmup_tokens) if i == 0 else cfg
        record = run_question(engine, ex, i, qcfg)
        mid = time.perf_counter()
        engine.reset()
        end = time.perf_counter()
        sec = {p: record["seconds"].get(p, 0.0) for p in PHASES}
        sec["reset"] = end - mid
        wall = end - start
        sec["other"] = wall - sum(sec.values())
        row = {"id": ex.question.id, "wall_s": rnd(wall), "seconds": {k: rnd(v, 4) for k, v in sec.items()},
               "reset_fraction": rnd(sec["reset"] / wall, 5), "generated_tokens": tokens["n"],
               "trained_tokens": tokens["trained"], "trained_padded_tokens": tokens["padded"],
               "skipped_update": record["skipped"], "skip_reason": record["skip_reason"],
               "pass@1_before": record["pass@1_before"], "pass@1_after": record["pass@1_after"]}
        rows.append(row)
        label = f"warm-up ({args.warmup_tokens} tokens, untimed)" if i == 0 else f"question {i}"
        print(f"{label} {ex.question.id}: {wall:.2f} s  " +
              "  ".join(f"{k} {v:.3f}" for k, v in sec.items()) +
              f"  tokens {tokens['n']}  trained {tokens['trained']} (padded {tokens['padded']})"
              f"  skipped={record['skipped']}", flush=True)

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
        "model", "dataset", "n_votes", "n_train", "n_eval", "steps_per_question", "max_new_tokens",
        "lr", "kl_coef", "temperature", "val_temp", "micro_batch_size", "generation_threads", "seed")}
    settings["timed_questions"] = args.questions
    settings["warmup_tokens"] = args.warmup_tokens
    settings["torch_threads_training"] = torch.get_num_threads()
    path = write_result(args.name, machine, settings, results, notes=[
        "Median over the timed questions; the first question is an untimed warm-up with few tokens.",
        "`vote` = answer extraction + voting + grading the trained samples against the pseudo-label.",
        "`other` = wall time outside the driver's phases (prompt formatting, pass@1 grading, record).",
        "Peak RSS is the whole process's high-water mark (model, optimiser, initial-weight copy).",
    ])
    print(f"median {wall:.2f} s/question: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    print(f"reset is {results['median_reset_fraction']:.3%} of a question (target < 1%: "
          f"{'met' if results['reset_target_met'] else 'missed'}); peak RSS {results['peak_rss_mib']} MiB")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
