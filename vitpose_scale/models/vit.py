"""Plain ViT backbone of ViTPose. No distribution code lives here."""
from __future__ import annotations

import dataclasses

import torch
from timm.layers import DropPath, Mlp, resample_abs_pos_embed, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitpose_scale.models.attention import Attention, WindowSpec
from vitpose_scale.models.init import init_is_deferred


class PatchEmbed(nn.Module):
    """Conv patchify; padding 2 (stride 16) or 4 (stride 8, overlapping) as the official code."""

    def __init__(self, dim: int, patch_size: int = 16, stride: int = 16, padding: int = 2):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


Routes = tuple[torch.Tensor, ...]  # per dataset: the batch rows of its samples (see `routes`)


def routes(dataset_index: torch.Tensor, count: int, what: str = "dataset index") -> Routes:
    """The batch rows of each dataset 0..count-1, computed once per forward (one host sync for the
    whole model, not one per block and expert)."""
    index = dataset_index.reshape(-1).long()
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= count):
        bad = sorted({int(v) for v in index.tolist() if not 0 <= v < count})
        raise ValueError(f"dataset_index: {bad} outside [0, {count}): this model has {count} {what}s")
    sizes = torch.bincount(index, minlength=count).tolist()
    return tuple(torch.argsort(index, stable=True).split(sizes))


class MoEMlp(nn.Module):
    """ViTPose++'s feed-forward: fc1 -> GELU, then a shared `fc2` to dim - part_features outputs and, for
    the last part_features outputs, the expert of the sample's dataset (official vit_moe.py `MoEMlp`,
    same keys: mlp.fc1, mlp.fc2, mlp.experts.K).

    Each expert runs on its own samples' rows only (the official code runs every expert on every
    sample and masks: the same numbers, E times the work). An expert with no sample in the batch
    still runs on zero rows, so every parameter is in the graph (zero gradient: no DDP
    unused-parameter failure, ZeRO-3's module hooks fire)."""

    def __init__(self, dim: int, hidden: int, num_experts: int, part_features: int):
        super().__init__()
        if not 0 < part_features < dim:
            raise ValueError(f"model.part_features: got {part_features}, expected 0 < part_features < {dim} (the width)")
        self.part_features = part_features
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim - part_features)
        self.experts = nn.ModuleList(nn.Linear(hidden, part_features) for _ in range(num_experts))

    def forward(self, x: torch.Tensor, rows: Routes) -> torch.Tensor:
        h = self.act(self.fc1(x))
        part = h.new_zeros(*h.shape[:-1], self.part_features)
        for expert, r in zip(self.experts, rows):
            part = part.index_copy(0, r, expert(h.index_select(0, r)))
        return torch.cat([self.fc2(h), part], dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block (LayerNorm eps 1e-6); a mixture-of-experts feed-forward when
    num_experts > 1 (ViTPose++); window attention over the token grid with `attention_window`."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, qkv_bias: bool, drop_path: float, attn_impl: str,
                 num_experts: int = 1, part_features: int | None = None,
                 attention_window: WindowSpec | dict | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, impl=attn_impl, window=attention_window)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.moe = num_experts > 1
        # fc1 -> GELU -> fc2: the official keys mlp.fc1/mlp.fc2 (+ mlp.experts.K)
        self.mlp = MoEMlp(dim, mlp_hidden, num_experts, part_features) if self.moe else Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, rows: Routes | None = None, *,
                grid: tuple[int, int] | None = None) -> torch.Tensor:
        """`grid`: the (hp, wp) token grid of x, needed by window attention only."""
        x = x + self.drop_path(self.attn(self.norm1(x), grid=grid))
        h = self.norm2(x)
        return x + self.drop_path(self.mlp(h, rows) if self.moe else self.mlp(h))


