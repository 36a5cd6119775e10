#!/usr/bin/env python
"""The first thing to run on a GPU machine: about 10 minutes on one GPU, exit code non-zero on any
failure, one summary table (stdout; --out also writes it as JSON and markdown).

    scripts/gpu_check.sh                       # = python bench/gpu_check.py (scripts/env.sh first)
    python bench/gpu_check.py --dry-run        # CPU, Triton interpreter, reduced sizes (test suite)

Checks, each a row of the table (PASS, FAIL, NOTE: information, never a failure):

1. environment  driver, GPU, compute capability (bf16 needs >= 8.0), shared memory per block,
                DS_ACCELERATOR agreeing with torch.cuda.is_available(), Triton usable.
2. attention    the Triton kernel at every shipped config's real (tokens, head dim, heads)
                (configs/*.yaml, configs/ablation/*.yaml, the MAE encoder's visible tokens and its
                decoder), in fp32, bf16 and fp16: output and dQ/dK/dV against float64, through the
                autotuner (what training runs) and with every autotune configuration forced once
                (the autotuner alone only ever runs its winner). A configuration that does not fit
                this GPU's shared memory is reported as a NOTE, not counted as a failure.
3. blocks       two G-shaped blocks at 576x432 (972 tokens, width 1408, head dim 88) and the head,
                bf16, activation checkpointing: Triton vs SDPA on heatmaps and every gradient (both
                measured against the fp32 model: bf16 rounding alone moves some gradients by a few
                %, so Triton must stay within BLOCKS_FACTOR x SDPA's error + BLOCKS_FLOOR).
4. zero3        TRAIN_STEPS steps of the small configs/demo.yaml model under the `deepspeed` launcher,
                ZeRO-3, bf16, Triton attention, one fixed batch: loss finite and falling.
5. two_gpu      the same on 2 GPUs when present (NCCL): both ranks get the same batch, so equal
                losses on both ranks show the gathered ZeRO-3 weights agree.

Errors are max |x - x_ref| / max |x_ref| against float64 on the same (rounded) inputs; TOLERANCE
below gives the limits (observed: fp32 ~1e-6, fp16 <1e-3, bf16 <1.2e-2 at the G shape).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Max error relative to the float64 reference's largest magnitude, for outputs and dq/dk/dv:
#  fp32: the kernel's dots run in full fp32 ("ieee", not tf32); 1e-4 leaves room for reduction order.
#  fp16: inputs, P and dS rounded to an 11-bit mantissa; bf16: to 8 bits (as FlashAttention-2 does).
TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}
# Triton vs SDPA through two bf16 blocks and the head, each against the fp32 model per tensor
# (||x - x_fp32|| / ||x_fp32||): Triton's error within BLOCKS_FACTOR x SDPA's + BLOCKS_FLOOR (observed at
# the dry-run size: ratio <= 1.1, both up to ~8 % on some gradients from bf16 rounding alone).
BLOCKS_FACTOR = 2.0
BLOCKS_FLOOR = 1e-2
TRAIN_STEPS = 30
DTYPES = ("float32", "bfloat16", "float16")
# --dry-run: the same code paths at toy sizes on the CPU
DRY_TRAIN_STEPS = 6
DRY_MODEL = ["model.embed_dim=32", "model.num_heads=2", "model.depth=2", "model.image_size=[32,32]",
             "model.head_channels=16"]


# ------------------------------------------------------------------ report --
class Report:
    def __init__(self):
        self.rows: list[dict] = []

    def add(self, part: str, check: str, status: str, detail: str = "") -> None:
        assert status in ("PASS", "FAIL", "NOTE"), status
        self.rows.append({"part": part, "check": check, "status": status, "detail": detail})
        print(f"[{part}] {status} {check}: {detail}", flush=True)

    @property
    def failures(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "FAIL"]

    def table(self) -> str:
        lines = ["| part | check | result | detail |", "|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r['part']} | {r['check']} | {r['status']} | {r['detail'].replace('|', '/')} |")
        return "\n".join(lines)


def error_text(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# --------------------------------------------------------------- shapes --
def shipped_attention_shapes() -> list[dict]:
    """(tokens, head dim, heads) of every attention the shipped configs run, deduplicated by
    (tokens, head dim): the pose models at their input size and patch stride, and for MAE configs
    the encoder on the visible tokens and the decoder on all of them."""
    from vitpose_scale.config import load_config

    seen: dict[tuple[int, int], dict] = {}

    def add(name, n, d, h):
        entry = seen.setdefault((n, d), {"N": n, "D": d, "H": h, "configs": []})
        entry["configs"].append(name)

    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        cfg = load_config(path)
        m = cfg.model.resolved()
        gh, gw = cfg.model.grid
        n = gh * gw
        name = path.relative_to(ROOT / "configs").with_suffix("").as_posix()
        if "\nmae:" in path.read_text():
            keep = int(round(n * (1.0 - cfg.mae.mask_ratio)))
            keep = min(max(keep, 1), n - 1)  # models/mae.py random_masking
            add(f"{name} (encoder)", keep, m.embed_dim // m.num_heads, m.num_heads)
            add(f"{name} (decoder)", n, cfg.mae.decoder_dim // cfg.mae.decoder_heads, cfg.mae.decoder_heads)
        else:
            add(name, n, m.embed_dim // m.num_heads, m.num_heads)
    return sorted(seen.values(), key=lambda e: (e["D"], e["N"]))


def dry_run_shapes(shapes: list[dict]) -> list[dict]:
    """One shape per head dim at a ragged toy token count (the interpreter is ~1000x slower)."""
    out: dict[int, dict] = {}
    for s in shapes:
        if s["D"] not in out:
            out[s["D"]] = dict(s, N=17 + s["N"] % 16, H=1, configs=s["configs"][:1])
    return list(out.values())


# -------------------------------------------------------------- numerics --
def _make_inputs(torch, shape: dict, dtype, device, batch: int, seed: int = 0):
    """q, k, v as the model's views of one fused qkv projection, dO as the head merge hands it back."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    b, n, h, d = batch, shape["N"], shape["H"], shape["D"]
    qkv = torch.randn(b, n, 3, h, d, generator=gen).to(device, dtype).permute(2, 0, 3, 1, 4)
    do = torch.randn(b, n, h, d, generator=gen).to(device, dtype).transpose(1, 2)
    return qkv[0], qkv[1], qkv[2], do


