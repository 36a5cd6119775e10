#!/usr/bin/env python
"""Attention forward / forward+backward timing at ViTPose shapes: plain vs SDPA vs our Triton kernel.

    python bench/attention.py --out bench/attention_h100.json
    python bench/attention.py --interpret-smoke          # CPU: tiny agreement check, no timing

FLOP convention (same as the FlashAttention papers): forward = 4*B*H*N^2*D
(two matmuls, 2 FLOPs per MAC); backward = 2.5 x forward (five matmuls: dV, dP,
dQ, dK plus the QK^T recompute is *not* counted); so forward+backward = 3.5 x forward.
Recomputation inside the fused kernels is not credited, so TFLOP/s compare
implementations on equal work.

All timings are bf16 on CUDA, CUDA events, median of --reps measurements, each
measurement averaging --inner back-to-back calls after --warmup untimed calls.
"Ratios" are time ratios t_triton / t_other: < 1 means the Triton kernel is faster.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (name, batch, heads, tokens, head_dim); tokens from the patch grid of each preset.
SHAPES = [
    ("B_256x192", 64, 12, 192, 64),     # ViT-B, 16x12 grid
    ("H_256x192", 64, 16, 192, 80),     # ViT-H, width 1280 / 16 heads
    ("G_576x432", 8, 16, 972, 88),      # ViT-g, 36x27 grid, width 1408 / 16 heads
    ("B_stride8_256x192", 32, 12, 768, 64),  # stride-8 patches, 32x24 grid
]

# (name, config file, batch size) for the optional whole-model training step.
TRAIN_STEPS = [
    ("vitpose_b_256x192", "configs/vitpose_b_256x192.yaml", 64),
    ("vitpose_g_576x432", "configs/vitpose_g_576x432.yaml", 8),
]


def fwd_flops(b: int, h: int, n: int, d: int) -> float:
    return 4.0 * b * h * n * n * d


FWD_BWD_FACTOR = 3.5  # 1 (fwd) + 2.5 (bwd)


# ------------------------------------------------------------------ impls --
def _impls(torch):
    import torch.nn.functional as F

    def plain(q, k, v):
        scale = q.shape[-1] ** -0.5
        return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)

    def sdpa_flash(q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)

    def sdpa_math(q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v)

    def triton_fa(q, k, v):
        from vitpose_scale.kernels.flash_attn import flash_attention

        return flash_attention(q, k, v)

    return {"plain": plain, "sdpa": sdpa, "sdpa_flash": sdpa_flash, "sdpa_math": sdpa_math, "triton": triton_fa}


# ---------------------------------------------------------------- timing --
def _time_cuda(torch, fn, warmup: int, reps: int, inner: int) -> float:
    """Median milliseconds per call (CUDA events; wall clock on a CPU, for bench/gpu_suite.py --smoke)."""
    if not torch.cuda.is_available():
        return _time_cpu(fn, warmup, reps, inner)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def _time_cpu(fn, warmup: int, reps: int, inner: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) * 1e3 / inner)
    return statistics.median(times)


def bench_shape(torch, impls, shape, args) -> dict:
    name, b, h, n, d = shape
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device=dev).manual_seed(0)
    q, k, v, do = (torch.randn(b, h, n, d, device=dev, dtype=torch.bfloat16, generator=gen) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    flops = fwd_flops(b, h, n, d)
    entry = {"name": name, "B": b, "H": h, "N": n, "D": d, "dtype": "bfloat16",
             "fwd_gflop": flops / 1e9, "fwd_bwd_gflop": FWD_BWD_FACTOR * flops / 1e9, "results": {}}

    with torch.no_grad():
        ref = impls["sdpa"](q, k, v).float()

    for impl_name in args.impls:
        fn = impls[impl_name]
        res: dict = {}
        try:
            with torch.no_grad():
                out = fn(q, k, v)
            res["max_abs_err_vs_sdpa"] = (out.float() - ref).abs().max().item()
            del out

            def fwd():
                with torch.no_grad():
                    fn(q, k, v)

            def fwd_bwd():
                out = fn(q, k, v)
                # autograd.grad, not .backward(): no .grad accumulation kernels in the timing.
                torch.autograd.grad(out, (q, k, v), do)

            t_f = _time_cuda(torch, fwd, args.warmup, args.reps, args.inner)
            t_fb = _time_cuda(torch, fwd_bwd, args.warmup, args.reps, args.inner)
            res.update(fwd_ms=t_f, fwd_bwd_ms=t_fb,
                       fwd_tflops=flops / (t_f * 1e-3) / 1e12,
                       fwd_bwd_tflops=FWD_BWD_FACTOR * flops / (t_fb * 1e-3) / 1e12)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                fwd_bwd()
                torch.cuda.synchronize()
                res["fwd_bwd_peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
        except Exception as exc:  # e.g. flash backend refusing a head dim
            res = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        entry["results"][impl_name] = res
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    ratios = {}
    tri = entry["results"].get("triton", {})
    for other in ("sdpa_flash", "sdpa", "plain"):
        o = entry["results"].get(other, {})
        for key in ("fwd_ms", "fwd_bwd_ms"):
            if key in tri and key in o:
                ratios[f"triton/{other}_{key[:-3]}"] = tri[key] / o[key]
    entry["time_ratios"] = ratios
    return entry


def bench_train_steps(torch, args) -> dict:
    try:
        from vitpose_scale.config import load_config
        from vitpose_scale.models.pose import build_pose_model
    except Exception as exc:
        return {"skipped": f"model import failed ({type(exc).__name__}: {exc})"}

    out: dict = {}
    for name, cfg_path, batch in TRAIN_STEPS:
        if args.train_models and name not in args.train_models:
            continue
        out[name] = {}
        for impl in args.train_impls:
            try:
                cfg = load_config(ROOT / cfg_path)
                mcfg = dataclasses.replace(cfg.model, attention=impl)
                model = build_pose_model(mcfg).cuda().train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
                h, w = mcfg.image_size
                images = torch.randn(batch, 3, h, w, device="cuda")
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    target = torch.rand_like(model(images[:1]).float()).expand(batch, -1, -1, -1).contiguous()

                def step(model=model, images=images, target=target, opt=opt):
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        loss = torch.nn.functional.mse_loss(model(images).float(), target)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)

                torch.cuda.reset_peak_memory_stats()
                ms = _time_cuda(torch, step, args.train_warmup, args.train_reps, 1)
                out[name][impl] = {"batch": batch, "image_size": [h, w], "step_ms": ms,
                                   "images_per_s": batch / (ms * 1e-3),
                                   "activation_checkpointing": mcfg.activation_checkpointing,
                                   "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
                del model, opt, images, target, step  # free before the next implementation builds
            except Exception as exc:
                out[name][impl] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            torch.cuda.empty_cache()
        res = out[name]
        if "step_ms" in res.get("triton", {}):
            for other in ("sdpa", "plain"):
                if "step_ms" in res.get(other, {}):
                    res[f"time_ratio_triton/{other}"] = res["triton"]["step_ms"] / res[other]["step_ms"]
    return out


# ----------------------------------------------------------------- smoke --
def interpret_smoke(torch) -> int:
    """One tiny shape through all implementations on CPU via the Triton interpreter."""
    from vitpose_scale.kernels.flash_attn import triton_available

    ok, why = triton_available()
    if not ok:
        print(f"interpret-smoke: triton unavailable: {why}", file=sys.stderr)
        return 2
    impls = _impls(torch)
    b, h, n, d = 1, 2, 37, 40  # ragged N, non-power-of-two D
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
    failed = False
    for dtype, tl in tol.items():
        gen = torch.Generator().manual_seed(0)
        base = [torch.randn(b, h, n, d, generator=gen).to(dtype) for _ in range(4)]
        results = {}
        for name in ("plain", "sdpa", "triton"):  # no flash backend on CPU
            q, k, v = (t.clone().requires_grad_(True) for t in base[:3])
            t0 = time.perf_counter()
            out = impls[name](q, k, v)
            grads = torch.autograd.grad(out, (q, k, v), base[3])
            results[name] = [out.detach().double(), *(g.double() for g in grads)]
            print(f"  {str(dtype):15s} {name:6s} {1e3 * (time.perf_counter() - t0):8.1f} ms")
        # fp64 ground truth so bf16 plain/sdpa rounding is not mistaken for a Triton error
        q, k, v = (t.double().requires_grad_(True) for t in base[:3])
        out = impls["plain"](q, k, v)
        truth = [out.detach(), *torch.autograd.grad(out, (q, k, v), base[3].double())]
        for name, vals in results.items():
            errs = [(a - r).abs().max().item() for a, r in zip(vals, truth)]
            bad = max(errs) > tl
            failed |= bad
            print(f"  {str(dtype):15s} {name:6s} max|err| out/dq/dk/dv vs fp64: "
                  + " ".join(f"{e:.1e}" for e in errs) + ("  FAIL" if bad else ""))
    print("interpret-smoke:", "FAILED" if failed else "ok")
    return 1 if failed else 0


# ------------------------------------------------------------------ main --
def _slug(name: str) -> str:
    s = name.lower().replace("nvidia", "").strip()
    return re.sub(r"[^a-z0-9]+", "_", s).strip("_") or "gpu"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--interpret-smoke" in argv:
        # Triton bakes interpreted-vs-compiled in at import: set it before anything imports triton.
        os.environ["TRITON_INTERPRET"] = "1"
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/attention_<gpu>.json)")
    p.add_argument("--impls", nargs="+", default=["plain", "sdpa", "sdpa_flash", "triton"],
                   choices=["plain", "sdpa", "sdpa_flash", "sdpa_math", "triton"])
    p.add_argument("--shapes", nargs="+", default=None, help=f"subset of {[s[0] for s in SHAPES]}")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--inner", type=int, default=5, help="calls averaged per timed measurement")
    p.add_argument("--no-train-step", action="store_true", help="skip whole-model training-step timing")
    p.add_argument("--train-models", nargs="+", default=None, help=f"subset of {[t[0] for t in TRAIN_STEPS]}")
    p.add_argument("--train-impls", nargs="+", default=["plain", "sdpa", "triton"],
                   choices=["plain", "sdpa", "triton"])
    p.add_argument("--train-warmup", type=int, default=3)
    p.add_argument("--train-reps", type=int, default=10)
    p.add_argument("--interpret-smoke", action="store_true",
                   help="no GPU needed: run a tiny shape through all impls in the Triton interpreter")
    args = p.parse_args(argv)

    import torch

    if args.interpret_smoke:
        return interpret_smoke(torch)
    if not torch.cuda.is_available():
        print("bench/attention.py: timing needs a CUDA GPU (none found). "
              "Use --interpret-smoke for a CPU correctness smoke test.", file=sys.stderr)
        return 2
    from vitpose_scale.kernels.flash_attn import triton_available

    ok, why = triton_available()
    if not ok and "triton" in args.impls:
        print(f"triton implementation unavailable ({why}); timing the others only", file=sys.stderr)
        args.impls = [i for i in args.impls if i != "triton"]
        args.train_impls = [i for i in args.train_impls if i != "triton"]

    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    gpu = torch.cuda.get_device_name()
    report = {
        "gpu": gpu,
        "capability": list(torch.cuda.get_device_capability()),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "flop_convention": "fwd = 4*B*H*N^2*D; bwd = 2.5*fwd; fwd+bwd = 3.5*fwd (recompute not credited)",
        "timing": {"method": "cuda events, median", "warmup": args.warmup, "reps": args.reps, "inner": args.inner},
        "ratio_convention": "time_ratios are t_triton / t_other (< 1: triton faster)",
        "shapes": [],
    }
    impls = _impls(torch)
    shapes = [s for s in SHAPES if args.shapes is None or s[0] in args.shapes]
    for shape in shapes:
        entry = bench_shape(torch, impls, shape, args)
        report["shapes"].append(entry)
        line = [f"{shape[0]:20s}"]
        for name, r in entry["results"].items():
            line.append(f"{name}: " + (f"{r['fwd_bwd_ms']:.3f} ms ({r['fwd_bwd_tflops']:.0f} TF/s)"
                                       if "fwd_bwd_ms" in r else "error"))
        print("  ".join(line), flush=True)

    if args.no_train_step:
        report["train_step"] = {"skipped": "--no-train-step"}
    else:
        report["train_step"] = bench_train_steps(torch, args)
        print(json.dumps(report["train_step"], indent=1), flush=True)

    out = args.out or ROOT / "bench" / f"attention_{_slug(gpu)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
