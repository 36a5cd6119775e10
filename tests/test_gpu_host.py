"""The suite and the trainer on a GPU host, with CUDA faked (this machine has no GPU).

One decision, `choose_device`, gives every rank its device and process-group backend from
what torch sees (CUDA available, device count), DS_ACCELERATOR and the local rank layout.
DeepSpeed follows DS_ACCELERATOR: with `cpu` it keeps the module on the CPU, so a rank that
then took CUDA and NCCL would send CUDA images to a CPU model; two ranks on one GPU would
share it through NCCL, which refuses. Both must end on CPU + gloo, with one line saying why.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch_env import launcher_env
from vitpose_scale.config import ConfigError, load_config
from vitpose_scale.engine.distributed import DistInfo, choose_device, local_layout
from vitpose_scale.engine.parallel import check_engine_config

ROOT = Path(__file__).resolve().parents[1]
CPU, CUDA0, CUDA1 = torch.device("cpu"), torch.device("cuda", 0), torch.device("cuda", 1)


@pytest.mark.parametrize("case, expected", [
    # (cuda_available, device_count, local_rank, local_world_size, DS_ACCELERATOR, use_deepspeed) -> device, backend
    ((False, 0, 0, 1, None, True), (CPU, "gloo")),
    ((True, 1, 0, 1, None, True), (CUDA0, "nccl")),
    ((True, 2, 1, 2, None, True), (CUDA1, "nccl")),  # one GPU per rank
    ((True, 2, 1, 2, "cuda", False), (CUDA1, "nccl")),
    ((True, 8, 0, 2, "cpu", True), (CPU, "gloo")),  # DeepSpeed keeps the module on the CPU
    ((True, 1, 1, 2, None, True), (CPU, "gloo")),  # two ranks, one GPU: NCCL cannot share it
    ((True, 1, 1, 2, None, False), (CPU, "gloo")),
    ((True, 1, 3, None, "cpu", False), (CUDA0, "nccl")),  # torch backends ignore DS_ACCELERATOR; layout unknown
    ((False, 0, 0, 1, "cuda", True), (CPU, "gloo")),  # no GPU at all, whatever DS_ACCELERATOR says
])
def test_device_and_backend_follow_one_rule(case, expected):
    choice = choose_device(*case)
    assert (choice.device, choice.backend) == expected
    # A visible GPU left unused, or DS_ACCELERATOR overruled, is always said (one line).
    unused_gpu = case[0] and expected[0].type == "cpu"
    assert (choice.note is not None) == (unused_gpu or case[4] == "cuda" and not case[0])
    assert choice.note is None or "\n" not in choice.note


def test_slurm_bound_gpus_are_not_shared():
    """srun --gpus-per-task=1: eight tasks each see one GPU (cuda:0); the node has eight. Not a
    shared GPU: SLURM_GPUS_ON_NODE counts the node's GPUs, the device count only the task's."""
    choice = choose_device(True, 1, 5, 8, None, True, node_gpus=8)
    assert (choice.device, choice.backend, choice.note) == (CUDA0, "nccl", None)
    shared = choose_device(True, 1, 1, 2, None, True, node_gpus=1)
    assert shared.device == CPU and "2 ranks" in shared.note


@pytest.mark.parametrize("env, layout", [
    ({"WORLD_SIZE": "1"}, (1, None)),  # plain python
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "x"}, (2, None)),  # torchrun
    ({"WORLD_SIZE": "4", "LOCAL_SIZE": "4"}, (4, None)),  # deepspeed runner
    ({"SLURM_PROCID": "3", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "SLURM_GPUS_ON_NODE": "8"}, (8, 8)),
    ({"SLURM_PROCID": "3", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}, (None, None)),  # srun, binding unknown
    ({"WORLD_SIZE": "4"}, (None, None)),
])
def test_local_layout_from_the_launchers_variables(env, layout):
    assert local_layout(env) == layout


# init_distributed in a child with CUDA faked (is_available, device_count, set_device) and the
# process-group calls recorded instead of made: prints what a rank would have used.
_CHILD = """
import json, os, sys, types, torch
import torch.distributed as dist
visible = os.environ.get("CUDA_VISIBLE_DEVICES")
count = int(os.environ["FAKE_GPUS"]) if visible != "" else 0  # CUDA_VISIBLE_DEVICES="" hides them
torch.cuda.is_available = lambda: count > 0
torch.cuda.device_count = lambda: count
chosen, backends = [], []
torch.cuda.set_device = chosen.append
dist.init_process_group = lambda backend, **kw: backends.append(backend)
record = lambda dist_backend, **kw: backends.append(dist_backend)
sys.modules["deepspeed"] = types.SimpleNamespace(init_distributed=record)
dist.is_initialized = lambda: bool(backends)
dist.get_rank = lambda: int(os.environ["RANK"])
dist.get_world_size = lambda: int(os.environ["WORLD_SIZE"])
dist.barrier = lambda: None
from vitpose_scale.engine import distributed as d
info = d.init_distributed(use_deepspeed=sys.argv[1] == "deepspeed")
print(json.dumps({"set_device": chosen, "device": str(info.device), "backend": backends,
                  "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR")}))