def reference(torch, q, k, v, do) -> list:
    qd, kd, vd = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    out = torch.softmax((qd @ kd.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1) @ vd
    return [out.detach(), *torch.autograd.grad(out, (qd, kd, vd), do.double())]


def run_impl(torch, fn, q, k, v, do) -> list:
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    return [out.detach(), *torch.autograd.grad(out, (q, k, v), do)]


def relative_errors(got: list, ref: list) -> list[float]:
    """max |x - ref| / max |ref| per tensor (out, dq, dk, dv); NaN where x is not finite."""
    errs = []
    for g, r in zip(got, ref):
        g = g.double()
        if not bool(g.isfinite().all()):
            errs.append(float("nan"))
            continue
        errs.append((g - r).abs().max().item() / max(r.abs().max().item(), 1e-30))
    return errs


def within(errs: list[float], tol: float) -> bool:
    return all(math.isfinite(e) and e <= tol for e in errs)


def fmt_errs(errs: list[float]) -> str:
    return "out/dq/dk/dv " + " ".join(f"{e:.1e}" for e in errs)


# --------------------------------------------------------- 1 environment --
def part_environment(torch, report: Report, args) -> None:
    from vitpose_scale.kernels.flash_attn import triton_available

    p = "environment"
    cuda = torch.cuda.is_available()
    report.add(p, "versions", "NOTE", f"python {platform.python_version()}, torch {torch.__version__} "
               f"(CUDA {torch.version.cuda}), triton {_version('triton')}, deepspeed {_version('deepspeed')}")
    if args.dry_run:
        report.add(p, "GPU", "NOTE", f"dry run: CPU only (torch.cuda.is_available() = {cuda})")
    elif not cuda:
        report.add(p, "GPU", "FAIL", "torch sees no CUDA GPU (CPU-only torch wheel, CUDA_VISIBLE_DEVICES, "
                   "or no driver); --dry-run checks the code paths on the CPU")
    else:
        report.add(p, "driver", "NOTE", _driver_version(torch))
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            major, minor = props.major, props.minor
            smem = _smem(i)
            report.add(p, f"GPU {i} compute capability", "PASS" if major >= 8 else "FAIL",
                       f"{props.name}, sm_{major}{minor}, {props.total_memory / 2**30:.0f} GiB, "
                       f"{smem // 1024 if smem else '?'} KB shared memory per block"
                       + ("" if major >= 8 else "; bf16 training and the Triton kernel need sm_80 or newer"))
    ds = os.environ.get("DS_ACCELERATOR")
    if ds is None:
        report.add(p, "DS_ACCELERATOR", "PASS", f"unset: DeepSpeed detects {'cuda' if cuda else 'cpu'} "
                   "(the training rows below report what it picked)")
    elif (ds == "cuda") == cuda and ds in ("cuda", "cpu"):
        report.add(p, "DS_ACCELERATOR", "PASS", f"{ds}, agrees with torch.cuda.is_available() = {cuda}")
    else:
        hint = ("DeepSpeed would keep the model on the CPU; unset it or set DS_ACCELERATOR=cuda" if cuda
                else "torch sees no GPU; DeepSpeed would fail to find one")
        report.add(p, "DS_ACCELERATOR", "FAIL", f"{ds} but torch.cuda.is_available() = {cuda}: {hint}")
    ok, why = triton_available()
    if ok and not args.dry_run and "interpreter" in why:
        ok, why = False, f"{why}: unset TRITON_INTERPRET to compile the kernels for the GPU"
    report.add(p, "Triton", "PASS" if ok else "FAIL", why)


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # noqa: BLE001
        return "not installed"


def _driver_version(torch) -> str:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30).stdout.strip().splitlines()
            if out:
                return f"NVIDIA driver {out[0]}, CUDA runtime {torch.version.cuda}"
        except (OSError, subprocess.SubprocessError):
            pass
    return f"NVIDIA driver: unknown (no nvidia-smi), CUDA runtime {torch.version.cuda}"


