"""The sbatch scripts on a real, private, one-host Slurm: multi-rank training and preemption -> requeue -> resume.

A module fixture starts munged, slurmctld and slurmd for this host only (own config, ports, state and
munge socket under a temporary folder; nothing under /etc is touched), installing Debian's `slurm-wlm`
and `munge` with apt-get when the binaries are missing and we are root. Run with `pytest -m slow
tests/test_slurm.py`; see docs/slurm.md. The batch shell's signal handling (slurm/_common.sh) is tested
without Slurm, in the default suite.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch_env import free_port


def _on_slurm(test):
    """The tests that submit to the local Slurm: slow, several processes."""
    return pytest.mark.slow(pytest.mark.distributed(test))


ROOT = Path(__file__).resolve().parents[1]
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
BINARIES = ("sbatch", "scancel", "scontrol", "sinfo", "srun", "slurmctld", "slurmd", "munged")
CRED_EXPIRE_S = 10  # a requeued job waits cred_expire + 1 s before it may start again (default 120)


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))




def _install_slurm() -> str | None:
    """apt-get install slurm-wlm munge; returns why not, or None."""
    if os.geteuid() != 0:
        return "Slurm is not installed and installing it (apt-get install slurm-wlm munge) needs root"
    if not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install Debian's slurm-wlm"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"]):
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd)}` did not finish in 15 minutes"
        if r.returncode:
            return f"`{' '.join(cmd)}` failed ({r.returncode}): {(r.stderr or r.stdout)[-500:]}"
    missing = [b for b in BINARIES if not _which(b)]
    return f"after apt-get install slurm-wlm munge, still missing: {missing}" if missing else None


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class LocalSlurm:
    """munged + slurmctld + slurmd in the foreground (-D/-F), owned by this process.

    `nodes` > 1: that many Slurm nodes on this one host (NodeName=<host>-n1.. with NodeHostname=<host>,
    NodeAddr 127.0.0.1 and one slurmd per node, each on its own Port, started with `slurmd -N name`);
    that needs a slurmd built with --enable-multiple-slurmd (see docs/slurm.md)."""

    def __init__(self, base: Path, nodes: int = 1):
        self.base = base
        self.host = socket.gethostname().split(".")[0]
        self.node_names = [self.host] if nodes == 1 else [f"{self.host}-n{i}" for i in range(1, nodes + 1)]
        self.procs: list[subprocess.Popen] = []
        self.conf = base / "slurm.conf"
        self.sock = base / "munge" / "munge.sock"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))
               and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TRITON_INTERPRET")}
        env.update(SLURM_CONF=str(self.conf), PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                                                    env.get("PATH", ""), *SBIN]),
                   OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", DS_ACCELERATOR="cpu",
                   TORCH_EXTENSIONS_DIR=str(ROOT / ".cache" / "torch_extensions"))
        try:
            socket.gethostbyname(self.node_names[0])
        except OSError:  # the scripts take the first node's name as MASTER_ADDR; here it does not resolve
            env["MASTER_ADDR"] = "127.0.0.1"
        self.env = env

    def write_config(self) -> None:
        for d in ("state", "spool", "log", "munge"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        key = self.base / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        cpus = max(2, os.cpu_count() or 1)
        mem_mb = 4096
        try:
            kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
            mem_mb = max(1024, int(kb / 1024 * 0.8))
        except (OSError, AttributeError):
            pass
        b = self.base
        # Several nodes on this host: one slurmd each, told apart by its port (slurmd -N picks the line).
        several = len(self.node_names) > 1
        node_lines = "\n".join(
            f"NodeName={name}" + (f" NodeHostname={self.host} Port={free_port()}" if several else "")
            + f" NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN" for name in self.node_names)
        self.conf.write_text(f"""\
