"""MAE pretraining entry point for every launcher (see docs/mae.md):

    deepspeed [--num_gpus N] launch/pretrain_mae.py --config configs/mae_demo.yaml [--set k=v ...]
    torchrun --nproc_per_node N launch/pretrain_mae.py --config ...   (parallel.backend fsdp or none)
    python launch/pretrain_mae.py --config ...                        (one process)
    srun python launch/pretrain_mae.py --config ...                   (Slurm: one task per GPU)

Exit codes as launch/train.py: 0 done, 2 config error, 3 diverged (NaN/inf loss),
143 preempted (checkpoint written; requeue to resume).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pretrain_mae", description="MAE pretraining of the ViTPose backbone")
    parser.add_argument("--config", required=True, help="YAML under configs/, e.g. configs/mae_demo.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set train.max_steps=10 (repeatable)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from vitpose_scale.config import ConfigError, load_config
    from vitpose_scale.engine.distributed import init_distributed, prepare_environment, shutdown

    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    prepare_environment()  # DS_ACCELERATOR=cpu etc. before deepspeed is imported
    info = init_distributed(cfg.parallel.backend == "deepspeed")
    from vitpose_scale.engine.pretrain import run_pretraining
    from vitpose_scale.engine.trainer import PREEMPTED_EXIT_CODE, TrainingDiverged

    code = 0
    try:
        result = run_pretraining(cfg, info)
        if result.get("preempted"):
            code = PREEMPTED_EXIT_CODE
        elif info.is_main:
            last = result["history"][-1]["loss"] if result["history"] else float("nan")
            print(f"done: {result['step']} steps, last loss {last:.4f}; encoder for train.init_from: "
                  f"{result['final']}", flush=True)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        code = 2
    except TrainingDiverged as exc:
        print(f"training stopped: {exc}", file=sys.stderr)
        code = 3
    finally:
        if code in (0, PREEMPTED_EXIT_CODE):
            shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
