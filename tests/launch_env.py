"""Environment for the tests that start real launchers (deepspeed, torchrun, python) as subprocesses."""
import itertools
import os
import socket
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


_ports = itertools.count()


def free_port() -> int:
    """A rendezvous port for one launch, free now. Below the kernel's ephemeral range (32768-60999 by
    default), where no outgoing connection is ever given a port, so nothing but a test takes it between
    now and the launcher binding it; a block of 1000 per pytest-xdist worker, so two tests running side
    by side never share a port or DeepSpeed's port-named shared-memory buffers."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    for _ in range(1000):
        port = 20000 + 1000 * (worker % 12) + next(_ports) % 1000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in 20000 + 1000 x {worker} .. +999")