def _smem(index: int) -> int | None:
    try:
        from triton.runtime import driver

        return int(driver.active.utils.get_device_properties(index)["max_shared_mem"])
    except Exception:  # noqa: BLE001
        return None


# ------------------------------------------------------------ 2 attention --
def precompile(shapes: list[dict], batch: int, budget: Budget) -> str:
    """Compile every (shape, dtype, kernel, config) in parallel processes before the checks: the
    autotuner compiles one at a time, and ~500 compiles would take most of the 10 minutes.  They land
    in triton's cache (~/.triton/cache) with the very specialisation the checks launch with.  One
    head dim and dtype per worker: shapes that specialise alike then hit the cache, not each other."""
    buckets: dict[tuple, list[dict]] = {}
    for s in shapes:
        for dt in DTYPES:
            buckets.setdefault((s["D"], dt), []).append(dict(s, dtype=dt))
    workers = max(1, min(8, (os.cpu_count() or 2) // 2, len(buckets)))
    groups: list[list[dict]] = [[] for _ in range(workers)]
    for bucket in sorted(buckets.values(), key=len, reverse=True):
        min(groups, key=len).extend(bucket)
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--precompile-worker", json.dumps(g),
                               "--batch", str(batch)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for g in groups]
    failed = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(30.0, budget.left() - 300))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            failed.append("timed out (the checks compile the rest themselves)")
            continue
        if proc.returncode != 0:
            failed.append(out.strip().splitlines()[-1] if out.strip() else f"exit {proc.returncode}")
    took = time.monotonic() - t0
    jobs = sum(map(len, groups))
    if failed:
        return f"{jobs} shape/dtype pairs in {workers} processes, {took:.0f} s; failed: {failed[0][:200]}"
    return f"{jobs} shape/dtype pairs, every kernel and configuration, in {workers} processes, {took:.0f} s"


