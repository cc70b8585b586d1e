#!/usr/bin/env bash
# Every method on the same 10 ARITH-TTT questions with the embedded SmolLM2 on CPU, then the
# comparison table (docs/RESULTS.md quotes its output). Re-running resumes finished runs.
# Usage: bash scripts/compare_arith10.sh [OUT_DIR]   (about an hour on a quiet 2-core CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/arith10}"
py=.venv/bin/python
common=(--dataset ARITH-TTT --num_questions 10 --n_eval 16 --progress false)
$py main.py "${common[@]}" --output_dir "$out/sttrl_reset"
$py main.py "${common[@]}" --adaptation_method slot --output_dir "$out/slot"
$py main.py "${common[@]}" --adaptation_method ttft --output_dir "$out/ttft"
$py main.py "${common[@]}" --adaptation_method memo --output_dir "$out/memo"
$py main.py "${common[@]}" --continuous --output_dir "$out/sttrl_continuous"
# The original TTRL on the same 10 questions: 2 episodes of 2 steps (8 + 2 questions), with the
# per-question runs' lr (the paper's 5e-7 moves a 135M model by nothing in 6 steps).
$py main.py "${common[@]}" --mode dataset --episodes 2 --prompts_per_step 8 --eval_every 2 \
    --lr 1e-5 --output_dir "$out/ttrl_dataset"
$py main.py report "$out"/sttrl_reset "$out"/sttrl_continuous "$out"/ttft "$out"/slot \
    "$out"/memo "$out"/ttrl_dataset --out "$out/report" --title "SmolLM2-135M-Instruct, 10 ARITH-TTT questions, CPU"
