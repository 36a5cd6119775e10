#!/usr/bin/env python
"""The GPU figures in one command: one JSON and one markdown table (about 7 minutes on an H100/H200).

    python bench/gpu_suite.py                       # -> bench/gpu_suite_<gpu>.json and .md
    python bench/gpu_suite.py --smoke --out /tmp/s.json   # same code paths, tiny shapes, CPU (tests)

Parts, each guarded (an OOM or a missing kernel is recorded in the JSON and the rest runs)
and all under one time budget (--budget-s; parts not started in time are marked skipped):

1. attention    fused attention forward+backward at the B 256x192, H 256x192, G 576x432 and
                G stride-8 (576x432) shapes: our Triton kernel, SDPA flash, SDPA math, plain
                (bench/attention.py: FLOP convention 3.5 x forward, time ratios)
2. train        one training step of B, L, H and G (DeepSpeed wrapper of the trainer, 1 rank,
                bf16, checkpointing on), at the largest micro-batch that fits (the planner's
                pick, halved on OOM): images/s, TFLOP/s (3 x forward FLOPs, recomputation not
                credited, as the trainer logs), MFU against the GPU's bf16 peak, peak memory
                next to `vitpose-scale plan`'s estimate
3. inference    images/s of B, L, H at batch 64, 256x192, bf16, next to the official A100 figures
4. compile      the B training step with torch.compile off and on
"""
from __future__ import annotations

import argparse
import json
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
        tri = entry.get("results", {}).get("triton", {})
        flash = entry.get("results", {}).get("sdpa_flash", {})
        if "fwd_bwd_tflops" in tri and "fwd_bwd_tflops" in flash:
            entry["triton_over_sdpa_flash_tflops"] = tri["fwd_bwd_tflops"] / flash["fwd_bwd_tflops"]
        out["shapes"].append(entry)
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

    def step(self) -> None:
        from vitpose_scale.engine.trainer import heatmap_loss

        loss = heatmap_loss(self.wrapper.forward(self.images), self.target, self.weight)
        self.wrapper.backward(loss)
        self.wrapper.step()

    def close(self) -> None:
        self.wrapper = self.images = self.target = self.weight = None


def timed_steps(torch, stepper: Stepper, warmup: int, steps: int) -> float:
    """Median seconds per step."""
    import statistics

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        stepper.step()
    sync()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        stepper.step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
            seconds = timed_steps(torch, stepper, 0 if args.smoke else 2, 1 if args.smoke else 4)
            ips = micro / seconds
            tflops = 3 * flops * ips / 1e12
            result = {"micro_batch": micro, "image_size": cfg.model.image_size, "attention": cfg.model.attention,
                      "seconds_per_step": seconds, "images_per_s": ips, "tflops": tflops,
                      "mfu": tflops / peak_tflops if peak_tflops else None, "plan_peak_gb": planned_gb,
                      "tried": tried, "compile": compile_backend}
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


# ----------------------------------------------------------------- report --
def fmt(value, spec: str = ".1f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def markdown(report: dict) -> str:
    lines = [f"# GPU suite: {report['gpu']} ({'smoke, CPU' if report['smoke'] else 'measured'})", "",
             f"`{report['command']}`, torch {report['torch']}, {report['total_seconds']:.0f} s", ""]
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
    tr = report.get("train", {})
    lines += ["", "## Training step (bf16, checkpointing, 1 GPU)", "",
              "| model | micro-batch | images/s | TFLOP/s | MFU | peak GB (allocated) | plan GB |", "|---|---|---|---|---|---|---|"]
    for name, _ in TRAIN_CONFIGS:
        r = tr.get(name, {})
        if "images_per_s" in r:
            lines.append(f"| {name} | {r['micro_batch']} | {fmt(r['images_per_s'])} | {fmt(r['tflops'])} | "
                         f"{fmt(r['mfu'], '.1%')} | {fmt(r.get('peak_allocated_gb'))} | {fmt(r['plan_peak_gb'])} |")
        else:
            lines.append(f"| {name} | {r.get('error') or r.get('skipped') or tr.get('error') or '-'} | | | | | |")
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
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--smoke" in argv:
        os.environ["TRITON_INTERPRET"] = "1"  # decided when triton is imported
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (the table goes next to it as .md)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="global time budget (default 7.5 minutes)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak of this GPU for MFU")
    parser.add_argument("--parts", nargs="+", default=["attention", "train", "inference", "compile"])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: the same code paths")
    args = parser.parse_args(argv)

    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("bench/gpu_suite.py: needs a CUDA GPU (none found); --smoke runs the code paths on the CPU",
              file=sys.stderr)
        return 2
    torch.set_num_threads(min(4, os.cpu_count() or 1)) if args.smoke else None
    from vitpose_scale.engine.distributed import init_distributed

    budget = Budget(args.budget_s)
    t0 = time.monotonic()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report = {"gpu": gpu, "smoke": args.smoke, "torch": torch.__version__, "python": platform.python_version(),
              "command": "python bench/gpu_suite.py " + " ".join(argv), "budget_s": args.budget_s}
    info = init_distributed(True)
    parts = {"attention": (lambda: part_attention(torch, args, budget), 30),
             "train": (lambda: part_train(torch, args, info, budget), 60),
             "inference": (lambda: part_inference(torch, args, budget), 20),
             "compile": (lambda: part_compile(torch, args, info, budget), 60)}
    for name in args.parts:
        func, need = parts[name]
        run_part(name, func, report, budget, 1 if args.smoke else need)
    report["total_seconds"] = time.monotonic() - t0
    slug = "".join(c if c.isalnum() else "_" for c in gpu.lower().replace("nvidia", "").strip()).strip("_")
    out = args.out or ROOT / "bench" / f"gpu_suite_{slug or 'gpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    from vitpose_scale.engine.distributed import shutdown

    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
