"""What one decoding step's sampling costs, against the model's forward; writes results/sampling_profile.json.

Not part of run_all.sh: evidence for `sample_next` in sttrl/engines/local.py. For n rows of
SmolLM2's vocabulary (49,152 logits from the real model's last prefill position, repeated), on 1
thread (the engine's decoding default), times:

- `before`: what the engine sampled with until this change: softmax, then for top-p < 1 a full
  sort of the vocabulary, then `torch.multinomial` (its code is kept below, as `old_sample_next`);
- `after`: `sample_next` as the engine now runs it (inverse CDF with one uniform per row; the
  nucleus looked for among the top 1024 tokens first);
- `forward`: one decoding step of the model itself (n rows, one new token each, a KV cache of the
  49-token prompt), for scale.

Both samplers at the two settings the driver uses: votes (temperature 0.8, top-p 1.0) and
evaluation (0.6 / 0.95). Median of --repeats timings of --calls calls each.

    .venv/bin/python benchmarks/profile_sampling.py [--ns 8 16 64] [--repeats 5]
"""
from __future__ import annotations

import argparse
import time

from benchutil import machine_info, median, rnd, write_result


def old_sample_next(logits, temperature, top_p, generator):
    import torch

    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--model", default=None)
    parser.add_argument("--name", default="sampling_profile")
    args = parser.parse_args()

    import torch

    from sttrl.data import format_prompt, make_arith, model_family
    from sttrl.config import Config, resolve
    from sttrl.parts import parts
    from sttrl.engines.local import LocalEngine
    from sttrl.engines.sampling import sample_next
    from sttrl.engines.models import resolve_model

    machine = machine_info()
    path = resolve_model(args.model)
    engine = LocalEngine(parts(resolve(Config(device="cpu"), on_gpu=False)).engine, path)
    torch.set_num_threads(1)
    prompt = format_prompt(make_arith(1, seed=0)[0].question, engine.tokenizer, model_family(path))
    ids = torch.tensor([engine.encode(prompt)])
    with torch.inference_mode():
        out = engine.model(input_ids=ids, use_cache=True)
    settings = {"votes": (0.8, 1.0), "eval": (0.6, 0.95)}

    def timed(fn) -> float:
        walls = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(args.calls):
                fn()
            walls.append((time.perf_counter() - start) / args.calls)
        return 1000 * median(walls)

    rows = []
    for n in args.ns:
        logits = out.logits[:, -1, :].float().expand(n, -1).contiguous()  # [n, V]
        gen = torch.Generator().manual_seed(0)
        row = {"n": n}
        with torch.inference_mode():
            for name, (temperature, top_p) in settings.items():
                row[f"{name}_before_ms"] = rnd(timed(lambda: old_sample_next(logits, temperature, top_p, gen)), 2)
                row[f"{name}_after_ms"] = rnd(timed(lambda: sample_next(logits, temperature, top_p, gen)), 2)
                row[f"{name}_speedup"] = rnd(row[f"{name}_before_ms"] / row[f"{name}_after_ms"], 1)
            cache = out.past_key_values
            tok = logits.argmax(-1)[:, None]
            pos = torch.full((n, 1), ids.shape[1])

            def step():
                c = type(cache)()  # a fresh n-row copy of the prompt's cache per call
                for layer, src in zip(range(len(cache.layers)), cache.layers):
                    c.update(src.keys.expand(n, -1, -1, -1), src.values.expand(n, -1, -1, -1), layer)
                engine.model(input_ids=tok, past_key_values=c, position_ids=pos, use_cache=True)

            row["forward_ms"] = rnd(timed(step), 2)
        rows.append(row)
        print(row, flush=True)
    write_result(args.name, machine, {"model": path, "ns": args.ns, "repeats": args.repeats,
                                      "calls": args.calls, "threads": 1, "settings": settings},
                 {"rows": rows}, notes=[
                     "ms per call, median over repeats; forward_ms includes building the n-row "
                     "cache copy it decodes from.",
                 ])


if __name__ == "__main__":
    main()
