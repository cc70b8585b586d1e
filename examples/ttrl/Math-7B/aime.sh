#!/usr/bin/env bash
# The original, dataset-level TTRL: Math-7B on AIME-TTT, 80 episodes, with the paper's settings
# (configs/qwen2.5-math-7b.yaml; 8 prompts x 32 samples per rollout batch, one optimiser step per prompt,
# lr 5e-7, weight decay 0.01). Scale engine on 4 GPUs by default; ENGINE=local for one GPU.
# Settings and environment: ../launch.sh. Extra flags are passed through.
set -euo pipefail
exec bash "$(dirname "$0")/../launch.sh" qwen2.5-math-7b AIME-TTT 80 Math-7B/aime "$@"
