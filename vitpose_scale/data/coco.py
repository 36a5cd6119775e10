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

    {root: data/aic, ann: annotations/aic_train.json, images: ..., keypoint_map: aic, ratio: 0.5}

(``keypoint_map`` may be the name ``aic`` or an explicit list). COCO joints a
source set does not have (AIC: the five face points) get v = 0, i.e. zero
target weight. With sampling ratios (``data.train_ratio`` and every entry's
``ratio``) the loader draws each set by its ratio (:class:`RatioConcatDataset`);
without them the sets are simply concatenated. Each training set draws its
augmentation from its own random stream. See docs/datasets.md.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from vitpose_scale.config import AIC_TO_COCO, KEYPOINT_MAPS, check_training_sets

from .images import read_rgb, read_rgb_window
from .loader import RatioConcatDataset
from vitpose_scale.keypoints import KeypointSpec, get_spec

from .transforms import TopDownTransform, box_to_center_scale, normalize_batch, sample_rng

# AIC_TO_COCO and KEYPOINT_MAPS (the named keypoint maps) live in vitpose_scale.config, which
# validates data.extra_train[].keypoint_map against them.

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
    if not isinstance(cats, list) or not any(isinstance(c, dict) and c.get("keypoints") for c in cats):
        names = [c.get("name") for c in cats] if isinstance(cats, list) else cats
        raise ValueError(
            f"{ann_file}: not a keypoint annotation file (categories {names}); expected a COCO keypoint "
            f"json with a category holding a 'keypoints' name list, e.g. person_keypoints_train2017.json")
    for key in ("images", "annotations"):
        if not isinstance(coco.dataset.get(key), list):
            raise ValueError(f"{ann_file}: no '{key}' list (top-level keys: {sorted(coco.dataset)}); expected "
                             f"a COCO person-keypoint json with images, annotations and categories")
    if not coco.dataset["images"]:
        raise ValueError(f"{ann_file}: the 'images' list is empty; expected at least one image entry")
    if any("keypoints" not in a for a in coco.dataset["annotations"][:100]):
        raise ValueError(f"{ann_file}: annotations have no 'keypoints' field; expected a COCO "
                         f"person-keypoint file (instances_*.json holds boxes only)")
    return coco


# Why a person is not made into a sample (the reference drops the same people, silently).
DROP_REASONS = ("box NaN or <= 1 px", "box outside the image", "no labelled joints", "bad image size")


