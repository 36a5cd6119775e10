"""`vitpose-scale eval`: distributed COCO keypoint evaluation of a checkpoint or a heatmap ensemble.

    torchrun --nproc_per_node N launch/evaluate.py --config C --checkpoint W [--out DIR]
    python launch/evaluate.py --config C --checkpoint W          (one process)
    python launch/evaluate.py --config C --checkpoint W1 --checkpoint W2 \\
        --model-config C1 --model-config C2 [--weight 0.6 --weight 0.4]   (ensemble)

Every rank holds the whole model(s) (evaluation needs no sharding up to the G preset
in bf16) and predicts 1/N of the boxes. An ensemble averages the members' flip-tested
heatmaps, brought to the --config model's heatmap size, before decoding. An
annotation file without annotations (image_info_test-dev2017.json) has no ground
truth: the results are written in the COCO server's format and not scored.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vitpose_scale.cli import EXIT_CHECKPOINT, EXIT_CONFIG, add_config_args, load_config_or_report, one_line
from vitpose_scale.config import Config, ConfigError, ModelConfig

if TYPE_CHECKING:  # torch loads when evaluation runs: `eval --help` stays instant
    import torch

DEFAULT_ALG_NAME = "vitposescale"


@dataclass
class EvalOutcome:
    stats: dict | None  # by stat name; None without ground truth and on ranks > 0
    results: list[dict]  # COCO keypoint results after rescoring and OKS-NMS (every rank)
    dataset: object  # the evaluated boxes
    ann_file: str  # the annotation (or image-info) file
    has_ground_truth: bool


# ------------------------------------------------------------------ data --
def _resolve(root: str, path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    return (p if p.is_absolute() else Path(root) / p).resolve()


def _eval_files(cfg: Config) -> tuple[Path, Path, str | None]:
    """(annotation or image-info file, image folder, detection file) of the set to evaluate."""
    from vitpose_scale.data.coco import SYNTHETIC_LAYOUT, ensure_synthetic

    d = cfg.data
    ann, images = d.val_ann, d.val_images
    if d.kind == "synthetic":
        ensure_synthetic(d.root, d.synthetic_train, d.synthetic_val, keypoints=d.keypoint_set)
        ann, images = SYNTHETIC_LAYOUT["val_ann"], SYNTHETIC_LAYOUT["val_images"]
    ann_file = _resolve(d.root, ann)
    if not ann_file.is_file():
        raise FileNotFoundError(f"data.val_ann: {ann_file} does not exist; expected a COCO person-keypoint "
                                f"json or an image-info json (test-dev) under data.root {d.root}")
    det = d.det_file
    if det is not None and not _resolve(d.root, det).is_file() and Path(det).is_file():
        det = str(Path(det).resolve())  # relative to the working directory
    return ann_file, _resolve(d.root, images), det


def build_eval_set(cfg: Config, image_sizes: list[tuple[int, int]] | None = None):
    """(dataset, annotation file, has ground truth) for cfg.data's validation/test-dev set.

    The dataset crops at ``cfg.model.image_size``, plus every other size in
    ``image_sizes`` (ensemble members) under :func:`~vitpose_scale.eval.ensemble.size_key`.
    """
    from vitpose_scale.data.coco import TopDownCocoDataset, dataset_class
    from vitpose_scale.eval.ensemble import MultiSizeDataset
    from vitpose_scale.eval.testdev import DetectionBoxes, has_ground_truth

    ann_file, img_dir, det_file = _eval_files(cfg)
    with_gt = has_ground_truth(ann_file)
    spec = cfg.data.keypoint_set
    # the synthetic set is COCO-layout whatever its joints
    dataset_cls = TopDownCocoDataset if cfg.data.kind == "synthetic" else dataset_class(spec)

    def at(size):
        if with_gt:
            return dataset_cls(cfg.data.root, ann_file, img_dir, cfg.data, size, spec, train=False,
                                      det_file=det_file, seed=cfg.train.seed)
        return DetectionBoxes(ann_file, img_dir, _resolve(cfg.data.root, det_file) if det_file else None,
                              cfg.data, size, spec)

    main_size = tuple(cfg.model.image_size)
    main = at(main_size)
    others = {tuple(s): at(tuple(s)) for s in dict.fromkeys(map(tuple, image_sizes or [])) if tuple(s) != main_size}
    dataset = MultiSizeDataset(main, others) if others else main
    return dataset, str(ann_file), with_gt


# ---------------------------------------------------------------- models --
def member_model_configs(cfg: Config, checkpoints: list[str],
                         model_configs: list[str | list[str]] | None) -> list[ModelConfig]:
    """The model section for each checkpoint: its --model-config file's (a path, or [path, KEY=VALUE,
    ...] with --set-style overrides), or --config's."""
    from vitpose_scale.config import load_config

    if model_configs and len(model_configs) != len(checkpoints):
        raise ConfigError(f"--model-config: given {len(model_configs)} times for {len(checkpoints)} checkpoints; "
                          f"expected none (all use --config's model) or one per --checkpoint, in order")
    if not model_configs:
        return [cfg.model] * len(checkpoints)
    parts = [[c] if isinstance(c, str) else list(c) for c in model_configs]
    for p in parts:
        bad = [o for o in p[1:] if "=" not in o]
        if bad:
            raise ConfigError(f"--model-config {' '.join(p)}: {bad[0]!r} is not KEY=VALUE; expected a YAML path "
                              f"followed by --set-style overrides, e.g. --model-config b.yaml model.attention=sdpa")
    return [load_config(p[0], p[1:]).model for p in parts]


