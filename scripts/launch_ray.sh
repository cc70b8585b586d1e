#!/usr/bin/env bash
# Per-question STTRL with the scale engine (--engine ray) for one seed model on one dataset.
#
# Usage: bash scripts/launch_ray.sh MODEL DATASET [extra flags]
#        bash scripts/launch_ray.sh --print MODEL DATASET [extra flags]   (print main.py's flags)
#   MODEL:   qwen2.5-math-1.5b | qwen2.5-math-7b | qwen2.5-7b | llama-3.1-8b-instruct
#            (the sampling settings come from configs/MODEL.yaml)
#   DATASET: AIME-TTT | AMC-TTT | MATH-TTT | GSM8K-TTT | GPQA-TTT
#            (looked up under --data_dir, $STTRL_DATA_DIR or data/; `sttrl prepare` makes them)
# Extra flags are passed on and win over the defaults below, e.g. --num_questions 50,
# --continuous, --ray_address auto (join a running cluster; default: a local Ray).
#
# GPU layout per model (one bundle per GPU; see the layout table in docs/ENGINES.md):
#   qwen2.5-math-1.5b: 4 GPUs - 2 ZeRO-3 actor ranks + 2 vLLM engines
#   7B / 8B models:     8 GPUs - 4 ZeRO-3 actor ranks + 4 vLLM engines
set -euo pipefail
cd "$(dirname "$0")/.."
print=0
if [ "${1:-}" = "--print" ]; then
    print=1
    shift
fi
models="qwen2.5-math-1.5b qwen2.5-math-7b qwen2.5-7b llama-3.1-8b-instruct"
datasets="AIME-TTT AMC-TTT MATH-TTT GSM8K-TTT GPQA-TTT"
usage="usage: bash scripts/launch_ray.sh [--print] MODEL DATASET [flags]; MODEL: ${models// /, }; DATASET: ${datasets// /, }"
[ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
model="$1" dataset="$2"
shift 2
[[ " $models " == *" $model "* ]] || { echo "unknown MODEL $model; $usage" >&2; exit 2; }
[[ " $datasets " == *" $dataset "* ]] || { echo "unknown DATASET $dataset; $usage" >&2; exit 2; }
case "$model" in
    qwen2.5-math-1.5b) layout=(--actor_num_gpus 2 --vllm_num_engines 2) ;;
    *) layout=(--actor_num_gpus 4 --vllm_num_engines 4) ;;
esac
flags=(--engine ray --config "configs/$model.yaml" --dataset "$dataset" "${layout[@]}"
       --output_dir "runs/ray/$model/$dataset" --progress false "$@")
if [ "$print" = 1 ]; then
    printf '%q ' "${flags[@]}"
    echo
    exit 0
fi
exec "${PYTHON:-python}" main.py "${flags[@]}"
