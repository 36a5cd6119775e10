"""Fused (FlashAttention-2 style) self-attention in Triton, forward and backward.

Shapes follow ViTPose: q, k, v are (B, H, N, D) with N = number of patch tokens
(192 for 256x192 at stride 16, 768 at stride 8, 972 for 576x432) and D the head
dim (64 for ViT-B, 80 for ViT-H, 88 for ViT-G).  Neither N nor D needs to be a
power of two: the ragged last token tile is masked, and the head dim is covered by
a power-of-two chunk plus a power-of-two tail chunk (88 = 64 + 32, 80 = 64 + 16),
only the tail masked.  D is a compile-time constant and the launcher tells the
compiler what the strides are divisible by, so head dims that are multiples of 8
load as 16-byte vectors (and stream through cp.async) whatever the view's layout.

Tile configurations are autotuned on a GPU among those whose compiled kernel fits
the device's shared memory; :func:`unsupported_reason` says where the kernel cannot
run (no GPU, CPU tensors, nothing fits) so that models/attention.py uses SDPA there.

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

__all__ = ["FlashAttentionFn", "NoFittingConfig", "flash_attention", "forced_configs", "launch_plan",
           "triton_available", "unsupported_reason"]

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

    # Layout of the head dim: D (a constexpr, so its divisibility is known) is covered by a
    # power-of-two chunk D0 plus a power-of-two tail chunk D1 (0: none), e.g. 88 = 64 + 32 (96
    # computed, 8 % wasted, not 31 % as a single 128 tile), 80 = 64 + 16 (exact).  Only the tail
    # is masked along D.  ALIGN (a power of two <= 16) divides every stride the launcher passes;
    # ``s // ALIGN * ALIGN`` states that to the compiler (a no-op on the value), so with D a
    # multiple of 8 the tiles load as 16-byte vectors and stream through cp.async.

    def _attn_fwd(
        Q, K, V, O, LSE,
        s_qb, s_qh, s_qn,
        s_kb, s_kh, s_kn,
        s_vb, s_vh, s_vn,
        s_ob, s_oh, s_on,
        H, N, qk_scale,
        D: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, ALIGN: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        UPCAST: tl.constexpr, PREC: tl.constexpr,
    ):
        # 1-D grid: axis-1 grid limit (65535) would otherwise cap B*H.
        pid = tl.program_id(0)
        num_m = tl.cdiv(N, BLOCK_M)
        pid_m = pid % num_m
        pid_bh = pid // num_m
        b = (pid_bh // H).to(tl.int64)
        h = (pid_bh % H).to(tl.int64)
        s_qn = s_qn // ALIGN * ALIGN
        s_kn = s_kn // ALIGN * ALIGN
        s_vn = s_vn // ALIGN * ALIGN
        s_on = s_on // ALIGN * ALIGN

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_a = tl.arange(0, D0)
        m_mask = offs_m < N
        a_mask = offs_a < D  # all true unless D < 16

        q_base = Q + b * (s_qb // ALIGN * ALIGN) + h * (s_qh // ALIGN * ALIGN) + offs_m[:, None] * s_qn
        k_base = K + b * (s_kb // ALIGN * ALIGN) + h * (s_kh // ALIGN * ALIGN)
        v_base = V + b * (s_vb // ALIGN * ALIGN) + h * (s_vh // ALIGN * ALIGN)
        o_base = O + b * (s_ob // ALIGN * ALIGN) + h * (s_oh // ALIGN * ALIGN) + offs_m[:, None] * s_on

        qa = tl.load(q_base + offs_a[None, :], mask=m_mask[:, None] & a_mask[None, :], other=0.0)
        if UPCAST:
            qa = qa.to(tl.float32)
        acc_a = tl.zeros([BLOCK_M, D0], dtype=tl.float32)
        if D1 > 0:
            offs_t = D0 + tl.arange(0, D1)
            t_mask = offs_t < D
            qt = tl.load(q_base + offs_t[None, :], mask=m_mask[:, None] & t_mask[None, :], other=0.0)
            if UPCAST:
                qt = qt.to(tl.float32)
            acc_t = tl.zeros([BLOCK_M, D1], dtype=tl.float32)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)

        for start_n in range(0, N, BLOCK_N):
            offs_n = start_n + offs_n0
            n_mask = offs_n < N
            k_rows = k_base + offs_n[:, None] * s_kn
            v_rows = v_base + offs_n[:, None] * s_vn
            ka = tl.load(k_rows + offs_a[None, :], mask=n_mask[:, None] & a_mask[None, :], other=0.0)
            va = tl.load(v_rows + offs_a[None, :], mask=n_mask[:, None] & a_mask[None, :], other=0.0)
            if UPCAST:
                ka = ka.to(tl.float32)
                va = va.to(tl.float32)
            s = tl.dot(qa, tl.trans(ka), input_precision=PREC)
            if D1 > 0:
                kt = tl.load(k_rows + offs_t[None, :], mask=n_mask[:, None] & t_mask[None, :], other=0.0)
                vt = tl.load(v_rows + offs_t[None, :], mask=n_mask[:, None] & t_mask[None, :], other=0.0)
                if UPCAST:
                    kt = kt.to(tl.float32)
                    vt = vt.to(tl.float32)
                s = tl.dot(qt, tl.trans(kt), s, input_precision=PREC)
            # Scores in the log2 domain so the softmax can use exp2.
            s = s * qk_scale
            s = tl.where(n_mask[None, :], s, float("-inf"))
            # Every tile holds >= 1 valid key, so m_new is finite from the first tile on.
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            p_op = p.to(V.dtype.element_ty)
            if UPCAST:
                p_op = p_op.to(tl.float32)
            acc_a = tl.dot(p_op, va, acc_a * alpha[:, None], input_precision=PREC)
            if D1 > 0:
                acc_t = tl.dot(p_op, vt, acc_t * alpha[:, None], input_precision=PREC)
            m_i = m_new

        tl.store(o_base + offs_a[None, :], (acc_a / l_i[:, None]).to(O.dtype.element_ty),
                 mask=m_mask[:, None] & a_mask[None, :])
        if D1 > 0:
            tl.store(o_base + offs_t[None, :], (acc_t / l_i[:, None]).to(O.dtype.element_ty),
                     mask=m_mask[:, None] & t_mask[None, :])
        tl.store(LSE + pid_bh.to(tl.int64) * N + offs_m, m_i + tl.log2(l_i), mask=m_mask)

    def _attn_bwd_preprocess(
        O, DO, DELTA,
        s_ob, s_oh, s_on,
        s_dob, s_doh, s_don,
        H, N,
        D: tl.constexpr, ALIGN: tl.constexpr,
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
        o = tl.load(O + b * (s_ob // ALIGN * ALIGN) + h * (s_oh // ALIGN * ALIGN)
                    + offs_m[:, None] * (s_on // ALIGN * ALIGN) + offs_d[None, :],
                    mask=mask, other=0.0).to(tl.float32)
        do = tl.load(DO + b * (s_dob // ALIGN * ALIGN) + h * (s_doh // ALIGN * ALIGN)
                     + offs_m[:, None] * (s_don // ALIGN * ALIGN) + offs_d[None, :],
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
        H, N, sm_scale, qk_scale,
        D: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, ALIGN: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
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
        s_qn = s_qn // ALIGN * ALIGN
        s_don = s_don // ALIGN * ALIGN

        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m0 = tl.arange(0, BLOCK_M)
        offs_a = tl.arange(0, D0)
        n_mask = offs_n < N
        a_mask = offs_a < D
        na_mask = n_mask[:, None] & a_mask[None, :]

        k_rows = (K + b * (s_kb // ALIGN * ALIGN) + h * (s_kh // ALIGN * ALIGN)
                  + offs_n[:, None] * (s_kn // ALIGN * ALIGN))
        v_rows = (V + b * (s_vb // ALIGN * ALIGN) + h * (s_vh // ALIGN * ALIGN)
                  + offs_n[:, None] * (s_vn // ALIGN * ALIGN))
        dk_rows = (DK + b * (s_dkb // ALIGN * ALIGN) + h * (s_dkh // ALIGN * ALIGN)
                   + offs_n[:, None] * (s_dkn // ALIGN * ALIGN))
        dv_rows = (DV + b * (s_dvb // ALIGN * ALIGN) + h * (s_dvh // ALIGN * ALIGN)
                   + offs_n[:, None] * (s_dvn // ALIGN * ALIGN))
        ka = tl.load(k_rows + offs_a[None, :], mask=na_mask, other=0.0)
        va = tl.load(v_rows + offs_a[None, :], mask=na_mask, other=0.0)
        if UPCAST:
            ka = ka.to(tl.float32)
            va = va.to(tl.float32)
        dk_a = tl.zeros([BLOCK_N, D0], dtype=tl.float32)
        dv_a = tl.zeros([BLOCK_N, D0], dtype=tl.float32)
        if D1 > 0:
            offs_t = D0 + tl.arange(0, D1)
            t_mask = offs_t < D
            nt_mask = n_mask[:, None] & t_mask[None, :]
            kt = tl.load(k_rows + offs_t[None, :], mask=nt_mask, other=0.0)
            vt = tl.load(v_rows + offs_t[None, :], mask=nt_mask, other=0.0)
            if UPCAST:
                kt = kt.to(tl.float32)
                vt = vt.to(tl.float32)
            dk_t = tl.zeros([BLOCK_N, D1], dtype=tl.float32)
            dv_t = tl.zeros([BLOCK_N, D1], dtype=tl.float32)

        q_base = Q + b * (s_qb // ALIGN * ALIGN) + h * (s_qh // ALIGN * ALIGN)
        do_base = DO + b * (s_dob // ALIGN * ALIGN) + h * (s_doh // ALIGN * ALIGN)
        row_base = pid_bh.to(tl.int64) * N

        for start_m in range(0, N, BLOCK_M):
            offs_m = start_m + offs_m0
            m_mask = offs_m < N
            q_rows = q_base + offs_m[:, None] * s_qn
            do_rows = do_base + offs_m[:, None] * s_don
            qa = tl.load(q_rows + offs_a[None, :], mask=m_mask[:, None] & a_mask[None, :], other=0.0)
            doa = tl.load(do_rows + offs_a[None, :], mask=m_mask[:, None] & a_mask[None, :], other=0.0)
            lse = tl.load(LSE + row_base + offs_m, mask=m_mask, other=0.0)
            delta = tl.load(DELTA + row_base + offs_m, mask=m_mask, other=0.0)
            if UPCAST:
                qa = qa.to(tl.float32)
                doa = doa.to(tl.float32)
            s = tl.dot(qa, tl.trans(ka), input_precision=PREC)
            dp = tl.dot(doa, tl.trans(va), input_precision=PREC)
            if D1 > 0:
                qt = tl.load(q_rows + offs_t[None, :], mask=m_mask[:, None] & t_mask[None, :], other=0.0)
                dot_ = tl.load(do_rows + offs_t[None, :], mask=m_mask[:, None] & t_mask[None, :], other=0.0)
                if UPCAST:
                    qt = qt.to(tl.float32)
                    dot_ = dot_.to(tl.float32)
                s = tl.dot(qt, tl.trans(kt), s, input_precision=PREC)
                dp = tl.dot(dot_, tl.trans(vt), dp, input_precision=PREC)
            p = tl.exp2(s * qk_scale - lse[:, None])
            # Padded query rows must not leak into dK/dV (their lse is a dummy 0).
            p = tl.where(m_mask[:, None] & n_mask[None, :], p, 0.0)
            p_op = tl.trans(p.to(V.dtype.element_ty))
            if UPCAST:
                p_op = p_op.to(tl.float32)
            ds = p * (dp - delta[:, None])
            ds_op = tl.trans(ds.to(Q.dtype.element_ty))
            if UPCAST:
                ds_op = ds_op.to(tl.float32)
            dv_a = tl.dot(p_op, doa, dv_a, input_precision=PREC)
            dk_a = tl.dot(ds_op, qa, dk_a, input_precision=PREC)
            if D1 > 0:
                dv_t = tl.dot(p_op, dot_, dv_t, input_precision=PREC)
                dk_t = tl.dot(ds_op, qt, dk_t, input_precision=PREC)

        tl.store(dk_rows + offs_a[None, :], (dk_a * sm_scale).to(DK.dtype.element_ty), mask=na_mask)
        tl.store(dv_rows + offs_a[None, :], dv_a.to(DV.dtype.element_ty), mask=na_mask)
        if D1 > 0:
            tl.store(dk_rows + offs_t[None, :], (dk_t * sm_scale).to(DK.dtype.element_ty), mask=nt_mask)
            tl.store(dv_rows + offs_t[None, :], dv_t.to(DV.dtype.element_ty), mask=nt_mask)

    def _attn_bwd_dq(
        Q, K, V, DO, LSE, DELTA, DQ,
        s_qb, s_qh, s_qn,
        s_kb, s_kh, s_kn,
        s_vb, s_vh, s_vn,
        s_dob, s_doh, s_don,
        s_dqb, s_dqh, s_dqn,
        H, N, sm_scale, qk_scale,
        D: tl.constexpr, D0: tl.constexpr, D1: tl.constexpr, ALIGN: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
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
        s_kn = s_kn // ALIGN * ALIGN
        s_vn = s_vn // ALIGN * ALIGN

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_a = tl.arange(0, D0)
        m_mask = offs_m < N
        a_mask = offs_a < D
        ma_mask = m_mask[:, None] & a_mask[None, :]
        row_base = pid_bh.to(tl.int64) * N

        q_rows = (Q + b * (s_qb // ALIGN * ALIGN) + h * (s_qh // ALIGN * ALIGN)
                  + offs_m[:, None] * (s_qn // ALIGN * ALIGN))
        do_rows = (DO + b * (s_dob // ALIGN * ALIGN) + h * (s_doh // ALIGN * ALIGN)
                   + offs_m[:, None] * (s_don // ALIGN * ALIGN))
        dq_rows = (DQ + b * (s_dqb // ALIGN * ALIGN) + h * (s_dqh // ALIGN * ALIGN)
                   + offs_m[:, None] * (s_dqn // ALIGN * ALIGN))
        qa = tl.load(q_rows + offs_a[None, :], mask=ma_mask, other=0.0)
        doa = tl.load(do_rows + offs_a[None, :], mask=ma_mask, other=0.0)
        if UPCAST:
            qa = qa.to(tl.float32)
            doa = doa.to(tl.float32)
        dq_a = tl.zeros([BLOCK_M, D0], dtype=tl.float32)
        if D1 > 0:
            offs_t = D0 + tl.arange(0, D1)
            t_mask = offs_t < D
            mt_mask = m_mask[:, None] & t_mask[None, :]
            qt = tl.load(q_rows + offs_t[None, :], mask=mt_mask, other=0.0)
            dot_ = tl.load(do_rows + offs_t[None, :], mask=mt_mask, other=0.0)
            if UPCAST:
                qt = qt.to(tl.float32)
                dot_ = dot_.to(tl.float32)
            dq_t = tl.zeros([BLOCK_M, D1], dtype=tl.float32)
        lse = tl.load(LSE + row_base + offs_m, mask=m_mask, other=0.0)
        delta = tl.load(DELTA + row_base + offs_m, mask=m_mask, other=0.0)

        k_base = K + b * (s_kb // ALIGN * ALIGN) + h * (s_kh // ALIGN * ALIGN)
        v_base = V + b * (s_vb // ALIGN * ALIGN) + h * (s_vh // ALIGN * ALIGN)
        for start_n in range(0, N, BLOCK_N):
            offs_n = start_n + offs_n0
            n_mask = offs_n < N
            k_rows = k_base + offs_n[:, None] * s_kn
            v_rows = v_base + offs_n[:, None] * s_vn
            ka = tl.load(k_rows + offs_a[None, :], mask=n_mask[:, None] & a_mask[None, :], other=0.0)
            va = tl.load(v_rows + offs_a[None, :], mask=n_mask[:, None] & a_mask[None, :], other=0.0)
            if UPCAST:
                ka = ka.to(tl.float32)
                va = va.to(tl.float32)
            s = tl.dot(qa, tl.trans(ka), input_precision=PREC)
            dp = tl.dot(doa, tl.trans(va), input_precision=PREC)
            if D1 > 0:
                kt = tl.load(k_rows + offs_t[None, :], mask=n_mask[:, None] & t_mask[None, :], other=0.0)
                vt = tl.load(v_rows + offs_t[None, :], mask=n_mask[:, None] & t_mask[None, :], other=0.0)
                if UPCAST:
                    kt = kt.to(tl.float32)
                    vt = vt.to(tl.float32)
                s = tl.dot(qt, tl.trans(kt), s, input_precision=PREC)
                dp = tl.dot(dot_, tl.trans(vt), dp, input_precision=PREC)
            p = tl.exp2(s * qk_scale - lse[:, None])
            p = tl.where(n_mask[None, :], p, 0.0)
            ds = p * (dp - delta[:, None])
            ds_op = ds.to(Q.dtype.element_ty)
            if UPCAST:
                ds_op = ds_op.to(tl.float32)
            dq_a = tl.dot(ds_op, ka, dq_a, input_precision=PREC)
            if D1 > 0:
                dq_t = tl.dot(ds_op, kt, dq_t, input_precision=PREC)

        tl.store(dq_rows + offs_a[None, :], (dq_a * sm_scale).to(DQ.dtype.element_ty), mask=ma_mask)
        if D1 > 0:
            tl.store(dq_rows + offs_t[None, :], (dq_t * sm_scale).to(DQ.dtype.element_ty), mask=mt_mask)


# GPU autotune spaces: small on purpose (tuning runs once per (N, D, dtype)), every entry
# checked ahead of time (tests/test_flash_attn.py) to compile without register spills at the
# presets' head dims 32/64/80/88 and to fit 99 KB of shared memory (sm86/sm89: A10, L40S, RTX),
# the smallest of the supported GPUs; which of them a device can run is still decided by its
# own shared memory (see _fitting), so a config added later cannot break a smaller GPU.
# ViTPose N is 192..972, so 64-row tiles avoid wasting a third of a 128 tile at N=192
# while 128-row tiles amortise K/V loads at N=768/972.
def _gpu_configs(kind: str, dtype: torch.dtype = torch.bfloat16):
    C = triton.Config
    if kind == "pre":  # elementwise dO.O row sums: one fixed config, not tuned
        return [C({"BLOCK_M": 64}, num_warps=4, num_stages=1)]
    if dtype == torch.float32:
        # fp32 dots run in full precision on the CUDA cores (no tensor cores): register-hungry,
        # so small tiles; the 16-bit tiles below would need 104-224 KB of shared memory and spill.
        return {
            "fwd": [C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2),
                    C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=8, num_stages=2),
                    C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=3)],
            "dkdv": [C({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4, num_stages=2),
                     C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=8, num_stages=2)],
            "dq": [C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=8, num_stages=2),
                   C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=8, num_stages=2)],
        }[kind]
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
            C({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=8, num_stages=2),
            # M64xN128 spilled registers at head dims 80/88 (its dK/dV/K/V tiles and a 64x128
            # score tile outgrow 255 registers a thread); deeper pipelining instead.
            C({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=8, num_stages=3),
            # The only one of these without spills on sm80/86/89 at head dim 88 (their mma
            # layout holds more of the dK/dV accumulators per thread than sm90's wgmma).
            C({"BLOCK_M": 16, "BLOCK_N": 32}, num_warps=4, num_stages=2),
        ]
    if kind == "dq":
        return [
            C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
            C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
            C({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
            C({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2),
        ]
    raise ValueError(kind)


KINDS = ("fwd", "dkdv", "dq")

# Interpreter tiles: small so tests at N ~ 20..64 still cover several tiles and a
# ragged tail, and each (numpy-emulated) program stays cheap.
_INTERP_BLOCK = 16

# Largest dynamic shared memory one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin),
# for ahead-of-time checks without the device; on a GPU the driver's own figure is used.
SMEM_PER_BLOCK = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448,
                  100: 232448, 103: 232448, 120: 101376}

_KERNEL_CACHE: dict[bool, dict] = {}
_FORCED: dict[str, object] = {}  # kind -> triton.Config launched instead of the autotuner's pick


class NoFittingConfig(RuntimeError):
    """No tile configuration of a kernel fits this device's shared memory."""


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
            # and bf16 tune separately.  The prune hook drops the configurations that do
            # not fit the device's shared memory before any is launched (the autotuner
            # alone would launch its first one when all fail to fit).
            key = ["N", "D", "ALIGN"]
            for kind in KINDS:
                for dtype in (torch.float32, torch.bfloat16):  # fp32 tiles / 16-bit tiles
                    ks[kind, _tile_family(dtype)] = triton.autotune(
                        _gpu_configs(kind, dtype), key=key,
                        prune_configs_by={"early_config_prune": _prune_hook(kind)})(ks[kind])
        _KERNEL_CACHE[interp] = ks
    return ks


