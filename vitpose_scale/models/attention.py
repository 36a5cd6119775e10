"""One attention entry point with interchangeable implementations.

All implementations compute softmax(q k^T / sqrt(d)) v on (batch, heads,
tokens, head_dim) tensors; `plain` is the official ViTPose math, `sdpa` is
torch's fused kernel dispatcher, `triton` is our own fused kernel.

`Attention` also runs the paper's window variants (model.attention_window, "attention type" ablation):
attention inside non-overlapping windows of the token grid, optionally Swin-style shifted and/or
with the keys/values of each window extended by avg-pooled tokens of the whole map (`WindowSpec`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)
IMPLEMENTATIONS = ("plain", "sdpa", "triton")
_warned_fallback: set[str] = set()  # reasons already logged: one note each, not one per layer and step


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """`mask`: bool, broadcastable to the scores (..., Lq, Lk), True where a query may attend."""
    attn = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)
    if mask is not None:
        attn = attn.masked_fill(~mask, float("-inf"))  # every row keeps its own token: never all -inf
    return attn.softmax(dim=-1) @ v


def _triton_or_fallback(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """The Triton kernel if it can run on these tensors, else None (after saying why, once).

    Asked per call, not per process: the same model may run on the GPU and, for inference or
    export, on the CPU of that GPU machine, where only SDPA can run it; and a GPU whose shared
    memory holds none of the kernel's tile configurations (see flash_attn.unsupported_reason)
    falls back the same way."""
    from vitpose_scale.kernels import flash_attn

    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    reason = flash_attn.unsupported_reason(q, k, v, needs_grad=needs_grad)
    if reason is None:
        return flash_attn.flash_attention
    _note_once(reason)
    return None


def _note_once(reason: str) -> None:
    if reason not in _warned_fallback:
        log.warning("model.attention=triton is unavailable (%s); using sdpa instead", reason)
        _warned_fallback.add(reason)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "sdpa",
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """`mask` (bool, True = attend, broadcastable to (..., Lq, Lk)): plain writes it into the scores,
    sdpa takes it as attn_mask; the Triton kernel has none, so a masked call runs on sdpa."""
    if impl == "plain":
        return plain_attention(q, k, v, mask)
    if impl == "triton" and mask is not None:
        _note_once("the Triton kernel takes no attention mask (shifted windows)")
    elif impl == "triton":
        if q.device.type != "meta":
            kernel = _triton_or_fallback(q, k, v)
            if kernel is not None:
                return kernel(q, k, v)  # strided views of qkv are fine: only the head dim must be unit-stride
    elif impl != "sdpa":
        raise ValueError(f"attention implementation {impl!r}: expected one of {IMPLEMENTATIONS}")
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@dataclass(frozen=True)
class WindowSpec:
    """model.attention_window, normalised: window (rows, cols) in tokens, Swin shift, pooled-token stride."""
    size: tuple[int, int]
    shift: bool = False
    pool: int | None = None

    @classmethod
    def parse(cls, value: "WindowSpec | dict | None") -> "WindowSpec | None":
        if value is None or isinstance(value, WindowSpec):
            return value
        size = value["size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        return cls((int(size[0]), int(size[1])), bool(value.get("shift", False)), value.get("pool"))

    def shifts(self, grid: tuple[int, int]) -> tuple[int, int]:
        """Half a window on each axis the window does not already span (Swin: no shift there)."""
        if not self.shift:
            return 0, 0
        return tuple(w // 2 if w < g else 0 for w, g in zip(self.size, grid))

    def check(self, grid: tuple[int, int]) -> None:
        """Windows and pooling must tile this grid exactly (there is no padding rule)."""
        (hp, wp), (wh, ww) = grid, self.size
        if hp % wh or wp % ww:
            raise ValueError(f"attention window {wh}x{ww} does not tile the {hp}x{wp} token grid (no padding rule): "
                             f"expected a window dividing both axes")
        if self.pool and (hp % self.pool or wp % self.pool):
            raise ValueError(f"attention_window.pool {self.pool} does not divide the {hp}x{wp} token grid")

    def pooled_tokens(self, grid: tuple[int, int]) -> int:
        return (grid[0] // self.pool) * (grid[1] // self.pool) if self.pool else 0


def shift_mask(grid: tuple[int, int], size: tuple[int, int], shifts: tuple[int, int], pooled: int = 0,
               device: torch.device | str | None = None) -> torch.Tensor:
    """(windows, L, L + pooled) bool, True where a query may attend, for windows of the grid rolled by
    -shifts (Swin): tokens from different regions of the unrolled map (the wrapped-around strips)
    never meet; pooled tokens are seen by every query."""
    (hp, wp), (wh, ww), (sh, sw) = grid, size, shifts
    region = torch.zeros(hp, wp, dtype=torch.long, device=device)
    rows = [slice(0, hp - wh), slice(hp - wh, hp - sh), slice(hp - sh, hp)] if sh else [slice(0, hp)]
    cols = [slice(0, wp - ww), slice(wp - ww, wp - sw), slice(wp - sw, wp)] if sw else [slice(0, wp)]
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            region[r, c] = i * len(cols) + j
    labels = region.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    mask = labels[:, :, None] == labels[:, None, :]
    if pooled:
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], wh * ww, pooled)], dim=2)
    return mask


class Attention(nn.Module):
    """Multi-head self-attention; parameter names match the official checkpoints.

    With `window` (WindowSpec) the tokens of a (hp, wp) grid attend inside windows; the window
    variants add no parameter, so checkpoints (official ones included) load unchanged."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, impl: str = "sdpa",
                 window: WindowSpec | dict | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads {num_heads} does not divide dim {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.impl = impl
        self.window = WindowSpec.parse(window)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        if self.window is not None:
            return self._windowed(x, grid)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2], self.impl)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def _windowed(self, x: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
        """Partition -> attention per window (same backends) -> reverse.

        Shift: the qkv map is rolled by -half a window (Swin), attended under `shift_mask`, the output
        rolled back. Pool: the normed tokens x (this module's input) are averaged over pool x pool
        patches (kernel = stride = pool, the whole map, unshifted) and projected by this qkv Linear;
        their keys/values are appended to every window's (the queries of the pooled tokens unused)."""
        b, n, c = x.shape
        if grid is None:
            raise ValueError("windowed attention needs the token grid (hp, wp)")
        hp, wp = grid
        if n != hp * wp:
            raise ValueError(f"windowed attention: {n} tokens for a {hp}x{wp} grid; extra tokens (the knowledge "
                             f"token) have no place in a window: use model.attention_window null with them")
        spec = self.window
        spec.check(grid)
        (wh, ww), (sh, sw) = spec.size, spec.shifts(grid)
        heads, d, nh, nw = self.num_heads, self.head_dim, hp // wh, wp // ww
        windows, length = nh * nw, wh * ww
        pooled, impl = spec.pooled_tokens(grid), self.impl
        if pooled and impl == "triton":
            _note_once("the Triton kernel needs as many keys as queries (pooling windows)")
            impl = "sdpa"
        qkv = self.qkv(x).view(b, hp, wp, 3 * c)
        if sh or sw:
            qkv = torch.roll(qkv, shifts=(-sh, -sw), dims=(1, 2))
        # (b, nh, wh, nw, ww, 3, heads, d) -> (3, b, nh, nw, heads, wh, ww, d): one copy each of q, k, v
        parts = qkv.view(b, nh, wh, nw, ww, 3, heads, d).permute(5, 0, 1, 3, 6, 2, 4, 7)
        q, k, v = (parts[i].reshape(b * windows, heads, length, d) for i in range(3))
        if pooled:
            # channels-last view of x (no copy): avg_pool2d keeps only x, which qkv saves already
            grid_map = x.view(b, hp, wp, c).permute(0, 3, 1, 2)
            tokens = F.avg_pool2d(grid_map, spec.pool).flatten(2).transpose(1, 2)
            kv = self.qkv(tokens)[..., c:].view(b, 1, pooled, 2, heads, d).permute(3, 0, 1, 4, 2, 5)
            kv = kv.expand(2, b, windows, heads, pooled, d)
            k = torch.cat([k.view(b, windows, heads, length, d), kv[0]], dim=3).view(b * windows, heads, -1, d)
            v = torch.cat([v.view(b, windows, heads, length, d), kv[1]], dim=3).view(b * windows, heads, -1, d)
        if sh or sw:
            mask = shift_mask(grid, spec.size, (sh, sw), pooled, x.device)
            if impl == "plain":  # the (windows, L, S) mask broadcast over the batch: not copied per image
                view = lambda t: t.view(b, windows, heads, t.shape[-2], d)  # noqa: E731
                out = attention(view(q), view(k), view(v), "plain", mask[:, None]).view(b * windows, heads, length, d)
            else:  # sdpa's 4-d fused kernels take a (B, 1, L, S) mask: one copy per image
                out = attention(q, k, v, impl, mask.repeat(b, 1, 1)[:, None])
        else:
            out = attention(q, k, v, impl)
        out = out.view(b, nh, nw, heads, wh, ww, d).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, c)
        if sh or sw:
            out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
        return self.proj(out.reshape(b, n, c))


__all__ = ["Attention", "WindowSpec", "attention", "plain_attention", "shift_mask", "IMPLEMENTATIONS"]
