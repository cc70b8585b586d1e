#!/usr/bin/env bash
# The original, dataset-level TTRL: Qwen2.5-7B on GSM8K-TTT, 2 episodes, with the paper's settings
# (configs/qwen2.5-7b.yaml; 8 prompts x 32 samples per rollout batch, one optimiser step per prompt,
# lr 5e-7, weight decay 0.01). Scale engine on 4 GPUs by default; ENGINE=local for one GPU.
# Settings and environment: ../launch.sh. Extra flags are passed through.
set -euo pipefail
exec bash "$(dirname "$0")/../launch.sh" qwen2.5-7b GSM8K-TTT 2 Qwen2.5-7B/gsm8k "$@"
