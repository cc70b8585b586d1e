"""Is CPU decoding bound by reading the weights? fp32 against bf16 weights; writes results/generation_profile.json.

Not part of run_all.sh: evidence for a change to the local engine. Times `LocalEngine.generate`
(the stop token disabled, so every sample decodes exactly --max_new_tokens) for n in --ns with
the model's weights in fp32 (as the engine loads them on CPU) and cast to bf16 in place
(`engine.model.to(torch.bfloat16)`; the engine already casts logits to fp32 before sampling), at
1 and 2 threads. Per-step seconds that barely grow with n mean the step is bound by streaming
the weights from memory, which halving their size addresses. Median of --repeats runs.

    .venv/bin/python benchmarks/profile_generation.py [--ns 8 16] [--repeats 2]
"""
from __future__ import annotations

import argparse
import time

from benchutil import machine_info, median, rnd, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--model", default=None)
    parser.add_argument("--name", default="generation_profile")
    args = parser.parse_args()

    import torch

    from sttrl.data import format_prompt, make_arith, model_family
    from sttrl.config import Config, resolve
    from sttrl.parts import parts
    from sttrl.engines.local import LocalEngine
    from sttrl.engines.models import resolve_model

    machine = machine_info()
    path = resolve_model(args.model)
    engine = LocalEngine(parts(resolve(Config(device="cpu"), on_gpu=False)).engine, path)
    engine.stop_ids = [-1]
    question = make_arith(1, seed=0)[0].question
    prompt = format_prompt(question, engine.tokenizer, model_family(path))
    T = args.max_new_tokens
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        engine.model.to(dtype)
        engine.generate(prompt, 2, 1.0, 1.0, 4, 0)  # warm-up
        for n in args.ns:
            for threads in args.threads:
                engine.generation_threads = threads
                walls = []
                for rep in range(args.repeats):
                    start = time.perf_counter()
                    engine.generate(prompt, n, 1.0, 1.0, T, rep)
                    walls.append(time.perf_counter() - start)
                w = median(walls)
                row = {"dtype": str(dtype).split(".")[-1], "n": n, "threads": threads, "s": rnd(w),
                       "ms_per_step": rnd(1000 * w / T, 1), "tok_per_s": rnd(n * T / w, 1),
                       "all_s": [rnd(x) for x in walls]}
                rows.append(row)
                print(row, flush=True)
    engine.model.to(torch.float32)
    write_result(args.name, machine, {"model": path, "max_new_tokens": T, "ns": args.ns,
                                      "threads": args.threads, "repeats": args.repeats}, {"rows": rows})


if __name__ == "__main__":
    main()