"""


def _rank(engine: str, gpus: int, local_rank: int, local_world: int, env: dict | None = None,
          ds_accelerator: str | None = None) -> tuple[dict, str]:
    env = {k: v for k, v in (env or os.environ).items() if not k.startswith(("SLURM_", "MASTER_", "LOCAL_"))}
    env.pop("DS_ACCELERATOR", None)
    if ds_accelerator is not None:
        env["DS_ACCELERATOR"] = ds_accelerator
    env.update(FAKE_GPUS=str(gpus), RANK=str(local_rank), WORLD_SIZE=str(local_world), LOCAL_RANK=str(local_rank),
               LOCAL_WORLD_SIZE=str(local_world), MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    out = subprocess.run([sys.executable, "-c", _CHILD, engine], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_ds_accelerator_cpu_on_a_gpu_host_runs_deepspeed_on_the_cpu():
    """What the test suite does (DS_ACCELERATOR=cpu) on a one-GPU host: before, cuda:0 + NCCL
    while DeepSpeed kept the module on the CPU."""
    got, err = _rank("deepspeed", gpus=1, local_rank=0, local_world=1, ds_accelerator="cpu")
    assert got == {"set_device": [], "device": "cpu", "backend": ["gloo"], "DS_ACCELERATOR": "cpu"}
    assert "DS_ACCELERATOR=cpu" in err and len([line for line in err.splitlines() if "DS_ACCELERATOR" in line]) == 1


def test_two_ranks_on_one_gpu_use_the_cpu():
    for local_rank in (0, 1):
        got, err = _rank("deepspeed", gpus=1, local_rank=local_rank, local_world=2)
        # DeepSpeed must agree: DS_ACCELERATOR=cpu before it is imported
        assert got == {"set_device": [], "device": "cpu", "backend": ["gloo"], "DS_ACCELERATOR": "cpu"}
        assert ("2 ranks on this node share 1 GPU" in err) == (local_rank == 0)  # said once per node


def test_one_gpu_per_rank_uses_it():
    got, err = _rank("deepspeed", gpus=2, local_rank=1, local_world=2)
    assert got == {"set_device": [1], "device": "cuda:1", "backend": ["nccl"], "DS_ACCELERATOR": "cuda"}
    got, _ = _rank("fsdp", gpus=2, local_rank=0, local_world=2)
    assert got["device"] == "cuda:0" and got["backend"] == ["nccl"]


def test_launched_test_ranks_run_on_the_cpu_on_a_gpu_host():
    """The multi-process tests (launcher_env) on a host with two GPUs: every rank, DeepSpeed or
    torch (FSDP, DDP, evaluation), on the CPU, as the tests' expectations assume."""
    for engine in ("deepspeed", "fsdp"):
        got, _ = _rank(engine, gpus=2, local_rank=1, local_world=2, env=launcher_env())
        assert got["device"] == "cpu" and got["backend"] == ["gloo"] and got["set_device"] == [], engine


def test_deepspeed_resolved_before_the_choice_follows_it():
    """DeepSpeed fixes its accelerator on first use: imported and asked before init_distributed
    (DS_ACCELERATOR=cuda, then no GPU after all), it must be switched, not left on CUDA."""
    code = """
import os, torch, deepspeed
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
assert get_accelerator().device_name() == "cuda"
torch.cuda.is_available = lambda: False
backends = []
deepspeed.init_distributed = lambda dist_backend, **kw: backends.append(dist_backend)
dist.is_initialized = lambda: bool(backends)
dist.get_rank, dist.get_world_size, dist.barrier = (lambda: 0), (lambda: 1), (lambda: None)
from vitpose_scale.engine import distributed as d
info = d.init_distributed(use_deepspeed=True)
print(info.device, backends, os.environ["DS_ACCELERATOR"], get_accelerator().device_name())
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "LOCAL_", "RANK"))}
    env.update(DS_ACCELERATOR="cuda", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "cpu ['gloo'] cpu cpu"
    assert "DS_ACCELERATOR=cuda but torch sees no GPU" in out.stderr


def test_bf16_emulation_does_not_count_as_support(monkeypatch):
    """A T4 (sm_75): torch.cuda.is_bf16_supported() is True by emulation, unless asked without it."""
    calls = []

    def t4_is_bf16_supported(including_emulation: bool = True) -> bool:
        calls.append(including_emulation)
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", t4_is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    cfg = load_config(None, ["parallel.precision=bf16"])
    with pytest.raises(ConfigError, match=r"bf16 is not supported on this device \(Tesla T4\)"):
        check_engine_config(cfg, DistInfo(0, 1, 0, CUDA0))
    assert calls == [False]
