#!/usr/bin/env bash
# The original, dataset-level TTRL: Llama-3.1-8B-Instruct on GPQA-TTT, 10 episodes, with the paper's settings
# (configs/llama-3.1-8b-instruct.yaml; 8 prompts x 32 samples per rollout batch, one optimiser step per prompt,
# lr 5e-7, weight decay 0.01). Scale engine on 4 GPUs by default; ENGINE=local for one GPU.
# Settings and environment: ../launch.sh. Extra flags are passed through.
set -euo pipefail
exec bash "$(dirname "$0")/../launch.sh" llama-3.1-8b-instruct GPQA-TTT 10 Llama-3.1-8B-Instruct/gpqa "$@"
