"""Stage 1 of the knowledge token for every launcher (docs/distillation.md):

    deepspeed [--num_gpus N] launch/distill_token.py --config TEACHER.yaml --set train.init_from=TEACHER.pth
    torchrun --nproc_per_node N launch/distill_token.py ...      python launch/distill_token.py ...
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitpose_scale.cli import distill_token_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(distill_token_main())
