"""Typed, validated configuration: YAML file + dotted command-line overrides.

The config tree is the single place where sizes live. Every section is a
dataclass; loading checks unknown keys, types and shape constraints and stops
with a message that names the key, the value and what was expected.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or impossible."""


# ---------------------------------------------------------------- presets --
# Named keypoint maps that data.extra_train[].keypoint_map may give (source joint -> COCO index,
# None: dropped); here, not in data/coco.py, so that validation needs no torch.
# AI Challenger order: r_shoulder, r_elbow, r_wrist, l_shoulder, l_elbow, l_wrist,
# r_hip, r_knee, r_ankle, l_hip, l_knee, l_ankle, head_top, neck -> COCO index.
AIC_TO_COCO: list[int | None] = [6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, None, None]
KEYPOINT_MAPS: dict[str, list[int | None]] = {"aic": AIC_TO_COCO}
EXTRA_TRAIN_KEYS = ("root", "ann", "images")
EXTRA_TRAIN_OPTIONAL = ("keypoint_map", "ratio")


# Backbone shapes of the official model zoo (docs/reference.md §1). The G preset
# follows the published ViT-g/14 shape (width 1408, depth 40, MLP 6144,
# 16 heads): ViTAE-G's exact dimensions were never released, and ViT-g is the
# documented plain-ViT shape of about 1 B parameters (1.01 B here).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0, drop_path=0.0, layer_decay=0.9),
    "S": dict(embed_dim=384, depth=12, num_heads=12, mlp_ratio=4.0, drop_path=0.1, layer_decay=0.80),
    "B": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, drop_path=0.3, layer_decay=0.75),
    "L": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, drop_path=0.5, layer_decay=0.80),
    "H": dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0, drop_path=0.55, layer_decay=0.85),
    "G": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=6144 / 1408, drop_path=0.55, layer_decay=0.85),
}


