"""Time and disk of DeepSpeed's universal-checkpoint conversion (what a resume at another world
size runs, engine/parallel.py DeepSpeedWrapper._universal), for a preset's ZeRO-3 checkpoint.

    python bench/universal_conversion.py --preset B --out bench/universal_conversion_cpu.json

Writes a 2-rank ZeRO-3 fp32 checkpoint of the preset (one step on synthetic data), then converts
it with 1 and with N extract/merge workers (interleaved, --repeats each), and records the
seconds, the bytes written and the checkpoint's own size; the G estimate scales the measured
seconds and bytes by the parameter count (the conversion is linear in it: one file per
parameter and state).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _env() -> dict:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="B")
    parser.add_argument("--workers", type=int, default=max(2, min(8, (os.cpu_count() or 2) // 2)))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/universal_conversion_cpu.json")
    args = parser.parse_args()

    from vitpose_scale.config import PRESETS, ModelConfig
    from vitpose_scale.data.synthetic import generate_synthetic_coco
    from vitpose_scale.models.pose import build_pose_model

    work = Path(tempfile.mkdtemp(prefix="bench-universal-"))
    try:
        generate_synthetic_coco(work / "data", 8, 2, seed=0)
        sets = [f"train.output_dir={work / 'run'}", f"data.root={work / 'data'}", "data.kind=synthetic",
                "data.synthetic_train=8", "data.synthetic_val=2", "train.batch_size=2", "train.stop_at=1",
                "train.max_steps=10", "train.eval_every=-1", "parallel.backend=deepspeed", "parallel.zero_stage=3",
                f"model.preset={args.preset}", "model.embed_dim=null", "model.num_heads=null",
                "model.image_size=[256,192]", "model.head_channels=256", "data.num_workers=0"]
        cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", "29791",
               "launch/train.py", "--config", "configs/demo.yaml"]
        for s in sets:
            cmd += ["--set", s]
        print("writing a 2-rank ZeRO-3 checkpoint of", args.preset, flush=True)
        subprocess.run(cmd, cwd=ROOT, env=_env(), check=True, stdout=subprocess.DEVNULL)
        checkpoint = work / "run" / "checkpoints" / "step_00000001"
        times: dict[int, list[float]] = {1: [], args.workers: []}
        written = 0
        for _ in range(args.repeats):
            for workers in times:  # interleaved
                target = work / f"u{workers}"
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                                str(checkpoint), "--output_folder", str(target), "--num_extract_workers", str(workers),
                                "--num_merge_workers", str(workers), "--no_strict"], cwd=ROOT, env=_env(), check=True,
                               capture_output=True)
                times[workers].append(time.perf_counter() - t0)
                written = _size(target)
                shutil.rmtree(target)
        model = ModelConfig(preset=args.preset, head_channels=256)
        params = sum(p.numel() for p in build_pose_model(model).parameters())
        g_params = sum(p.numel() for p in build_pose_model(ModelConfig(preset="G", image_size=[576, 432]),
                                                           ).parameters()) if "G" in PRESETS else None
        best = min(times, key=lambda w: statistics.median(times[w]))
        result = {
            "preset": args.preset, "params": params, "checkpoint_bytes": _size(checkpoint),
            "conversion_bytes_written": written, "cpu_count": os.cpu_count(),
            "seconds": {str(w): {"median": statistics.median(v), "all": v} for w, v in times.items()},
            "G_estimate": {"params": g_params,
                           "seconds": statistics.median(times[best]) * g_params / params,
                           "bytes_written": written * g_params / params, "workers": best},
            "command": " ".join(sys.argv),
        }
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
