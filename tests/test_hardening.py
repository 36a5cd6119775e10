"""Faults and bad inputs end cleanly, fast, and lose nothing (engine side).

Runs use the real launchers as subprocesses on the tiny model (one process with backend
`none` where the behaviour does not depend on the backend, 2 DeepSpeed ranks where it does).
"""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launch_env import free_port, launcher_env
from vitpose_scale.config import ConfigError, check_run_paths, load_config
from vitpose_scale.engine import checkpoint as ckpt
from vitpose_scale.jsonl import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def data(synthetic_coco):
    return synthetic_coco(16, 4)


def _sets(out, data, *extra):
    base = [f"train.output_dir={out}", f"data.root={data}", "data.synthetic_train=16", "data.synthetic_val=4",
            "data.extra_train=[]", "train.batch_size=4", "train.max_steps=12", "train.log_every=1",
            "train.eval_every=-1", "train.save_every=3", "train.keep_last=0", "model.depth=1",
            "model.image_size=[128,96]",
            "model.head=simple", "optim.warmup_iters=2", "optim.schedule=cosine", "parallel.backend=none"]
    args = []
    for s in base + list(extra):
        args += ["--set", s]
    return args


def run(out, data, *extra, launcher=None, timeout=300, env=None):
    cmd = [sys.executable, "launch/train.py", "--config", "configs/demo.yaml", *_sets(out, data, *extra)]
    if launcher:
        cmd = launcher + cmd[1:]
    return subprocess.run(cmd, cwd=ROOT, env={**launcher_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


# ------------------------------------------------------------ item 1 ---
@pytest.mark.distributed
@pytest.mark.parametrize("failing_rank", [pytest.param(1, marks=pytest.mark.slow), 0])
def test_one_failing_rank_ends_every_rank_fast_with_one_message(tmp_path, data, failing_rank):
    """Timed from the fault (its message on the shared pipe) to the last rank's exit: DeepSpeed's
    start-up, however slow on a loaded machine, is not part of the bound."""
    port = str(free_port())
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", port, "launch/train.py", "--config",
           "configs/demo.yaml", *_sets(tmp_path, data, "parallel.backend=deepspeed", "train.max_steps=50")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**launcher_env(), "VITPOSE_SCALE_FAULT": f"rank={failing_rank},step=3"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, fault_at = [], None
    try:
        for line in proc.stdout:  # EOF: every rank and the launcher have exited
            lines.append(line)
            if fault_at is None and "injected fault (VITPOSE_SCALE_FAULT)" in line:
                fault_at = time.monotonic()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = time.monotonic()
    text = "".join(lines)
    assert proc.returncode != 0
    assert text.count("injected fault (VITPOSE_SCALE_FAULT) at step 3") == 1, text[-3000:]
    assert f"rank {failing_rank} failed; stopping every rank" in text
    # Only the real error: no peer reporting a torn-down connection with a C++ stack after it.
    assert "Connection reset by peer" not in text and "frame #" not in text and "stopping: RuntimeError" not in text, \
        text[-3000:]
    assert fault_at is not None and ended - fault_at < 20, ended - fault_at


# ------------------------------------------------------------ item 2 ---
def _fake_checkpoint(root: Path, step: int) -> Path:
    d = ckpt.step_dir(root, step)
    (d / "zero").mkdir(parents=True)
    (d / "shard.pt").write_bytes(bytes(range(256)) * 40)
    (d / "zero" / "nested.pt").write_bytes(b"x" * 100)
    ckpt.write_meta(d, {"step": step, "files": ckpt.file_records(d)})
    return d


def test_intact_checkpoint_verifies(tmp_path):
    assert ckpt.verify_checkpoint(_fake_checkpoint(tmp_path, 3)) == []


@pytest.mark.parametrize("damage, expected", [
    ("truncate", "shard.pt: 5000 bytes, expected 10240"),
    ("flip", "shard.pt: sha256"),
    ("missing", "zero/nested.pt: missing (expected 100 bytes)"),
])
def test_damaged_checkpoint_names_file_expected_and_found(tmp_path, damage, expected):
    d = _fake_checkpoint(tmp_path, 3)
    shard = d / "shard.pt"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:5000])
    elif damage == "flip":
        raw = bytearray(shard.read_bytes())
        raw[1234] ^= 0x01
        shard.write_bytes(bytes(raw))
    else:
        (d / "zero" / "nested.pt").unlink()
    problems = ckpt.verify_checkpoint(d)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.slow  # the default suite: test_checkpoint_trust.py (damaged newest set aside, previous one used)
