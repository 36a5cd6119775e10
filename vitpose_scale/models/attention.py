"""One attention entry point with interchangeable implementations.

All implementations compute softmax(q k^T / sqrt(d)) v on (batch, heads,
tokens, head_dim) tensors; `plain` is the official ViTPose math, `sdpa` is
torch's fused kernel dispatcher, `triton` is our own fused kernel.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)
IMPLEMENTATIONS = ("plain", "sdpa", "triton")
_warned_fallback: set[str] = set()  # reasons already logged: one note each, not one per layer and step


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    attn = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)
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
    if reason not in _warned_fallback:
        log.warning("model.attention=triton is unavailable (%s); using sdpa instead", reason)
        _warned_fallback.add(reason)
    return None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "sdpa") -> torch.Tensor:
    if impl == "plain":
        return plain_attention(q, k, v)
    if impl == "triton":
        if q.device.type != "meta":
            kernel = _triton_or_fallback(q, k, v)
            if kernel is not None:
                return kernel(q, k, v)  # strided views of qkv are fine: only the head dim must be unit-stride
    elif impl != "sdpa":
        raise ValueError(f"attention implementation {impl!r}: expected one of {IMPLEMENTATIONS}")
    return F.scaled_dot_product_attention(q, k, v)


class Attention(nn.Module):
    """Multi-head self-attention; parameter names match the official checkpoints."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, impl: str = "sdpa"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads {num_heads} does not divide dim {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.impl = impl
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2], self.impl)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


__all__ = ["Attention", "attention", "plain_attention", "IMPLEMENTATIONS"]
