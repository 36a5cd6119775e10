"""`vitpose-scale infer`: top-down pose estimation on an image, a folder of images or a video.

Person boxes (a detection file, a person detector, or the whole image) -> the Python API
(vitpose_scale/api.py: UDP crops, model + flip test, the evaluator's decode) -> skeleton
drawings and COCO keypoint results (a video: the drawn video and every frame's people).
Weights: a run directory, an official .pth, a training checkpoint, a Hugging Face VitPose
directory or a .safetensors file; the model's config is found next to them.
"""
from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from vitpose_scale.errors import InputError


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


def run_inference(model, image_bgr: np.ndarray, boxes, cfg, flip: bool = True) -> list[np.ndarray]:
    """Keypoints (K, 3) [x, y, score] in image pixels for each (x, y, w, h, ...) box of one image
    (`api.estimate` for one image)."""
    from vitpose_scale.api import estimate

    return estimate(model, cfg, [image_bgr], [boxes], flip)[0]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Boxes kept for drawing people: a detector's (or a detection file's) low-score boxes are mostly not
# people. Evaluation keeps every box instead (data.det_score_thr 0.0, the official protocol: AP rewards
# recall and rescoring ranks weak boxes last); pass --det-thr 0 to get evaluation's results.json.
DEFAULT_DET_THR = 0.5


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitpose-scale infer", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="a run directory (its best.pth), an official .pth, runs/X/checkpoints/"
                                        "step_N, a Hugging Face VitPose directory or a .safetensors file; without "
                                        "it the model has random weights (needs --config)")
    p.add_argument("--config", help="the model's config (default: the run's config.yaml next to the checkpoint, or "
                                    "a Hugging Face directory's config.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set eval.decode=dark (repeatable)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="one image file")
    src.add_argument("--images", help="a folder of images (jpg, jpeg, png, bmp, webp)")
    src.add_argument("--video", help="a video file (anything OpenCV decodes: mp4, avi, mov, mkv, ...)")
    boxes = p.add_mutually_exclusive_group()
    boxes.add_argument("--boxes", "--detections", dest="boxes",
                       help="COCO detection JSON (image_id = the number in each file name) or, for one image, a "
                            "JSON list of [x, y, w, h]")
    boxes.add_argument("--detector",
                       help="person detector: a local transformers object-detection directory (RT-DETR, as the "
                            "Hugging Face VitPose guide), a hub id in your cache (PekingU/rtdetr_r50vd_coco_o365), "
                            "or torchvision:NAME (e.g. torchvision:fasterrcnn_resnet50_fpn_v2); default: no "
                            "detector, the whole image is one person")
    p.add_argument("--detector-checkpoint", help="torchvision detectors: a state-dict file (default: torchvision's "
                                                 "COCO weights from your torch hub cache)")
    p.add_argument("--det-thr", type=float, default=DEFAULT_DET_THR,
                   help=f"minimum person box score, --boxes and --detector (default {DEFAULT_DET_THR}: people to "
                        f"draw; evaluation keeps every box, pass 0 to match its results)")
    p.add_argument("--det-nms", type=float, default=0.7, help="--detector: IoU above which overlapping person "
                                                              "boxes are merged (default 0.7)")
    p.add_argument("--out", help="--image: output PNG (default <stem>_pose.png; OUT.json next to it); --images: "
                                 "output folder (default <folder>_pose); --video: output video (default "
                                 "<stem>_pose.mp4; OUT.json next to it)")
    p.add_argument("--score-thr", type=float, default=0.3, help="minimum keypoint score to draw (default 0.3)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="flip-test averaging (default: the config's eval.flip_test)")
    p.add_argument("--dataset", default=None,
                   help="multi-task models (ViTPose+/++): the dataset whose head and experts predict, by name or "
                        "index (default: the first); its keypoint set is drawn")
    p.add_argument("--batch-size", type=int, default=8, help="--video: frames per detector and model batch "
                                                             "(default 8)")
    p.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0, 2 bad config or input (one line), 4 checkpoint missing/damaged/unsafe (one line)."""
    from vitpose_scale.cli import run_reporting_errors

    return run_reporting_errors(_main, build_parser().parse_args(argv))


def _image_list(args: argparse.Namespace) -> list[Path]:
    from vitpose_scale.api import read_image

    if args.image:
        read_image(args.image)  # a missing or undecodable image fails before the model is built
        return [Path(args.image)]
    folder = Path(args.images)
    if not folder.is_dir():
        raise FileNotFoundError(f"--images {folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"--images {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    return paths


def _main(args: argparse.Namespace) -> int:
    from vitpose_scale.api import PoseEstimator

    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size}: expected 1 or more frames")
    if args.config:  # a bad config or override is named before anything is read
        from vitpose_scale.config import load_config

        load_config(args.config, args.set)
    if args.video:
        from vitpose_scale.video import FOURCC_BY_SUFFIX, VideoReader

        VideoReader(args.video).close()  # a missing or corrupt video fails before the model is built
        if args.out and Path(args.out).suffix.lower() not in FOURCC_BY_SUFFIX:
            raise InputError(f"--out {args.out}: expected a {' or '.join(FOURCC_BY_SUFFIX)} path for --video")
    else:
        paths = _image_list(args)
    if args.checkpoint is None and args.config is None:
        raise InputError("--checkpoint: expected the weights (a run directory, .pth, HF directory or .safetensors), "
                         "or --config for a model with random weights")
    pose = PoseEstimator.load(args.checkpoint, args.config, args.set, dataset=args.dataset, device=args.device,
                              detector=args.detector, detector_checkpoint=args.detector_checkpoint,
                              det_thr=args.det_thr, det_nms=args.det_nms, flip=args.flip)
    if args.dataset is not None:
        print(f"dataset {args.dataset}: {pose.cfg.data.keypoint_set} keypoints")
    if pose.detector is not None:
        print(f"person detector: {pose.detector.name} (score >= {args.det_thr}, NMS IoU {args.det_nms})")
    if args.video:
        return _infer_video(pose, args)
    results = []
    out_dir = None
    if args.images:
        out_dir = Path(args.out) if args.out else Path(args.images).with_name(Path(args.images).name + "_pose")
    for n, image_path in enumerate(paths):
        image_id = image_id_from_name(image_path)
        if image_id is None:  # COCO results need an integer id: the file's position in the sorted folder
            image_id = n if args.images else 0
        found, drawn = _infer_image(pose, image_path, image_id, args)
        results += found
        png = (Path(args.out) if args.out else Path(f"{image_path.stem}_pose.png")) if args.image \
            else out_dir / f"{image_path.stem}_pose.png"
        _write_png(png, drawn)
    if args.image:
        out_json = png.with_suffix(".json")
        written = [png, out_json]
    else:
        out_json = out_dir / "results.json"
        written = [out_json]
    out_json.write_text(json.dumps(results))
    if pose.detector is not None:  # the boxes as COCO detections: data.det_file of `vitpose-scale eval`
        from vitpose_scale.detect import write_coco_detections

        det_json = out_json.with_name(out_json.stem + "_detections.json") if args.image \
            else out_dir / "detections.json"
        write_coco_detections(det_json, _boxes_by_image(results))
        written.append(det_json)
    count = f" ({len(results)} people in {len(paths)} images) and {len(paths)} drawings in {out_dir}" \
        if args.images else ""
    print(f"wrote {', '.join(map(str, written))}{count}")
    return 0


def _boxes_by_image(results: list[dict]) -> dict[int, np.ndarray]:
    """image id -> (N, 5) x, y, w, h, score of the person boxes the results were predicted in."""
    out: dict[int, list] = {}
    for r in results:
        out.setdefault(r["image_id"], []).append([*r["bbox"], r["box_score"]])
    return {i: np.asarray(b, dtype=np.float64) for i, b in out.items()}


def _infer_image(pose, image_path: Path, image_id: int, args: argparse.Namespace) -> tuple[list[dict], np.ndarray]:
    """COCO keypoint results of one image (one per person box) and the drawing."""
    from vitpose_scale.api import read_image
    from vitpose_scale.eval.postprocess import to_coco_results

    image = read_image(image_path)
    img_h, img_w = image.shape[:2]
    boxes = None
    if args.boxes:
        boxes = load_boxes(args.boxes, image_path, args.det_thr)
        if len(boxes) == 0:
            print(f"note: no person boxes for {image_path.name} in {args.boxes} with score >= {args.det_thr}",
                  file=sys.stderr)
    people = pose.predict([image], None if boxes is None else [boxes])[0]
    results = to_coco_results([image_id] * len(people), [p.as_array() for p in people],
                              [p.score for p in people]) if people else []
    for r, p in zip(results, people):
        r["bbox"], r["box_score"] = [float(v) for v in p.box], p.box_score
    print(f"{image_path.name}: {img_w}x{img_h}, {_count(people)} (flip test {'on' if pose.flip else 'off'})")
    if not people:
        print(f"note: no person found in {image_path.name}"
              + (f" (detector score >= {args.det_thr})" if pose.detector is not None else ""), file=sys.stderr)
    for n, p in enumerate(people):
        good = p.scores >= args.score_thr
        print(f"  person {n}: box [{p.box[0]:.0f}, {p.box[1]:.0f}, {p.box[2]:.0f}, {p.box[3]:.0f}] det "
              f"{p.box_score:.3f} score {p.score:.3f}, {int(good.sum())}/{len(good)} keypoints >= {args.score_thr} "
              f"(mean keypoint score {p.scores.mean():.3f})")
    title = f"{pose.name} on {image_path.name}: {_count(people) if people else 'no person found'}"
    return results, pose.draw(image, people, score_thr=args.score_thr, title=title)


def _count(people) -> str:
    return f"{len(people)} {'person' if len(people) == 1 else 'people'}"


def _infer_video(pose, args: argparse.Namespace) -> int:
    """Detection + pose per frame in batches; the drawn video (frames under a title band) and a JSON
    of every frame's people."""
    from contextlib import ExitStack

    from tqdm import tqdm

    from vitpose_scale.video import VideoReader, VideoWriter

    src = Path(args.video)
    out = Path(args.out) if args.out else Path(f"{src.stem}_pose.mp4")
    frames_json, total_people, done = [], 0, 0
    with ExitStack() as stack:
        reader = stack.enter_context(VideoReader(src))
        writer = None  # opened at the first drawing's size (the frame plus its title band)
        start = time.perf_counter()
        bar = stack.enter_context(tqdm(total=reader.frame_count or None, unit="frame", desc=src.name, disable=None))
        for batch in reader.batches(args.batch_size):
            for frame, people in zip(batch, pose.predict(batch)):
                title = f"{pose.name}: frame {done}, {_count(people) if people else 'no person found'}"
                drawn = pose.draw(frame, people, score_thr=args.score_thr, title=title)
                if writer is None:
                    writer = stack.enter_context(VideoWriter(out, reader.fps, drawn.shape[1], drawn.shape[0]))
                writer.write(drawn)
                frames_json.append({"frame": done, "people": [
                    {"box": [float(v) for v in p.box], "box_score": p.box_score, "score": p.score,
                     "keypoints": [[float(v) for v in row] for row in p.as_array()]} for p in people]})
                total_people += len(people)
                done += 1
            bar.update(len(batch))
        seconds = time.perf_counter() - start
    meta = {"video": str(src), "fps": reader.fps, "width": reader.width, "height": reader.height,
            "keypoints": pose.keypoint_names, "frames": frames_json}
    out_json = out.with_suffix(".json")
    out_json.write_text(json.dumps(meta))
    print(f"{done} frames in {seconds:.1f} s ({done / max(seconds, 1e-9):.2f} frames/s), {total_people} people; "
          f"wrote {out} and {out_json}")
    return 0


def _write_png(path: Path, image: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise InputError(f"--out {path}: could not write it (expected a writable .png/.jpg path)")


if __name__ == "__main__":
    sys.exit(main())
