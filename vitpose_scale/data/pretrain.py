"""Unlabeled image sets for MAE pretraining (docs/reference.md §4).

* :class:`ImageFolderDataset` - every .jpg/.jpeg/.png under a folder (e.g. the
  ImageNet train tree), RandomResizedCrop-like: area scale (0.2, 1), log-uniform
  aspect (3/4, 4/3) around the model's aspect, horizontal flip.
* :class:`PersonCropDataset` - every person box (non-crowd; with or without
  keypoints) of the COCO-layout sets of ``cfg.data`` (train + extra_train, e.g.
  COCO + AI Challenger), cropped like the pose pipeline: box padded by
  ``data.bbox_padding`` (1.25) to the model's aspect ratio, UDP affine, with a
  random scale clip(N(1, data.scale_factor), 1 +- scale_factor) and flip.

Items are ``{'img': (3, H, W) float32 tensor, ImageNet-normalised, 'index': int}``.
Every random choice comes from :func:`transforms.sample_rng` (seed, epoch, index),
so a sample does not depend on the rank or worker that loads it (exact resume).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import read_rgb
from .transforms import box_to_center_scale, crop_box, normalize_image, sample_rng

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _read_rgb(path: Path) -> np.ndarray:
    return read_rgb(path)  # refuses truncated JPEGs (OpenCV would fill them with grey)


def _crop(img: np.ndarray, center, size_wh, image_size_hw, flip: bool) -> torch.Tensor:
    """Warp the box (centre, size in pixels) onto the network input and normalise."""
    crop = crop_box(img, center, size_wh, image_size_hw)
    if flip:  # UDP: mirroring the crop equals mirroring the box about its centre
        crop = crop[:, ::-1]
    return torch.from_numpy(normalize_image(crop))


class ImageFolderDataset(Dataset):
    """All images under ``root`` (sorted, recursive) with RandomResizedCrop-like augmentation."""

    def __init__(self, root, image_size, seed: int = 0, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                 flip_prob: float = 0.5):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"mae.data_root {self.root} is not a folder; expected a folder of images "
                                    f"(any depth), e.g. the ImageNet train tree")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {self.root}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.seed, self.epoch = int(seed), 0
        self.scale, self.ratio, self.flip_prob = scale, ratio, flip_prob

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files)

    def sample_box(self, width: int, height: int, rng: np.random.Generator):
        """(centre, size_wh) of the random crop, torchvision's rule: 10 tries, then a centre crop."""
        area = width * height
        # Aspect (w/h) drawn around the output's, so a square-ish crop is not squeezed into 256x192.
        target = self.image_size[1] / self.image_size[0]
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            a = area * rng.uniform(*self.scale)
            r = target * math.exp(rng.uniform(*log_r))
            w, h = math.sqrt(a * r), math.sqrt(a / r)
            if w <= width and h <= height:
                x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
                return np.array([x0 + w / 2, y0 + h / 2]), np.array([w, h])
        # Fallback: the largest centred box of the target aspect.
        w, h = (width, width / target) if width / height < target else (height * target, height)
        return np.array([width / 2, height / 2]), np.array([w, h])

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        img = _read_rgb(self.files[index])
        rng = sample_rng(self.seed, self.epoch, index)
        center, size = self.sample_box(img.shape[1], img.shape[0], rng)
        flip = rng.random() < self.flip_prob
        return {"img": _crop(img, center, size, self.image_size, flip), "index": index}


