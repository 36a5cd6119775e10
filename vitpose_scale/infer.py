"""`vitpose-scale infer`: top-down pose estimation on one image or a folder of images.

Person boxes (a detection file, or the whole image) -> UDP crops at the
config's input size -> model (+ flip test) -> eval.decode (udp_dark | dark | argmax) to image
pixels -> skeleton drawings and COCO keypoint results (one JSON for a folder).
Weights: an official .pth, a Hugging Face VitPose directory or a .safetensors file.
"""
from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

from vitpose_scale.cli import InputError
from vitpose_scale.config import Config
from vitpose_scale.data.transforms import box_to_center_scale, crop_box, normalize_image
from vitpose_scale.eval.decode import decode_heatmaps
from vitpose_scale.eval.postprocess import predict_batch, rescore, to_coco_results
from vitpose_scale.keypoints import get_spec
from vitpose_scale.models.pose import build_pose_model
from vitpose_scale.visualize import draw_skeletons


def image_id_from_name(path: str | Path) -> int | None:
    """COCO-style id from the file name's digits: 000000000785.jpg -> 785 (None without digits)."""
    digits = re.findall(r"\d+", Path(path).stem)
    return int(digits[-1]) if digits else None


@functools.lru_cache(maxsize=2)
def _read_json(path: Path, _mtime_ns: int):
    """Parsed once per folder run (a detection file can hold 100k boxes); the mtime keys out stale copies."""
    return json.loads(path.read_text())


