#!/usr/bin/env bash
# Submit a per-question STTRL run (scale engine) to a running Ray cluster as a Ray job.
#
# Usage: RAY_ADDRESS=http://HEAD:8265 bash scripts/ray_job_submit.sh MODEL DATASET [extra flags]
#   MODEL, DATASET and the flags are those of scripts/launch_ray.sh (run it without arguments for
#   the list). The repo is uploaded as the job's working directory (git-ignored files, such as
#   virtual environments, runs/ and data/*/, are left out), and the entrypoint is
#   `python main.py --engine ray ... --ray_address auto` on the head node, which joins the cluster.
#   Every node needs the scale stack installed (pip install '.[scale]' on GPU nodes). The data
#   sets must be readable on the head node: pass --data_dir /path/there (or set STTRL_DATA_DIR
#   in the cluster's environment). Results land in runs/ray/MODEL/DATASET inside the job's
#   working directory unless --output_dir points elsewhere (use a shared or persistent path).
# Env:   RAY_ADDRESS (the cluster's dashboard address, default http://127.0.0.1:8265),
#        DRY_RUN=1 prints the `ray job submit` command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/.."
flags="$(bash scripts/launch_ray.sh --print "$@")"
eval "args=($flags)"
cmd=(ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir .
     --no-wait -- python main.py "${args[@]}" --ray_address auto)
if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
