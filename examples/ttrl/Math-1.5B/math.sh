#!/usr/bin/env bash
# The original, dataset-level TTRL: Math-1.5B on MATH-TTT with the paper's settings (configs/qwen2.5-math-1.5b.yaml:
# 64 votes, 32 trained samples per prompt; lr 5e-7, cosine decay, 3% warm-up; KL 0.001;
# pass@1 over 16 samples at temperature 0.6, top-p 0.95). Extra flags are passed through.
set -euo pipefail
cd "$(dirname "$0")/../../.."
python main.py --mode dataset --config configs/qwen2.5-math-1.5b.yaml --dataset MATH-TTT \
    --episodes 10 --lr 5e-7 --warmup_ratio 0.03 --prompts_per_step 8 --eval_every 5 \
    --output_dir runs/ttrl/Math-1.5B/math "$@"
