"""What vLLM's in-place weight reload costs on the scale engine; writes results/vllm_reload.json.

Not part of run_all.sh: evidence for two choices in sttrl/engines/ray/weight_sync.py (the
chunk size and the reset's reload from disk). The scale engine's vLLM actor (no Ray, fp32,
CPU) reloads the whole checkpoint, already in memory, in three ways:

- `per_module`: one reload call per module group (one per decoder layer), as syncs were sent;
- `chunked`: whole modules packed up to SYNC_CHUNK_BYTES per call, as syncs are sent now;
- `one_call`: everything in one call (the floor: no per-call cost, but a full extra copy);

and `from_disk`: `RolloutActor.load_initial_weights`, what a reset does (reads the safetensors
files, then chunked reloads). Median of --repeats.

    .venv/bin/python benchmarks/profile_vllm_reload.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import glob
import os
import time

from benchutil import actor_settings, machine_info, median, rnd, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a safetensors directory (default: SmolLM2)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--name", default="vllm_reload")
    args = parser.parse_args()

    from safetensors.torch import load_file
    from transformers import AutoConfig

    from sttrl.engines.models import resolve_model
    from sttrl.engines.ray.rollout import RolloutActor
    from sttrl.engines.ray.weight_sync import SYNC_CHUNK_BYTES, weight_groups

    machine = machine_info()
    path = resolve_model(args.model)
    weights = {}
    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        weights.update(load_file(f))
    tied = {}
    if getattr(AutoConfig.from_pretrained(path), "tie_word_embeddings", False):
        tied = {"model.embed_tokens.weight": "lm_head.weight"}
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    names = sorted(weights)
    nbytes = {n: weights[n].nbytes for n in names}
    ways = {"per_module": weight_groups(names), "chunked": weight_groups(names, nbytes),
            "one_call": [names]}

    actor = RolloutActor(0, [0], actor_settings(path, max_model_len=1024))
    actor.setup()
    times = {way: [] for way in [*ways, "from_disk"]}
    for _ in range(args.repeats):
        for way, groups in ways.items():
            start = time.perf_counter()
            for group in groups:
                actor.load_weights({n: weights[n] for n in group})
            actor.weights_loaded()
            times[way].append(time.perf_counter() - start)
        start = time.perf_counter()
        assert actor.load_initial_weights(tied)
        times["from_disk"].append(time.perf_counter() - start)
    actor.shutdown()

    results = {way: {"median_s": rnd(median(t), 3), "all_s": [rnd(x, 3) for x in t],
                     "calls": len(ways[way]) if way in ways else None}
               for way, t in times.items()}
    for way, r in results.items():
        print(f"{way:>10}: {r['median_s']:.3f} s ({r['calls'] or 'chunked'} calls)  all {r['all_s']}")
    settings = {"model": path, "bytes": sum(nbytes.values()), "repeats": args.repeats,
                "sync_chunk_bytes": SYNC_CHUNK_BYTES, "dtype": "float32", "device": "cpu"}
    out = write_result(args.name, machine, settings, results, notes=[
        "A reload call = vLLM's reload_weights on the tensors given + process_weights_after_"
        "loading of the modules they touch; weights_loaded() resets the prefix cache.",
        "The tied output embedding is sent under both names, as a sync sends it."])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
