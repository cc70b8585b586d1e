#!/usr/bin/env bash
# The original, dataset-level TTRL with the paper's settings, as TTRL's verl recipe runs them.
# Called by the per-model scripts (<MODEL>/<dataset>.sh); usable directly:
#   bash examples/ttrl/launch.sh CONFIG DATASET EPISODES OUT [extra flags]
#     CONFIG:   a configs/ name (qwen2.5-math-1.5b, qwen2.5-math-7b, qwen2.5-7b, llama-3.1-8b-instruct)
#               for the model (the flags below set every value of TTRL's recipe: 64 votes at
#               temperature 1.0, 32 trained samples per prompt, pass@1 over 16 samples at
#               temperature 0.6 / top-p 0.95, 3072 tokens, KL 0.001 clamped at 10, dual clip 3)
#     DATASET:  AIME-TTT | AMC-TTT | MATH-TTT | GSM8K-TTT | GPQA-TTT
#     OUT:      results go to runs/ttrl/OUT (runs/ttrl/OUT-local with ENGINE=local)
# Training: rollout batches of 8 prompts x 32 samples, one optimiser step per prompt's worth of
# samples (--mini_batch_prompts 1: 8 steps per batch, each mixing prompts as verl's 8 ranks do),
# lr 5e-7 stepped once per batch, 3% warm-up from 0 then cosine, weight decay 0.01.
# Environment:
#   ENGINE=ray (default): the scale engine, 4 GPUs: 2 ZeRO-3 actor ranks + 2 vLLM engines
#          (8 GPUs for 7B/8B: add --actor_num_gpus 4 --vllm_num_engines 4)
#   ENGINE=local: one process on one GPU (fp32 weights + AdamW state: 16 bytes a parameter,
#          so Math-1.5B fits an 80 GB GPU, 7B/8B need a 141 GB one or the scale engine)
#   PRINT=1: print main.py's flags instead of running
#   PYTHON: the interpreter (default: python)
# Extra flags are passed on last, so they win over everything above.
set -euo pipefail
cd "$(dirname "$0")/../.."
usage="usage: bash examples/ttrl/launch.sh CONFIG DATASET EPISODES OUT [flags]"
[ $# -ge 4 ] || { echo "$usage" >&2; exit 2; }
config="$1" dataset="$2" episodes="$3" out="$4"
shift 4
[ -f "configs/$config.yaml" ] || { echo "unknown CONFIG $config (no configs/$config.yaml)" >&2; exit 2; }
case "${ENGINE:-ray}" in
    ray) engine=(--engine ray --actor_num_gpus 2 --vllm_num_engines 2 --progress false) ;;
    local) engine=(--engine local) out="$out-local" ;;
    *) echo "ENGINE must be ray or local, got ${ENGINE}" >&2; exit 2 ;;
esac
# Every value of TTRL's recipe is named here (PRIME-RL/TTRL verl/examples/ttrl/aime.sh and
# verl/verl/trainer/config/ppo_trainer.yaml), so the config file cannot change one; the
# tests tie each to its source (tests/test_ttrl_fidelity.py).
flags=(--mode dataset --config "configs/$config.yaml" --dataset "$dataset" "${engine[@]}"
       --episodes "$episodes" --prompts_per_step 8 --mini_batch_prompts 1 --balance_ranks 8
       --n_votes 64 --n_train 32 --temperature 1.0 --top_p 1.0
       --n_eval 16 --val_temp 0.6 --val_top_p 0.95 --max_new_tokens 3072
       --lr 5e-7 --weight_decay 0.01 --warmup_ratio 0.03 --grad_clip 1.0
       --clip_eps 0.2 --dual_clip 3 --kl_coef 0.001
       --eval_every 2 --output_dir "runs/ttrl/$out" "$@")
if [ "${PRINT:-0}" = 1 ]; then
    printf '%q ' "${flags[@]}"
    echo
    exit 0
fi
exec "${PYTHON:-python}" main.py "${flags[@]}"