def precompile_worker(jobs: list[dict], batch: int) -> int:
    import torch

    from vitpose_scale.kernels import flash_attn as fa

    for job in jobs:
        dtype = getattr(torch, job["dtype"])
        q, k, v, _ = _make_inputs(torch, job, dtype, torch.device("cuda"), batch)
        with torch.cuda.device(q.device):
            fa.launch_plan(q, k, v, kinds=("fwd", "dkdv", "dq", "pre"))
    return 0


def part_attention(torch, report: Report, args, budget: Budget) -> None:
    """Per shape and dtype: every tile configuration forced once; through the autotuner (what
    training runs) in bf16 at every shape and in all dtypes at the largest shape (the autotuner
    benchmarks every candidate, ~5 s a shape: all 48 cases would not fit the 10 minutes)."""
    import torch.nn.functional as F

    from vitpose_scale.kernels import flash_attn as fa

    p = "attention"
    dev = torch.device("cpu" if args.dry_run else "cuda")
    shapes = shipped_attention_shapes()
    batch = 1 if args.dry_run else 2
    if args.dry_run:
        shapes = dry_run_shapes(shapes)
        report.add(p, "shapes", "NOTE", "dry run: one shape per head dim "
                   + ", ".join(f"N={s['N']} D={s['D']}" for s in shapes) + " (Triton interpreter)")
    else:
        report.add(p, "shapes", "NOTE", "; ".join(f"N={s['N']} D={s['D']} H={s['H']}: {', '.join(s['configs'])}"
                                                  for s in shapes))
        report.add(p, "precompile", "NOTE", precompile(shapes, batch, budget))
    largest = max(shapes, key=lambda s: (s["N"] * s["D"], s["D"]))
    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    for shape in shapes:
        for dt in DTYPES:
            check = f"N={shape['N']} D={shape['D']} H={shape['H']} {dt}"
            if budget.left() < 60:
                report.add(p, check, "FAIL", "not run: time budget spent")
                continue
            if args.dry_run:  # the interpreter's own tiles always; the GPU tiles forced at G's head dim,
                autotune = True  # fp16 sharing bf16's list through the same interpreted code
                force = shape["D"] == largest["D"] and dt != "float16"
            else:
                autotune, force = dt == "bfloat16" or shape is largest, True
            try:
                _attention_case(torch, fa, sdpa, report, p, check, shape, dt, dev, batch, autotune, force)
            except Exception as exc:  # noqa: BLE001 - recorded, the next shape runs
                report.add(p, check, "FAIL", error_text(exc))
            finally:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()


def _attention_case(torch, fa, sdpa, report, p, check, shape, dt, dev, batch, autotune: bool, force: bool) -> None:
    dtype = getattr(torch, dt)
    tol = TOLERANCE[dt]
    q, k, v, do = _make_inputs(torch, shape, dtype, dev, batch)
    ref = reference(torch, q, k, v, do)
    reason = fa.unsupported_reason(q, k, v)
    if reason is not None:
        report.add(p, check, "FAIL", f"the kernel refuses this shape here: {reason}")
        return
    parts, bad, notes = [], [], []
    if autotune:
        errs = relative_errors(run_impl(torch, fa.flash_attention, q, k, v, do), ref)
        parts.append(f"{'interpreter tiles' if fa._interpreting() else 'autotuned'} {fmt_errs(errs)}")
        if not within(errs, tol):
            bad.append("autotuned")
    try:
        parts.append(f"sdpa {fmt_errs(relative_errors(run_impl(torch, sdpa, q, k, v, do), ref))[13:]}")
    except Exception as exc:  # noqa: BLE001 - context only
        parts.append(f"sdpa: {error_text(exc)}")
    if force:
        plan = None if fa._interpreting() else fa.launch_plan(q, k, v)
        configs = {kind: fa._gpu_configs(kind, dtype) for kind in fa.KINDS}
        forced, worst = 0, [0.0] * 4
        for i in range(max(map(len, configs.values()))):
            pick = {}
            for kind, cfgs in configs.items():
                if i >= len(cfgs):
                    continue
                entry = plan[kind][i] if plan else None
                if entry is not None and not entry["fits"]:
                    notes.append(f"{kind} {entry['name']} does not fit ({math.ceil(entry['shared'] / 1024)} KB > "
                                 f"{entry['limit'] // 1024} KB)")
                    continue
                pick[kind] = cfgs[i]
            if not pick:
                continue
            with fa.forced_configs(**pick):
                e = relative_errors(run_impl(torch, fa.flash_attention, q, k, v, do), ref)
            forced += len(pick)
            worst = [max(a, b) if math.isfinite(b) else b for a, b in zip(worst, e)]
            if not within(e, tol):
                bad.append(f"{'+'.join(f'{kind} {fa.config_name(c)}' for kind, c in pick.items())}: {fmt_errs(e)}")
        parts.append(f"{forced} forced configurations, worst {fmt_errs(worst)[13:]}")
    detail = f"tol {tol:.0e}; " + "; ".join(parts) + (f"; OVER: {'; '.join(bad)}" if bad else "")
    report.add(p, check, "FAIL" if bad else "PASS", detail)
    for note in notes:
        report.add(p, f"{check} tile configuration", "NOTE", note + ": skipped on this GPU, not a failure")


