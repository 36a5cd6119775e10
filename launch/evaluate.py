"""Evaluation entry point: `torchrun --nproc_per_node N launch/evaluate.py --config C --checkpoint W`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitpose_scale.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
