#!/bin/bash
# Distributed COCO keypoint evaluation of a checkpoint on Slurm (one task per GPU, 1 node x 8 GPUs).
#
#   sbatch slurm/eval.sh --config configs/vitpose_g_576x432.yaml --checkpoint runs/vitpose_g_576x432/best.pth
#   CONFIG=configs/vitpose_b_256x192.yaml CHECKPOINT=runs/vitpose_b_256x192/final.pth sbatch slurm/eval.sh
#   sbatch --gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1 slurm/eval.sh --config configs/demo.yaml ...
#
# Results go to <train.output_dir>/eval unless --out DIR. #SBATCH lines are defaults; the command line wins.
#SBATCH --job-name=vitpose-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=10
#SBATCH --time=02:00:00
#SBATCH --open-mode=append
#SBATCH --output=runs/slurm-%j.out

CONFIG=${CONFIG:-configs/vitpose_b_256x192.yaml}
# sbatch runs a spool copy of this file: find the repository through the submit directory.
# shellcheck source=slurm/_common.sh
source "${VITPOSE_ROOT:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}/slurm/_common.sh" ||
    { echo "slurm/_common.sh not found: submit from the repository root or set VITPOSE_ROOT" >&2; exit 1; }
vitpose_setup
vitpose_eval "$@"
