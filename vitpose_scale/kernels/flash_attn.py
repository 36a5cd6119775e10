"""Fused (FlashAttention-2 style) self-attention in Triton, forward and backward.

Shapes follow ViTPose: q, k, v are (B, H, N, D) with N = number of patch tokens
(192 for 256x192 at stride 16, 768 at stride 8, 972 for 576x432) and D the head
dim (64 for ViT-B, 80 for ViT-H, 88 for ViT-G).  Neither N nor D needs to be a
power of two: the ragged last token tile is masked and the head dim is padded
inside the kernel to ``BLOCK_D = next_power_of_2(D)`` with masked loads/stores.

The N x N score matrix never touches HBM: the forward keeps an online softmax
per query tile and stores only the per-row log-sum-exp (base 2); the backward
recomputes P from q, k and that LSE.

Triton is imported lazily/guarded so that importing this module never fails;
use :func:`triton_available` to ask whether the kernels can run here.
"""

from __future__ import annotations

import math
import os

import torch

try:  # pragma: no cover - exercised implicitly
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken install raising something else
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = ["FlashAttentionFn", "flash_attention", "triton_available"]

_LOG2E = 1.4426950408889634


def _env_interpret() -> bool:
    # Same truthy spellings triton.knobs accepts.
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def _imported_interpret() -> bool | None:
    """Mode triton was imported in (None if unknown).

    Triton jits its own tl.* helpers (tl.cdiv, tl.max, ...) at import time, so
    interpreted vs compiled is fixed per process then; flipping TRITON_INTERPRET
    later breaks kernels in either direction.
    """
    if tl is None:
        return None
    try:
        from triton.runtime.interpreter import InterpretedFunction

        return isinstance(tl.standard.cdiv, InterpretedFunction)
    except Exception:
        return None


def _interpreting() -> bool:
    baked = _imported_interpret()
    return _env_interpret() if baked is None else baked


def triton_available() -> tuple[bool, str]:
    """(ok, reason). ok when triton imports and there is a CUDA device or the interpreter is on."""
    if triton is None:
        return False, f"triton is not importable ({_TRITON_IMPORT_ERROR})"
    baked = _imported_interpret()
    if baked is not None and baked != _env_interpret():
        return False, (f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')!r} now, but triton was "
                       f"imported {'with' if baked else 'without'} the interpreter; set it before "
                       "anything imports triton")
    if _interpreting():
        return True, f"triton {triton.__version__} interpreter (TRITON_INTERPRET=1, CPU tensors)"
    if not torch.cuda.is_available():
        return False, ("no CUDA device; set TRITON_INTERPRET=1 (before triton is imported) to run "
                       "the Triton kernels on CPU through the (slow) interpreter")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        # bf16 tensor-core dots (what training uses) need Ampere or newer.
        return False, f"GPU sm_{major}{minor} is older than sm_80 (bf16 tl.dot unsupported)"
    return True, f"triton {triton.__version__} on {torch.cuda.get_device_name()}"


