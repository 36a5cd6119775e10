"""Partial finetuning under the real trainer, every run in one process group (one launch):

    deepspeed --num_gpus 2 tests/freeze_runner.py OUT DATA INIT [--set k=v ...]

Runs, each a `Trainer` on configs/demo.yaml with the given overrides:
  full     nothing frozen, one step (the model-state memory without train.freeze)
  frozen   train.freeze=[ffn] from the weights in INIT (train.init_from), 4 steps, a checkpoint at 2
  resumed  a fresh directory holding a copy of frozen's step-2 checkpoint, resumed to step 4
Rank 0 writes OUT/report.json: per run the losses and, per rank, the optimizer state bytes (Adam
moments + ZeRO's fp32 master partitions), the elements of the frozen parameters this rank holds and
the optimizer's group count. tests/test_freeze.py also calls `run_all` in its own process (one rank,
parallel.backend=none).
"""
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN_SETS = {
    "full": ["train.max_steps=1"],
    "frozen": ["train.max_steps=4", "train.freeze=[ffn]"],
    "resumed": ["train.max_steps=4", "train.freeze=[ffn]"],
}


def optimizer_state_bytes(optimizer) -> int:
    """AdamW's exp_avg and exp_avg_sq, and the fp32 master partitions a ZeRO-3 optimizer keeps
    (DeepSpeed wraps the torch AdamW, whose state is then keyed by those flat partitions)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    total = sum(t.numel() * t.element_size() for state in inner.state.values() for key, t in state.items()
                if key in ("exp_avg", "exp_avg_sq"))
    return total + sum(t.numel() * t.element_size() for t in getattr(optimizer, "fp32_partitioned_groups_flat", []))


def frozen_elements_held(module) -> int:
    """Elements of the frozen parameters on this rank (its ZeRO-3 partitions)."""
    return sum(getattr(p, "ds_tensor", p).numel() for p in module.parameters() if not p.requires_grad)


def run_all(out: Path, data: Path, init: Path, base: list[str], info) -> dict:
    """The three runs of the module docstring; every rank returns the report (one process: no group)."""
    import torch.distributed as dist

    from vitpose_scale.config import load_config
    from vitpose_scale.engine.trainer import Trainer

    group = dist.is_initialized()
    report = {}
    for name, sets in RUN_SETS.items():
        run = out / name
        if name == "resumed" and info.is_main:
            shutil.copytree(out / "frozen" / "checkpoints" / "step_00000002", run / "checkpoints" / "step_00000002")
        if group:
            dist.barrier()
        init_from = [f"train.init_from={init}"] if name != "full" else []
        cfg = load_config(ROOT / "configs" / "demo.yaml",
                          [f"data.root={data}", f"train.output_dir={run}", *base, *init_from, *sets])
        trainer = Trainer(cfg, info)
        trainer.train()
        mine = {"optimizer_state_bytes": optimizer_state_bytes(trainer.wrapper.optimizer),
                "frozen_elements": frozen_elements_held(trainer.wrapper.module),
                "groups": len(trainer.wrapper.param_groups)}
        per_rank = [mine]
        if group:
            per_rank = [None] * info.world_size
            dist.all_gather_object(per_rank, mine)
        report[name] = {"losses": {h["step"]: h["loss"] for h in trainer.history}, "ranks": per_rank}
    return report


def main() -> int:
    from vitpose_scale.engine.distributed import init_distributed, shutdown

    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # the deepspeed launcher adds it
    out, data, init = Path(args[0]), Path(args[1]), Path(args[2])
    base = [s for flag, s in zip(args[3::2], args[4::2]) if flag == "--set"]
    info = init_distributed(use_deepspeed=True)
    report = run_all(out, data, init, base, info)
    if info.is_main:
        (out / "report.json").write_text(json.dumps(report))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
