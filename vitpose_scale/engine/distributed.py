"""Process-group setup for every launcher: deepspeed, torchrun, srun or plain python."""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from vitpose_scale.engine import op_cache


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list ("gpu[01-03,07],login1") as host names: `scontrol show
    hostnames` where Slurm is installed, else the same expansion done here."""
    import re
    import shutil
    import subprocess

    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out
        except (subprocess.SubprocessError, OSError):
            pass
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{i:0{len(lo)}d}")
    return hosts


# MASTER_PORT of a Slurm job: a function of the job id (the same after a requeue), kept below
# Linux's ephemeral range (ip_local_port_range, 32768-60999), from which any outgoing connection
# on the master node may take a port; 20000 + jobid % 20000 reached up to 39999.
# slurm/_common.sh and launch/submit.py compute the same (tests/test_slurm_env.py checks).
MASTER_PORT_RANGE = (12000, 31999)


def master_port(job_id: int | str) -> int:
    low, high = MASTER_PORT_RANGE
    return low + int(job_id) % (high - low + 1)


def pick_device(local_rank: int, device_count: int) -> int:
    """The CUDA device index of a rank: its local rank among the GPUs this process can see.

    Where Slurm binds GPUs to tasks (--gpus-per-task, --gpu-bind), each task sees only its own
    GPU(s), renumbered from 0, so local rank 3 must use cuda:0, not cuda:3."""
    if device_count < 1:
        raise ValueError(f"no visible GPU (device_count {device_count}) for local rank {local_rank}")
    return local_rank % device_count


def tasks_on_node(tasks_per_node: str, node: int) -> str:
    """The task count of node `node` in Slurm's compressed list ("8(x3),4": nodes 0-2 run 8, node 3 runs 4)."""
    import re

    counts = []
    for part in tasks_per_node.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            raise ValueError(f"tasks per node {tasks_per_node!r}: expected Slurm's form, e.g. 8(x3),4")
        counts += [match.group(1)] * int(match.group(2) or 1)
    # A node id past the list (a step on part of the job's nodes): the last entry, the step's
    # smallest group in Slurm's block layout, rather than failing the start.
    return counts[min(node, len(counts) - 1)]


def slurm_rendezvous(env: dict) -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, NODE_RANK, MASTER_ADDR and MASTER_PORT of an
    `srun` task (one task per GPU, no torchrun/deepspeed launcher), from the variables srun sets;
    values already in `env` win. MASTER_ADDR is the job's first node, MASTER_PORT a function of
    the job id (master_port)."""
    out = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
           "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "NODE_RANK": env.get("SLURM_NODEID", "0")}
    # The step's real layout first: with uneven nodes ("8(x3),4") each node has its own count.
    per_node = (env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
                or env.get("SLURM_NTASKS_PER_NODE") or "1")
    out["LOCAL_WORLD_SIZE"] = tasks_on_node(per_node, int(out["NODE_RANK"]))
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    out["MASTER_ADDR"] = expand_nodelist(nodelist)[0] if nodelist else "127.0.0.1"
    out["MASTER_PORT"] = str(master_port(env.get("SLURM_JOB_ID", "0")))
    return {k: env.get(k, v) for k, v in out.items()}


def prepare_environment() -> None:
    """Environment that must exist before deepspeed is imported (extension cache, rendezvous);
    DS_ACCELERATOR cpu where torch sees no GPU (init_distributed settles it for DeepSpeed runs)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(root, ".cache", "torch_extensions"))
    # Slurm without torchrun/deepspeed: srun starts one task per GPU and sets SLURM_PROCID per task.
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        os.environ.update(slurm_rendezvous(dict(os.environ)))
    if "RANK" not in os.environ:  # plain `python launch/train.py`: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        # Port 0: the store binds whatever port the OS gives it. A port picked beforehand can be
        # taken by another process's connection before the store binds it (seen: EADDRINUSE).
        os.environ.setdefault("MASTER_PORT", "0")


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    backend: str  # nccl | gloo
    note: str | None = None  # one line, where a visible GPU is left unused or DS_ACCELERATOR overruled