@dataclass
class ModelConfig:
    preset: str = "B"  # fills embed_dim/depth/num_heads/mlp_ratio/drop_path where those are null
    # vit: plain ViT (ViTPose, ViTPose+); vit_moe: each block's fc2 split into a shared part and one
    # expert per dataset (ViTPose++, docs/multitask.md)
    backbone: str = "vit"
    num_experts: int = 1  # vit_moe: experts per block, one per dataset (data.tasks)
    part_features: int | None = None  # vit_moe: output features each expert gives (official: width / 4)
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    drop_path: float | None = None
    image_size: list[int] = field(default_factory=lambda: [256, 192])  # (height, width)
    patch_size: int = 16
    patch_stride: int = 16  # 8 = overlapping "finer feature" patches
    patch_padding: int | None = None  # null: 2 for stride 16, 4 for stride 8 (docs/reference.md §1)
    pretrain_grid: list[int] | None = None  # pos_embed grid of the checkpoint; null: this model's grid
    qkv_bias: bool = True
    attention: str = "sdpa"  # plain | sdpa | triton
    # Window attention (the paper's attention-type ablation): null = full attention, or {size: [rows, cols]
    # or int (tokens), shift: bool (Swin shift), pool: int or null (avg-pooled tokens of the whole map,
    # kernel = stride = pool, appended to every window's keys)}. docs/full_scale.md "Window attention".
    attention_window: dict | None = None
    activation_checkpointing: bool = False
    head: str = "classic"  # classic | simple
    head_channels: int = 256
    num_keypoints: int | None = None  # null: the joint count of data.keypoint_set
    # One head per dataset (ViTPose+/++): the joint count of each; null: data.tasks' sets (one head without)
    head_keypoints: list[int] | None = None
    # The paper's knowledge token: one learned token appended to the visual tokens (key `knowledge_token`);
    # set by distill.token (frozen, from `vitpose-scale distill-token`), docs/distillation.md
    knowledge_token: bool = False

    def resolved(self) -> "ModelConfig":
        """A copy with preset values filled in."""
        out = dataclasses.replace(self)
        for key, value in PRESETS[self.preset].items():
            if key != "layer_decay" and getattr(out, key) is None:
                setattr(out, key, value)
        if out.num_keypoints is None:  # a ModelConfig built alone: the default keypoint set's joints
            out.num_keypoints = _keypoint_spec(DataConfig.keypoint_set).num_keypoints
        if out.patch_padding is None:
            out.patch_padding = {16: 2, 8: 4}.get(out.patch_stride, (out.patch_size - out.patch_stride) // 2)
        return out

    @property
    def grid(self) -> tuple[int, int]:
        m = self.resolved()
        h, w = m.image_size
        return ((h + 2 * m.patch_padding - m.patch_size) // m.patch_stride + 1,
                (w + 2 * m.patch_padding - m.patch_size) // m.patch_stride + 1)

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(height, width) of the output heatmaps: always 1/4 of the input."""
        h, w = self.image_size
        return h // 4, w // 4


@dataclass
class DataConfig:
    kind: str = "coco"  # coco | synthetic (synthetic: generated into root on first use)
    # The keypoint set (vitpose_scale/keypoints): names, flip pairs, sigmas, skeleton, metric.
    # coco | aic | mpii | crowdpose | ochuman | coco_wholebody | ap10k | apt36k (docs/datasets.md)
    keypoint_set: str = "coco"
    root: str = "data/coco"
    train_ann: str = "annotations/person_keypoints_train2017.json"
    train_images: str = "train2017"
    val_ann: str = "annotations/person_keypoints_val2017.json"
    val_images: str = "val2017"
    det_file: str | None = None  # person detections for validation; null: ground-truth boxes
    det_score_thr: float = 0.0  # detections with score >= this are kept (the reference's det_bbox_thr)
    # More COCO-layout training sets: {root, ann, images, keypoint_map?, ratio?} (docs/datasets.md).
    extra_train: list[dict] = field(default_factory=list)
    # Multi-task training (ViTPose+/++): one entry per dataset, in head/expert order. Each entry holds
    # the data.* keys that differ for that dataset (keypoint_set, root, *_ann, *_images, kind, ...)
    # plus name, ratio (sampling ratio) and loss_weight; the first is the main dataset
    # (`keypoint_head`). docs/multitask.md.
    tasks: list[dict] = field(default_factory=list)
    train_ratio: float | None = None  # sampling ratio of the main set; null: sets are concatenated
    synthetic_train: int = 0  # images to generate when kind == synthetic
    synthetic_val: int = 0
    bbox_padding: float = 1.25
    # Official ViTPose (_xywh2cs, training only): when the set is built, shift this share of the
    # boxes' centres by up to +-bbox_shift_factor / 2 of the box size, fixed for the whole run.
    bbox_shift_prob: float = 0.3
    bbox_shift_factor: float = 0.4
    sigma: float = 2.0
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8
    scale_factor: float = 0.5
    rot_factor: float = 40.0
    rot_prob: float = 0.6
    num_workers: int = 2
    # Decode only the window of each JPEG the crop reads (same pixels, less CPU); needs a C
    # compiler and libjpeg-dev once, otherwise whole images are decoded (docs/datasets.md, "Decoding less").
    window_decode: bool = True
    # Shuffle images instead of people: the people of one image come one after another and share
    # one JPEG decode (COCO: 2.6 people per image). Each person is still seen once per epoch with
    # the same crop; batches hold fewer distinct images. Off: the reference's per-person shuffle.
    group_by_image: bool = False


@dataclass
class OptimConfig:
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.1
    layer_decay: float | None = None  # null: the preset's value
    grad_clip: float = 1.0
    schedule: str = "step"  # step | cosine
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    step_epochs: list[int] = field(default_factory=lambda: [170, 200])
    step_gamma: float = 0.1


@dataclass
class ParallelConfig:
    backend: str = "deepspeed"  # deepspeed | fsdp | none
    zero_stage: int = 3
    precision: str = "fp32"  # fp32 | bf16 | fp16
    grad_accum: int = 1
    # ZeRO-3 keeps parameters below this many elements whole on every rank (DeepSpeed's
    # default 1e5 saves tiny all-gathers on GPUs); 0 partitions everything.
    zero3_persistence_threshold: int = 100000
    zero_init: bool = False  # build under deepspeed.zero.Init (never materialise the full model per rank)
    bucket_size: int = 50_000_000  # elements per ZeRO reduce/all-gather/prefetch bucket (capped at the model size)
    # ZeRO-Offload / ZeRO-Infinity (DeepSpeed only): where optimizer states and (ZeRO-3) parameters live.
    offload_optimizer: str = "none"  # none | cpu | nvme
    offload_params: str = "none"  # none | cpu | nvme (ZeRO-3 only)
    nvme_path: str | None = None  # a fast local disk for the nvme targets
    deepspeed_config: str | None = None  # a user's DeepSpeed JSON merged over the generated one
    # Collective timeout of the process group (and DeepSpeed's): the last resort against a hung
    # collective; the step watchdog (train.stall_timeout_s) usually ends a stalled run sooner.
    timeout_s: int = 1800


@dataclass
class TrainConfig:
    epochs: int = 210
    max_steps: int | None = None  # the schedule ends after this many optimizer steps (demo, tests)
    stop_at: int | None = None  # pause here: checkpoint and exit 0, the schedule unchanged (resume continues it)
    batch_size: int = 512  # global batch, all ranks and accumulation steps together
    seed: int = 0
    output_dir: str = "runs/default"
    log_every: int = 10
    eval_every: int = 0  # steps; 0: at the end of every epoch; -1: never (benchmarks)
    save_every: int = 0  # steps; 0: at the end of every epoch
    keep_last: int = 3
    init_from: str | None = None  # official ViTPose, MAE or our checkpoint to initialise from
    # auto: the newest intact checkpoint (none intact: stop, exit 4) | auto_or_scratch (none intact:
    # start again) | a step_N path | never (or null)
    resume: str | None = "auto"
    # Exit (code 5) when no step completes for this long; null: 20x the median step time, at
    # least 300 s (900 s for the first 5 steps); 0: off (engine/watchdog.py)
    stall_timeout_s: float | None = None
    peak_tflops: float = 989.0  # per device, for MFU (H100 SXM bf16 dense)
    # metrics.jsonl is always written; tensorboard, wandb: engine/tracking.py (pip install -e .[track])
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])
    # Partial finetuning: parts kept at their initial weights (no gradients, no optimizer states):
    # attention | ffn | patch_embed | blocks:N | backbone | head (docs/full_scale.md, "Partial finetuning")
    freeze: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    batch_size: int = 64  # per rank
    flip_test: bool = True
    # udp_dark: the official ViTPose decode (blur, log, unbounded Newton step); dark: our bounded
    # DARK; argmax: no refinement (eval/decode.py). blur_kernel 11 <=> sigma 2, the target's sigma.
    decode: str = "udp_dark"
    blur_kernel: int = 11
    oks_nms_thr: float = 0.9
    rescore_thr: float = 0.2


@dataclass
class DistillConfig:
    """Knowledge transfer from a larger model (docs/distillation.md)."""
    # Stage 2 of the knowledge token: the token file `vitpose-scale distill-token` wrote, appended
    # (frozen) to this model's visual tokens; its width must be this model's.
    token: str | None = None
    # Output (heatmap) distillation: the teacher's config and weights (same keypoint set and input size),
    # run without gradients or optimizer state; loss += heatmap_weight x MSE(student, teacher heatmaps).
    teacher_config: str | None = None
    teacher_checkpoint: str | None = None
    heatmap_weight: float = 0.0


@dataclass
class MAEConfig:
    """MAE pretraining (docs/reference.md §4); the encoder is `model` (its preset, patch size, image_size)."""
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True
    # Images: "folder" = every image under data_root (e.g. ImageNet train), or "person_crops" =
    # the persons of the COCO-layout sets of `data` (train + extra_train), cropped from their boxes.
    source: str = "person_crops"
    data_root: str | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @property
    def layer_decay(self) -> float:
        if self.optim.layer_decay is not None:
            return self.optim.layer_decay
        return PRESETS[self.model.preset]["layer_decay"]


# ------------------------------------------------------------- validation --
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class Override:
    """A --set value: YAML-parsed, with its text kept for string fields (output_dir=2024, resume=no)."""

    def __init__(self, text: str, value: Any):
        self.text, self.value = text, value


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against annotation `tp`; ints are accepted as floats."""
    if isinstance(value, Override):
        takes_str = tp is str or str in typing.get_args(tp)
        if takes_str and value.value is not None and not isinstance(value.value, (list, dict)):
            return value.text
        value = value.value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1:  # Optional[X]: X's own message is the clearest
            return _coerce(value, real[0], key)
        for arg in real:
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: got {value!r}, expected {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected a list")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected a float")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected an int")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: got {value!r} ({type(value).__name__}), expected a string")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}, expected a mapping")
        return value
    return value