@pytest.mark.parametrize("damage", ["flip"])  # every kind of damage: the unit tests above
def test_resume_skips_a_damaged_checkpoint_for_the_previous_one(tmp_path, data, damage):
    first = run(tmp_path, data, "train.stop_at=6")
    assert first.returncode == 0, first.stderr[-3000:]
    latest = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert latest.name == "step_00000006"
    victim = latest / "model_and_optimizer.pt"
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-100])
    elif damage == "flip":
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        victim.write_bytes(bytes(raw))
    else:
        victim.unlink()
    second = run(tmp_path, data, "train.stop_at=8")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "checkpoint" in second.stderr and "step_00000006 is damaged and was not loaded" in second.stderr
    assert "model_and_optimizer.pt" in second.stderr
    assert "resumed from" in second.stdout and "step_00000003 at step 3" in second.stdout


# ------------------------------------------------------------ item 3 ---
class _Payload:
    """Unpickling this creates a file: the side effect that must never happen."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _plant(directory: Path, name: str, marker: Path) -> None:
    path = directory / name
    state = torch.load(path, map_location="cpu", weights_only=False)
    state["extra"] = _Payload(marker)
    torch.save(state, path)
    # The attacker also fixes up the recorded checksums: only safe loading can stop it now.
    meta = json.loads((directory / "meta.json").read_text())
    meta["files"] = ckpt.file_records(directory)
    ckpt.write_meta(directory, {k: v for k, v in meta.items() if k != "manifest_sha256"})


@pytest.fixture(scope="module")
def deepspeed_run(tmp_path_factory, data):
    # One DeepSpeed rank, started as `python launch/train.py` (a group of one): the runner would
    # only add its own start-up.
    out = tmp_path_factory.mktemp("ds_run")
    proc = run(out, data, "parallel.backend=deepspeed", "train.stop_at=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("victim", [pytest.param("rng_rank0.pt", marks=pytest.mark.slow),
                                    "zero_pp_rank_0_mp_rank_00_model_states.pt"])
def test_pickled_code_is_refused_on_resume_and_convert(tmp_path, data, deepspeed_run, victim):
    out = tmp_path / "run"
    shutil.copytree(deepspeed_run, out)
    directory = ckpt.latest_checkpoint(out / "checkpoints")
    marker = tmp_path / "payload-ran"
    _plant(directory, victim, marker)

    resumed = run(out, data, "parallel.backend=deepspeed", "train.stop_at=6")
    assert resumed.returncode == 4, resumed.stderr[-3000:]
    assert "refusing to load it" in resumed.stderr and victim in resumed.stderr
    assert not marker.exists()

    convert = subprocess.run([str(BIN / "vitpose-scale"), "convert", "--checkpoint", str(directory),
                              "--out", str(tmp_path / "c.pth")], cwd=ROOT, env=launcher_env(),
                             capture_output=True, text=True, timeout=300)
    assert convert.returncode != 0 and "refusing to load it" in convert.stderr, convert.stderr[-2000:]
    assert "Traceback" not in convert.stderr
    assert not marker.exists()


def test_rng_states_round_trip_as_plain_tensors(tmp_path):
    import random

    import numpy as np

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)
    torch.save(ckpt.rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), random.gauss(0, 1), np.random.normal(), np.random.rand(), torch.rand(3))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), random.gauss(0, 1), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:4] == expected[:4] and torch.equal(got[4], expected[4])


# ------------------------------------------------------------ item 4 ---
def _resume_extra(accum, grouped):
    return ("model.drop_path=0.1", f"parallel.grad_accum={accum}", f"data.group_by_image={str(grouped).lower()}")


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, data):
    """``whole_run(accum, grouped)``: the uninterrupted 12-step run (checkpoints at 3, 6, 9, 12 and
    final.pth), made once per module and read only: tests that change it work on a copy."""
    made = {}

    def get(accum=1, grouped=False):
        if (accum, grouped) not in made:
            out = tmp_path_factory.mktemp(f"whole_{accum}_{grouped}") / "run"
            proc = run(out, data, *_resume_extra(accum, grouped))
            assert proc.returncode == 0, proc.stderr[-3000:]
            made[accum, grouped] = out
        return made[accum, grouped]

    return get


@pytest.mark.parametrize("accum, grouped", [(1, False), pytest.param(2, False, marks=pytest.mark.slow),
                                            pytest.param(1, True, marks=pytest.mark.slow)])
def test_stop_at_then_resume_equals_the_uninterrupted_run(tmp_path, data, whole_run, accum, grouped):
    """Cosine schedule with warm-up, 4 steps per epoch: the pause at step 5 is mid-epoch 1.
    ``grouped``: data.group_by_image's sampler resumes mid-epoch too."""
    extra = _resume_extra(accum, grouped)
    whole = whole_run(accum, grouped)
    paused = run(tmp_path / "paused", data, *extra, "train.stop_at=5")
    assert paused.returncode == 0, paused.stderr[-3000:]
    assert "paused at step 5" in paused.stdout
    assert not (tmp_path / "paused" / "final.pth").exists()
    assert ckpt.latest_checkpoint(tmp_path / "paused" / "checkpoints").name == "step_00000005"
    rest = run(tmp_path / "paused", data, *extra)
    assert rest.returncode == 0, rest.stderr[-3000:]
    a, b = weights(whole / "final.pth"), weights(tmp_path / "paused" / "final.pth")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and each step is logged once, with the uninterrupted run's losses
    steps = [r["step"] for r in read_jsonl(tmp_path / "paused" / "metrics.jsonl") if r.get("kind") == "train"]
    assert steps == list(range(1, 13))


