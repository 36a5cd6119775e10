"""Multi-process training on CPU (gloo): ZeRO-3 vs 1 rank, exact resume, kill -9, world-size change, FSDP2.

Every run uses the real launchers (`deepspeed --num_gpus N`, `torchrun`) on the
tiny preset with a small synthetic set, fp32 and the simple head (no BatchNorm,
whose per-rank batch statistics would make 1- and 2-rank runs differ by design).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vitpose_scale.engine import checkpoint as ckpt
from vitpose_scale.jsonl import read_jsonl
from launch_env import free_port, launcher_env  # noqa: E402

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# 1- vs 2-rank and FSDP vs DeepSpeed differ only in reduction order: fp32 rounding.
CURVE_RTOL = 1e-4


@pytest.fixture(scope="module")
def synthetic_root(synthetic_coco):
    return synthetic_coco(48, 8)


def _command(nproc: int, launcher: str, out: Path, data: Path, sets: list[str]) -> list[str]:
    base = [f"train.output_dir={out}", f"data.root={data}", "data.synthetic_train=48", "data.synthetic_val=8",
            "data.extra_train=[]", "train.batch_size=8", "train.max_steps=6", "train.log_every=1",
            "train.eval_every=1000", "train.save_every=3", "model.head=simple", "model.drop_path=0.1",
            "eval.flip_test=false", "optim.warmup_iters=2", "optim.lr=1e-3",
            "parallel.zero3_persistence_threshold=0", "model.image_size=[128,96]"]
    args = ["launch/train.py", "--config", "configs/demo.yaml"]
    for s in base + sets:
        args += ["--set", s]
    if launcher == "deepspeed":
        return [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(_deepspeed_port(out)), *args]
    if launcher == "torchrun":
        return [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_port",
                str(free_port()), *args]
    return [sys.executable, *args]


_PORTS: dict[str, int] = {}


def _deepspeed_port(out: Path) -> int:
    """One free port per run directory: its shared-memory buffers are named after it."""
    return _PORTS.setdefault(str(out), free_port())


def shared_memory_buffers(out: Path) -> list[Path]:
    """DeepSpeed's CPU all-reduce buffers (/dev/shm, i.e. RAM) of the job that wrote `out`."""
    return sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{_deepspeed_port(out)}_*"))


def train(nproc, out, data, *sets, launcher="deepspeed", check=True, timeout=600):
    proc = subprocess.run(_command(nproc, launcher, out, data, list(sets)), cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "train"}


