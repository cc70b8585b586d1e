#!/usr/bin/env bash
# The original, dataset-level TTRL: Llama-3.1-8B-Instruct on AIME-TTT with the paper's settings (configs/llama-3.1-8b-instruct.yaml:
# 64 votes, 32 trained samples per prompt; lr 5e-7, cosine decay, 3% warm-up; KL 0.001;
# pass@1 over 16 samples at temperature 0.6, top-p 0.95). Extra flags are passed through.
set -euo pipefail
cd "$(dirname "$0")/../../.."
python main.py --mode dataset --config configs/llama-3.1-8b-instruct.yaml --dataset AIME-TTT \
    --episodes 80 --lr 5e-7 --warmup_ratio 0.03 --prompts_per_step 8 --eval_every 5 \
    --output_dir runs/ttrl/Llama-3.1-8B-Instruct/aime "$@"