# ------------------------------------------------------------ item 6 ---
@pytest.mark.parametrize("override, message", [
    ("train.batch_size=-8", "train.batch_size: got -8, expected 1 <= batch_size"),
    ("train.batch_size=0", "train.batch_size: got 0, expected 1 <= batch_size"),
    ("train.epochs=0", "train.epochs: got 0, expected 1 <= epochs"),
    ("train.max_steps=0", "train.max_steps: got 0, expected 1 <= max_steps"),
    ("train.stop_at=-1", "train.stop_at: got -1, expected 1 <= stop_at"),
    ("train.log_every=0", "train.log_every: got 0, expected 1 <= log_every"),
    ("train.eval_every=-2", "train.eval_every: got -2, expected -1 <= eval_every"),
    ("train.save_every=-1", "train.save_every: got -1, expected 0 <= save_every"),
    ("optim.lr=0", "optim.lr: got 0.0, expected 0 < lr"),
    ("optim.lr=-1e-3", "optim.lr: got -0.001, expected 0 < lr"),
    ("optim.weight_decay=-0.1", "optim.weight_decay: got -0.1, expected 0 <= weight_decay"),
    ("optim.layer_decay=1.5", "optim.layer_decay: got 1.5, expected 0 < layer_decay <= 1"),
    ("optim.warmup_iters=-5", "optim.warmup_iters: got -5, expected 0 <= warmup_iters"),
    ("optim.betas=[0.9,1.0]", "optim.betas[1]: got 1.0, expected 0 <= beta < 1"),
    ("eval.batch_size=0", "eval.batch_size: got 0, expected 1 <= batch_size"),
    ("eval.oks_nms_thr=0", "eval.oks_nms_thr: got 0.0, expected 0 < oks_nms_thr <= 1"),
    ("data.flip_prob=1.5", "data.flip_prob: got 1.5, expected 0 <= flip_prob <= 1"),
    ("data.sigma=0", "data.sigma: got 0.0, expected 0 < sigma"),
    ("data.num_workers=-1", "data.num_workers: got -1, expected 0 <= num_workers"),
    ("model.num_heads=0", "model.num_heads: got 0, expected 1 <= num_heads"),
    ("model.depth=0", "model.depth: got 0, expected 1 <= depth"),
    ("mae.decoder_heads=0", "mae.decoder_heads: got 0, expected 1 <= decoder_heads"),
    ("parallel.grad_accum=0", "parallel.grad_accum: got 0, expected 1 <= grad_accum"),
])
def test_bad_numbers_are_refused_with_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "demo.yaml", [override])
    assert str(err.value) == message


def test_string_fields_take_override_text_as_is():
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["train.output_dir=2024", "train.resume=no"])
    assert cfg.train.output_dir == "2024" and cfg.train.resume == "no"


