"""Run benchmarks/bench_grading.py (warm and --cold) and record its JSON lines in results/grading.json.

bench_grading.py prints one JSON line per run; this wrapper runs each mode --repeats times,
keeps every line, takes the median of each rate, and adds the machine facts and the exact
command lines in the format every other benchmark writes, so make_report.py can table it.

    .venv/bin/python benchmarks/run_grading.py [--repeats 3] [--data ../shared/data/MATH-TTT/test.json]
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from benchutil import machine_info, median, write_result

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="passed on to bench_grading.py")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    machine = machine_info()
    runs = {}
    for mode, extra in (("warm", []), ("cold", ["--cold"])):
        cmd = [sys.executable, str(HERE / "bench_grading.py"), *extra]
        if args.data:
            cmd += ["--data", args.data]
        lines = []
        for _ in range(args.repeats):
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            line = [x for x in out.splitlines() if x.startswith("{")][-1]
            lines.append(json.loads(line))
            print(f"{mode}: {line}", flush=True)
        shown = [str(Path(c).relative_to(Path.cwd())) if Path(c).is_absolute() and
                 Path(c).is_relative_to(Path.cwd()) else c for c in cmd]
        rates = {k: median([x[k] for x in lines]) for k in lines[0]
                 if isinstance(lines[0][k], float) and k != "agreement_with_expected"}
        runs[mode] = {"command": shlex.join(shown), "median": rates,
                      "agreement_with_expected": lines[0]["agreement_with_expected"],
                      "pairs": lines[0]["pairs"], "runs": lines}
    path = write_result("grading", machine, {"data": args.data or "../shared/data/MATH-TTT/test.json",
                                             "repeats": args.repeats},
                        runs, notes=["Numbers are bench_grading.py's own output; see its docstring for the method."])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
