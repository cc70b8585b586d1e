#!/usr/bin/env bash
# Run every benchmark, one at a time, then write docs/PERFORMANCE.md from benchmarks/results/.
# About 60 minutes on a quiet 2-core CPU (the TRL comparison is a third of it). Run it on an
# otherwise idle machine: on 2 cores a busy second core slows torch's kernels 3-5x and every
# number here becomes meaningless. The scale-engine steps need `bash scripts/setup.sh --scale`.
#   bash benchmarks/run_all.sh            # everything (creates .venv-bench for TRL if missing)
#   SKIP_TRL=1 bash benchmarks/run_all.sh # without the TRL comparison
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start )) s elapsed)"; }

step bench_question;   $py benchmarks/bench_question.py
step "bench_question (scale engine)"; $py benchmarks/bench_question.py --engine ray
step bench_reset;      $py benchmarks/bench_reset.py
step bench_generation; $py benchmarks/bench_generation.py --repeats 2   # 3 repeats: +9 min
step bench_grading;    $py benchmarks/run_grading.py
step bench_weight_sync; $py benchmarks/bench_weight_sync.py --repeats 5
step profile_train;    $py benchmarks/profile_train.py --repeats 2
step profile_sampling; $py benchmarks/profile_sampling.py
step bench_lora;       $py benchmarks/bench_lora.py
if [ "${SKIP_TRL:-0}" != 1 ]; then
    if [ ! -x .venv-bench/bin/python ] || ! .venv-bench/bin/python -c "import trl" 2>/dev/null; then
        step "creating .venv-bench"; bash benchmarks/setup_bench_venv.sh
    fi
    step bench_trl; .venv-bench/bin/python benchmarks/bench_trl.py
fi
step make_report; $py benchmarks/make_report.py
echo "total $(( $(date +%s) - start )) s"
