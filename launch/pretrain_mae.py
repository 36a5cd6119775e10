"""MAE pretraining entry point for every launcher (see docs/mae.md):

    deepspeed [--num_gpus N] launch/pretrain_mae.py --config configs/mae_demo.yaml [--set k=v ...]
    torchrun --nproc_per_node N launch/pretrain_mae.py --config ...   (parallel.backend fsdp or none)
    python launch/pretrain_mae.py --config ...                        (one process)
    srun python launch/pretrain_mae.py --config ...                   (Slurm: one task per GPU)

Exit codes as launch/train.py: 0 done, 2 config error, 3 diverged (NaN/inf loss),
143 preempted (checkpoint written; requeue to resume).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitpose_scale.cli import pretrain_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(pretrain_main())