def member_joints(model_cfg: ModelConfig, dataset: int | None) -> int:
    """The joints a member predicts: its head for `dataset` (multi-dataset models), else its one head."""
    heads = model_cfg.head_keypoints or [model_cfg.num_keypoints]
    return heads[dataset or 0] if len(heads) > 1 else model_cfg.num_keypoints


def load_member(model_cfg: ModelConfig, checkpoint: str, device: torch.device, precision: str,
                dataset: int | None = None):
    """forward(images) -> fp32 heatmaps of an official-format checkpoint, in eval mode on ``device``.

    `dataset`: the dataset index of a multi-dataset model (ViTPose+/++) whose head (and experts)
    predict; a single-dataset checkpoint of such a model (`vitpose-scale split`) is read as the
    plain model of that dataset."""
    import dataclasses

    import torch

    from vitpose_scale.engine.parallel import DTYPES
    from vitpose_scale.models.interop import dataset_count
    from vitpose_scale.models.weights import load_state, read_state
    from vitpose_scale.models.pose import build_pose_model

    state, meta = read_state(checkpoint)  # read once: its keys decide the model, then its values load
    joints = member_joints(model_cfg, dataset)
    multi = max(len(model_cfg.head_keypoints or [1]), model_cfg.num_experts if model_cfg.backbone == "vit_moe" else 1)
    if multi > 1 and dataset_count(state) < 2:  # a plain one-head file (`vitpose-scale split` output)
        model_cfg = dataclasses.replace(model_cfg, backbone="vit", num_experts=1, part_features=None,
                                        head_keypoints=None, num_keypoints=joints)
        multi = 1
    model = build_pose_model(model_cfg)
    load_state(model, state, meta, str(checkpoint))
    dtype = torch.float32 if device.type == "cpu" else DTYPES[precision]
    model = model.to(device, dtype).eval()
    if multi > 1:
        from vitpose_scale.models.pose import DatasetView

        model = DatasetView(model, dataset or 0)

    @torch.no_grad()
    def forward(images):
        return model(images.to(device, dtype)).float()

    return forward


