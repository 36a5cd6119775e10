"""Checkpoints that cannot run code, cannot lie and cannot be clobbered.

Payloads `touch` a marker file; every test asserts the marker is never created. Runs use the
real launchers as subprocesses on the tiny model (backend `none` unless the behaviour is the
backend's own); runs that several tests can read are shared (module fixtures, copied before a
test changes them), and checks that need no model (the resume config check, the search for an
intact checkpoint, the run lock) call the trainer's own functions on a real run's files, with
one end-to-end launch each for the exit code and the message.
"""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launch_env import free_port, launcher_env
from test_hardening import _Payload as _Touch  # unpickling it creates a marker file
from vitpose_scale.config import ConfigError, load_config
from vitpose_scale.engine import checkpoint as ckpt
from vitpose_scale.engine import run_dir
from vitpose_scale.engine.resume_check import check_resume_config
from vitpose_scale.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CKPT = "checkpoints"


@pytest.fixture(scope="module")
def data(synthetic_coco):
    return synthetic_coco(16, 4)


def _args(out, data, *extra):
    base = [f"train.output_dir={out}", f"data.root={data}", "data.synthetic_train=16", "data.synthetic_val=4",
            "train.batch_size=4", "train.max_steps=12", "train.log_every=1", "train.eval_every=-1",
            "train.save_every=3", "train.keep_last=0", "model.depth=1", "model.image_size=[128,96]",
            "model.head=simple", "optim.warmup_iters=2", "optim.schedule=cosine", "parallel.backend=none",
            "data.window_decode=false"]
    args = []
    for s in base + list(extra):
        args += ["--set", s]
    return args


def train_cmd(out, data, *extra, launcher=None):
    cmd = [sys.executable, "launch/train.py", "--config", "configs/demo.yaml", *_args(out, data, *extra)]
    return (launcher + cmd[1:]) if launcher else cmd


def run(out, data, *extra, launcher=None, timeout=300):
    return subprocess.run(train_cmd(out, data, *extra, launcher=launcher), cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=timeout)


def load_run_config(out, data, *extra):
    """The config `run(out, data, *extra)` would train with, loaded in this process."""
    return load_config(ROOT / "configs" / "demo.yaml", _args(out, data, *extra)[1::2])


def find_resume(out, data, *extra):
    """What the trainer's start-up search for a checkpoint returns (or raises) for that run, on one
    process: the checks of the disk that need no model."""
    from vitpose_scale.engine.distributed import DistInfo
    from vitpose_scale.engine.trainer import Trainer

    cfg = load_run_config(out, data, *extra)
    trainer = Trainer.__new__(Trainer)  # the search only: no model, data or process group
    trainer.cfg, trainer.info = cfg, DistInfo(0, 1, 0, torch.device("cpu"))
    trainer.ckpt_root = Path(cfg.train.output_dir) / CKPT
    return trainer._find_resume()


