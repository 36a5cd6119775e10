"""Layer-wise lr decay parameter groups and the lr schedule (docs/reference.md §3)."""
from __future__ import annotations

import math
import struct

import torch
from torch import nn

from vitpose_scale.config import Config


def layer_id(model: nn.Module, name: str, depth: int) -> int:
    """The layer-wise lr decay depth of parameter `name`: the backbone's answer (its interface:
    0 embeddings, i + 1 block i, depth + 1 after), depth + 1 for everything outside it (heads,
    decoders, a model without a backbone)."""
    backbone = getattr(model, "backbone", None)
    if name.startswith("backbone.") and hasattr(backbone, "layer_id"):
        return backbone.layer_id(name[len("backbone."):])
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
        lid = layer_id(model, name, depth)
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
    # A plain torch AdamW: DeepSpeed wraps it for ZeRO, nothing needs compiling (docs/reference.md §6).
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                             weight_decay=cfg.optim.weight_decay)


def _f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def host_adam_arguments(step: int, lr: float, beta1: float, beta2: float, eps: float,
                        weight_decay: float) -> tuple[float, float, float]:
    """(lr, eps, weight_decay) that make DeepSpeedCPUAdam's kernel, its own bias correction off,
    take torch AdamW's step t: lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) after p *= 1 - lr*wd
    = lr' * m / (sqrt(v) + eps') after p *= 1 - lr'*wd' with lr' = lr*sqrt(bc2)/bc1,
    eps' = eps*sqrt(bc2), wd' = wd*bc1/sqrt(bc2).

    The kernel's own correction is float32: beta2**t kept in a float (rounded by ~3e-8, which
    is ~1e-5 of 1 - 0.999**2), so every element's update is scaled alike by up to ~7e-6
    (-3.4e-6 at t=2, -6.9e-6 at t=3, -1.2e-6 at t=7) against torch's float64 correction.
    Here bc1 and bc2 are float64 and match the moments each side really accumulates: the
    kernel's m adds (1 - beta1_f32) g and decays by beta1_f32, so bc1 = 1 - beta1_f32**t; its
    v adds (1 - beta2_f32) g^2 = 0.99998713e-3 g^2 where torch's adds float32(1 - beta2) g^2 =
    1.0000000475e-3 g^2 (both decay by beta2_f32) and divides by 1 - beta2**t, so
    bc2 = (1 - beta2**t) (1 - beta2_f32) / float32(1 - beta2) makes v/bc2 torch's (plain
    1 - beta2**t would leave 6e-6 at every step, 1 - beta2_f32**t that much after ~10^4 steps)."""
    b1, b2 = _f32(beta1), _f32(beta2)
    bc1 = 1.0 - b1 ** step
    bc2_sqrt = math.sqrt((1.0 - beta2 ** step) * (1.0 - b2) / _f32(1.0 - beta2))
    return lr * bc2_sqrt / bc1, eps * bc2_sqrt, weight_decay * bc1 / bc2_sqrt


class ExactBiasCorrection:
    """Stands in for DeepSpeedCPUAdam's compiled op (`optimizer.ds_opt_adam`): each
    `adam_update` with bias correction is handed to the kernel as host_adam_arguments' lr, eps
    and weight decay with the kernel's float32 correction off (decoupled weight decay only).
    Everything else (create/destroy, rollback) goes to the op unchanged."""

    def __init__(self, op):
        self.op = op

    def __getattr__(self, name):
        if name == "op":
            raise AttributeError(name)
        return getattr(self.op, name)

    def adam_update(self, opt_id, step, lr, beta1, beta2, eps, weight_decay, bias_correction, *tensors):
        if bias_correction:
            lr, eps, weight_decay = host_adam_arguments(step, lr, beta1, beta2, eps, weight_decay)
        return self.op.adam_update(opt_id, step, lr, beta1, beta2, eps, weight_decay, False, *tensors)


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