# --------------------------------------------------------------- 3 blocks --
def part_blocks(torch, report: Report, args) -> None:
    """Heatmaps and every gradient of a bf16 model with Triton attention against the same model with
    SDPA. Both carry bf16 rounding through every layer (a few % on some gradients), so each is measured
    against the fp32 model (SDPA, no TF32) and Triton must come within BLOCKS_FACTOR x SDPA's error
    + BLOCKS_FLOOR; the direct Triton-SDPA distance is reported too."""
    import copy

    from vitpose_scale.config import ModelConfig
    from vitpose_scale.models.attention import _warned_fallback
    from vitpose_scale.models.pose import build_pose_model

    p = "blocks"
    dev = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:  # G's head dim (88) and MLP ratio at a toy width and input
        cfg = ModelConfig(preset="G", embed_dim=176, num_heads=2, depth=2, image_size=[64, 48],
                          activation_checkpointing=True, attention="sdpa", drop_path=0.0, head_channels=16)
        batch = 1
    else:
        cfg = ModelConfig(preset="G", depth=2, image_size=[576, 432], activation_checkpointing=True,
                          attention="sdpa", drop_path=0.0)
        batch = 2
    torch.manual_seed(0)
    model = build_pose_model(cfg)
    model.init_weights()
    # eval(): BatchNorm on fixed statistics, so the deconvolution biases in front of it get real
    # gradients (in train mode theirs is zero but for rounding, and a ratio of two rounding noises
    # says nothing). Checkpointing follows grad mode, not train mode: still on.
    model32 = copy.deepcopy(model).to(dev).eval()
    model = model.to(dev, torch.bfloat16).eval()
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(batch, 3, *cfg.image_size, generator=gen).to(dev)
    gy = None

    def run(m, impl, dtype):
        nonlocal gy
        m.backbone.set_attention(impl)
        m.zero_grad(set_to_none=True)
        xi = x.detach().to(dtype).clone().requires_grad_(True)
        out = m(xi)
        if gy is None:
            gy = torch.randn(out.shape, generator=gen).to(dev)
        out.backward(gy.to(out.dtype))
        return {"heatmaps": out.detach().float(), "input": xi.grad.float(),
                **{n: prm.grad.float() for n, prm in m.named_parameters() if prm.grad is not None}}

    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = run(model32, "sdpa", torch.float32)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    del model32
    results = {impl: run(model, impl, torch.bfloat16) for impl in ("sdpa", "triton")}
    fallbacks = sorted(_warned_fallback)
    if fallbacks:
        report.add(p, "Triton used", "FAIL", f"model.attention=triton fell back to sdpa: {fallbacks[0]}")
        return
    bad, nonfinite, worst_direct, worst_ratio = [], [], (0.0, ""), (0.0, "")
    for name, r in ref.items():
        tri, sd = results["triton"].get(name), results["sdpa"].get(name)
        if tri is None or not bool(tri.isfinite().all()):
            nonfinite.append(name)
            continue
        norm = r.norm().clamp_min(1e-30)
        e_tri, e_sdpa = ((tri - r).norm() / norm).item(), ((sd - r).norm() / norm).item()
        direct = ((tri - sd).norm() / sd.norm().clamp_min(1e-30)).item()
        worst_direct = max(worst_direct, (direct, name))
        worst_ratio = max(worst_ratio, (e_tri / max(e_sdpa, 1e-30), name))
        if e_tri > BLOCKS_FACTOR * e_sdpa + BLOCKS_FLOOR:
            bad.append(f"{name} {e_tri:.1e} vs sdpa {e_sdpa:.1e}")
    shape = f"{cfg.image_size[0]}x{cfg.image_size[1]}, {cfg.grid[0] * cfg.grid[1]} tokens, head dim " \
            f"{(cfg.embed_dim or 1408) // (cfg.num_heads or 16)}"
    detail = (f"{shape}, bf16, checkpointing: heatmaps and {len(ref) - 1} gradients vs the fp32 model, "
              f"Triton error <= {BLOCKS_FACTOR:g} x SDPA's + {BLOCKS_FLOOR:g}: worst ratio {worst_ratio[0]:.2f} "
              f"({worst_ratio[1]}); direct ||triton - sdpa|| / ||sdpa|| up to {worst_direct[0]:.1e} ({worst_direct[1]})")
    if nonfinite:
        detail += f"; not finite: {', '.join(nonfinite[:5])}"
    if bad:
        detail += f"; over: {'; '.join(bad[:5])}"
    report.add(p, "two G blocks, Triton vs SDPA", "FAIL" if bad or nonfinite else "PASS", detail)