def build_ensemble(cfg: Config, checkpoints: list[str], model_configs: list[str] | None = None,
                   weights: list[float] | None = None, device: torch.device | str = "cpu",
                   dataset: int | None = None):
    """A :class:`~vitpose_scale.eval.ensemble.HeatmapEnsemble` of the checkpoints (one: the model itself)."""
    from vitpose_scale.eval.ensemble import EnsembleMember, HeatmapEnsemble

    if not checkpoints:
        raise ConfigError("--checkpoint: none given; expected at least one official-format .pth")
    if weights and len(weights) != len(checkpoints):
        raise ConfigError(f"--weight: given {len(weights)} times for {len(checkpoints)} checkpoints; expected none "
                          f"(equal weights) or one per --checkpoint, in order")
    import torch

    device = torch.device(device)
    members = []
    for i, (path, mcfg) in enumerate(zip(checkpoints, member_model_configs(cfg, checkpoints, model_configs))):
        want = member_joints(cfg.model, dataset)
        if member_joints(mcfg, dataset) != want:
            raise ConfigError(f"checkpoint {path}: its model has {member_joints(mcfg, dataset)} keypoints, "
                              f"--config's {want}; expected the same joints in every member")
        members.append(EnsembleMember(load_member(mcfg, path, device, cfg.parallel.precision, dataset),
                                      tuple(mcfg.image_size), weights[i] if weights else 1.0, str(path)))
    return HeatmapEnsemble(members, cfg.model.heatmap_size, cfg.model.image_size)


def select_dataset(cfg: Config, name: str | None) -> tuple[int | None, Config]:
    """(dataset index, that dataset's single-task config) for --dataset NAME|INDEX of a multi-task
    config (data.tasks; default: the main dataset); (None, cfg) for a single-task one. Names and
    indices are read by `models/split.resolve_dataset`, as `split` and `export` read them."""
    from vitpose_scale.config import task_configs, task_names
    from vitpose_scale.models.split import resolve_dataset

    names = task_names(cfg)
    if not names:
        if name not in (None, cfg.data.keypoint_set):
            resolve_dataset(name, [cfg.data.keypoint_set], 1)  # "0" is this dataset; anything else: one line
        return None, cfg
    index = 0 if name is None else resolve_dataset(name, names, len(names))
    return index, task_configs(cfg)[index][1]


# ------------------------------------------------------------ python API --
def evaluate_checkpoints(cfg: Config, checkpoints: list[str], model_configs: list[str] | None = None,
                         weights: list[float] | None = None, rank: int = 0, world_size: int = 1,
                         device: torch.device | str = "cpu", progress: bool = False,
                         dataset: str | None = None) -> EvalOutcome:
    """Evaluate one checkpoint or a weighted heatmap ensemble on cfg.data's validation (or test-dev) set.

    With several processes (torch.distributed initialised) pass rank/world_size:
    each predicts its shard, rank 0 scores. Rank 0 builds the datasets first (it
    may generate the synthetic set), the others after a barrier.
    """
    from vitpose_scale.engine.distributed import main_rank_first
    from vitpose_scale.eval.runner import evaluate_model

    index, data_cfg = select_dataset(cfg, dataset)
    ensemble = build_ensemble(cfg, checkpoints, model_configs, weights, device, index)
    cfg = data_cfg  # that dataset's validation set, metric and flip pairs
    dataset, ann_file, with_gt = main_rank_first(build_eval_set, cfg, ensemble.image_sizes)
    stats, results = evaluate_model(ensemble, dataset, ann_file if with_gt else None, cfg, rank, world_size,
                                    progress=progress)
    return EvalOutcome(stats, results, dataset, ann_file, with_gt)


