#!/bin/bash
# ViTPose-H training on Slurm: one task per GPU, 4 node(s) x 8 GPUs by default.
#
#   mkdir -p runs && sbatch slurm/train_h.sh [--config C] [--set key=value ...]
#   CONFIG=configs/other.yaml sbatch slurm/train_h.sh
#   sbatch --nodes=4 --time=12:00:00 --partition=P slurm/train_h.sh --set train.batch_size=1024
#
# Every #SBATCH line below is a default that the same option on the sbatch command line overrides.
# On a machine without GPUs (no GRES): sbatch --gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1 ...
# Preemption: the tasks get SIGUSR1 180 s before the time limit (no "B:": srun's tasks are signalled,
# not this shell), write a checkpoint and exit 143; the script then runs `scontrol requeue` and the
# next start resumes from the latest checkpoint (train.resume: auto). See docs/slurm.md.
#SBATCH --job-name=vitpose-h
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@180
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=runs/slurm-%j.out

CONFIG=${CONFIG:-configs/vitpose_h_256x192.yaml}
# sbatch runs a spool copy of this file: find the repository through the submit directory.
# shellcheck source=slurm/_common.sh
source "${VITPOSE_ROOT:-${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}}/slurm/_common.sh" ||
    { echo "slurm/_common.sh not found: submit from the repository root or set VITPOSE_ROOT" >&2; exit 1; }
vitpose_setup
vitpose_train "$@"
