"""What a per-question reset costs: `engine.reset()` against the alternatives; writes results/reset.json.

Before every timed reset the engine takes one real optimiser step (AdamW state allocated, weights
moved), so reset has real work to undo. Alternatives a user without `reset()` would use:
- `load_model`: load the model and tokenizer from disk again (safetensors, page cache warm);
- `deepcopy`: keep a pristine copy in memory and `copy.deepcopy` it per question;
- `new LocalEngine`: build a whole new engine (load + snapshot + optimiser).
Each is timed `--repeats` times; medians are reported with the ratio to `reset()`.

    .venv/bin/python benchmarks/bench_reset.py [--repeats 5] [--model DIR]
"""
from __future__ import annotations

import argparse
import copy
import gc
import time

from benchutil import machine_info, median, peak_rss_mib, rnd, write_result


def timed(fn, repeats: int, before=None) -> list[float]:
    out = []
    for _ in range(repeats):
        if before is not None:
            before()
        gc.collect()
        start = time.perf_counter()
        result = fn()
        out.append(time.perf_counter() - start)
        del result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=None, help="model directory (default: the embedded SmolLM2)")
    parser.add_argument("--name", default="reset")
    args = parser.parse_args()

    import torch

    from sttrl.algorithms.grpo import grpo_loss
    from sttrl.types import TrainBatch
    from sttrl.config import Config, resolve
    from sttrl.parts import parts
    from sttrl.engines.local import LocalEngine
    from sttrl.engines.models import load_model, resolve_model

    machine = machine_info()
    path = resolve_model(args.model)
    engine = LocalEngine(parts(resolve(Config(device="cpu"), on_gpu=False)).engine, path)
    prompt = engine.encode("What is 2 + 2? Put your final answer within \\boxed{}.")
    batch = TrainBatch.shared(prompt, [prompt[:8], prompt[:6]], [1.0, -1.0])
    n_params = sum(p.numel() for p in engine.params)

    def one_step():
        engine.train(batch, grpo_loss, {"clip_eps": 0.2, "kl_coef": 0.001}, steps=1)
        assert engine.optimizer.state, "the optimiser should hold AdamW state before reset"

    reset = timed(engine.reset, args.repeats, before=one_step)
    # The reset must really restore: weights equal to the snapshot, optimiser empty.
    exact = all(torch.equal(p, p0) for p, p0 in zip(engine.params, engine.initial["params"]))
    exact = exact and not engine.optimizer.state
    reload = timed(lambda: load_model(path, torch.float32, "cpu"), args.repeats)
    pristine = engine.model
    deep = timed(lambda: copy.deepcopy(pristine), args.repeats)
    new_engine = timed(lambda: LocalEngine(parts(resolve(Config(device="cpu"), on_gpu=False)).engine, path), max(2, args.repeats // 2))

    r = median(reset)
    results = {
        "parameters": n_params,
        "reset_s": rnd(r, 5),
        "load_model_s": rnd(median(reload), 4),
        "deepcopy_s": rnd(median(deep), 4),
        "new_engine_s": rnd(median(new_engine), 4),
        "load_model_over_reset": rnd(median(reload) / r, 1),
        "deepcopy_over_reset": rnd(median(deep) / r, 1),
        "new_engine_over_reset": rnd(median(new_engine) / r, 1),
        "reset_restores_exactly": exact,
        "all_s": {"reset": [rnd(x, 5) for x in reset], "load_model": [rnd(x, 4) for x in reload],
                  "deepcopy": [rnd(x, 4) for x in deep], "new_engine": [rnd(x, 4) for x in new_engine]},
        "peak_rss_mib": peak_rss_mib(),
    }
    settings = {"model": path, "repeats": args.repeats, "dtype": "float32", "device": "cpu",
                "torch_threads": torch.get_num_threads()}
    out = write_result(args.name, machine, settings, results, notes=[
        "reset = copy the initial weights back in place + load an empty AdamW state (after one real step).",
        "load_model reads safetensors from a warm page cache; a cold disk would make it slower.",
        "deepcopy keeps a second full copy of the model in memory, as reset's snapshot does.",
    ])
    print(f"reset {r * 1000:.1f} ms | load_model {median(reload):.3f} s ({results['load_model_over_reset']}x) | "
          f"deepcopy {median(deep):.3f} s ({results['deepcopy_over_reset']}x) | new LocalEngine "
          f"{median(new_engine):.3f} s ({results['new_engine_over_reset']}x) | exact={exact}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
