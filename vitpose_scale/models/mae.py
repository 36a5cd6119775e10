"""Masked autoencoder (MAE, He et al. 2021) around the ViTPose backbone, for pretraining (docs/reference.md §4).

The encoder is the pose model's own :class:`ViT` stored as ``backbone``, so its
keys (``backbone.patch_embed.*``, ``backbone.pos_embed``, ``backbone.blocks.i.*``)
are the ViTPose keys: an exported MAE initialises a pose model through
``models.mae_transfer`` (which drops ``mask_token``, ``decoder*`` and
``backbone.last_norm``), and the engine's FSDP wrapping (``model.backbone.blocks``)
and optimizer naming work unchanged.

Choices:

* Patches do not overlap: the MAE's ViT is built with stride = kernel = patch
  size and padding 0, so every token is exactly one target patch. ViTPose's
  patch embed pads by 2; at fine-tuning the same 16x16 kernel then runs on a
  grid shifted by 2 pixels (the same shapes at 256x192: 16x12 tokens), which is
  how the official ViTPose uses MAE ImageNet weights. Other input sizes are
  handled at transfer (bicubic pos_embed resize, patch-kernel resampling).
* Position embeddings are fixed 2D sine-cosine, as in MAE, for the encoder
  (``backbone.pos_embed``, frozen; its extra-token row is zero, and it is added
  exactly as the pose model does: tokens + pos[:, 1:] + pos[:, :1]) and the
  decoder (``decoder_pos_embed``, frozen). Fine-tuning starts from the sine-cosine
  table and learns it.
* No cls token: the pose model has none, so the encoder sees the visible patch
  tokens only.
* Drop path is 0 unless ``model.drop_path`` is set: the presets' values are
  fine-tuning values; MAE pretrains without stochastic depth.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitpose_scale.models.init import init_is_deferred
from vitpose_scale.models.vit import ViT, Block


def sincos_pos_embed(dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """(rows*cols, dim) fixed 2D sine-cosine table: half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"sine-cosine position embedding needs a width divisible by 4, got {dim}")
    rows, cols = grid
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)

    def encode(pos: np.ndarray) -> np.ndarray:  # (n,) -> (n, dim/2)
        angles = pos[:, None] * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    yy, xx = np.meshgrid(np.arange(rows, dtype=np.float64), np.arange(cols, dtype=np.float64), indexing="ij")
    # Width first, then height: the order of the official MAE table.
    table = np.concatenate([encode(xx.reshape(-1)), encode(yy.reshape(-1))], axis=1)
    return torch.from_numpy(table).float()


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, L, patch*patch*3); patches row-major, pixels in (row, col, channel) order (as MAE)."""
    b, c, h, w = images.shape
    hp, wp = h // patch, w // patch
    x = images.reshape(b, c, hp, patch, wp, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, hp * wp, patch * patch * c)


def unpatchify(patches: torch.Tensor, patch: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify` (for looking at reconstructions)."""
    b = patches.shape[0]
    hp, wp = grid
    x = patches.reshape(b, hp, wp, patch, patch, -1)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, -1, hp * patch, wp * patch)


def random_masking(batch: int, num_tokens: int, mask_ratio: float, device) -> tuple:
    """Per-sample random masking by sorting uniform noise (MAE).

    Returns ``ids_keep`` (B, keep), ``ids_restore`` (B, L) and ``mask`` (B, L) with
    1 = removed, 0 = kept, in the original patch order. ``keep = round(L * (1 - ratio))``.
    """
    keep = int(round(num_tokens * (1.0 - mask_ratio)))
    keep = min(max(keep, 1), num_tokens - 1)  # at least one visible and one masked patch
    noise = torch.rand(batch, num_tokens, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, num_tokens, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :keep], ids_restore, mask


