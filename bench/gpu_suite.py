#!/usr/bin/env python
"""The GPU figures in one command: one JSON and one markdown table (about 8 minutes on an H100/H200).

    python bench/gpu_suite.py                       # -> bench/gpu_suite_<gpu>.json and .md
    python bench/gpu_suite.py --smoke --out /tmp/s.json   # same code paths, tiny shapes, CPU (tests)

Run bench/gpu_check.py (scripts/gpu_check.sh) first: it checks correctness; this measures speed.
Exit code non-zero when a part fails or is skipped, a loss or an error is NaN, or the Triton kernel's
errors exceed their thresholds. Parts, each guarded (an OOM or a missing kernel is recorded in the
JSON and the rest runs), all under one time budget (--budget-s, counted from the end of set-up):

1. attention    fused attention forward+backward at the B 256x192, H 256x192, G 576x432 and
                G stride-8 (576x432) shapes: our Triton kernel, SDPA flash, SDPA math, plain
                (bench/attention.py: FLOP convention 3.5 x forward, time ratios), and each one's
                forward and dQ/dK/dV errors against float64 (bf16 inputs; threshold
                gpu_check.TOLERANCE["bfloat16"], binding for Triton)
2. train        one training step of B, L, H and G (DeepSpeed wrapper of the trainer, 1 rank,
                bf16, checkpointing on), at the largest micro-batch that fits (the planner's
                pick, halved on OOM): images/s, TFLOP/s (3 x forward FLOPs, recomputation not
                credited, as the trainer logs), MFU against the GPU's bf16 peak, peak memory
                next to `vitpose-scale plan`'s estimate, and the loss of every timed step
3. inference    images/s of B, L, H at batch 64, 256x192, bf16, next to the official A100 figures
4. compile      the B training step with torch.compile off and on
5. zero3        gpu_check's DeepSpeed ZeRO-3 bf16 run with Triton attention under the deepspeed
                launcher on 1 GPU: loss finite and falling
6. two_gpu      the same on 2 GPUs (NCCL), both ranks' losses equal; not applicable on 1 GPU
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# (name, batch, heads, tokens, head_dim) at the shapes the models run
ATTENTION_SHAPES = [("B_256x192", 64, 12, 192, 64), ("H_256x192", 64, 16, 192, 80),
                    ("G_576x432", 8, 16, 972, 88), ("G_stride8_576x432", 2, 16, 3888, 88)]
SMOKE_ATTENTION = [(name, 1, 1, 19, 24) for name, *_ in ATTENTION_SHAPES]  # ragged N, odd D
ATTENTION_IMPLS = ["triton", "sdpa_flash", "sdpa_math", "plain"]
TRAIN_CONFIGS = [("B", "configs/vitpose_b_256x192.yaml"), ("L", "configs/vitpose_l_256x192.yaml"),
                 ("H", "configs/vitpose_h_256x192.yaml"), ("G", "configs/vitpose_g_576x432.yaml")]
OFFICIAL_A100_FPS = {"B": 944, "L": 411, "H": 241}  # ViTPose model zoo, A100, batch 64, 256x192
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
# --smoke: the same presets' code paths at a toy size on the CPU
SMOKE_MODEL = ["model.preset=tiny", "model.embed_dim=32", "model.num_heads=2", "model.depth=2",
               "model.image_size=[32,32]", "model.head_channels=16"]


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def error_text(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:300]


def run_part(name: str, func, report: dict, budget: Budget, min_seconds: float) -> None:
    """Run one part; its exceptions land in the report, never stop the suite."""
    if budget.left() < min_seconds:
        report[name] = {"skipped": f"time budget: {budget.left():.0f} s left, part needs ~{min_seconds:.0f} s"}
        return
    t0 = time.monotonic()
    try:
        report[name] = func()
    except Exception as exc:  # noqa: BLE001 - recorded, the next part runs
        report[name] = {"error": error_text(exc), "traceback": traceback.format_exc(limit=4)}
    report[name]["seconds"] = round(time.monotonic() - t0, 1)
    print(f"[{name}] done in {report[name]['seconds']} s", flush=True)


def free_memory(torch) -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def bf16_peak(torch, override: float | None) -> float | None:
    if override:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


# -------------------------------------------------------------- 1 attention --
def part_attention(torch, args, budget: Budget) -> dict:
    import attention as attn_bench

    impls = attn_bench._impls(torch)
    opts = argparse.Namespace(impls=ATTENTION_IMPLS, warmup=0 if args.smoke else 5,
                              reps=1 if args.smoke else 10, inner=1 if args.smoke else 3)
    out = {"flop_convention": "fwd = 4*B*H*N^2*D; fwd+bwd = 3.5 x fwd", "shapes": []}
    for shape in SMOKE_ATTENTION if args.smoke else ATTENTION_SHAPES:
        if budget.left() < 5:
            out["shapes"].append({"name": shape[0], "skipped": "time budget"})
            continue
        try:
            entry = attn_bench.bench_shape(torch, impls, shape, opts)
        except Exception as exc:  # noqa: BLE001
            entry = {"name": shape[0], "error": error_text(exc)}
        if "error" not in entry:
            entry["accuracy"] = attention_accuracy(torch, shape, smoke=args.smoke)
        tri = entry.get("results", {}).get("triton", {})
        flash = entry.get("results", {}).get("sdpa_flash", {})
        if "fwd_bwd_tflops" in tri and "fwd_bwd_tflops" in flash:
            entry["triton_over_sdpa_flash_tflops"] = tri["fwd_bwd_tflops"] / flash["fwd_bwd_tflops"]
        out["shapes"].append(entry)
        free_memory(torch)
    return out


def attention_accuracy(torch, shape, smoke: bool) -> dict:
    """Forward and dQ/dK/dV errors of every implementation against float64, bf16 inputs (up to 2 batch
    entries x 4 heads of the shape: attention is independent per (batch, head), and the float64
    reference of all of G stride 8 would need ~12 GB)."""
    import attention as attn_bench
    import gpu_check

    name, b, h, n, d = shape
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device="cpu").manual_seed(1)
    q, k, v, do = (torch.randn(min(b, 2), min(h, 4), n, d, generator=gen).to(dev, torch.bfloat16) for _ in range(4))
    ref = gpu_check.reference(torch, q, k, v, do)
    tol = gpu_check.TOLERANCE["bfloat16"]
    impls = attn_bench._impls(torch)
    out = {"threshold": tol, "metric": "max |x - x_fp64| / max |x_fp64|, bf16 inputs", "impls": {}}
    for impl in ATTENTION_IMPLS:
        try:
            errs = gpu_check.relative_errors(gpu_check.run_impl(torch, impls[impl], q, k, v, do), ref)
        except Exception as exc:  # noqa: BLE001 - e.g. flash refusing a head dim or the CPU
            out["impls"][impl] = {"error": error_text(exc)}
            continue
        out["impls"][impl] = {"fwd_err": errs[0], "bwd_err": max(errs[1:]), "dq_err": errs[1], "dk_err": errs[2],
                              "dv_err": errs[3], "within_threshold": gpu_check.within(errs, tol)}
    del ref
    free_memory(torch)
    return out


# ------------------------------------------------------------------ 2 train --
class Stepper:
    """One rank of the trainer's own DeepSpeed wrapper on random crops and targets."""

    def __init__(self, torch, cfg, info, micro: int, compile_model: str | None = None):
        from vitpose_scale.engine.parallel import wrap
        from vitpose_scale.models.pose import build_pose_model

        self.torch = torch
        model = build_pose_model(cfg.model, device=info.device)  # G: no 4 GB CPU copy first
        model.init_weights()
        if compile_model:
            model.compile(backend=compile_model)
        self.wrapper = wrap(model, cfg, info)
        self.wrapper.train(True)
        h, w = cfg.model.image_size
        hh, ww = cfg.model.heatmap_size
        dev = info.device
        gen = torch.Generator(device=dev).manual_seed(0)
        self.images = torch.randn(micro, 3, h, w, device=dev, generator=gen)
        self.target = torch.rand(micro, cfg.model.num_keypoints, hh, ww, device=dev, generator=gen)
        self.weight = torch.ones(micro, cfg.model.num_keypoints, 1, device=dev)

    def step(self):
        from vitpose_scale.engine.trainer import heatmap_loss

        loss = heatmap_loss(self.wrapper.forward(self.images), self.target, self.weight)
        self.wrapper.backward(loss)
        self.wrapper.step()
        return loss.detach()

    def close(self) -> None:
        self.wrapper = self.images = self.target = self.weight = None


