"""MPII top-down dataset: mmpose's ``mpii_{train,val}.json`` (the official ViTPose / mmpose 0.x files).

Each file is a JSON list, one entry per annotated person::

    {"image": "015601864.jpg", "center": [594.0, 257.0], "scale": 3.021,
     "joints": [[620.0, 394.0], ...16], "joints_vis": [1, 1, ...16]}

in MATLAB's 1-based pixels, ``scale`` being the person's height / 200. The records are those of
mmpose's ``TopDownMpiiDataset._get_db``:

* unless ``center[0] == -1``: the centre moves down by 15 * scale (still in 200-pixel units, before
  padding) and the box is padded by 1.25;
* the centre (always) and the joints go 1-based -> 0-based (- 1);
* the box stays *square* (scale x scale): no aspect-ratio fit, so a 256x192 input sees the box
  squeezed horizontally (the affine maps the square onto the 192x256 crop, as the official does);
* joint visibility is ``joints_vis`` (0/1); for evaluation (``train=False``) the joints are zeros,
  as in mmpose's test mode;
* every person is kept, in file order (the val order is the order of ``mpii_gt_val.mat``).

``scale`` is converted to our pixel box size (x 200, in float32 like the official ``s * 200.0``).
The image sizes are not in the file; they come from each image's header. ``image_id`` is the
record index (MPII has no image ids); the results of the evaluation are in that order.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from .coco import TopDownCocoDataset
from .images import image_size

_FIELDS = ("image", "center", "scale")
_HEADER_BYTES = 1 << 14  # where a JPEG's frame header lies unless a large EXIF block comes first


def read_image_size(path: Path, listed: str) -> tuple[int, int]:
    """(height, width) of a JPEG or PNG from its header; the whole file only when the header is far in."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_BYTES)
            size = image_size(head)
            if size is None and len(head) == _HEADER_BYTES:
                size = image_size(head + f.read())
    except OSError as exc:
        raise FileNotFoundError(f"image {path} ({listed}) is missing or unreadable: {exc.strerror}") from exc
    if size is None or min(size) <= 0:
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # another format: let OpenCV say
        if img is None:
            raise ValueError(f"image {path} ({listed}) has no readable size: not a JPEG, PNG or other "
                             f"image OpenCV reads")
        size = img.shape[:2]
    return int(size[0]), int(size[1])


def official_record(entry: dict, num_joints: int, test_mode: bool):
    """mmpose's ``_get_db`` for one entry: (center, scale (200-pixel units), joints_3d, joints_3d_visible)."""
    center = np.array(entry["center"], dtype=np.float32)
    scale = np.array([entry["scale"], entry["scale"]], dtype=np.float32)
    if center[0] != -1:
        center[1] = center[1] + 15 * scale[1]
        scale = scale * 1.25
    center = center - 1
    joints_3d = np.zeros((num_joints, 3), dtype=np.float32)
    joints_3d_visible = np.zeros((num_joints, 3), dtype=np.float32)
    if not test_mode:
        joints = np.array(entry["joints"])
        joints_vis = np.array(entry["joints_vis"])
        joints_3d[:, 0:2] = joints[:, 0:2] - 1
        joints_3d_visible[:, :2] = joints_vis[:, None]
    return center, scale, joints_3d, joints_3d_visible


class TopDownMpiiDataset(TopDownCocoDataset):
    """MPII, read from mmpose's list json; everything after loading is :class:`TopDownCocoDataset`'s.

    ``det_file`` is refused (MPII is evaluated on its annotated boxes); ``keypoint_map`` maps the 16
    MPII joints onto the dataset's keypoint set like for COCO-layout files.
    """

    def _load_records(self, root, det_file) -> list[dict]:
        if det_file is not None:
            raise ValueError(f"{self.ann_file}: MPII is evaluated on its annotated people (mpii_gt_val.mat "
                             f"holds one per entry); expected no detection file, got {det_file}")
        src_k = len(self.keypoint_map) if self.keypoint_map is not None else self.num_keypoints
        entries = self._read_entries(src_k)
        self.categories = {1: self.keypoints.coco_category()}
        self.images, sizes, records = {}, {}, []
        for i, entry in enumerate(entries):
            name = entry["image"]
            listed = f"entry {i} of {self.ann_file}"
            if name not in sizes:
                sizes[name] = read_image_size(self.img_dir / name, listed)
            center, scale, joints_3d, visible = official_record(entry, src_k, test_mode=not self.train)
            joints = np.concatenate([joints_3d[:, :2], visible[:, :1]], axis=1)
            if self.keypoint_map is not None:
                joints = self._map_keypoints(joints)
            height, width = sizes[name]
            self.images[i] = {"id": i, "file_name": name, "height": height, "width": width}
            records.append(dict(image_id=i, file_name=name, center=center,
                                scale=(scale * 200.0).astype(np.float32), joints=joints.astype(np.float32),
                                bbox_score=1.0, ann_id=i, category_id=1, size=(height, width)))
        self.drop_counts = Counter()
        self.load_report = (f"{len(records)} people in {len(sizes)} images, {len(records)} kept, 0 dropped "
                            f"(MPII keeps every annotated person)")
        return records

    def _read_entries(self, src_k: int) -> list[dict]:
        path = self.ann_file
        expected = ("expected mmpose's MPII json: a list of {image, center, scale"
                    + (", joints, joints_vis" if self.train else "") + "}} entries")
        if not path.is_file():
            raise FileNotFoundError(f"annotation file {path} does not exist; {expected}")
        try:
            entries = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not JSON ({exc}); {expected}") from None
        if not isinstance(entries, list) or not entries:
            what = "an empty list" if entries == [] else f"a JSON {type(entries).__name__}"
            raise ValueError(f"{path}: {what}; {expected}")
        needed = _FIELDS + (("joints", "joints_vis") if self.train else ())
        for i, e in enumerate(entries):
            absent = [k for k in needed if not isinstance(e, dict) or k not in e]
            if absent:
                raise ValueError(f"{path}: entry {i} has no {', '.join(absent)}; {expected}")
            ok = (isinstance(e["image"], str) and np.shape(e["center"]) == (2,)
                  and np.ndim(e["scale"]) == 0 and float(e["scale"]) > 0)
            if not ok:
                raise ValueError(f"{path}: entry {i} (image {e['image']!r}, center {e['center']!r}, scale "
                                 f"{e['scale']!r}); expected a file name, a centre [x, y] and a positive scale")
            if self.train:
                shape, vis = np.shape(e["joints"]), np.shape(e["joints_vis"])
                if len(shape) != 2 or shape[0] != src_k or shape[1] < 2 or vis != (src_k,):
                    raise ValueError(f"{path}: entry {i} has joints {shape} and joints_vis {vis}; expected "
                                     f"({src_k}, 2) and ({src_k},)"
                                     + ("" if self.keypoint_map is not None
                                        else f" (keypoint set {self.keypoints.name!r})"))
        return entries


__all__ = ["TopDownMpiiDataset", "official_record", "read_image_size"]