# Keys that older configs (and every older run's config.yaml) still carry: the value that is today's
# behaviour is accepted and dropped, any other is refused with what replaced the key.
REMOVED_KEYS = {
    "eval.use_udp": (True, "training always uses UDP targets, so decoding always inverts the UDP affine"),
    "eval.dark": (None, "eval.decode chooses the refinement: udp_dark (official), dark or argmax"),
}


def _build(cls: type, data: dict, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: got {data!r}, expected a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    for key in unknown:
        if f"{prefix}{key}" in REMOVED_KEYS:
            kept, why = REMOVED_KEYS[prefix + key]
            if data[key] != kept:
                raise ConfigError(f"{prefix}{key}: removed ({why}): delete the line")
    data = {k: v for k, v in data.items() if f"{prefix}{k}" not in REMOVED_KEYS}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]!s}: expected one of {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value.value if isinstance(value, Override) else value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: got {value!r}, expected one of {list(allowed)}")


# Ranges of the numeric fields: (low, high, low inclusive, high inclusive); None is open.
# A null value of an optional field (max_steps, stop_at, layer_decay, ...) is not checked.
RANGES: dict[str, tuple] = {
    "model.depth": (1, None, True, None), "model.embed_dim": (1, None, True, None),
    "model.num_heads": (1, None, True, None), "model.mlp_ratio": (0, None, False, None),
    "model.patch_size": (1, None, True, None), "model.head_channels": (1, None, True, None),
    "model.num_keypoints": (1, None, True, None),
    "data.det_score_thr": (0, 1, True, True), "data.synthetic_train": (0, None, True, None),
    "data.synthetic_val": (0, None, True, None), "data.bbox_padding": (0, None, False, None),
    "data.sigma": (0, None, False, None), "data.flip_prob": (0, 1, True, True),
    "data.half_body_prob": (0, 1, True, True), "data.half_body_min_joints": (0, None, True, None),
    "data.scale_factor": (0, 1, True, False), "data.rot_factor": (0, 180, True, True),
    "data.rot_prob": (0, 1, True, True), "data.num_workers": (0, None, True, None),
    "optim.lr": (0, None, False, None), "optim.weight_decay": (0, None, True, None),
    "optim.layer_decay": (0, 1, False, True), "optim.grad_clip": (0, None, True, None),
    "optim.warmup_iters": (0, None, True, None), "optim.warmup_ratio": (0, 1, True, True),
    "optim.step_gamma": (0, None, False, None),
    "parallel.grad_accum": (1, None, True, None), "parallel.zero3_persistence_threshold": (0, None, True, None),
    "parallel.bucket_size": (1, None, True, None),
    "train.epochs": (1, None, True, None), "train.max_steps": (1, None, True, None),
    "train.stop_at": (1, None, True, None), "train.batch_size": (1, None, True, None),
    "train.log_every": (1, None, True, None), "train.eval_every": (-1, None, True, None),
    "train.save_every": (0, None, True, None), "train.keep_last": (0, None, True, None),
    "train.peak_tflops": (0, None, False, None), "train.stall_timeout_s": (0, None, True, None),
    "parallel.timeout_s": (1, None, True, None),
    "eval.batch_size": (1, None, True, None), "eval.oks_nms_thr": (0, 1, False, True),
    "eval.rescore_thr": (0, 1, True, True),
    "mae.decoder_dim": (1, None, True, None), "mae.decoder_depth": (1, None, True, None),
    "mae.decoder_heads": (1, None, True, None),
    "distill.heatmap_weight": (0, None, True, None),
}


def _check_ranges(cfg: Config) -> None:
    for key, (low, high, low_incl, high_incl) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None:
            continue
        too_low = low is not None and (value < low if low_incl else value <= low)
        too_high = high is not None and (value > high if high_incl else value >= high)
        if too_low or too_high:
            lo = "" if low is None else f"{low} {'<=' if low_incl else '<'} "
            hi = "" if high is None else f" {'<=' if high_incl else '<'} {high}"
            raise ConfigError(f"{key}: got {value}, expected {lo}{name}{hi}")
    for i, beta in enumerate(cfg.optim.betas):
        if not 0 <= beta < 1:
            raise ConfigError(f"optim.betas[{i}]: got {beta}, expected 0 <= beta < 1")


def _is_positive_number(value: Any) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
            and value != float("inf"))


