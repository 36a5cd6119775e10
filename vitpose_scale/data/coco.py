"""Top-down COCO keypoint dataset (one sample = one person box).

Training samples come from ground-truth boxes; validation samples from a
person-detection file (``det_file``, COCO results format) or, without one,
from the ground-truth boxes.

Other keypoint sets
-------------------
Any COCO-layout annotation file whose joints can be mapped onto the COCO 17
can be mixed into training with ``keypoint_map``: a list with one entry per
*source* joint giving the COCO index it becomes, or ``None`` to drop it. The
conversion happens on load, so the samples look exactly like COCO ones and the
datasets concatenate with ``torch.utils.data.ConcatDataset``. For AI Challenger
(14 joints, converted to the COCO json layout as mmpose distributes it)::

    TopDownCocoDataset(root="data/aic", ann_file="annotations/aic_train.json",
                       img_dir="ai_challenger_keypoint_train_20170902/keypoint_train_images_20170902",
                       data_cfg=cfg.data, image_size=(256, 192), train=True,
                       keypoint_map=AIC_TO_COCO)

or, from the config, an entry of ``data.extra_train``::

    {root: data/aic, ann: annotations/aic_train.json, images: ..., keypoint_map: aic}

(``keypoint_map`` may be the name ``aic`` or an explicit list). COCO joints a
source set does not have (AIC: the five face points) get v = 0, i.e. zero
target weight. See docs/datasets.md.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from .transforms import (COCO_FLIP_PAIRS, COCO_UPPER_BODY_IDS, TopDownTransform, box_to_center_scale,
                         sample_rng)

# AI Challenger order: r_shoulder, r_elbow, r_wrist, l_shoulder, l_elbow, l_wrist,
# r_hip, r_knee, r_ankle, l_hip, l_knee, l_ankle, head_top, neck -> COCO index.
AIC_TO_COCO: list[int | None] = [6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, None, None]
KEYPOINT_MAPS: dict[str, list[int | None]] = {"aic": AIC_TO_COCO}

SYNTHETIC_LAYOUT = {
    "train_ann": "annotations/person_keypoints_train.json", "train_images": "train",
    "val_ann": "annotations/person_keypoints_val.json", "val_images": "val",
}


def _resolve(root: str | Path, path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else Path(root) / path


def load_coco(ann_file: str | Path):
    """pycocotools COCO object, quietly; ValueError when the file is not a person-keypoint file."""
    from pycocotools.coco import COCO

    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file {ann_file} does not exist")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints timing chatter
        try:
            coco = COCO(str(ann_file))
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as exc:
            raise ValueError(f"{ann_file}: not a COCO annotation file ({exc!r}); expected a COCO "
                             f"person-keypoint json with images, annotations and categories") from exc
    cats = coco.dataset.get("categories", [])
    person = [c for c in cats if c.get("id") == 1]
    if not person or not person[0].get("keypoints"):
        names = [c.get("name") for c in cats]
        raise ValueError(
            f"{ann_file}: not a person-keypoint annotation file (categories {names}); expected a COCO "
            f"keypoint json whose category id 1 is 'person' with a 'keypoints' name list, "
            f"e.g. person_keypoints_train2017.json")
    if any("keypoints" not in a for a in coco.dataset.get("annotations", [])[:100]):
        raise ValueError(f"{ann_file}: annotations have no 'keypoints' field; expected a COCO "
                         f"person-keypoint file (instances_*.json holds boxes only)")
    return coco


class TopDownCocoDataset(Dataset):
    """COCO-layout top-down dataset.

    Args:
        root: data root; ``ann_file``, ``img_dir`` and ``det_file`` are relative to it unless absolute.
        data_cfg: :class:`vitpose_scale.config.DataConfig` (augmentation, padding, sigma, det threshold).
        image_size: network input (H, W); heatmaps are (H/4, W/4).
        num_keypoints: joints per sample (17 for COCO).
        train: augment and build targets from ground truth boxes.
        det_file: person detections (COCO results json) for validation; None: ground-truth boxes.
        seed: augmentation seed; with ``set_epoch`` and the index it fixes every random choice.
        keypoint_map: source joint -> COCO index (None drops it), e.g. :data:`AIC_TO_COCO`.
        flip_pairs / upper_body_ids: joint layout (COCO defaults when ``num_keypoints == 17``).

    Items are dicts: img (3,H,W) float32 tensor, target (K,h,w), target_weight (K,1),
    center (2,), scale (2,) padded box size in pixels, rotation, image_id, bbox_score, index.
    """

    def __init__(self, root, ann_file, img_dir, data_cfg, image_size, num_keypoints: int = 17,
                 train: bool = True, det_file: str | None = None, seed: int = 0,
                 keypoint_map: list | str | None = None, flip_pairs=None, upper_body_ids=None):
        self.root = Path(root)
        self.ann_file = _resolve(root, ann_file)
        self.img_dir = _resolve(root, img_dir)
        self.cfg = data_cfg
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_keypoints = int(num_keypoints)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        if isinstance(keypoint_map, str):
            if keypoint_map not in KEYPOINT_MAPS:
                raise ValueError(f"keypoint_map {keypoint_map!r}: expected one of {sorted(KEYPOINT_MAPS)} "
                                 f"or a list of target indices")
            keypoint_map = KEYPOINT_MAPS[keypoint_map]
        self.keypoint_map = None if keypoint_map is None else list(keypoint_map)
        if self.keypoint_map is not None:
            bad = [t for t in self.keypoint_map if t is not None and not 0 <= int(t) < self.num_keypoints]
            if bad:
                raise ValueError(f"keypoint_map targets {bad} are outside [0, {self.num_keypoints})")
        if flip_pairs is None:
            flip_pairs = COCO_FLIP_PAIRS if self.num_keypoints == 17 else []
        if upper_body_ids is None:
            upper_body_ids = COCO_UPPER_BODY_IDS if self.num_keypoints == 17 else list(range(self.num_keypoints))
        self.flip_pairs = [tuple(p) for p in flip_pairs]
        self.transform = TopDownTransform(
            image_size=self.image_size, train=self.train, sigma=data_cfg.sigma,
            flip_prob=data_cfg.flip_prob, half_body_prob=data_cfg.half_body_prob,
            half_body_min_joints=data_cfg.half_body_min_joints, scale_factor=data_cfg.scale_factor,
            rot_factor=data_cfg.rot_factor, rot_prob=data_cfg.rot_prob,
            flip_pairs=list(self.flip_pairs), upper_body_ids=list(upper_body_ids))

        coco = load_coco(self.ann_file)
        src_k = len(self.keypoint_map) if self.keypoint_map is not None else self.num_keypoints
        cat_k = len(next(c for c in coco.dataset["categories"] if c["id"] == 1)["keypoints"])
        if cat_k != src_k:
            raise ValueError(
                f"{self.ann_file}: the person category lists {cat_k} keypoints; expected {src_k} "
                + ("(the length of keypoint_map)" if self.keypoint_map is not None
                   else f"(num_keypoints; pass keypoint_map to map a {cat_k}-joint set onto it)"))
        self.images = {img_id: coco.imgs[img_id] for img_id in sorted(coco.imgs)}
        self.det_file = None
        if det_file is not None:
            # Relative to the data root like the annotations; fall back to the working directory.
            self.det_file = _resolve(root, det_file)
            if not self.det_file.is_file() and Path(det_file).is_file():
                self.det_file = Path(det_file)
            if not self.det_file.is_file():
                raise FileNotFoundError(f"detection file {det_file} not found (looked in {self.det_file} and "
                                        f"{Path(det_file).resolve()}); expected a COCO results json of person boxes")
            self.records = self._load_detections(self.det_file)
        else:
            self.records = self._load_gt(coco)

    # ------------------------------------------------------------ loading --
    def _map_keypoints(self, kpts: np.ndarray) -> np.ndarray:
        src = kpts.reshape(-1, 3)
        if self.keypoint_map is None:
            return src.astype(np.float32)
        out = np.zeros((self.num_keypoints, 3), dtype=np.float32)
        for s, t in enumerate(self.keypoint_map):
            if t is not None:
                out[t] = src[s]
        return out

    def _load_gt(self, coco) -> list[dict]:
        aspect = self.image_size[1] / self.image_size[0]
        records = []
        for img_id, info in self.images.items():
            width, height = info["width"], info["height"]
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None)):
                if ann.get("iscrowd", 0) or ann.get("category_id", 1) != 1 or "bbox" not in ann:
                    continue
                # Clean the box like the reference: clip to the image, need positive size.
                x, y, w, h = ann["bbox"]
                x1, y1 = max(0.0, x), max(0.0, y)
                x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
                y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
                if ann.get("area", 1) <= 0 or x2 <= x1 or y2 <= y1:
                    continue
                joints = self._map_keypoints(np.asarray(ann["keypoints"], dtype=np.float32))
                # Skip people without a single labelled joint (counted after mapping).
                if not (joints[:, 2] > 0).any():
                    continue
                joints[:, 2] = np.minimum(joints[:, 2], 2)
                center, scale = box_to_center_scale([x1, y1, x2 - x1, y2 - y1], aspect, self.cfg.bbox_padding)
                records.append(dict(image_id=img_id, file_name=info["file_name"], center=center,
                                    scale=scale, joints=joints, bbox_score=1.0, ann_id=ann["id"]))
        return records

    def _load_detections(self, det_file: Path) -> list[dict]:
        if not det_file.is_file():
            raise FileNotFoundError(f"detection file {det_file} does not exist")
        dets = json.loads(det_file.read_text())
        if not isinstance(dets, list):
            raise ValueError(f"{det_file}: expected a COCO results list of "
                             f"{{image_id, category_id, bbox, score}} dicts")
        aspect = self.image_size[1] / self.image_size[0]
        zero = np.zeros((self.num_keypoints, 3), dtype=np.float32)
        records = []
        for det in dets:
            if det.get("category_id", 1) != 1 or det["score"] <= self.cfg.det_score_thr:
                continue
            info = self.images.get(det["image_id"])
            if info is None:
                raise ValueError(f"{det_file}: detection for image_id {det['image_id']}, which is not in "
                                 f"{self.ann_file}; expected detections for that annotation file's images")
            center, scale = box_to_center_scale(det["bbox"], aspect, self.cfg.bbox_padding)
            records.append(dict(image_id=det["image_id"], file_name=info["file_name"], center=center,
                                scale=scale, joints=zero, bbox_score=float(det["score"]), ann_id=-1))
        return records

    # ------------------------------------------------------------ access --
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def read_image(self, rec: dict) -> np.ndarray:
        path = self.img_dir / rec["file_name"]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if img is None:
            raise FileNotFoundError(
                f"image {path} (image_id {rec['image_id']}, listed in {self.ann_file}) is missing or unreadable")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        rec = self.records[index]
        img = self.read_image(rec)
        rng = sample_rng(self.seed, self.epoch, index) if self.train else None
        out = self.transform(img, rec["joints"], rec["center"], rec["scale"], rng)
        return {
            "img": torch.from_numpy(out["img"]),
            "target": torch.from_numpy(out["target"]),
            "target_weight": torch.from_numpy(out["target_weight"]),
            "center": out["center"],
            "scale": out["scale"],
            "rotation": out["rotation"],
            "image_id": int(rec["image_id"]),
            "bbox_score": float(rec["bbox_score"]),
            "index": index,
        }


# ------------------------------------------------------------ builders --
def ensure_synthetic(root: str | Path, num_train: int, num_val: int, seed: int = 0) -> None:
    """Generate the synthetic set into ``root`` unless an identical one is already there."""
    from .synthetic import generate_synthetic_coco, synthetic_is_complete

    if not synthetic_is_complete(root, num_train, num_val, seed):
        generate_synthetic_coco(root, num_train, num_val, seed=seed)


def build_datasets(cfg):
    """(train_dataset, val_dataset, val_ann_path) from the full Config.

    ``cfg.data.extra_train`` entries ({root, ann, images, keypoint_map?}) are
    concatenated to the training set. With ``cfg.data.kind == "synthetic"`` the
    set is generated into ``cfg.data.root`` first (layout: annotations/
    person_keypoints_{train,val}.json, {train,val}/), ignoring the *_ann/*_images
    keys. In multi-process runs call this on rank 0 first (then barrier): the
    generator writes atomically, but every rank would otherwise generate it.
    """
    d = cfg.data
    image_size = tuple(cfg.model.image_size)
    k = cfg.model.num_keypoints
    seed = cfg.train.seed
    paths = dict(train_ann=d.train_ann, train_images=d.train_images, val_ann=d.val_ann,
                 val_images=d.val_images)
    if d.kind == "synthetic":
        ensure_synthetic(d.root, d.synthetic_train, d.synthetic_val)
        paths = dict(SYNTHETIC_LAYOUT)
    train = TopDownCocoDataset(d.root, paths["train_ann"], paths["train_images"], d, image_size, k,
                               train=True, seed=seed)
    extras = []
    for i, entry in enumerate(d.extra_train):
        missing = {"root", "ann", "images"} - set(entry)
        unknown = set(entry) - {"root", "ann", "images", "keypoint_map"}
        if missing or unknown:
            raise ValueError(f"data.extra_train[{i}]: got keys {sorted(entry)}; expected root, ann, images "
                             f"and optionally keypoint_map")
        extras.append(TopDownCocoDataset(entry["root"], entry["ann"], entry["images"], d, image_size, k,
                                         train=True, seed=seed, keypoint_map=entry.get("keypoint_map")))
    if extras:
        train = ConcatDataset([train, *extras])
    val = TopDownCocoDataset(d.root, paths["val_ann"], paths["val_images"], d, image_size, k, train=False,
                             det_file=d.det_file, seed=seed)
    return train, val, str(_resolve(d.root, paths["val_ann"]))


__all__ = ["TopDownCocoDataset", "AIC_TO_COCO", "KEYPOINT_MAPS", "build_datasets", "load_coco",
           "ensure_synthetic", "SYNTHETIC_LAYOUT"]
