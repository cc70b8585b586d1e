"""docs/PERFORMANCE.md's `sttrl serve` section, for make_report.py: latency per phase of
requests to the real server on the bundled model (results/serve.json, bench_serve.py)."""
from __future__ import annotations

from make_report import command, fmt, table

PHASES = ("queue", "generate", "vote", "train", "answer", "reset", "total")


def serve_section(d: dict | None) -> tuple[list[str], list]:
    lines = ["## 11. `sttrl serve`: latency per phase (`bench_serve.py`)", ""]
    if d is None:
        return lines + ["Not run yet: `.venv/bin/python benchmarks/bench_serve.py`.", ""], []
    r = d["results"]
    lines += ["The real server in a subprocess (`sttrl serve` with the CPU defaults: 16 votes, 8 "
              "trained, up to 5 LoRA steps ended by `--stop_agreement`, 8 answer samples, 128 "
              "tokens), requests one after another from the `openai` client, each a different "
              "sum; the server's own seconds per phase (the response's `sttrl.seconds`) and the "
              "client's wall time. `generate` is the votes, `answer` the adapted model's answer "
              "samples (none when the update was skipped: the votes answer).", ""]
    threads = d["settings"].get("OMP_NUM_THREADS")
    if threads:
        lines += [f"Run with `OMP_NUM_THREADS={threads}` in the environment (server and client).",
                  ""]
    lines += command(d)
    rows = [[i + 1, q["question"], q["steps"], q["skip_reason"] or "—",
             *[fmt(q["seconds"].get(p)) for p in PHASES], fmt(q["wall_s"])]
            for i, q in enumerate(r["requests"])]
    rows.append(["mean", "", "", "", *[fmt(r["mean_seconds_per_phase"].get(p)) for p in PHASES],
                 fmt(r["mean_wall_s"])])
    lines += table(["request", "question", "steps", "skipped", *PHASES, "wall"], rows)
    lines += ["", f"Server start (imports, model load, bind) to ready: {fmt(r['startup_s'])} s. "
              "A request's first `vote` includes starting the grading worker (math-verify in a "
              "child process, sttrl/rewards/grade.py), once per server. The load line above "
              "says how busy the machine was: seconds from a loaded machine are not comparable "
              "with the quiet machine's sections.", ""]
    return lines, []