def check_training_sets(d: DataConfig, num_keypoints: int) -> list[float] | None:
    """Check data.extra_train and the sampling ratios; return [data.train_ratio, extra_train[i].ratio, ...],
    or None when no set has a ratio. Part of validate (a config error at load time, exit 2);
    build_datasets calls it too, for configs built or changed in Python."""
    for i, entry in enumerate(d.extra_train):
        key = f"data.extra_train[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}: got {entry!r}, expected a mapping {{root, ann, images, keypoint_map?, ratio?}}")
        missing = set(EXTRA_TRAIN_KEYS) - set(entry)
        unknown = set(entry) - set(EXTRA_TRAIN_KEYS) - set(EXTRA_TRAIN_OPTIONAL)
        if missing or unknown:
            raise ConfigError(f"{key}: got keys {sorted(entry, key=str)}; expected root, ann, images "
                              f"and optionally keypoint_map, ratio")
        for name in EXTRA_TRAIN_KEYS:
            if not isinstance(entry[name], str) or not entry[name]:
                raise ConfigError(f"{key}.{name}: got {entry[name]!r}, expected a path (a string)")
        kmap = entry.get("keypoint_map")
        if isinstance(kmap, str):
            if kmap not in KEYPOINT_MAPS:
                raise ConfigError(f"{key}.keypoint_map: got {kmap!r}, expected one of {sorted(KEYPOINT_MAPS)} "
                                  f"or a list of target indices")
            kmap = KEYPOINT_MAPS[kmap]
        if kmap is not None:
            if not isinstance(kmap, (list, tuple)) or not kmap or not all(
                    t is None or (isinstance(t, int) and not isinstance(t, bool)) for t in kmap):
                raise ConfigError(f"{key}.keypoint_map: got {kmap!r}, expected one of {sorted(KEYPOINT_MAPS)} "
                                  f"or a list of target indices (ints, or null to drop a source joint)")
            bad = [t for t in kmap if t is not None and not 0 <= t < num_keypoints]
            if bad:
                raise ConfigError(f"{key}.keypoint_map: targets {bad} are outside [0, {num_keypoints}) "
                                  f"(model.num_keypoints {num_keypoints})")
    given = [d.train_ratio] + [entry.get("ratio") for entry in d.extra_train]
    names = ["data.train_ratio"] + [f"data.extra_train[{i}].ratio" for i in range(len(d.extra_train))]
    if all(r is None for r in given):
        return None
    first_set = names[next(i for i, r in enumerate(given) if r is not None)]
    for name, r in zip(names, given):
        if r is None:
            raise ConfigError(f"{name} is not set while {first_set} is: expected a sampling ratio for every "
                              f"training set, or for none")
        if not _is_positive_number(r):
            raise ConfigError(f"{name}: got {r!r}, expected a positive number (relative sampling weight)")
    return [float(r) for r in given]


