"""Train every given config for two steps in its own precision and backend, in one process.

Run as a script (one process group for all configs, so DeepSpeed is imported once):
    python tests/shipped_configs_runner.py OUT_DIR DATA_ROOT CONFIG [CONFIG ...]
Writes OUT_DIR/<name>/report.json with {"ok", "error", "losses", "stats"} per config.
Only depth, width and data size are shrunk (see `shrink_overrides`); precision, backend,
ZeRO stage, head, attention, image size, patch stride and checkpointing stay the config's.
Multi-task configs (data.tasks) keep their number of datasets, heads and experts, each dataset a
synthetic set of its own (`synthetic_tasks`).
"""
import json
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def shrink_overrides(raw: dict, out: Path, data_root: Path) -> list[str]:
    heads = (raw.get("model") or {}).get("num_heads")
    sets = ["model.depth=1", "model.head_channels=16", "model.drop_path=0.0",
            "data.kind=synthetic", f"data.root={data_root}", "data.synthetic_train=8", "data.synthetic_val=2",
            "data.extra_train=[]", "data.det_file=null", "data.num_workers=0",
            "train.max_steps=2", "train.batch_size=2", "train.log_every=1", "train.save_every=0",
            "train.eval_every=0", "train.resume=null", "train.init_from=null", f"train.output_dir={out}",
            "optim.warmup_iters=1", "parallel.grad_accum=1", "eval.batch_size=2"]
    # Width: 8 channels per head, keeping the config's (or its preset's) head count.
    from vitpose_scale.config import PRESETS

    preset = (raw.get("model") or {}).get("preset", "B")
    heads = heads or PRESETS[preset]["num_heads"]
    sets.append(f"model.embed_dim={8 * heads}")
    part = (raw.get("model") or {}).get("part_features")
    if part:  # ViTPose++ experts: the same share of the shrunk width
        width = (raw.get("model") or {}).get("embed_dim") or PRESETS[preset]["embed_dim"]
        sets.append(f"model.part_features={max(1, part * 8 * heads // width)}")
    if "mae" in raw:
        mae_heads = raw["mae"].get("decoder_heads", 16)
        sets += [f"mae.decoder_dim={8 * mae_heads}", "mae.decoder_depth=1"]
    tasks = (raw.get("data") or {}).get("tasks")
    if tasks:
        sets.append("data.tasks=" + json.dumps(synthetic_tasks(tasks, data_root)))
    return sets


def synthetic_tasks(tasks: list[dict], data_root: Path) -> list[dict]:
    """data.tasks with every dataset a small synthetic set under data_root/tasks/<name>, in the same
    order (heads, experts). A set the generator cannot draw (animals, whole body) or whose metric needs
    files a synthetic set lacks (MPII's mpii_gt_val.mat) becomes a COCO-joint stand-in of the same name:
    its head then has 17 joints."""
    from vitpose_scale.config import TASK_OWN_KEYS
    from vitpose_scale.data.synthetic import synthetic_points
    from vitpose_scale.keypoints import get_spec

    out = []
    for entry in tasks:
        name = entry.get("name") or entry["keypoint_set"]
        spec = get_spec(entry["keypoint_set"])
        try:
            synthetic_points(spec)
            drawable = spec.evaluation["metric"] != "pckh"
        except ValueError:
            drawable = False
        own = {k: entry[k] for k in TASK_OWN_KEYS if k in entry}  # ratio, loss_weight: kept
        out.append({**own, "name": name, "keypoint_set": spec.name if drawable else "coco",
                    "root": str(data_root / "tasks" / name)})
    return out


def run_one(config: Path, out: Path, data_root: Path, info) -> dict:
    import yaml

    from vitpose_scale.config import load_config

    raw = yaml.safe_load(config.read_text()) or {}
    cfg = load_config(config, shrink_overrides(raw, out, data_root))
    if "mae" in raw:
        from vitpose_scale.engine.pretrain import MAEPretrainer as trainer_class
    else:
        from vitpose_scale.engine.trainer import Trainer as trainer_class
    trainer = trainer_class(cfg, info)
    result = trainer.train()
    param_dtypes = sorted({str(p.dtype) for p in trainer.wrapper.module.parameters()})
    stats = None
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"kind": "eval"' in line]
    if evals:
        stats = {k: v for k, v in evals[-1].items() if k.startswith("A")}
    return {"ok": True, "steps": result["step"], "losses": [h["loss"] for h in trainer.history],
            "stats": stats, "precision": cfg.parallel.precision, "backend": cfg.parallel.backend,
            "param_dtypes": param_dtypes}


def main() -> int:
    out_root, data_root = Path(sys.argv[1]), Path(sys.argv[2])
    from vitpose_scale.engine.distributed import init_distributed, shutdown

    info = init_distributed(use_deepspeed=True)
    for name in sys.argv[3:]:
        config = Path(name)
        out = out_root / config.relative_to(ROOT / "configs").with_suffix("").as_posix().replace("/", "__")
        try:
            report = run_one(config, out, data_root, info)
        except Exception as exc:  # recorded per config; the test reports it
            report = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report))
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
