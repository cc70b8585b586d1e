#!/usr/bin/env bash
# Create .venv-bench: a separate venv holding TRL for benchmarks/bench_trl.py, so that TRL and its
# dependencies never enter the project's .venv. torch is pinned to the project's CPU build (an
# unpinned torch pulls several GB of CUDA wheels); trl 1.16.0 accepts transformers 5.19
# (it asks for transformers>=4.56.2). STTRL itself goes in editable, with its own requirements.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && py=$(readlink -f .venv/bin/python)
if [ ! -x .venv-bench/bin/python ]; then
    "$py" -m venv .venv-bench
fi
.venv-bench/bin/pip install -q torch==2.13.0 'transformers>=5.16.1,<5.20' 'trl==1.16.0' accelerate datasets
.venv-bench/bin/pip install -q --no-deps -e .
.venv-bench/bin/pip install -q -r requirements.txt
.venv-bench/bin/python -c "import trl, transformers, torch; print('trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
