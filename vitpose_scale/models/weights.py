"""Reading weights: one reader for every command (train.init_from, eval, infer, export, split,
convert, the Python API) and the config the weights were trained with.

Formats: a training checkpoint directory (runs/X/checkpoints/step_N: ZeRO shards, FSDP or plain),
an official ViTPose(+/++) .pth (ours: best.pth, final.pth), a .safetensors file in the official or
the Hugging Face layout, and a Hugging Face VitPose directory. Files are read with
`interop.safe_load` (weights_only: no pickled code runs).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from vitpose_scale.config import Config, ConfigError, from_dict, load_config
from vitpose_scale.models.interop import (HF_CLASSIC_CHANNELS, CheckpointError, adapt_state_dict, extract_state_dict,
                                          from_hf_state_dict, hf_keypoint_set, load_state_dict_strict,
                                          model_config_from_hf, narrow_classic_head, pos_embed_grid_from_meta,
                                          safe_load)

HF_WEIGHTS = "model.safetensors"


def resolve_weights(source: str | Path) -> Path:
    """The weights a path stands for: a run directory means its best.pth, else final.pth, else its
    newest checkpoints/step_N; any other path is returned as it is (checked when read)."""
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_dir() or (path / "config.json").is_file() or (path / "meta.json").is_file():
        return path  # a file, a Hugging Face directory or a training checkpoint directory
    for name in ("best.pth", "final.pth"):
        if (path / name).is_file():
            return path / name
    steps = sorted((p for p in (path / "checkpoints").glob("step_*") if p.name[5:].isdigit()),
                   key=lambda p: int(p.name[5:]))
    if steps:
        return steps[-1]
    raise CheckpointError(f"{path}: a directory with no weights: expected a run directory (best.pth, final.pth or "
                          f"checkpoints/step_N), a training checkpoint (meta.json) or a Hugging Face directory "
                          f"(config.json)")


def is_hf_directory(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def _is_hf_layout(state: dict) -> bool:
    return any(k.startswith(("backbone.encoder.", "backbone.embeddings.")) for k in state)


def read_hf_directory(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a Hugging Face VitPose directory, renamed to our (official) layout."""
    from safetensors.torch import load_file

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if (path / HF_WEIGHTS).is_file():
        state = load_file(str(path / HF_WEIGHTS))
    elif index.is_file():  # sharded: the index maps every tensor to its shard
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(path / shard)))
    elif (path / "pytorch_model.bin").is_file():
        state = extract_state_dict(safe_load(path / "pytorch_model.bin"), str(path))
    else:
        raise CheckpointError(f"{path}: a Hugging Face directory needs {HF_WEIGHTS}, "
                              f"model.safetensors.index.json or pytorch_model.bin next to config.json")
    state = from_hf_state_dict(state)
    channels = json.loads((path / "config.json").read_text()).get("head_channels")
    if channels is not None and channels < HF_CLASSIC_CHANNELS:  # `export_hf` padded a narrower head
        state = narrow_classic_head(state, int(channels), str(path))
    return state