TASK_OWN_KEYS = ("name", "ratio", "loss_weight")  # a data.tasks entry's keys that are not data.* keys


def task_names(cfg: "Config") -> list[str]:
    """The dataset names of a multi-task config (head / expert order), [] for a single task."""
    return [t.get("name") or t["keypoint_set"] for t in cfg.data.tasks]


def task_configs(cfg: "Config") -> list[tuple[str, "Config"]]:
    """(name, single-task Config) per data.tasks entry: data.* overridden by the entry, the model
    sized to its keypoint set. For a single-task config: [(keypoint set, cfg)]."""
    if not cfg.data.tasks:
        return [(cfg.data.keypoint_set, cfg)]
    out = []
    for entry in cfg.data.tasks:
        fields = {k: v for k, v in entry.items() if k not in TASK_OWN_KEYS}
        data = dataclasses.replace(cfg.data, tasks=[], **fields)
        model = dataclasses.replace(cfg.model, num_keypoints=_keypoint_spec(data.keypoint_set).num_keypoints,
                                    head_keypoints=None)
        out.append((entry.get("name") or data.keypoint_set, dataclasses.replace(cfg, data=data, model=model)))
    return out


def _check_tasks(cfg: "Config") -> None:
    """data.tasks entries, and the heads and experts they imply (filled in: model.head_keypoints,
    data.keypoint_set = the first task's)."""
    m, d = cfg.model, cfg.data
    from vitpose_scale.models.pose import BACKBONES  # the registry: a new backbone is valid once registered

    _choice("model.backbone", m.backbone, tuple(BACKBONES))
    if m.backbone == "vit_moe":
        if m.num_experts < 2:
            raise ConfigError(f"model.num_experts: got {m.num_experts}, expected >= 2 with model.backbone vit_moe "
                              f"(one expert per dataset)")
        dim = m.resolved().embed_dim
        if m.part_features is None or not 0 < m.part_features < dim:
            raise ConfigError(f"model.part_features: got {m.part_features!r}, expected 0 < part_features < "
                              f"{dim} (the width; official ViTPose++: width / 4) with model.backbone vit_moe")
    elif m.num_experts != 1:
        raise ConfigError(f"model.num_experts: got {m.num_experts}, expected 1 with model.backbone vit "
                          f"(experts need model.backbone vit_moe)")
    if not d.tasks:
        if m.backbone == "vit_moe" and m.head_keypoints is None:
            raise ConfigError("data.tasks: model.backbone vit_moe picks an expert by dataset: expected one data.tasks "
                              "entry per expert (or model.head_keypoints for a model used without training data)")
        if m.head_keypoints is not None:
            _check_head_keypoints(m.head_keypoints)
            m.num_keypoints = m.head_keypoints[0]
            if len(m.head_keypoints) == 1:
                m.head_keypoints = None
        return
    fields = {f.name: f.type for f in dataclasses.fields(DataConfig)} | dict.fromkeys(TASK_OWN_KEYS)
    names = []
    for i, entry in enumerate(d.tasks):
        key = f"data.tasks[{i}]"
        if not isinstance(entry, dict) or "keypoint_set" not in entry:
            raise ConfigError(f"{key}: got {entry!r}, expected a mapping with keypoint_set (and the data.* keys "
                              f"that differ for this dataset, name, ratio, loss_weight)")
        unknown = sorted(set(entry) - set(fields) - {"tasks"}) + (["tasks"] if "tasks" in entry else [])
        if unknown:
            raise ConfigError(f"{key}: unknown keys {unknown}: expected data.* keys, name, ratio, loss_weight")
        _keypoint_spec(entry["keypoint_set"])
        for own in ("ratio", "loss_weight"):
            if own in entry and not _is_positive_number(entry[own]):
                raise ConfigError(f"{key}.{own}: got {entry[own]!r}, expected a positive number")
        names.append(str(entry.get("name") or entry["keypoint_set"]))
    if len(set(names)) != len(names):
        raise ConfigError(f"data.tasks: names {names} repeat: expected one name per dataset (set name:)")
    given = ["ratio" in e for e in d.tasks]
    if any(given) and not all(given):
        raise ConfigError(f"data.tasks[{given.index(False)}].ratio is not set while others are: expected a "
                          f"sampling ratio for every dataset, or for none")
    if d.train_ratio is not None or d.extra_train and any(given):
        raise ConfigError("data.tasks: give sampling ratios as data.tasks[].ratio (data.train_ratio and "
                          "data.extra_train ratios are per dataset's own sets)")
    first = d.tasks[0]["keypoint_set"]
    if d.keypoint_set not in (first, DataConfig.keypoint_set):
        raise ConfigError(f"data.keypoint_set: {d.keypoint_set!r}, but data.tasks[0] (the main dataset) is "
                          f"{first!r}: expected the same set, or leave data.keypoint_set out")
    d.keypoint_set = first
    counts = [_keypoint_spec(e["keypoint_set"]).num_keypoints for e in d.tasks]
    if m.head_keypoints is not None and list(m.head_keypoints) != counts:
        raise ConfigError(f"model.head_keypoints: got {list(m.head_keypoints)}, but data.tasks' keypoint sets have "
                          f"{counts} joints: expected {counts} (or null)")
    if m.num_keypoints is not None and m.num_keypoints != counts[0]:
        raise ConfigError(f"model.num_keypoints: got {m.num_keypoints}, but data.tasks[0] "
                          f"({first}) has {counts[0]} joints: expected {counts[0]} (or null)")
    m.head_keypoints = counts if len(counts) > 1 else None
    if m.backbone == "vit_moe" and m.num_experts != len(d.tasks):
        raise ConfigError(f"model.num_experts: got {m.num_experts}, but data.tasks has {len(d.tasks)} datasets: "
                          f"expected {len(d.tasks)} (one expert per dataset)")


