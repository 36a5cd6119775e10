"""Submit training with submitit: one task per GPU, each running the trainer in-process.

    python launch/submit.py --config configs/vitpose_g_576x432.yaml --nodes 4 --gpus-per-node 8 \\
        --partition P [--time 2880] [--set train.batch_size=256 ...]
    python launch/submit.py --local --tasks-per-node 2 --config configs/demo.yaml --set ...   (no Slurm)

Preemption and time limit: submitit asks Slurm for its preemption signal (SIGUSR2 by default,
`--signal-delay` seconds before the limit; SUBMITIT_PREEMPT_SIGNAL may change it) and delivers it
to every task. Here that signal is forwarded to the trainer's SIGUSR1 handler, so the trainer writes
a checkpoint at the next step and returns 143 on every rank; then rank 0 hands over to submitit,
which calls `TrainJob.checkpoint()` (a DelayedSubmission of the same job) and requeues the Slurm job.
The next start resumes from the latest checkpoint (train.resume: auto). A SIGTERM (Slurm preemption
with PreemptMode=REQUEUE) also makes the trainer checkpoint; Slurm requeues such a job itself.
See docs/slurm.md.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PREEMPTED_EXIT_CODE = 143  # vitpose_scale.engine.trainer.PREEMPTED_EXIT_CODE (not imported here: keeps torch out)


def _master_port(job_id: str) -> int:
    """vitpose_scale.engine.distributed.master_port of the job id's digits (not imported: keeps torch out)."""
    digits = "".join(c for c in str(job_id) if c.isdigit()) or "0"
    return 12000 + int(digits[-9:]) % 20000


def _forward_to_trainer(usr_sig: int) -> None:
    """Turn `usr_sig` into the SIGUSR1 the trainer checkpoints on.

    The trainer installs its handler only once it is built; a signal that comes earlier is kept
    (a placeholder SIGUSR1 handler) and re-raised by a watcher thread as soon as the trainer's
    handler has replaced the placeholder.
    """
    import threading
    import time

    pending = threading.Event()

    def placeholder(_signum, _frame):
        pending.set()

    def forward(_signum, _frame):
        if signal.getsignal(signal.SIGUSR1) is placeholder:
            pending.set()
        else:
            os.kill(os.getpid(), signal.SIGUSR1)

    def watch():
        pending.wait()
        while signal.getsignal(signal.SIGUSR1) is placeholder:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGUSR1)

    signal.signal(signal.SIGUSR1, placeholder)
    signal.signal(usr_sig, forward)
    threading.Thread(target=watch, name="preemption-forward", daemon=True).start()