def timed_steps(torch, stepper: Stepper, warmup: int, steps: int) -> tuple[float, list[float]]:
    """(median seconds per step, the loss of every step, warm-up included)."""
    import statistics

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    losses = [stepper.step() for _ in range(warmup)]
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(stepper.step())
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), [float(x) for x in losses]  # .item() after the timing: no extra syncs


def train_config(name: str, path: str, args):
    from vitpose_scale.config import load_config

    sets = ["parallel.backend=deepspeed", "parallel.precision=bf16", "model.activation_checkpointing=true",
            "parallel.zero_stage=0", "parallel.grad_accum=1"]
    if args.smoke:
        sets += SMOKE_MODEL + ["model.attention=triton"]
    return load_config(ROOT / path, sets)


def planned_micro_batches(cfg, gpu_gb: float, smoke: bool) -> list[tuple[int, float]]:
    """(micro-batch, planned peak GB) from the largest the planner fits on one GPU, down by halves."""
    from vitpose_scale import plan

    if smoke:
        return [(2, 0.0), (1, 0.0)]
    shape = plan.model_shape(cfg)
    out = []
    for micro in (256, 128, 96, 64, 48, 32, 24, 16, 8, 4, 2, 1):
        setting = plan.Setting(0, "none", "none", True, micro, 1)
        bucket = plan.bucket_elements(cfg, shape.params, 1)
        states = plan.model_state_bytes(shape, setting, 1, "bf16", bucket, cfg.parallel.zero3_persistence_threshold)
        acts = plan.saved_activation_bytes(shape, micro, "bf16", True)
        work = plan.working_bytes(shape, setting, 1, "bf16", bucket)
        peak = plan.peak_gpu_bytes(states["gpu"], acts, work) / plan.GB
        if peak <= gpu_gb or out:
            out.append((micro, peak))
    return out


