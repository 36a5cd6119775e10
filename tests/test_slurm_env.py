"""What a rank derives from the variables srun sets, for 2 nodes x 2 tasks (no Slurm needed)."""
import pytest

from vitpose_scale.engine.distributed import expand_nodelist, slurm_rendezvous


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
                   "NODE_RANK": node, "MASTER_ADDR": "gpu07", "MASTER_PORT": str(20000 + 4242 % 20000)}


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
