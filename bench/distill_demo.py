"""The paper's knowledge transfer, seen on this machine: a tiny "large" teacher, then a smaller
student (fewer blocks, the same width: the token must fit it) trained for the same steps without
and with the knowledge token and output distillation, over several seeds; held-out AP of each.

    python bench/distill_demo.py --out bench/distill_demo_cpu.json            # about 15 minutes on 2 cores
    python bench/distill_demo.py --smoke                                      # seconds: the pipeline only

Every run is a real `launch/train.py` / `launch/distill_token.py` run (one process, backend none) on
the synthetic people of the README demo; AP is the training's own evaluation of held-out people
(metrics.jsonl). No pass/fail threshold: on a CPU budget the differences between variants are of
the order of the spread across seeds, which the JSON reports (mean, standard deviation, each run).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "baseline": [],
    "token": ["distill.token={token}"],
    "heatmap": ["distill.teacher_config={teacher_cfg}", "distill.teacher_checkpoint={teacher}",
                "distill.heatmap_weight={weight}"],
    "token+heatmap": ["distill.token={token}", "distill.teacher_config={teacher_cfg}",
                      "distill.teacher_checkpoint={teacher}", "distill.heatmap_weight={weight}"],
}


def _config(work: Path, size: dict) -> Path:
    cfg = {
        "model": {"preset": "tiny", "embed_dim": 96, "num_heads": 4, "image_size": [192, 144], "head": "classic",
                  "head_channels": 64, "drop_path": 0.0, "depth": size["teacher_depth"]},
        "data": {"kind": "synthetic", "root": str(work / "data"), "synthetic_train": size["train"],
                 "synthetic_val": size["val"], "num_workers": 0, "rot_factor": 0, "scale_factor": 0.15,
                 "half_body_prob": 0, "bbox_shift_prob": 0},
        "optim": {"lr": 5.0e-3, "weight_decay": 0.05, "schedule": "cosine", "warmup_iters": 30},
        "train": {"batch_size": 16, "epochs": 100, "eval_every": -1, "log_every": 50,
                  "output_dir": str(work / "teacher")},
        "eval": {"batch_size": 32}, "parallel": {"backend": "none"},
    }
    path = work / "teacher.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _run(launcher: str, config: Path, sets: list[str]) -> None:
    args = [sys.executable, launcher, "--config", str(config)]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _final_ap(out: Path) -> dict:
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"kind": "eval"' in line]
    return {k: evals[-1][k] for k in ("AP", "AP50", "AR")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/distill_demo")
    p.add_argument("--out", default=None, help="JSON to write (bench/distill_demo_cpu.json)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-steps", type=int, default=600)
    p.add_argument("--token-steps", type=int, default=100)
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument("--weight", type=float, default=1.0, help="distill.heatmap_weight")
    p.add_argument("--smoke", action="store_true", help="a few steps each: checks the pipeline, no figures")
    args = p.parse_args(argv)
    size = {"teacher_depth": 6, "student_depth": 2, "train": 1200, "val": 100}
    if args.smoke:
        args.seeds, args.teacher_steps, args.token_steps, args.student_steps = [0], 3, 2, 2
        size.update(train=32, val=8)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    teacher_cfg = _config(work, size)
    t0 = time.time()
    _run("launch/train.py", teacher_cfg, [f"train.max_steps={args.teacher_steps}", "train.eval_every=1000000"])
    teacher = work / "teacher" / "final.pth"
    teacher_ap = _final_ap(work / "teacher")
    _run("launch/distill_token.py", teacher_cfg, [f"train.init_from={teacher}", f"train.max_steps={args.token_steps}",
                                                  f"train.output_dir={work / 'token'}"])
    token = work / "token" / "knowledge_token.pth"
    fill = dict(token=token, teacher=teacher, teacher_cfg=teacher_cfg, weight=args.weight)
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for seed in args.seeds:  # seeds outer, variants inner: machine load drifts over all variants alike
        for variant, sets in VARIANTS.items():
            out = work / f"{variant}_seed{seed}"
            _run("launch/train.py", teacher_cfg, [s.format(**fill) for s in sets] + [
                f"model.depth={size['student_depth']}", f"train.seed={seed}", f"train.max_steps={args.student_steps}",
                f"train.output_dir={out}", "train.eval_every=1000000"])
            runs[variant].append({"seed": seed, **_final_ap(out)})
            print(f"{variant:>14} seed {seed}: AP {runs[variant][-1]['AP']:.4f}", flush=True)
    summary = {v: {"AP_mean": statistics.mean(r["AP"] for r in rs),
                   "AP_std": statistics.stdev([r["AP"] for r in rs]) if len(rs) > 1 else 0.0, "runs": rs}
               for v, rs in runs.items()}
    report = {"command": "python " + " ".join(["bench/distill_demo.py", *(argv or sys.argv[1:])]),
              "teacher": f"tiny, width 96, depth {size['teacher_depth']}, {args.teacher_steps} steps",
              "student": f"tiny, width 96, depth {size['student_depth']}, {args.student_steps} steps",
              "teacher_heldout": teacher_ap, "token_steps": args.token_steps, "heatmap_weight": args.weight,
              "data": f"synthetic people, {size['train']} train / {size['val']} held-out images",
              "seconds": round(time.time() - t0, 1), "variants": summary}
    for v, s in summary.items():
        print(f"{v:>14}: AP {s['AP_mean']:.4f} +- {s['AP_std']:.4f} over {len(s['runs'])} seeds")
    if args.out and not args.smoke:
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
