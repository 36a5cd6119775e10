"""What the rest of the toolkit asks of a backbone. `ViT` (models/vit.py) is the one shipped; a new
backbone implements this, registers a builder in `models.pose.BACKBONES` under its `model.backbone`
name, and is then trained (lr decay, ZeRO-3, FSDP2), planned, counted and exported without another
module naming its parts.

Optional: `parameter_part(name)` -> "attention" | "ffn" | anything else, for train.freeze's
`attention` and `ffn` (models/freeze.py); its `patch_embed`, `blocks:N` and `backbone` need only
`layer_id` (0: the embeddings)."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Backbone(Protocol):
    embed_dim: int  # output channels (the heads' input)
    depth: int  # layers for layer-wise lr decay: ids run 0 .. depth + 1
    grid: tuple[int, int]  # token grid of the position table (checkpoint meta, pos_embed resizing)
    num_experts: int  # > 1: forward needs each sample's dataset routes (models.vit.routes)

    def layer_id(self, name: str) -> int:
        """Layer-wise lr decay depth of parameter `name` (relative to the backbone)."""

    def shard_units(self) -> list[nn.Module]:
        """The modules FSDP2 wraps one by one (and the planner counts as gathered together)."""

    def attention_modules(self) -> list[nn.Module]:
        """Modules with an `impl` attribute choosing the attention kernel (export switches them)."""

    def forward_flops(self, grid: tuple[int, int]) -> float:
        """Forward FLOPs per image at this token grid (MFU's numerator)."""

    def init_weights(self) -> None:
        """Draw every parameter (models built on the meta device or under zero.Init call it)."""

    def forward(self, images: torch.Tensor, rows=None) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embed_dim, H/stride, W/stride). A backbone that supports the knowledge
        token (model.knowledge_token, docs/distillation.md) also takes `extra_tokens=` (1, T, C)."""


__all__ = ["Backbone"]
