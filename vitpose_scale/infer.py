"""`vitpose-scale infer`: top-down pose estimation on one image.

Person boxes (a detection file, or the whole image) -> UDP crops at the
config's input size -> model (+ flip test) -> UDP/DARK decoding to image
pixels -> skeleton drawing (OUT.png) and COCO-style results (OUT.json).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from vitpose_scale.config import Config, load_config
from vitpose_scale.data.transforms import COCO_FLIP_PAIRS, box_to_center_scale, crop_box, normalize_image
from vitpose_scale.eval.decode import decode_heatmaps
from vitpose_scale.eval.postprocess import predict_batch, rescore, to_coco_results
from vitpose_scale.models.interop import load_official
from vitpose_scale.models.pose import build_pose_model
from vitpose_scale.visualize import draw_skeletons


def image_id_from_name(path: str | Path) -> int | None:
    """COCO-style id from the file name's digits: 000000000785.jpg -> 785 (None without digits)."""
    digits = re.findall(r"\d+", Path(path).stem)
    return int(digits[-1]) if digits else None


def load_boxes(path: str | Path, image_path: str | Path, det_thr: float = 0.0) -> np.ndarray:
    """Person boxes (N, 5) as x, y, w, h, score for ``image_path`` from a JSON file.

    Accepts a COCO detection list ({image_id, bbox, score, category_id}; kept
    when image_id matches the image file's number, category is person and
    score >= det_thr) or a plain list of [x, y, w, h(, score)] boxes (all kept).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes file {path} does not exist")
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of detections or of [x, y, w, h] boxes")
    rows = []
    if data and isinstance(data[0], dict):
        image_id = image_id_from_name(image_path)
        ids = {d.get("image_id") for d in data}
        if image_id is None and len(ids) > 1:
            raise ValueError(f"{path} holds detections of {len(ids)} images and the image name "
                             f"{Path(image_path).name} has no number to pick them by")
        for d in data:
            if image_id is not None and int(d.get("image_id", -1)) != image_id:
                continue
            if int(d.get("category_id", 1)) != 1:
                continue
            score = float(d.get("score", 1.0))
            if score >= det_thr:
                rows.append([*map(float, d["bbox"][:4]), score])
    else:
        for b in data:
            if len(b) < 4:
                raise ValueError(f"{path}: box {b!r} is not [x, y, w, h]")
            rows.append([*map(float, b[:4]), float(b[4]) if len(b) > 4 else 1.0])
    boxes = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return boxes[np.argsort(-boxes[:, 4], kind="stable")]


@torch.no_grad()
def run_inference(model: torch.nn.Module, image_bgr: np.ndarray, boxes, cfg: Config,
                  flip: bool = True) -> list[np.ndarray]:
    """Keypoints (K, 3) [x, y, score] in image pixels for each (x, y, w, h, ...) box.

    Uses the model's current device and dtype; crops with the UDP affine at
    ``cfg.model.image_size`` and the config's box padding, decodes with
    ``cfg.eval.use_udp`` / ``cfg.eval.dark``.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return []
    boxes = np.atleast_2d(boxes)
    in_h, in_w = cfg.model.image_size
    image_rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)  # the model was trained on RGB
    centers, scales, crops = [], [], []
    for box in boxes:
        c, s = box_to_center_scale(box[:4], in_w / in_h, cfg.data.bbox_padding)
        crops.append(normalize_image(crop_box(image_rgb, c, s, (in_h, in_w))))
        centers.append(c)
        scales.append(s)
    param = next(model.parameters())

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(param.device, param.dtype)).float()

    heatmaps = []
    batch = max(1, cfg.eval.batch_size)
    for i in range(0, len(crops), batch):
        imgs = torch.from_numpy(np.stack(crops[i:i + batch]))
        heatmaps.append(predict_batch(forward, imgs, flip, COCO_FLIP_PAIRS))
    heatmaps = np.concatenate(heatmaps)
    coords, maxvals = decode_heatmaps(heatmaps, np.stack(centers), np.stack(scales), None, image_size=(in_h, in_w),
                                      use_udp=cfg.eval.use_udp, dark=cfg.eval.dark)
    # A keypoint lies in the crop its heatmap covers (center +- scale/2 with UDP, no rotation); the bounded
    # DARK step can still reach one heatmap pixel past the border.
    lo = np.stack(centers)[:, None, :] - 0.5 * np.stack(scales)[:, None, :]
    hi = np.stack(centers)[:, None, :] + 0.5 * np.stack(scales)[:, None, :]
    coords = np.clip(coords, lo, hi)
    return [np.concatenate([coords[n], maxvals[n]], axis=1).astype(np.float64) for n in range(len(coords))]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitpose-scale infer", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="model config YAML (its model section must match the checkpoint)")
    p.add_argument("--checkpoint", help="official-format ViTPose checkpoint (or an export of ours)")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--boxes", help="COCO detection JSON or a JSON list of [x, y, w, h]; default: the whole image")
    p.add_argument("--det-thr", type=float, default=0.5, help="minimum detection score for --boxes (default 0.5)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. model.attention=plain")
    p.add_argument("--out", help="output PNG (default: <image stem>_pose.png); OUT.json is written next to it")
    p.add_argument("--score-thr", type=float, default=0.3, help="minimum keypoint score to draw (default 0.3)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="flip-test averaging (default: the config's eval.flip_test)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    image_path = Path(args.image)
    if not image_path.is_file():
        raise FileNotFoundError(f"image {image_path} does not exist")
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"image {image_path} could not be decoded by OpenCV")
    img_h, img_w = image.shape[:2]

    if args.boxes:
        boxes = load_boxes(args.boxes, image_path, args.det_thr)
        if len(boxes) == 0:
            print(f"warning: no person boxes for {image_path.name} in {args.boxes} with score >= {args.det_thr}",
                  file=sys.stderr)
    else:
        boxes = np.array([[0.0, 0.0, img_w, img_h, 1.0]])

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(cfg.train.seed)  # random-weight runs (no checkpoint) stay reproducible
    model = build_pose_model(cfg.model)
    if args.checkpoint:
        load_official(model, args.checkpoint)
    else:
        msg = "no --checkpoint given: the model has RANDOM weights and its keypoints are meaningless"
        warnings.warn(msg, stacklevel=2)
        print(f"WARNING: {msg}", file=sys.stderr)
    model.to(device).eval()  # eval: BatchNorm running stats, no drop path

    flip = cfg.eval.flip_test if args.flip is None else args.flip
    people = run_inference(model, image, boxes[:, :4], cfg, flip=flip)

    image_id = image_id_from_name(image_path) or 0
    scores = [rescore(kp[:, 2], box[4], cfg.eval.rescore_thr) for kp, box in zip(people, boxes)]
    results = to_coco_results([image_id] * len(people), np.asarray(people).reshape(len(people), -1, 3), scores)
    for r, box in zip(results, boxes):
        r["bbox"] = [float(v) for v in box[:4]]

    print(f"{image_path.name}: {img_w}x{img_h}, {len(people)} {'person' if len(people) == 1 else 'people'} (flip test {'on' if flip else 'off'})")
    for n, (kp, box, score) in enumerate(zip(people, boxes, scores)):
        good = kp[:, 2] >= args.score_thr
        print(f"  person {n}: box [{box[0]:.0f}, {box[1]:.0f}, {box[2]:.0f}, {box[3]:.0f}] det {box[4]:.3f} "
              f"score {score:.3f}, {int(good.sum())}/{len(kp)} keypoints >= {args.score_thr} "
              f"(mean keypoint score {kp[:, 2].mean():.3f})")

    out_png = Path(args.out) if args.out else Path(f"{image_path.stem}_pose.png")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    drawn = draw_skeletons(image, people, score_thr=args.score_thr, boxes=boxes)
    if not cv2.imwrite(str(out_png), drawn):
        raise OSError(f"could not write {out_png}")
    out_json = out_png.with_suffix(".json")
    out_json.write_text(json.dumps(results))
    print(f"wrote {out_png} and {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