class TopDownCocoDataset(Dataset):
    """COCO-layout top-down dataset.

    Args:
        root: data root; ``ann_file``, ``img_dir`` and ``det_file`` are relative to it unless absolute.
        data_cfg: :class:`vitpose_scale.config.DataConfig` (augmentation, padding, sigma, det threshold).
        image_size: network input (H, W); heatmaps are (H/4, W/4).
        keypoints: the keypoint set (a :class:`KeypointSpec` or its name): joints per sample, flip
            pairs and upper-body joints. Every category with a ``keypoints`` list is loaded (AP-10K:
            one per species) and its id travels with the sample into the results.
        train: augment and build targets from ground truth boxes.
        det_file: person detections (COCO results json) for validation; None: ground-truth boxes.
        seed: augmentation seed; with ``set_epoch``, the index and ``stream`` it fixes every random choice.
        stream: this set's augmentation stream (0: main training set, i: ``data.extra_train[i - 1]``).
        keypoint_map: source joint -> index in ``keypoints`` (None drops it), e.g. :data:`AIC_TO_COCO`.
        uint8_images: ship the crop as uint8 and leave normalisation to the consumer
            (``transforms.normalize_batch`` on the device: the trainer does); False: float32, normalised here.

    Items are dicts: img (3,H,W) float32 normalised (or uint8, see ``uint8_images``), target (K,h,w), target_weight (K,1), center (2,), scale (2,) padded box size in pixels,
    rotation, image_id, category_id, bbox_score, index. ``drop_counts`` and ``load_report`` say who was left out.
    """

    def __init__(self, root, ann_file, img_dir, data_cfg, image_size, keypoints: KeypointSpec | str = "coco",
                 train: bool = True, det_file: str | None = None, seed: int = 0, stream: int = 0,
                 keypoint_map: list | str | None = None, uint8_images: bool = False):
        self.ann_file = _resolve(root, ann_file)
        self.img_dir = _resolve(root, img_dir)
        self.cfg = data_cfg
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.keypoints = get_spec(keypoints)
        self.num_keypoints = self.keypoints.num_keypoints
        self.train = bool(train)
        self.seed, self.stream = int(seed), int(stream)
        self.uint8_images = bool(uint8_images)
        self.epoch = 0
        self._last_decode = None  # ((file name, epoch), image): the decode neighbours share
        self._users = None  # file name -> record indices, built on first use
        if data_cfg.window_decode:
            from .jpeg_region import load

            load()  # build (or report) once here, before data-loader workers fork
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
        self.flip_pairs = self.keypoints.flip_pairs
        self.transform = TopDownTransform(image_size=self.image_size, cfg=data_cfg, train=self.train,
                                          keypoints=self.keypoints)
        self.det_file = None
        self.drop_counts: Counter = Counter()
        self.records = self._load_records(root, det_file)

    def _load_records(self, root, det_file) -> list[dict]:
        """The samples: dicts of image_id, file_name, center, scale (pixels), joints (K, 3), bbox_score,
        ann_id, category_id and size (h, w); sets ``images`` (id -> image entry), ``categories`` and
        ``load_report``. Another annotation layout (MPII) is another dataset class overriding this."""
        coco = load_coco(self.ann_file)
        src_k = len(self.keypoint_map) if self.keypoint_map is not None else self.num_keypoints
        if self.keypoints.parts and self.keypoint_map is None:  # the category names the first part's joints
            start, stop = next(iter(self.keypoints.parts.values()))
            src_k = stop - start
        self.categories = {c["id"]: c for c in coco.dataset["categories"]
                           if isinstance(c, dict) and c.get("keypoints")}
        for cat in self.categories.values():
            cat_k = len(cat["keypoints"])
            if cat_k != src_k:
                raise ValueError(
                    f"{self.ann_file}: the {cat.get('name')!r} category lists {cat_k} keypoints; expected {src_k} "
                    + ("(the length of keypoint_map)" if self.keypoint_map is not None
                       else f"(keypoint set {self.keypoints.name!r}; choose the set of this file with "
                            f"data.keypoint_set, or map a {cat_k}-joint set onto it with keypoint_map)"))
        self.images = {img_id: coco.imgs[img_id] for img_id in sorted(coco.imgs)}
        if det_file is not None:
            # Relative to the data root like the annotations; fall back to the working directory.
            self.det_file = _resolve(root, det_file)
            if not self.det_file.is_file() and Path(det_file).is_file():
                self.det_file = Path(det_file)
            if not self.det_file.is_file():
                raise FileNotFoundError(f"detection file {det_file} not found (looked in {self.det_file} and "
                                        f"{Path(det_file).resolve()}); expected a COCO results json of person boxes")
            return self._load_detections(self.det_file)
        records = self._load_gt(coco)
        if not records:
            raise ValueError(f"{self.ann_file}: no usable person ({self.load_report}); expected at least one "
                             f"non-crowd person with a box inside its image and a labelled joint")
        return records

    # ------------------------------------------------------------ loading --
    def _ann_keypoints(self, ann: dict) -> np.ndarray:
        """An annotation's joints; sets with parts (COCO-WholeBody) keep each part in its own field
        (``keypoints`` = body, ``foot_kpts``, ...), concatenated here in the set's order."""
        if not self.keypoints.parts:
            return np.asarray(ann["keypoints"], dtype=np.float32)
        from vitpose_scale.eval.coco_eval import PART_FIELDS

        fields = [PART_FIELDS[part][0][0] for part in self.keypoints.parts]
        missing = [f for f in fields if f not in ann]
        if missing:
            raise ValueError(f"{self.ann_file}: annotation {ann.get('id')} has no {missing}; expected the "
                             f"{self.keypoints.name} fields {fields}")
        return np.concatenate([np.asarray(ann[f], dtype=np.float32).reshape(-1) for f in fields])

    def _map_keypoints(self, kpts: np.ndarray) -> np.ndarray:
        src = kpts.reshape(-1, 3)
        if self.keypoint_map is None:
            return src.astype(np.float32)
        out = np.zeros((self.num_keypoints, 3), dtype=np.float32)
        for s, t in enumerate(self.keypoint_map):
            if t is not None:
                out[t] = src[s]
        return out

    @staticmethod
    def _clean_box(bbox, area, width: float, height: float):
        """The reference's box sanitising: (clipped xywh, None) or (None, drop reason)."""
        x, y, w, h = (float(v) for v in bbox[:4])
        if not all(math.isfinite(v) for v in (x, y, w, h)) or (area is not None and not area > 0):
            return None, DROP_REASONS[0]
        x1, y1 = max(0.0, x), max(0.0, y)
        x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
        y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
        if x2 > x1 and y2 > y1:
            return [x1, y1, x2 - x1, y2 - y1], None
        inside = x < width - 1.0 and y < height - 1.0 and x + w > 0 and y + h > 0
        return None, DROP_REASONS[0] if inside and (w <= 1 or h <= 1) else DROP_REASONS[1]

    def _load_gt(self, coco) -> list[dict]:
        aspect = self.image_size[1] / self.image_size[0]
        records, drops, people = [], Counter(), 0
        # The reference shifts training box centres once, at load (ViTPose's _xywh2cs), from its
        # global RNG; ours is a pure function of (seed, stream) so every rank builds the same set.
        shift_rng = np.random.default_rng([self.seed, self.stream, 0xB0C5]) if self.train else None
        for img_id, info in self.images.items():
            width, height = info.get("width"), info.get("height")
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None)):
                if ann.get("iscrowd", 0) or ann.get("category_id", 1) not in self.categories:
                    continue
                people += 1
                if not (isinstance(width, (int, float)) and isinstance(height, (int, float))
                        and width > 0 and height > 0):
                    drops[DROP_REASONS[3]] += 1
                    continue
                box, reason = self._clean_box(ann.get("bbox", [math.nan] * 4), ann.get("area"), width, height)
                if box is None:
                    drops[reason] += 1
                    continue
                joints = self._map_keypoints(self._ann_keypoints(ann))
                # People without a single labelled joint teach nothing (counted after mapping).
                if not (joints[:, 2] > 0).any():
                    drops[DROP_REASONS[2]] += 1
                    continue
                joints[:, 2] = np.minimum(joints[:, 2], 2)
                center, scale = box_to_center_scale(box, aspect, self.cfg.bbox_padding)
                if shift_rng is not None and shift_rng.random() < self.cfg.bbox_shift_prob:
                    center += (self.cfg.bbox_shift_factor * (shift_rng.random(2) - 0.5)
                               * np.array(box[2:4])).astype(np.float32)
                records.append(dict(image_id=img_id, file_name=info["file_name"], center=center,
                                    scale=scale, joints=joints, bbox_score=1.0, ann_id=ann["id"],
                                    category_id=int(ann.get("category_id", 1)),
                                    size=(int(height), int(width))))
        self.drop_counts = drops
        dropped = sum(drops.values())
        detail = ", ".join(f"{r} {drops[r]}" for r in DROP_REASONS)
        self.load_report = f"{people} people, {len(records)} kept, {dropped} dropped ({detail})"
        return records

    def _load_detections(self, det_file: Path) -> list[dict]:
        dets = json.loads(det_file.read_text())
        if not isinstance(dets, list):
            raise ValueError(f"{det_file}: expected a COCO results list of "
                             f"{{image_id, category_id, bbox, score}} dicts")
        aspect = self.image_size[1] / self.image_size[0]
        zero = np.zeros((self.num_keypoints, 3), dtype=np.float32)
        records, low = [], 0
        persons = [det for det in dets if det.get("category_id", 1) in self.categories]
        for det in persons:
            if det["score"] < self.cfg.det_score_thr:  # the reference keeps score >= det_bbox_thr
                low += 1
                continue
            info = self.images.get(det["image_id"])
            if info is None:
                raise ValueError(f"{det_file}: detection for image_id {det['image_id']}, which is not in "
                                 f"{self.ann_file}; expected detections for that annotation file's images")
            center, scale = box_to_center_scale(det["bbox"], aspect, self.cfg.bbox_padding)
            records.append(dict(image_id=det["image_id"], file_name=info["file_name"], center=center,
                                scale=scale, joints=zero, bbox_score=float(det["score"]), ann_id=-1,
                                category_id=int(det.get("category_id", 1)),
                                size=(int(info["height"]), int(info["width"]))))
        self.load_report = (f"{len(persons)} person detections, {len(records)} kept, {low} with score < "
                            f"{self.cfg.det_score_thr} dropped")
        return records

    # ------------------------------------------------------------ access --
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def _records_by_file(self) -> dict[str, list[int]]:
        """Image file -> its record indices, in first-appearance order (built once)."""
        if self._users is None:
            self._users = {}
            for i, rec in enumerate(self.records):
                self._users.setdefault(rec["file_name"], []).append(i)
        return self._users

    def image_groups(self) -> list[list[int]]:
        """Record indices grouped by image file, in first-appearance order."""
        return list(self._records_by_file().values())

    @property
    def shares_decodes(self) -> bool:
        """Do neighbouring indices tend to share an image? Evaluation lists an image's people
        (or detections) together, and so does training with ``data.group_by_image``."""
        return not self.train or self.cfg.group_by_image

    def _image_for(self, index: int, geometry: dict) -> np.ndarray:
        """The decoded image of record ``index``; where neighbours share images, one decode of
        the window all of that image's people read serves them all (kept until the next image)."""
        rec = self.records[index]
        if not self.shares_decodes:
            return self.read_image(rec, self.transform.source_window(geometry, rec["size"]))
        key = (rec["file_name"], self.epoch)
        if self._last_decode is not None and self._last_decode[0] == key:
            return self._last_decode[1]
        windows = np.array([self.transform.source_window(geometry if i == index else self._plan(i), rec["size"])
                            for i in self._records_by_file()[rec["file_name"]]])
        union = (int(windows[:, 0].min()), int(windows[:, 1].min()), int(windows[:, 2].max()),
                 int(windows[:, 3].max()))
        img = self.read_image(rec, union)
        self._last_decode = (key, img)
        return img

    def _plan(self, index: int) -> dict:
        rec = self.records[index]
        return self.transform.plan(rec["size"], rec["joints"], rec["center"], rec["scale"],
                                   self.augmentation_rng(index))

    def read_image(self, rec: dict, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The record's image, uint8 RGB; with ``window`` (x0, y0, x1, y1) only that part is
        guaranteed (``data.window_decode``: the rest may be left undecoded)."""
        path = self.img_dir / rec["file_name"]
        listed = f"image_id {rec['image_id']}, listed in {self.ann_file}"
        if window is not None and self.cfg.window_decode:
            img = read_rgb_window(path, rec["size"], window, listed)
        else:
            img = read_rgb(path, listed)
        if img.shape[:2] != rec["size"]:
            raise ValueError(f"image {path} (image_id {rec['image_id']}, listed in {self.ann_file}) is "
                             f"{img.shape[1]}x{img.shape[0]} pixels; the annotation file says "
                             f"{rec['size'][1]}x{rec['size'][0]}, so its boxes and joints would not fit")
        return img

    def augmentation_rng(self, index: int) -> np.random.Generator | None:
        """The generator of sample ``index`` in the current epoch (None when not training)."""
        return sample_rng(self.seed, self.epoch, index, self.stream) if self.train else None

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        rec = self.records[index]
        geometry = self._plan(index)
        out = self.transform.apply(self._image_for(index, geometry), geometry)
        crop = torch.from_numpy(out["img"])
        return {
            "img": crop if self.uint8_images else normalize_batch(crop),
            "target": torch.from_numpy(out["target"]),
            "target_weight": torch.from_numpy(out["target_weight"]),
            "center": out["center"],
            "scale": out["scale"],
            "rotation": out["rotation"],
            "image_id": int(rec["image_id"]),
            "category_id": rec["category_id"],
            "bbox_score": float(rec["bbox_score"]),
            "index": index,
        }


# ------------------------------------------------------------ builders --
def ensure_synthetic(root: str | Path, num_train: int, num_val: int, seed: int = 0,
                     keypoints: str = "coco") -> None:
    """Generate the synthetic set into ``root`` unless an identical one is already there."""
    from .synthetic import generate_synthetic_coco, synthetic_is_complete

    if not synthetic_is_complete(root, num_train, num_val, seed, keypoints=keypoints):
        generate_synthetic_coco(root, num_train, num_val, seed=seed, keypoints=keypoints)


def _report(name: str, ds: TopDownCocoDataset) -> None:
    """One line per dataset, from one process only."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"dataset {name} ({ds.ann_file.name}): {ds.load_report}", flush=True)


def dataset_class(spec: KeypointSpec | str) -> type[TopDownCocoDataset]:
    """The class that reads the annotation layout the keypoint set's official data comes in: a set
    scored by PCKh (MPII) comes as mmpose's list json (:class:`~.mpii.TopDownMpiiDataset`), every
    other set as a COCO keypoint json."""
    if get_spec(spec).evaluation.get("metric") == "pckh":
        from .mpii import TopDownMpiiDataset

        return TopDownMpiiDataset
    return TopDownCocoDataset


def build_datasets(cfg):
    """(train_dataset, val_dataset, val_ann_path) from the full Config.

    ``cfg.data.extra_train`` entries ({root, ann, images, keypoint_map?, ratio?}) join the
    training set, each with its own augmentation stream. With sampling ratios
    (``data.train_ratio`` and every entry's ``ratio``) the result is a
    :class:`RatioConcatDataset` the loader draws by ratio; otherwise a plain concatenation.
    With ``cfg.data.kind == "synthetic"`` the set is generated into ``cfg.data.root``
    first (layout: annotations/person_keypoints_{train,val}.json, {train,val}/),
    ignoring the *_ann/*_images keys. The main train and val sets are read by
    :func:`dataset_class` of the keypoint set (the synthetic set is always COCO-layout);
    ``extra_train`` entries are COCO-layout files. In multi-process runs call this on rank 0 first
    (then barrier): the generator writes atomically, but every rank would otherwise
    generate it.
    """
    d = cfg.data
    image_size = tuple(cfg.model.image_size)
    spec = get_spec(d.keypoint_set)
    k = spec.num_keypoints
    seed = cfg.train.seed
    paths = dict(train_ann=d.train_ann, train_images=d.train_images, val_ann=d.val_ann,
                 val_images=d.val_images)
    main_class = dataset_class(spec)
    if d.kind == "synthetic":
        ensure_synthetic(d.root, d.synthetic_train, d.synthetic_val, keypoints=spec.name)
        paths = dict(SYNTHETIC_LAYOUT)
        main_class = TopDownCocoDataset
    # Config validation refuses bad entries and ratios at load time (ConfigError, exit 2); checked
    # again for configs built or changed in Python after loading.
    ratios = check_training_sets(d, k)
    # Training crops stay uint8 until the trainer normalises them on the device.
    sets = [main_class(d.root, paths["train_ann"], paths["train_images"], d, image_size, spec,
                       train=True, seed=seed, stream=0, uint8_images=True)]
    _report("train", sets[0])
    for i, entry in enumerate(d.extra_train):
        sets.append(TopDownCocoDataset(entry["root"], entry["ann"], entry["images"], d, image_size, spec,
                                       train=True, seed=seed, stream=i + 1, uint8_images=True,
                                       keypoint_map=entry.get("keypoint_map")))
        _report(f"extra_train[{i}]", sets[-1])
    if ratios is not None:
        train = RatioConcatDataset(sets, ratios)
    else:
        train = ConcatDataset(sets) if len(sets) > 1 else sets[0]
    val = main_class(d.root, paths["val_ann"], paths["val_images"], d, image_size, spec, train=False,
                     det_file=d.det_file, seed=seed)
    _report("val", val)
    return train, val, str(_resolve(d.root, paths["val_ann"]))


__all__ = ["TopDownCocoDataset", "AIC_TO_COCO", "KEYPOINT_MAPS", "DROP_REASONS", "build_datasets", "dataset_class",
           "load_coco", "ensure_synthetic", "SYNTHETIC_LAYOUT"]