def _check_distill(cfg: "Config") -> None:
    """distill.*: a teacher of the same keypoint set and input size (its config is read here, its
    weights when training starts); a token implies the model's knowledge_token."""
    d = cfg.distill
    if d.token:
        cfg.model.knowledge_token = True
    if d.heatmap_weight == 0:  # (negative weights: RANGES)
        return
    for key in ("teacher_config", "teacher_checkpoint"):
        if not getattr(d, key):
            raise ConfigError(f"distill.{key}: required with distill.heatmap_weight {d.heatmap_weight} (the teacher "
                              f"whose heatmaps the student learns)")
    if cfg.data.tasks:
        raise ConfigError("distill.heatmap_weight: output distillation of a multi-task model (data.tasks) is not "
                          "supported: distil one dataset's model (vitpose-scale split)")
    try:
        teacher = load_config(d.teacher_config)
    except ConfigError as exc:
        raise ConfigError(f"distill.teacher_config: {exc}") from None
    if teacher.data.tasks or teacher.data.keypoint_set != cfg.data.keypoint_set:
        raise ConfigError(f"distill.teacher_config: the teacher predicts {teacher.data.keypoint_set!r} keypoints"
                          f"{' for several datasets' if teacher.data.tasks else ''}, the student "
                          f"{cfg.data.keypoint_set!r}: expected the same keypoint set")
    if list(teacher.model.image_size) != list(cfg.model.image_size):
        raise ConfigError(f"distill.teacher_config: the teacher's input is {list(teacher.model.image_size)}, the "
                          f"student's {list(cfg.model.image_size)}: expected the same input size (the heatmaps are "
                          f"compared pixel by pixel)")


# train.freeze names (models/freeze.py applies them); `blocks:N` is checked against the depth.
FREEZE_NAMES = ("attention", "ffn", "patch_embed", "backbone", "head")


def _check_freeze(cfg: "Config") -> None:
    depth = cfg.model.resolved().depth
    if isinstance(cfg.train.freeze, str):  # --set train.freeze=ffn arrives as the override's text
        raise ConfigError(f"train.freeze: got {cfg.train.freeze!r}, expected a list of names, e.g. "
                          f"[{cfg.train.freeze}]")
    for i, name in enumerate(cfg.train.freeze):
        if name in FREEZE_NAMES:
            continue
        match = re.fullmatch(r"blocks:([0-9]+)", name)
        if match is None:
            raise ConfigError(f"train.freeze[{i}]: got {name!r}, expected one of {', '.join(FREEZE_NAMES)} or "
                              f"blocks:N (1 <= N <= {depth})")
        if not 1 <= int(match.group(1)) <= depth:
            raise ConfigError(f"train.freeze[{i}]: got {name!r}, expected blocks:N with 1 <= N <= {depth} "
                              f"(model.depth)")
    if {"backbone", "head"} <= set(cfg.train.freeze):
        raise ConfigError(f"train.freeze: {cfg.train.freeze} freezes every parameter: expected something left "
                          f"to train")


def _check_head_keypoints(counts: Any) -> None:
    if not isinstance(counts, list) or not counts or not all(
            isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in counts):
        raise ConfigError(f"model.head_keypoints: got {counts!r}, expected a list of positive joint counts")


def _keypoint_spec(name: Any):
    from vitpose_scale.keypoints import KeypointSetError, get_spec

    try:
        return get_spec(name)
    except KeypointSetError as exc:
        raise ConfigError(f"data.keypoint_set: {exc}") from None


WINDOW_KEYS = ("size", "shift", "pool")


def _nearest_divisor(n: int, want: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - want), d))


