"""Environment for the tests that start real launchers (deepspeed, torchrun, python) as subprocesses."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launcher_env() -> dict:
    """CPU ranks, whatever the host: the multi-process tests compare against CPU results (bitwise
    resumes, fp32 curves across launchers, CPU offload accounting), and two ranks on a one-GPU
    host could not share it. GPUs hidden (CUDA_VISIBLE_DEVICES="") so DeepSpeed ranks and torch
    ranks (FSDP, DDP, evaluation) agree, DS_ACCELERATOR=cpu for DeepSpeed; the shared extension
    cache (one shm_comm compile), one thread per rank; no Triton interpreter (training runs use
    sdpa). The GPU checks are bench/gpu_suite.py's."""
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="",
               TORCH_EXTENSIONS_DIR=str(ROOT / ".cache" / "torch_extensions"), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)
    return env