def person_boxes(ann_file: Path) -> tuple[list[dict], dict[int, str]]:
    """Person boxes (x, y, w, h) clipped to their image, non-crowd, positive size; keypoints not needed."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file {ann_file} does not exist")
    data = json.loads(ann_file.read_text())
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(f"{ann_file}: not a COCO-layout annotation file (expected images and annotations)")
    images = {img["id"]: img for img in data["images"]}
    boxes = []
    for ann in data["annotations"]:
        if ann.get("iscrowd", 0) or ann.get("category_id", 1) != 1 or "bbox" not in ann:
            continue
        info = images.get(ann["image_id"])
        if info is None:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        x1, y1 = max(0.0, x), max(0.0, y)  # cleaned as the pose dataset does
        x2 = min(info["width"] - 1.0, x1 + max(0.0, w - 1.0))
        y2 = min(info["height"] - 1.0, y1 + max(0.0, h - 1.0))
        if ann.get("area", 1) <= 0 or x2 <= x1 or y2 <= y1:
            continue
        boxes.append({"image_id": ann["image_id"], "bbox": [x1, y1, x2 - x1, y2 - y1]})
    return boxes, {i: img["file_name"] for i, img in images.items()}


class PersonCropDataset(Dataset):
    """Every person box of the training sets of ``cfg.data`` as one unlabeled crop."""

    def __init__(self, cfg):
        from .coco import SYNTHETIC_LAYOUT, _resolve, ensure_synthetic

        d = cfg.data
        self.image_size = (int(cfg.model.image_size[0]), int(cfg.model.image_size[1]))
        self.seed, self.epoch = int(cfg.train.seed), 0
        self.padding, self.scale_factor, self.flip_prob = d.bbox_padding, d.scale_factor, d.flip_prob
        sources = [(d.root, d.train_ann, d.train_images)]
        if d.kind == "synthetic":
            ensure_synthetic(d.root, d.synthetic_train, d.synthetic_val, keypoints=d.keypoint_set)
            sources = [(d.root, SYNTHETIC_LAYOUT["train_ann"], SYNTHETIC_LAYOUT["train_images"])]
        for i, entry in enumerate(d.extra_train):
            if not {"root", "ann", "images"} <= set(entry):
                raise ValueError(f"data.extra_train[{i}]: got keys {sorted(entry)}; expected root, ann, images")
            sources.append((entry["root"], entry["ann"], entry["images"]))  # keypoint_map is irrelevant here
        aspect = self.image_size[1] / self.image_size[0]
        # Compact arrays, not per-box objects: the dataset is pickled into the workers every epoch.
        self.files: list[str] = []
        file_ids, centers, scales = [], [], []
        for root, ann, images in sources:
            img_dir = _resolve(root, images)
            boxes, files = person_boxes(_resolve(root, ann))
            first = {}
            for box in boxes:
                if box["image_id"] not in first:
                    first[box["image_id"]] = len(self.files)
                    self.files.append(str(img_dir / files[box["image_id"]]))
                center, scale = box_to_center_scale(box["bbox"], aspect, self.padding)
                file_ids.append(first[box["image_id"]])
                centers.append(center)
                scales.append(scale)
        if not file_ids:
            raise ValueError(f"no person boxes in {[s[1] for s in sources]}")
        self.file_ids = np.asarray(file_ids, dtype=np.int64)
        self.centers = np.asarray(centers, dtype=np.float32)
        self.scales = np.asarray(scales, dtype=np.float32)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.file_ids)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        path, center, scale = Path(self.files[self.file_ids[index]]), self.centers[index], self.scales[index]
        rng = sample_rng(self.seed, self.epoch, index)
        sf = self.scale_factor
        s = float(np.clip(rng.standard_normal() * sf + 1.0, 1.0 - sf, 1.0 + sf))
        flip = rng.random() < self.flip_prob
        return {"img": _crop(_read_rgb(path), center, scale * s, self.image_size, flip), "index": index}


def build_pretrain_dataset(cfg) -> Dataset:
    """``mae.source``: folder (``mae.data_root``) or person_crops (the sets of ``cfg.data``)."""
    if cfg.mae.source == "folder":
        if not cfg.mae.data_root:
            raise ValueError("mae.source is folder but mae.data_root is not set: expected a folder of images")
        return ImageFolderDataset(cfg.mae.data_root, cfg.model.image_size, seed=cfg.train.seed,
                                  flip_prob=cfg.data.flip_prob)
    return PersonCropDataset(cfg)


__all__ = ["ImageFolderDataset", "PersonCropDataset", "build_pretrain_dataset", "person_boxes"]