ClusterName=vitposetest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.sock},cred_expire={CRED_EXPIRE_S}
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool/%n
SlurmctldPidFile={b}/slurmctld.pid
SlurmdPidFile={b}/slurmd-%n.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd-%n.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=10
MinJobAge=600
{node_lines}
PartitionName=debug Nodes={",".join(self.node_names)} Default=YES MaxTime=INFINITE State=UP
""")

    def _start(self, cmd: list[str], log: str) -> subprocess.Popen:
        with open(self.base / "log" / log, "ab") as f:
            p = subprocess.Popen(cmd, env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def start(self) -> str | None:
        """Starts the daemons and waits for an idle node; returns why not, or None."""
        m = self.base / "munge"
        self._start([_which("munged"), "-F", "--force", f"--socket={self.sock}", f"--key-file={m}/munge.key",
                     f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"],
                    "munged.out")
        for _ in range(50):
            if self.sock.exists():
                break
            time.sleep(0.1)
        else:
            return f"munged did not create its socket: {_tail(self.base / 'log' / 'munged.out')}"
        self._start([_which("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        for name in self.node_names:
            (self.base / "spool" / name).mkdir(parents=True, exist_ok=True)
            self._start([_which("slurmd"), "-D", "-f", str(self.conf), "-N", name], f"slurmd-{name}.out")
        state = ""
        for _ in range(60):
            r = self.run(["sinfo", "-h", "-N", "-o", "%t"], check=False)
            state = r.stdout.strip()
            if state.split() == ["idle"] * len(self.node_names):
                return None
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(1)
        logs = {n: _tail(self.base / "log" / n, 600)
                for n in ("slurmctld.log", "slurmctld.out", *(f"slurmd-{name}.{ext}" for name in self.node_names
                                                               for ext in ("log", "out")))}
        return f"the local Slurm did not come up (sinfo: {state!r}); logs: {logs}"

    def run(self, cmd: list[str], check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)
        if check and r.returncode:
            raise AssertionError(f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def job(self, job_id: str) -> dict[str, str]:
        r = self.run(["scontrol", "show", "job", "-o", job_id], check=False)
        return dict(re.findall(r"(\w+)=(\S*)", r.stdout))

    def stop(self) -> None:
        import pwd

        self.run(["scancel", f"--user={pwd.getpwuid(os.getuid()).pw_name}"], check=False)
        time.sleep(1)
        for p in reversed(self.procs):  # slurmd, slurmctld, munged
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def _local_slurm(tmp_path_factory, nodes: int = 1):
    if any(not _which(b) for b in BINARIES):
        reason = _install_slurm()
        if reason:
            pytest.skip(f"no local Slurm: {reason}")
    if os.geteuid() != 0:
        pytest.skip("no local Slurm: slurmd must run as root to launch job steps")
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"), nodes=nodes)
    cluster.write_config()
    try:
        reason = cluster.start()
        if reason:
            pytest.skip(f"no local Slurm: {reason}")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    yield from _local_slurm(tmp_path_factory)


def _train_args(out: Path, *sets: str) -> list[str]:
    base = ["train.max_steps=6", "data.synthetic_train=48", "data.synthetic_val=8", "data.extra_train=[]",
            "train.batch_size=8", f"data.root={out / 'data'}", f"train.output_dir={out / 'run'}",
            "parallel.backend=fsdp", "train.log_every=1", "eval.flip_test=false", "model.image_size=[128,96]", *sets]
    args = ["--config", "configs/demo.yaml"]
    for s in base:
        args += ["--set", s]
    return args


def _sbatch(out: Path) -> list[str]:
    """The CPU overrides of the 8-GPU defaults: 1 node, 2 tasks, no GRES."""
    return ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
            "--time=10", f"--output={out}/slurm-%j.out", "--job-name=vitpose-test"]


def _log(out: Path, job_id: str) -> str:
    return _tail(out / f"slurm-{job_id}.out", 10**6)


def _setup_lines(run: Path) -> list[dict]:
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s.strip()]
    return [d for d in lines if d.get("kind") == "setup"]


FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def _wait_until_final(slurm: LocalSlurm, job_id: str, progress: list[Path], stall_s: float = 180,
                      cap_s: float = 600) -> tuple[dict, set]:
    """Poll until the job is in a final state; returns its last `scontrol show job` and the
    (state, restarts) pairs seen. No fixed deadline for the whole run (on a loaded machine a
    requeued run completed 0.8 s after a 200 s one): it fails when none of the `progress` files
    (the job log, metrics.jsonl) has grown for `stall_s` (a requeued job waits cred_expire + 1 s,
    then prints its banner at once), or after `cap_s`."""
    start = last_growth = time.time()
    sizes: list[int] = []
    seen = set()
    while True:
        info = slurm.job(job_id)
        seen.add((info.get("JobState"), info.get("Restarts")))
        if info.get("JobState") in FINAL_STATES:
            return info, seen
        now = [f.stat().st_size if f.exists() else -1 for f in progress]
        if now != sizes:
            sizes, last_growth = now, time.time()
        tail = _tail(progress[0], 3000)
        assert time.time() - last_growth < stall_s, f"no progress for {stall_s:.0f} s: {info}, seen {seen}\n{tail}"
        assert time.time() - start < cap_s, f"job not finished in {cap_s:.0f} s: {info}, seen {seen}\n{tail}"
        time.sleep(1)


@_on_slurm
@pytest.mark.timeout(300)
def test_sbatch_two_ranks_trains_to_the_end(slurm, tmp_path):
    r = slurm.run([*_sbatch(tmp_path), "--wait", "slurm/train_b.sh", *_train_args(tmp_path)], check=False,
                  timeout=240)
    job_id = r.stdout.strip().split(";")[0]
    log = _log(tmp_path, job_id)
    assert r.returncode == 0, f"sbatch --wait -> {r.returncode}\n{r.stderr}\n{log[-3000:]}"
    run = tmp_path / "run"
    assert (run / "final.pth").is_file(), log[-3000:]
    setup = _setup_lines(run)
    assert setup and setup[0]["world_size"] == 2, setup
    assert "done: 6 steps" in log
    assert "1 node(s) x 2 task(s)" in log  # _common.sh's banner: srun ran 2 tasks of the allocation
    info = slurm.job(job_id)
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", info


@_on_slurm
@pytest.mark.timeout(900)
def test_sigusr1_checkpoints_requeues_and_resumes(slurm, tmp_path):
    steps = 100
    r = slurm.run([*_sbatch(tmp_path), "slurm/train_b.sh",
                   *_train_args(tmp_path, f"train.max_steps={steps}", "train.save_every=2", "train.keep_last=2",
                                "train.log_every=10", "train.eval_every=1000")])
    job_id = r.stdout.strip().split(";")[0]
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    while not list(ckpts.glob("step_*/meta.json")):  # the trainer (and its signal handlers) is up
        assert time.time() < deadline, f"no checkpoint within 120 s:\n{_log(tmp_path, job_id)[-3000:]}"
        assert slurm.job(job_id).get("JobState") in ("PENDING", "RUNNING"), _log(tmp_path, job_id)[-3000:]
        time.sleep(0.5)

    # What Slurm does 180 s before the time limit (#SBATCH --signal=USR1@180): USR1 to every task.
    slurm.run(["scancel", "--signal=USR1", job_id])
    info, seen = _wait_until_final(slurm, job_id, [tmp_path / f"slurm-{job_id}.out",
                                                   tmp_path / "run" / "metrics.jsonl"])

    log = _log(tmp_path, job_id)
    assert info["JobState"] == "COMPLETED" and info.get("ExitCode") == "0:0", f"{info}\n{log[-4000:]}"
    assert int(info.get("Restarts", 0)) == 1, f"{info}, states seen {seen}"
    assert ("PENDING", "1") in seen or ("RUNNING", "1") in seen, seen  # back in the queue after the requeue
    preempted = re.search(r"preempted: checkpoint \S+step_(\d+) written; exiting 143", log)
    assert preempted, log[-4000:]
    assert f"requeueing job {job_id}" in log
    resumed = re.search(r"resumed from \S+step_(\d+) at step (\d+)", log)
    assert resumed, log[-4000:]
    step = int(resumed.group(2))
    assert step == int(preempted.group(1)) and 2 <= step < steps, (preempted.group(0), resumed.group(0))
    assert f"job {job_id} restart 1:" in log
    assert f"done: {steps} steps" in log
    assert (tmp_path / "run" / "final.pth").is_file()
    setup = _setup_lines(tmp_path / "run")
    assert [d["step"] for d in setup] == [0, step] and all(d["world_size"] == 2 for d in setup), setup


@_on_slurm
@pytest.mark.timeout(900)
def test_submitit_slurm_preemption_requeues_and_resumes(slurm, tmp_path):
    """launch/submit.py: submitit's USR2 -> trainer checkpoint -> TrainJob.checkpoint() -> requeue -> resume."""
    import pickle

    steps = 60
    sets = []
    for s in _train_args(tmp_path, f"train.max_steps={steps}", "train.save_every=2", "train.keep_last=2",
                         "train.log_every=10", "train.eval_every=1000")[2:]:
        if s != "--set":
            sets += ["--set", s]
    r = slurm.run([sys.executable, "launch/submit.py", "--config", "configs/demo.yaml", "--nodes", "1",
                   "--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1", "--time", "10",
                   "--folder", str(tmp_path / "submitit" / "%j"), *sets], timeout=120)
    job_id = re.search(r"submitted job (\d+)", r.stdout).group(1)
    folder = tmp_path / "submitit" / job_id
    log0 = folder / f"{job_id}_0_log.out"
    script = (folder / f"{job_id}_submission.sh").read_text()
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=USR2@180" in script, script
    assert "gpus-per-node" not in script and "--ntasks-per-node=2" in script, script

    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    while not list(ckpts.glob("step_*/meta.json")):
        assert time.time() < deadline, f"no checkpoint within 120 s:\n{_tail(log0, 3000)}"
        time.sleep(0.5)
    slurm.run(["scancel", "--signal=USR2", job_id])  # what --signal=USR2@180 sends before the time limit
    info, _ = _wait_until_final(slurm, job_id, [log0, tmp_path / "run" / "metrics.jsonl"])
    log = _tail(log0, 10**6)
    assert info["JobState"] == "COMPLETED" and int(info.get("Restarts", 0)) == 1, f"{info}\n{log[-4000:]}"
    assert "Calling checkpoint method" in log and f"Requeued job {job_id}" in log, log[-4000:]
    preempted = re.search(r"preempted: checkpoint \S+step_(\d+) written", log)
    resumed = re.search(r"resumed from \S+step_(\d+) at step (\d+)", log)
    assert preempted and resumed and resumed.group(2) == str(int(preempted.group(1))), log[-4000:]
    assert f"done: {steps} steps" in log
    with open(folder / f"{job_id}_0_result.pkl", "rb") as f:
        status, result = pickle.load(f)
    assert status == "success" and result["preempted"] is False, (status, result)
    assert Path(result["final"]).is_file() and Path(result["final"]) == tmp_path / "run" / "final.pth"