def _tile_family(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else "16bit"


def _split_d(D: int) -> tuple[int, int]:
    """(D0, D1): a power-of-two chunk and a power-of-two tail (0: none) covering D; both >= 16
    (tl.dot needs K >= 16 on GPUs).  88 -> (64, 32), 80 -> (64, 16), 64 -> (64, 0)."""
    d0 = max(16, 1 << (D.bit_length() - 1))
    rest = D - d0
    return d0, (0 if rest <= 0 else max(16, 1 << (rest - 1).bit_length()))


def _align(tensors) -> int:
    """Largest power of two <= 16 dividing every stride (in elements) the kernels multiply by.
    Size-1 dims are skipped: their index is always 0."""
    g = 16
    for t in tensors:
        for size, stride in zip(t.shape[:-1], t.stride()[:-1]):
            if size > 1:
                g = math.gcd(g, stride)  # a divisor of 16: a power of two
    return g


def _strides3(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _prep(t: torch.Tensor) -> torch.Tensor:
    # Kernels take arbitrary (B, H, N) strides, so permuted views of a fused qkv
    # projection need no copy; only the head dim must be unit-stride.
    return t if t.stride(-1) == 1 else t.contiguous()


def _common(q: torch.Tensor):
    interp = _interpreting()
    upcast = interp and q.dtype == torch.bfloat16
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    return interp, upcast, prec


def _consts(q: torch.Tensor, tensors) -> dict:
    D = q.shape[-1]
    d0, d1 = _split_d(D)
    _, upcast, prec = _common(q)
    return dict(D=D, D0=d0, D1=d1, ALIGN=_align(tensors), UPCAST=upcast, PREC=prec)


def _fwd_launch(q, k, v, o, lse, scale):
    """(args, constexprs, grid(meta)) of the forward kernel: the one place they are built, for the
    launch, the shared-memory fit and the ahead-of-time compile checks alike."""
    B, H, N, _ = q.shape
    args = (q, k, v, o, lse, *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(o),
            H, N, scale * _LOG2E)
    return args, _consts(q, (q, k, v, o)), lambda m: triton.cdiv(N, m["BLOCK_M"]) * B * H


def _bwd_launches(do, q, k, v, o, lse, delta, dq, dk, dv, scale) -> dict:
    B, H, N, D = q.shape
    common = (*_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do))
    consts = _consts(q, (q, k, v, do, dq, dk, dv))
    pre_consts = dict(D=D, ALIGN=_align((o, do)), BLOCK_D=max(16, 1 << (D - 1).bit_length()))
    return {
        "pre": ((o, do, delta, *_strides3(o), *_strides3(do), H, N), pre_consts,
                lambda m: triton.cdiv(N, m["BLOCK_M"]) * B * H),
        "dkdv": ((q, k, v, do, lse, delta, dk, dv, *common, *_strides3(dk), *_strides3(dv),
                  H, N, scale, scale * _LOG2E), consts, lambda m: triton.cdiv(N, m["BLOCK_N"]) * B * H),
        "dq": ((q, k, v, do, lse, delta, dq, *common, *_strides3(dq), H, N, scale, scale * _LOG2E),
               consts, lambda m: triton.cdiv(N, m["BLOCK_M"]) * B * H),
    }


def _launch(kind: str, launch) -> None:
    args, consts, grid = launch
    ks = _kernels()
    cfg = _gpu_configs("pre")[0] if kind == "pre" and not _interpreting() else _FORCED.get(kind)
    if _interpreting():
        # Interpreter: no warps or pipelining, only the tile shape of a forced config matters.
        meta = dict(cfg.kwargs) if cfg is not None else {"BLOCK_M": _INTERP_BLOCK, "BLOCK_N": _INTERP_BLOCK}
        if kind == "pre":
            meta = {"BLOCK_M": meta["BLOCK_M"]}
        ks[kind][(grid(meta),)](*args, **consts, **meta)
    elif cfg is not None:
        ks[kind][(grid(cfg.kwargs),)](*args, **consts, **cfg.all_kwargs())
    else:
        ks[kind, _tile_family(args[0].dtype)][lambda m: (grid(m),)](*args, **consts)


def _flash_fwd(q, k, v, scale):
    B, H, N, D = q.shape
    o = torch.empty((B, H, N, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    launch = _fwd_launch(q, k, v, o, lse, scale)
    if _interpreting():
        _launch("fwd", launch)
    else:
        with torch.cuda.device(q.device):
            _launch("fwd", launch)
    return o, lse


def _flash_bwd(do, q, k, v, o, lse, scale):
    B, H, N, D = q.shape
    do = _prep(do)
    dq = torch.empty((B, H, N, D), device=q.device, dtype=q.dtype)
    dk = torch.empty((B, H, N, D), device=q.device, dtype=k.dtype)
    dv = torch.empty((B, H, N, D), device=q.device, dtype=v.dtype)
    delta = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    launches = _bwd_launches(do, q, k, v, o, lse, delta, dq, dk, dv, scale)
    if _interpreting():
        for kind in ("pre", "dkdv", "dq"):
            _launch(kind, launches[kind])
    else:
        with torch.cuda.device(q.device):
            for kind in ("pre", "dkdv", "dq"):
                _launch(kind, launches[kind])
    return dq, dk, dv


# ------------------------------------------------------------------------------------------
# Which tile configurations fit a device: compiled (the triton cache keeps the result, and the
# autotuner then reuses those very binaries), their shared memory compared with the device's.
# ------------------------------------------------------------------------------------------
def _device_smem(device: torch.device) -> int:
    from triton.runtime import driver

    return int(driver.active.utils.get_device_properties(device.index or 0)["max_shared_mem"])


def _aot_compile(fn, args, kwargs: dict, capability: int):
    """Compile `fn` for sm_<capability> without a GPU, with the specialisation (argument
    divisibility, alignment, constexprs) a real launch with these arguments would get."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def _compile(kind: str, launch, config, capability: int | None):
    args, consts, _ = launch
    fn = _kernels()[kind]
    kwargs = dict(consts, **config.all_kwargs())
    if capability is None:
        return fn.warmup(*args, grid=(1,), **kwargs)
    return _aot_compile(fn, args, kwargs, capability)


def compiled_stats(kernel) -> dict:
    """How a compiled kernel touches memory, read from its PTX and (cuobjdump -res-usage) cubin:
    vector_loads (ld.global.v2/v4 and 16-byte cp.async copies), scalar_16bit_loads (a 16-bit tile
    that did not vectorise loads element by element), cp_async, registers, spill_bytes (stack
    frame + local memory a thread uses: register spills), shared (bytes a block needs)."""
    import re
    import subprocess
    import tempfile

    ptx = kernel.asm["ptx"]
    out = {
        "vector_loads": (len(re.findall(r"\bld\.global[\w.:]*\.v[24]\.", ptx))
                         + len(re.findall(r"\bcp\.async\.cg\.", ptx))),
        "scalar_16bit_loads": len(re.findall(r"\bld\.global(?:\.[\w:]+)*?\.[bu]16\b", ptx)),
        "cp_async": len(re.findall(r"\bcp\.async\.c[ag]\.", ptx)),
        "shared": int(kernel.metadata.shared),
    }
    from triton import knobs

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        usage = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
    if m is None:
        raise RuntimeError(f"cannot read cuobjdump -res-usage output: {usage[:300]!r}")
    out["registers"] = int(m.group(1))
    out["spill_bytes"] = int(m.group(2)) + int(m.group(3))
    return out


def config_name(config) -> str:
    k = config.kwargs
    return f"M{k['BLOCK_M']}" + (f"xN{k['BLOCK_N']}" if "BLOCK_N" in k else "") + \
        f"/w{config.num_warps}/s{config.num_stages}"


def _fitting(kind: str, launch, configs, capability: int | None = None, smem: int | None = None) -> list[dict]:
    """One entry per config: name, config, shared (bytes), limit, fits, kernel (compiled)."""
    if smem is None:
        smem = SMEM_PER_BLOCK.get(capability, 101376) if capability else _device_smem(launch[0][0].device)
    out = []
    for cfg in configs:
        kernel = _compile(kind, launch, cfg, capability)
        shared = int(kernel.metadata.shared)
        out.append(dict(name=config_name(cfg), config=cfg, shared=shared, limit=smem, fits=shared <= smem,
                        kernel=kernel))
    return out


def _no_fit_message(kind: str, entries: list[dict], dtype) -> str:
    need = min(e["shared"] for e in entries)
    return (f"no {kind} tile configuration fits the GPU's shared memory ({entries[0]['limit'] // 1024} KB per "
            f"block; the smallest needs {math.ceil(need / 1024)} KB at {str(dtype).replace('torch.', '')})")


def _prune_hook(kind: str, capability: int | None = None, smem: int | None = None):
    """The autotuner's early_config_prune: the configs whose compiled kernel fits the device's shared
    memory (capability/smem: judged for that architecture ahead of time instead, for tests)."""
    def prune(configs, nargs, **kwargs):
        fn = _kernels()[kind]
        args = tuple(nargs[name] for name in fn.arg_names if name in nargs)
        # The autotuner passes its own run() keywords (grid, warmup) along: keep the kernel's.
        consts = {k: v for k, v in kwargs.items() if k in fn.arg_names and k not in nargs}
        entries = _fitting(kind, (args, consts, None), configs, capability, smem)
        fits = [e["config"] for e in entries if e["fits"]]
        if not fits:
            raise NoFittingConfig(_no_fit_message(kind, entries, args[0].dtype))
        return fits

    return prune


def launch_plan(q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None,
                kinds=KINDS, capability: int | None = None, smem: int | None = None) -> dict:
    """For each kernel kind, every autotune candidate compiled with the arguments flash_attention
    would launch on q, k, v: {kind: [{name, config, shared, limit, fits, kernel}, ...]}.

    capability None: the tensors' CUDA device.  capability=86 etc.: compiled ahead of time for
    that architecture (no GPU needed; q, k, v may be CPU tensors), judged against its
    shared memory (SMEM_PER_BLOCK, or ``smem``).  Not under the interpreter."""
    launches = _plan_launches(q, k, v)
    return {kind: _fitting(kind, launches[kind], _gpu_configs(kind, q.dtype), capability, smem) for kind in kinds}


def _plan_launches(q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None) -> dict:
    """{kind: (args, constexprs, grid)} as flash_attention would launch them on q, k, v."""
    k = q if k is None else k
    v = q if v is None else v
    q, k, v = _prep(q), _prep(k), _prep(v)
    B, H, N, D = q.shape
    o = torch.empty((B, H, N, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, N), device=q.device, dtype=torch.float32)
    # dO as the model's head merge (out.transpose(1, 2).reshape(B, N, H * D)) hands it back.
    do = torch.empty((B, N, H, D), device=q.device, dtype=q.dtype).transpose(1, 2)
    grads = [torch.empty_like(q, memory_format=torch.contiguous_format) for _ in range(3)]
    launches = {"fwd": _fwd_launch(q, k, v, o, lse, 1.0)}
    launches.update(_bwd_launches(do, q, k, v, o, lse, lse, *grads, 1.0))
    return launches


_SUPPORT_CACHE: dict[tuple, str | None] = {}


def unsupported_reason(q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None,
                       needs_grad: bool = True, capability: int | None = None,
                       smem: int | None = None) -> str | None:
    """Why flash_attention cannot run on these tensors here (None: it can).

    Covers a missing Triton/GPU, tensors off the GPU (a model on the CPU of a GPU machine),
    shapes and dtypes the kernel does not take, and a GPU whose shared memory holds no tile
    configuration of a needed kernel.  ``capability``/``smem``: judge for that architecture
    ahead of time instead of the tensors' device (no GPU needed; not under the interpreter)."""
    if capability is None:
        ok, why = triton_available()
        if not ok:
            return why
    k = q if k is None else k
    v = q if v is None else v
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        return f"expected three (B, H, N, D) tensors of one shape, got {tuple(q.shape)}"
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16) or not (q.dtype == k.dtype == v.dtype):
        return f"dtype {q.dtype} is not supported (fp32, fp16, bf16)"
    if q.shape[-1] > 128:
        return f"head dim {q.shape[-1]} > 128 is not supported"
    if capability is None:
        if _interpreting():
            return None
        if not (q.is_cuda and k.is_cuda and v.is_cuda):
            return f"tensors on {q.device.type}: the compiled Triton kernel needs CUDA tensors"
    kinds = KINDS if needs_grad else ("fwd",)
    where = (capability, smem) if capability is not None else (q.device.index,)
    key = (where, q.dtype, q.shape[-1], _align((_prep(q), _prep(k), _prep(v))), kinds)
    if key not in _SUPPORT_CACHE:
        reason = None
        if capability is None:
            with torch.cuda.device(q.device):
                plan = launch_plan(q, k, v, kinds)
        else:
            plan = launch_plan(q, k, v, kinds, capability=capability, smem=smem)
        for kind, entries in plan.items():
            if not any(e["fits"] for e in entries):
                reason = _no_fit_message(kind, entries, q.dtype)
                break
        _SUPPORT_CACHE[key] = reason
    return _SUPPORT_CACHE[key]


class forced_configs:
    """``with forced_configs(fwd=cfg, dkdv=cfg2):`` launches those configs instead of the autotuner's
    pick (which only ever runs its winner), so every candidate can be checked once."""

    def __init__(self, **by_kind):
        unknown = set(by_kind) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kernel kinds {sorted(unknown)}")
        self.by_kind = {kind: cfg for kind, cfg in by_kind.items() if cfg is not None}

    def __enter__(self):
        self.saved = dict(_FORCED)
        _FORCED.update(self.by_kind)
        return self

    def __exit__(self, *exc):
        _FORCED.clear()
        _FORCED.update(self.saved)


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
    Raises where it cannot run (see :func:`unsupported_reason`; models/attention.py falls
    back to SDPA there instead).
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
        # Register/shared-memory budget of the tiles assumes D <= 128.
        raise ValueError(f"head dim {D} > 128 is not supported")
    ok, why = triton_available()
    if not ok:
        raise RuntimeError(f"flash_attention unavailable: {why}")
    if not _interpreting() and not (q.is_cuda and k.is_cuda and v.is_cuda):
        raise RuntimeError("flash_attention needs CUDA tensors (or TRITON_INTERPRET=1 for CPU)")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    return FlashAttentionFn.apply(q, k, v, float(scale))