@pytest.fixture(scope="module")
def paused_run(tmp_path_factory, data):
    """One run paused at step 6 (checkpoints at 3 and 6), shared read-only: each test that
    changes it works on a copy (`copy_of`)."""
    out = tmp_path_factory.mktemp("paused6") / "run"
    proc = run(out, data, "train.stop_at=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [d.name for d in ckpt.complete_checkpoints(out / CKPT)] == ["step_00000006", "step_00000003"]
    assert not (out / ".lock").exists()  # the run released its directory at the end
    return out


def copy_of(run_dir_: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run_dir_, out)
    return out


def _stderr_lines(proc) -> list[str]:
    """stderr without library warnings and progress bars: what the user reads."""
    return [line for line in proc.stderr.splitlines()
            if line.strip() and "Warning" not in line and "warnings.warn" not in line and "it/s]" not in line
            and "No CUDA runtime is found" not in line  # torch's cpp_extension logs this on CPU hosts
            and not line.startswith("  ") and "%|" not in line]


# ------------------------------------------------------- 1: DCP .metadata --
def _stack_global_call(module: str, name: str, arg: str) -> bytes:
    """A protocol-4 pickle calling module/name(arg), the name resolved as pickle resolves dotted names."""
    def s(text):
        raw = text.encode()
        return b"\x8c" + bytes([len(raw)]) + raw
    return b"\x80\x04" + s(module) + s(name) + b"\x93" + s(arg) + b"\x85R."  # STACK_GLOBAL, TUPLE1, REDUCE


def _dcp_checkpoint(directory: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    model = torch.nn.Linear(3, 2)
    dcp.save({"model": model.state_dict(), "optimizer": {"param_groups": [{"lr": 0.1}]}},
             checkpoint_id=str(directory), no_dist=True)
    ckpt.write_meta(directory, {"step": int(directory.name[5:]), "files": ckpt.file_records(directory)})
    return directory


ALLOWED_MODULES = sorted({m for m, _ in ckpt._DCP_ALLOWED})


@pytest.mark.parametrize("module", ALLOWED_MODULES)
def test_dotted_names_under_every_allowed_module_are_refused(tmp_path, module):
    """Protocol 4 resolves `os.system` under any module that imports os: only exact
    (module, name) pairs may pass, by the scanner and by the unpickler that loads."""
    import importlib

    marker = tmp_path / "ran"
    payload = _stack_global_call(module, "os.system", f"touch {marker}")
    reachable = hasattr(importlib.import_module(module), "os")
    directory = _dcp_checkpoint(tmp_path / "step_00000003")
    valid = (directory / ".metadata").read_bytes()
    # Spliced in front of the real metadata (the call runs, its result is popped, loading goes
    # on as usual) and the manifest fixed up, as an attacker would.
    spliced = payload[:-1] + b"0" + valid[2:]  # STOP -> POP, then the metadata without its PROTO
    (directory / ".metadata").write_bytes(spliced)
    ckpt.write_meta(directory, {"step": 3, "files": ckpt.file_records(directory)})
    with pytest.raises(ckpt.UnsafeCheckpointError, match="os.system"):
        ckpt.ensure_safe_dcp_metadata(directory)
    reader, _ = ckpt.safe_dcp_reader_and_planner(directory)
    with pytest.raises(ckpt.UnsafeCheckpointError, match="os.system"):
        reader.read_metadata()
    with pytest.raises(ckpt.UnsafeCheckpointError):
        ckpt.consolidate(directory)
    assert not marker.exists()
    if reachable:  # the payload is real: plain unpickling runs it and still returns valid metadata
        assert type(pickle.loads(spliced)).__name__ == "Metadata"
        assert marker.exists()


def test_real_dcp_metadata_still_loads(tmp_path):
    directory = _dcp_checkpoint(tmp_path / "step_00000003")
    ckpt.ensure_safe_dcp_metadata(directory)
    assert set(ckpt.consolidate(directory)) == {"weight", "bias"}


def test_unsafe_distcp_entry_exits_4_with_one_line(tmp_path):
    import torch.distributed.checkpoint as dcp

    marker = tmp_path / "ran"
    directory = tmp_path / "step_00000003"
    dcp.save({"model": torch.nn.Linear(3, 2).state_dict(),
              "optimizer": {"param_groups": [{"lr": 0.1, "x": _Touch(marker)}]}},
             checkpoint_id=str(directory), no_dist=True)
    ckpt.write_meta(directory, {"step": 3, "files": ckpt.file_records(directory)})
    proc = subprocess.run([str(BIN / "vitpose-scale"), "convert", "--checkpoint", str(directory),
                           "--out", str(tmp_path / "c.pth")], cwd=ROOT, env=launcher_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr[-3000:]
    lines = _stderr_lines(proc)
    assert len(lines) == 1 and "refusing to load it" in lines[0] and ".distcp" in lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not marker.exists()


# --------------------------------------------- 4: meta.json is checked too --
def test_a_flipped_manifest_is_damage(tmp_path):
    directory = _dcp_checkpoint(tmp_path / "step_00000009")
    assert ckpt.verify_checkpoint(directory) == []
    text = (directory / "meta.json").read_text()
    (directory / "meta.json").write_text(text.replace('"step": 9', '"step": 1'))
    problems = ckpt.verify_checkpoint(directory)
    assert len(problems) == 1 and "does not match its recorded checksum" in problems[0], problems
    # Re-signed by hand with a step that is not the directory's: still refused.
    ckpt.write_meta(directory, {"step": 1, "files": ckpt.file_records(directory)})
    assert "records step 1 in step_00000009" in ckpt.verify_checkpoint(directory)[0]
    ckpt.write_meta(directory, {"step": 9, "files": ckpt.file_records(directory)})
    assert ckpt.verify_checkpoint(directory) == []
    (directory / "meta.json").write_text(json.dumps({"step": 9}))  # no checksum, no file list
    assert "no manifest checksum" in ckpt.verify_checkpoint(directory)[0]


@pytest.mark.slow
def test_resume_never_trusts_an_altered_manifest(tmp_path, data):
    first = run(tmp_path, data, "train.stop_at=6")
    assert first.returncode == 0, first.stderr[-3000:]
    meta = ckpt.step_dir(tmp_path / CKPT, 6) / "meta.json"
    meta.write_text(meta.read_text().replace('"step": 6', '"step": 1'))
    second = run(tmp_path, data, "train.stop_at=7")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "step_00000006 is damaged" in second.stderr and "does not match its recorded checksum" in second.stderr
    assert "step_00000003 at step 3" in second.stdout
    assert (tmp_path / CKPT / "damaged-step_00000006").is_dir()


# ------------------------------------------- 5: NaN weights are never saved --
def test_an_update_that_breaks_the_weights_is_never_checkpointed(tmp_path, data):
    """lr 1e5: step 2's loss is finite, its update makes the weights NaN."""
    proc = run(tmp_path, data, "optim.lr=1e5", "optim.warmup_iters=0", "train.save_every=1", "train.max_steps=6")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "weights are NaN/inf after step 2: no checkpoint written" in proc.stderr, proc.stderr[-3000:]
    assert f"last good checkpoint ({ckpt.step_dir(tmp_path / CKPT, 1)})" in proc.stderr
    assert [d.name for d in ckpt.complete_checkpoints(tmp_path / CKPT)] == ["step_00000001"]
    state = ckpt.consolidate(ckpt.step_dir(tmp_path / CKPT, 1))
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


ZERO3_ARGS = ("parallel.backend=deepspeed", "parallel.zero3_persistence_threshold=0")


@pytest.fixture(scope="module")
def zero3_nan_run(tmp_path_factory, data):
    """2 DeepSpeed ranks, ZeRO-3 with every weight partitioned, a checkpoint every step; rank 1's
    partition turns NaN after step 4's update. Also the 2-rank checkpoint (step 3) that the
    world-size conversion tests resume at 1 rank: read only."""
    out = tmp_path_factory.mktemp("zero3_nan") / "run"
    proc = subprocess.run(
        train_cmd(out, data, *ZERO3_ARGS, "train.save_every=1", "train.max_steps=6",
                  launcher=[str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]),
        cwd=ROOT, env={**launcher_env(), "VITPOSE_SCALE_FAULT": "rank=1,step=4,kind=nan_weights"},
        capture_output=True, text=True, timeout=600)
    return out, proc


@pytest.mark.distributed
def test_nan_in_one_zero3_partition_stops_every_rank_before_the_checkpoint(zero3_nan_run):
    """ZeRO-3: only rank 1's partition goes bad (the fault hook writes a NaN there after step 4's
    update); every rank stops before step 4's checkpoint, and the check skips the partitions'
    uninitialised padding (no false alarm at steps 1-3)."""
    out, proc = zero3_nan_run
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "weights are NaN/inf after step 4: no checkpoint written" in proc.stderr, proc.stderr[-3000:]
    assert [d.name for d in ckpt.complete_checkpoints(out / CKPT)] == [f"step_0000000{i}" for i in (3, 2, 1)]


@pytest.mark.slow
def test_the_last_good_checkpoint_named_is_one_that_verifies(tmp_path, data):
    first = run(tmp_path, data, "train.stop_at=6", "optim.lr=1e5", "optim.warmup_iters=0", "optim.lr=1e-4")
    assert first.returncode == 0, first.stderr[-3000:]
    shard = ckpt.step_dir(tmp_path / CKPT, 6) / "model_and_optimizer.pt"
    shard.write_bytes(shard.read_bytes()[:-10])  # damaged after it was written
    # Resume from step 3 explicitly with an lr that diverges: step 6 must not be called good.
    proc = run(tmp_path, data, f"train.resume={ckpt.step_dir(tmp_path / CKPT, 3)}", "optim.lr=1e5",
               "train.save_every=100")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert f"last good checkpoint ({ckpt.step_dir(tmp_path / CKPT, 3)})" in proc.stderr, proc.stderr[-2000:]


# ----------------------------- 6 and cluster item 2: damaged, keep_last, scratch --
def test_a_damaged_newest_checkpoint_is_set_aside_and_keep_last_keeps_new_ones(tmp_path, data, paused_run):
    out = copy_of(paused_run, tmp_path)  # steps 3 and 6 kept, as keep_last=2 would have kept them
    shard = ckpt.step_dir(out / CKPT, 6) / "model_and_optimizer.pt"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 1
    shard.write_bytes(bytes(raw))
    second = run(out, data, "train.keep_last=2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "renamed to damaged-step_00000006" in second.stderr
    names = sorted(p.name for p in (out / CKPT).iterdir())
    assert names == ["damaged-step_00000006", "step_00000009", "step_00000012"], names
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "train"]
    assert steps == list(range(1, 13)), steps


def test_no_intact_checkpoint_stops_instead_of_starting_again(tmp_path, data, paused_run, capsys):
    out = copy_of(paused_run, tmp_path)
    for step in (3, 6):
        (ckpt.step_dir(out / CKPT, step) / "rng_rank0.pt").write_bytes(b"damaged")
    second = run(out, data)
    assert second.returncode == 4, second.stderr[-3000:]
    lines = _stderr_lines(second)
    assert "no intact checkpoint" in lines[-1] and "step_00000003: rng_rank0.pt" in lines[-1], lines
    assert "step_00000006: rng_rank0.pt" in lines[-1] and "auto_or_scratch" in lines[-1]
    assert not (out / "final.pth").exists()
    # What a start does next, by the trainer's own search on this process (the exit-4 path of a
    # CheckpointError is the launch above): a requeue after that exit still does not restart silently,
    with pytest.raises(ckpt.CheckpointError) as refused:
        find_resume(out, data)
    assert "no intact checkpoint" in str(refused.value), str(refused.value)
    assert "set aside earlier: damaged-step_00000003" in str(refused.value), str(refused.value)
    capsys.readouterr()
    # and train.resume=auto_or_scratch starts from scratch, saying so.
    assert find_resume(out, data, "train.resume=auto_or_scratch", "train.max_steps=3") is None
    assert "starting from scratch" in capsys.readouterr().err


# ---------------------------------------------- 7: one run per directory --
def test_a_second_run_in_the_same_directory_is_refused_naming_the_holder(tmp_path, data, capsys):
    cmd = train_cmd(tmp_path, data, "train.max_steps=100000", "train.epochs=100000", "train.save_every=100000")
    first = subprocess.Popen(cmd, cwd=ROOT, env=launcher_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "metrics.jsonl").is_file() or not any(
                r.get("kind") == "train" for r in read_jsonl(tmp_path / "metrics.jsonl")):
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.3)
        second = run(tmp_path, data, "train.max_steps=3")
        assert second.returncode == 2, second.stderr[-3000:]
        lines = _stderr_lines(second)
        assert len(lines) == 1 and "in use by another run" in lines[0] and f"pid {first.pid}" in lines[0], lines
        assert first.poll() is None  # the holder trains on
        first.send_signal(signal.SIGKILL)  # dies without releasing: its lock is stale (dead pid, this host)
        first.wait(timeout=60)
        # The next start takes the stale lock over, saying whose it was (the trainer's claim, on this
        # process; that a run releases its lock at the end: `paused_run`).
        capsys.readouterr()
        lock = run_dir.claim(tmp_path, 0, 1)
        assert lock is not None and json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        assert f"taking over the lock of {tmp_path}: process {first.pid} on this host is gone" in \
            capsys.readouterr().out
        lock.release()
        assert not (tmp_path / ".lock").exists()
    finally:
        if first.poll() is None:
            first.kill()


def test_lock_of_another_host_is_taken_over_only_without_heartbeat(tmp_path):
    holder = {"host": "node-that-died", "pid": 4242, "slurm_job": None, "started": time.time(), "token": "x"}
    (tmp_path / ".lock").write_text(json.dumps(holder))
    lock = run_dir.RunLock(tmp_path, stale_after_s=60)
    refusal = lock.acquire()
    assert "host node-that-died, pid 4242" in refusal and "last heartbeat 0 s ago" in refusal
    old = time.time() - 61
    os.utime(tmp_path / ".lock", (old, old))
    assert lock.acquire() is None
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / ".lock").exists()


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    holder = {"host": "other-node", "pid": 1, "slurm_job": "777", "started": time.time(), "token": "x"}
    (tmp_path / ".lock").write_text(json.dumps(holder))
    monkeypatch.setenv("SLURM_JOB_ID", "778")
    assert "Slurm job 777" in run_dir.RunLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    lock = run_dir.RunLock(tmp_path)
    assert lock.acquire() is None
    lock.release()


# ------------------------------------------------- 8: resume, config changed --
CHANGES = [
    (["model.embed_dim=128"], ["model.embed_dim 96 -> 128"]),
    (["model.depth=2", "model.image_size=[160,128]"], ["model.depth 1 -> 2", "model.image_size [128, 96] -> [160, 128]"]),
    (["train.batch_size=8"], ["train.batch_size 4 -> 8", "reinterpret the saved step counter"]),
    (["parallel.backend=fsdp"], ["parallel.backend 'none' -> 'fsdp'"]),
    (["parallel.backend=deepspeed", "parallel.zero_stage=2"], ["parallel.backend 'none' -> 'deepspeed'"]),
]


def test_resume_with_a_changed_config_is_refused_naming_the_keys(tmp_path, data, paused_run):
    """Each change against the checkpoint's meta.json by the trainer's check, in this process; one
    of them end to end (the refusal's exit code, its one line, nothing rewritten)."""
    out = copy_of(paused_run, tmp_path)
    directory = ckpt.latest_checkpoint(out / CKPT)
    meta = ckpt.read_meta(directory)
    check_resume_config(meta, load_run_config(out, data), directory)  # the same config resumes
    messages = []
    for change, keys in CHANGES:
        with pytest.raises(ConfigError) as refused:
            check_resume_config(meta, load_run_config(out, data, *change), directory)
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"cannot resume from {directory}"), (change, message)
        for key in keys:
            assert key in message, message
        messages.append(message)
    config = (out / "config.yaml").read_text()
    change, message = CHANGES[1][0], messages[1]
    second = run(out, data, *change)
    assert second.returncode == 2, (change, second.stderr[-3000:])
    assert _stderr_lines(second) == [f"config error: {message}"], second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    assert (out / "config.yaml").read_text() == config  # the refused run rewrote nothing