def choose_device(cuda_available: bool, device_count: int, local_rank: int, local_world_size: int | None,
                  ds_accelerator: str | None, use_deepspeed: bool, node_gpus: int | None = None) -> DeviceChoice:
    """The device and process-group backend of a rank: all CUDA + NCCL, or all CPU + gloo.

    CPU + gloo when torch sees no GPU; for DeepSpeed when DS_ACCELERATOR=cpu (DeepSpeed then
    keeps the module on the CPU: a CUDA rank would feed it CUDA images); and when the node has
    more local ranks than GPUs (NCCL cannot run two ranks on one GPU). Otherwise the rank's GPU
    (`pick_device`) and NCCL. `node_gpus`: the GPUs the node's ranks share, where the device
    count is only this task's (Slurm binding GPUs per task: SLURM_GPUS_ON_NODE); `local_world_size`
    None (unknown) trusts the launcher's binding. DS_ACCELERATOR is DeepSpeed's setting: torch
    backends (FSDP, DDP, evaluation) ignore it."""
    cpu = torch.device("cpu")
    gpus = device_count if cuda_available else 0
    if gpus < 1:
        note = (f"DS_ACCELERATOR={ds_accelerator} but torch sees no GPU: running on the CPU with gloo"
                if ds_accelerator == "cuda" else None)
        return DeviceChoice(cpu, "gloo", note)
    if use_deepspeed and ds_accelerator == "cpu":
        return DeviceChoice(cpu, "gloo", f"DS_ACCELERATOR=cpu: DeepSpeed keeps the model on the CPU, so this run "
                                         f"uses the CPU with gloo ({gpus} visible GPU(s) unused; unset "
                                         f"DS_ACCELERATOR to train on the GPU)")
    shared = gpus if node_gpus is None else node_gpus
    if local_world_size is not None and local_world_size > shared:
        return DeviceChoice(cpu, "gloo", f"{local_world_size} ranks on this node share {shared} GPU(s) "
                                         f"(NCCL needs one GPU per rank): running every rank on the CPU with gloo; "
                                         f"start at most {shared} rank(s) per node to use the GPU(s)")
    index = pick_device(local_rank, gpus)  # one GPU per task: cuda:0
    return DeviceChoice(torch.device("cuda", index), "nccl")


def local_layout(env) -> tuple[int | None, int | None]:
    """(ranks on this node, GPUs they share) from a launcher's variables; None where unknown.

    torchrun and the Slurm mapping set LOCAL_WORLD_SIZE, the deepspeed runner LOCAL_SIZE, a
    plain process is a world of one. Under srun without a launcher, Slurm may bind a GPU to each
    task (the task sees its GPU as cuda:0): the node's GPUs are SLURM_GPUS_ON_NODE, unknown
    without it."""
    local = env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or ("1" if env.get("WORLD_SIZE") == "1" else None)
    local = int(local) if local else None
    if "SLURM_PROCID" in env and "TORCHELASTIC_RUN_ID" not in env and "LOCAL_SIZE" not in env:  # an srun task
        node = env.get("SLURM_GPUS_ON_NODE", "")
        return (local, int(node)) if node.isdigit() else (None, None)
    return local, None


def _agree_with_deepspeed(device: torch.device) -> None:
    """DeepSpeed's accelerator on the same device as the rank: DS_ACCELERATOR before deepspeed
    is imported, and the accelerator itself where it was already resolved in this process."""
    name = "cuda" if device.type == "cuda" else "cpu"
    if device.type == "cpu" or os.environ.get("DS_ACCELERATOR") is None:
        os.environ["DS_ACCELERATOR"] = name
    real = sys.modules.get("deepspeed.accelerator.real_accelerator")
    current = getattr(real, "ds_accelerator", None)
    if current is not None and current.device_name() != name:
        if name == "cpu":
            from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator as Accelerator
        else:
            from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator as Accelerator
        real.set_accelerator(Accelerator())