class MaskedAutoencoder(nn.Module):
    """images (B, 3, H, W) -> (loss, pred (B, L, p*p*3), mask (B, L), 1 = masked)."""

    def __init__(self, backbone: ViT, patch_size: int, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, mask_ratio: float = 0.75, norm_pix_loss: bool = True,
                 attention: str = "sdpa"):
        super().__init__()
        if backbone.patch_embed.proj.stride[0] != patch_size or backbone.patch_embed.proj.padding[0] != 0:
            raise ValueError("the MAE encoder needs non-overlapping patches: stride = patch size, padding 0")
        self.backbone = backbone
        self.patch_size = patch_size
        self.grid = tuple(backbone.grid)
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        num_tokens = self.grid[0] * self.grid[1]
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_embed = nn.Linear(backbone.embed_dim, decoder_dim)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_tokens, decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, 4 * decoder_dim, True, 0.0, attention) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size * patch_size * 3)
        self.backbone.pos_embed.requires_grad_(False)  # fixed sine-cosine during pretraining
        if not init_is_deferred():
            self.init_weights()

    @property
    def activation_checkpointing(self) -> bool:
        return self.backbone.activation_checkpointing

    def init_weights(self) -> None:
        """MAE's initialisation: xavier-uniform Linears and patch kernel, sine-cosine tables, N(0, .02) mask token."""
        self.backbone.init_weights()
        with torch.no_grad():
            enc = sincos_pos_embed(self.backbone.embed_dim, self.grid)
            self.backbone.pos_embed.copy_(torch.cat([enc.new_zeros(1, enc.shape[1]), enc])[None])
            self.decoder_pos_embed.copy_(sincos_pos_embed(self.decoder_pos_embed.shape[-1], self.grid)[None])
        w = self.backbone.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear over the flattened patch
        nn.init.zeros_(self.backbone.patch_embed.proj.bias)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _run(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for blk in blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)  # non-reentrant: safe under ZeRO-3/FSDP
            else:
                x = blk(x)
        return x

    def parameters_used_in_own_forward(self) -> list[nn.Parameter]:
        """Read here rather than inside the submodule that owns it (sharding wrappers must gather it)."""
        return [self.backbone.pos_embed]

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Visible tokens only: (latent (B, keep, C), mask (B, L), ids_restore (B, L))."""
        x = self.backbone.patch_embed(images).flatten(2).transpose(1, 2)  # (B, L, C)
        b, n, c = x.shape
        if n != self.grid[0] * self.grid[1]:
            raise ValueError(f"images {tuple(images.shape[-2:])} give {n} patches; the MAE was built for a "
                             f"{self.grid[0]}x{self.grid[1]} grid")
        pos = self.backbone.pos_embed
        x = x + pos[:, 1:] + pos[:, :1]  # the pose model's use of the extra token
        ids_keep, ids_restore, mask = random_masking(b, n, self.mask_ratio, x.device)
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, c))
        x = self._run(self.backbone.blocks, x)
        return self.backbone.last_norm(x), mask, ids_restore

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        b, keep, d = x.shape
        n = ids_restore.shape[1]
        x = torch.cat([x, self.mask_token.to(x.dtype).expand(b, n - keep, d)], dim=1)
        x = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))  # back to patch order
        x = x + self.decoder_pos_embed.to(x.dtype)
        x = self.decoder_norm(self._run(self.decoder_blocks, x))
        return self.decoder_pred(x)

    def loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the masked patches, each target patch normalised by its own mean/std; fp32."""
        target = patchify(images.float(), self.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as the official MAE
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent, mask, ids_restore = self.encode(images)
        pred = self.decode(latent, ids_restore)
        return self.loss(images, pred, mask), pred, mask


def mae_encoder_config(cfg):
    """The ModelConfig of the MAE's encoder: non-overlapping patches, padding 0, drop path 0 unless set."""
    m = cfg.model
    return dataclasses.replace(m.resolved(), patch_stride=m.patch_size, patch_padding=0, pretrain_grid=None,
                               drop_path=m.drop_path if m.drop_path is not None else 0.0)


def build_mae(cfg) -> MaskedAutoencoder:
    """MAE from the full Config: encoder = cfg.model (preset, image_size, patch size), decoder = cfg.mae."""
    m = mae_encoder_config(cfg)
    h, w = m.image_size
    if h % m.patch_size or w % m.patch_size:
        raise ValueError(f"model.image_size {m.image_size} is not a multiple of model.patch_size {m.patch_size}")
    grid = (h // m.patch_size, w // m.patch_size)
    backbone = ViT(embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                   drop_path=m.drop_path, grid=grid, patch_size=m.patch_size, patch_stride=m.patch_size,
                   patch_padding=0, qkv_bias=m.qkv_bias, attention=m.attention,
                   activation_checkpointing=m.activation_checkpointing)
    a = cfg.mae
    return MaskedAutoencoder(backbone, m.patch_size, a.decoder_dim, a.decoder_depth, a.decoder_heads,
                             a.mask_ratio, a.norm_pix_loss, m.attention)


def mae_forward_flops_per_image(cfg) -> float:
    """Forward FLOPs (docs/reference.md §6 formula): encoder on the visible tokens, decoder on all of them."""
    m = mae_encoder_config(cfg)
    a = cfg.mae
    tokens = (m.image_size[0] // m.patch_size) * (m.image_size[1] // m.patch_size)
    keep = int(round(tokens * (1.0 - a.mask_ratio)))
    hidden = int(round(m.embed_dim * m.mlp_ratio))
    enc = 2.0 * m.depth * (4 * m.embed_dim ** 2 + 2 * m.embed_dim * hidden) * keep \
        + 4.0 * m.depth * keep * keep * m.embed_dim + 2.0 * 3 * m.patch_size ** 2 * m.embed_dim * tokens
    d = a.decoder_dim
    dec = 2.0 * a.decoder_depth * 12 * d * d * tokens + 4.0 * a.decoder_depth * tokens * tokens * d \
        + 2.0 * (m.embed_dim * d * keep + d * 3 * m.patch_size ** 2 * tokens)
    return enc + dec


__all__ = ["MaskedAutoencoder", "build_mae", "patchify", "unpatchify", "random_masking", "sincos_pos_embed",
           "mae_encoder_config", "mae_forward_flops_per_image"]