@pytest.mark.slow
def test_resume_may_change_what_does_not_touch_the_state(tmp_path, data):
    first = run(tmp_path, data, "train.stop_at=3")
    assert first.returncode == 0, first.stderr[-3000:]
    second = run(tmp_path, data, "train.max_steps=5", "model.attention=plain", "train.log_every=2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "step_00000003 at step 3" in second.stdout


# --------------------------------------------------------- 9: disk full --
def _unshare_available() -> bool:
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow  # four training runs in a mount namespace
def test_disk_full_during_a_checkpoint_names_the_path_and_the_resume_starts(tmp_path, data):
    if not shutil.which("unshare") or not _unshare_available():
        pytest.skip("needs `unshare -rm` (util-linux, user namespaces) to mount a small tmpfs")
    out = tmp_path / "small"
    out.mkdir()
    log = tmp_path / "log"
    log.mkdir()

    def step(name, *extra):
        cmd = " ".join(f"'{c}'" for c in train_cmd(out, data, *extra))
        return f"{cmd} > {log}/{name}.out 2> {log}/{name}.err; echo $? > {log}/{name}.rc"

    script = "\n".join([
        "set -u", f"mount -t tmpfs -o size=16m tmpfs {out}",
        step("first", "train.stop_at=3"),
        # leave about 100 KB: the next checkpoint (about 300 KB) cannot be written
        f"{sys.executable} -c \"import os; st = os.statvfs('{out}'); "
        f"open('{out}/filler', 'wb').write(b'0' * (st.f_bavail * st.f_frsize - 100 * 1024))\"",
        step("full", "train.stop_at=6"),
        f"ls -a {out}/checkpoints > {log}/listing",
        step("resumed_full", "train.stop_at=6"),
        f"rm {out}/filler",
        step("freed", "train.stop_at=6"),
    ])
    proc = subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr

    def result(name):
        return int((log / f"{name}.rc").read_text()), (log / f"{name}.out").read_text(), \
            (log / f"{name}.err").read_text()

    rc, _, err = result("first")
    assert rc == 0, err[-3000:]
    rc, _, err = result("full")
    assert rc == 4, err[-3000:]
    assert f"no space left on {out}/checkpoints while writing step_00000006" in err, err[-3000:]
    assert "basic_ios" not in err and "Traceback" not in err
    assert ".tmp-step_00000006" not in (log / "listing").read_text()  # the partial directory was removed
    rc, outp, err = result("resumed_full")  # the resume starts (and fails at the same save again)
    assert rc == 4 and "step_00000003 at step 3" in outp, err[-3000:]
    rc, outp, err = result("freed")
    assert rc == 0 and "step_00000003 at step 3" in outp, err[-3000:]


# ------------------ 2, 3 and cluster item 4: the world-size conversion ---
@pytest.fixture(scope="module")
def two_rank_run(zero3_nan_run):
    """A 2-rank ZeRO-3 run with its newest intact checkpoint at step 3: the NaN run's (its weights
    went bad only after step 4's update)."""
    out, proc = zero3_nan_run
    assert proc.returncode == 3 and ckpt.latest_checkpoint(out / CKPT).name == "step_00000003", proc.stderr[-3000:]
    return out


def _plant_in_conversion(directory: Path, marker: Path) -> None:
    """A real conversion next to the checkpoint, as older versions kept it, with code in one file."""
    target = directory.parent / (directory.name + "_universal")
    subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(directory),
                    "--output_folder", str(target), "--num_extract_workers", "1", "--num_merge_workers", "1",
                    "--no_strict"], cwd=ROOT, env=launcher_env(), check=True, capture_output=True)
    victim = sorted((target / "zero").rglob("fp32.pt"))[0]
    state = torch.load(victim, weights_only=False)
    state = {"param": state, "extra": _Touch(marker)} if torch.is_tensor(state) else {**state, "extra": _Touch(marker)}
    torch.save(state, victim)


