"""What one weight sync costs on the scale engine, per path; writes results/weight_sync.json.

For each `--weight_sync` path (broadcast: a gloo group from actor rank 0 to the vLLM engines;
object_store: Ray's object store) one engine is built (1 actor rank, 1 vLLM engine, CPU; one
engine at a time: two do not fit in memory beside other work) and its `WeightSync.sync` is
timed `--repeats` times, each sync forced by a new actor version: rank 0 gathers every ZeRO-3
parameter and the engine reloads every module. After the timed syncs vLLM's log-probs of a
sampled response are compared with the actor's, so a fast but wrong sync shows.

    .venv/bin/python benchmarks/bench_weight_sync.py [--repeats 5] [--model DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from benchutil import machine_info, median, rnd, write_result

PATHS = ("broadcast", "object_store")
PROMPT = "What is 2 + 2? Put your final answer within \\boxed{}."


def time_sync(engine) -> float:
    engine.weights.changed()  # the engines hold another version: sync all
    start = time.perf_counter()
    engine.weights.sync(engine.timeout)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=None, help="model directory (default: the embedded SmolLM2)")
    parser.add_argument("--name", default="weight_sync")
    args = parser.parse_args()

    import ray

    from sttrl.config import Config, resolve
    from sttrl.parts import parts
    from sttrl.engines.models import resolve_model
    from sttrl.engines.ray.engine import RayEngine

    machine = machine_info()
    path = resolve_model(args.model)
    tmp = tempfile.mkdtemp(prefix="ray_", dir="/tmp")
    ray.init(num_cpus=os.cpu_count(), _temp_dir=tmp, include_dashboard=False, log_to_driver=False)
    results, n_params = {}, None
    try:
        for how in PATHS:
            cfg = resolve(Config(engine="ray", model=path, weight_sync=how, actor_num_gpus=1,
                                 vllm_num_engines=1, progress=False), on_gpu=False)
            start = time.perf_counter()
            engine = RayEngine(parts(cfg).engine, path)
            startup = time.perf_counter() - start
            try:
                time_sync(engine)  # warm-up: first allocations, first reload
                times = [time_sync(engine) for _ in range(args.repeats)]
                prompt = engine.encode(PROMPT)
                response = engine.generate(PROMPT, 1, 1.0, 1.0, 32, seed=0)[0].token_ids
                gap = engine.check_weights(prompt, response)
                if n_params is None:
                    n_params = sum(w.numel() for w in engine.state_dict()["model"].values())
            finally:
                engine.close()
            results[how] = {"sync_s": rnd(median(times), 3), "all_s": [rnd(t, 3) for t in times],
                            "engine_start_s": rnd(startup, 1), "max_logprob_gap": gap}
            print(f"{how}: {median(times):.3f} s per sync (all {[round(t, 3) for t in times]}), "
                  f"start-up {startup:.1f} s, vLLM vs actor {gap:.1e}")
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    results["object_store_over_broadcast"] = rnd(
        results["object_store"]["sync_s"] / results["broadcast"]["sync_s"], 2)
    settings = {"model": path, "parameters": n_params, "repeats": args.repeats, "dtype": "float32",
                "device": "cpu", "actor_ranks": 1, "vllm_engines": 1, "backend": "gloo"}
    out = write_result(args.name, machine, settings, results, notes=[
        "One sync = rank 0 gathers every ZeRO-3 parameter, the engine reloads every module "
        "(one decoder layer per reload call) and resets its prefix cache.",
        "max_logprob_gap: vLLM vs the actor on one sampled response after the timed syncs.",
        "The nccl backend (GPUs) is the broadcast path's same code; it has not run here.",
    ])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
