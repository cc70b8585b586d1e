"""Sampling throughput: the local engine against HF `model.generate`; writes results/generation.json.

n samples of one ARITH-TTT prompt, 128 new tokens, temperature 1.0, top-p 1.0, no top-k, for
n in --ns (default 8 32 64). Every sample decodes exactly --max_new_tokens tokens (the stop
token is disabled on both sides: the engine gets `stop_ids = [-1]`, HF gets `min_new_tokens`),
so both do the same amount of work whatever they sample; tokens/s = n * max_new_tokens / wall
seconds of the whole call (prefill, decode loop, detokenisation).

- `engine`: `LocalEngine.generate` (prompt prefilled once, its KV cache shared by the n rows;
  computes per-token log-prob, logsumexp and top-20 summaries as it goes), with
  `generation_threads` 1 (the default) and 2.
- `hf`: `model.generate(num_return_sequences=n, do_sample=True)` on the same model (each row
  prefills its own copy of the prompt), at torch's default 2 threads (--hf_threads to add 1).
- `vllm`: a hook for the scale engine, `measure_vllm` below; until it exists the column reads
  "not measured yet".

Configurations are interleaved within each repeat so that machine drift hits them all alike.

    .venv/bin/python benchmarks/bench_generation.py [--ns 8 32 64] [--repeats 3] [--model DIR]
"""
from __future__ import annotations

import argparse
import time

from benchutil import machine_info, median, peak_rss_mib, rnd, write_result

PROMPT_QUESTION = 0  # the first ARITH-TTT question


def measure_vllm(model_path: str, prompt: str, n: int, max_new_tokens: int, seed: int):
    """Tokens/s of the vLLM scale engine for the same request, or None while it is not available.

    Hook for the lead: once the scale engine exists, build it here (once, cached on the function)
    and time `engine.generate(prompt, n, 1.0, 1.0, max_new_tokens, seed)` with the stop token
    disabled exactly as for the local engine. Returning None makes the report print
    "not measured yet" instead of a number.
    """
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="engine generation_threads values to compare")
    parser.add_argument("--hf_threads", type=int, nargs="+", default=[2],
                        help="torch threads for HF generate (2 = torch's default on this machine)")
    parser.add_argument("--no_hf", action="store_true", help="skip the HF model.generate baseline")
    parser.add_argument("--model", default=None, help="model directory (default: the embedded SmolLM2)")
    parser.add_argument("--name", default="generation")
    args = parser.parse_args()

    import torch
    from transformers import GenerationConfig

    from sttrl.data import format_prompt, make_arith, model_family
    from sttrl.engines.local import LocalEngine
    from sttrl.engines.models import resolve_model

    machine = machine_info()
    default_threads = torch.get_num_threads()
    path = resolve_model(args.model)
    engine = LocalEngine(path, device="cpu")
    engine.stop_ids = [-1]  # no sample may stop early: fixed work per call
    question = make_arith(PROMPT_QUESTION + 1, seed=0)[PROMPT_QUESTION].question
    prompt = format_prompt(question, engine.tokenizer, model_family(path))
    prompt_ids = engine.encode(prompt)
    model, tok = engine.model, engine.tokenizer
    T = args.max_new_tokens

    def run_engine(n, threads, seed, T=T):
        engine.generation_threads = threads
        start = time.perf_counter()
        samples = engine.generate(prompt, n, 1.0, 1.0, T, seed)
        wall = time.perf_counter() - start
        assert all(len(s.token_ids) == T for s in samples)
        return wall

    def run_hf(n, threads, seed, T=T):
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                  max_new_tokens=T, min_new_tokens=T, num_return_sequences=n,
                                  pad_token_id=tok.pad_token_id, eos_token_id=engine.stop_ids_real)
        try:
            start = time.perf_counter()
            with torch.inference_mode():
                ids = torch.tensor([prompt_ids])
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     generation_config=config)
                tok.batch_decode(out[:, len(prompt_ids):], skip_special_tokens=True)
            wall = time.perf_counter() - start
        finally:
            torch.set_num_threads(default_threads)
        assert out.shape == (n, len(prompt_ids) + T)
        return wall

    engine.stop_ids_real = LocalEngine._stop_ids(engine)  # HF's min_new_tokens needs the real EOS
    configs = [("engine", t) for t in args.threads]
    if not args.no_hf:
        configs += [("hf", t) for t in args.hf_threads]
    runners = {"engine": run_engine, "hf": run_hf}

    # Warm-up (untimed, short): first calls allocate and pick kernels.
    for kind, threads in configs:
        runners[kind](min(args.ns), threads, 0, T=8)

    walls = {(kind, t, n): [] for kind, t in configs for n in args.ns}
    for rep in range(args.repeats):
        for n in args.ns:
            for kind, threads in configs:
                wall = runners[kind](n, threads, 1000 * rep + n)
                walls[(kind, threads, n)].append(wall)
                print(f"rep {rep} n={n:3d} {kind:6s} threads={threads}: {wall:6.2f} s  "
                      f"{n * T / wall:7.1f} tok/s", flush=True)

    table = []
    for n in args.ns:
        row = {"n": n, "tokens": n * T}
        for kind, threads in configs:
            w = median(walls[(kind, threads, n)])
            row[f"{kind}_{threads}t_s"] = rnd(w)
            row[f"{kind}_{threads}t_tok_per_s"] = rnd(n * T / w, 1)
        v = measure_vllm(path, prompt, n, T, 0)
        row["vllm_tok_per_s"] = v  # None: not measured yet
        if "engine_1t_tok_per_s" in row and "hf_2t_tok_per_s" in row:
            row["engine_1t_over_hf_2t"] = rnd(row["engine_1t_tok_per_s"] / row["hf_2t_tok_per_s"], 2)
        if "engine_1t_tok_per_s" in row and "engine_2t_tok_per_s" in row:
            row["engine_1t_over_2t"] = rnd(row["engine_1t_tok_per_s"] / row["engine_2t_tok_per_s"], 2)
        table.append(row)
        print(" | ".join(f"{k} {v}" for k, v in row.items()))

    results = {"table": table,
               "all_s": {f"{k}_{t}t_n{n}": [rnd(x) for x in v] for (k, t, n), v in walls.items()},
               "vllm": "not measured yet",
               "peak_rss_mib": peak_rss_mib()}
    settings = {"model": path, "prompt_tokens": len(prompt_ids), "max_new_tokens": T,
                "temperature": 1.0, "top_p": 1.0, "top_k": None, "ns": args.ns,
                "repeats": args.repeats, "threads": args.threads, "hf_threads": args.hf_threads,
                "dtype": "float32",
                "default_torch_threads": default_threads}
    out = write_result(args.name, machine, settings, results, notes=[
        "Every sample decodes exactly max_new_tokens tokens on both sides (stop token disabled).",
        "The engine also computes per-token log-prob, logsumexp and top-20 summaries; HF does not.",
        "HF prefills n copies of the prompt; the engine prefills once and shares the KV cache.",
        "vLLM: not measured yet (hook: measure_vllm in benchmarks/bench_generation.py).",
    ])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
