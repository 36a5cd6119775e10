"""`vitpose-scale export`: weights for other tools, and loading any of those formats back.

Formats written (from an official .pth, one of our runs' best/final.pth, or a
training checkpoint directory step_N):

  hf           a directory `transformers.VitPoseForPoseEstimation.from_pretrained` loads:
               config.json (shape, image size, keypoint names in id2label, skeleton in
               `edges`; a classic head narrower than transformers' 256 channels is zero-padded
               to it, exactly, its width in `head_channels`) + model.safetensors +
               preprocessor_config.json (`AutoImageProcessor`: the input size and our
               normalisation); the directory is its own config (`models.weights.hf_run_config`); of a
               multi-task model (ViTPose+/++): the backbone
               with its experts and one dataset's head (--dataset, default the first), the
               index to pass as `dataset_index` in config.json and README.md
  onnx         one self-contained .onnx file (weights over ONNX_SINGLE_FILE_BYTES: in <out>.data
               next to it), input `images` (batch, 3, H, W) with a dynamic batch, output
               `heatmaps` (batch, K, H/4, W/4); see ONNX_OPSET and ONNX_ATTENTION; of a
               multi-task model: one dataset's split plain model (--dataset required)
  safetensors  the official ViTPose key layout as a .safetensors file (no pickle); every
               dataset of a multi-task model

`models/weights.py` reads all of them back (and official .pth files, training checkpoints).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from vitpose_scale.config import Config, ConfigError, ModelConfig, task_configs

if TYPE_CHECKING:  # torch and the model code load when a function runs: `export --help` stays instant
    import torch
    from torch import nn

# Opset 18: every current runtime runs it (onnxruntime >= 1.14, TensorRT >= 8.6); the torch.export
# route's native opset (20) only adds a fused Gelu op.
ONNX_OPSET = 18
# The official ViTPose math (q k^T softmax, then v) as explicit MatMul/Softmax nodes: no runtime
# needs a fused attention op, and the Triton kernel cannot be traced.
ONNX_ATTENTION = "plain"
# Above this many bytes of weights the ONNX export writes them to a separate file: a protobuf cannot
# exceed 2 GiB, and the margin (torch.onnx's own threshold) leaves room for the graph.
ONNX_SINGLE_FILE_BYTES = 1536 * 1024 * 1024


# ---------------------------------------------------------------- writing --
def _fp32_state(model: nn.Module) -> dict[str, torch.Tensor]:
    import torch

    return {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
            for k, v in model.state_dict().items()}


def export_hf(model: nn.Module, cfg: ModelConfig, out_dir: str | Path, keypoints="coco",
              dataset: int | None = None, dataset_name: str | None = None) -> Path:
    """A directory that `VitPoseForPoseEstimation.from_pretrained` loads with every weight used;
    ``keypoints`` (the keypoint set) names the labels and the skeleton edges.

    ``dataset``: of a multi-task model, the dataset whose head goes in (the Hugging Face layout has
    one head; the backbone keeps every expert); `cfg` is then that dataset's model config
    (`task_configs`) and config.json and README.md say which `dataset_index` to pass."""
    from safetensors.torch import save_file

    from vitpose_scale.keypoints import get_spec
    from vitpose_scale.models import interop
    from vitpose_scale.models.split import select_head
    from vitpose_scale.models.weights import HF_WEIGHTS

    m = cfg.resolved()
    hidden = int(round(m.embed_dim * m.mlp_ratio))
    # transformers' VitPose hard-codes these; a model outside them has no HF equivalent.
    if hidden % m.embed_dim:
        raise ConfigError(f"model MLP width {hidden} is not an integer multiple of embed_dim "
                                      f"{m.embed_dim}: the Hugging Face VitPose config has only an integer mlp_ratio")
    if m.attention_window is not None:  # HF's VitPose attends over all tokens: it would compute another model
        raise ConfigError("model.attention_window: the Hugging Face VitPose has full attention only: expected null "
                          "(export onnx or safetensors instead)")
    if m.knowledge_token:  # the student's frozen token joins every block: HF's VitPose has no place for it
        raise ConfigError("model.knowledge_token: the Hugging Face VitPose has no extra token: expected a model "
                          "without one (export onnx or safetensors instead)")
    if m.head == "classic" and m.head_channels > interop.HF_CLASSIC_CHANNELS:
        raise ConfigError(f"model.head_channels: {m.head_channels}; the Hugging Face classic decoder has "
                          f"{interop.HF_CLASSIC_CHANNELS} channels: expected at most {interop.HF_CLASSIC_CHANNELS} "
                          f"(or model.head=simple)")
    if m.patch_padding != 2:
        raise ConfigError(f"model.patch_padding: {m.patch_padding}; the Hugging Face patch embedding "
                                      f"pads by 2: expected 2")
    hf = interop.hf_config(cfg)
    hf.backbone_config.mlp_ratio = hidden // m.embed_dim
    spec = get_spec(keypoints)
    if spec.num_keypoints != m.num_keypoints:
        raise ConfigError(f"model.num_keypoints {m.num_keypoints}: the keypoint set {spec.name!r} has "
                          f"{spec.num_keypoints} joints: expected the set the model was trained on")
    hf.id2label = dict(enumerate(spec.names))
    hf.label2id = {n: i for i, n in enumerate(spec.names)}
    hf.edges = [list(e) for e in spec.skeleton]
    state = _fp32_state(model)
    experts = m.backbone == "vit_moe" and m.num_experts > 1
    if dataset is not None:
        state = select_head(state, dataset)
        hf.dataset_index, hf.dataset_name = dataset, dataset_name or spec.name
    if m.head == "classic" and m.head_channels < interop.HF_CLASSIC_CHANNELS:
        # Zero-padded to transformers' fixed width: the same heatmaps (the demo's 64-channel head is 5x cheaper
        # to train than a 256-channel one); config.json keeps the real width for `read_hf_directory`.
        state = interop.widen_classic_head(state)
        hf.head_channels = m.head_channels
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    save_file(interop.to_hf_state_dict(state), str(out / HF_WEIGHTS), metadata={"format": "pt"})
    interop.hf_image_processor(cfg).save_pretrained(str(out))
    if dataset is not None:
        # The experts are chosen per call, not stored: a wrong dataset_index silently runs another expert.
        use = (f"pass `dataset_index=torch.full((batch,), {dataset})` to `VitPoseForPoseEstimation`: its "
               f"{m.num_experts} experts per block are picked per sample" if experts
               else "no `dataset_index` needed (a plain backbone, no experts)")
        (out / "README.md").write_text(
            f"# ViTPose multi-task model: dataset {hf.dataset_name!r} (index {dataset})\n\n"
            f"This directory holds the backbone and the `{hf.dataset_name}` head ({spec.num_keypoints} joints, "
            f"keypoint set `{spec.name}`) of a multi-task ViTPose; {use}.\n")
    return out


def export_safetensors(model: nn.Module, out_path: str | Path) -> Path:
    """The official key layout in a .safetensors file (fp32)."""
    from safetensors.torch import save_file

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "layout": "official ViTPose (mmcv) keys"}
    if hasattr(model, "backbone"):
        meta["pos_embed_grid"] = json.dumps(list(model.backbone.grid))
    save_file(_fp32_state(model), str(out), metadata=meta)
    return out


def onnx_files(path: str | Path) -> list[Path]:
    """The files an ONNX export consists of: the .onnx, and its external-data file when it has one."""
    path = Path(path)
    data = path.with_name(path.name + ".data")  # the name torch.onnx gives the weights file
    return [path] + ([data] if data.is_file() else [])


def export_onnx(model: nn.Module, cfg: ModelConfig, out_path: str | Path) -> Path:
    """ONNX through torch.export (torch.onnx's default route; the TorchScript route is deprecated),
    opset ONNX_OPSET, attention ONNX_ATTENTION, dynamic batch. One self-contained file unless the
    weights exceed ONNX_SINGLE_FILE_BYTES; then they go to `<out>.data` next to it (`onnx_files`)."""
    import torch

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A weights file left by an earlier (bigger) export would be listed and copied with this one.
    out.with_name(out.name + ".data").unlink(missing_ok=True)
    model = model.float().eval()
    attns = model.backbone.attention_modules()
    impls = [attn.impl for attn in attns]
    for attn in attns:
        attn.impl = ONNX_ATTENTION
    example = torch.zeros(2, 3, *cfg.image_size)
    try:
        with torch.no_grad():
            program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=ONNX_OPSET,
                                        input_names=["images"], output_names=["heatmaps"],
                                        dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, verbose=False)
    finally:
        for attn, impl in zip(attns, impls):
            attn.impl = impl
    weights = sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                  if v.const_value is not None)
    # torch.onnx's own default (external_data=True) always splits: a copied .onnx alone then fails to load.
    program.save(str(out), external_data=weights > ONNX_SINGLE_FILE_BYTES)
    return out


# -------------------------------------------------------------------- CLI --
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitpose-scale export", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help="official .pth, runs/X/best.pth, runs/X/checkpoints/step_N, a HF directory or .safetensors")
    p.add_argument("--format", required=True, choices=["hf", "onnx", "safetensors"])
    p.add_argument("--out", required=True, help="directory (hf) or file (onnx, safetensors)")
    p.add_argument("--config", help="model config (default: the run's config.yaml next to the checkpoint)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dataset", metavar="NAME|INDEX",
                   help="of a multi-task model (data.tasks): the dataset to export (hf: default the first; onnx: "
                        "required; safetensors keeps every dataset)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0, 2 bad config or input (one line), 4 checkpoint missing/damaged/unsafe (one line)."""
    from vitpose_scale.cli import run_reporting_errors

    return run_reporting_errors(_main, build_parser().parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    from vitpose_scale.models.pose import build_pose_model
    from vitpose_scale.models.split import resolve_dataset
    from vitpose_scale.models.weights import config_for_checkpoint, load_weights, resolve_weights

    resolve_weights(args.checkpoint)  # a missing checkpoint is the problem, not its config
    cfg = config_for_checkpoint(args.checkpoint, args.config, args.overrides)
    model = build_pose_model(cfg.model).eval()
    tasks = task_configs(cfg)
    source = load_weights(model, args.checkpoint, [task.data.keypoint_set for _, task in tasks])
    if model.num_datasets > 1:
        out, note = _export_dataset(model, cfg, tasks, args)
    else:
        if args.dataset is not None:  # a single-dataset model: only its own name or 0
            resolve_dataset(args.dataset, [name for name, _ in tasks], 1)
        note = ""
        if args.format == "hf":
            out = export_hf(model, cfg.model, args.out, cfg.data.keypoint_set)
        elif args.format == "onnx":
            out = export_onnx(model, cfg.model, args.out)
        else:
            out = export_safetensors(model, args.out)
    files = onnx_files(out) if args.format == "onnx" else [Path(out)]
    together = ": keep the two files together" if len(files) > 1 else ""
    print(f"wrote {' and '.join(map(str, files))} ({args.format}{together}) from {args.checkpoint} ({source}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters){note}")
    return 0


def _export_dataset(model: nn.Module, cfg: Config, tasks: list, args: argparse.Namespace) -> tuple[Path, str]:
    """A multi-task model (ViTPose+/++): hf holds the backbone and one head, onnx one dataset's
    split plain model, safetensors every dataset."""
    from vitpose_scale.cli import InputError
    from vitpose_scale.models.split import resolve_dataset

    names = [name for name, _ in tasks] if cfg.data.tasks else []
    count = model.num_datasets
    if args.format == "safetensors":
        if args.dataset is not None:
            raise InputError(f"--dataset {args.dataset}: safetensors keeps every dataset of this {count}-dataset "
                             f"model; for one dataset's weights run `vitpose-scale split`")
        return export_safetensors(model, args.out), f", all {count} datasets"
    if args.dataset is None and args.format == "onnx":
        raise InputError(f"--dataset: required for ONNX of a model with {count} datasets "
                         f"({', '.join(names) or 'no data.tasks names'}): one ONNX file per dataset")
    index = resolve_dataset(args.dataset, names, count) if args.dataset is not None else 0
    if index >= len(names):
        raise ConfigError(f"dataset {index}: its keypoint set is unknown: expected data.tasks in the config, one "
                          f"entry per dataset of the model")
    name, task = tasks[index]
    if args.format == "hf":
        out = export_hf(model, task.model, args.out, task.data.keypoint_set, dataset=index, dataset_name=name)
        experts = model.backbone.num_experts > 1
        return out, (f", dataset {name!r}: pass dataset_index={index}" if experts
                     else f", dataset {name!r} (no experts: no dataset_index needed)")
    plain = split_model(model, task.model, index)
    return export_onnx(plain, plain_config(task.model), args.out), f", dataset {name!r} (index {index}, split)"


def plain_config(cfg: ModelConfig) -> ModelConfig:
    """One dataset's model config (`task_configs`) as the plain single-head ViTPose a split gives."""
    return dataclasses.replace(cfg, backbone="vit", num_experts=1, part_features=None, head_keypoints=None)


def split_model(model: nn.Module, cfg: ModelConfig, index: int) -> nn.Module:
    """Dataset `index` of a multi-task model as a plain ViTPose (`split_state_dict`), loaded strictly;
    `cfg` is that dataset's model config."""
    from vitpose_scale.models import interop
    from vitpose_scale.models.pose import build_pose_model
    from vitpose_scale.models.split import split_state_dict

    plain = build_pose_model(plain_config(cfg)).eval()
    interop.load_state_dict_strict(plain, split_state_dict(_fp32_state(model), index), f"dataset {index} split")
    return plain


if __name__ == "__main__":
    sys.exit(main())
