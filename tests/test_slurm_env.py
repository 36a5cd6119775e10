"""What a rank derives from the variables srun sets, for 2 nodes x 2 tasks (no Slurm needed)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vitpose_scale.engine.distributed import (MASTER_PORT_RANGE, expand_nodelist, master_port, pick_device,
                                              slurm_rendezvous)

ROOT = Path(__file__).resolve().parents[1]


def _srun_env(procid: int, nodes=("gpu07", "gpu08"), tasks_per_node=2, job_id=4242):
    """The variables srun sets in task `procid` of a block-distributed 2 x 2 job step."""
    node = procid // tasks_per_node
    return {"SLURM_JOB_ID": str(job_id), "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid % tasks_per_node),
            "SLURM_NODEID": str(node), "SLURM_NTASKS": str(len(nodes) * tasks_per_node),
            "SLURM_NTASKS_PER_NODE": str(tasks_per_node), "SLURM_TASKS_PER_NODE": f"{tasks_per_node}(x2)",
            "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NUM_NODES": "2",
            "SLURMD_NODENAME": nodes[node]}


@pytest.mark.parametrize("procid, rank, local, node", [(0, "0", "0", "0"), (1, "1", "1", "0"),
                                                        (2, "2", "0", "1"), (3, "3", "1", "1")])
def test_two_nodes_two_tasks_map_to_ranks_and_one_rendezvous(procid, rank, local, node):
    env = slurm_rendezvous(_srun_env(procid))
    assert env == {"RANK": rank, "WORLD_SIZE": "4", "LOCAL_RANK": local, "LOCAL_WORLD_SIZE": "2",
                   "NODE_RANK": node, "MASTER_ADDR": "gpu07", "MASTER_PORT": str(master_port(4242))}


def test_launcher_variables_win_over_slurm_ones():
    env = {**_srun_env(3), "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500"}
    got = slurm_rendezvous(env)
    assert got["MASTER_ADDR"] == "10.0.0.5" and got["MASTER_PORT"] == "29500" and got["RANK"] == "3"


@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu[07-08]", ["gpu07", "gpu08"]),
    ("node1", ["node1"]),
    ("a[1-3,5],b07", ["a1", "a2", "a3", "a5", "b07"]),
    ("dgx[098-101]", ["dgx098", "dgx099", "dgx100", "dgx101"]),
])
def test_nodelist_expansion(nodelist, hosts, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # the built-in expansion, as on a machine without scontrol
    assert expand_nodelist(nodelist) == hosts


# ---------------------------------------------------------------- one GPU per task --
@pytest.mark.parametrize("local_rank, device_count, index", [
    (0, 8, 0), (5, 8, 5),  # every GPU of the node visible: the local rank's own
    (5, 1, 0), (7, 1, 0),  # --gpus-per-task=1 / --gpu-bind: each task sees only its GPU, as cuda:0
    (3, 2, 1),  # --gpus-per-task=2: the task's second GPU
])
def test_the_device_is_one_the_task_can_see(local_rank, device_count, index):
    assert pick_device(local_rank, device_count) == index


def test_no_visible_device_is_refused():
    with pytest.raises(ValueError, match="no visible GPU"):
        pick_device(0, 0)


def test_init_distributed_uses_the_visible_device():
    """init_distributed picks through pick_device: a task bound to one GPU (device_count() == 1)
    with LOCAL_RANK 3 gets cuda:0, not the "invalid device ordinal" of cuda:3. CUDA is faked
    (is_available, device_count, set_device) in a child process: there is no GPU here."""
    code = """
import os, torch
import torch.distributed as dist
from vitpose_scale.engine import distributed as d
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
chosen = []
torch.cuda.set_device = chosen.append
dist.is_initialized = lambda: True  # no process group: only the device choice is under test
dist.get_rank = lambda: 3
dist.get_world_size = lambda: 4
info = d.init_distributed(use_deepspeed=False)
print(chosen, info.device, info.local_rank)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    env.update(RANK="3", WORLD_SIZE="4", LOCAL_RANK="3", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "[0] cuda:0 3"


# ------------------------------------------------------- uneven tasks per node --
@pytest.mark.parametrize("tasks_per_node, node, expected", [
    ("8(x3),4", 0, "8"), ("8(x3),4", 2, "8"), ("8(x3),4", 3, "4"),
    ("2,3,1", 1, "3"), ("2,3,1", 2, "1"), ("4", 0, "4"), ("1(x2),2(x2)", 3, "2"),
])
def test_local_world_size_is_this_nodes_task_count(tasks_per_node, node, expected):
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "28", "SLURM_NODEID": str(node),
           "SLURM_TASKS_PER_NODE": tasks_per_node}
    assert slurm_rendezvous(env)["LOCAL_WORLD_SIZE"] == expected


def test_the_steps_distribution_wins_over_the_jobs():
    """srun's SLURM_STEP_TASKS_PER_NODE is the step's real layout; the job's values may differ."""
    env = {"SLURM_PROCID": "9", "SLURM_NTASKS": "10", "SLURM_NODEID": "1", "SLURM_NTASKS_PER_NODE": "8",
           "SLURM_TASKS_PER_NODE": "8(x2)", "SLURM_STEP_TASKS_PER_NODE": "8,2"}
    assert slurm_rendezvous(env)["LOCAL_WORLD_SIZE"] == "2"


# ------------------------------------------------------------------ rendezvous port --
def test_master_port_stays_below_the_ephemeral_range():
    """Linux hands out 32768-60999 to outgoing connections (ip_local_port_range): a rendezvous port
    there can be taken by any client socket on the master node. The range is fixed per job id."""
    low, high = MASTER_PORT_RANGE
    assert 1024 <= low and high < 32768
    ports = {master_port(job) for job in range(0, 200000, 7)}
    assert min(ports) == low and max(ports) == high
    assert master_port(4242) == master_port("4242") and master_port(4242) != master_port(4243)


def test_every_launcher_computes_the_same_port(tmp_path):
    """slurm/_common.sh (exported for srun and torchrun) and launch/submit.py (submitit) agree with
    distributed.master_port, so whichever sets MASTER_PORT, the ranks meet at one address."""
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        import submit
    finally:
        sys.path.remove(str(ROOT / "launch"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_"))}
    for job in (0, 4242, 31999, 987654321):
        assert submit._master_port(str(job)) == master_port(job)
        out = subprocess.run(["bash", "-c", f"source {ROOT}/slurm/_common.sh && SLURM_JOB_ID={job} vitpose_setup "
                                            ">/dev/null && echo $MASTER_PORT"],
                             env={**env, "VITPOSE_ROOT": str(tmp_path)}, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert int(out.stdout.strip()) == master_port(job), job
    assert submit._master_port("4242_7") == master_port(42427)  # an array task's id: its digits
