"""Layer-wise lr decay parameter groups and the lr schedule (REFERENCE §3)."""
from __future__ import annotations

import math

import torch
from torch import nn

from vitpose_scale.config import Config


def layer_id(name: str, depth: int) -> int:
    """0: patch_embed and pos_embed; block i: i + 1; everything else (last_norm, head): depth + 1."""
    if name.startswith(("backbone.patch_embed", "backbone.pos_embed")):
        return 0
    if name.startswith("backbone.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    # Under zero.Init a parameter is an empty 1-D placeholder: its real shape is ds_shape.
    ndim = len(getattr(param, "ds_shape", param.shape))
    return ndim <= 1 or name.endswith(".bias") or "pos_embed" in name or "token" in name


def param_groups(model: nn.Module, cfg: Config) -> list[dict]:
    """AdamW groups keyed by (layer, decay); each carries `lr_scale` = decay ** (depth + 1 - layer)."""
    depth = cfg.model.resolved().depth
    decay = cfg.layer_decay
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lid = layer_id(name, depth)
        skip = no_weight_decay(name, param)
        group = groups.setdefault((lid, skip), {
            "params": [], "names": [], "layer_id": lid, "lr_scale": decay ** (depth + 1 - lid),
            "weight_decay": 0.0 if skip else cfg.optim.weight_decay, "lr": cfg.optim.lr})
        group["params"].append(param)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    for g in groups:
        g.pop("names")
    # A plain torch AdamW: DeepSpeed wraps it for ZeRO, nothing needs compiling (REFERENCE §6).
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                             weight_decay=cfg.optim.weight_decay)


def lr_factor(step: int, cfg: Config, steps_per_epoch: int, total_steps: int) -> float:
    """Linear warmup from warmup_ratio, then step decay at epochs or cosine to zero."""
    o = cfg.optim
    if step < o.warmup_iters:
        return o.warmup_ratio + (1.0 - o.warmup_ratio) * step / o.warmup_iters
    if o.schedule == "cosine":
        span = max(1, total_steps - o.warmup_iters)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - o.warmup_iters) / span)))
    epoch = step // max(1, steps_per_epoch)
    return o.step_gamma ** sum(epoch >= e for e in o.step_epochs)


def set_lr(optimizer, base_lr: float, factor: float, scales: list[float]) -> None:
    for group, scale in zip(optimizer.param_groups, scales):
        group["lr"] = base_lr * factor * scale