def init_distributed(use_deepspeed: bool, timeout_s: float = 1800) -> DistInfo:
    prepare_environment()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    available = torch.cuda.is_available()
    local_world, node_gpus = local_layout(os.environ)
    choice = choose_device(available, torch.cuda.device_count() if available else 0, local_rank, local_world,
                           os.environ.get("DS_ACCELERATOR"), use_deepspeed, node_gpus)
    if choice.note and local_rank == 0:  # once per node
        print(f"note: {choice.note}", file=sys.stderr, flush=True)
    if use_deepspeed:
        _agree_with_deepspeed(choice.device)
    device, backend = choice.device, choice.backend
    if device.type == "cuda":
        torch.cuda.set_device(device.index)
    if not dist.is_initialized():
        if use_deepspeed:
            import deepspeed

            cpu_main = device.type == "cpu" and local_rank == 0
            note = op_cache.first_build_note("deepspeed_shm_comm") if cpu_main else None
            if note:  # a silent compile of minutes looks like a hang
                print(f"note: {note}", file=sys.stderr, flush=True)
            deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s))
            release_deepspeed_shared_memory()
        else:
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def release_deepspeed_shared_memory() -> None:
    """Unlink this rank's DeepSpeed CPU all-reduce buffer from /dev/shm once every rank has mapped it.

    DeepSpeed's shm_comm op creates one 66 MB segment per rank, named after MASTER_ADDR/PORT, and
    never unlinks it: every job, finished or killed, leaves its segments in RAM (/dev/shm is
    tmpfs) until the machine is out of memory. Unlinked here, the mappings stay valid and the
    kernel frees the memory when the last rank exits, however it exits.
    """
    if not dist.is_initialized():
        return
    # shm_initialize returns only after mapping every peer's segment; the barrier makes sure all have.
    dist.barrier()
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}")
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except FileNotFoundError:  # not all ranks local (no shm path), or not Linux
        pass


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# Command lines of the launcher processes above a rank (deepspeed runner and launch.py, torchrun).
_LAUNCHER_MARKS = ("deepspeed", "torchrun", "torch.distributed.run", "torch.distributed.launch")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, None when it is gone (or a zombie)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else (fields[0], int(fields[1]))


def launcher_pids() -> list[int]:
    """This rank's launcher processes: the chain of ancestors whose command line names a launcher."""
    pids, pid = [], os.getppid()
    while pid > 1 and len(pids) < 4:
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            break
        if not any(mark in cmdline for mark in _LAUNCHER_MARKS):
            break
        pids.append(pid)
        stat = _proc_stat(pid)
        if stat is None:
            break
        pid = stat[1]
    return pids


class LauncherWatch:
    """Calls `on_exit(pid)` once when a launcher above this rank exits (polled each second)."""

    def __init__(self, on_exit, poll_seconds: float = 1.0):
        self.pids, self.on_exit, self.poll = launcher_pids(), on_exit, poll_seconds
        if self.pids:
            threading.Thread(target=self._watch, name="launcher-watch", daemon=True).start()

    def _watch(self) -> None:
        import time

        while True:
            time.sleep(self.poll)
            for pid in self.pids:
                if _proc_stat(pid) is None:
                    self.on_exit(pid)
                    return


def _parse_mark(mark: str, default_code: int) -> tuple[str, int]:
    """The failure mark "rank:exit code" -> (rank, code)."""
    rank, _, code = mark.partition(":")
    return rank, int(code) if code.isdigit() else default_code


