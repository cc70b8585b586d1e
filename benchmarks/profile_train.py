"""Where `LocalEngine.train` spends its time, and what cheaper variants would save; writes results/train_profile.json.

Not part of run_all.sh: evidence for changes to sttrl/engines/local.py. The batch is real: the
first --n_train of --n_votes samples that the default CPU config draws for ARITH-TTT question
--question (same prompt, seed, temperature, 128 tokens as the driver), with GRPO advantages
from the majority vote. Every variant runs `engine.train(batch, grpo_loss, ..., steps=3)` on that
batch from the same initial weights (reset between runs), --repeats times, median reported.

Variants (all done from outside the engine, by re-ordering the batch, changing an attribute, or
wrapping a method on the instance; the engine's code is untouched):
- `baseline`: as the driver calls it (fp32; fused AdamW; rows in length buckets cut where the
  padding saved pays for another pass, `length_buckets`; in a micro-batch of several rows the
  prompt runs once and its KV cache is shared by the rows, `shared_prompt_logprobs`).
- `no_shared_prompt`: the same buckets, but every row carries its own copy of the prompt
  (`engine.share_prompt = False`): what sharing the prompt saves.
- `unfused_adamw`: the baseline with torch's default (per-tensor) AdamW: what fusing saves.
- `padded_mb8`: what the engine did before these changes: a full forward per row, the rows in
  their sampled order in micro-batches of 8, each padded to its longest row, default AdamW.
- `mb1`: micro-batches of 1: no padding at all (8 forward/backward passes of one row each).
- `fixed_cost`: every response cut to its first token: what 3 steps cost with (almost) no tokens
  (the prompt, optimizer, gradient clipping, gradient allocation, per-step overhead).
Also a torch.profiler table of the baseline's operators (one 1-step train).

    .venv/bin/python benchmarks/profile_train.py [--question 1] [--repeats 2]
"""
from __future__ import annotations

import argparse
import time

from benchutil import machine_info, median, rnd, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default=None)
    parser.add_argument("--variants", nargs="+",
                        default=["baseline", "no_shared_prompt", "unfused_adamw", "padded_mb8", "mb1",
                                 "fixed_cost"])
    parser.add_argument("--max_new_tokens", type=int, default=None)
    parser.add_argument("--name", default="train_profile")
    args = parser.parse_args()

    import torch

    from sttrl.algorithms.grpo import group_advantages, grpo_loss
    from sttrl.rewards.label import pseudo_label
    from sttrl.config import Config, resolve
    from sttrl.parts import parts
    from sttrl.data import format_prompt
    from sttrl.modes.common import question_seed
    from sttrl.run import build_engine, load_examples
    from sttrl.types import TrainBatch
    from sttrl.engines.models import resolve_model
    from sttrl.rewards import ttrl_rewards

    machine = machine_info()
    cfg = resolve(Config(model=resolve_model(args.model), num_questions=args.question + 1,
                         max_new_tokens=args.max_new_tokens, progress=False, output_dir="unused"),
                  on_gpu=False)
    ex = load_examples(cfg)[args.question]
    engine = build_engine(cfg.engine, parts(cfg).engine, cfg.model)
    prompt = format_prompt(ex.question, engine.tokenizer, cfg.prompt_family)
    seed = question_seed(cfg.seed, ex.question.id)
    samples = engine.generate(prompt, cfg.n_votes, cfg.temperature, cfg.top_p, cfg.max_new_tokens, seed)
    answers, label, _ = pseudo_label(samples, ex.question.task, parts(cfg).vote)
    rewards = ttrl_rewards(answers[:cfg.n_train], label, ex.question.task)
    train = samples[:cfg.n_train]
    prompt_ids = engine.encode(prompt)
    responses = [s.token_ids for s in train]
    adv = group_advantages(rewards)
    lens = [len(r) for r in responses]
    print(f"{ex.question.id}: response lengths {lens}, rewards {rewards}", flush=True)
    kwargs = {"clip_eps": cfg.clip_eps, "kl_coef": cfg.kl_coef}

    def run(variant: str) -> float:
        engine.reset()
        order = list(range(len(responses)))
        engine.micro_batch_size = cfg.micro_batch_size
        if variant in ("no_shared_prompt", "padded_mb8"):
            engine.share_prompt = False
        if variant == "padded_mb8":
            engine._micro_batches = lambda p, r: [list(range(s, min(len(r), s + 8)))
                                                  for s in range(0, len(r), 8)]
        if variant == "mb1":
            engine.micro_batch_size = 1
        if variant in ("unfused_adamw", "padded_mb8"):
            for group in engine.optimizer.param_groups:  # reset() restores the engine's own
                group["fused"] = False
        resp = [responses[i][:1] if variant == "fixed_cost" else responses[i] for i in order]
        batch = TrainBatch.shared(prompt_ids, resp, [adv[i] for i in order])
        try:
            start = time.perf_counter()
            engine.train(batch, grpo_loss, kwargs, cfg.steps_per_question)
            return time.perf_counter() - start
        finally:
            engine.share_prompt = True
            engine.__dict__.pop("_micro_batches", None)
            engine.micro_batch_size = cfg.micro_batch_size
            engine.reset()

    run("baseline")  # warm-up
    times = {v: [] for v in args.variants}
    for rep in range(args.repeats):
        for v in args.variants:
            times[v].append(run(v))
            print(f"rep {rep} {v:18s} {times[v][-1]:6.2f} s", flush=True)

    engine.reset()
    from torch.profiler import ProfilerActivity, profile
    batch = TrainBatch.shared(prompt_ids, responses, adv)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.train(batch, grpo_loss, kwargs, 1)
    engine.reset()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    top = [{"op": e.key, "self_s": rnd(e.self_cpu_time_total / 1e6, 3),
            "share": rnd(e.self_cpu_time_total / total, 3), "calls": e.count} for e in ops[:15]]
    print("\n".join(f"{t['op']:45s} {t['self_s']:7.3f} s {100 * t['share']:5.1f}%" for t in top))

    base = median(times["baseline"])
    results = {"question": ex.question.id, "response_lengths": lens, "rewards": rewards,
               "trained_tokens": sum(lens), "padded_tokens": len(lens) * max(lens),
               "median_s": {v: rnd(median(t)) for v, t in times.items()},
               "speedup_vs_baseline": {v: rnd(base / median(t), 2) for v, t in times.items()},
               "baseline_speedup_over": {v: rnd(median(t) / base, 2) for v, t in times.items()},
               "all_s": {v: [rnd(x) for x in t] for v, t in times.items()},
               "profiler_top_ops_one_step": top}
    settings = {"model": cfg.model, "n_votes": cfg.n_votes, "n_train": cfg.n_train,
                "steps": cfg.steps_per_question, "max_new_tokens": cfg.max_new_tokens,
                "micro_batch_size": cfg.micro_batch_size, "repeats": args.repeats,
                "torch_threads": torch.get_num_threads()}
    out = write_result(args.name, machine, settings, results)
    print(results["median_s"], results["speedup_vs_baseline"])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
