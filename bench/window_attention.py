"""The paper's attention-type comparison: one training step (forward + backward) of ViTPose-B with
stride-8 patches, full attention vs window, shifted window, pooling window and shift + pool, side by side.

    python bench/window_attention.py --device cuda --out bench/window_attention_gpu.json   # the real shapes
    python bench/window_attention.py --device cpu --depth 2 --batch 2 --sizes 256x192 --reps 7 \
        --out bench/window_attention_cpu.json
    python bench/window_attention.py --smoke --out /tmp/w.json                             # seconds: code path only

Time: median seconds per step over --reps interleaved rounds (each round runs every implementation x
variant once, so drift in machine load hits all alike), after one untimed step each. Memory: on CUDA the peak
allocated during the step above what was allocated before it (weights, gradients of the previous
step freed); on every device also the bytes autograd saves for backward (SavedActivationMeter,
the trainer's activation figure) next to the planner's prediction (plan.saved_activation_bytes).
One model serves every variant (the window variants have no parameters: only the blocks'
windows change, `ViT.set_attention_window`), so the weights are the same. A combination that runs out of GPU memory
(plain full attention at 576x432 keeps heads x 3888^2 scores per block and image) is recorded as such.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vitpose_scale import plan  # noqa: E402
from vitpose_scale.config import load_config  # noqa: E402
from vitpose_scale.engine.metrics import SavedActivationMeter  # noqa: E402
from vitpose_scale.engine.trainer import heatmap_loss  # noqa: E402
from vitpose_scale.models.pose import build_pose_model  # noqa: E402

# Per input size: the window (tokens) and the pooling stride, dividing the stride-8 grid. 256x192
# (32x24 tokens) is configs/ablation/vitpose_b_stride8_*.yaml; 576x432 (72x54) has no 8x8 tiling,
# so 9x9 windows and pool 9 (8x6 pooled tokens, as many as at 256x192).
SIZES = {"256x192": ([8, 8], 4), "576x432": ([9, 9], 9)}
SMOKE = {"64x48": ([4, 3], 2)}  # 8x6 tokens
VARIANTS = ("full", "window", "shift", "pool", "shift_pool")


def window_of(variant: str, size: list[int], pool: int) -> dict | None:
    if variant == "full":
        return None
    return {"size": size, "shift": "shift" in variant, "pool": pool if "pool" in variant else None}


def step(model, x, target, weight, meter: SavedActivationMeter | None = None) -> None:
    """One training step's forward (the trainer's loss, so the saved bytes are the planner's) and backward."""
    if meter is None:
        loss = heatmap_loss(model(x), target, weight)
    else:
        with meter:
            loss = heatmap_loss(model(x), target, weight)
    loss.backward()
    model.zero_grad(set_to_none=True)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(args, image: str, size: list[int], pool: int) -> dict:
    """Every (attention implementation, variant) of one input size, interleaved round by round."""
    h, w = map(int, image.split("x"))
    sets = [f"model.preset={args.preset}", f"model.image_size=[{h},{w}]", "model.patch_stride=8",
            "model.drop_path=0.0", f"parallel.precision={args.precision}"]
    if args.depth:
        sets.append(f"model.depth={args.depth}")
    if args.embed_dim:
        sets.append(f"model.embed_dim={args.embed_dim}")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    torch.manual_seed(0)
    base = load_config(None, sets)
    model = build_pose_model(base.model).to(args.device, dtype).train()
    x = torch.randn(args.batch, 3, h, w, device=args.device, dtype=dtype)
    hh, hw = base.model.heatmap_size
    target = torch.rand(args.batch, base.model.num_keypoints, hh, hw, device=args.device)
    weight = torch.ones(args.batch, base.model.num_keypoints, 1, device=args.device)
    result = {"image_size": [h, w], "grid": list(base.model.grid), "window": size, "pool": pool, "attention": {}}
    combos = [(impl, variant) for impl in args.attention for variant in VARIANTS]
    times: dict[tuple[str, str], list[float]] = {c: [] for c in combos}
    combos_left = list(combos)
    for impl, variant in combos:  # untimed: warm-up, saved bytes, the planner's figure, the CUDA peak
        window = window_of(variant, size, pool)
        cfg = load_config(None, sets + [f"model.attention={impl}", f"model.attention_window={json.dumps(window)}"])
        model.backbone.set_attention(impl)
        model.backbone.set_attention_window(cfg.model.attention_window)
        sync(args.device)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        shape = plan.model_shape(cfg)
        entry = {"attention_window": cfg.model.attention_window,
                 "planned_saved_bytes": plan.saved_activation_bytes(shape, args.batch, args.precision, False),
                 "forward_gflops_per_image": shape.forward_flops / 1e9}
        result["attention"].setdefault(impl, {})[variant] = entry
        meter = SavedActivationMeter(model)
        try:
            step(model, x, target, weight, meter)
        except torch.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            meter = None
            torch.cuda.empty_cache()
            entry["error"] = "out of memory"
            combos_left.remove((impl, variant))
            continue
        sync(args.device)
        entry["saved_bytes"] = meter.bytes
        if args.device == "cuda":
            entry["peak_step_bytes"] = torch.cuda.max_memory_allocated() - before
    for _ in range(args.reps):
        for impl, variant in combos_left:
            model.backbone.set_attention(impl)
            model.backbone.set_attention_window(result["attention"][impl][variant]["attention_window"])
            sync(args.device)
            t0 = time.perf_counter()
            step(model, x, target, weight)
            sync(args.device)
            times[impl, variant].append(time.perf_counter() - t0)
    memory_key = "peak_step_bytes" if args.device == "cuda" else "saved_bytes"
    for impl, variants in result["attention"].items():
        full = variants["full"]
        median_full = statistics.median(times[impl, "full"]) if "error" not in full else None
        for variant, entry in variants.items():
            if "error" in entry:
                continue
            entry["seconds_per_step_median"] = statistics.median(times[impl, variant])
            entry["seconds_per_step_min"] = min(times[impl, variant])
            entry["seconds_per_step"] = times[impl, variant]
            if median_full is not None:  # full attention ran: ratios side by side
                entry["time_ratio_vs_full"] = entry["seconds_per_step_median"] / median_full
                entry["memory_ratio_vs_full"] = entry[memory_key] / full[memory_key]
                entry["saved_bytes_ratio_vs_full"] = entry["saved_bytes"] / full["saved_bytes"]
    result["memory_ratio_from"] = memory_key
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES),
                   help="input sizes (their window and pool: SIZES)")
    p.add_argument("--preset", default="B")
    p.add_argument("--depth", type=int, default=None,
                   help="fewer blocks than the preset (CPU runs); default the preset's")
    p.add_argument("--embed-dim", type=int, default=None, help=argparse.SUPPRESS)  # smoke only
    p.add_argument("--batch", type=int, default=None, help="images per step (default 16 on cuda, 2 on cpu)")
    p.add_argument("--attention", nargs="+", default=["sdpa", "plain"], choices=("sdpa", "plain", "triton"),
                   help="implementations, each with every variant (plain: the official attention, whose "
                        "scores are what windows shrink)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16"), help="default bf16 on cuda, fp32 on cpu")
    p.add_argument("--reps", type=int, default=5, help="interleaved timed rounds (the median is reported)")
    p.add_argument("--smoke", action="store_true", help="a toy shape on the CPU: the code path, no figures")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("window_attention: --device cuda but no GPU is visible", file=sys.stderr)
        return 2
    command = "python bench/window_attention.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sizes = {k: SIZES[k] for k in args.sizes}
    if args.smoke:
        args.device, args.preset, args.depth, args.embed_dim, args.reps = "cpu", "tiny", 1, 32, 2
        sizes = SMOKE
    args.batch = args.batch or (16 if args.device == "cuda" else 2)
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    m = load_config(None, [f"model.preset={args.preset}"] + ([f"model.depth={args.depth}"] if args.depth else [])
                    ).model.resolved()
    report = {"command": command, "smoke": args.smoke,
              "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "model": {"preset": args.preset, "depth": m.depth, "embed_dim": args.embed_dim or m.embed_dim,
                        "patch_stride": 8, "precision": args.precision,
                        "batch": args.batch},
              "reps": args.reps,
              "method": ("time: median of the interleaved rounds, one forward + backward + zero_grad per step; "
                         "memory_ratio_vs_full: " + ("CUDA peak allocated during the step above the allocation "
                                                    "before it" if args.device == "cuda" else
                                                    "bytes autograd saves for backward in the step "
                                                    "(SavedActivationMeter), not the allocator's peak")),
              "shapes": []}
    for image, (size, pool) in sizes.items():
        result = measure(args, image, size, pool)
        report["shapes"].append(result)
        print(f"{image} (grid {result['grid'][0]}x{result['grid'][1]}, window {size}, pool {pool}), "
              f"{args.device} {args.precision}, depth {m.depth}, batch {args.batch}:")
        for impl, variants in result["attention"].items():
            for variant, e in variants.items():
                if "error" in e:
                    print(f"  {impl:<6} {variant:<11} {e['error']} (planned saved "
                          f"{e['planned_saved_bytes'] / 1e6:.1f} MB)", flush=True)
                    continue
                mem = e.get("peak_step_bytes", e["saved_bytes"])
                ratios = (f"(x{e['time_ratio_vs_full']:.2f})", f"(x{e['memory_ratio_vs_full']:.2f})") \
                    if "time_ratio_vs_full" in e else ("", "")
                print(f"  {impl:<6} {variant:<11} {e['seconds_per_step_median']:8.3f} s/step {ratios[0]}  "
                      f"{mem / 1e6:9.1f} MB {result['memory_ratio_from']} {ratios[1]}  "
                      f"planned saved {e['planned_saved_bytes'] / 1e6:.1f} MB", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