def _check_attention_window(m: ModelConfig) -> None:
    """model.attention_window: checked against the token grid and normalised to {size: [rows, cols],
    shift: bool, pool: int or null} (what models.attention.WindowSpec reads)."""
    w = m.attention_window
    if w is None:
        return
    w = {k: v.value if isinstance(v, Override) else v for k, v in w.items()}  # --set model.attention_window.x=...
    key = "model.attention_window"
    unknown = sorted(set(w) - set(WINDOW_KEYS), key=str)
    if unknown:
        raise ConfigError(f"{key}: unknown key {unknown[0]!r}: expected size, shift, pool")
    size = w.get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ConfigError(f"{key}.size: got {w.get('size')!r}, expected [rows, cols] of the window in tokens "
                          f"(or one int for a square window)")
    shift, pool = w.get("shift", False), w.get("pool")
    if not isinstance(shift, bool):
        raise ConfigError(f"{key}.shift: got {shift!r}, expected true or false")
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
        raise ConfigError(f"{key}.pool: got {pool!r}, expected a positive int (pooling kernel = stride) or null")
    hp, wp = m.grid
    where = (f"the {hp}x{wp} token grid (model.image_size {m.image_size[0]}x{m.image_size[1]}, "
             f"patch stride {m.patch_stride})")
    if hp % size[0] or wp % size[1]:
        hint = [_nearest_divisor(hp, size[0]), _nearest_divisor(wp, size[1])]
        raise ConfigError(f"{key}.size: {size} does not divide {where}: expected a window dividing both axes, "
                          f"e.g. {hint} (windows are not padded: there is no padding rule)")
    if shift and size == [hp, wp]:
        raise ConfigError(f"{key}.shift: the window {size} covers {where}: there is nothing to shift; expected "
                          f"shift false or a smaller window")
    if pool is not None and (hp % pool or wp % pool):
        common = math.gcd(hp, wp)
        raise ConfigError(f"{key}.pool: {pool} does not divide {where}: expected a divisor of both axes, "
                          f"e.g. {_nearest_divisor(common, pool)}")
    m.attention_window = {"size": size, "shift": shift, "pool": pool}