def read_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict in the official layout, meta) from any supported checkpoint:
    a training checkpoint directory (step_N), a Hugging Face directory, an official .pth,
    or a .safetensors file in either layout; a run directory stands for its weights (`resolve_weights`)."""
    from safetensors import SafetensorError

    path = resolve_weights(path)
    if is_hf_directory(path):
        try:
            return read_hf_directory(path), {"format": "hf"}
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{path}: cannot be read as a Hugging Face directory ({exc}): "
                                  f"damaged or incomplete") from exc
    if path.is_dir():
        if not (path / "meta.json").is_file():
            raise CheckpointError(f"{path}: a directory must be a training checkpoint (meta.json) or a "
                                  f"Hugging Face directory (config.json)")
        from vitpose_scale.engine.checkpoint import consolidate

        try:
            state = consolidate(path)
        except FileNotFoundError as exc:  # a file of the checkpoint is missing: damaged, as convert says
            raise CheckpointError(f"{path}: {exc}") from exc
        run = json.loads((path / "meta.json").read_text())  # consolidate has read it: it is JSON
        meta = {"format": "training checkpoint", "step": run.get("step")}
        if isinstance(run.get("config"), dict):  # the grid the weights were trained at (resizing reads it)
            meta["pos_embed_grid"] = list(from_dict(run["config"]).model.grid)
        return state, meta
    raw = safe_load(path)
    state = extract_state_dict(raw, str(path))
    meta = dict(raw.get("meta") or {}) if isinstance(raw.get("meta"), dict) else {}
    if _is_hf_layout(state):
        return from_hf_state_dict(state), {**meta, "format": "hf"}
    return state, {**meta, "format": "safetensors" if path.suffix == ".safetensors" else "official"}


def load_weights(model: nn.Module, path: str | Path, keypoint_sets: list[str] | None = None) -> str:
    """Load any supported checkpoint into `model` strictly (pos_embed resized when the input size
    differs); returns the format's name. `keypoint_sets` (each dataset's) names the set in a
    head mismatch."""
    state, meta = read_state(path)
    load_state(model, state, meta, str(path), keypoint_sets)
    return meta["format"]


def load_state(model: nn.Module, state: dict[str, torch.Tensor], meta: dict, source: str,
               keypoint_sets: list[str] | None = None) -> None:
    """Load what `read_state` returned into `model` strictly: pos_embed resized from the grid in the
    meta (else guessed from the token count) to the model's."""
    grid = pos_embed_grid_from_meta({"meta": meta}, source)
    load_state_dict_strict(model, adapt_state_dict(state, model, grid), source, keypoint_sets=keypoint_sets)


def config_for_checkpoint(checkpoint: str | Path, config: str | None, overrides: list[str]) -> Config:
    """--config, else the checkpoint's own: meta.json of a step_N directory, config.json of a Hugging
    Face directory (`hf_run_config`), or the run's config.yaml next to the file (runs/X/best.pth) or
    two levels up (runs/X/checkpoints/step_N)."""
    if config:
        return load_config(config, overrides)
    ckpt = resolve_weights(checkpoint)
    if is_hf_directory(ckpt):  # before config.yaml: an export inside runs/X may have been given other --set
        return hf_run_config(ckpt, overrides)
    meta = ckpt / "meta.json"
    if meta.is_file():
        try:
            run = json.loads(meta.read_text())
        except ValueError as exc:
            raise CheckpointError(f"{meta}: not JSON ({exc}): the checkpoint is damaged") from None
        if isinstance(run, dict) and isinstance(run.get("config"), dict):
            from vitpose_scale.config import apply_overrides

            return from_dict(apply_overrides(run["config"], overrides))
    for candidate in (ckpt.parent / "config.yaml", ckpt.parent.parent / "config.yaml"):
        if candidate.is_file():
            return load_config(candidate, overrides)
    raise FileNotFoundError(f"--checkpoint {ckpt}: no --config given and no config.yaml next to it or in its run "
                            f"directory: pass --config with the model section the weights were trained with")


def hf_run_config(path: str | Path, overrides: list[str]) -> Config:
    """A config for a Hugging Face VitPose directory from its config.json: the model section
    (`model_config_from_hf`) and the keypoint set its id2label names (`hf_keypoint_set`);
    the rest our defaults, then `overrides`."""
    from vitpose_scale.config import apply_overrides

    model = model_config_from_hf(path)
    keypoint_set = hf_keypoint_set(path)
    raw: dict = {"model": dataclasses.asdict(model), "data": {}}
    if keypoint_set is not None:
        raw["data"]["keypoint_set"] = keypoint_set
    elif not any(o.split("=", 1)[0].strip() == "data.keypoint_set" for o in overrides):
        raise ConfigError(f"{Path(path) / 'config.json'}: its {model.num_keypoints} joints (id2label) name no "
                          f"single shipped keypoint set: pass --set data.keypoint_set=NAME or --config")
    return from_dict(apply_overrides(raw, overrides))
