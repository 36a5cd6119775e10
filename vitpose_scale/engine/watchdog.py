"""Step watchdog: a run whose steps stop completing ends with a message instead of hanging.

A rank that is frozen (SIGSTOP, a dead GPU, a hung filesystem) leaves every other rank inside
a collective until the process group's timeout (`parallel.timeout_s`). This watchdog bounds the
wait by the run's own pace: when no step completes within the stall bound, the rank prints
which ranks were last heard from (each rank records its last step in the process group's
store), dumps its own Python stacks (faulthandler) and exits with STALL_EXIT_CODE.

The bound: `train.stall_timeout_s` when set (> 0); otherwise 20x the median step time once
`WARMUP_STEPS` steps have been timed, never under `FLOOR_S` (and `FIRST_STEPS_S` before that:
the first steps compile and allocate). Evaluation and checkpoint writes are not steps: the
watchdog is paused for them (the process group's timeout still bounds their collectives).
"""
from __future__ import annotations

import faulthandler
import os
import statistics
import sys
import threading
import time

import torch.distributed as dist

STALL_EXIT_CODE = 5
FLOOR_S = 300.0
FIRST_STEPS_S = 900.0
WARMUP_STEPS = 5
KEY = "vitpose_scale/heartbeat/"


def auto_bound(step_seconds: list[float]) -> float:
    if len(step_seconds) < WARMUP_STEPS:
        return FIRST_STEPS_S
    return max(FLOOR_S, 20.0 * statistics.median(step_seconds[-50:]))


class StepWatchdog:
    def __init__(self, rank: int, world_size: int, timeout_s: float | None, poll_s: float = 0.5):
        self.rank, self.world_size, self.fixed = rank, world_size, timeout_s
        self.poll_s = poll_s
        self.store = (dist.distributed_c10d._get_default_store()
                      if dist.is_initialized() and world_size > 1 else None)
        self.step, self.last = 0, time.monotonic()
        self.step_seconds: list[float] = []
        self.paused = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        if timeout_s != 0:
            threading.Thread(target=self._watch, name="step-watchdog", daemon=True).start()

    @property
    def bound(self) -> float:
        return self.fixed if self.fixed else auto_bound(self.step_seconds)

    def beat(self, step: int) -> None:
        """A step completed."""
        now = time.monotonic()
        with self._lock:
            if self.step and not self.paused:
                self.step_seconds.append(now - self.last)
            self.step, self.last, self.paused = step, now, False
        if self.store is not None:
            try:
                self.store.set(KEY + str(self.rank), f"{step} {time.time():.3f}")
            except Exception:  # the store's host is gone: the peer-failure watch handles that
                pass

    def pause(self) -> None:
        """Evaluation or a checkpoint write follows: not a step. The next beat resumes the watch."""
        with self._lock:
            self.paused = True

    def stop(self) -> None:
        self._stop.set()

    def _peers(self) -> str:
        """Each rank's last recorded step and its age, read from the store with a short timeout
        (a frozen rank 0 freezes the store it hosts too)."""
        if self.store is None:
            return "one rank"
        found: dict[int, str] = {}

        def read():
            for r in range(self.world_size):
                try:
                    if self.store.check([KEY + str(r)]):
                        step, stamp = self.store.get(KEY + str(r)).decode().split()
                        found[r] = f"rank {r}: step {step}, {time.time() - float(stamp):.0f} s ago"
                    else:
                        found[r] = f"rank {r}: no step yet"
                except Exception:
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(5.0)
        listed = [found.get(r, f"rank {r}: unknown (the store did not answer)") for r in range(self.world_size)]
        return "; ".join(listed)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            with self._lock:
                if self.paused:
                    continue
                waited, bound, step = time.monotonic() - self.last, self.bound, self.step
            if waited <= bound:
                continue
            print(f"rank {self.rank}: no training step completed for {waited:.0f} s (stall bound {bound:.0f} s, "
                  f"train.stall_timeout_s) after step {step}; last heard: {self._peers()}. A rank is frozen or "
                  f"a collective hangs; stacks of rank {self.rank} follow; exiting {STALL_EXIT_CODE}",
                  file=sys.stderr, flush=True)
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
            sys.stderr.flush()
            from vitpose_scale.engine.run_dir import release_all

            release_all()
            os._exit(STALL_EXIT_CODE)
