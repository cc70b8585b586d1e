"""LoRA (--lora_rank) against full fine-tuning on the local engine, side by side in one run;
writes results/lora.json.

Each variant runs in its own child process (so each peak RSS is its own), the variants taking
turns for `--rounds` rounds (so a machine whose load changes slows both alike), on the default
model and the CPU defaults: 8 responses of 128 tokens to one prompt, GRPO with kl_coef 0.001, 3
optimiser steps per question. Per variant:
- `step_s`: seconds per optimiser step of a question's update (reset mode: the weights start
  at the initial ones, so no reference model is needed), median over the questions;
- `reset_s`: `engine.reset()` after that update, median;
- `continuous_step_s`: one step once the weights have moved (continuous mode): the KL then needs
  the reference, a second model for full fine-tuning, the adapter switched off for LoRA;
  median over the rounds;
- memory: peak RSS of the child, and the bytes of the tensors by role (weights, trainable,
  AdamW state, the reset snapshot, the reference model).
The responses are random token ids: the cost of a step depends on the shapes, not the tokens.

    .venv/bin/python benchmarks/bench_lora.py [--rank 16] [--questions 3] [--rounds 2] [--model DIR]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import machine_info, median, peak_rss_mib, rnd, write_result

N_RESPONSES, RESPONSE_TOKENS, STEPS = 8, 128, 3  # the CPU defaults: n_train, max_new_tokens, steps
PROMPT = "What is 12 * 7 - 5? Put your final answer within \\boxed{}."


def tensor_mib(tensors) -> float:
    return round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 1)


def child(variant: str, rank: int, questions: int, model: str | None, out: str) -> None:
    import torch

    from sttrl.algorithms.grpo import group_advantages, grpo_loss
    from sttrl.config import Config, resolve
    from sttrl.parts import parts
    from sttrl.engines.local import LocalEngine
    from sttrl.engines.models import resolve_model
    from sttrl.types import TrainBatch

    path = resolve_model(model)
    cfg = resolve(Config(device="cpu", lora_rank=rank if variant == "lora" else 0), on_gpu=False)
    start = time.perf_counter()
    engine = LocalEngine(parts(cfg).engine, path)
    load_s = time.perf_counter() - start
    rss_loaded = peak_rss_mib()
    gen = torch.Generator().manual_seed(0)
    vocab = engine.model.get_output_embeddings().weight.shape[0]
    low = min(100, vocab // 2)  # clear of the special tokens at the start of the vocabulary
    responses = torch.randint(low, vocab, (N_RESPONSES, RESPONSE_TOKENS), generator=gen).tolist()
    batch = TrainBatch.shared(engine.encode(PROMPT), responses,
                              group_advantages([1.0, 0.0] * (N_RESPONSES // 2)))
    kw = {"clip_eps": cfg.clip_eps, "kl_coef": cfg.kl_coef}
    steps, resets = [], []
    for _ in range(questions):
        start = time.perf_counter()
        engine.train(batch, grpo_loss, kw, steps=STEPS)
        steps.append((time.perf_counter() - start) / STEPS)
        start = time.perf_counter()
        engine.reset()
        resets.append(time.perf_counter() - start)
    engine.train(batch, grpo_loss, kw, steps=1)  # the weights move: the next step needs the reference
    start = time.perf_counter()
    engine.train(batch, grpo_loss, kw, steps=1)
    continuous = time.perf_counter() - start
    opt = [v for state in engine.optimizer.state.values() for v in state.values()
           if isinstance(v, torch.Tensor)]
    result = {
        "variant": variant, "lora_rank": cfg.lora_rank, "lr": cfg.lr,
        "parameters": sum(p.numel() for p in engine.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in engine.params),
        "load_s": rnd(load_s, 2), "step_s": rnd(median(steps), 3),
        "all_step_s": [rnd(x, 3) for x in steps], "reset_s": rnd(median(resets), 5),
        "all_reset_s": [rnd(x, 5) for x in resets], "continuous_step_s": rnd(continuous, 3),
        "weights_mib": tensor_mib(engine.model.parameters()),
        "trainable_mib": tensor_mib(engine.params),
        "adamw_state_mib": tensor_mib(opt),
        "snapshot_mib": tensor_mib(engine.initial["params"]),
        "reference_model_mib": tensor_mib(engine.ref_model.parameters())
        if engine.ref_model is not None else 0.0,
        "rss_after_load_mib": rss_loaded, "peak_rss_mib": peak_rss_mib(),
        "torch_threads": torch.get_num_threads(),
    }
    Path(out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--model", default=None, help="model directory (default: the embedded SmolLM2)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="lora")
    parser.add_argument("--child", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rank, args.questions, args.model, args.out)
        return

    machine = machine_info()
    runs: dict = {"full": [], "lora": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for variant in runs:
                out = Path(tmp) / f"{variant}{i}.json"
                cmd = [sys.executable, __file__, "--child", variant, "--rank", str(args.rank),
                       "--questions", str(args.questions), "--out", str(out)]
                if args.model:
                    cmd += ["--model", args.model]
                subprocess.run(cmd, check=True)
                r = json.loads(out.read_text())
                runs[variant].append(r)
                print(f"round {i} {variant}: step {r['step_s']} s, reset {r['reset_s'] * 1000:.1f} "
                      f"ms, continuous step {r['continuous_step_s']} s, peak RSS "
                      f"{r['peak_rss_mib']} MiB", flush=True)
    results = {}
    for variant, rounds in runs.items():
        merged = dict(rounds[-1])  # sizes are the same in every round
        merged["all_step_s"] = [x for r in rounds for x in r["all_step_s"]]
        merged["all_reset_s"] = [x for r in rounds for x in r["all_reset_s"]]
        merged["all_continuous_step_s"] = [r["continuous_step_s"] for r in rounds]
        merged["step_s"] = rnd(median(merged["all_step_s"]), 3)
        merged["reset_s"] = rnd(median(merged["all_reset_s"]), 5)
        merged["continuous_step_s"] = rnd(median(merged["all_continuous_step_s"]), 3)
        merged["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rounds)
        merged["all_peak_rss_mib"] = [r["peak_rss_mib"] for r in rounds]
        results[variant] = merged
    full, lora = results["full"], results["lora"]
    results["lora_over_full"] = {k: rnd(lora[k] / full[k], 3) if full[k] else None
                                 for k in ("step_s", "reset_s", "continuous_step_s", "peak_rss_mib")}
    settings = {"model": args.model or "SmolLM2-135M-Instruct (embedded)", "device": "cpu",
                "dtype": "float32", "lora_rank": args.rank, "responses": N_RESPONSES,
                "response_tokens": RESPONSE_TOKENS, "steps_per_question": STEPS,
                "questions": args.questions, "rounds": args.rounds}
    path = write_result(args.name, machine, settings, results, notes=[
        "Each variant ran in its own child process, the two taking turns; peak RSS is per child.",
        "Responses are random token ids (8 x 128): step cost depends on shapes, not on tokens.",
    ])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