def test_negative_batch_exits_2_without_training(tmp_path, data):
    proc = run(tmp_path, data, "train.batch_size=-8")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "config error: train.batch_size: got -8, expected 1 <= batch_size"
    assert not (tmp_path / "final.pth").exists()


def test_unwritable_output_dir_and_missing_data_name_the_key(tmp_path, data):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run(blocker / "run", data)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"config error: train.output_dir: '{blocker / 'run'}' cannot be written")
    assert "Traceback" not in proc.stderr
    # The same check on the data (that a ConfigError from it exits 2 with one line: the launch above),
    # on this process.
    args = _sets(tmp_path / "run", tmp_path / "no-such-dir", "data.kind=coco")[1::2]
    with pytest.raises(ConfigError) as err:
        check_run_paths(load_config(ROOT / "configs" / "demo.yaml", args))
    assert str(err.value).startswith(f"data.root: '{tmp_path / 'no-such-dir'}' does not exist"), str(err.value)


# ------------------------------------------------------------ item 7 ---
def test_keep_last_also_removes_universal_conversions(tmp_path):
    """Conversions live only while a resume loads them: any left over (older versions kept
    step_N_universal; a killed resume leaves .universal-*) goes at the next prune."""
    for step in (2, 4, 6):
        _fake_checkpoint(tmp_path, step)
        (tmp_path / f"step_{step:08d}_universal" / "zero").mkdir(parents=True)
    (tmp_path / ".universal-step_00000006-abc" / "u").mkdir(parents=True)
    ckpt.prune(tmp_path, keep_last=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000006"]


def test_resume_after_a_crash_logs_each_step_once(tmp_path, data, whole_run):
    out = tmp_path / "run"
    shutil.copytree(whole_run(), out)
    # As if killed after step 12 was logged but before its checkpoint was complete.
    (ckpt.step_dir(out / "checkpoints", 12) / "meta.json").unlink()
    shutil.rmtree(ckpt.step_dir(out / "checkpoints", 12))
    (out / "final.pth").unlink()
    second = run(out, data, *_resume_extra(1, False))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "at step 9" in second.stdout
    steps = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "train"]
    assert steps == list(range(1, 13))


# ------------------------------------------------------------ item 5 ---
def _first_train_record(out: Path, timeout: float, proc) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before the signal ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        metrics = out / "metrics.jsonl"
        if metrics.is_file() and any(r.get("kind") == "train" for r in read_jsonl(metrics)):
            return
        time.sleep(0.5)
    raise AssertionError("training did not start")


@pytest.mark.distributed
# The default suite keeps deepspeed-SIGTERM: the runner dies of the signal and the ranks, two processes
# below it, notice and checkpoint. The slow variants: torchrun-SIGUSR1 ends the same way one level below,
# torchrun forwards SIGTERM; the resume from a preemption checkpoint is also test_distributed_training.py's
# (one process, default suite).
@pytest.mark.parametrize("launcher, sig", [("deepspeed", "SIGTERM"), pytest.param("deepspeed", "SIGUSR1", marks=pytest.mark.slow),
                                           pytest.param("torchrun", "SIGTERM", marks=pytest.mark.slow),
                                           pytest.param("torchrun", "SIGUSR1", marks=pytest.mark.slow)])
