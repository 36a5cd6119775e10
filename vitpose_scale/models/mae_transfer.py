"""Initialise the ViTPose backbone from an MAE (or timm ViT) pretraining checkpoint (REFERENCE §4).

Kept: patch_embed, pos_embed (grid resized bicubically, e.g. 14x14 -> 16x12),
blocks. Dropped: cls_token, mask_token, the whole decoder, and the encoder's
final `norm` (it does not map onto `last_norm`, which keeps its fresh init).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from vitpose_scale.models.interop import (CheckpointError, adapt_state_dict, extract_state_dict,
                                          load_state_dict_strict, safe_load)

_DROPPED_PREFIXES = ("cls_token", "mask_token", "decoder", "norm.", "fc_norm.", "head.")


def backbone_state_from_pretraining(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.").removeprefix("encoder.")
        if key.startswith("backbone."):
            key = key[len("backbone."):]
        if key.startswith(_DROPPED_PREFIXES) or key.startswith("last_norm."):
            continue
        out["backbone." + key] = value
    return out


def load_pretrained_backbone(model: nn.Module, path: str | Path) -> None:
    """Strict on every backbone key except last_norm; the head keeps its initialisation."""
    state = backbone_state_from_pretraining(extract_state_dict(safe_load(path), str(path)))
    if "backbone.pos_embed" not in state:
        raise CheckpointError(f"{path}: no pos_embed; not a ViT/MAE checkpoint")
    state = adapt_state_dict(state, model)
    own = model.state_dict()
    state.update({k: v for k, v in own.items() if k.startswith("backbone.last_norm.")})
    load_state_dict_strict(model, state, str(path), prefixes=("backbone.",))
