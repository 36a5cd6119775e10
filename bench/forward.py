"""Forward milliseconds per image of a preset, `plain` vs `sdpa` attention, side by side in one run.

    python bench/forward.py --preset B --batch 8 --reps 5 --out bench/forward_cpu.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from vitpose_scale.config import ModelConfig
from vitpose_scale.models.pose import build_pose_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="B")
    parser.add_argument("--image-size", type=int, nargs=2, default=[256, 192])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default="bench/forward_cpu.json")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = build_pose_model(ModelConfig(preset=args.preset, image_size=args.image_size)).to(device).eval()
    x = torch.randn(args.batch, 3, *args.image_size, device=device)
    times: dict[str, list[float]] = {"plain": [], "sdpa": []}
    with torch.no_grad():
        for impl in times:  # warm-up
            model.backbone.set_attention(impl)
            model(x)
        for _ in range(args.reps):  # interleaved, so drift in machine load hits both alike
            for impl in times:
                model.backbone.set_attention(impl)
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(x)
                if device == "cuda":
                    torch.cuda.synchronize()
                times[impl].append((time.perf_counter() - t0) * 1000 / args.batch)
    med = {k: statistics.median(v) for k, v in times.items()}
    report = {"command": "python bench/forward.py " + " ".join(f"--{k.replace('_', '-')} {v if not isinstance(v, list) else ' '.join(map(str, v))}" for k, v in vars(args).items()),
              "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
              "threads": torch.get_num_threads(), "ms_per_image_median": med, "all_ms_per_image": times,
              "ratio_plain_over_sdpa": med["plain"] / med["sdpa"]}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{args.preset} {args.image_size[0]}x{args.image_size[1]} batch {args.batch}: plain {med['plain']:.1f} ms/img, "
          f"sdpa {med['sdpa']:.1f} ms/img, plain/sdpa = {report['ratio_plain_over_sdpa']:.3f}")


if __name__ == "__main__":
    main()
