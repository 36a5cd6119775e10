"""The output directory of a run: one run at a time, seen alike by every rank.

* A lock file (`<output_dir>/.lock`, created exclusively by rank 0, held for the run's life,
  its mtime refreshed by a heartbeat) refuses a second run in the same directory, naming the
  holder: two runs there would resume from each other's checkpoints and interleave their logs.
  A lock is stale, and taken over with a message, when its holder is a dead process on this
  host, an earlier incarnation of this Slurm job (a requeue), or its heartbeat stopped.
* A token written by rank 0 and read back by every rank proves that all ranks see the same
  directory: a node-local `output_dir` would otherwise give checkpoints with a third of
  their files and a requeued job that starts from scratch.
"""
from __future__ import annotations

import atexit
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

import torch.distributed as dist

from vitpose_scale.config import ConfigError

LOCK = ".lock"
HEARTBEAT_S = 20.0
STALE_AFTER_S = 120.0  # no heartbeat for this long: the holder is gone (a host that died, say)

_held: list["RunLock"] = []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict, age: float) -> str:
    job = f", Slurm job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return (f"host {holder.get('host')}, pid {holder.get('pid')}{job}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))}, "
            f"last heartbeat {age:.0f} s ago")


class RunLock:
    """The exclusive lock of one output directory (rank 0 holds it)."""

    def __init__(self, directory: Path, stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S):
        self.path = Path(directory) / LOCK
        self.stale_after_s, self.heartbeat_s = stale_after_s, heartbeat_s
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID"),
                       "started": time.time(), "token": secrets.token_hex(8)}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stale_reason(self, holder: dict, age: float) -> str | None:
        if holder.get("host") == self.record["host"] and isinstance(holder.get("pid"), int) \
                and not _pid_alive(holder["pid"]):
            return f"process {holder['pid']} on this host is gone"
        if holder.get("slurm_job") and holder.get("slurm_job") == self.record["slurm_job"]:
            return f"an earlier run of Slurm job {holder['slurm_job']} (requeued)"
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s (more than {self.stale_after_s:.0f} s)"
        return None

    def acquire(self) -> str | None:
        """Take the lock, or return why not (naming the holder). Takes over a stale lock."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text())
                    age = time.time() - self.path.stat().st_mtime
                except (OSError, ValueError):  # being written or removed right now: look again
                    time.sleep(0.2)
                    continue
                why = self._stale_reason(holder, age)
                if why is None:
                    return (f"train.output_dir {self.path.parent} is in use by another run ({_describe(holder, age)}); "
                            "two runs in one directory would mix their checkpoints and logs: use another "
                            f"output_dir, or wait (a lock without heartbeat is taken over after "
                            f"{self.stale_after_s:.0f} s; remove {self.path} if you know that run is gone)")
                print(f"taking over the lock of {self.path.parent}: {why} ({_describe(holder, age)})", flush=True)
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.record, f)
            _held.append(self)
            self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
            self._thread.start()
            return None
        return f"train.output_dir {self.path.parent}: could not take {self.path} (it keeps changing)"

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        try:
            if json.loads(self.path.read_text()).get("token") == self.record["token"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass
        if self in _held:
            _held.remove(self)


def release_all() -> None:
    """Release every lock this process holds (called before os._exit, which skips atexit)."""
    for lock in list(_held):
        lock.release()


atexit.register(release_all)


def _gather(obj, world_size: int) -> list:
    if not dist.is_initialized() or world_size == 1:
        return [obj]
    parts = [None] * world_size
    dist.all_gather_object(parts, obj)
    return parts


def claim(directory: Path, rank: int, world_size: int) -> RunLock | None:
    """Every rank calls: rank 0 takes the lock, then every rank reads back rank 0's token.
    Raises ConfigError on every rank (exit 2) if the lock is held or a rank sees another directory."""
    directory = Path(directory)
    lock, refused, token = None, None, None
    if rank == 0:
        lock = RunLock(directory)
        refused = lock.acquire()
        if refused is None:
            token = lock.record["token"]
    refused, token = _gather((refused, token), world_size)[0]
    if refused:
        raise ConfigError(refused)
    try:
        seen = json.loads((directory / LOCK).read_text()).get("token")
    except (OSError, ValueError):
        seen = None
    views = _gather((rank, socket.gethostname(), seen == token), world_size)
    blind = [(r, host) for r, host, ok in views if not ok]
    if blind:
        if lock is not None:
            lock.release()
        listed = ", ".join(f"rank {r} on {host}" for r, host in blind)
        raise ConfigError(f"train.output_dir {directory}: {listed} cannot see the files rank 0 writes there; "
                          "output_dir must be on a filesystem that every node shares (checkpoints are written by "
                          "all ranks into one directory)")
    return lock