def train_one(torch, name: str, path: str, args, info, budget: Budget, compile_backend: str | None = None) -> dict:
    from vitpose_scale.models.pose import forward_flops_per_image

    cfg = train_config(name, path, args)
    gpu_gb = (torch.cuda.get_device_properties(0).total_memory / 1e9) if torch.cuda.is_available() else 0.0
    flops = forward_flops_per_image(cfg.model)
    peak_tflops = bf16_peak(torch, args.peak_tflops)
    tried = []
    for micro, planned_gb in planned_micro_batches(cfg, gpu_gb, args.smoke):
        if budget.left() < 10:
            return {"error": "time budget exhausted while searching the micro-batch", "tried": tried}
        stepper = None
        try:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            stepper = Stepper(torch, cfg, info, micro, compile_backend)
            seconds, losses = timed_steps(torch, stepper, 0 if args.smoke else 2, 1 if args.smoke else 4)
            ips = micro / seconds
            tflops = 3 * flops * ips / 1e12
            result = {"micro_batch": micro, "image_size": cfg.model.image_size, "attention": cfg.model.attention,
                      "seconds_per_step": seconds, "images_per_s": ips, "tflops": tflops,
                      "mfu": tflops / peak_tflops if peak_tflops else None, "plan_peak_gb": planned_gb,
                      "tried": tried, "compile": compile_backend, "losses": losses,
                      "loss_finite": all(math.isfinite(x) for x in losses)}
            if torch.cuda.is_available():
                result["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
                result["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9
            return result
        except Exception as exc:  # noqa: BLE001
            tried.append({"micro_batch": micro, "error": error_text(exc)})
            if not is_oom(exc):
                return {"error": error_text(exc), "tried": tried}
        finally:
            if stepper is not None:
                stepper.close()
            del stepper
            free_memory(torch)
    return {"error": "no micro-batch fits", "tried": tried}


def part_train(torch, args, info, budget: Budget) -> dict:
    out = {"settings": "DeepSpeed ZeRO-0 on 1 rank, bf16, activation checkpointing, model.attention of each config",
           "peak_tflops_bf16": bf16_peak(torch, args.peak_tflops)}
    for name, path in TRAIN_CONFIGS:
        if budget.left() < 20:
            out[name] = {"skipped": "time budget"}
            continue
        try:
            out[name] = train_one(torch, name, path, args, info, budget)
        except Exception as exc:  # noqa: BLE001
            out[name] = {"error": error_text(exc)}
        print(f"  train {name}: {json.dumps(out[name])[:200]}", flush=True)
    return out


# -------------------------------------------------------------- 3 inference --
def part_inference(torch, args, budget: Budget) -> dict:
    from vitpose_scale.config import load_config
    from vitpose_scale.models.pose import build_pose_model

    out = {"settings": "batch 64, 256x192, bf16 weights, no_grad, sdpa attention; official: A100, batch 64"}
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for name, path in TRAIN_CONFIGS[:3]:
        if budget.left() < 10:
            out[name] = {"skipped": "time budget"}
            continue
        try:
            sets = ["model.activation_checkpointing=false", "model.attention=sdpa"] + (SMOKE_MODEL if args.smoke else [])
            cfg = load_config(ROOT / path, sets)
            model = build_pose_model(cfg.model).to(dev, torch.bfloat16).eval()
            batch = 2 if args.smoke else 64
            images = torch.randn(batch, 3, *cfg.model.image_size, device=dev, dtype=torch.bfloat16)
            import attention as attn_bench

            with torch.no_grad():
                ms = attn_bench._time_cuda(torch, lambda: model(images), 0 if args.smoke else 5,
                                           1 if args.smoke else 10, 1)
            out[name] = {"batch": batch, "ms_per_batch": ms, "images_per_s": batch / (ms * 1e-3),
                         "official_a100_images_per_s": OFFICIAL_A100_FPS[name]}
            model = images = None  # free before the next preset (the timing closure is done)
        except Exception as exc:  # noqa: BLE001
            out[name] = {"error": error_text(exc), "official_a100_images_per_s": OFFICIAL_A100_FPS[name]}
        free_memory(torch)
    return out


# ---------------------------------------------------------------- 4 compile --
def part_compile(torch, args, info, budget: Budget) -> dict:
    # On a GPU inductor compiles the model; --smoke goes through torch.compile with the eager
    # backend (the same dynamo capture, no C++/Triton code generation on a 2-core CPU).
    backend = "eager" if args.smoke else "inductor"
    name, path = TRAIN_CONFIGS[0]
    out = {"model": name, "backend": backend}
    for label, compile_backend in (("off", None), ("on", backend)):
        if budget.left() < 30:
            out[label] = {"skipped": "time budget"}
            continue
        try:
            out[label] = train_one(torch, name, path, args, info, budget, compile_backend)
        except Exception as exc:  # noqa: BLE001
            out[label] = {"error": error_text(exc)}
    if "images_per_s" in out.get("off", {}) and "images_per_s" in out.get("on", {}):
        out["speedup"] = out["on"]["images_per_s"] / out["off"]["images_per_s"]
    return out


# ------------------------------------------------------------ 5/6 zero3 --
def part_training_check(torch, args, budget: Budget, gpus: int) -> dict:
    """gpu_check's deepspeed run (ZeRO-3, bf16, Triton attention, one fixed batch on every rank)."""
    import gpu_check

    check_args = argparse.Namespace(dry_run=args.smoke)
    report = gpu_check.Report()
    run = gpu_check.TrainingRun(gpus, check_args)
    records = run.records(timeout=max(60.0, min(budget.left(), 300.0)))
    gpu_check.check_training(report, records, gpus, args.smoke)
    return {"gpus": gpus, "passed": not report.failures, "checks": report.rows,
            "losses": records[0]["global_losses"], "rank_losses": [r["losses"] for r in records]}


# ----------------------------------------------------------------- report --
def fmt(value, spec: str = ".1f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def problems(report: dict) -> list[str]:
    """Why the suite fails: parts that errored or were skipped, NaN, Triton over its error threshold."""
    out = []
    for name in report.get("parts", []):
        part = report.get(name, {})
        if "error" in part or "skipped" in part:
            out.append(f"{name}: {part.get('error') or part.get('skipped')}")
    for e in report.get("attention", {}).get("shapes", []):
        if "error" in e or "skipped" in e:
            out.append(f"attention {e['name']}: {e.get('error') or e.get('skipped')}")
            continue
        for impl, r in e.get("results", {}).items():
            if impl == "triton" and "error" in r:
                out.append(f"attention {e['name']} triton: {r['error']}")
        for impl, r in e.get("accuracy", {}).get("impls", {}).items():
            errs = [r.get(k) for k in ("fwd_err", "dq_err", "dk_err", "dv_err")]
            if any(isinstance(x, float) and math.isnan(x) for x in errs):
                out.append(f"attention {e['name']} {impl}: NaN")
            elif impl == "triton" and not r.get("within_threshold", False):
                out.append(f"attention {e['name']} triton: {r.get('error') or 'errors over the threshold'} "
                           f"(fwd {fmt(r.get('fwd_err'), '.1e')}, bwd {fmt(r.get('bwd_err'), '.1e')})")
    for part in ("train", "compile"):
        for name, r in report.get(part, {}).items():
            if not isinstance(r, dict):
                continue
            if "error" in r or "skipped" in r:
                out.append(f"{part} {name}: {r.get('error') or r.get('skipped')}")
            elif "loss_finite" in r and not r["loss_finite"]:
                out.append(f"{part} {name}: loss not finite {r['losses']}")
    for name, r in report.get("inference", {}).items():
        if isinstance(r, dict) and ("error" in r or "skipped" in r):
            out.append(f"inference {name}: {r.get('error') or r.get('skipped')}")
    for name in ("zero3", "two_gpu"):
        r = report.get(name, {})
        if r and "passed" in r and not r["passed"]:
            out.append(f"{name}: " + "; ".join(f"{c['check']}: {c['detail']}" for c in r["checks"]
                                                 if c["status"] == "FAIL"))
    return out


def markdown(report: dict) -> str:
    lines = [f"# GPU suite: {report['gpu']} ({'smoke, CPU' if report['smoke'] else 'measured'})", "",
             f"`{report['command']}`, torch {report['torch']}, {report['total_seconds']:.0f} s "
             f"(set-up {report.get('setup_seconds', 0):.0f} s before the budget started)", ""]
    att = report.get("attention", {})
    lines += ["## Attention forward+backward (TFLOP/s)", "",
              "| shape | triton | SDPA flash | SDPA math | plain | triton / SDPA flash |", "|---|---|---|---|---|---|"]
    for e in att.get("shapes", []):
        r = e.get("results", {})
        cells = [fmt(r.get(i, {}).get("fwd_bwd_tflops")) if "error" not in r.get(i, {}) else "error"
                 for i in ATTENTION_IMPLS]
        lines.append(f"| {e['name']} | " + " | ".join(cells) + f" | {fmt(e.get('triton_over_sdpa_flash_tflops'), '.2f')} |")
    if "error" in att or "skipped" in att:
        lines.append(f"\nattention: {att.get('error') or att.get('skipped')}")
    shapes = att.get("shapes", [])
    thr = next((e["accuracy"]["threshold"] for e in shapes if "accuracy" in e), None)
    lines += ["", f"## Attention errors vs float64, bf16 inputs (forward / worst of dQ dK dV; threshold {fmt(thr, '.0e')}, "
                  "binding for triton)", "",
              "| shape | triton | SDPA flash | SDPA math | plain | triton within |", "|---|---|---|---|---|---|"]
    for e in shapes:
        acc = e.get("accuracy", {}).get("impls", {})
        cells = [f"{fmt(acc[i]['fwd_err'], '.1e')} / {fmt(acc[i]['bwd_err'], '.1e')}" if "fwd_err" in acc.get(i, {})
                 else ("error" if i in acc else "-") for i in ATTENTION_IMPLS]
        within = acc.get("triton", {}).get("within_threshold")
        lines.append(f"| {e['name']} | " + " | ".join(cells) + f" | {'-' if within is None else 'yes' if within else 'NO'} |")
    tr = report.get("train", {})
    lines += ["", "## Training step (bf16, checkpointing, 1 GPU)", "",
              "| model | micro-batch | images/s | TFLOP/s | MFU | peak GB (allocated) | plan GB | loss (first -> last) |",
              "|---|---|---|---|---|---|---|---|"]
    for name, _ in TRAIN_CONFIGS:
        r = tr.get(name, {})
        if "images_per_s" in r:
            loss = f"{r['losses'][0]:.4g} -> {r['losses'][-1]:.4g}" if r.get("losses") else "-"
            lines.append(f"| {name} | {r['micro_batch']} | {fmt(r['images_per_s'])} | {fmt(r['tflops'])} | "
                         f"{fmt(r['mfu'], '.1%')} | {fmt(r.get('peak_allocated_gb'))} | {fmt(r['plan_peak_gb'])} | "
                         f"{loss} |")
        else:
            lines.append(f"| {name} | {r.get('error') or r.get('skipped') or tr.get('error') or '-'} | | | | | | |")
    inf = report.get("inference", {})
    lines += ["", "## Inference, batch 64, 256x192 (images/s)", "", "| model | here | official (A100) |", "|---|---|---|"]
    for name in OFFICIAL_A100_FPS:
        r = inf.get(name, {})
        lines.append(f"| {name} | {fmt(r.get('images_per_s'), '.0f') if 'images_per_s' in r else r.get('error', '-')} "
                     f"| {OFFICIAL_A100_FPS[name]} |")
    comp = report.get("compile", {})
    lines += ["", f"## torch.compile, B training step ({comp.get('backend', '-')})", "",
              "| compile | images/s |", "|---|---|"]
    for label in ("off", "on"):
        r = comp.get(label, {})
        lines.append(f"| {label} | {fmt(r.get('images_per_s')) if 'images_per_s' in r else r.get('error') or r.get('skipped', '-')} |")
    lines.append(f"\nspeed-up: {fmt(comp.get('speedup'), '.2f')}")
    lines += ["", "## DeepSpeed ZeRO-3, bf16, Triton attention (bench/gpu_check.py's run)", "",
              "| part | check | result | detail |", "|---|---|---|---|"]
    for name in ("zero3", "two_gpu"):
        r = report.get(name, {})
        if "checks" in r:
            for c in r["checks"]:
                lines.append(f"| {name} | {c['check']} | {c['status']} | {c['detail']} |")
        elif r:
            lines.append(f"| {name} | - | {'n/a' if 'not_applicable' in r else 'FAIL'} | "
                         f"{r.get('not_applicable') or r.get('error') or r.get('skipped')} |")
    found = report.get("problems", [])
    lines += ["", f"## Verdict: {'FAILED' if found else 'passed'}", ""] + [f"- {x}" for x in found]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--smoke" in argv:
        os.environ["TRITON_INTERPRET"] = "1"  # decided when triton is imported
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (the table goes next to it as .md)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="time budget of the parts, from the end of set-up (default 8 minutes)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak of this GPU for MFU")
    parser.add_argument("--parts", nargs="+", default=["attention", "train", "inference", "compile", "zero3", "two_gpu"])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: the same code paths")
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("bench/gpu_suite.py: needs a CUDA GPU (none found); --smoke runs the code paths on the CPU",
              file=sys.stderr)
        return 2
    torch.set_num_threads(min(4, os.cpu_count() or 1)) if args.smoke else None
    from vitpose_scale.engine.distributed import init_distributed

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    report = {"gpu": gpu, "gpus": gpus, "smoke": args.smoke, "torch": torch.__version__,
              "python": platform.python_version(), "command": "python bench/gpu_suite.py " + " ".join(argv),
              "budget_s": args.budget_s, "parts": list(args.parts)}
    info = init_distributed(True)
    # The budget is for the parts: set-up (imports, process group, DeepSpeed's accelerator) can take
    # minutes on a cold machine, and a budget spent there once skipped every part and exited 0.
    report["setup_seconds"] = time.monotonic() - t0
    budget = Budget(args.budget_s)
    parts = {"attention": (lambda: part_attention(torch, args, budget), 30),
             "train": (lambda: part_train(torch, args, info, budget), 60),
             "inference": (lambda: part_inference(torch, args, budget), 20),
             "compile": (lambda: part_compile(torch, args, info, budget), 60),
             "zero3": (lambda: part_training_check(torch, args, budget, 1), 60),
             "two_gpu": (lambda: part_training_check(torch, args, budget, 2), 60)}
    for name in args.parts:
        if name not in parts:
            report[name] = {"error": f"unknown part (known: {', '.join(parts)})"}
            continue
        if name == "two_gpu" and not args.smoke and gpus < 2:
            report[name] = {"not_applicable": f"{gpus} GPU on this machine (the part needs 2)"}
            continue
        func, need = parts[name]
        run_part(name, func, report, budget, 1 if args.smoke else need)
    report["total_seconds"] = time.monotonic() - t0
    report["problems"] = problems(report)
    slug = "".join(c if c.isalnum() else "_" for c in gpu.lower().replace("nvidia", "").strip()).strip("_")
    out = args.out or ROOT / "bench" / f"gpu_suite_{slug or 'gpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    from vitpose_scale.engine.distributed import shutdown

    shutdown()
    if report["problems"]:
        print("FAILED:\n  " + "\n  ".join(report["problems"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
