"""Test-wide environment: CPU DeepSpeed, Triton interpreter, one shared extension cache."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Set before anything imports triton or deepspeed.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long checks, run with `pytest -m slow` (see README)")
    config.addinivalue_line("markers", "distributed: spawns several processes (gloo / deepspeed launcher)")


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    return ROOT / "data" / "coco_sample"
