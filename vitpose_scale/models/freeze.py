"""Partial finetuning (`train.freeze`): which parameters of a pose model keep their initial weights.

Names (config.FREEZE_NAMES, and `blocks:N`), as the official ViTPose backbone's switches:

* ``attention``: every block's attn and norm1 (official ``freeze_attn``);
* ``ffn``: every block's mlp (experts included) and norm2, plus patch_embed and pos_embed
  (official ``freeze_ffn``, which freezes the embeddings too);
* ``patch_embed``: patch_embed and pos_embed;
* ``blocks:N``: patch_embed, pos_embed and the first N blocks (blocks 0 .. N-1). The official
  ``frozen_stages=N`` freezes patch_embed and blocks 1 .. N (its loop starts at 1, leaving block 0
  trainable and indexing past the end for N = depth) and leaves pos_embed trainable; here the
  embeddings and the first N blocks, so ``blocks:depth`` is the whole stack below last_norm;
* ``backbone``: every backbone parameter (last_norm included);
* ``head``: every keypoint head.

The parts are read through the backbone interface: `layer_id` (0: the embeddings, i + 1: block i)
and, for attention and ffn, the optional `parameter_part`. Frozen parameters get
``requires_grad=False`` before the backend wraps the model: the optimizer groups skip them (no Adam
moments, no fp32 master copy or gradient partition under ZeRO), no gradient is computed or reduced
for them, and DeepSpeed saves their ZeRO-2/3 partitions with its checkpoints
(``frozen_param_fragments``).

Modes. A module whose parameters are all frozen stays in eval mode through every ``train()``: a
frozen block's drop path is off (the official ``frozen_stages`` puts those blocks in eval mode), a
frozen head's BatchNorm normalises with and keeps its running statistics. With ``attention`` or
``ffn`` the block itself still trains, so its drop path (shared by both branches) stays on, as in
the official code, whose ``attn.eval()`` / ``mlp.eval()`` do not reach the block's DropPath; attn,
norm1, mlp and norm2 hold no dropout here (rates 0, as the official ViTPose configs), so their
eval mode changes nothing.
"""
from __future__ import annotations

import re
import types

from torch import nn

from vitpose_scale.config import ConfigError


def _numel(param: nn.Parameter) -> int:
    return getattr(param, "ds_numel", param.numel())  # under zero.Init the tensor is a placeholder


def frozen_parameter_names(model: nn.Module, names: list[str]) -> set[str]:
    """Names (as model.named_parameters gives them) of the parameters `names` freeze."""
    backbone = model.backbone
    if {"attention", "ffn"} & set(names) and not hasattr(backbone, "parameter_part"):
        raise ConfigError(f"train.freeze: {type(backbone).__name__} does not name its attention and ffn parameters "
                          f"(no parameter_part): expected patch_embed, blocks:N, backbone or head")
    heads = {id(p) for head in model.heads for p in head.parameters()}
    frozen = set()
    for name, param in model.named_parameters():
        if name.startswith("backbone."):
            rel = name[len("backbone."):]
            layer = backbone.layer_id(rel)  # 0: the embeddings (patch_embed, pos_embed)
            part = backbone.parameter_part(rel) if hasattr(backbone, "parameter_part") else None
            for n in names:
                blocks = re.fullmatch(r"blocks:([0-9]+)", n)
                if (n == "backbone" or n == "attention" and part == "attention"
                        or n == "ffn" and (part == "ffn" or layer == 0) or n == "patch_embed" and layer == 0
                        or blocks is not None and layer <= int(blocks.group(1))):
                    frozen.add(name)
        elif "head" in names and id(param) in heads:
            frozen.add(name)
    return frozen


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """`train()` of a wholly frozen module: eval whatever the mode asked."""
    return nn.Module.train(module, False)


def whole_frozen_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost submodules all of whose parameters (at least one) are frozen."""
    out: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params) and module is not model:
            out.append((prefix, module))
            return
        for name, child in module.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return out


def apply_freeze(model: nn.Module, names: list[str]) -> dict:
    """Freeze what `names` name (requires_grad=False; wholly frozen modules kept in eval mode);
    returns {"frozen": elements frozen, "total": elements, "eval_modules": [module names]}."""
    frozen = frozen_parameter_names(model, names)
    total = frozen_numel = 0
    for name, param in model.named_parameters():
        total += _numel(param)
        if name in frozen:
            param.requires_grad_(False)
            frozen_numel += _numel(param)
    kept = whole_frozen_modules(model)
    for _, module in kept:
        # An instance attribute: nn.Module.train reaches children through `child.train(mode)`, so
        # every wrapper's train(True) (DeepSpeed, DDP, FSDP2) leaves this module in eval mode.
        module.train = types.MethodType(_stay_in_eval, module)
        module.train(False)
    return {"frozen": frozen_numel, "total": total, "eval_modules": [n for n, _ in kept]}


__all__ = ["apply_freeze", "frozen_parameter_names", "whole_frozen_modules"]
