"""The Python API: from an image (or a video's frames) to people's keypoints in three lines.

    from vitpose_scale import PoseEstimator
    pose = PoseEstimator.load("runs/demo", detector="PekingU/rtdetr_r50vd_coco_o365")
    people = pose("photo.jpg")                      # or pose(image_bgr, boxes=[[x, y, w, h]])
    cv2.imwrite("photo_pose.png", pose.draw("photo.jpg", people))

`load` reads any weights `vitpose-scale` writes or reads (a run directory, its best.pth or
final.pth, a training checkpoint directory step_N, an official release .pth, a Hugging Face
directory, a .safetensors file) and finds the model's config next to them. Person boxes come
from the caller, from a detector (vitpose_scale.detect) or, without either, the whole image.
The crops, flip test and decoding are the evaluator's (eval.postprocess / eval.decode), so
`vitpose-scale infer` and the Python API give evaluation's keypoints for the same boxes.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitpose_scale.errors import InputError

if TYPE_CHECKING:
    import torch

    from vitpose_scale.config import Config
    from vitpose_scale.detect import PersonDetector


@dataclass
class Person:
    """One person: keypoints in image pixels and the scores evaluation ranks by."""

    keypoints: np.ndarray  # (K, 2) x, y
    scores: np.ndarray  # (K,) heatmap maxima, about 0..1
    box: np.ndarray  # (4,) x, y, w, h of the person box the crop was taken from
    box_score: float  # the detector's score (1.0 for given boxes without one)
    score: float  # the person score of COCO results: mean confident keypoint score x box score

    def as_array(self) -> np.ndarray:
        """(K, 3) [x, y, score]: the layout of COCO keypoint results and of `draw_skeletons`."""
        return np.concatenate([self.keypoints, self.scores[:, None]], axis=1)


# ------------------------------------------------------------ estimation --
def estimate(model, cfg: Config, images_bgr: list[np.ndarray], boxes: list, flip: bool) -> list[list[np.ndarray]]:
    """Keypoints (K, 3) [x, y, score] in image pixels for every (x, y, w, h, ...) box of every image.

    The crops of all images go through the model together, `cfg.eval.batch_size` at a time, on the
    model's device and dtype: UDP affine at `cfg.model.image_size` with the config's box padding,
    flip test, and the evaluator's decode (`cfg.eval.decode`, `cfg.eval.blur_kernel`)."""
    import cv2
    import torch

    from vitpose_scale.data.transforms import box_to_center_scale, crop_box, normalize_image
    from vitpose_scale.eval.decode import decode_heatmaps
    from vitpose_scale.eval.postprocess import predict_batch
    from vitpose_scale.keypoints import get_spec

    in_h, in_w = cfg.model.image_size
    centers, scales, crops, owner = [], [], [], []
    for n, (image, image_boxes) in enumerate(zip(images_bgr, boxes)):
        image_boxes = np.asarray(image_boxes, dtype=np.float64)
        if image_boxes.size == 0:
            continue
        image_boxes = np.atleast_2d(image_boxes)
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # the model was trained on RGB
        for box in image_boxes:
            c, s = box_to_center_scale(box[:4], in_w / in_h, cfg.data.bbox_padding)
            crops.append(normalize_image(crop_box(rgb, c, s, (in_h, in_w))))
            centers.append(c)
            scales.append(s)
            owner.append(n)
    out: list[list[np.ndarray]] = [[] for _ in images_bgr]
    if not crops:
        return out
    param = next(model.parameters())

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(param.device, param.dtype)).float()

    heatmaps = []
    batch = max(1, cfg.eval.batch_size)
    flip_pairs = get_spec(cfg.data.keypoint_set).flip_pairs
    with torch.no_grad():
        for i in range(0, len(crops), batch):
            heatmaps.append(predict_batch(forward, torch.from_numpy(np.stack(crops[i:i + batch])), flip, flip_pairs))
    centers, scales = np.stack(centers), np.stack(scales)
    coords, maxvals = decode_heatmaps(np.concatenate(heatmaps), centers, scales, None, image_size=(in_h, in_w),
                                      method=cfg.eval.decode, kernel=cfg.eval.blur_kernel)
    # A keypoint lies in the crop its heatmap covers (center +- scale/2 with UDP, no rotation). udp_dark's
    # Newton step is unbounded (as the official one): on a flat or saddle-shaped map (untrained model, occluded
    # joint) it can land far outside, so drawings and results are kept to the crop; the evaluator does not
    # clip, as the official code, and the two agree wherever the step stays inside the crop.
    coords = np.clip(coords, centers[:, None] - 0.5 * scales[:, None], centers[:, None] + 0.5 * scales[:, None])
    for k, n in enumerate(owner):
        out[n].append(np.concatenate([coords[k], maxvals[k]], axis=1).astype(np.float64))
    return out


