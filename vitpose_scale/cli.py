"""`vitpose-scale` command: train | eval | infer | coco-eval | pckh | convert | export | split | params |
make-synthetic | prepare-images."""
from __future__ import annotations

import argparse
import os
import sys

from vitpose_scale.errors import CheckpointError, InputError  # noqa: F401 - the commands raise these


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """--config, repeatable --set, and the --local_rank that the deepspeed launcher passes."""
    parser.add_argument("--config", required=True, help="YAML under configs/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. --set model.depth=4 (repeatable)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


# Exit codes of every command (docs/operations.md, "Exit codes").
EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_DIVERGED, EXIT_CHECKPOINT, EXIT_PREEMPTED = 0, 1, 2, 3, 4, 143


def one_line(exc: BaseException) -> str:
    """An error's message on one line: some library messages (torch.load's) span several."""
    return " ".join(part.strip() for part in str(exc).splitlines() if part.strip())


def run_reporting_errors(command, *args) -> int:
    """``command(*args)``'s exit code, or one line on stderr and the code of a known failure:
    2 for a config (ConfigError) or input error (InputError, or a file that cannot be read or
    written: OSError), 4 for a checkpoint that is missing, damaged, unsafe or of another model
    (CheckpointError). Anything else is a bug: its traceback, exit 1."""
    from vitpose_scale.config import ConfigError

    try:
        return command(*args)
    except CheckpointError as exc:
        print(f"checkpoint error: {one_line(exc)}", file=sys.stderr)
        return EXIT_CHECKPOINT
    except ConfigError as exc:
        print(f"config error: {one_line(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    except (InputError, OSError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_CONFIG


def load_config_or_report(args: argparse.Namespace):
    """The validated config, or None after printing the error (callers exit with 2)."""
    from vitpose_scale.config import ConfigError, load_config

    try:
        return load_config(args.config, args.set)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return None


def _run_trainer(argv: list[str] | None, prog: str, description: str, trainer_path: str) -> int:
    """Parse, set up the process group and run a Trainer class. Exit codes: 0 done or paused
    (train.stop_at), 1 error, 2 config, 3 diverged, 4 damaged/unsafe checkpoint, 5 stalled (the step
    watchdog, engine/watchdog.py), 143 preempted
    (checkpoint written: requeue to resume). Any failure ends every rank at once with one message.
    Shared by every launcher."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_config_args(parser)
    cfg = load_config_or_report(parser.parse_args(argv))
    if cfg is None:
        return 2
    from vitpose_scale.config import ConfigError
    from vitpose_scale.engine.checkpoint import CheckpointError
    from vitpose_scale.engine.distributed import PeerFailureWatch, init_distributed, shutdown

    info = init_distributed(cfg.parallel.backend == "deepspeed", cfg.parallel.timeout_s)
    import importlib

    from vitpose_scale.engine.trainer import PREEMPTED_EXIT_CODE, TrainingDiverged

    module, name = trainer_path.split(":")
    trainer_class = getattr(importlib.import_module(module), name)
    watch = PeerFailureWatch(info.rank)
    try:
        trainer = trainer_class(cfg, info)
        result = trainer.train()
    except BaseException as exc:  # noqa: BLE001 - every failure ends every rank, with one message
        known = {ConfigError: (2, "config error"), TrainingDiverged: (3, "training stopped"),
                 CheckpointError: (4, "checkpoint error")}
        code, label = next((v for k, v in known.items() if isinstance(exc, k)), (1, None))
        claim = watch.claim_failure(code)
        if claim == "other":  # one failure, one exit code on every rank
            code = watch.failure_code
        if claim == "first":
            if label:
                print(f"{label}: {one_line(exc)}", file=sys.stderr)
            else:
                import traceback

                print(f"rank {info.rank} failed; stopping every rank:", file=sys.stderr)
                traceback.print_exc()
        elif claim == "unknown":  # the rendezvous store is gone: a peer or the launcher died first
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            print(f"rank {info.rank} stopping: {label or type(exc).__name__}: {first_line[:300]}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        if claim == "first":
            watch.linger()
        elif claim == "other":
            watch.acknowledge()
        from vitpose_scale.engine.run_dir import release_all

        release_all()  # os._exit skips atexit: the output directory's lock goes now
        # Peers may sit in a collective that will never complete: no barrier, no destroy.
        os._exit(code)
    watch.stop()
    if result.get("preempted"):
        code = PREEMPTED_EXIT_CODE
    else:
        code = 0
        if info.is_main:
            if result.get("paused"):
                print(f"paused at step {result['step']} (train.stop_at): checkpoint written; run the same "
                      f"command without stop_at to continue", flush=True)
            else:
                last = trainer.history[-1]["loss"] if trainer.history else float("nan")
                best = f", best AP {result['best_ap']:.4f}" if trainer.val_set is not None else ""
                print(f"done: {result['step']} steps, last loss {last:.4g}{best}; weights: {result['final']}",
                      flush=True)
    shutdown()
    return code


def train_main(argv: list[str] | None = None) -> int:
    """`vitpose-scale train` and launch/train.py (deepspeed, torchrun, python, srun)."""
    return _run_trainer(argv, "vitpose-scale train", "train a ViTPose model",
                        "vitpose_scale.engine.trainer:Trainer")


def distill_token_main(argv: list[str] | None = None) -> int:
    """`vitpose-scale distill-token`: stage 1 of the knowledge token on a frozen teacher (docs/distillation.md)."""
    return _run_trainer(argv, "vitpose-scale distill-token",
                        "learn the knowledge token on a frozen teacher (train.init_from): stage 1 of the paper's "
                        "token distillation; writes <output_dir>/knowledge_token.pth",
                        "vitpose_scale.engine.distill:TokenTrainer")


def pretrain_main(argv: list[str] | None = None) -> int:
    """`vitpose-scale pretrain` and launch/pretrain_mae.py: MAE pretraining of the backbone."""
    return _run_trainer(argv, "vitpose-scale pretrain", "MAE pretraining of the ViTPose backbone (docs/mae.md)",
                        "vitpose_scale.engine.pretrain:MAEPretrainer")


def convert_main(argv: list[str] | None = None) -> int:
    return run_reporting_errors(_convert, _convert_parser().parse_args(argv))


def _convert_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitpose-scale convert",
        description="consolidate a training checkpoint (ZeRO shards or FSDP) into one fp32 official-format file, "
                    "or convert between the official and Hugging Face layouts")
    parser.add_argument("--checkpoint", required=True,
                        help="runs/X/checkpoints/step_N, an official .pth, or a HF .safetensors/.bin")
    parser.add_argument("--out", required=True)
    parser.add_argument("--to", choices=["official", "hf"], default="official")
    return parser


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vitpose_scale.models import interop
    from vitpose_scale.models.weights import read_state

    src = Path(args.checkpoint)
    state, meta = read_state(src)  # any layout; a training checkpoint directory is consolidated
    meta = {**{k: v for k, v in meta.items() if k != "format"}, "source": str(src)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.to == "hf":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in interop.to_hf_state_dict(state).items()}, str(out))
    else:
        interop.save_official(state, out, meta)
    print(f"wrote {out} ({sum(v.numel() for v in state.values()) / 1e6:.1f} M values, {len(state)} tensors)")
    return 0


def split_main(argv: list[str] | None = None) -> int:
    return run_reporting_errors(_split, _split_parser().parse_args(argv))


def _split_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitpose-scale split",
        description="one dataset's plain ViTPose (official layout) out of a multi-task ViTPose+/++ checkpoint, as "
                    "the official tools/model_split.py: experts merged into fc2, that dataset's head only")
    parser.add_argument("--checkpoint", required=True,
                        help="official ViTPose+/++ .pth, runs/X/best.pth, runs/X/checkpoints/step_N or .safetensors")
    parser.add_argument("--dataset", required=True, metavar="NAME|INDEX",
                        help="a data.tasks name of the run's config, or the dataset index (0: keypoint_head)")
    parser.add_argument("--out", required=True, help="the .pth file to write ({'meta', 'state_dict'})")
    parser.add_argument("--config", help="the run's config (default: config.yaml next to the checkpoint); "
                                         "needed for a NAME")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def _split(args: argparse.Namespace) -> int:
    from vitpose_scale.config import ConfigError, task_names
    from vitpose_scale.models import interop
    from vitpose_scale.models.split import resolve_dataset, split_state_dict
    from vitpose_scale.models.weights import config_for_checkpoint, read_state

    state, meta = read_state(args.checkpoint)  # a missing one: CheckpointError, exit 4
    count = interop.dataset_count(state)
    if count < 2:
        raise interop.CheckpointError(f"{args.checkpoint} serves one dataset (no mlp.experts.*, no "
                                      f"associate_keypoint_heads.*): nothing to split")
    cfg = None
    try:
        cfg = config_for_checkpoint(args.checkpoint, args.config, args.overrides)
    except FileNotFoundError:
        if args.config or not args.dataset.strip().isdigit():  # an index needs no names
            raise
    names = task_names(cfg) if cfg is not None else []
    if cfg is not None and len(names) != count:
        raise ConfigError(f"data.tasks names {len(names)} datasets {names}, but {args.checkpoint} has {count} "
                          f"(experts per block / keypoint heads): expected the config of the run that wrote it")
    index = resolve_dataset(args.dataset, names, count)
    out_state = split_state_dict(state, index)
    meta = {k: v for k, v in meta.items() if k != "format"}
    meta.update(dataset_index=index, split_from=str(args.checkpoint),
                num_keypoints=int(out_state["keypoint_head.final_layer.weight"].shape[0]))
    if names:
        meta["dataset"] = names[index]
    if cfg is not None and "pos_embed_grid" not in meta:  # a training checkpoint directory has no meta grid
        m = cfg.model
        meta["pos_embed_grid"] = list(m.pretrain_grid) if m.pretrain_grid else list(m.grid)
    interop.save_official(out_state, args.out, meta)
    label = f"{names[index]} (index {index})" if names else f"index {index}"
    print(f"wrote {args.out}: dataset {label}, {meta['num_keypoints']} joints, plain ViTPose from {args.checkpoint}")
    return 0


def params_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vitpose-scale params",
                                     description="parameter counts and FLOPs of the presets (meta device)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[256, 192])
    args = parser.parse_args(argv)
    from vitpose_scale.config import PRESETS, ModelConfig
    from vitpose_scale.models.pose import build_pose_model, count_parameters, forward_flops_per_image

    # G at its recipe resolution, once more with the overlapping stride-8 patches (4x the tokens).
    rows = [(name, [576, 432] if name == "G" else args.image_size, 16) for name in PRESETS] + [("G", [576, 432], 8)]
    print(f"{'preset':>6} {'stride':>6} {'tokens':>6} {'backbone':>12} {'head':>10} {'GFLOPs/img':>11}")
    for name, size, stride in rows:
        cfg = ModelConfig(preset=name, image_size=size, patch_stride=stride)
        model = build_pose_model(cfg, device="meta")
        print(f"{name:>6} {stride:>6} {cfg.grid[0] * cfg.grid[1]:>6} {count_parameters(model.backbone) / 1e6:>10.1f} M "
              f"{count_parameters(model.keypoint_head) / 1e6:>8.2f} M {forward_flops_per_image(cfg) / 1e9:>11.1f}  "
              f"({size[0]}x{size[1]})")
    return 0


COMMANDS = {
    "train": ("train a model (see also launch/train.py for multi-process launchers)", "vitpose_scale.cli:train_main"),
    "pretrain": ("MAE pretraining of the backbone (see launch/pretrain_mae.py)", "vitpose_scale.cli:pretrain_main"),
    "distill-token": ("learn the knowledge token on a frozen teacher (stage 1; docs/distillation.md)",
                      "vitpose_scale.cli:distill_token_main"),
    "eval": ("evaluate a checkpoint or a heatmap ensemble on val (or write test-dev results), distributed",
             "vitpose_scale.evaluate:main"),
    "infer": ("pose estimation on an image or a folder, drawing the skeletons", "vitpose_scale.infer:main"),
    "coco-eval": ("evaluate a COCO keypoint results file (pycocotools-equal, faster)", "vitpose_scale.eval.coco_eval:main"),
    "pckh": ("MPII PCKh of a results file against mpii_gt_val.mat (mmpose-equal)", "vitpose_scale.eval.pckh:main"),
    "convert": ("consolidate ZeRO/FSDP checkpoints; official <-> Hugging Face", "vitpose_scale.cli:convert_main"),
    "export": ("a checkpoint as a Hugging Face directory, ONNX or safetensors", "vitpose_scale.export:main"),
    "split": ("one dataset's plain ViTPose out of a ViTPose+/++ checkpoint (tools/model_split.py)",
              "vitpose_scale.cli:split_main"),
    "params": ("parameter count and FLOPs table of the presets", "vitpose_scale.cli:params_main"),
    "plan": ("memory per rank, FLOPs and time of a config at a given number of GPUs", "vitpose_scale.plan:main"),
    "plot": ("training curves (loss, AP, lr) of a run directory as a PNG", "vitpose_scale.plot:main"),
    "make-synthetic": ("generate the synthetic-people COCO data set", "vitpose_scale.data.synthetic:main"),
    "prepare-images": ("copy an image folder with JPEGs that decode per crop window (lossless)",
                       "vitpose_scale.data.prepare_images:main"),
}


def main(argv: list[str] | None = None) -> int:
    as_program = argv is None  # the console script / python -m, not a call from Python code
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: vitpose-scale <command> [options]\n\ncommands:")
        for name, (text, _) in COMMANDS.items():
            print(f"  {name:<15} {text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module, func = COMMANDS[argv[0]][1].split(":")
    options = {}
    if argv[0] == "coco-eval" and as_program:
        # numpy-only command that never calls BLAS: don't let importing numpy start
        # OpenBLAS's thread pool (~30 ms of CPU at start-up, counted end to end),
        # and end the process without freeing what it parsed (coco_eval.main)
        import os

        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        options["hard_exit"] = True
    import importlib

    return int(getattr(importlib.import_module(module), func)(argv[1:], **options) or 0)


if __name__ == "__main__":
    sys.exit(main())