# DeepSpeed ZeRO-3 started by srun (no launcher: distributed.slurm_rendezvous maps SLURM_* to RANK...)
# against the same run under `deepspeed --num_gpus 2`. fp32, the simple head (no BatchNorm) and no
# stochastic depth, so rank layouts can differ only in reduction order (fp32 rounding).
DEEPSPEED_SETS = ("parallel.backend=deepspeed", "parallel.zero_stage=3", "parallel.precision=fp32",
                  "parallel.zero3_persistence_threshold=0", "model.head=simple", "model.drop_path=0.0",
                  "optim.warmup_iters=2", "optim.lr=1e-3", "train.eval_every=1000", "train.save_every=1000")
CURVE_RTOL = 1e-4


@pytest.fixture(scope="module")
def synthetic_data(synthetic_coco):
    return synthetic_coco(48, 8)


def _deepspeed_args(out: Path, data: Path) -> list[str]:
    return _train_args(out, f"data.root={data}", *DEEPSPEED_SETS)


def _losses(run: Path) -> dict[int, float]:
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines() if s.strip()]
    return {d["step"]: d["loss"] for d in lines if d.get("kind") == "train"}


@pytest.fixture(scope="module")
def deepspeed_launcher_run(tmp_path_factory, synthetic_data):
    """The reference: the same training under `deepspeed --num_gpus 2`, outside Slurm."""
    from launch_env import launcher_env

    out = tmp_path_factory.mktemp("ds_launcher")
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           "launch/train.py", *_deepspeed_args(out, synthetic_data)]
    r = subprocess.run(cmd, check=False, cwd=ROOT, env=launcher_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"{' '.join(cmd)} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return out / "run"


def _sbatch_deepspeed(slurm: LocalSlurm, out: Path, data: Path, nodes: int, tasks_per_node: int) -> str:
    """slurm/train_b.sh (srun python launch/train.py, one task per 'GPU') with the DeepSpeed backend;
    returns the job log after checking that the job completed and both ranks joined."""
    sbatch = [a for a in _sbatch(out) if not a.startswith(("--nodes=", "--ntasks-per-node="))]
    r = slurm.run([*sbatch, f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}", "--wait",
                   "slurm/train_b.sh", *_deepspeed_args(out, data)], check=False, timeout=600)
    job_id = r.stdout.strip().split(";")[0]
    log = _log(out, job_id)
    assert r.returncode == 0, f"sbatch --wait -> {r.returncode}\n{r.stderr}\n{log[-4000:]}"
    info = slurm.job(job_id)
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", info
    assert f"{nodes} node(s) x {tasks_per_node} task(s)" in log and "done: 6 steps" in log, log[-3000:]
    for name in slurm.node_names:  # every node's slurmd started a task of the training step (step 0)
        assert f"launch task StepId={job_id}.0 " in _tail(slurm.base / "log" / f"slurmd-{name}.log", 10**6), name
    setup = _setup_lines(out / "run")
    assert len(setup) == 1 and setup[0]["world_size"] == 2, setup
    full, local = setup[0]["params_full"], setup[0]["params_local_per_rank"]
    assert len(local) == 2 and all(abs(n - full / 2) <= 64 for n in local), (full, local)  # ZeRO-3 partitions
    return log