# ----------------------------------------------------------- 4/5 training --
def train_sets(dry_run: bool) -> list[str]:
    sets = ["parallel.backend=deepspeed", "parallel.zero_stage=3", "parallel.precision=bf16",
            "model.attention=triton", "model.activation_checkpointing=true", "model.drop_path=0.0",
            "parallel.zero3_persistence_threshold=0"]
    return sets + (DRY_MODEL if dry_run else [])


def train_worker(out: Path, steps: int, dry_run: bool) -> int:
    """One rank under the deepspeed launcher: the trainer's own DeepSpeed wrapper (ZeRO-3, bf16) on
    one fixed batch, the same on every rank; writes out.<rank>.json."""
    import torch
    import torch.distributed as dist

    from vitpose_scale.config import load_config
    from vitpose_scale.engine.distributed import init_distributed, shutdown
    from vitpose_scale.engine.parallel import wrap
    from vitpose_scale.engine.trainer import heatmap_loss
    from vitpose_scale.models import attention as attn_mod
    from vitpose_scale.models.pose import build_pose_model

    info = init_distributed(True)
    cfg = load_config(ROOT / "configs" / "demo.yaml", train_sets(dry_run))
    torch.manual_seed(0)
    model = build_pose_model(cfg.model, device=info.device)
    model.init_weights()
    wrapper = wrap(model, cfg, info)
    wrapper.train(True)
    micro = 2 if dry_run else 16
    gen = torch.Generator(device="cpu").manual_seed(0)
    h, w = cfg.model.image_size
    hh, ww = cfg.model.heatmap_size
    images = torch.randn(micro, 3, h, w, generator=gen).to(info.device)
    target = torch.rand(micro, cfg.model.num_keypoints, hh, ww, generator=gen).to(info.device)
    weight = torch.ones(micro, cfg.model.num_keypoints, 1, device=info.device)
    losses, global_losses = [], []
    for _ in range(steps):
        loss = heatmap_loss(wrapper.forward(images), target, weight)
        wrapper.backward(loss)
        wrapper.step()
        value = loss.detach().float().reshape(1)
        losses.append(value.item())
        if dist.is_initialized() and info.world_size > 1:
            dist.all_reduce(value)
            value /= info.world_size
        global_losses.append(value.item())
    from deepspeed.accelerator import get_accelerator

    partitioned = [getattr(p, "ds_numel", None) is not None for p in wrapper.module.parameters()]
    record = {"rank": info.rank, "world_size": info.world_size, "device": str(info.device),
              "backend": dist.get_backend() if dist.is_initialized() else None,
              "accelerator": get_accelerator().device_name(), "losses": losses, "global_losses": global_losses,
              "zero3_partitioned": bool(partitioned) and all(partitioned),
              "fallbacks": sorted(attn_mod._warned_fallback), "micro_batch": micro}
    Path(f"{out}.{info.rank}.json").write_text(json.dumps(record))
    shutdown()
    return 0