def rewound_copy(run: Path, dest: Path, step: int) -> Path:
    """A copy of finished `run` with nothing after `step`: later checkpoints, the final and best weights,
    evaluations and log lines removed. Resuming it can only produce steps > `step` by training them."""
    shutil.copytree(run, dest)
    for later in (dest / "checkpoints").glob("step_*"):
        if int(later.name[5:]) > step:
            shutil.rmtree(later)
    for name in ("final.pth", "best.pth", "eval"):
        target = dest / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    kept = [line for line in (dest / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("step", 0) <= step and json.loads(line).get("kind") != "eval"]
    (dest / "metrics.jsonl").write_text("".join(f"{line}\n" for line in kept))
    assert ckpt.latest_checkpoint(dest / "checkpoints").name == f"step_{step:08d}" and max(losses(dest)) == step
    return dest


@pytest.fixture(scope="module")
def reference_two_ranks(tmp_path_factory, synthetic_root):
    """2 ranks, ZeRO-3, stochastic depth on: the run the resume tests must reproduce."""
    out = tmp_path_factory.mktemp("ref2")
    train(2, out, synthetic_root)
    return out


@pytest.fixture(scope="module")
def reference_no_drop_path(tmp_path_factory, synthetic_root):
    """2 ranks, ZeRO-3, no stochastic depth (it draws per rank): for cross-configuration comparisons."""
    out = tmp_path_factory.mktemp("ref2nodrop")
    train(2, out, synthetic_root, "model.drop_path=0.0")
    return out


def test_zero3_two_ranks_follow_one_rank_and_partition_parameters(reference_no_drop_path, synthetic_root, tmp_path):
    one, two_dir = tmp_path / "one", reference_no_drop_path
    train(1, one, synthetic_root, "model.drop_path=0.0", launcher="python")  # one DeepSpeed rank
    two = losses(two_dir)
    ref = losses(one)
    assert sorted(two) == sorted(ref) == [1, 2, 3, 4, 5, 6]
    for step in ref:
        assert two[step] == pytest.approx(ref[step], rel=CURVE_RTOL), step
    assert len(set(ref.values())) == 6  # the weights really change
    setup = next(r for r in read_jsonl(two_dir / "metrics.jsonl") if r["kind"] == "setup")
    full, local = setup["params_full"], setup["params_local_per_rank"]
    assert len(local) == 2 and all(abs(n - full / 2) <= 64 for n in local), (full, local)


def test_resume_is_bitwise_identical(reference_two_ranks, synthetic_root, tmp_path):
    """From the reference's own step-3 checkpoint (that a stopped run writes the same checkpoint:
    test_hardening.py's stop_at tests), steps 4-6 again on 2 ranks."""
    out = rewound_copy(reference_two_ranks, tmp_path / "resumed", 3)
    train(2, out, synthetic_root)  # resume=auto continues to step 6
    assert shared_memory_buffers(out) == []
    ref, got = losses(reference_two_ranks), losses(out)
    for step in (4, 5, 6):
        assert got[step] == ref[step], (step, got[step], ref[step])  # bitwise: same floats


@pytest.mark.slow  # the default suite's time budget (docs/testing.md)
def test_world_size_change_on_resume(reference_no_drop_path, synthetic_root, tmp_path):
    out, ref_dir = tmp_path / "shrink", reference_no_drop_path
    train(2, out, synthetic_root, "train.max_steps=3", "model.drop_path=0.0")
    proc = train(1, out, synthetic_root, "model.drop_path=0.0")
    assert "written by 2 ranks, now 1" in proc.stdout
    ref, got = losses(ref_dir), losses(out)
    # Weights and Adam moments carried over: the loss continues the 2-rank curve,
    # it does not restart from the untrained model's.
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(ref[step], rel=CURVE_RTOL), step


def test_kill_9_loses_at_most_the_steps_since_the_last_checkpoint(synthetic_root, tmp_path):
    out = tmp_path / "killed"
    cmd = _command(2, "deepspeed", out, synthetic_root,
                   ["train.max_steps=400", "train.save_every=2", "train.keep_last=2"])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=launcher_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 900  # a bound for a hung start, not a timing: start-up varies with load
    while time.time() < deadline and proc.poll() is None:
        latest = ckpt.latest_checkpoint(out / "checkpoints")
        if latest is not None and int(latest.name[5:]) >= 6:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # DeepSpeed never unlinks its 66 MB per-rank shm buffers; left behind they fill RAM
    # (a whole CI run was lost to it). Released at start-up, even kill -9 leaves none.
    assert shared_memory_buffers(out) == []
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    assert latest is not None
    saved_step = json.loads((latest / "meta.json").read_text())["step"]
    logged = max(losses(out))
    assert logged - saved_step < 2 + 2  # at most one save interval (+ the step in flight) is lost
    kept = [d for d in (out / "checkpoints").iterdir() if ckpt.is_complete(d)]
    assert len(kept) <= 2
    proc = train(2, out, synthetic_root, f"train.max_steps={saved_step + 2}")
    assert f"at step {saved_step}" in proc.stdout
    assert max(losses(out)) == saved_step + 2


def test_fsdp2_agrees_with_deepspeed_zero3(reference_no_drop_path, fsdp_run):
    ref, got = losses(reference_no_drop_path), losses(fsdp_run)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=CURVE_RTOL), step


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path):
    out = tmp_path / "diverge"
    # A huge learning rate overflows the weights after the first update. One process (DeepSpeed ZeRO-3
    # on one rank): the guard and the checkpoint it keeps are the same code on every rank; that a
    # failure on one rank ends every rank with one exit code is tests/test_hardening.py's.
    proc = train(1, out, synthetic_root, "optim.lr=1e30", "optim.warmup_iters=0", "train.save_every=1",
                 launcher="python", check=False)
    assert proc.returncode != 0
    assert "training stopped: loss is" in proc.stderr and "left as it was" in proc.stderr
    stopped_at = int(proc.stderr.split("at step ")[1].split(":")[0])
    assert stopped_at >= 2
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    assert latest.name == f"step_{stopped_at - 1:08d}"  # written before the bad step, untouched
    state = ckpt.consolidate(latest)  # still a complete, readable checkpoint
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_bad_engine_config_stops_before_launching_work(tmp_path):
    proc = subprocess.run([sys.executable, "launch/train.py", "--config", "configs/demo.yaml", "--set",
                           "parallel.zero_stage=5"], cwd=ROOT, env=launcher_env(), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "parallel.zero_stage: got 5, expected one of [0, 1, 2, 3]" in proc.stderr


@pytest.mark.slow  # the default suite's time budget (docs/testing.md)
def test_gradient_accumulation_matches_the_same_global_batch(reference_no_drop_path, synthetic_root, tmp_path):
    out = tmp_path / "accum"
    train(2, out, synthetic_root, "parallel.grad_accum=2", "model.drop_path=0.0")
    ref, got = losses(reference_no_drop_path), losses(out)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=CURVE_RTOL), step


def test_convert_consolidates_zero3_shards_into_the_official_format(reference_two_ranks, tmp_path):
    from vitpose_scale.cli import main

    out = tmp_path / "consolidated.pth"
    assert main(["convert", "--checkpoint", str(reference_two_ranks / "checkpoints" / "step_00000006"),
                 "--out", str(out)]) == 0
    got = torch.load(out, weights_only=True)["state_dict"]
    final = torch.load(reference_two_ranks / "final.pth", weights_only=True)["state_dict"]  # gathered in-run
    assert set(got) == set(final)
    for key, value in final.items():
        assert torch.equal(got[key], value), key