@pytest.mark.distributed
@pytest.mark.parametrize("left_behind", ["planted", pytest.param("partial", marks=pytest.mark.slow),
                                         pytest.param("empty", marks=pytest.mark.slow)])
def test_a_conversion_on_disk_is_never_loaded(tmp_path, data, two_rank_run, left_behind):
    """A resume at another world size converts afresh into a private directory every time: a
    conversion left on disk (planted with code, interrupted, stale) is never read."""
    out = tmp_path / "run"
    shutil.copytree(two_rank_run, out)
    for step in (1, 2):  # the NaN run's older checkpoints: only step 3 is resumed from
        shutil.rmtree(ckpt.step_dir(out / CKPT, step))
    directory = ckpt.latest_checkpoint(out / CKPT)
    marker = tmp_path / "ran"
    if left_behind == "planted":
        _plant_in_conversion(directory, marker)
    elif left_behind == "partial":  # killed while extracting
        (directory.parent / (directory.name + "_universal") / "zero" / "backbone.pos_embed").mkdir(parents=True)
    else:
        (directory.parent / (directory.name + "_universal")).mkdir()
    # one DeepSpeed rank, started as `python launch/train.py` (a group of one; the deepspeed runner
    # would only add its own start-up)
    resumed = run(out, data, *ZERO3_ARGS, "train.stop_at=4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_00000003 at step 3 (written by 2 ranks, now 1)" in resumed.stdout
    assert not marker.exists()
    left = sorted(p.name for p in (out / CKPT).iterdir() if p.is_dir())
    assert left == ["step_00000003", "step_00000004"], left  # no conversion stays behind


# ------------------------------------------- cluster item 5: a frozen rank --
def _rank_pid(marker: str, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if "launch/train.py" in cmdline and marker in cmdline and f"RANK={rank}".encode() in environ \
                and "torchrun" not in cmdline:
            return int(entry.name)
    return None


@pytest.mark.slow  # about a minute: a real torchrun job, the stall bound and torchrun's kill grace
@pytest.mark.distributed
def test_a_frozen_rank_ends_the_job_with_who_was_last_heard(tmp_path, data):
    """SIGSTOP one of two ranks: the other's step watchdog names both ranks' last steps, dumps
    its stacks and exits 5; the launcher then ends the job. Timed from the SIGSTOP."""
    bound = 8
    cmd = train_cmd(tmp_path, data, "train.max_steps=100000", "train.epochs=100000", "train.save_every=100000",
                    f"train.stall_timeout_s={bound}",
                    launcher=[str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port())])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    frozen = None
    try:
        deadline = time.time() + 300
        while not (tmp_path / "metrics.jsonl").is_file() or not any(
                r.get("kind") == "train" and r["step"] >= 3 for r in read_jsonl(tmp_path / "metrics.jsonl")):
            assert proc.poll() is None and time.time() < deadline, "training did not start"
            time.sleep(0.3)
        frozen = _rank_pid(str(tmp_path), 1)
        assert frozen is not None
        os.kill(frozen, signal.SIGSTOP)
        stopped_at = time.monotonic()
        output, _ = proc.communicate(timeout=240)
        ended = time.monotonic()
    finally:
        if frozen is not None:
            try:
                os.kill(frozen, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "rank 0: no training step completed for" in output, output[-3000:]
    assert "last heard: rank 0: step" in output and "; rank 1: step" in output, output[-3000:]
    assert "exiting 5" in output and "Thread" in output  # faulthandler's dump of rank 0's threads
    # the bound, the watchdog's poll and torchrun's SIGTERM-then-SIGKILL of the frozen rank (30 s)
    assert ended - stopped_at < bound + 60, ended - stopped_at


# ------------------------------ cluster item 1: one directory for all ranks --
def test_a_rank_that_sees_another_output_dir_stops_the_run_naming_it(tmp_path, data):
    """Rank 1 runs in its own mount namespace with a private tmpfs over output_dir, as a
    node-local directory would be: every rank exits 2 before any work, naming rank 1."""
    if not shutil.which("unshare") or not _unshare_available():
        pytest.skip("needs `unshare -rm` (util-linux, user namespaces) for a private mount")
    import socket

    out = tmp_path / "out"
    out.mkdir()
    env = {**launcher_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    cmd = train_cmd(out, data, "train.max_steps=3")
    rank0 = subprocess.Popen(cmd, cwd=ROOT, env={**env, "RANK": "0", "LOCAL_RANK": "0"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    inner = " ".join(f"'{c}'" for c in cmd)
    rank1 = subprocess.Popen(["unshare", "-rm", "bash", "-c", f"mount -t tmpfs tmpfs '{out}' && exec {inner}"],
                             cwd=ROOT, env={**env, "RANK": "1", "LOCAL_RANK": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        results = [p.communicate(timeout=300) for p in (rank0, rank1)]
    finally:
        for p in (rank0, rank1):
            if p.poll() is None:
                p.kill()
    assert (rank0.returncode, rank1.returncode) == (2, 2), results
    text = "".join(err for _, err in results)
    assert f"rank 1 on {socket.gethostname()} cannot see the files rank 0 writes" in text, text[-3000:]
    assert "must be on a filesystem that every node shares" in text
    assert text.count("config error:") == 1, text[-3000:]
    assert not (out / "metrics.jsonl").exists() and not (out / ".lock").exists()


# ----------------------------------------- cluster item 3: one listing for all ranks --
def _records_with_lagging_listing(rank: int, directory: str, store: str, out: str) -> None:
    import pathlib

    import torch.distributed as dist

    if rank == 0:  # rank 0's directory listing lags: late.pt exists but is not listed yet
        original = pathlib.Path.rglob
        pathlib.Path.rglob = lambda self, pattern: [p for p in original(self, pattern) if p.name != "late.pt"]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        records = ckpt.file_records(Path(directory), rank, 2)
        if rank == 0:
            ckpt.write_meta(Path(directory), {"step": 3, "files": records})
        dist.barrier()
        problems = ckpt.verify_checkpoint(Path(directory), rank, 2)
        Path(out, f"rank{rank}.json").write_text(json.dumps({"records": records, "problems": problems}))
    finally:
        dist.destroy_process_group()


def test_the_manifest_lists_every_file_though_one_ranks_listing_lags(tmp_path):
    import torch.multiprocessing as mp

    directory = tmp_path / "step_00000003"
    directory.mkdir()
    for name in ("a.pt", "late.pt", "z.pt"):
        (directory / name).write_bytes(name.encode() * 100)
    want = ckpt.file_records(directory)
    mp.spawn(_records_with_lagging_listing, args=(str(directory), str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert got[0]["records"] == got[1]["records"] == want and set(want) == {"a.pt", "late.pt", "z.pt"}
    assert got[0]["problems"] == got[1]["problems"] == []  # verification agrees on every rank
