"""`vitpose-scale eval`: distributed COCO keypoint evaluation of a checkpoint.

    torchrun --nproc_per_node N launch/evaluate.py --config C --checkpoint W [--out DIR]
    python launch/evaluate.py --config C --checkpoint W          (one process)

Every rank holds the whole model (evaluation needs no sharding up to the G preset
in bf16) and predicts 1/N of the boxes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from vitpose_scale.cli import add_config_args, load_config_or_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vitpose-scale eval", description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--checkpoint", required=True, help="official-format .pth (best.pth, final.pth, convert output)")
    parser.add_argument("--out", default=None, help="folder for results.json, stats.json, predictions.png "
                                                  "(default: <train.output_dir>/eval)")
    args = parser.parse_args(argv)
    cfg = load_config_or_report(args)
    if cfg is None:
        return 2
    from vitpose_scale.engine.distributed import init_distributed, shutdown

    info = init_distributed(use_deepspeed=False)
    from vitpose_scale.data.coco import build_datasets
    from vitpose_scale.eval.coco_eval import print_stats
    from vitpose_scale.eval.runner import evaluate_model
    from vitpose_scale.models.interop import load_official
    from vitpose_scale.models.pose import build_pose_model

    if info.is_main:
        _, val_set, val_ann = build_datasets(cfg)
    if dist.is_initialized():
        dist.barrier()
    if not info.is_main:
        _, val_set, val_ann = build_datasets(cfg)
    model = build_pose_model(cfg.model)
    load_official(model, args.checkpoint)
    model = model.to(info.device).eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.parallel.precision, torch.float32)
    if info.device.type == "cpu":
        dtype = torch.float32
    model = model.to(dtype)

    @torch.no_grad()
    def forward(images):
        return model(images.to(info.device, dtype)).float()

    stats, results = evaluate_model(forward, val_set, val_ann, cfg, info.rank, info.world_size,
                                    progress=info.is_main)
    if info.is_main:
        out = Path(args.out or Path(cfg.train.output_dir) / "eval")
        out.mkdir(parents=True, exist_ok=True)
        print(f"evaluated {len(val_set)} boxes on {info.world_size} rank(s): {len(results)} people after OKS-NMS")
        print_stats([stats[k] for k in stats])
        (out / "results.json").write_text(json.dumps(results))
        (out / "stats.json").write_text(json.dumps(stats, indent=1))
        from vitpose_scale.visualize import save_predictions_figure

        gt = json.loads(Path(val_ann).read_text())
        png = save_predictions_figure(val_set.img_dir, results, gt["images"], out / "predictions.png", max_images=4)
        print(f"wrote {out / 'results.json'}, {out / 'stats.json'} and {png}")
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