def test_preemption_signal_checkpoints_and_exits_for_requeue(synthetic_root, tmp_path):
    out = tmp_path / "preempt"
    cmd = _command(1, "python", out, synthetic_root, ["train.max_steps=400", "train.save_every=1000",
                                                        "parallel.backend=none"])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900  # a bound for a hung start, not a timing: start-up varies with load
    while time.time() < deadline and proc.poll() is None and not (
            (out / "metrics.jsonl").is_file() and len(losses(out)) >= 3):
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before the signal"
    proc.send_signal(signal.SIGUSR1)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, stdout[-2000:]
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    saved = json.loads((latest / "meta.json").read_text())["step"]
    assert saved == max(losses(out)) and saved < 400  # nothing done after the signal is lost
    proc = train(1, out, synthetic_root, f"train.max_steps={saved + 2}", "parallel.backend=none",
                 launcher="python")
    assert f"at step {saved}" in proc.stdout


@pytest.mark.slow  # the default suite's time budget (docs/testing.md)
def test_zero_init_builds_the_same_model_without_materialising_it_per_rank(reference_no_drop_path, synthetic_root,
                                                                          tmp_path):
    out = tmp_path / "zero_init"
    train(2, out, synthetic_root, "parallel.zero_init=true", "model.drop_path=0.0")
    ref, got = losses(reference_no_drop_path), losses(out)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=CURVE_RTOL), step


def test_zero3_curve_equals_plain_torch_adamw_on_one_process(reference_no_drop_path, synthetic_root, tmp_path):
    """An outside reference: torch's own AdamW, no DeepSpeed, no distribution."""
    out = tmp_path / "plain"
    train(1, out, synthetic_root, "parallel.backend=none", "model.drop_path=0.0", launcher="python")
    ref, got = losses(reference_no_drop_path), losses(out)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=CURVE_RTOL), step


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, synthetic_root):
    """2 ranks, FSDP2, no stochastic depth (compared with DeepSpeed's curve; resume's RNG restore is
    still exercised by the data augmentation, and with stochastic depth by the DeepSpeed test)."""
    out = tmp_path_factory.mktemp("fsdp_ref")
    train(2, out, synthetic_root, "parallel.backend=fsdp", "model.drop_path=0.0", launcher="torchrun")
    return out


def test_fsdp2_sharded_checkpoints_resume_bitwise_and_consolidate(fsdp_run, synthetic_root, tmp_path):
    for saved in ckpt.complete_checkpoints(fsdp_run / "checkpoints"):
        # each rank wrote its own shard (torch.distributed.checkpoint), no whole-model file
        assert (saved / ".metadata").is_file() and len(list(saved.glob("*.distcp"))) == 2
        assert not (saved / "model_and_optimizer.pt").exists()
    out = rewound_copy(fsdp_run, tmp_path / "fsdp_resumed", 3)
    train(2, out, synthetic_root, "parallel.backend=fsdp", "model.drop_path=0.0", launcher="torchrun")
    ref, got = losses(fsdp_run), losses(out)
    for step in (4, 5, 6):
        assert got[step] == ref[step], step
    state = ckpt.consolidate(ckpt.latest_checkpoint(fsdp_run / "checkpoints"))
    final = torch.load(fsdp_run / "final.pth", weights_only=True)["state_dict"]
    assert state.keys() == final.keys()
    for key in final:
        assert torch.equal(state[key], final[key]), key


@pytest.mark.slow  # the default suite's time budget (docs/testing.md)
def test_batchnorm_statistics_are_averaged_over_ranks_and_kept_by_consolidation(synthetic_root, tmp_path):
    out = tmp_path / "classic"
    train(2, out, synthetic_root, "model.head=classic", "model.drop_path=0.0", "train.max_steps=3")
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    from vitpose_scale.models.interop import safe_load

    per_rank = [safe_load(f, ckpt._allowed_classes())["module"] for f in sorted(latest.glob("*model_states.pt"))]
    assert len(per_rank) == 2
    bn = [k for k in per_rank[0] if "running_mean" in k or "running_var" in k]
    assert bn
    for key in bn:  # every rank saved the same (averaged) statistics ...
        assert torch.equal(per_rank[0][key], per_rank[1][key]), key
    state = ckpt.consolidate(latest)
    final = torch.load(out / "final.pth", weights_only=True)["state_dict"]
    for key in bn:  # ... consolidation keeps them, and they moved away from their initial values
        assert torch.equal(state[key], per_rank[0][key].float()) and torch.equal(final[key], state[key]), key
    assert not torch.equal(state[bn[0]], torch.zeros_like(state[bn[0]]))