def read_image(path: str | Path) -> np.ndarray:
    """An image file as BGR uint8; InputError (one line) when it is missing or not an image."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"image {path} could not be decoded by OpenCV: expected an image file "
                         f"(.jpg, .jpeg, .png, .bmp, .webp); for a video use --video")
    return image


class PoseEstimator:
    """A pose model with its config (and optionally a person detector), called on images."""

    def __init__(self, model, cfg: Config, detector: PersonDetector | None = None, flip: bool | None = None,
                 name: str = "ViTPose"):
        self.model, self.cfg, self.detector = model, cfg, detector
        self.flip = cfg.eval.flip_test if flip is None else flip
        self.name = name  # drawn in titles: the model and its weights
        self._warned_whole_image = False

    @classmethod
    def load(cls, source: str | Path | None, config: str | Path | None = None, overrides: list[str] = (),
             dataset: str | None = None, device: str | None = None, detector: str | None = None,
             detector_checkpoint: str | None = None, det_thr: float = 0.5, det_nms: float = 0.7,
             flip: bool | None = None) -> PoseEstimator:
        """The model of `source`'s weights (None: random weights, with a warning) and its config
        (`config`, else the run's config.yaml / the HF directory's config.json); `dataset` picks a
        multi-task model's head; `detector` a person detector (vitpose_scale.detect.load_detector)."""
        import torch

        from vitpose_scale.config import load_config
        from vitpose_scale.evaluate import select_dataset
        from vitpose_scale.models.weights import config_for_checkpoint, load_weights, resolve_weights
        from vitpose_scale.models.pose import DatasetView, build_pose_model

        weights = resolve_weights(source) if source is not None else None
        if weights is None:
            if config is None:
                raise InputError("no weights and no config: expected a checkpoint (a run directory, .pth, HF "
                                 "directory or .safetensors) or, for random weights, a config")
            cfg = load_config(config, list(overrides))
        else:
            cfg = config_for_checkpoint(weights, str(config) if config else None, list(overrides))
        index, task_cfg = select_dataset(cfg, dataset)  # a multi-task model: one dataset's head and joints
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(cfg.train.seed)  # random-weight models stay reproducible
        model = build_pose_model(cfg.model)
        if weights is not None:
            load_weights(model, weights, [task.data.keypoint_set for task in _task_cfgs(cfg)])
        else:
            msg = "no checkpoint given: the model has RANDOM weights and its keypoints are meaningless"
            warnings.warn(msg, stacklevel=2)
            print(f"WARNING: {msg}", file=sys.stderr)
        model = model.to(dev).eval()  # eval: BatchNorm running statistics, no drop path
        if index is not None and model.num_datasets > 1:
            model = DatasetView(model, index)
        det = None
        if detector:
            from vitpose_scale.detect import DetectorOptions, load_detector

            det = load_detector(detector, detector_checkpoint,
                                DetectorOptions(score_thr=det_thr, nms_iou=det_nms), device=dev)
        from vitpose_scale.visualize import model_name

        name = f"{model_name(cfg.model)} {weights.name if weights is not None else '(random weights)'}"
        if index is not None and dataset is not None:
            name += f" [{dataset}]"
        return cls(model, task_cfg, det, flip, name)

    @property
    def keypoint_names(self) -> list[str]:
        from vitpose_scale.keypoints import get_spec

        return list(get_spec(self.cfg.data.keypoint_set).names)

    def boxes_for(self, images_bgr: list[np.ndarray]) -> list[np.ndarray]:
        """(N, 5) person boxes x, y, w, h, score per image: the detector's, else the whole image."""
        if self.detector is not None:
            return self.detector(images_bgr)
        if not self._warned_whole_image:
            print("note: no person boxes and no detector: each image is taken as one person box (people much "
                  "smaller than the frame are then missed: pass boxes, or a detector)", file=sys.stderr)
            self._warned_whole_image = True
        return [np.array([[0.0, 0.0, im.shape[1], im.shape[0], 1.0]]) for im in images_bgr]

    def predict(self, images_bgr: list[np.ndarray], boxes: list | None = None) -> list[list[Person]]:
        """People of each image; `boxes`: per image (N, 4|5) x, y, w, h(, score), else `boxes_for`."""
        from vitpose_scale.eval.postprocess import rescore

        if boxes is None:
            boxes = self.boxes_for(images_bgr)
        full = []
        for b in boxes:
            b = np.asarray(b, dtype=np.float64)
            b = np.atleast_2d(b) if b.size else np.zeros((0, 5))
            if b.ndim != 2 or b.shape[1] not in (4, 5):
                raise InputError(f"person boxes of shape {b.shape}: expected rows of x, y, w, h(, score)")
            full.append(np.concatenate([b, np.ones((len(b), 1))], axis=1) if b.shape[1] == 4 else b)
        found = estimate(self.model, self.cfg, images_bgr, full, self.flip)
        out = []
        for image_boxes, people in zip(full, found):
            out.append([Person(kp[:, :2], kp[:, 2], box[:4].copy(), float(box[4]),
                               float(rescore(kp[:, 2], box[4], self.cfg.eval.rescore_thr)))
                        for kp, box in zip(people, image_boxes)])
        return out

    def __call__(self, image: str | Path | np.ndarray, boxes=None) -> list[Person]:
        """People in one image (a path or a BGR array): `boxes` (N, 4|5), else the detector's / the whole image."""
        image = read_image(image) if isinstance(image, (str, Path)) else image
        return self.predict([image], None if boxes is None else [boxes])[0]

    def draw(self, image: str | Path | np.ndarray, people: list[Person], score_thr: float = 0.3,
             title: str | None = None) -> np.ndarray:
        """The image (BGR) with each person's box, box score and skeleton, under a title naming the
        model and how many people it found ("no person found" when none)."""
        from vitpose_scale.visualize import add_title, draw_skeletons

        image = read_image(image) if isinstance(image, (str, Path)) else image
        drawn = draw_skeletons(image, [p.as_array() for p in people], self.cfg.data.keypoint_set,
                               score_thr=score_thr,
                               boxes=[[*p.box, p.box_score] for p in people] if people else None)
        if title is None:
            count = f"{len(people)} {'person' if len(people) == 1 else 'people'}" if people else "no person found"
            title = f"{self.name}: {count}"
        return add_title(drawn, title)


def _task_cfgs(cfg: Config) -> list[Config]:
    from vitpose_scale.config import task_configs

    return [task for _, task in task_configs(cfg)]
