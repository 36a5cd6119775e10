# shellcheck shell=bash
# Shared body of the slurm/*.sh batch scripts (sourced, not submitted). See docs/slurm.md.
#
# Expects CONFIG (default config) and, for vitpose_eval, CHECKPOINT. Sets up the environment,
# picks the rendezvous (MASTER_ADDR = first node of the job, MASTER_PORT from the job id),
# runs one task per GPU with `srun`, and requeues the job when training exits 143
# (checkpoint written after SIGUSR1 = time limit near / `scancel --signal=USR1`).

vitpose_setup() {
    cd "$VITPOSE_ROOT" || { echo "cannot cd to $VITPOSE_ROOT" >&2; exit 1; }
    if [[ -d .venv ]]; then
        # shellcheck disable=SC1091
        source scripts/env.sh
    fi
    export PYTHONUNBUFFERED=1
    # One task per GPU; its CPUs are the task's. Since Slurm 22.05 srun does not inherit
    # --cpus-per-task from sbatch, hence SRUN_CPUS_PER_TASK.
    if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then
        export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}
    fi
    if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
        MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
    fi
    export MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
    # Deterministic per job (the same after a requeue), spread over 12000-31999: below Linux's
    # ephemeral ports (32768-60999), which any outgoing connection may hold. Same as
    # vitpose_scale/engine/distributed.py:master_port.
    export MASTER_PORT=${MASTER_PORT:-$((12000 + ${SLURM_JOB_ID:-$$} % 20000))}
    mkdir -p runs
    echo "[$(date '+%F %T')] job ${SLURM_JOB_ID:-none} restart ${SLURM_RESTART_COUNT:-0}:" \
         "${SLURM_JOB_NUM_NODES:-1} node(s) x ${SLURM_NTASKS_PER_NODE:-1} task(s), nodes ${SLURM_JOB_NODELIST:-$(hostname)}," \
         "rendezvous $MASTER_ADDR:$MASTER_PORT"
}

# Runs "$@" under srun (or directly outside a Slurm allocation) and returns its exit code,
# waiting through a SIGTERM to the batch shell (job cancelled / preempted / time limit hit):
# the tasks get the SIGTERM too, checkpoint and exit 143; the batch shell must not die first.
_VITPOSE_TERM=0
vitpose_srun() {
    local pid rc rc_file
    rc_file=$(mktemp "${TMPDIR:-/tmp}/vitpose_rc.XXXXXX")
    trap '_VITPOSE_TERM=1; echo "[$(date "+%F %T")] batch shell: SIGTERM (cancel/preemption); waiting for the tasks"' TERM
    # USR1 is meant for the tasks (#SBATCH --signal=USR1@180, no B:); should it reach this shell
    # (scancel --batch: this shell only; --full: the tasks too), do not die of it, and do not
    # forward it: whether the tasks checkpoint depends on whether Slurm signalled them as well.
    trap 'echo "[$(date "+%F %T")] batch shell: SIGUSR1 ignored here; it is not forwarded to the tasks:" \
               "they checkpoint and exit 143 only if Slurm signalled them too (scancel --full or without" \
               "--batch), else they keep training"' USR1
    # The command's exit code goes through a file: a `wait` cut short by a trapped signal loses
    # it when the command ends at that very moment. The subshell survives TERM/USR1 like this
    # shell (no-op handlers; the command itself starts with the default ones).
    (
        trap ':' TERM USR1
        if [[ -n "${SLURM_JOB_ID:-}" ]] && command -v srun >/dev/null; then
            srun "$@"
        else
            "$@"
        fi
        echo "$?" > "$rc_file"
    ) &
    pid=$!
    while :; do
        wait "$pid"
        kill -0 "$pid" 2>/dev/null || break  # wait was interrupted by a trapped signal: keep waiting
    done
    rc=$(cat "$rc_file" 2>/dev/null)
    rm -f "$rc_file"
    return "${rc:-1}"
}

# vitpose_train [--config C] [--set k=v ...]: the default --config comes first, so a --config in
# the arguments wins (argparse keeps the last one). TRAIN_ENTRY picks the entry point
# (launch/train.py, or launch/pretrain_mae.py for MAE pretraining).
vitpose_train() {
    local rc
    vitpose_srun python "${TRAIN_ENTRY:-launch/train.py}" --config "$CONFIG" "$@"
    rc=$?
    echo "[$(date '+%F %T')] training exited with code $rc"
    if [[ $rc -eq 143 ]]; then
        if [[ $_VITPOSE_TERM -eq 1 ]]; then
            # SIGTERM reached the batch shell: a plain scancel (do not resurrect the job), or a preemption
            # or time limit that Slurm handles itself (PreemptMode=REQUEUE requeues without us).
            echo "checkpoint written after SIGTERM; not requeueing from the script"
        elif [[ -n "${SLURM_JOB_ID:-}" ]]; then
            if [[ ${SLURM_RESTART_COUNT:-0} -ge ${MAX_REQUEUES:-100} ]]; then
                echo "requeued ${SLURM_RESTART_COUNT} times already (MAX_REQUEUES=${MAX_REQUEUES:-100}); giving up" >&2
                return "$rc"
            fi
            echo "checkpoint written after SIGUSR1; requeueing job $SLURM_JOB_ID (it resumes from the latest checkpoint)"
            scontrol requeue "$SLURM_JOB_ID"
            # The requeue ends this allocation (and this shell); should it not, leave with the code.
            sleep 30
        fi
    fi
    return "$rc"
}

# vitpose_eval [--config C] [--checkpoint W] [--set k=v ...] [--out DIR]; CHECKPOINT may come from the environment.
vitpose_eval() {
    local rc ckpt=()
    [[ -n "${CHECKPOINT:-}" ]] && ckpt=(--checkpoint "$CHECKPOINT")
    vitpose_srun python launch/evaluate.py --config "$CONFIG" "${ckpt[@]}" "$@"
    rc=$?
    echo "[$(date '+%F %T')] evaluation exited with code $rc"
    return "$rc"
}

# Repository root: the submit directory under sbatch (the script itself runs from a spool copy),
# else the folder above this file's script; VITPOSE_ROOT overrides both.
if [[ -z "${VITPOSE_ROOT:-}" ]]; then
    if [[ -n "${SLURM_SUBMIT_DIR:-}" && -f "$SLURM_SUBMIT_DIR/slurm/_common.sh" ]]; then
        VITPOSE_ROOT=$SLURM_SUBMIT_DIR
    else
        VITPOSE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    fi
fi
export VITPOSE_ROOT
