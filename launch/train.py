"""Training entry point for every launcher, all running the same code:

    deepspeed [--num_gpus N] launch/train.py --config configs/X.yaml [--set k=v ...]
    torchrun --nproc_per_node N launch/train.py --config configs/X.yaml
    python launch/train.py --config configs/X.yaml          (one process)
    srun python launch/train.py --config ...                (Slurm: one task per GPU)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitpose_scale.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())
