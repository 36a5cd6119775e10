"""Initialise a pose model from a checkpoint file, whatever its layout (docs/reference.md §4).

:func:`load_init_weights` reads the file once, tells its layout from the keys
(``interop.detect_checkpoint_format``) and loads it:

* a whole ViTPose (official mmcv file, ours) or a Hugging Face VitPose: every key, strictly;
* a pretraining checkpoint (our MAE export, an official MAE with or without its decoder, a
  timm ViT): the backbone only. Kept: patch_embed, pos_embed, blocks. Dropped: cls_token,
  mask_token, the whole decoder, and the encoder's final ``norm`` (it does not map onto
  ``last_norm``, which keeps its fresh init, as does the head).

pos_embed is resized bicubically (the official resize) from the checkpoint's grid to the
model's: the grid stored in the file's ``meta.pos_embed_grid`` (every export of ours, the
MAE's included), else the model's own grid (``model.pretrain_grid`` when set) if the token
count fits it, else a square or 4:3 grid read from the count.
"""
from __future__ import annotations

import re

from pathlib import Path

import torch
from torch import nn

from vitpose_scale.models.interop import (CheckpointError, adapt_state_dict, detect_checkpoint_format,
                                          extract_state_dict, from_hf_state_dict, load_state_dict_strict,
                                          pos_embed_grid_from_meta, safe_load)

_DROPPED_PREFIXES = ("cls_token", "mask_token", "decoder", "norm.", "fc_norm.", "head.")


def backbone_state_from_pretraining(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        key = key.removeprefix("encoder.").removeprefix("backbone.")
        if key.startswith(_DROPPED_PREFIXES) or key.startswith("last_norm."):
            continue
        out["backbone." + key] = value
    return out


_EXPERT = re.compile(r"^(backbone\.blocks\.\d+\.mlp\.)experts\.\d+\.(weight|bias)$")


def split_fc2_into_experts(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain ViT's feed-forward into a ViTPose++ block, as the official loader does
    (mmcv_custom/checkpoint.py with part_features): every expert starts as the last part_features
    outputs of the pretrained fc2, the shared fc2 keeps the others. Plain models: unchanged."""
    experts = [k for k in own if _EXPERT.match(k) and k not in state]
    if not experts:
        return state
    state = dict(state)
    fc2 = {}
    for key in experts:
        m = _EXPERT.match(key)
        source = f"{m[1]}fc2.{m[2]}"
        if source not in state:
            continue  # reported as missing by the strict load
        part = own[key].shape[0]
        full = fc2.setdefault(source, state[source])
        if full.shape[0] != own[source].shape[0] + part:
            raise CheckpointError(f"{source}: {full.shape[0]} outputs in the checkpoint, but the model's shared part "
                                  f"({own[source].shape[0]}) and an expert ({part}) need {own[source].shape[0] + part}")
        state[key] = full[-part:].clone()
    for source, full in fc2.items():
        state[source] = full[:own[source].shape[0]].clone()
    return state


def _load_backbone(model: nn.Module, state: dict[str, torch.Tensor], grid: tuple[int, int] | None,
                   source: str) -> None:
    """Strict on every backbone key except last_norm; the head keeps its initialisation."""
    state = backbone_state_from_pretraining(state)
    if "backbone.pos_embed" not in state:
        raise CheckpointError(f"{source}: no pos_embed; not a ViT/MAE checkpoint")
    state = adapt_state_dict(state, model, grid)
    own = model.state_dict()
    state = split_fc2_into_experts(state, own)
    state.update({k: v for k, v in own.items() if k.startswith("backbone.last_norm.")})
    load_state_dict_strict(model, state, source, prefixes=("backbone.",))


def init_weights_from_state(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                            grid: tuple[int, int] | None = None) -> str:
    """Load an already-read state_dict of any supported layout into `model` (see load_init_weights);
    `grid` is the checkpoint's pos_embed grid when known (meta.pos_embed_grid)."""
    kind = detect_checkpoint_format(state, source)
    if kind in ("official", "hf"):
        if kind == "hf":
            state = from_hf_state_dict(state)
        load_state_dict_strict(model, adapt_state_dict(state, model, grid), source)
        return {"official": "ViTPose checkpoint, every key",
                "hf": "Hugging Face VitPose checkpoint, every key"}[kind]
    _load_backbone(model, state, grid, source)
    what = "MAE checkpoint" if kind == "mae" else "ViT backbone checkpoint"
    return f"{what}: backbone only (last_norm and the head keep their initialisation)"


def load_init_weights(model: nn.Module, path: str | Path) -> str:
    """Load the checkpoint file `path` into `model` by its detected layout; returns what was loaded,
    for the log (e.g. "MAE checkpoint: backbone only ...").

    Raises CheckpointError (one message naming the file) when the file is unreadable, of an
    unknown layout, or does not fit the model; any other exception is a bug and propagates.
    """
    raw = safe_load(path)
    state = extract_state_dict(raw, str(path))
    return init_weights_from_state(model, state, str(path), pos_embed_grid_from_meta(raw, str(path)))