# ----------------------------------------------------------------------------
# Kernels.  Defined as plain functions and jitted on first use (see _kernels()),
# so importing this module costs nothing and needs no triton.
#
# UPCAST: the Triton 3.x interpreter stores bf16 as uint16 and tl.dot then
# multiplies the raw bits, which is silently wrong.  In the interpreter we
# therefore cast bf16 tiles to fp32 right before each dot (after rounding P/dS
# to bf16 first, so the numerics still mimic the GPU path).  On a GPU UPCAST is
# False and the dots run natively on bf16/fp16 tensor cores.
#
# PREC: "ieee" for fp32 inputs (tf32 would cost ~3 decimal digits and break
# fp32 parity with the reference); ignored for 16-bit inputs.
# ----------------------------------------------------------------------------
if tl is not None:

    def _attn_fwd(
        Q, K, V, O, LSE,
        s_qb, s_qh, s_qn,
        s_kb, s_kh, s_kn,
        s_vb, s_vh, s_vn,
        s_ob, s_oh, s_on,
        H, N, D, qk_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr, PREC: tl.constexpr,
    ):
        # 1-D grid: axis-1 grid limit (65535) would otherwise cap B*H.
        pid = tl.program_id(0)
        num_m = tl.cdiv(N, BLOCK_M)
        pid_m = pid % num_m
        pid_bh = pid // num_m
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < N
        d_mask = offs_d < D

        q_base = Q + b * s_qb + h * s_qh
        k_base = K + b * s_kb + h * s_kh
        v_base = V + b * s_vb + h * s_vh

        q = tl.load(q_base + offs_m[:, None] * s_qn + offs_d[None, :],
                    mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        for start_n in range(0, N, BLOCK_N):
            offs_n = start_n + offs_n0
            n_mask = offs_n < N
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(k_base + offs_n[:, None] * s_kn + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_base + offs_n[:, None] * s_vn + offs_d[None, :], mask=kv_mask, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            # Scores in the log2 domain so the softmax can use exp2.
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            s = tl.where(n_mask[None, :], s, float("-inf"))
            # Every tile holds >= 1 valid key, so m_new is finite from the first tile on.
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            p_op = p.to(V.dtype.element_ty)
            if UPCAST:
                p_op = p_op.to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p_op, v, input_precision=PREC)
            m_i = m_new

        acc = acc / l_i[:, None]
        o_base = O + b * s_ob + h * s_oh
        tl.store(o_base + offs_m[:, None] * s_on + offs_d[None, :], acc.to(O.dtype.element_ty),
                 mask=m_mask[:, None] & d_mask[None, :])
        tl.store(LSE + pid_bh.to(tl.int64) * N + offs_m, m_i + tl.log2(l_i), mask=m_mask)

    def _attn_bwd_preprocess(
        O, DO, DELTA,
        s_ob, s_oh, s_on,
        s_dob, s_doh, s_don,
        H, N, D,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        # delta_i = sum_d dO_id * O_id = sum_j P_ij dP_ij, the softmax-Jacobian term.
        pid = tl.program_id(0)
        num_m = tl.cdiv(N, BLOCK_M)
        pid_m = pid % num_m
        pid_bh = pid // num_m
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < N
        mask = m_mask[:, None] & (offs_d < D)[None, :]
        o = tl.load(O + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_d[None, :],
                    mask=mask, other=0.0).to(tl.float32)
        do = tl.load(DO + b * s_dob + h * s_doh + offs_m[:, None] * s_don + offs_d[None, :],
                     mask=mask, other=0.0).to(tl.float32)
        tl.store(DELTA + pid_bh.to(tl.int64) * N + offs_m, tl.sum(o * do, 1), mask=m_mask)

    def _attn_bwd_dkdv(
        Q, K, V, DO, LSE, DELTA, DK, DV,
        s_qb, s_qh, s_qn,
        s_kb, s_kh, s_kn,
        s_vb, s_vh, s_vn,
        s_dob, s_doh, s_don,
        s_dkb, s_dkh, s_dkn,
        s_dvb, s_dvh, s_dvn,
        H, N, D, sm_scale, qk_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr, PREC: tl.constexpr,
    ):
        # One program owns a key tile and sweeps all query tiles, so dK/dV are
        # accumulated in registers without atomics.
        pid = tl.program_id(0)
        num_n = tl.cdiv(N, BLOCK_N)
        pid_n = pid % num_n
        pid_bh = pid // num_n
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)

        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m0 = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        n_mask = offs_n < N
        d_mask = offs_d < D
        kv_mask = n_mask[:, None] & d_mask[None, :]

        k = tl.load(K + b * s_kb + h * s_kh + offs_n[:, None] * s_kn + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        v = tl.load(V + b * s_vb + h * s_vh + offs_n[:, None] * s_vn + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)

        q_base = Q + b * s_qb + h * s_qh
        do_base = DO + b * s_dob + h * s_doh
        row_base = pid_bh.to(tl.int64) * N

        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        for start_m in range(0, N, BLOCK_M):
            offs_m = start_m + offs_m0
            m_mask = offs_m < N
            qm_mask = m_mask[:, None] & d_mask[None, :]
            q = tl.load(q_base + offs_m[:, None] * s_qn + offs_d[None, :], mask=qm_mask, other=0.0)
            do = tl.load(do_base + offs_m[:, None] * s_don + offs_d[None, :], mask=qm_mask, other=0.0)
            lse = tl.load(LSE + row_base + offs_m, mask=m_mask, other=0.0)
            delta = tl.load(DELTA + row_base + offs_m, mask=m_mask, other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)

            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            p = tl.exp2(s - lse[:, None])
            # Padded query rows must not leak into dK/dV (their lse is a dummy 0).
            p = tl.where(m_mask[:, None] & n_mask[None, :], p, 0.0)
            p_op = p.to(V.dtype.element_ty)
            if UPCAST:
                p_op = p_op.to(tl.float32)
            dv += tl.dot(tl.trans(p_op), do, input_precision=PREC)

            dp = tl.dot(do, tl.trans(v), input_precision=PREC)
            ds = p * (dp - delta[:, None])
            ds_op = ds.to(Q.dtype.element_ty)
            if UPCAST:
                ds_op = ds_op.to(tl.float32)
            dk += tl.dot(tl.trans(ds_op), q, input_precision=PREC)

        dk = dk * sm_scale
        tl.store(DK + b * s_dkb + h * s_dkh + offs_n[:, None] * s_dkn + offs_d[None, :],
                 dk.to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + b * s_dvb + h * s_dvh + offs_n[:, None] * s_dvn + offs_d[None, :],
                 dv.to(DV.dtype.element_ty), mask=kv_mask)

    def _attn_bwd_dq(
        Q, K, V, DO, LSE, DELTA, DQ,
        s_qb, s_qh, s_qn,
        s_kb, s_kh, s_kn,
        s_vb, s_vh, s_vn,
        s_dob, s_doh, s_don,
        s_dqb, s_dqh, s_dqn,
        H, N, D, sm_scale, qk_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr, PREC: tl.constexpr,
    ):
        # Separate pass for dQ (owning a query tile) instead of atomics in the
        # dK/dV pass: recomputing QK^T is cheaper than contended fp32 atomics
        # and keeps the result deterministic.
        pid = tl.program_id(0)
        num_m = tl.cdiv(N, BLOCK_M)
        pid_m = pid % num_m
        pid_bh = pid // num_m
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < N
        d_mask = offs_d < D
        qm_mask = m_mask[:, None] & d_mask[None, :]
        row_base = pid_bh.to(tl.int64) * N

        q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_d[None, :],
                    mask=qm_mask, other=0.0)
        do = tl.load(DO + b * s_dob + h * s_doh + offs_m[:, None] * s_don + offs_d[None, :],
                     mask=qm_mask, other=0.0)
        lse = tl.load(LSE + row_base + offs_m, mask=m_mask, other=0.0)
        delta = tl.load(DELTA + row_base + offs_m, mask=m_mask, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)

        k_base = K + b * s_kb + h * s_kh
        v_base = V + b * s_vb + h * s_vh
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        for start_n in range(0, N, BLOCK_N):
            offs_n = start_n + offs_n0
            n_mask = offs_n < N
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(k_base + offs_n[:, None] * s_kn + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_base + offs_n[:, None] * s_vn + offs_d[None, :], mask=kv_mask, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            p = tl.exp2(s - lse[:, None])
            p = tl.where(n_mask[None, :], p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)
            ds = p * (dp - delta[:, None])
            ds_op = ds.to(Q.dtype.element_ty)
            if UPCAST:
                ds_op = ds_op.to(tl.float32)
            dq += tl.dot(ds_op, k, input_precision=PREC)

        dq = dq * sm_scale
        tl.store(DQ + b * s_dqb + h * s_dqh + offs_m[:, None] * s_dqn + offs_d[None, :],
                 dq.to(DQ.dtype.element_ty), mask=qm_mask)


# GPU autotune spaces: small on purpose (tuning runs once per (N, BLOCK_D, dtype)).
# ViTPose N is 192..972, so 64-row tiles avoid wasting a third of a 128 tile at N=192
# while 128-row tiles amortise K/V loads at N=768/972.
def _gpu_configs(kind: str):
    C = triton.Config
    if kind == "fwd":
        return [
            C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
            C({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
            C({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=3),
            C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
        ]
    if kind == "dkdv":
        return [
            C({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=2),
            C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
            C({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=2),
            C({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=8, num_stages=2),
        ]
    if kind == "dq":
        return [
            C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
            C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
            C({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
            C({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2),
        ]
    raise ValueError(kind)


# Interpreter tiles: small so tests at N ~ 20..64 still cover several tiles and a
# ragged tail, and each (numpy-emulated) program stays cheap.
_INTERP_BLOCK = 16

_KERNEL_CACHE: dict[bool, dict] = {}


def _kernels() -> dict:
    interp = _interpreting()
    ks = _KERNEL_CACHE.get(interp)
    if ks is None:
        if triton is None:
            raise RuntimeError(f"triton is not importable ({_TRITON_IMPORT_ERROR})")
        ks = {
            "fwd": triton.jit(_attn_fwd),
            "pre": triton.jit(_attn_bwd_preprocess),
            "dkdv": triton.jit(_attn_bwd_dkdv),
            "dq": triton.jit(_attn_bwd_dq),
        }
        if not interp:
            # The autotuner also appends tensor dtypes to this key, so fp32 (ieee dots)
            # and bf16 tune separately.
            key = ["N", "D"]
            ks["fwd_tuned"] = triton.autotune(_gpu_configs("fwd"), key=key)(ks["fwd"])
            ks["dkdv_tuned"] = triton.autotune(_gpu_configs("dkdv"), key=key)(ks["dkdv"])
            ks["dq_tuned"] = triton.autotune(_gpu_configs("dq"), key=key)(ks["dq"])
        _KERNEL_CACHE[interp] = ks
    return ks


def _strides3(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _prep(t: torch.Tensor) -> torch.Tensor:
    # Kernels take arbitrary (B, H, N) strides, so permuted views of a fused qkv
    # projection need no copy; only the head dim must be unit-stride.
    return t if t.stride(-1) == 1 else t.contiguous()


def _block_d(D: int) -> int:
    # tl.dot needs K >= 16 on GPUs.
    return max(16, triton.next_power_of_2(D))


def _common(q: torch.Tensor):
    interp = _interpreting()
    upcast = interp and q.dtype == torch.bfloat16
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    return interp, upcast, prec


def _flash_fwd(q, k, v, scale):
    B, H, N, D = q.shape
    ks = _kernels()
    interp, upcast, prec = _common(q)
    o = torch.empty((B, H, N, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    args = (q, k, v, o, lse, *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(o),
            H, N, D, scale * _LOG2E)
    BD = _block_d(D)
    if interp:
        BM = _INTERP_BLOCK
        ks["fwd"][(triton.cdiv(N, BM) * B * H,)](
            *args, BLOCK_M=BM, BLOCK_N=_INTERP_BLOCK, BLOCK_D=BD, UPCAST=upcast, PREC=prec)
    else:
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]) * B * H,)  # noqa: E731
        with torch.cuda.device(q.device):
            ks["fwd_tuned"][grid](*args, BLOCK_D=BD, UPCAST=False, PREC=prec)
    return o, lse


def _flash_bwd(do, q, k, v, o, lse, scale):
    B, H, N, D = q.shape
    ks = _kernels()
    interp, upcast, prec = _common(q)
    BD = _block_d(D)
    do = _prep(do)
    dq = torch.empty((B, H, N, D), device=q.device, dtype=q.dtype)
    dk = torch.empty((B, H, N, D), device=q.device, dtype=k.dtype)
    dv = torch.empty((B, H, N, D), device=q.device, dtype=v.dtype)
    delta = torch.empty((B, H, N), device=q.device, dtype=torch.float32)

    pre_bm = _INTERP_BLOCK if interp else 64
    pre_args = (o, do, delta, *_strides3(o), *_strides3(do), H, N, D)
    common = (*_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do))
    dkdv_args = (q, k, v, do, lse, delta, dk, dv, *common, *_strides3(dk), *_strides3(dv),
                 H, N, D, scale, scale * _LOG2E)
    dq_args = (q, k, v, do, lse, delta, dq, *common, *_strides3(dq),
               H, N, D, scale, scale * _LOG2E)

    if interp:
        blk = _INTERP_BLOCK
        nb = triton.cdiv(N, blk) * B * H
        ks["pre"][(nb,)](*pre_args, BLOCK_M=blk, BLOCK_D=BD)
        ks["dkdv"][(nb,)](*dkdv_args, BLOCK_M=blk, BLOCK_N=blk, BLOCK_D=BD, UPCAST=upcast, PREC=prec)
        ks["dq"][(nb,)](*dq_args, BLOCK_M=blk, BLOCK_N=blk, BLOCK_D=BD, UPCAST=upcast, PREC=prec)
    else:
        with torch.cuda.device(q.device):
            ks["pre"][(triton.cdiv(N, pre_bm) * B * H,)](*pre_args, BLOCK_M=pre_bm, BLOCK_D=BD)
            ks["dkdv_tuned"][lambda m: (triton.cdiv(N, m["BLOCK_N"]) * B * H,)](
                *dkdv_args, BLOCK_D=BD, UPCAST=False, PREC=prec)
            ks["dq_tuned"][lambda m: (triton.cdiv(N, m["BLOCK_M"]) * B * H,)](
                *dq_args, BLOCK_D=BD, UPCAST=False, PREC=prec)
    return dq, dk, dv


class FlashAttentionFn(torch.autograd.Function):
    """softmax(q k^T * scale) v with O(N) extra memory; saves q, k, v, o and the row LSE."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        q, k, v = _prep(q), _prep(k), _prep(v)
        o, lse = _flash_fwd(q, k, v, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _flash_bwd(do, q, k, v, o, lse, ctx.scale)
        return dq, dk, dv, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    scale: float | None = None) -> torch.Tensor:
    """Fused self-attention. q, k, v: (B, H, N, D), same dtype (fp32/fp16/bf16).

    Returns (B, H, N, D) in q's dtype. ``scale`` defaults to 1/sqrt(D).
    """
    if q.dim() != 4:
        raise ValueError(f"expected (B, H, N, D) tensors, got q of shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share a shape (self-attention): "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"unsupported dtype {q.dtype}")
    D = q.shape[-1]
    if D > 128:
        # Register/shared-memory budget of the tiles assumes BLOCK_D <= 128.
        raise ValueError(f"head dim {D} > 128 is not supported")
    ok, why = triton_available()
    if not ok:
        raise RuntimeError(f"flash_attention unavailable: {why}")
    if not _interpreting() and not q.is_cuda:
        raise RuntimeError("flash_attention needs CUDA tensors (or TRITON_INTERPRET=1 for CPU)")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    return FlashAttentionFn.apply(q, k, v, float(scale))