def _assert_same_curve(got: Path, ref: Path) -> None:
    a, b = _losses(got), _losses(ref)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6], (a, b)
    assert len(set(b.values())) == 6  # the weights really change
    for step in b:
        assert a[step] == pytest.approx(b[step], rel=CURVE_RTOL), (step, a[step], b[step])


@_on_slurm
@pytest.mark.timeout(1200)
def test_deepspeed_under_srun_follows_the_deepspeed_launcher(slurm, tmp_path, synthetic_data, deepspeed_launcher_run):
    """1 node x 2 srun tasks, ZeRO-3: both ranks join through SLURM_* alone and train the launcher's curve."""
    _sbatch_deepspeed(slurm, tmp_path, synthetic_data, nodes=1, tasks_per_node=2)
    _assert_same_curve(tmp_path / "run", deepspeed_launcher_run)


@pytest.fixture(scope="module")
def slurm_two_nodes(tmp_path_factory):
    """Two Slurm nodes on this host (two slurmd, `slurmd -N name`): Debian's slurmd allows it."""
    yield from _local_slurm(tmp_path_factory, nodes=2)


@_on_slurm
@pytest.mark.timeout(1200)
def test_deepspeed_two_nodes_one_task_each_follows_one_node(slurm_two_nodes, tmp_path, synthetic_data,
                                                           deepspeed_launcher_run):
    """2 nodes x 1 task: NODE_RANK 0/1, LOCAL_RANK 0 on both, the rendezvous across the two slurmd."""
    _sbatch_deepspeed(slurm_two_nodes, tmp_path, synthetic_data, nodes=2, tasks_per_node=1)
    _assert_same_curve(tmp_path / "run", deepspeed_launcher_run)