def validate(cfg: Config) -> Config:
    _check_ranges(cfg)
    m = cfg.model
    _choice("model.preset", m.preset, tuple(PRESETS))
    _choice("model.attention", m.attention, ("plain", "sdpa", "triton"))
    _choice("model.head", m.head, ("classic", "simple"))
    _choice("model.patch_stride", m.patch_stride, (8, 16))
    r = m.resolved()
    if len(m.image_size) != 2 or min(m.image_size) <= 0:
        raise ConfigError(f"model.image_size: got {m.image_size!r}, expected [height, width] of positive ints")
    for axis, size in zip(("height", "width"), m.image_size):
        if size % 16:
            raise ConfigError(
                f"model.image_size: {axis} {size} is not compatible with the patch grid: "
                f"expected a multiple of 16 (the 16-pixel patches and the 1/4-scale heatmaps)")
    for key in ("embed_dim", "depth", "num_heads"):
        if getattr(r, key) < 1:
            raise ConfigError(f"model.{key}: got {getattr(r, key)}, expected a positive int")
    if r.embed_dim % r.num_heads:
        raise ConfigError(
            f"model.num_heads: {r.num_heads} does not divide model.embed_dim {r.embed_dim}: "
            f"expected a divisor of the width")
    if m.pretrain_grid is not None and len(m.pretrain_grid) != 2:
        raise ConfigError(f"model.pretrain_grid: got {m.pretrain_grid!r}, expected [rows, cols]")
    if not 0.0 <= r.drop_path < 1.0:
        raise ConfigError(f"model.drop_path: got {r.drop_path}, expected 0 <= drop_path < 1")
    _check_attention_window(m)
    _check_tasks(cfg)
    _check_distill(cfg)
    spec = _keypoint_spec(cfg.data.keypoint_set)
    if m.num_keypoints is None:
        m.num_keypoints = spec.num_keypoints
    elif m.num_keypoints != spec.num_keypoints:
        raise ConfigError(f"model.num_keypoints: got {m.num_keypoints}, but data.keypoint_set {spec.name!r} has "
                          f"{spec.num_keypoints} joints: expected {spec.num_keypoints} (or null)")

    p = cfg.parallel
    _choice("parallel.backend", p.backend, ("deepspeed", "fsdp", "none"))
    _choice("parallel.zero_stage", p.zero_stage, (0, 1, 2, 3))
    _choice("parallel.precision", p.precision, ("fp32", "bf16", "fp16"))
    _choice("parallel.offload_optimizer", p.offload_optimizer, ("none", "cpu", "nvme"))
    _choice("parallel.offload_params", p.offload_params, ("none", "cpu", "nvme"))
    offloads = p.offload_optimizer != "none" or p.offload_params != "none"
    if offloads and p.backend != "deepspeed":
        raise ConfigError(f"parallel.offload_optimizer/offload_params: offload is DeepSpeed's (ZeRO-Offload), "
                          f"got parallel.backend {p.backend!r}: expected deepspeed")
    if p.offload_optimizer != "none" and p.zero_stage == 0:
        raise ConfigError("parallel.offload_optimizer: needs ZeRO stage 1, 2 or 3 (got parallel.zero_stage 0)")
    if p.offload_params != "none" and p.zero_stage != 3:
        raise ConfigError(f"parallel.offload_params: parameters are offloaded by ZeRO-3 only "
                          f"(got parallel.zero_stage {p.zero_stage}): expected zero_stage 3")
    if "nvme" in (p.offload_optimizer, p.offload_params) and not p.nvme_path:
        raise ConfigError("parallel.nvme_path: required for nvme offload: expected a directory on a fast local disk")
    if p.backend == "fsdp" and p.precision == "fp16":
        raise ConfigError("parallel.precision: fp16 is not supported with parallel.backend fsdp "
                          "(no loss scaling there): expected bf16 or fp32")
    # The world size is known at start-up only (engine/parallel.check_engine_config checks batch_size against
    # world_size x grad_accum then); this part fails at load, before anything is launched.
    if cfg.train.batch_size % p.grad_accum:
        raise ConfigError(
            f"train.batch_size: {cfg.train.batch_size} is not divisible by parallel.grad_accum "
            f"{p.grad_accum}: expected a multiple of it")
    _choice("optim.schedule", cfg.optim.schedule, ("step", "cosine"))
    _check_freeze(cfg)
    check_training_sets(cfg.data, m.num_keypoints)
    if cfg.data.group_by_image and (cfg.data.train_ratio is not None
                                    or any("ratio" in e for e in cfg.data.extra_train if isinstance(e, dict))):
        raise ConfigError("data.group_by_image: not available with sampling ratios (data.train_ratio / "
                          "extra_train[].ratio), whose quotas draw people, not images: expected false there")
    _choice("data.kind", cfg.data.kind, ("coco", "synthetic"))
    _choice("mae.source", cfg.mae.source, ("folder", "person_crops"))
    _choice("eval.decode", cfg.eval.decode, ("udp_dark", "dark", "argmax"))
    if cfg.eval.blur_kernel < 3 or cfg.eval.blur_kernel % 2 == 0:
        raise ConfigError(f"eval.blur_kernel: got {cfg.eval.blur_kernel}, expected an odd size >= 3 (11 for sigma 2)")
    if not 0.0 < cfg.mae.mask_ratio < 1.0:
        raise ConfigError(f"mae.mask_ratio: got {cfg.mae.mask_ratio}, expected 0 < mask_ratio < 1")
    if cfg.mae.decoder_dim % cfg.mae.decoder_heads:
        raise ConfigError(f"mae.decoder_heads: {cfg.mae.decoder_heads} does not divide mae.decoder_dim "
                          f"{cfg.mae.decoder_dim}: expected a divisor of the width")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"optim.betas: got {cfg.optim.betas!r}, expected [beta1, beta2]")
    return cfg


def check_run_paths(cfg: Config, need_val: bool = True) -> None:
    """Before any work: the output directory can be written and the data files exist.
    Each failure names the key, the value and the reason (no traceback)."""
    out = Path(cfg.train.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # One probe per process: every rank checks at once (srun starts them together), and a shared name
        # lets one rank's unlink remove the file another is about to unlink.
        probe = out / f".write-test.{os.uname().nodename}.{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"train.output_dir: {cfg.train.output_dir!r} cannot be written "
                          f"({exc.strerror or exc}): expected a writable directory") from None
    d = cfg.data
    if d.kind != "coco":
        return  # synthetic sets are generated under data.root
    root = Path(d.root)
    if not root.is_dir():
        raise ConfigError(f"data.root: {d.root!r} does not exist: expected the dataset directory "
                          f"(see docs/datasets.md)")
    files = [("data.train_ann", d.train_ann)]
    if need_val:
        files += [("data.val_ann", d.val_ann)] + ([("data.det_file", d.det_file)] if d.det_file else [])
    for key, rel in files:
        candidates = [root / rel, Path(rel)]  # relative to data.root, or as given
        if not any(p.is_file() for p in candidates):
            raise ConfigError(f"{key}: {rel!r} not found (looked for {candidates[0]}): "
                              f"expected a COCO-format JSON file")


# ---------------------------------------------------------------- loading --
def _parse_scalar(text: str) -> Any:
    value = yaml.safe_load(text) if text != "" else ""
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string; on the command line it means a number
            return float(value)
        except ValueError:
            pass
    return value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings (YAML-parsed values) to a raw dict."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. model.depth=4")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = Override(text.strip(), _parse_scalar(text))
    return raw


def from_dict(raw: dict) -> Config:
    return validate(_build(Config, raw or {}, ""))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
    return from_dict(apply_overrides(raw, overrides or []))
