"""Where the default run's memory goes: resident memory per phase and the bytes of its tensors
by role; writes results/memory_default.json.

Runs the default command in this process (`main.py --output_dir <tmp> --progress false`: five
ARITH-TTT questions, SmolLM2-135M-Instruct, fp32, CPU), with every `LocalEngine` call timed and
measured from outside (the engine's code is untouched). Per phase (load, generate, train, score,
reset): the RSS before and after the call and its peak during the call (Linux: VmHWM, reset
with /proc/self/clear_refs before each call), the largest over the run. At the end, the tensors
by role: weights, trainable weights, their gradients (still allocated after the last step),
AdamW's moments, the reset snapshot and the reference model (none in reset mode). `--old`
swaps in the full-logits log-probs (benchmarks/full_logits.py) for a before/after of the
chunked head in one command; the whole process's peak is what `/usr/bin/time -v` reports as
"Maximum resident set size".

    .venv/bin/python benchmarks/profile_memory.py [--old] [--num_questions N] [--name NAME]
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from benchutil import machine_info, rnd, write_result

PHASES = {"generate_groups": "generate", "train": "train", "score": "score", "reset": "reset"}


def status_mib(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def tensor_mib(tensors) -> float:
    return rnd(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", action="store_true", help="the full-logits log-probs (before)")
    parser.add_argument("--name", default=None)
    parser.add_argument("--num_questions", type=int, default=None,
                        help="fewer than the default run's 5 questions")
    args = parser.parse_args()

    machine = machine_info()
    start_rss = status_mib("VmRSS")
    import torch

    import sttrl.engines.local as local
    from sttrl.cli import main as cli_main

    if args.old:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import full_logits
        local.response_logprobs = full_logits.response_logprobs
        local.shared_prompt_logprobs = full_logits.shared_prompt_logprobs
    imported_rss = status_mib("VmRSS")
    calls: list[dict] = []
    engines = []

    def measured(phase, fn):
        def wrapper(self, *a, **k):
            before = status_mib("VmRSS")
            reset_peak()
            t = time.perf_counter()
            try:
                return fn(self, *a, **k)
            finally:
                calls.append({"phase": phase, "rss_before_mib": rnd(before, 1),
                              "rss_after_mib": rnd(status_mib("VmRSS"), 1),
                              "peak_mib": rnd(status_mib("VmHWM"), 1),
                              "seconds": rnd(time.perf_counter() - t, 2)})
        return wrapper

    init = local.LocalEngine.__init__

    def load(self, *a, **k):
        init(self, *a, **k)
        engines.append(self)

    local.LocalEngine.__init__ = measured("load", load)
    for name, phase in PHASES.items():
        setattr(local.LocalEngine, name, measured(phase, getattr(local.LocalEngine, name)))
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--num_questions", str(args.num_questions)] if args.num_questions else []
        cli_main(["--output_dir", tmp, "--progress", "false", *extra])
    engine = engines[0]
    phases = {}
    for phase in ["load", *PHASES.values()]:
        mine = [c for c in calls if c["phase"] == phase]
        if mine:
            top = max(mine, key=lambda c: c["peak_mib"])
            phases[phase] = {"calls": len(mine), "max_peak_mib": top["peak_mib"],
                             "rss_before_that_peak_mib": top["rss_before_mib"],
                             "max_rss_after_mib": max(c["rss_after_mib"] for c in mine),
                             "seconds": rnd(sum(c["seconds"] for c in mine), 1)}
    opt = [v for s in engine.optimizer.state.values() for v in s.values()
           if isinstance(v, torch.Tensor)]
    grads = [p.grad for p in engine.params if p.grad is not None]
    tensors = {"weights_mib": tensor_mib(engine.model.parameters()),
               "trainable_mib": tensor_mib(engine.params),
               "gradients_after_run_mib": tensor_mib(grads),
               "adamw_state_after_run_mib": tensor_mib(opt),
               "adamw_state_when_stepping_mib": 2 * tensor_mib(engine.params),
               "reset_snapshot_mib": tensor_mib(engine.initial["params"]),
               "reference_model_mib": tensor_mib(engine.ref_model.parameters())
               if engine.ref_model is not None else 0.0}
    results = {"path": "old (full logits)" if args.old else "new (chunked head)",
               "rss_at_start_mib": rnd(start_rss, 1), "rss_after_imports_mib": rnd(imported_rss, 1),
               "phases": phases, "tensors": tensors,
               # clear_refs resets ru_maxrss with VmHWM: the run's peak is the largest call's
               "peak_rss_mib": max(c["peak_mib"] for c in calls),
               "calls": calls}
    settings = {"command": "main.py --output_dir <tmp> --progress false", "device": "cpu",
                "num_questions": args.num_questions or "the default (5)",
                "dtype": "float32", "torch_threads": torch.get_num_threads()}
    name = args.name or ("memory_default_old" if args.old else "memory_default")
    path = write_result(name, machine, settings, results, notes=[
        "Per phase: the largest peak RSS during one call of it, and the RSS just before that call.",
        "Tensors by role at the end of the run (gradients stay allocated after the last step).",
    ])
    print({k: v["max_peak_mib"] for k, v in phases.items()}, tensors, results["peak_rss_mib"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