# docs/slurm.md's "torchrun per node": one srun task per node, torchrun forks the node's ranks.
_TORCHRUN_PER_NODE = r"""#!/bin/bash
source "$SLURM_SUBMIT_DIR/slurm/_common.sh"
vitpose_setup
vitpose_srun torchrun --nnodes "$SLURM_JOB_NUM_NODES" --nproc_per_node 1 \
    --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
    launch/train.py "$@"
"""


@_on_slurm
@pytest.mark.timeout(1200)
def test_torchrun_per_node_under_srun_follows_the_deepspeed_launcher(slurm_two_nodes, tmp_path, synthetic_data,
                                                                    deepspeed_launcher_run):
    """2 nodes x 1 srun task, each a torchrun (c10d rendezvous at MASTER_ADDR:MASTER_PORT) with 1 rank."""
    script = tmp_path / "torchrun_per_node.sh"
    script.write_text(_TORCHRUN_PER_NODE)
    sbatch = [a for a in _sbatch(tmp_path) if not a.startswith(("--nodes=", "--ntasks-per-node="))]
    r = slurm_two_nodes.run([*sbatch, "--nodes=2", "--ntasks-per-node=1", "--wait", str(script),
                             *_deepspeed_args(tmp_path, synthetic_data)], check=False, timeout=600)
    job_id = r.stdout.strip().split(";")[0]
    log = _log(tmp_path, job_id)
    assert r.returncode == 0, f"sbatch --wait -> {r.returncode}\n{r.stderr}\n{log[-4000:]}"
    assert "2 node(s) x 1 task(s)" in log and "done: 6 steps" in log, log[-3000:]
    setup = _setup_lines(tmp_path / "run")
    assert len(setup) == 1 and setup[0]["world_size"] == 2, setup
    _assert_same_curve(tmp_path / "run", deepspeed_launcher_run)


