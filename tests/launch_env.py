"""Environment for the tests that start real launchers (deepspeed, torchrun, python) as subprocesses."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launcher_env() -> dict:
    """CPU DeepSpeed, the shared extension cache (one shm_comm compile), one thread per rank;
    no Triton interpreter (training runs use sdpa)."""
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", TORCH_EXTENSIONS_DIR=str(ROOT / ".cache" / "torch_extensions"),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    return env
