"""Plain ViT backbone of ViTPose. No distribution code lives here."""
from __future__ import annotations

import torch
from timm.layers import DropPath, Mlp, resample_abs_pos_embed, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitpose_scale.models.attention import Attention
from vitpose_scale.models.init import init_is_deferred


class PatchEmbed(nn.Module):
    """Conv patchify; padding 2 (stride 16) or 4 (stride 8, overlapping) as the official code."""

    def __init__(self, dim: int, patch_size: int = 16, stride: int = 16, padding: int = 2):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, qkv_bias: bool, drop_path: float, attn_impl: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, impl=attn_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)  # fc1 -> GELU -> fc2: the official keys mlp.fc1/mlp.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def resize_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Resample the grid part of a (1, 1 + H*W, C) pos_embed as the official ViTPose does
    (mmcv_custom/checkpoint.py): the extra token kept, bicubic with align_corners=False and
    no antialiasing (timm's default antialias=True would change downsampled tables)."""
    return resample_abs_pos_embed(pos_embed, new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=1,
                                  interpolation="bicubic", antialias=False, align_corners=False)


class ViT(nn.Module):
    def __init__(self, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path: float,
                 grid: tuple[int, int], patch_size: int = 16, patch_stride: int = 16, patch_padding: int = 2,
                 qkv_bias: bool = True, attention: str = "sdpa", activation_checkpointing: bool = False):
        super().__init__()
        self.embed_dim, self.depth, self.grid = embed_dim, depth, tuple(grid)
        self.patch_embed = PatchEmbed(embed_dim, patch_size, patch_stride, patch_padding)
        # One extra token's worth of pos_embed, as in the MAE/official checkpoints: no cls
        # token is used, its embedding is added to every patch (REFERENCE §1).
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], embed_dim))
        mlp_hidden = int(round(embed_dim * mlp_ratio))
        # Linear 0..drop_path as the official torch.linspace(0, drop_path, depth) (0 for one block);
        # plain floats so this works under a meta-device context.
        rates = [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_hidden, qkv_bias, rate, attention) for rate in rates)
        self.last_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.activation_checkpointing = activation_checkpointing
        if not init_is_deferred():
            self.init_weights()

    def init_weights(self) -> None:
        """Every parameter drawn here, so the weights depend only on the RNG state at this call
        (not on how construction consumed it: zero.Init, meta device)."""
        self.patch_embed.proj.reset_parameters()
        trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_attention(self, impl: str) -> None:
        for blk in self.blocks:
            blk.attn.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        b, c, hp, wp = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = resize_pos_embed(self.pos_embed, self.grid, (hp, wp))
        x = x + pos[:, 1:] + pos[:, :1]
        for blk in self.blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                # Non-reentrant: correct gradients with ZeRO-3/FSDP hooks and
                # inputs that do not require grad (REFERENCE §6).
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        x = self.last_norm(x)
        return x.transpose(1, 2).reshape(b, c, hp, wp)