class TrainingRun:
    """train_worker under `deepspeed --num_gpus gpus`, started now; records() waits for its ranks."""

    def __init__(self, gpus: int, args):
        self.gpus = gpus
        steps = DRY_TRAIN_STEPS if args.dry_run else TRAIN_STEPS
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_train_"))
        self.out = self.tmp / "losses"
        deepspeed = Path(sys.executable).parent / "deepspeed"
        launcher = [str(deepspeed)] if deepspeed.exists() else [sys.executable, "-m", "deepspeed.launcher.runner"]
        port = 29500 + (os.getpid() * 7 + gpus) % 2000
        cmd = [*launcher, "--num_gpus", str(gpus), "--master_port", str(port), str(Path(__file__).resolve()),
               "--train-worker", str(self.out), "--steps", str(steps)] + (["--dry-run"] if args.dry_run else [])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if args.dry_run:
            env.update(DS_ACCELERATOR="cpu", TRITON_INTERPRET="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        self.log = open(self.tmp / "launcher.log", "w+")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def records(self, timeout: float) -> list[dict]:
        try:
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"deepspeed --num_gpus {self.gpus} timed out after {timeout:.0f} s: "
                                   f"...{self._tail(600)}") from None
            if code != 0:
                raise RuntimeError(f"deepspeed --num_gpus {self.gpus} exited {code}: ...{self._tail(600)}")
            return [json.loads(Path(f"{self.out}.{r}.json").read_text()) for r in range(self.gpus)]
        finally:
            self.log.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _tail(self, chars: int) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-chars:]


