"""Seconds per training step and peak memory per rank, measured with the real launchers.

    python bench/train_step.py --out bench/train_step_cpu.json [--quick]

Runs, one after another on the same machine: the tiny and the B preset at 1 and
2 ranks (DeepSpeed ZeRO-3), and for B at 2 ranks ZeRO-0 vs ZeRO-3 and activation
checkpointing off vs on. Reports medians over the steps after the first, and
ratios (this machine's absolute timings are noisy; ratios measured side by side
are what to compare). On CPU the peak memory is the process's peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(name: str, nproc: int, config: str, sets: list[str], data_root: Path, steps: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    args = [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(29700 + nproc),
            "launch/train.py", "--config", config]
    base = [f"train.output_dir={out}", "data.kind=synthetic", f"data.root={data_root}", "data.synthetic_train=64",
            "data.synthetic_val=4", "data.extra_train=[]", "data.det_file=null", f"train.max_steps={steps}",
            "train.log_every=1", "train.eval_every=-1", "train.save_every=100000", "data.num_workers=0",
            "parallel.precision=fp32", "parallel.backend=deepspeed"]
    for s in base + sets:
        args += ["--set", s]
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"),
               TORCH_EXTENSIONS_DIR=str(ROOT / ".cache" / "torch_extensions"))
    env.pop("TRITON_INTERPRET", None)
    t0 = time.time()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    per_step = [r["seconds_per_step"] for r in train[1:]]  # the first step pays for warm-up
    result = {"name": name, "ranks": nproc, "config": config, "overrides": sets,
              "seconds_per_step": statistics.median(per_step), "steps_timed": len(per_step),
              "peak_mem_mb_per_rank": train[-1]["peak_mem_mb_per_rank"],
              "model_state_mb_per_rank": train[-1]["model_state_mb_per_rank"],
              "activation_mb_per_rank": train[-1]["activation_mb_per_rank"], "wall_s": time.time() - t0,
              "params_local_per_rank": next(r for r in records if r["kind"] == "setup")["params_local_per_rank"]}
    print(f"{name:<24} {result['seconds_per_step']:7.3f} s/step  peak RSS MB {[round(m) for m in result['peak_mem_mb_per_rank']]}"
          f"  model states MB {[round(m) for m in result['model_state_mb_per_rank']]}"
          f"  activations MB {[round(m) for m in result['activation_mb_per_rank']]}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/train_step_cpu.json")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    data_root = Path(tempfile.mkdtemp(prefix="bench-data-"))
    tiny, b = "configs/demo.yaml", "configs/vitpose_b_256x192.yaml"
    tiny_sets = ["train.batch_size=16", "parallel.zero_stage=3", "model.activation_checkpointing=true"]
    # 5 M-element buckets (20 MB): at 2 ranks DeepSpeed's fixed-size buffers would otherwise hide
    # the halving of the sharded states; they do not grow with the model or the world size.
    b_sets = ["train.batch_size=4", "model.image_size=[256,192]", "parallel.bucket_size=5000000"]
    runs = [
        run("tiny_1rank_zero3", 1, tiny, tiny_sets, data_root, args.steps),
        run("tiny_2rank_zero3", 2, tiny, tiny_sets, data_root, args.steps),
        run("B_1rank_zero3_ckpt", 1, b, b_sets + ["parallel.zero_stage=3", "model.activation_checkpointing=true"],
            data_root, args.steps),
        run("B_2rank_zero3_ckpt", 2, b, b_sets + ["parallel.zero_stage=3", "model.activation_checkpointing=true"],
            data_root, args.steps),
        run("B_2rank_zero0_nockpt", 2, b, b_sets + ["parallel.zero_stage=0", "model.activation_checkpointing=false"],
            data_root, args.steps),
        run("B_2rank_zero3_nockpt", 2, b, b_sets + ["parallel.zero_stage=3", "model.activation_checkpointing=false"],
            data_root, args.steps),
    ]
    by = {r["name"]: r for r in runs}
    def mem(name: str, key: str) -> float:
        return max(by[name][key])

    states, acts, peak = "model_state_mb_per_rank", "activation_mb_per_rank", "peak_mem_mb_per_rank"
    total = lambda n: mem(n, states) + mem(n, acts)  # noqa: E731
    ratios = {
        "B_model_states_zero3_over_zero0": mem("B_2rank_zero3_nockpt", states) / mem("B_2rank_zero0_nockpt", states),
        "B_activations_ckpt_over_nockpt": mem("B_2rank_zero3_ckpt", acts) / mem("B_2rank_zero3_nockpt", acts),
        "B_states_plus_activations_zero3_ckpt_over_zero0_nockpt": total("B_2rank_zero3_ckpt")
        / total("B_2rank_zero0_nockpt"),
        "B_peak_rss_zero3_over_zero0": mem("B_2rank_zero3_nockpt", peak) / mem("B_2rank_zero0_nockpt", peak),
        "B_peak_rss_ckpt_over_nockpt": mem("B_2rank_zero3_ckpt", peak) / mem("B_2rank_zero3_nockpt", peak),
        "B_step_time_ckpt_over_nockpt": by["B_2rank_zero3_ckpt"]["seconds_per_step"]
        / by["B_2rank_zero3_nockpt"]["seconds_per_step"],
        "B_step_time_2rank_over_1rank": by["B_2rank_zero3_ckpt"]["seconds_per_step"]
        / by["B_1rank_zero3_ckpt"]["seconds_per_step"],
        "tiny_step_time_2rank_over_1rank": by["tiny_2rank_zero3"]["seconds_per_step"]
        / by["tiny_1rank_zero3"]["seconds_per_step"],
    }
    report = {"command": "python bench/train_step.py " + " ".join(sys.argv[1:]),
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
              "note": "CPU, fp32, gloo; global batch fixed per preset (tiny 16, B 4), so 2 ranks split it. "
                      "model_state_mb: tensors each rank holds for parameters, gradients, optimizer states and "
                      "ZeRO buffers; activation_mb: tensors saved for backward in one micro-batch (exact, "
                      "allocator-independent); peak RSS includes the Python/torch runtime and, on CPU, the full "
                      "model every rank builds before DeepSpeed partitions it",
              "runs": runs, "ratios": ratios}
    Path(args.out).write_text(json.dumps(report, indent=1))
    for k, v in ratios.items():
        print(f"{k:<36} {v:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
