"""ViTPose = backbone + heatmap head(s), built from the config.

One head (ViTPose) or one per dataset (ViTPose+ / ViTPose++, the official TopDownMoE: the first
dataset's head is `keypoint_head`, dataset k's is `associate_keypoint_heads.{k-1}`). Backbones are
chosen by name from BACKBONES; the rest of the toolkit reaches a backbone only through the
interface of models/backbone.py (layer_id, shard_units, attention_modules, forward_flops, grid).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vitpose_scale.config import ModelConfig
from vitpose_scale.models.backbone import Backbone
from vitpose_scale.models.heads import ClassicHead, SimpleHead
from vitpose_scale.models.vit import ViT, routes


class PoseModel(nn.Module):
    """Images (B, 3, H, W) -> heatmaps (B, K, H/4, W/4). Attribute names match official keys.

    With several heads (or experts) every sample carries its dataset index; each head runs on its
    own samples only and the output has max(K) channels, sample b's first K_b channels coming from
    its head (the rest zero).
    """

    def __init__(self, backbone: ViT, keypoint_head: nn.Module, associate_keypoint_heads: list[nn.Module] = (),
                 knowledge_token: bool = False):
        super().__init__()
        self.backbone = backbone
        self.keypoint_head = keypoint_head
        if associate_keypoint_heads:
            self.associate_keypoint_heads = nn.ModuleList(associate_keypoint_heads)
        # The paper's knowledge token: appended to the visual tokens in every block (docs/distillation.md)
        self.knowledge_token = nn.Parameter(torch.zeros(1, 1, backbone.embed_dim)) if knowledge_token else None
        self.frozen = False  # True: train() keeps every module in eval mode (a frozen teacher)

    def train(self, mode: bool = True) -> "PoseModel":
        """A frozen model (stage 1 of the knowledge token) stays in eval mode: its BatchNorm statistics
        and drop path must not change while only the token learns."""
        return super().train(mode and not self.frozen)

    @property
    def heads(self) -> list[nn.Module]:
        return [self.keypoint_head, *getattr(self, "associate_keypoint_heads", [])]

    @property
    def num_datasets(self) -> int:
        """How many dataset indices this model takes (heads or experts, whichever is more)."""
        return max(len(self.heads), self.backbone.num_experts)

    def forward(self, images: torch.Tensor, dataset_index: torch.Tensor | None = None) -> torch.Tensor:
        heads = self.heads
        if dataset_index is None:
            if self.num_datasets > 1:
                raise ValueError(f"this model serves {self.num_datasets} datasets: a dataset index per sample is "
                                 f"required (infer/evaluate --dataset NAME)")
            return self.keypoint_head(self.backbone(images, **self._token()))
        rows = routes(dataset_index.to(images.device), self.num_datasets, "dataset")
        features = self.backbone(images, rows if self.backbone.num_experts > 1 else None, **self._token())
        if len(heads) == 1:
            return self.keypoint_head(features)
        k_max = max(head.final_layer.out_channels for head in heads)
        out = None
        for head, r in zip(heads, rows):
            y = head(features.index_select(0, r))  # an empty selection still joins the graph
            y = F.pad(y, (0, 0, 0, 0, 0, k_max - y.shape[1]))
            if out is None:
                out = y.new_zeros((features.shape[0],) + y.shape[1:])
            out = out.index_copy(0, r, y)
        return out

    def _token(self) -> dict:
        """The knowledge token for the backbone, only when there is one (a backbone without the
        token feature need not take the argument)."""
        return {} if self.knowledge_token is None else {"extra_tokens": self.knowledge_token}

    def init_weights(self) -> None:
        self.backbone.init_weights()
        for head in self.heads:
            head.init_weights()
        if self.knowledge_token is not None:
            nn.init.trunc_normal_(self.knowledge_token, std=0.02)

    def layer_id(self, name: str) -> int:
        """Layer-wise lr decay depth of a parameter of this model (heads: after the backbone)."""
        if name.startswith("backbone."):
            return self.backbone.layer_id(name[len("backbone."):])
        return self.backbone.depth + 1


class DatasetView(nn.Module):
    """One dataset's model inside a multi-dataset one: images -> that dataset's heatmaps (its experts,
    its head, its joints). Shares the weights; for inference, evaluation and export."""

    def __init__(self, model: PoseModel, index: int):
        super().__init__()
        if not 0 <= index < model.num_datasets:
            raise ValueError(f"dataset index {index} outside [0, {model.num_datasets}): this model has "
                             f"{model.num_datasets} datasets")
        self.model, self.index = model, index
        self.joints = model.heads[min(index, len(model.heads) - 1)].final_layer.out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tags = torch.full((images.shape[0],), self.index, dtype=torch.long, device=images.device)
        return self.model(images, tags)[:, :self.joints]


def _build_vit(m: ModelConfig, grid: tuple[int, int]) -> ViT:
    experts = m.num_experts if m.backbone == "vit_moe" else 1
    return ViT(embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
               drop_path=m.drop_path, grid=grid, patch_size=m.patch_size, patch_stride=m.patch_stride,
               patch_padding=m.patch_padding, qkv_bias=m.qkv_bias, attention=m.attention,
               activation_checkpointing=m.activation_checkpointing, num_experts=experts,
               part_features=m.part_features if experts > 1 else None, attention_window=m.attention_window)


# model.backbone -> builder(resolved ModelConfig, pos_embed grid). A new backbone registers here and
# implements models.backbone.Backbone; nothing else names it.
BACKBONES: dict[str, Callable[[ModelConfig, tuple[int, int]], Backbone]] = {"vit": _build_vit, "vit_moe": _build_vit}


def build_backbone(cfg: ModelConfig) -> ViT:
    m = cfg.resolved()
    grid = tuple(m.pretrain_grid) if m.pretrain_grid else cfg.grid
    return BACKBONES[m.backbone](m, grid)


def build_head(cfg: ModelConfig, num_keypoints: int | None = None) -> nn.Module:
    m = cfg.resolved()
    k = num_keypoints or m.num_keypoints
    if m.head == "classic":
        return ClassicHead(m.embed_dim, k, m.head_channels, feature_stride=m.patch_stride)
    return SimpleHead(m.embed_dim, k, feature_stride=m.patch_stride)


def build_pose_model(cfg: ModelConfig, device: str | torch.device | None = None) -> PoseModel:
    """Build the model; `device="meta"` allocates nothing (count or shard a G model first)."""
    m = cfg.resolved()
    counts = list(m.head_keypoints or [m.num_keypoints])
    with torch.device(device) if device is not None else contextlib.nullcontext():
        backbone = build_backbone(cfg)
        return PoseModel(backbone, build_head(cfg, counts[0]), [build_head(cfg, k) for k in counts[1:]],
                         knowledge_token=m.knowledge_token)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_flops_per_image(cfg: ModelConfig) -> float:
    """The backbone's forward FLOPs per image (2 x matmul weights x tokens + attention, experts
    included: each token meets one). The heads are small next to the backbone at every preset and are left out."""
    return build_backbone_meta(cfg).forward_flops(cfg.grid)


def build_backbone_meta(cfg: ModelConfig) -> ViT:
    with torch.device("meta"):
        return build_backbone(cfg)
