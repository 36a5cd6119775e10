"""COCO test-dev: images without annotations (``image_info_test-dev2017.json``) + person detections
-> the results file the COCO evaluation server accepts.

The server takes a JSON list with one entry per person: ``image_id`` (int),
``category_id`` (int, 1), ``keypoints`` (51 floats: x, y, score per joint) and
``score`` (float), in a file named ``person_keypoints_test-dev2017_<alg>_results.json``
(zipped for upload). The entries are built by the same rescoring and OKS-NMS as on val.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vitpose_scale.data.images import read_rgb
from vitpose_scale.data.transforms import TopDownTransform, box_to_center_scale, normalize_batch
from vitpose_scale.keypoints import get_spec

RESULT_KEYS = ("image_id", "category_id", "keypoints", "score")


def has_ground_truth(ann_file: str | Path) -> bool:
    """False for an image-info file (test-dev, test-challenge): a COCO json without annotations.
    A list (mmpose's MPII layout: one entry per annotated person) is ground truth."""
    data = json.loads(Path(ann_file).read_text())
    return bool(data) if isinstance(data, list) else bool(data.get("annotations"))


def results_file_name(ann_file: str | Path, alg: str) -> str:
    """``image_info_test-dev2017.json`` -> ``person_keypoints_test-dev2017_<alg>_results.json``."""
    split = Path(ann_file).stem.removeprefix("image_info_")
    return f"person_keypoints_{split}_{alg}_results.json"


def check_results_format(results: list[dict], num_keypoints: int = 17) -> None:
    """Raise ValueError naming the first entry the server would reject."""
    for i, r in enumerate(results):
        if tuple(sorted(r)) != tuple(sorted(RESULT_KEYS)):
            raise ValueError(f"result {i}: keys {sorted(r)}; expected exactly {sorted(RESULT_KEYS)}")
        kp = r["keypoints"]
        ok = (type(r["image_id"]) is int and r["category_id"] == 1 and type(r["category_id"]) is int
              and isinstance(r["score"], float) and np.isfinite(r["score"])
              and isinstance(kp, list) and len(kp) == 3 * num_keypoints
              and all(isinstance(v, float) and np.isfinite(v) for v in kp))
        if not ok:
            raise ValueError(f"result {i}: {r!r:.200}; expected int image_id, category_id 1, "
                             f"{3 * num_keypoints} finite float keypoints and a finite float score")


class DetectionBoxes(Dataset):
    """Top-down eval samples from an image-info file (images only) and a person-detection file.

    Items have the keys of :class:`~vitpose_scale.data.coco.TopDownCocoDataset`'s
    (target all zero), so the eval loader and predictor take either.
    """

    def __init__(self, image_info_file, img_dir, det_file, data_cfg, image_size, keypoints="coco"):
        self.ann_file = Path(image_info_file)
        self.img_dir = Path(img_dir)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.keypoints = get_spec(keypoints)
        self.num_keypoints = self.keypoints.num_keypoints
        info = json.loads(self.ann_file.read_text())
        if not isinstance(info, dict) or not isinstance(info.get("images"), list):
            raise ValueError(f"{self.ann_file}: expected a COCO image-info json with an 'images' list")
        self.images = {int(im["id"]): im for im in info["images"]}
        if det_file is None:
            raise ValueError(f"{self.ann_file} has no annotations, hence no boxes: set data.det_file to a "
                             f"person detection file (COCO results json) for its images")
        det_file = Path(det_file)
        if not det_file.is_file():
            raise FileNotFoundError(f"detection file {det_file} not found; expected a COCO results json of "
                                    f"person boxes")
        dets = json.loads(det_file.read_text())
        if not isinstance(dets, list):
            raise ValueError(f"{det_file}: expected a COCO results list of {{image_id, category_id, bbox, score}} dicts")
        aspect = self.image_size[1] / self.image_size[0]
        self.records = []
        for det in dets:
            if det.get("category_id", 1) != 1 or det["score"] < data_cfg.det_score_thr:
                continue  # kept at score >= thr, as the validation set and the reference
            image = self.images.get(int(det["image_id"]))
            if image is None:
                raise ValueError(f"{det_file}: detection for image_id {det['image_id']}, which is not in "
                                 f"{self.ann_file}; expected detections for that file's images")
            center, scale = box_to_center_scale(det["bbox"], aspect, data_cfg.bbox_padding)
            self.records.append(dict(image_id=int(det["image_id"]), file_name=image["file_name"], center=center,
                                     scale=scale, bbox_score=float(det["score"])))
        self.transform = TopDownTransform(image_size=self.image_size, cfg=data_cfg, train=False,
                                          keypoints=self.keypoints)
        self._no_joints = np.zeros((self.num_keypoints, 3), dtype=np.float32)
        self._last_image = None  # (file name, decoded image)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        rec = self.records[index]
        if self._last_image is None or self._last_image[0] != rec["file_name"]:
            # Detection files list an image's boxes together: one decode serves them all.
            self._last_image = (rec["file_name"], read_rgb(self.img_dir / rec["file_name"],
                                                           f"image_id {rec['image_id']}, listed in {self.ann_file}"))
        out = self.transform(self._last_image[1], self._no_joints, rec["center"], rec["scale"])
        return {
            "img": normalize_batch(torch.from_numpy(out["img"])),  # float32, as the validation set's
            "center": out["center"],  # no targets: there are no joints to learn from
            "scale": out["scale"],
            "image_id": rec["image_id"],
            "bbox_score": rec["bbox_score"],
            "index": index,
        }
