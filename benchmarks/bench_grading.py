"""Grading throughput on MATH-500 answers; prints one JSON line.

Each row's reference is graded against a reformatted copy of itself (should be True) and against
the next row's different reference (should be False). One untimed pass first warms the worker
process (imports, the LaTeX parser's automaton), then every cache is emptied. During the timed
pass the grade cache is cleared before every call; the workers' per-string parse cache is kept,
as in voting, where the same cluster representatives recur. --cold clears that too before every
call, so each grade parses both strings from scratch. Also reports the rate when every pair is
forced through math-verify (no fast path), measured the same way. Rates are given per wall
second and per CPU second (this process plus its worker; the two never run at the same time).

    .venv/bin/python benchmarks/bench_grading.py [--data ../shared/data/MATH-TTT/test.json] [--cold]
"""
import argparse
import importlib
import json
import os
import time
from pathlib import Path

from sttrl.rewards import clear_grade_cache, grade

grade_module = importlib.import_module("sttrl.rewards.grade")  # the package re-exports grade() over the module name


def reformat(answer: str, i: int) -> str:
    """An equivalent answer in the kind of variant formatting a model writes."""
    if i % 4 == 0:
        return answer.replace(" ", "")
    if i % 4 == 1:
        return answer.replace("\\frac", "\\dfrac").replace(",", ", ")
    if i % 4 == 2:
        return f"${answer}$"
    return answer.replace("\\left", "").replace("\\right", "") + "."


def workers_cpu() -> float:
    """CPU seconds used so far by the live math-verify workers (Linux /proc), so the rate per CPU
    second is meaningful on a machine that other jobs are also loading."""
    ticks = 0
    for worker in grade_module._idle:
        fields = Path(f"/proc/{worker.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "MATH-TTT" / "test.json"
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--cold", action="store_true", help="also clear the workers' parse caches per call")
    args = parser.parse_args()

    answers = [row["answer"] for row in json.loads(args.data.read_text())]
    pairs = []
    for i, answer in enumerate(answers):
        other = next(a for a in answers[i + 1:] + answers[:i] if a != answer)
        pairs += [(reformat(answer, i), answer, True), (other, answer, False)]

    for pred, ref, _ in pairs:  # warm-up, untimed
        grade_module._verify_in_worker(pred, ref)

    def timed(fn):
        """(wall seconds, CPU seconds of this process and the workers, results)."""
        clear_grade_cache(workers=True)
        wall = cpu = 0.0
        results = []
        for pred, ref, _ in pairs:
            clear_grade_cache(workers=args.cold)
            start, start_cpu = time.perf_counter(), time.process_time() + workers_cpu()
            results.append(fn(pred, ref))
            wall += time.perf_counter() - start
            cpu += time.process_time() + workers_cpu() - start_cpu
        return wall, cpu, results

    wall, cpu, results = timed(grade)
    mv_wall, mv_cpu, _ = timed(grade_module._verify_in_worker)
    print(json.dumps({
        "pairs": len(pairs),
        "cold": args.cold,
        "seconds": round(wall, 3),
        "grades_per_s": round(len(pairs) / wall, 1),
        "grades_per_cpu_s": round(len(pairs) / cpu, 1),
        "math_verify_only_per_s": round(len(pairs) / mv_wall, 1),
        "math_verify_only_per_cpu_s": round(len(pairs) / mv_cpu, 1),
        "agreement_with_expected": round(sum(r == e for r, (_, _, e) in zip(results, pairs)) / len(pairs), 4),
    }))


if __name__ == "__main__":
    main()