def load_boxes(path: str | Path, image_path: str | Path, det_thr: float = 0.0) -> np.ndarray:
    """Person boxes (N, 5) as x, y, w, h, score for ``image_path`` from a JSON file.

    Accepts a COCO detection list ({image_id, bbox, score, category_id}; kept
    when image_id matches the image file's number, category is person and
    score >= det_thr) or a plain list of [x, y, w, h(, score)] boxes (all kept).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes file {path} does not exist")
    try:
        data = _read_json(path.resolve(), path.stat().st_mtime_ns)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of detections or of [x, y, w, h] boxes")
    rows = []
    if data and isinstance(data[0], dict):
        image_id = image_id_from_name(image_path)
        for d in data:
            try:
                if image_id is not None and int(d.get("image_id", -1)) != image_id:
                    continue
                if int(d.get("category_id", 1)) != 1:
                    continue
                score = float(d.get("score", 1.0))
                box = [*map(float, d["bbox"][:4]), score]
                if len(box) != 5:
                    raise ValueError
            except (AttributeError, KeyError, TypeError, ValueError):
                raise InputError(f"{path}: detection {d!r} is not {{image_id, category_id, bbox: [x, y, w, h], "
                                 f"score}}") from None
            if score >= det_thr:
                rows.append(box)
        ids = {str(d.get("image_id")) for d in data}  # every entry is a mapping by now
        if image_id is None and len(ids) > 1:
            raise InputError(f"{path} holds detections of {len(ids)} images and the image name "
                             f"{Path(image_path).name} has no number to pick them by")
    else:
        for b in data:
            try:
                if len(b) < 4:
                    raise ValueError
                rows.append([*map(float, b[:4]), float(b[4]) if len(b) > 4 else 1.0])
            except (TypeError, ValueError):
                raise InputError(f"{path}: box {b!r} is not [x, y, w, h(, score)] numbers") from None
    boxes = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return boxes[np.argsort(-boxes[:, 4], kind="stable")]


@torch.no_grad()
def run_inference(model: torch.nn.Module, image_bgr: np.ndarray, boxes, cfg: Config,
                  flip: bool = True) -> list[np.ndarray]:
    """Keypoints (K, 3) [x, y, score] in image pixels for each (x, y, w, h, ...) box.

    Uses the model's current device and dtype; crops with the UDP affine at
    ``cfg.model.image_size`` and the config's box padding, decodes as the
    evaluator does (``cfg.eval.use_udp``, ``cfg.eval.decode``, ``cfg.eval.blur_kernel``).
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
        heatmaps.append(predict_batch(forward, imgs, flip, get_spec(cfg.data.keypoint_set).flip_pairs))
    heatmaps = np.concatenate(heatmaps)
    # The evaluator's decode (eval/postprocess.predict_dataset): eval.decode with eval.blur_kernel.
    coords, maxvals = decode_heatmaps(heatmaps, np.stack(centers), np.stack(scales), None, image_size=(in_h, in_w),
                                      use_udp=cfg.eval.use_udp, method=cfg.eval.decode, kernel=cfg.eval.blur_kernel)
    # A keypoint lies in the crop its heatmap covers (center +- scale/2 with UDP, no rotation). udp_dark's
    # Newton step is unbounded (as the official one): on a flat or saddle-shaped map (untrained model, occluded
    # joint) it can land far outside, so drawings and results are kept to the crop; the evaluator does not
    # clip, as the official code, and the two agree wherever the step stays inside the crop.
    lo = np.stack(centers)[:, None, :] - 0.5 * np.stack(scales)[:, None, :]
    hi = np.stack(centers)[:, None, :] + 0.5 * np.stack(scales)[:, None, :]
    coords = np.clip(coords, lo, hi)
    return [np.concatenate([coords[n], maxvals[n]], axis=1).astype(np.float64) for n in range(len(coords))]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def build_parser() -> argparse.ArgumentParser:
    from vitpose_scale.cli import add_config_args

    p = argparse.ArgumentParser(prog="vitpose-scale infer", description=__doc__.splitlines()[0])
    add_config_args(p)  # --config (its model section must match the checkpoint) and repeatable --set
    p.add_argument("--checkpoint", help="official .pth (ours or the official release), a Hugging Face VitPose "
                                        "directory (vitpose-scale export --format hf) or a .safetensors file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="one image file")
    src.add_argument("--images", help="a folder of images (jpg, jpeg, png, bmp, webp)")
    p.add_argument("--boxes", "--detections", dest="boxes",
                   help="COCO detection JSON (image_id = the number in each file name) or, for one image, a JSON "
                        "list of [x, y, w, h]; default: the whole image")
    p.add_argument("--det-thr", type=float, default=0.5, help="minimum detection score for --boxes (default 0.5)")
    p.add_argument("--out", help="--image: output PNG (default: <image stem>_pose.png; OUT.json next to it); "
                                 "--images: output folder for results.json and one <stem>_pose.png per image "
                                 "(default: <folder>_pose)")
    p.add_argument("--score-thr", type=float, default=0.3, help="minimum keypoint score to draw (default 0.3)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="flip-test averaging (default: the config's eval.flip_test)")
    p.add_argument("--dataset", default=None,
                   help="multi-task models (ViTPose+/++): the dataset whose head and experts predict, by name or "
                        "index (default: the first); its keypoint set is drawn")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    return p


def _read_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:  # e.g. a video: OpenCV reads no frame from it here
        raise InputError(f"image {path} could not be decoded by OpenCV: expected an image file "
                         f"({', '.join(IMAGE_SUFFIXES)}); for a video, extract its frames first")
    return image


def predict_image(model, cfg: Config, image_path: Path, image_id: int, boxes_file: str | None, det_thr: float,
                  flip: bool, score_thr: float) -> tuple[list[dict], np.ndarray]:
    """COCO keypoint results of one image (one per person box) and the image with the skeletons drawn."""
    image = _read_image(image_path)
    img_h, img_w = image.shape[:2]
    if boxes_file:
        boxes = load_boxes(boxes_file, image_path, det_thr)
        if len(boxes) == 0:
            print(f"warning: no person boxes for {image_path.name} in {boxes_file} with score >= {det_thr}",
                  file=sys.stderr)
    else:
        boxes = np.array([[0.0, 0.0, img_w, img_h, 1.0]])
    people = run_inference(model, image, boxes[:, :4], cfg, flip=flip)
    scores = [rescore(kp[:, 2], box[4], cfg.eval.rescore_thr) for kp, box in zip(people, boxes)]
    results = to_coco_results([image_id] * len(people), np.asarray(people).reshape(len(people), -1, 3), scores)
    for r, box in zip(results, boxes):
        r["bbox"] = [float(v) for v in box[:4]]

    print(f"{image_path.name}: {img_w}x{img_h}, {len(people)} {'person' if len(people) == 1 else 'people'} "
          f"(flip test {'on' if flip else 'off'})")
    for n, (kp, box, score) in enumerate(zip(people, boxes, scores)):
        good = kp[:, 2] >= score_thr
        print(f"  person {n}: box [{box[0]:.0f}, {box[1]:.0f}, {box[2]:.0f}, {box[3]:.0f}] det {box[4]:.3f} "
              f"score {score:.3f}, {int(good.sum())}/{len(kp)} keypoints >= {score_thr} "
              f"(mean keypoint score {kp[:, 2].mean():.3f})")
    return results, draw_skeletons(image, people, cfg.data.keypoint_set, score_thr=score_thr, boxes=boxes)


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise InputError(f"--out {path}: could not write it (expected a writable .png/.jpg path)")


def load_model(cfg: Config, checkpoint: str | None, device: torch.device) -> torch.nn.Module:
    """The config's model with the checkpoint's weights (any format `export.load_weights` reads)."""
    from vitpose_scale.export import load_weights

    torch.manual_seed(cfg.train.seed)  # random-weight runs (no checkpoint) stay reproducible
    model = build_pose_model(cfg.model)
    if checkpoint:
        load_weights(model, checkpoint)
    else:
        msg = "no --checkpoint given: the model has RANDOM weights and its keypoints are meaningless"
        warnings.warn(msg, stacklevel=3)
        print(f"WARNING: {msg}", file=sys.stderr)
    return model.to(device).eval()  # eval: BatchNorm running stats, no drop path


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0, 2 bad config or input (one line), 4 checkpoint missing/damaged/unsafe (one line)."""
    from vitpose_scale.cli import run_reporting_errors

    return run_reporting_errors(_main, build_parser().parse_args(argv))


def _main(args: argparse.Namespace) -> int:
    from vitpose_scale.cli import load_config_or_report

    cfg = load_config_or_report(args)
    if cfg is None:
        return 2
    if args.image:
        paths = [Path(args.image)]
        _read_image(paths[0])  # a missing image fails before the model is built
    else:
        folder = Path(args.images)
        if not folder.is_dir():
            raise FileNotFoundError(f"--images {folder} is not a folder")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise FileNotFoundError(f"--images {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    from vitpose_scale.evaluate import select_dataset

    index, task_cfg = select_dataset(cfg, args.dataset)  # a multi-task model: one dataset's head and joints
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(cfg, args.checkpoint, device)
    if index is not None and model.num_datasets > 1:
        from vitpose_scale.models.pose import DatasetView

        model = DatasetView(model, index)
        print(f"dataset {args.dataset or task_cfg.data.keypoint_set} (index {index}): "
              f"{task_cfg.data.keypoint_set} keypoints")
    cfg = task_cfg
    flip = cfg.eval.flip_test if args.flip is None else args.flip

    if args.image:
        image_path = paths[0]
        image_id = image_id_from_name(image_path) or 0
        results, drawn = predict_image(model, cfg, image_path, image_id, args.boxes, args.det_thr, flip,
                                       args.score_thr)
        out_png = Path(args.out) if args.out else Path(f"{image_path.stem}_pose.png")
        _write_png(out_png, drawn)
        out_json = out_png.with_suffix(".json")
        out_json.write_text(json.dumps(results))
        print(f"wrote {out_png} and {out_json}")
        return 0

    out_dir = Path(args.out) if args.out else folder.with_name(folder.name + "_pose")
    results = []
    for n, image_path in enumerate(paths):
        image_id = image_id_from_name(image_path)
        if image_id is None:  # COCO results need an integer id: the file's position in the sorted folder
            image_id = n
        found, drawn = predict_image(model, cfg, image_path, image_id, args.boxes, args.det_thr, flip,
                                     args.score_thr)
        results += found
        _write_png(out_dir / f"{image_path.stem}_pose.png", drawn)
    (out_dir / "results.json").write_text(json.dumps(results))
    print(f"wrote {out_dir / 'results.json'} ({len(results)} people in {len(paths)} images) and "
          f"{len(paths)} drawings in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