class TrainJob:
    """The submitted callable: one instance per task, the same trainer code as launch/train.py."""

    def __init__(self, train_args: list[str], workdir: str):
        self.train_args = list(train_args)
        self.workdir = workdir

    def _set_dist_env(self, env) -> None:
        hosts = list(env.hostnames) if env.cluster == "slurm" else []
        os.environ.update(
            RANK=str(env.global_rank),
            WORLD_SIZE=str(env.num_tasks),
            LOCAL_RANK=str(env.local_rank),
            MASTER_ADDR=os.environ.get("MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1"),
            MASTER_PORT=os.environ.get("MASTER_PORT") or str(_master_port(env.raw_job_id)),
        )

    def __call__(self) -> dict:
        import submitit

        os.chdir(self.workdir)  # relative paths of the configs (data/, runs/) are from the repository root
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        env = submitit.JobEnvironment()
        self._set_dist_env(env)
        if env.global_rank == 0:
            print(f"{env}: rendezvous {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}, "
                  f"train {' '.join(self.train_args)}", flush=True)

        # submitit's preemption/time-out signal -> the trainer's SIGUSR1 (checkpoint, then return 143).
        usr_sig = env._usr_sig()
        submitit_handler = signal.getsignal(usr_sig)
        if usr_sig != signal.SIGUSR1:
            _forward_to_trainer(usr_sig)

        from vitpose_scale.cli import train_main

        code = train_main(self.train_args)
        if code == PREEMPTED_EXIT_CODE:
            print(f"rank {env.global_rank}: checkpoint written after preemption signal", flush=True)
            if callable(submitit_handler) and usr_sig != signal.SIGUSR1:
                # rank 0: submitit calls self.checkpoint(), stores the DelayedSubmission, requeues
                # (`scontrol requeue` on Slurm, exit 144 under the local executor) and exits.
                # Other ranks: submitit's handler returns at once.
                try:
                    submitit_handler(usr_sig, None)
                except subprocess.CalledProcessError as exc:  # the job is already leaving (cancel/preemption)
                    print(f"requeue failed ({exc}); Slurm decides what happens to the job", flush=True)
            return {"preempted": True, "rank": env.global_rank}
        if code != 0:
            raise RuntimeError(f"training exited with code {code} (rank {env.global_rank})")
        out = self._output_dir()
        return {"preempted": False, "rank": env.global_rank, "output_dir": out,
                "final": str(Path(out) / "final.pth") if out else None}

    def _output_dir(self) -> str | None:
        try:
            from vitpose_scale.config import load_config

            config = next(self.train_args[i + 1] for i in range(len(self.train_args) - 1)
                          if self.train_args[i] == "--config")
            sets = [self.train_args[i + 1] for i in range(len(self.train_args) - 1) if self.train_args[i] == "--set"]
            return str(load_config(config, sets).train.output_dir)
        except Exception:  # noqa: BLE001 - informational only
            return None

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on preemption/time-out: run the same job again; it resumes by itself."""
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(self.train_args, self.workdir))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to the trainer")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8, help="0 on CPU-only clusters (no GRES request)")
    p.add_argument("--tasks-per-node", type=int, default=None, help="default: --gpus-per-node (or 1)")
    p.add_argument("--cpus-per-task", type=int, default=10)
    p.add_argument("--mem-gb", type=float, default=None, help="per node; default: the cluster's")
    p.add_argument("--time", type=int, default=24 * 60, help="minutes per allocation (requeued beyond)")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--qos", default=None)
    p.add_argument("--constraint", default=None)
    p.add_argument("--exclude", default=None)
    p.add_argument("--name", default=None, help="job name (default: vitpose-<config name>)")
    p.add_argument("--signal-delay", type=int, default=180,
                   help="seconds before the time limit at which the checkpoint signal is sent")
    p.add_argument("--max-requeues", type=int, default=100, help="time-outs tolerated (submitit max_num_timeout)")
    p.add_argument("--folder", default="runs/submitit/%j", help="submitit logs and pickles")
    p.add_argument("--local", action="store_true", help="submitit's local executor (one node, no Slurm)")
    p.add_argument("--wait", action="store_true", help="block until the job ends and print its result")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import submitit

    os.chdir(ROOT)
    train_args = ["--config", args.config]
    for s in args.set:
        train_args += ["--set", s]
    tasks = args.tasks_per_node or max(args.gpus_per_node, 1)
    name = args.name or f"vitpose-{Path(args.config).stem}"

    executor = submitit.AutoExecutor(folder=args.folder, cluster="local" if args.local else "slurm",
                                     slurm_max_num_timeout=args.max_requeues)
    params = dict(name=name, timeout_min=args.time, tasks_per_node=tasks, cpus_per_task=args.cpus_per_task,
                  stderr_to_stdout=True)
    if args.local:
        if args.nodes != 1:
            print("--local runs on one node", file=sys.stderr)
            return 2
        params.update(nodes=1)  # the local executor signals 30 s before timeout_min (not configurable)
        if args.gpus_per_node:
            params["gpus_per_node"] = args.gpus_per_node
    else:
        params.update(nodes=args.nodes, slurm_signal_delay_s=args.signal_delay,
                      slurm_additional_parameters={"requeue": True})
        if args.gpus_per_node:  # no GRES request at all on CPU-only clusters
            params["gpus_per_node"] = args.gpus_per_node
        if args.mem_gb:
            params["mem_gb"] = args.mem_gb
        for key in ("partition", "account", "qos", "constraint", "exclude"):
            if getattr(args, key):
                params[f"slurm_{key}"] = getattr(args, key)
    executor.update_parameters(**params)
    job = executor.submit(TrainJob(train_args, str(ROOT)))
    print(f"submitted job {job.job_id} ({'local' if args.local else 'slurm'}: {args.nodes} node(s) x {tasks} "
          f"task(s)); logs in {job.paths.stdout.parent}", flush=True)
    if args.wait:
        results = job.results()
        print(f"job {job.job_id} finished: {results[0]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