def resize_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Resample the grid part of a (1, 1 + H*W, C) pos_embed as the official ViTPose does
    (mmcv_custom/checkpoint.py): the extra token kept, bicubic with align_corners=False and
    no antialiasing (timm's default antialias=True would change downsampled tables)."""
    return resample_abs_pos_embed(pos_embed, new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=1,
                                  interpolation="bicubic", antialias=False, align_corners=False)


class ViT(nn.Module):
    def __init__(self, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path: float,
                 grid: tuple[int, int], patch_size: int = 16, patch_stride: int = 16, patch_padding: int = 2,
                 qkv_bias: bool = True, attention: str = "sdpa", activation_checkpointing: bool = False,
                 num_experts: int = 1, part_features: int | None = None,
                 attention_window: WindowSpec | dict | None = None):
        super().__init__()
        self.embed_dim, self.depth, self.grid = embed_dim, depth, tuple(grid)
        self.num_experts = num_experts
        self.patch_embed = PatchEmbed(embed_dim, patch_size, patch_stride, patch_padding)
        # One extra token's worth of pos_embed, as in the MAE/official checkpoints: no cls
        # token is used, its embedding is added to every patch (docs/reference.md §1).
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], embed_dim))
        mlp_hidden = int(round(embed_dim * mlp_ratio))
        # Linear 0..drop_path as the official torch.linspace(0, drop_path, depth) (0 for one block);
        # plain floats so this works under a meta-device context.
        rates = [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_hidden, qkv_bias, rate, attention, num_experts, part_features)
            for rate in rates)
        self.set_attention_window(attention_window)
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

    def set_attention_window(self, window: WindowSpec | dict | None) -> None:
        """Window attention in every block (None: full attention). A shift alternates as in Swin: even
        blocks attend in the regular windows, odd blocks in the shifted ones (the same shift in every
        block would only move the partition: no token would ever see past its window)."""
        spec = WindowSpec.parse(window)
        self.attention_window = spec
        for i, blk in enumerate(self.blocks):
            blk.attn.window = spec if spec is None or i % 2 else dataclasses.replace(spec, shift=False)

    # ---- the backbone interface: what training, sharding, planning and export ask of a backbone --
    def layer_id(self, name: str) -> int:
        """Layer-wise lr decay depth of a parameter (name relative to the backbone): 0 for the
        embeddings, i + 1 for block i, depth + 1 after the blocks."""
        if name.startswith(("patch_embed", "pos_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1

    def parameter_part(self, name: str) -> str:
        """train.freeze's part of a parameter (name relative to the backbone): "attention" (a block's
        attn and norm1, the official freeze_attn), "ffn" (a block's mlp, experts included, and norm2)
        or "other" (embeddings, last_norm; models/freeze.py)."""
        if name.startswith("blocks."):
            sub = name.split(".")[2]
            if sub in ("attn", "norm1"):
                return "attention"
            if sub in ("mlp", "norm2"):
                return "ffn"
        return "other"

    def shard_units(self) -> list[nn.Module]:
        """The modules FSDP2 shards (and gathers) one at a time."""
        return list(self.blocks)

    def attention_modules(self) -> list[Attention]:
        return [blk.attn for blk in self.blocks]

    def forward_flops(self, grid: tuple[int, int]) -> float:
        """Forward FLOPs per image at this token grid: 2 x matmul weights x tokens (each token meets
        the shared fc2 and one expert, so an MoE block costs what a plain block costs) +
        4 x depth x tokens^2 x dim (attention) + the patch embedding. Window attention: each query
        meets its window's keys (+ the pooled tokens, which also pass the qkv Linear) instead of all."""
        tokens = grid[0] * grid[1]
        keys, pooled = tokens, 0
        if self.attention_window is not None:
            pooled = self.attention_window.pooled_tokens(grid)
            keys = self.attention_window.size[0] * self.attention_window.size[1] + pooled
        per_token = 0
        for blk in self.blocks:
            per_token += blk.attn.qkv.weight.numel() + blk.attn.proj.weight.numel() + blk.mlp.fc1.weight.numel()
            per_token += blk.mlp.fc2.weight.numel()
            if blk.moe:
                per_token += blk.mlp.experts[0].weight.numel()
        patch = self.patch_embed.proj.weight.numel()
        pooled_qkv = 2.0 * pooled * sum(blk.attn.qkv.weight.numel() for blk in self.blocks)
        return 2.0 * (per_token + patch) * tokens + 4.0 * self.depth * tokens * keys * self.embed_dim + pooled_qkv

    def forward(self, x: torch.Tensor, rows: Routes | None = None,
                extra_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Images -> (B, C, H/stride, W/stride) features; `rows` (see `routes`) picks each sample's
        expert and is required when the blocks have experts. `extra_tokens` (1 or B, T, C): tokens
        appended to the visual tokens (after the position embedding, which they do not get) that
        every block attends with and to, dropped after the last norm -- the paper's knowledge token."""
        if extra_tokens is not None and self.attention_window is not None:
            raise ValueError("extra tokens (the knowledge token) with model.attention_window: a token outside the grid "
                             "has no place in a window; use full attention (model.attention_window null)")
        if self.num_experts > 1 and rows is None:
            raise ValueError(f"this backbone has {self.num_experts} experts per block: a dataset index per "
                             f"sample is required")
        x = self.patch_embed(x)
        b, c, hp, wp = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = resize_pos_embed(self.pos_embed, self.grid, (hp, wp))
        x = x + pos[:, 1:] + pos[:, :1]
        if extra_tokens is not None:
            x = torch.cat([x, extra_tokens.to(x.dtype).expand(b, -1, -1)], dim=1)
        for blk in self.blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                # Non-reentrant: correct gradients with ZeRO-3/FSDP hooks and
                # inputs that do not require grad (docs/reference.md §6).
                x = checkpoint(blk, x, rows, grid=(hp, wp), use_reentrant=False)
            else:
                x = blk(x, rows, grid=(hp, wp))
        x = self.last_norm(x)[:, :hp * wp]
        return x.transpose(1, 2).reshape(b, c, hp, wp)