_BATCH_SHELL = r"""
source slurm/_common.sh
unset SLURM_JOB_ID  # run the task directly, as outside an allocation
vitpose_srun bash -c 'trap "echo task: signalled, checkpoint; exit 143" USR1 TERM; touch "$0"; for i in $(seq 20); do sleep 0.1; done; echo task: finished' "$1"
echo "batch shell: rc $?"
"""


@pytest.mark.parametrize("sig,who", [("USR1", "batch shell only"), ("USR1", "batch shell and tasks"),
                                     ("TERM", "batch shell and tasks")])
def test_batch_shell_survives_signals_and_returns_the_task_code(tmp_path, sig, who):
    """`scancel --batch --signal=USR1` signals only the batch shell: the tasks never see it and keep
    training, so the shell must not claim they checkpoint. With `--full` they get it too and exit 143,
    as on SIGTERM (scancel, preemption); the shell outlives them and returns their code."""
    started = tmp_path / "task_started"
    proc = subprocess.Popen(["bash", "-c", _BATCH_SHELL, "batch", str(started)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 30
    while not started.exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    signum = getattr(signal, f"SIG{sig}")
    if who == "batch shell only":
        os.kill(proc.pid, signum)
    else:
        os.killpg(proc.pid, signum)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    if sig == "USR1":
        assert "the tasks checkpoint and exit 143" not in out, out
        assert "batch shell: SIGUSR1 ignored here; it is not forwarded to the tasks" in out, out
    else:
        assert "batch shell: SIGTERM (cancel/preemption); waiting for the tasks" in out, out
    if who == "batch shell only":
        assert "task: finished" in out and "batch shell: rc 0" in out, out
    else:
        assert "task: signalled, checkpoint" in out and "batch shell: rc 143" in out, out