# ------------------------------------------------------------------- CLI --
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitpose-scale eval", description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="official .pth (best.pth, final.pth, an official release), a training checkpoint "
                             "directory (checkpoints/step_N), a Hugging Face directory or .safetensors; repeat for "
                             "an ensemble")
    parser.add_argument("--model-config", action="append", nargs="+", default=None, metavar=("YAML", "KEY=VALUE"),
                        help="YAML whose model section fits the checkpoint of the same position, optionally followed "
                             "by --set-style overrides (--model-config b.yaml model.attention=sdpa); default: "
                             "--config's model; repeat once per --checkpoint")
    parser.add_argument("--weight", action="append", type=float, default=None,
                        help="ensemble weight of the checkpoint of the same position (default: equal weights)")
    parser.add_argument("--out", default=None, help="folder for results.json, stats.json, predictions.png "
                                                  "(default: <train.output_dir>/eval)")
    parser.add_argument("--dataset", default=None,
                        help="multi-task models (data.tasks): the dataset whose head, experts, validation set and "
                             "metric to use (name or index; default: the first)")
    parser.add_argument("--alg-name", default=DEFAULT_ALG_NAME,
                        help="test-dev only: the <alg> in person_keypoints_test-dev2017_<alg>_results.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0; 2 config, data or input error; 4 checkpoint missing, damaged or unsafe (one line each)."""
    args = build_parser().parse_args(argv)
    cfg = load_config_or_report(args)
    if cfg is None:
        return 2
    from vitpose_scale.engine.distributed import init_distributed, shutdown

    info = init_distributed(use_deepspeed=False)
    try:
        outcome = evaluate_checkpoints(cfg, args.checkpoint, args.model_config, args.weight, info.rank,
                                       info.world_size, info.device, progress=info.is_main, dataset=args.dataset)
    except (FileNotFoundError, ValueError) as exc:  # config, data or checkpoint (CheckpointError is a ValueError)
        from vitpose_scale.models.interop import CheckpointError

        # A checkpoint error exits 4, as from training (docs/operations.md, "Exit codes").
        if isinstance(exc, CheckpointError):
            label, code = "checkpoint error", EXIT_CHECKPOINT
        else:
            label, code = ("config error" if isinstance(exc, ConfigError) else "error"), EXIT_CONFIG
        print(f"{label}: {one_line(exc)}", file=sys.stderr)
        import torch.distributed as dist

        if dist.is_initialized():  # every rank meets the same error: no barrier to wait at
            dist.destroy_process_group()
        return code
    if info.is_main:
        out = Path(args.out or Path(cfg.train.output_dir) / "eval")
        out.mkdir(parents=True, exist_ok=True)
        models = f"{len(args.checkpoint)} models (heatmap ensemble)" if len(args.checkpoint) > 1 else "1 model"
        print(f"evaluated {len(outcome.dataset)} boxes with {models} on {info.world_size} rank(s): "
              f"{len(outcome.results)} people after OKS-NMS")
        if outcome.has_ground_truth:
            results_path = out / "results.json"
            from vitpose_scale.eval.scoring import report_lines

            print("\n".join(report_lines(outcome.dataset.keypoints, outcome.stats)))
            (out / "stats.json").write_text(json.dumps(outcome.stats, indent=1))
        else:
            from vitpose_scale.eval.testdev import check_results_format, results_file_name

            check_results_format(outcome.results, outcome.dataset.keypoints.num_keypoints)
            results_path = out / results_file_name(outcome.ann_file, args.alg_name)
            print(f"no ground truth to score: {outcome.ann_file} has images but no annotations (test-dev); "
                  f"the results are for the COCO evaluation server (zip the file and upload it)")
        results_path.write_text(json.dumps(outcome.results))
        from vitpose_scale.eval.scoring import primary
        from vitpose_scale.visualize import checkpoints_title, record_boxes, save_predictions_figure

        # The title names the model(s), checkpoint(s) and AP; each skeleton gets the box it was predicted in.
        title = checkpoints_title(args.checkpoint, member_model_configs(cfg, args.checkpoint, args.model_config),
                                  outcome.stats if outcome.has_ground_truth else None,
                                  primary(outcome.dataset.keypoints), args.weight)
        png = save_predictions_figure(outcome.dataset.img_dir, outcome.results, list(outcome.dataset.images.values()),
                                      out / "predictions.png", max_images=4,
                                      keypoints=outcome.dataset.keypoints, title=title,
                                      boxes=record_boxes(outcome.dataset.records, cfg.data.bbox_padding))
        written = f"{results_path}" + (f", {out / 'stats.json'}" if outcome.has_ground_truth else "")
        print(f"wrote {written} and {png}")
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