class PeerFailureWatch:
    """Ends every rank promptly when one fails, instead of leaving the others in a collective.

    The failing rank records its rank and exit code in the process group's key-value store and
    exits; a thread on every other rank polls the store and exits the process, with that code,
    when it sees the mark.
    Where rank 0 hosts the store (deepspeed, srun, plain env://), losing the store means rank 0
    died: exit too. Under torchrun the launcher's agent hosts it; its loss is the launcher's
    exit, which the launcher watch handles as a preemption. Only the first failing rank prints
    its error. Stop the watch before the final barrier of a normal exit.
    """

    KEY = "vitpose_scale/failed_rank"
    ACK = "vitpose_scale/failure_seen"
    POLL_SECONDS = 0.5
    LINGER_SECONDS = 5.0  # how long the failing rank waits for its peers to leave first

    def __init__(self, rank: int, exit_code: int = 1):
        self.rank, self.exit_code = rank, exit_code
        self.stopped = threading.Event()
        self._ack_lock, self._acked = threading.Lock(), False
        self.store = None
        self.store_on_rank0 = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true"
        if dist.is_initialized() and dist.get_world_size() > 1:
            self.store = dist.distributed_c10d._get_default_store()
            threading.Thread(target=self._watch, name="peer-failure-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self.stopped.wait(self.POLL_SECONDS):
            code = self.exit_code
            try:
                mark = self.store.check([self.KEY]) and self.store.get(self.KEY).decode()
                failed, code = _parse_mark(mark, self.exit_code) if mark else ("", code)
            except Exception:  # the store's host is gone
                if not self.store_on_rank0:
                    return
                failed = "0"
            if self.stopped.is_set():
                return
            if failed and failed != str(self.rank):
                sys.stdout.flush()
                sys.stderr.flush()
                self.acknowledge(failed)
                # The failing rank's exit code, not a generic 1: whichever rank the launcher sees
                # exit first, the job's code is the failure's (3 diverged, 4 checkpoint, ...).
                os._exit(code)

    def claim_failure(self, code: int = 1) -> str:
        """Mark this rank as failed with exit code `code`: "first" (it prints the error), "other"
        (another rank failed first and printed; `failure_code` is then that rank's code, which
        every rank exits with), or "unknown" (the store is gone: print a short line)."""
        self.failure_code = code
        if self.store is None:
            return "first"
        try:
            mark = self.store.compare_set(self.KEY, "", f"{self.rank}:{code}").decode()
        except Exception:
            return "unknown"
        winner, self.failure_code = _parse_mark(mark, code)
        return "first" if winner == str(self.rank) else "other"

    # Leaving in order: every rank's last store call must reach the store before the rank that
    # hosts it exits, or the call fails and torch prints "Connection reset by peer" with a C++
    # stack after the real error. Peers acknowledge the mark (ACK); the failing rank then sets
    # RELEASED and goes; the others go once they see it (counting themselves in LEFT); the host
    # goes last. Every wait is bounded by LINGER_SECONDS.
    RELEASED = "vitpose_scale/failure_released"
    LEFT = "vitpose_scale/failure_left"

    def _hosts_store(self) -> bool:
        return self.store_on_rank0 and self.rank == 0

    def _wait(self, done) -> None:
        import time

        deadline = time.monotonic() + self.LINGER_SECONDS
        while time.monotonic() < deadline:
            try:
                if done():
                    return
            except Exception:  # the store is gone: nothing left to wait for
                return
            time.sleep(0.05)

    def acknowledge(self, failed: str | None = None) -> None:
        """On a rank that did not fail first: tell the failing rank, then leave in order
        (once per process: the watch thread and the failing main thread may both get here)."""
        with self._ack_lock:
            if self._acked:
                return
            self._acked = True
        peers = dist.get_world_size() - 1
        try:
            self.store.add(self.ACK, 1)
        except Exception:
            return
        self._wait(lambda: self.store.check([self.RELEASED]))
        if self._hosts_store():  # every other peer (not the failing one) must have left
            others = peers - (0 if failed == str(self.rank) else 1)
            self._wait(lambda: self.store.add(self.LEFT, 0) >= others)
        else:
            try:
                self.store.add(self.LEFT, 1)
            except Exception:
                pass

    def linger(self) -> None:
        """On the rank that failed first: wait until every peer has seen the mark, then release
        them (and, hosting the store, wait until they have left)."""
        if self.store is None:
            return
        peers = dist.get_world_size() - 1
        self._wait(lambda: self.store.add(self.ACK, 0) >= peers)
        try:
            self.store.set(self.RELEASED, "1")
        except Exception:
            return
        if self._hosts_store():
            self._wait(lambda: self.store.add(self.LEFT, 0) >= peers)

    def stop(self) -> None:
        self.stopped.set()


def main_rank_first(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on rank 0, a barrier, then on the other ranks; returns each rank's result.

    For work that may write shared files the others then read (generating the
    synthetic set, downloading): rank 0 does it once, the rest find it done.
    """
    is_main = not dist.is_initialized() or dist.get_rank() == 0
    if is_main:
        result = fn(*args, **kwargs)
    if dist.is_initialized():
        dist.barrier()
    if not is_main:
        result = fn(*args, **kwargs)
    return result


def all_reduce_max(value: float, device: torch.device) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def average_buffers(module: torch.nn.Module) -> None:
    """Average BatchNorm running statistics over ranks, so every rank evaluates and saves the same model."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf.div_(dist.get_world_size())