def _falling(losses: list[float]) -> bool:
    k = max(1, len(losses) // 5)
    return sum(losses[-k:]) / k < 0.9 * sum(losses[:k]) / k


def part_train(torch, report: Report, args, budget: Budget, gpus: int, run: TrainingRun | None = None) -> None:
    run = run or TrainingRun(gpus, args)
    check_training(report, run.records(timeout=max(60.0, min(budget.left(), 300.0))), gpus, args.dry_run)


def check_training(report: Report, records: list[dict], gpus: int, dry_run: bool) -> None:
    """Rows for the ranks' records of one deepspeed run."""
    p = "zero3" if gpus == 1 else "two_gpu"
    expect_device, expect_backend = ("cpu", "gloo") if dry_run else ("cuda", "nccl")
    steps = len(records[0]["losses"])
    for r in records:
        if r["fallbacks"]:
            report.add(p, f"rank {r['rank']} Triton used", "FAIL", f"fell back to sdpa: {r['fallbacks'][0]}")
        if (r["accelerator"] != expect_device or not r["device"].startswith(expect_device)
                or (gpus > 1 and r["backend"] != expect_backend)):
            report.add(p, f"rank {r['rank']} device", "FAIL", f"DeepSpeed accelerator {r['accelerator']}, rank device "
                       f"{r['device']}, backend {r['backend']}; expected {expect_device}"
                       + (f" and {expect_backend}" if gpus > 1 else ""))
    r0 = records[0]
    losses = r0["global_losses"]
    finite = all(math.isfinite(x) for r in records for x in r["losses"] + r["global_losses"])
    ok = finite and _falling(losses) and r0["zero3_partitioned"]
    what = (f"deepspeed --num_gpus {gpus}, ZeRO-3 ({'partitioned' if r0['zero3_partitioned'] else 'NOT partitioned'}),"
            f" bf16, Triton attention, {r0['backend']}, {steps} steps, micro-batch {r0['micro_batch']}")
    report.add(p, "loss finite and falling", "PASS" if ok else "FAIL",
               f"{what}: loss {losses[0]:.4g} -> {losses[-1]:.4g}" + ("" if finite else " (NOT finite)"))
    if gpus > 1:
        diffs = [max(abs(a - b) / max(abs(b), 1e-30) if math.isfinite(a) and math.isfinite(b) else math.inf
                     for a, b in zip(r["losses"], r0["losses"])) for r in records[1:]]
        worst = max(diffs)
        report.add(p, "both ranks' losses equal", "PASS" if worst <= 1e-6 else "FAIL",
                   f"same batch on every rank: largest relative difference {worst:.1e} over {steps} steps (tol 1e-6)")


# ------------------------------------------------------------------ main --
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, reduced sizes")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as JSON (and .md next to it)")
    parser.add_argument("--budget-s", type=float, default=600.0, help="time budget (default 10 minutes)")
    parser.add_argument("--parts", nargs="+", default=["environment", "attention", "blocks", "zero3", "two_gpu"])
    parser.add_argument("--train-worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precompile-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=TRAIN_STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    args = parser.parse_args(argv)
    if args.dry_run:  # decided when torch / triton / deepspeed are imported: CPU only, even on a GPU host
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["DS_ACCELERATOR"] = "cpu"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if args.train_worker is not None:
        return train_worker(args.train_worker, args.steps, args.dry_run)
    if args.precompile_worker is not None:
        return precompile_worker(json.loads(args.precompile_worker), args.batch)

    import torch

    if args.dry_run:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    report = Report()
    t0 = time.monotonic()
    budget = Budget(args.budget_s)
    gpus = 0 if args.dry_run else (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    # Dry run: the deepspeed launches (mostly start-up: imports, process groups) overlap the rest.
    early = {name: TrainingRun(n, args) for name, n in (("zero3", 1), ("two_gpu", 2))
             if args.dry_run and name in args.parts}
    parts = {
        "environment": lambda: part_environment(torch, report, args),
        "attention": lambda: part_attention(torch, report, args, budget),
        "blocks": lambda: part_blocks(torch, report, args),
        "zero3": lambda: part_train(torch, report, args, budget, 1, early.get("zero3")),
        "two_gpu": lambda: part_train(torch, report, args, budget, 2, early.get("two_gpu")),
    }
    need = {"environment": 0, "attention": 120, "blocks": 20, "zero3": 60, "two_gpu": 60}
    for name in args.parts:
        if name not in parts:
            report.add(name, "part", "FAIL", f"unknown part (known: {', '.join(parts)})")
            continue
        if name != "environment" and not args.dry_run and gpus == 0:
            report.add(name, "part", "FAIL", "not run: no CUDA GPU")
            continue
        if name == "two_gpu" and not args.dry_run and gpus < 2:
            report.add(name, "part", "NOTE", f"not run: {gpus} GPU on this machine (the check needs 2)")
            continue
        if budget.left() < need[name] * (0.1 if args.dry_run else 1.0):
            report.add(name, "part", "FAIL", f"not run: time budget ({budget.left():.0f} s left)")
            continue
        start = time.monotonic()
        try:
            parts[name]()
        except Exception as exc:  # noqa: BLE001 - recorded, the next part runs
            report.add(name, "part", "FAIL", error_text(exc))
            traceback.print_exc()
        print(f"[{name}] {time.monotonic() - start:.0f} s", flush=True)
    total = time.monotonic() - t0
    failures = report.failures
    header = (f"# GPU check{' (dry run, CPU)' if args.dry_run else ''}: "
              f"{'FAILED (' + str(len(failures)) + ')' if failures else 'all passed'} in {total:.0f} s")
    text = header + "\n\n" + report.table() + "\n"
    print("\n" + text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"dry_run": args.dry_run, "seconds": total, "passed": not failures,
                                        "tolerance": TOLERANCE,
                                        "blocks_tolerance": {"factor": BLOCKS_FACTOR, "floor": BLOCKS_FLOOR},
                                        "rows": report.rows}, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
