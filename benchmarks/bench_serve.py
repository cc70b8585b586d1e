"""Latency of `sttrl serve` per phase: starts the real server (a subprocess, the bundled model
by default, CPU defaults), sends `--requests` chat completions one after another with the
`openai` client, and records each one's wall time and the server's seconds per phase (the
response's `sttrl.seconds`); writes results/serve.json.

    .venv/bin/python benchmarks/bench_serve.py [--requests 3] [--model DIR] [-- serve flags]

The server inherits the environment: on a busy machine `OMP_NUM_THREADS=1` (recorded in the
results' settings) keeps torch's threads from contending (docs/SERVE.md, "A busy machine").

Each request is a different ARITH-TTT-style sum (so no two share a seed), in the chat form a
client would send. Flags after `--` go to `sttrl serve` (e.g. `-- --lora_rank 0` for full
weights).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchutil import machine_info, rnd, write_result

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is 3 + 4?", "What is 12 + 9?", "What is 7 + 8?", "What is 25 + 17?",
             "What is 6 + 5?", "What is 14 + 3?", "What is 9 + 9?", "What is 31 + 12?"]
INSTRUCTION = "Put your final answer within \\boxed{}."


def start(flags: list[str]):
    proc = subprocess.Popen([sys.executable, "main.py", "serve", "--port", "0", *flags],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", line)
        if found:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, found.group(1)
    raise SystemExit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--model", default=None, help="model (default: the embedded SmolLM2)")
    parser.add_argument("--name", default="serve")
    parser.add_argument("serve_flags", nargs="*", help="after --: flags for sttrl serve")
    args = parser.parse_args()
    import openai

    machine = machine_info()
    flags = (["--model", args.model] if args.model else []) + args.serve_flags
    started = time.perf_counter()
    proc, url = start(flags)
    startup = time.perf_counter() - started
    rows = []
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0,
                               timeout=3600)
        name = client.models.list().data[0].id
        for i in range(args.requests):
            q = QUESTIONS[i % len(QUESTIONS)]
            start_s = time.perf_counter()
            out = client.chat.completions.create(
                model=name, messages=[{"role": "user", "content": f"{q}\n{INSTRUCTION}"}])
            wall = time.perf_counter() - start_s
            facts = out.model_extra["sttrl"]
            rows.append({"question": q, "wall_s": rnd(wall), "seconds": facts["seconds"],
                         "steps": facts["steps"], "skip_reason": facts["skip_reason"],
                         "pseudo_label": facts["pseudo_label"], "answer": facts["answer"],
                         "majority_ratio": rnd(facts["majority_ratio"])})
            print(f"request {i + 1}: {wall:.1f} s wall, {facts['steps']} steps, "
                  f"phases {facts['seconds']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    phases = sorted({p for r in rows for p in r["seconds"]})
    mean = {p: rnd(statistics.mean(r["seconds"].get(p, 0.0) for r in rows)) for p in phases}
    results = {"startup_s": rnd(startup), "requests": rows, "mean_seconds_per_phase": mean,
               "mean_wall_s": rnd(statistics.mean(r["wall_s"] for r in rows))}
    settings = {"serve_flags": flags, "requests": args.requests,
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    path = write_result(args.name, machine, settings, results)
    print(f"mean seconds per phase: {mean}; written to {path}")


if __name__ == "__main__":
    main()