def test_signal_to_the_launcher_alone_checkpoints_and_stops_the_ranks(tmp_path, data, launcher, sig):
    import signal as signals

    port = str(free_port())
    head = ([str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", port] if launcher == "deepspeed" else
            [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", port])
    backend = "deepspeed" if launcher == "deepspeed" else "none"
    cmd = head + ["launch/train.py", "--config", "configs/demo.yaml",
                  *_sets(tmp_path, data, f"parallel.backend={backend}", "train.max_steps=100000", "train.epochs=100000",
                         "train.save_every=100000", "data.synthetic_train=16")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=launcher_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        _first_train_record(tmp_path, timeout=400, proc=proc)
        proc.send_signal(getattr(signals, sig))  # the launcher process only, as a scheduler or `kill` does
        output, _ = proc.communicate(timeout=300)  # EOF: every rank (they share the pipe) has exited
    finally:
        if proc.poll() is None:
            proc.kill()
    assert output.count("preempted: checkpoint") == 1, output[-3000:]
    latest = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert latest is not None and ckpt.verify_checkpoint(latest) == []
    # The launcher's own exit code says it was stopped. The deepspeed runner, and torchrun on
    # SIGUSR1, die of the signal (the ranks notice and checkpoint); torchrun forwards SIGTERM,
    # waits for the ranks' 143, then exits 1 with its SignalException naming signal 15.
    if launcher == "torchrun" and sig == "SIGTERM":
        assert proc.returncode == 1 and "got signal: 15" in output, (proc.returncode, output[-2000:])
    else:
        assert proc.returncode == -getattr(signals, sig), (proc.returncode, output[-2000:])
    if backend == "none":  # and the run resumes from that checkpoint (here on one process)
        step = json.loads((latest / "meta.json").read_text())["step"]
        again = run(tmp_path, data, f"train.max_steps={step + 2}", "train.save_every=100000")
        assert again.returncode == 0 and f"at step {step}" in again.stdout, again.stderr[-2000:]


def test_convert_writes_the_official_file_with_its_grid_atomically(tmp_path, whole_run):
    run_dir = tmp_path / "run"
    shutil.copytree(whole_run(), run_dir)
    out = tmp_path / "converted.pth"
    conv = subprocess.run([str(BIN / "vitpose-scale"), "convert", "--checkpoint",
                           str(ckpt.latest_checkpoint(run_dir / "checkpoints")), "--out", str(out)],
                          cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert conv.returncode == 0, conv.stderr[-2000:]
    saved = torch.load(out, weights_only=True)
    assert saved["meta"]["pos_embed_grid"] == [8, 6] and saved["meta"]["step"] == 12  # 128x96 input, 16-px patches
    final = weights(run_dir / "final.pth")
    assert saved["state_dict"].keys() == final.keys()
    assert all(torch.equal(saved["state_dict"][k], final[k]) for k in final)
    assert not out.with_name(out.name + ".tmp").exists()


def test_dcp_metadata_with_code_is_refused(tmp_path):
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / ".metadata").write_bytes(pickle.dumps({"meta": Payload()}, protocol=4))
    with pytest.raises(ckpt.UnsafeCheckpointError, match="posix.system|os.system"):
        ckpt.ensure_safe_dcp_metadata(tmp_path)
    (tmp_path / ".metadata").write_bytes(pickle.dumps({"size": torch.Size([2, 3]), "dtype": torch.float32}, protocol=4))
    ckpt.ensure_safe_dcp_metadata(tmp_path)  # DCP's own kind of content passes


def test_dcp_loading_unpickles_metadata_and_extra_entries_without_running_code(tmp_path):
    """The scan above aside, the reader and planner that load FSDP2 checkpoints refuse code themselves."""
    import io
    import os
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    (tmp_path / ".metadata").write_bytes(pickle.dumps({"meta": Payload()}, protocol=4))
    reader, planner = ckpt.safe_dcp_reader_and_planner(tmp_path)
    with pytest.raises(ckpt.UnsafeCheckpointError, match="posix.system|os.system"):
        reader.read_metadata()
    blob = io.BytesIO()
    torch.save({"lr": Payload()}, blob)
    blob.seek(0)
    with pytest.raises(ckpt.UnsafeCheckpointError, match="posix.system"):
        planner.load_bytes(None, blob)


def test_every_rank_exits_with_the_first_failures_code():
    """The launcher reports the first nonzero exit it sees: a rank that stops because a peer failed
    (its own error, or the watch thread seeing the mark) must exit with the failure's code (3
    diverged, 4 checkpoint...), not a generic 1 -- the race made a diverged ZeRO-3 run exit 1 about
    half the time."""
    import torch.distributed as dist

    from vitpose_scale.engine.distributed import PeerFailureWatch, _parse_mark

    store = dist.HashStore()
    first, second = PeerFailureWatch(0), PeerFailureWatch(1)
    first.store = second.store = store
    assert first.claim_failure(3) == "first" and first.failure_code == 3
    assert second.claim_failure(1) == "other" and second.failure_code == 3
    assert _parse_mark(store.get(PeerFailureWatch.KEY).decode(), 1) == ("0", 3)
    assert _parse_mark("1", 1) == ("1", 1)  # a mark without a code: the watch's default
