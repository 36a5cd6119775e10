"""ViTPose = ViT backbone + heatmap head, built from the config."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from vitpose_scale.config import ModelConfig
from vitpose_scale.models.heads import ClassicHead, SimpleHead
from vitpose_scale.models.vit import ViT


class PoseModel(nn.Module):
    """Images (B, 3, H, W) -> heatmaps (B, K, H/4, W/4). Attribute names match official keys."""

    def __init__(self, backbone: ViT, keypoint_head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.keypoint_head = keypoint_head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.keypoint_head(self.backbone(images))

    def init_weights(self) -> None:
        self.backbone.init_weights()
        self.keypoint_head.init_weights()


def build_backbone(cfg: ModelConfig) -> ViT:
    m = cfg.resolved()
    grid = tuple(m.pretrain_grid) if m.pretrain_grid else cfg.grid
    return ViT(embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
               drop_path=m.drop_path, grid=grid, patch_size=m.patch_size, patch_stride=m.patch_stride,
               patch_padding=m.patch_padding, qkv_bias=m.qkv_bias, attention=m.attention,
               activation_checkpointing=m.activation_checkpointing)


def build_head(cfg: ModelConfig) -> nn.Module:
    m = cfg.resolved()
    if m.head == "classic":
        return ClassicHead(m.embed_dim, m.num_keypoints, m.head_channels, feature_stride=m.patch_stride)
    return SimpleHead(m.embed_dim, m.num_keypoints, feature_stride=m.patch_stride)


def build_pose_model(cfg: ModelConfig, device: str | torch.device | None = None) -> PoseModel:
    """Build the model; `device="meta"` allocates nothing (count or shard a G model first)."""
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return PoseModel(build_backbone(cfg), build_head(cfg))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_flops_per_image(cfg: ModelConfig) -> float:
    """REFERENCE §6: 2 * matmul params * tokens + 4 * depth * tokens^2 * dim (+ patch embed conv).

    The head is small next to the backbone at every preset and is left out.
    """
    m = cfg.resolved()
    hp, wp = cfg.grid
    tokens = hp * wp
    hidden = int(round(m.embed_dim * m.mlp_ratio))
    linear = m.depth * (4 * m.embed_dim * m.embed_dim + 2 * m.embed_dim * hidden)
    patch = 3 * m.patch_size * m.patch_size * m.embed_dim
    return 2.0 * (linear + patch) * tokens + 4.0 * m.depth * tokens * tokens * m.embed_dim
