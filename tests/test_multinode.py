"""Multi-node training simulated on one host: two torchrun launchers (--nnodes 2, c10d rendezvous)
train the tiny model with DeepSpeed ZeRO-3 and with FSDP2, equal to the single-node run; and
checkpoints move between node counts (2 nodes -> 1, 1 -> 2) and keep the loss curve.

Every test here starts several launchers: marked slow (`bash scripts/test.sh --slow`).
"""
import subprocess
import sys
from pathlib import Path

import pytest

from launch_env import free_port, launcher_env
from vitpose_scale.jsonl import read_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CURVE_RTOL = 1e-4  # fp32; only the reduction order differs


@pytest.fixture(scope="module")
def data(synthetic_coco):
    return synthetic_coco(32, 4)


def _args(out, data, backend, *extra):
    sets = [f"train.output_dir={out}", f"data.root={data}", "data.synthetic_train=32", "data.synthetic_val=4",
            "data.extra_train=[]", "train.batch_size=8", "train.max_steps=6", "train.log_every=1",
            "train.eval_every=-1", "train.save_every=3", "model.depth=2", "model.head=simple", "model.image_size=[128,96]",
            "model.drop_path=0.0", "optim.warmup_iters=2", "parallel.zero3_persistence_threshold=0",
            f"parallel.backend={backend}", *extra]
    args = ["launch/train.py", "--config", "configs/demo.yaml"]
    for s in sets:
        args += ["--set", s]
    return args


def run_nodes(nodes: int, procs_per_node: int, out, data, backend, *extra):
    """`nodes` torchrun launchers on this host, joined by a c10d rendezvous, as on a cluster."""
    port = free_port()
    launchers = []
    for node in range(nodes):
        cmd = [str(BIN / "torchrun"), "--nnodes", str(nodes), "--node_rank", str(node),
               "--nproc_per_node", str(procs_per_node), "--rdzv_backend", "c10d",
               "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"job{port}",
               *_args(out, data, backend, *extra)]
        launchers.append(subprocess.Popen(cmd, cwd=ROOT, env=launcher_env(), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in launchers]
    for p, (stdout, stderr) in zip(launchers, outputs):
        assert p.returncode == 0, f"{stdout[-2000:]}\n{stderr[-4000:]}"
    return "".join(o for o, _ in outputs)


def losses(out):
    return {r["step"]: r["loss"] for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "train"}


@pytest.mark.parametrize("backend", ["deepspeed", "fsdp"])
def test_two_nodes_equal_one_node_with_two_processes(tmp_path, data, backend):
    run_nodes(1, 2, tmp_path / "one_node", data, backend)
    run_nodes(2, 1, tmp_path / "two_nodes", data, backend)
    ref, got = losses(tmp_path / "one_node"), losses(tmp_path / "two_nodes")
    assert sorted(got) == sorted(ref) == [1, 2, 3, 4, 5, 6]
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=CURVE_RTOL), step
    assert len(set(ref.values())) == 6


@pytest.mark.parametrize("backend", ["deepspeed", "fsdp"])
def test_checkpoints_move_between_node_counts(tmp_path, data, backend):
    run_nodes(2, 1, tmp_path / "ref", data, backend)  # uninterrupted, 2 nodes
    ref = losses(tmp_path / "ref")

    shrink = tmp_path / "shrink"  # 2 nodes to step 3, then 1 node
    run_nodes(2, 1, shrink, data, backend, "train.stop_at=3")
    text = run_nodes(1, 1, shrink, data, backend)
    assert "written by 2 ranks, now 1" in text
    grow = tmp_path / "grow"  # 1 node to step 3, then 2 nodes
    run_nodes(1, 1, grow, data, backend, "train.stop_at=3")
    text = run_nodes(2, 1, grow, data, backend)
    assert "written by 1 ranks, now 2" in text
    for out in (shrink, grow):
        got = losses(out)
        for step in (4, 5, 6):
            assert got[step] == pytest.approx(ref[step], rel=CURVE_RTOL), (out.name, step)
