"""Vectorised COCO keypoint evaluation that reproduces pycocotools COCOeval.

``KeypointEvaluator(gt).evaluate(results)`` returns the 10 standard keypoint
stats (AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl) with the semantics
of pycocotools ``COCOeval(iouType='keypoints')``: maxDets=20 per image after a
stable sort by score, OKS thresholds .50:.05:.95, 101 recall points, areas
all/medium/large, the greedy matching with crowd / ignore handling, and the
interpolated precision.  Instead of Python loops per image / threshold /
detection / GT it works on flat numpy arrays:

* OKS is computed for every (detection, GT) pair of the same image at once
  (``oks.oks_pairs``); pairs below the lowest threshold can never match and
  are dropped, most of them by a cheap box bound before any OKS is computed.
* A pair whose detection and GT have no other candidate matches exactly at the
  thresholds its OKS reaches; the rest of the greedy matching runs
  detection-rank by detection-rank (<= maxDets steps), each step handling
  every image, area range and threshold at once.
* Accumulation is one global stable sort plus cumulative sums per area range
  and threshold.

Files are parsed by msgspec with the cyclic GC paused, first with typed
decoders that check types while parsing; whatever they refuse goes through
the general path, whose checks name the entry and the problem in one line.

The same machinery reproduces xtcocotools ``COCOeval`` (the evaluator of
mmpose 0.x / the official ViTPose for AIC, CrowdPose, COCO-WholeBody, AP-10K,
OCHuman ...) with ``compat="xtcocotools"``, which these options imply:

* ``use_area=False`` (AIC, CrowdPose): a GT's ``bbox`` w * h * 0.53 replaces its
  ``area``, both in the OKS denominator (computeOks) and in the area-range
  test (evaluateImg); 'area' is then not read at all.
* ``crowd=True`` (``iouType='keypoints_crowd'``): same Params as keypoints; GT
  ignore from ``num_keypoints``; 9 stats ``CROWD_STAT_NAMES``, the last three the
  AP over the images of each ``crowdIndex`` split (< .2, < .8, else), which
  xtcocotools computes as the mean of the *whole* precision array of that
  split, -1 entries included, rounded to 4 decimals.
* ``part="body"|"foot"|"face"|"lefthand"|"righthand"|"wholebody"``
  (``iouType='keypoints_<part>'``): GT and result keypoints come from that
  part's field(s) (``PART_FIELDS``; wholebody concatenates all five), the
  score from ``<part>_score`` where a result has it, else ``score``;
  :func:`evaluate_wholebody` runs all six as mmpose does.

In every xtcocotools mode (also ``compat="xtcocotools"`` alone, as mmpose
scores AP-10K or OCHuman) three rules differ from pycocotools: a GT is ignored
when its keypoints (of the part) have no v > 0, not by ``num_keypoints``
(except CrowdPose mode); results whose keypoints (of the part) have no v > 0
are dropped before anything else; and a match to a GT whose id is negative
(not 0, as in pycocotools) does not count.  A result's area (for unmatched
results outside an area range) is, as in both loadRes, the 'bbox' area if the
first result has one, else the extent of its 'keypoints' field (the body's in
COCO-WholeBody, whatever part is scored).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import mmap
import os
import sys
from collections import Counter
from itertools import chain, compress, repeat
from typing import Any, Optional, Union

import numpy as np

from .oks import COCO_SIGMAS, GtKeypoints, oks_pairs, oks_upper_bound

STAT_NAMES = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]

# pycocotools Params.setKpParams, built the same way so the floats are identical
IOU_THRS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
REC_THRS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
AREA_RNG = [[0 ** 2, 1e5 ** 2], [32 ** 2, 96 ** 2], [96 ** 2, 1e5 ** 2]]
AREA_LBL = ["all", "medium", "large"]
MAX_DETS = 20

# xtcocotools COCOeval(iouType='keypoints_crowd') summary, named as mmpose's TopDownCrowdPoseDataset names it
CROWD_STAT_NAMES = ["AP", "AP .5", "AP .75", "AR", "AR .5", "AR .75", "AP(E)", "AP(M)", "AP(H)"]
# crowdIndex thresholds of xtcocotools summarize (get_type_result(first=0.2, second=0.8))
CROWD_SPLIT = (0.2, 0.8)
# xtcocotools iouType 'keypoints_<part>': the GT / result fields whose keypoints are scored (in this
# order, concatenated) and the result field of the score (results without it use 'score')
PART_FIELDS = {
    "body": (("keypoints",), "score"),
    "foot": (("foot_kpts",), "foot_score"),
    "face": (("face_kpts",), "face_score"),
    "lefthand": (("lefthand_kpts",), "lefthand_score"),
    "righthand": (("righthand_kpts",), "righthand_score"),
    "wholebody": (("keypoints", "foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts"), "wholebody_score"),
}
# COCO-WholeBody joint ranges of the parts in the 133 sigmas (mmpose TopDownCocoWholeBodyDataset)
WHOLEBODY_PARTS = {"body": (0, 17), "foot": (17, 23), "face": (23, 91), "lefthand": (91, 112),
                   "righthand": (112, 133)}
COMPATS = ("pycocotools", "xtcocotools")

_EPS = np.spacing(1)
_RESULT_FIELDS = ("image_id", "category_id", "keypoints", "score")
_MISSING = object()


class EvaluationInputError(ValueError):
    """GT or results that cannot be evaluated; the message says what and where."""


# ---------------------------------------------------------------------- reading


def _fast_decoder():
    """msgspec (pinned) or orjson, whichever is installed; None when neither is."""
    try:
        import msgspec
    except ImportError:
        try:
            import orjson
        except ImportError:
            return None
        return orjson.loads
    return msgspec.json.decode


_TYPED = {}


def _typed(kind):
    """msgspec decoders for well-formed files ("results" or "gt"): they check types
    while parsing (scores are numbers, not strings or bools) and keep only the
    fields the evaluation reads (a GT's segmentation polygons are skipped, never
    built), in small structs.  None without msgspec."""
    if not _TYPED:
        try:
            import msgspec
        except ImportError:
            _TYPED.update(results=None, gt=None)
            return None
        # defstruct, not class bodies: this module's annotations are strings, which
        # msgspec would compile and evaluate at every start; gc=False: parsed JSON
        # has no cycles, so ~100k records need no GC tracking
        num = Union[int, float]
        result = msgspec.defstruct(
            "ResultRecord", [("image_id", Any), ("category_id", Any), ("keypoints", list[float]),
                             ("score", float), ("bbox", Optional[list[float]], None)], gc=False)
        ann = msgspec.defstruct(
            "GtAnnotation", [("id", Any), ("image_id", Any), ("category_id", Any), ("keypoints", list[num]),
                             ("bbox", list[num]), ("area", num, _MISSING), ("iscrowd", Any, 0),
                             ("num_keypoints", Any, _MISSING)], gc=False)
        # area may be absent (AIC, CrowdPose: scored with use_area=False, which never reads it)
        image = msgspec.defstruct("GtImage", [("id", Any), ("crowdIndex", Any, _MISSING)], gc=False)
        gt = msgspec.defstruct("GtFile", [("images", list[image]), ("annotations", list[ann]),
                                          ("categories", list[Any])], gc=False)
        _TYPED.update(results=msgspec.json.Decoder(list[result]), gt=msgspec.json.Decoder(gt),
                      result_type=result, annotation_type=ann, gt_type=gt)
    return _TYPED[kind]


def _is_typed(records, kind):
    """True for a list of structs of _typed's ``kind`` ("result_type", "annotation_type")."""
    return bool(records) and type(records[0]) is _TYPED.get(kind)


def _as_dicts(records):
    """Typed records back as dicts, fields they did not have left out (for the
    general path, whose checks name every problem)."""
    return [{f: v for f in r.__struct_fields__ if (v := getattr(r, f)) is not _MISSING} for r in records]


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic GC: parsing creates millions of lists and dicts, each batch
    of which would trigger another collection (about half the parse time).
    Parsed JSON holds no cycles, and reference counting still frees everything."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_json(path, what, typed=None):
    """Parse a JSON file; every failure is one EvaluationInputError line naming the file.
    typed: a decoder tried first; any file it refuses is parsed untyped instead."""
    name = os.fspath(path)
    try:
        with open(path, "rb") as f:
            try:  # map the file instead of copying it: ~20% fewer page faults in a run
                data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (ValueError, OSError):  # an empty file, a pipe
                data = f.read()
    except FileNotFoundError:
        raise EvaluationInputError(f"{what} file not found: {name}") from None
    except OSError as e:  # a directory, no permission, a path through a file ...
        reason = (e.strerror or str(e)).lower()
        raise EvaluationInputError(f"{what} file {name} cannot be read: {reason}") from None
    try:
        return _decode(data, typed, f"{what} file {name}")
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def _decode(data, typed, where):
    decoders = [d for d in ((typed.decode if typed is not None else None), _fast_decoder()) if d is not None]
    with gc_paused():
        for decode in decoders:
            try:
                return decode(data)
            except Exception:  # noqa: BLE001 - NaN literals, a BOM, bad JSON: the stdlib decides
                pass
        # the standard library reads what Python's json.dump writes (NaN, Infinity, 1e400)
        # and gives the line and column of real syntax errors
        try:
            return json.loads(data if isinstance(data, bytes) else data[:])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EvaluationInputError(f"{where} is not valid JSON: {e}") from None


def _load_json(src, what, typed=None):
    if isinstance(src, (str, os.PathLike)):
        return _read_json(src, what, typed)
    return src


# ------------------------------------------------------------------------ numbers


def _numeric_array(values, shape):
    """float64 array of nested lists of real numbers with exactly this shape, else
    ValueError.  Letting numpy infer the dtype is one C pass that also exposes
    strings, None or ragged rows (numpy would parse "1.5" if asked for float64)."""
    if shape and shape[0] == 0:
        return np.zeros(shape)
    arr = np.array(values)
    if arr.shape != shape or arr.dtype.kind not in "biuf":
        raise ValueError(f"not {shape} numbers")
    return arr.astype(np.float64, copy=False)


def _numbers_or_none(values):
    """A flat list of real numbers as a float64 array; None if anything else is in it."""
    try:
        return _numeric_array(values, (len(values),))
    except (TypeError, ValueError, OverflowError):
        return None


def _is_numeric(values, shape):
    try:
        _numeric_array(values, shape)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _is_score(v):
    return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))


def _scores_ok(values):
    """Every value a real number and not a bool; checked per type, not per value."""
    return all(issubclass(t, (int, float, np.number)) and not issubclass(t, (bool, np.bool_))
               for t in set(map(type, values)))


class KeypointEvaluator:
    """COCO keypoint evaluator built once from a GT dict or JSON path.

    sigmas: per-joint OKS sigmas (default the 17 COCO sigmas); every category
    must list that many keypoints (checked for the 'keypoints' field only: a
    COCO-WholeBody category names the 17 body joints).  max_dets: detections
    kept per image.

    The xtcocotools options (see the module docstring; keyword only):
    use_area: False scores with bbox w * h * 0.53 instead of 'area' (AIC, CrowdPose);
    crowd: CrowdPose mode (iouType 'keypoints_crowd'), 9 stats, GT images need 'crowdIndex';
    part: a key of PART_FIELDS (iouType 'keypoints_<part>'), sigmas then those of the part;
    compat: "pycocotools" (default when no other option is set) or "xtcocotools"
    (implied by the options above; alone, xtcocotools' 'keypoints' evaluation).
    """

    def __init__(self, gt, sigmas=None, max_dets=MAX_DETS, *, use_area=True, crowd=False, part=None,
                 compat=None):
        if part is not None and part not in PART_FIELDS:
            raise ValueError(f"part must be one of {sorted(PART_FIELDS)}, got {part!r}")
        if crowd and part is not None:
            raise ValueError("crowd (iouType 'keypoints_crowd') scores the 'keypoints' field: no part")
        xt_only = not use_area or crowd or part is not None
        if compat is None:
            compat = "xtcocotools" if xt_only else "pycocotools"
        if compat not in COMPATS:
            raise ValueError(f"compat must be one of {COMPATS}, got {compat!r}")
        if compat == "pycocotools" and xt_only:
            raise ValueError("use_area=False, crowd and part exist only in xtcocotools: compat='xtcocotools'")
        self.compat, self.use_area, self.crowd, self.part = compat, bool(use_area), bool(crowd), part
        self._xt = compat == "xtcocotools"
        self._fields, self._score_key = PART_FIELDS[part] if part is not None else (("keypoints",), "score")
        # the pycocotools file layout: typed decoders and the array fast paths apply
        self._plain = self._fields == ("keypoints",) and self._score_key == "score"
        self._kp_label = "+".join(f"'{f}'" for f in self._fields)
        self._gt_cols = (("id", "image_id", "category_id") + self._fields + (("area",) if use_area else ())
                         + ("bbox",))
        where = f"GT {os.fspath(gt)}" if isinstance(gt, (str, os.PathLike)) else "GT"
        gt = _load_json(gt, "GT annotation", _typed("gt") if self._plain else None)
        if type(gt) is _TYPED.get("gt_type"):  # a file the typed decoder took
            images, anns, cats = gt.images, gt.annotations, gt.categories
            image_ids = [im.id for im in images]
        else:
            if not isinstance(gt, dict):
                raise EvaluationInputError(
                    f"{where} is not a COCO keypoint annotation file: expected a JSON object, "
                    f"got {type(gt).__name__}")
            for key in ("images", "annotations", "categories"):
                if not isinstance(gt.get(key), list):
                    raise EvaluationInputError(
                        f"{where} is not a COCO keypoint annotation file: missing '{key}' list")
            images, anns, cats = gt["images"], gt["annotations"], gt["categories"]
            image_ids = None
        self.sigmas = np.asarray(COCO_SIGMAS if sigmas is None else sigmas, dtype=np.float64)
        self.num_joints = k = self.sigmas.shape[0]
        self.max_dets = int(max_dets)
        self.iou_thrs = IOU_THRS
        self.rec_thrs = REC_THRS
        self.area_rng = AREA_RNG

        if not cats:
            raise EvaluationInputError(f"{where} has no categories")
        for j, c in enumerate(cats):
            if not isinstance(c, dict) or "id" not in c:
                raise EvaluationInputError(f"{where}: categories[{j}] has no 'id'")
            if not isinstance(c.get("keypoints"), list):
                raise EvaluationInputError(
                    f"{where} is not a keypoint annotation file: category {c['id']!r} "
                    f"({c.get('name', '?')}) has no 'keypoints' list")
            if len(c["keypoints"]) != k and self._fields == ("keypoints",):
                raise EvaluationInputError(
                    f"{where}: category {c['id']!r} has {len(c['keypoints'])} keypoints but "
                    f"{k} OKS sigmas are given")
        try:
            self.cat_ids = sorted({c["id"] for c in cats})
            img_list = sorted(set(image_ids) if image_ids is not None else {im["id"] for im in images})
        except (KeyError, TypeError) as e:
            raise EvaluationInputError(f"{where}: an image or category entry has a bad or missing id "
                                       f"({e!r})") from None
        self.img_ids = img_list
        self._img_index = {v: i for i, v in enumerate(img_list)}
        self._cat_index = {v: i for i, v in enumerate(self.cat_ids)}
        self._n_img = len(img_list)
        self.num_results = self.num_ignored = self.num_invisible = 0
        if self.crowd:
            self._split_masks = self._crowd_splits(images, image_ids is not None, where)
        self._init_gt_arrays(anns, where)

    @classmethod
    def xtcocotools(cls, gt, iou_type="keypoints", sigmas=None, use_area=True, max_dets=MAX_DETS):
        """The evaluation of xtcocotools ``COCOeval(cocoGt, cocoDt, iou_type, sigmas, use_area)``
        (iou_type 'keypoints', 'keypoints_crowd' or 'keypoints_<part>')."""
        if iou_type == "keypoints":
            opts = {}
        elif iou_type == "keypoints_crowd":
            opts = {"crowd": True}
        elif iou_type.startswith("keypoints_") and iou_type[10:] in PART_FIELDS:
            opts = {"part": iou_type[10:]}
        else:
            raise ValueError(f"not an xtcocotools keypoint iouType: {iou_type!r}")
        return cls(gt, sigmas, max_dets, use_area=use_area, compat="xtcocotools", **opts)

    def _crowd_splits(self, images, typed, where):
        """(3, images) masks of the easy / medium / hard images (xtcocotools COCOeval.split:
        crowdIndex < 0.2, < 0.8, else; an id listed twice joins each entry's split)."""
        masks = np.zeros((3, self._n_img), dtype=bool)
        first, second = CROWD_SPLIT
        for j, im in enumerate(images):
            ci = im.crowdIndex if typed else im.get("crowdIndex", _MISSING)
            iid = im.id if typed else im["id"]
            if ci is _MISSING:
                raise EvaluationInputError(
                    f"{where}: images[{j}] (id={iid!r}) has no 'crowdIndex' (CrowdPose mode splits the "
                    f"images into easy / medium / hard by it)")
            if not _is_score(ci):
                raise EvaluationInputError(f"{where}: images[{j}] (id={iid!r}): 'crowdIndex' is not a number "
                                           f"({ci!r})")
            masks[0 if ci < first else 1 if ci < second else 2, self._img_index[iid]] = True
        return masks

    def _explain_bad_gt(self, anns, where):
        """Slow path: find the first malformed annotation and raise a precise error."""
        if _is_typed(anns, "annotation_type"):
            anns = _as_dicts(anns)
        k = self.num_joints
        for j, a in enumerate(anns):
            if not isinstance(a, dict):
                raise EvaluationInputError(f"{where}: annotations[{j}] is not an object")
            for f in self._gt_cols:
                if f not in a:
                    raise EvaluationInputError(
                        f"{where} is not a keypoint annotation file: annotations[{j}] "
                        f"(id={a.get('id')!r}) has no '{f}'")
            at = f"{where}: annotations[{j}] (id={a['id']!r})"
            try:
                hash(a["id"])
                scored = a["image_id"] in self._img_index and a["category_id"] in self._cat_index
            except TypeError:
                raise EvaluationInputError(f"{at}: id / image_id / category_id is not a valid id") from None
            if not scored:
                continue
            parts = [a[f] for f in self._fields]
            for f, v in zip(self._fields, parts):
                if not isinstance(v, (list, tuple)) and self._fields != ("keypoints",):
                    raise EvaluationInputError(f"{at}: '{f}' is not a list")
            kp = parts[0] if len(parts) == 1 else list(chain.from_iterable(parts))
            if not hasattr(kp, "__len__") or len(kp) != 3 * k:
                n = len(kp) if hasattr(kp, '__len__') else 'no'
                raise EvaluationInputError(
                    f"{at} has {n} keypoint values, expected {3 * k}" if self._fields == ("keypoints",) else
                    f"{at} has {n} keypoint values in {self._kp_label}, expected {3 * k}")
            if not _is_numeric(kp, (3 * k,)):
                raise EvaluationInputError(f"{at}: {self._kp_label} must be {3 * k} numbers")
            bb = a["bbox"]
            if not _is_numeric(bb, (4,)):
                raise EvaluationInputError(f"{at} bbox is not 4 numbers")
            if self.use_area and not _is_numeric(a["area"], ()):
                raise EvaluationInputError(f"{at}: 'area' is not a number ({a['area']!r})")
        raise EvaluationInputError(f"{where}: malformed annotations")

    def _init_gt_arrays(self, anns, where):
        """The GT index as flat arrays, built column by column (no loop per annotation
        in Python); any malformed entry sends us to _explain_bad_gt for the message."""
        k = self.num_joints
        all_anns = anns
        typed = _is_typed(anns, "annotation_type")
        try:
            if typed:
                cols = {f: [getattr(a, f) for a in anns] for f in self._gt_cols}
                if self.use_area and _MISSING in cols["area"]:  # as a dict without 'area' (KeyError)
                    raise KeyError("area")
            else:
                cols = {f: [a[f] for a in anns] for f in self._gt_cols}
            n_unique = len(set(cols["id"]))
            # pycocotools evaluates the GT of listed images and categories only
            img = np.fromiter(map(self._img_index.get, cols["image_id"], repeat(-1)), np.int64, len(anns))
            cat = np.fromiter(map(self._cat_index.get, cols["category_id"], repeat(-1)), np.int64, len(anns))
        except (KeyError, TypeError, IndexError):
            self._explain_bad_gt(anns, where)
        if n_unique != len(anns):
            # pycocotools indexes annotations by id, so all but the last of a
            # duplicate would be evaluated as copies of the last: other numbers
            dups = [(v, c) for v, c in Counter(cols["id"]).items() if c > 1]
            v, c = dups[0]
            raise EvaluationInputError(
                f"{where}: annotation id {v!r} occurs {c} times ({len(dups)} duplicated id(s)); "
                f"ids must be unique (pycocotools would evaluate only the last annotation of an id)")
        scored = (img >= 0) & (cat >= 0)
        ann_index = np.flatnonzero(scored)  # position in the file, for messages
        if not scored.all():
            keep = scored.tolist()
            anns = list(compress(anns, keep))
            cols = {f: list(compress(v, keep)) for f, v in cols.items()}
            img, cat = img[scored], cat[scored]
        g = len(anns)
        ids, bbox_raw = cols["id"], cols["bbox"]
        try:
            if len(self._fields) == 1:
                kp_raw = cols[self._fields[0]]
            else:  # xtcocotools concatenates the parts' lists
                kp_raw = [list(chain.from_iterable(p)) for p in zip(*(cols[f] for f in self._fields))]
            kps = _numeric_array(kp_raw, (g, 3 * k)).reshape(g, k, 3)
            bbox = _numeric_array(bbox_raw, (g, 4))
            if self.use_area:
                area = _numeric_array(cols["area"], (g,))
        except (TypeError, ValueError, OverflowError):
            self._explain_bad_gt(all_anns, where)
        checked = (("keypoints", kps), ("area", area), ("bbox", bbox)) if self.use_area else (
            ("keypoints", kps), ("bbox", bbox))
        for name, arr in checked:
            bad = ~np.isfinite(arr.reshape(g, int(np.prod(arr.shape[1:])))).all(axis=1)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                j = int(ann_index[i])
                raise EvaluationInputError(f"{where}: annotations[{j}] (id={ids[i]!r}) has NaN/inf {name}")
        if not self.use_area:
            # xtcocotools use_area=False: gt['bbox'][2] * gt['bbox'][3] * 0.53 (evaluateImg) and
            # gt['bbox'][3] * gt['bbox'][2] * 0.53 (computeOks) are the same float
            area = bbox[:, 2] * bbox[:, 3] * 0.53
        crowd_raw = [a.iscrowd for a in anns] if typed else [a.get("iscrowd", 0) for a in anns]
        crowd = _numbers_or_none(crowd_raw)
        crowd = crowd != 0 if crowd is not None else np.fromiter(map(bool, crowd_raw), bool, g)
        # num_keypoints decides ignore (not the visibility flags), as in pycocotools and
        # xtcocotools' CrowdPose mode; a file without the field falls back to the number of
        # labelled joints.  xtcocotools' other modes count the joints with v > 0 (of the part).
        if self._xt and not self.crowd:
            numk_raw, numk = None, (kps[:, :, 2] > 0).sum(axis=1)
        else:
            numk_raw = ([a.num_keypoints for a in anns] if typed
                        else [a.get("num_keypoints", _MISSING) for a in anns])
            numk = _numbers_or_none(numk_raw)
        if numk is None:
            nvis = (kps[:, :, 2] > 0).sum(axis=1)
            numk = np.empty(g)
            for i, v in enumerate(numk_raw):
                if v is not _MISSING and not _is_numeric(v, ()):
                    raise EvaluationInputError(
                        f"{where}: annotations[{int(ann_index[i])}] (id={ids[i]!r}): "
                        f"'num_keypoints' is not a number ({v!r})")
                numk[i] = nvis[i] if v is _MISSING else v
        # pycocotools stores the matched GT id in dtMatches and tests it for != 0,
        # so a GT with id 0 never counts as matched; mirror that quirk.  xtcocotools
        # stores it in an int64 array tested for >= 0: a negative id (after int()) never counts
        id_num = _numbers_or_none(ids)
        if self._xt:
            id_counts = id_num > -1 if id_num is not None else np.fromiter(
                (not (isinstance(v, (int, float, np.number)) and v <= -1) for v in ids), bool, g)
        else:
            id_counts = id_num != 0 if id_num is not None else np.fromiter(
                (not (isinstance(v, (int, float, np.number)) and v == 0) for v in ids), bool, g)
        key = cat * self._n_img + img
        order = np.argsort(key, kind="stable")  # file order within an image, as pycocotools
        key = key[order]
        self._g_key = key
        self._g_cat = cat[order]
        self.gt = GtKeypoints(kps[order], area[order], bbox[order])
        self._g_crowd = crowd[order]
        self._g_id_counts = id_counts[order]
        self._g_img = key % self._n_img if self._n_img else key
        area = area[order]
        base_ig = crowd[order] | (numk[order] == 0)
        # per area range: ignored GT (crowd, no keypoints, or area outside the range)
        self._g_ig = np.stack([base_ig | (area < lo) | (area > hi) for lo, hi in self.area_rng])
        n_groups = len(self.cat_ids) * self._n_img
        self._g_start = np.searchsorted(key, np.arange(n_groups), side="left")
        self._g_cnt = np.searchsorted(key, np.arange(n_groups), side="right") - self._g_start
        # number of non-ignored GT per (category, area range)
        self._npig = np.zeros((len(self.cat_ids), len(self.area_rng)), dtype=np.int64)
        for c in range(len(self.cat_ids)):
            self._npig[c] = (~self._g_ig[:, self._g_cat == c]).sum(axis=1)
        self._g_per_cat = np.bincount(self._g_cat, minlength=len(self.cat_ids))

    # ------------------------------------------------------------------- results

    def _scan_results(self, results, res_bbox):
        """Slow path: find the first malformed entry and raise a precise error."""
        k3 = 3 * self.num_joints
        plain, sk, label = self._plain, self._score_key, self._kp_label
        for i, r in enumerate(results):
            if not isinstance(r, dict):
                raise EvaluationInputError(f"results[{i}] is not an object but {type(r).__name__}")
            img = r.get("image_id")
            at = f"results[{i}] (image_id={img!r})"
            for f in (_RESULT_FIELDS if plain else ("image_id", "category_id") + self._fields):
                if f not in r:
                    raise EvaluationInputError(f"{at} is missing the '{f}' field")
            if not plain and sk not in r and "score" not in r:
                raise EvaluationInputError(f"{at} is missing the '{sk}' field (and 'score', which "
                                           f"xtcocotools reads in its place)")
            if not plain and not res_bbox and "keypoints" not in r:
                raise EvaluationInputError(f"{at} is missing the 'keypoints' field (its extent is the result "
                                           f"area, as in xtcocotools loadRes)")
            try:
                if img not in self._img_index:
                    raise EvaluationInputError(f"{at}: image_id is not an image of the GT")
                hash(r["category_id"])  # other categories are ignored, but the id must be one
            except TypeError:
                raise EvaluationInputError(f"{at}: image_id / category_id is not a valid id") from None
            for f in self._fields:
                if not hasattr(r[f], "__len__") or (not plain and isinstance(r[f], (str, bytes, dict))):
                    raise EvaluationInputError(f"{at}: '{f}' is not a list")
            kp = r["keypoints"] if plain else list(chain.from_iterable(r[f] for f in self._fields))
            if r["category_id"] not in self._cat_index:
                self._check_ignored_keypoints(at, kp)
            elif len(kp) != k3:
                raise EvaluationInputError(
                    f"{at}: {label} has {len(kp)} values, expected 3*K = {k3}")
            else:
                try:
                    vals = _numeric_array(kp, (k3,))
                except (TypeError, ValueError, OverflowError):
                    raise EvaluationInputError(f"{at}: {label} must be {k3} numbers") from None
                if not np.isfinite(vals).all():
                    raise EvaluationInputError(f"{at}: {label} contains NaN/inf")
            s_name = sk if sk in r else "score"
            s = r[s_name]
            if not _is_score(s):
                raise EvaluationInputError(f"{at}: '{s_name}' is not a number ({s!r})")
            if not math.isfinite(float(s)):
                raise EvaluationInputError(f"{at}: '{s_name}' is NaN/inf ({s!r})")
            if res_bbox:
                bb = r.get("bbox")
                try:
                    ok = bool(np.isfinite(_numeric_array(bb, (4,))).all())
                except (TypeError, ValueError, OverflowError):
                    ok = False
                if not ok:
                    raise EvaluationInputError(
                        f"{at}: 'bbox' must be 4 finite numbers (results[0] has a bbox, so "
                        f"result areas come from boxes as in pycocotools loadRes)")
            elif not plain:
                body = r["keypoints"]
                try:
                    vals = np.array(body) if isinstance(body, (list, tuple)) else None
                except (TypeError, ValueError, OverflowError):
                    vals = None
                if vals is None or vals.ndim != 1 or vals.dtype.kind not in "iuf" or len(vals) < 2:
                    raise EvaluationInputError(f"{at}: 'keypoints' must be at least 2 numbers (their extent is "
                                               f"the result area, as in xtcocotools loadRes)")
                if not np.isfinite(vals).all():
                    raise EvaluationInputError(f"{at}: 'keypoints' contains NaN/inf")

    @staticmethod
    def _check_ignored_keypoints(at, kp):
        """A result of a category the GT does not list is ignored whatever its number of keypoints
        (a 21-joint hand model's 63 values): checked only as far as pycocotools' loadRes reads it
        (the extent of its x and y values: at least 2 numbers), plus finiteness as everywhere."""
        if isinstance(kp, (str, bytes, dict)) or not hasattr(kp, "__len__"):
            raise EvaluationInputError(f"{at}: 'keypoints' is not a list")
        if len(kp) < 2:
            raise EvaluationInputError(f"{at}: 'keypoints' has {len(kp)} values, expected at least x, y "
                                       f"(category_id not in the GT: ignored, but read by loadRes)")
        try:
            vals = np.array(kp)
        except (TypeError, ValueError, OverflowError):
            vals = None
        if vals is None or vals.ndim != 1 or vals.dtype.kind not in "iuf":  # pycocotools refuses bools too
            raise EvaluationInputError(f"{at}: 'keypoints' must be numbers")
        if not np.isfinite(vals).all():
            raise EvaluationInputError(f"{at}: 'keypoints' contains NaN/inf")

    def _ignored_placeholders(self, results, kps, ignored):
        """``kps`` with the keypoints of ignored results (category not in the GT) checked and replaced
        by zeros of the GT's length, so that every row stacks; those rows are dropped before scoring."""
        kps = list(kps)
        zeros = [0.0] * (3 * self.num_joints)
        for i in np.flatnonzero(ignored):
            img = results[i].get("image_id")
            self._check_ignored_keypoints(f"results[{i}] (image_id={img!r})", kps[i])
            kps[i] = zeros
        return kps

    def _bad(self, results, mask, what):
        i = int(np.flatnonzero(mask)[0])
        img = results[i].get("image_id") if isinstance(results[i], dict) else None
        raise EvaluationInputError(
            f"results[{i}] (image_id={img!r}): {what} ({int(mask.sum())} bad entries in total)")

    def _load_results(self, results):
        """Validate results and turn them into arrays (the pycocotools loadRes step).
        Results of a category the GT does not list are dropped (as COCOeval does)
        after validation; their number is kept in ``num_ignored``."""
        if isinstance(results, tuple):
            results = list(results)
        if not isinstance(results, list):
            raise EvaluationInputError(
                f"results must be a list of objects, got {type(results).__name__}")
        typed = _is_typed(results, "result_type")
        arrays = self._typed_result_arrays(results) if typed and self._plain else None
        if arrays is None:
            if typed:  # parsed fine but not valid here: let the general checks say why
                results = _as_dicts(results)
            arrays = self._result_arrays(results)
        img, cat, kp, score, bb = arrays
        if bb is not None:
            area = bb[:, 2] * bb[:, 3]
        elif self._fields == ("keypoints",):
            # loadRes: extent of all joints, labelled or not
            x, y = kp[:, :, 0], kp[:, :, 1]
            area = (x.max(axis=1) - x.min(axis=1)) * (y.max(axis=1) - y.min(axis=1))
        else:  # xtcocotools loadRes takes the extent of 'keypoints' whatever part is scored
            area = self._extent_areas(results)
        xy = kp[:, :, :2]
        scored = cat >= 0
        self.num_results, self.num_ignored = len(results), len(results) - int(scored.sum())
        if self._xt:
            # xtcocotools _prepare drops results without a joint of v > 0 (of the part)
            visible = (kp[:, :, 2] > 0).any(axis=1)
            self.num_invisible = int((scored & ~visible).sum())
            scored &= visible
        if self.num_ignored or self.num_invisible:
            img, cat, xy, score, area = img[scored], cat[scored], xy[scored], score[scored], area[scored]
        return img, cat, xy, score, area  # xy is a strided view: evaluate gathers it anyway

    def _extent_areas(self, results):
        """Areas of results without 'bbox' in a part mode: the extent of x = s[0::3] and
        y = s[1::3] of each result's 'keypoints' field s (xtcocotools loadRes)."""
        n = len(results)
        if n == 0:
            return np.zeros(0)
        try:
            body = [r["keypoints"] for r in results]
            arr = _numeric_array(body, (n, len(body[0])))
            if arr.shape[1] < 2 or not np.isfinite(arr).all():
                raise ValueError
        except (KeyError, TypeError, ValueError, OverflowError):
            self._scan_results(results, False)  # names the entry if one is malformed
            rows = [np.asarray(r["keypoints"], dtype=np.float64) for r in results]  # ragged but valid
            return np.array([(v[0::3].max() - v[0::3].min()) * (v[1::3].max() - v[1::3].min()) for v in rows])
        x, y = arr[:, 0::3], arr[:, 1::3]
        return (x.max(axis=1) - x.min(axis=1)) * (y.max(axis=1) - y.min(axis=1))

    def _typed_result_arrays(self, records):
        """Arrays of records from _typed("results") (types already checked while
        parsing); None if anything else is wrong, for the general path to report."""
        n, k = len(records), self.num_joints
        try:
            img = np.fromiter(map(self._img_index.get, [r.image_id for r in records], repeat(-1)), np.int64, n)
            cat = np.fromiter(map(self._cat_index.get, [r.category_id for r in records], repeat(-1)),
                              np.int64, n)
        except TypeError:  # an unhashable id
            return None
        kps = [r.keypoints for r in records]
        if (img < 0).any():
            return None
        lens = np.fromiter(map(len, kps), np.int64, n)
        other = lens != 3 * k
        if other.any():
            # results of a category the GT does not list may hold any number (>= 2) of keypoint values
            if (cat[other] >= 0).any() or (lens[other] < 2).any():
                return None
            zeros = [0.0] * (3 * k)
            kps = [zeros if o else kp for kp, o in zip(kps, other)]
        kp = np.fromiter(chain.from_iterable(kps), np.float64, n * 3 * k).reshape(n, k, 3)
        score = np.fromiter([r.score for r in records], np.float64, n)
        bb = None
        if records[0].bbox:  # pycocotools takes result areas from 'bbox' if the first entry has one
            try:
                bb = _numeric_array([r.bbox for r in records], (n, 4))
            except (TypeError, ValueError):
                return None
        return img, cat, kp, score, bb

    def _result_arrays(self, results):
        """Arrays of result dicts, each problem reported with the entry it is in."""
        n = len(results)
        k = self.num_joints
        # pycocotools takes result areas from 'bbox' if the first entry has one
        first = results[0] if n else None
        res_bbox = bool(n and isinstance(first, dict) and "bbox" in first
                              and hasattr(first["bbox"], "__len__") and len(first["bbox"]) > 0)
        fields, sk, label = self._fields, self._score_key, self._kp_label
        try:
            img_raw = [r["image_id"] for r in results]
            cat_raw = [r["category_id"] for r in results]
            if len(fields) == 1:
                kps = [r[fields[0]] for r in results]
            else:  # xtcocotools concatenates the parts' lists
                kps = [list(chain.from_iterable(p)) for p in zip(*([r[f] for r in results] for f in fields))]
            if sk == "score":
                score_raw = [r["score"] for r in results]
            else:  # xtcocotools: dt[score_key] = dt['score'] where the part score is missing
                score_raw = [r[sk] if sk in r else r["score"] for r in results]
            img = np.fromiter(map(self._img_index.get, img_raw, repeat(-1)), np.int64, n)
            cat = np.fromiter(map(self._cat_index.get, cat_raw, repeat(-1)), np.int64, n)
            if not _scores_ok(score_raw):  # numpy would take "0.9" and True
                raise ValueError
            score = np.fromiter(score_raw, np.float64, n)
        except (KeyError, TypeError, ValueError, AttributeError):
            self._scan_results(results, res_bbox)
            raise EvaluationInputError("results are malformed") from None
        if (img < 0).any():
            self._bad(results, img < 0, "image_id is not an image of the GT")
        if not np.isfinite(score).all():
            self._bad(results, ~np.isfinite(score), "'score' is NaN/inf" if sk == "score" else
                      f"'{sk}' (or 'score' where it is missing) is NaN/inf")
        if (cat < 0).any():
            kps = self._ignored_placeholders(results, kps, cat < 0)
        try:
            kp = _numeric_array(kps, (n, 3 * k)).reshape(n, k, 3)
        except (TypeError, ValueError, OverflowError):
            lens = np.fromiter((len(v) if hasattr(v, "__len__") else -1 for v in kps), np.int64, n)
            if (lens != 3 * k).any():
                i = int(np.flatnonzero(lens != 3 * k)[0])
                self._bad(results, lens != 3 * k, f"{label} is not a list" if lens[i] < 0 else
                          f"{label} has {int(lens[i])} values, expected 3*K = {3 * k}")
            self._scan_results(results, res_bbox)
            raise EvaluationInputError("results keypoints are malformed") from None
        finite = np.isfinite(kp.reshape(n, 3 * k)).all(axis=1)
        if not finite.all():
            self._bad(results, ~finite, f"{label} contains NaN/inf")
        bb = None
        if res_bbox:
            try:
                bb = _numeric_array([r["bbox"] for r in results], (n, 4))
                if not np.isfinite(bb).all():
                    raise ValueError
            except (KeyError, TypeError, ValueError, OverflowError):
                self._scan_results(results, res_bbox)
                raise EvaluationInputError("results bboxes are malformed") from None
        return img, cat, kp, score, bb

    # ------------------------------------------------------------------ evaluate

    def evaluate(self, results, verbose=False):
        """The stats of ``results`` (list of result dicts, or a JSON file) against the GT:
        10 keypoint stats (STAT_NAMES), 9 in CrowdPose mode (CROWD_STAT_NAMES).
        verbose: print them as pycocotools / xtcocotools summarize() does."""
        if isinstance(results, (str, os.PathLike)):
            results = _read_json(results, "results", _typed("results") if self._plain else None)
        img, cat, xy, score, area = self._load_results(results)
        n_a, n_t = len(self.area_rng), len(self.iou_thrs)
        thr = np.minimum(self.iou_thrs, 1 - 1e-10)

        # per (category, image) group: sort by -score, stable in results order
        # (pycocotools: mergesort of -score per image), keep the first max_dets
        key = cat * self._n_img + img
        order = np.lexsort((-score, key))
        key = key[order]
        first = np.searchsorted(key, key, side="left")
        keep = (np.arange(key.shape[0]) - first) < self.max_dets
        order = order[keep]
        key = key[keep]
        rank = (np.arange(key.shape[0]) - np.searchsorted(key, key, side="left"))
        xy, score, area = np.take(xy, order, axis=0), score[order], area[order]  # take: 2x faster on a strided xy
        nd = key.shape[0]
        ng = len(self.gt)

        # all (dt, gt) pairs of the same image and category, gt in file order
        gc = self._g_cnt[key]
        gs = self._g_start[key]
        p_dt = np.repeat(np.arange(nd), gc)
        p_gt = np.arange(p_dt.shape[0]) - np.repeat(np.cumsum(gc) - gc - gs, gc)
        # a pair below the lowest threshold can never match: most pairs (people
        # apart) are dropped by a box bound before their OKS is computed; the
        # margin covers rounding, the exact test follows
        near = oks_upper_bound(xy, self.gt, p_dt, p_gt, self.sigmas) >= thr.min() * (1 - 1e-9)
        p_dt, p_gt = p_dt[near], p_gt[near]
        p_oks = oks_pairs(xy, self.gt, p_dt, p_gt, self.sigmas)
        m = p_oks >= thr.min()
        p_dt, p_gt, p_oks = p_dt[m], p_gt[m], p_oks[m]

        dt_gt = np.full((n_a, n_t, nd), -1, dtype=np.int64)  # matched GT index
        # greedy matching only couples detections and GT linked by candidate pairs;
        # a pair whose detection and GT have no other candidate (the usual case) is
        # matched exactly at the thresholds its OKS reaches, for every area range
        alone = (np.bincount(p_dt, minlength=nd)[p_dt] == 1) & (np.bincount(p_gt, minlength=ng)[p_gt] == 1)
        hit = p_oks[alone][None, :] >= thr[:, None]
        dt_gt[:, :, p_dt[alone]] = np.where(hit, p_gt[alone], -1)[None]
        p_dt, p_gt, p_oks = p_dt[~alone], p_gt[~alone], p_oks[~alone]

        # the rest step by detection rank; a rank holds at most one dt per image
        po = np.argsort(rank[p_dt], kind="stable")
        p_dt, p_gt, p_oks = p_dt[po], p_gt[po], p_oks[po]
        p_rank = rank[p_dt]
        bounds = np.searchsorted(p_rank, np.arange(self.max_dets + 1), side="left")
        gm = np.zeros((n_a, n_t, ng), dtype=bool)  # GT already matched
        g_ig, crowd = self._g_ig, self._g_crowd
        for r in range(self.max_dets):
            lo, hi = bounds[r], bounds[r + 1]
            if lo == hi:
                continue
            gi, ov, dd = p_gt[lo:hi], p_oks[lo:hi], p_dt[lo:hi]
            n = hi - lo
            seg = np.flatnonzero(np.r_[True, dd[1:] != dd[:-1]])
            seg_len = np.diff(np.r_[seg, n])
            # crowd GT can absorb any number of detections
            cand = (~gm[:, :, gi] | crowd[gi]) & (ov[None, :] >= thr[:, None])[None]
            ig = g_ig[:, gi][:, None, :]
            cand_reg = cand & ~ig
            # a regular GT candidate wins over any ignored one (pycocotools breaks
            # at the first ignored GT once it has a regular match)
            has_reg = np.logical_or.reduceat(cand_reg, seg, axis=2)
            eff = np.where(np.repeat(has_reg, seg_len, axis=2), cand_reg, cand)
            val = np.where(eff, ov, -1.0)
            best = np.maximum.reduceat(val, seg, axis=2)
            # ties: pycocotools keeps the last GT with the best OKS (test is `<`)
            win = eff & (val == np.repeat(best, seg_len, axis=2))
            pos = np.maximum.reduceat(np.where(win, np.arange(n), -1), seg, axis=2)
            a_i, t_i, s_i = np.nonzero(pos >= 0)
            gsel = gi[pos[a_i, t_i, s_i]]
            gm[a_i, t_i, gsel] = True
            dt_gt[a_i, t_i, dd[seg[s_i]]] = gsel

        has_m = dt_gt >= 0
        if ng:
            gidx = np.where(has_m, dt_gt, 0)
            matched = has_m & self._g_id_counts[gidx] if not self._g_id_counts.all() else has_m
            matched_ig = has_m & np.take_along_axis(g_ig[:, None, :], gidx, axis=2)
        else:  # no scorable GT: nothing matches (and every stat comes out -1)
            matched = matched_ig = has_m
        dt_out = np.stack([(area < lo) | (area > hi) for lo, hi in self.area_rng])[:, None, :]
        dt_ig = matched_ig | (~matched & dt_out)

        precision, recall = self._accumulate(key, score, matched, dt_ig, self._npig)
        self.eval = {"precision": precision, "recall": recall}
        self.stats = self._summarize(precision, recall)
        if self.crowd:
            # xtcocotools get_type_result: evaluate + accumulate again on the images of each
            # split (matching is per image, so only accumulate differs), then
            # round(np.mean(precision[:, :, :, 0, :]), 4): -1 entries of empty categories count
            split = []
            for mask in self._split_masks:
                d_in = mask[key % self._n_img] if self._n_img else np.zeros(key.shape, bool)
                g_in = mask[self._g_img] if self._n_img else np.zeros(self._g_img.shape, bool)
                npig = np.zeros_like(self._npig)
                for c in range(len(self.cat_ids)):
                    npig[c] = (~self._g_ig[:, (self._g_cat == c) & g_in]).sum(axis=1)
                p_split, _ = self._accumulate(key[d_in], score[d_in], matched[:, :, d_in], dt_ig[:, :, d_in], npig)
                split.append(round(np.mean(p_split[:, :, :, 0, :]), 4))
            self.stats = np.concatenate([self.stats[[0, 1, 2, 5, 6, 7]], split])
        if verbose:
            for line in self.summary_lines():
                print(line)
        return self.stats

    def summary_lines(self):
        """The lines summarize() prints for the last evaluate(): pycocotools' or xtcocotools' (which
        formats values with '{: 0.3f}' and, in CrowdPose mode, prints its 6 + 3 lines)."""
        return format_stats(self.stats, compat=self.compat)  # both print maxDets=20, a literal there

    def _accumulate(self, key, score, matched, dt_ig, npig_all):
        """precision (T, R, K, A, 1) and recall (T, K, A, 1) of the detections given by their
        (category, image) key (sorted), score and match flags; npig_all: (K, A) non-ignored GT."""
        # ---- accumulate (pycocotools accumulate for the single maxDets setting)
        n_a, n_t = len(self.area_rng), len(self.iou_thrs)
        n_k, n_r = len(self.cat_ids), len(self.rec_thrs)
        precision = -np.ones((n_t, n_r, n_k, n_a, 1))
        recall = -np.ones((n_t, n_k, n_a, 1))
        d_cat = key // self._n_img
        cat_lo = np.searchsorted(d_cat, np.arange(n_k), side="left")
        cat_hi = np.searchsorted(d_cat, np.arange(n_k), side="right")
        for c in range(n_k):
            lo, hi = cat_lo[c], cat_hi[c]
            if hi == lo and self._g_per_cat[c] == 0:
                continue  # no image has GT or detections of this category
            # images concatenated in id order, each by -score: that is our order;
            # then the same global mergesort pycocotools applies
            inds = np.argsort(-score[lo:hi], kind="mergesort") + lo
            ndc = hi - lo
            mt_all, counted_all = matched[:, :, inds], ~dt_ig[:, :, inds]
            for a in range(n_a):
                npig = npig_all[c, a]
                if npig == 0:
                    continue  # stays -1, as in pycocotools
                # one (area, threshold) row at a time: 1-D temporaries stay in cache
                for t in range(n_t):
                    counted = counted_all[a, t]
                    tp = np.cumsum(mt_all[a, t] & counted, dtype=np.float64)
                    tp_fp = np.cumsum(counted, dtype=np.float64)  # exact integers: = fp + tp
                    rc = tp / npig
                    pr = tp / (tp_fp + _EPS)
                    recall[t, c, a, 0] = rc[-1] if ndc else 0
                    # precision at each recall threshold: the max of pr from the first
                    # detection reaching it onwards (pycocotools' right-to-left envelope),
                    # as segment maxima between those detections, then a max from the right
                    ri = np.searchsorted(rc, self.rec_thrs, side="left")
                    ok = ri < ndc
                    q = np.zeros(n_r)
                    if ok.any():
                        q[ok] = np.maximum.accumulate(np.maximum.reduceat(pr, ri[ok])[::-1])[::-1]
                    precision[t, :, c, a, 0] = q
        return precision, recall

    def _summarize(self, precision, recall):
        def one(ap, iou_thr=None, area="all"):
            a = AREA_LBL.index(area)
            s = precision if ap else recall
            if iou_thr is not None:
                s = s[np.where(iou_thr == self.iou_thrs)[0]]
            s = s[:, :, :, a, 0] if ap else s[:, :, a, 0]
            return -1 if len(s[s > -1]) == 0 else np.mean(s[s > -1])

        return np.array([one(1), one(1, .5), one(1, .75), one(1, area="medium"),
                         one(1, area="large"), one(0), one(0, .5), one(0, .75),
                         one(0, area="medium"), one(0, area="large")], dtype=np.float64)


# --------------------------------------------------------------------- helpers


def format_stats(stats, max_dets=MAX_DETS, compat="pycocotools"):
    """The 10 lines pycocotools COCOeval.summarize() prints for keypoints.

    compat="xtcocotools": as xtcocotools prints them (values formatted '{: 0.3f}'); 9 stats
    (CrowdPose mode) give its 6 lines for AP/AR all, .5, .75 and 3 for the easy / medium / hard AP.
    """
    if compat not in COMPATS:
        raise ValueError(f"compat must be one of {COMPATS}, got {compat!r}")
    if len(stats) == len(CROWD_STAT_NAMES):
        return _format_crowd_stats(stats, max_dets)
    value = "{:0.3f}" if compat == "pycocotools" else "{: 0.3f}"
    lines = []
    spec = [(1, None, "all"), (1, .5, "all"), (1, .75, "all"), (1, None, "medium"),
            (1, None, "large"), (0, None, "all"), (0, .5, "all"), (0, .75, "all"),
            (0, None, "medium"), (0, None, "large")]
    for (ap, iou, area), v in zip(spec, stats):
        title = "Average Precision" if ap == 1 else "Average Recall"
        typ = "(AP)" if ap == 1 else "(AR)"
        iou_s = "{:0.2f}:{:0.2f}".format(IOU_THRS[0], IOU_THRS[-1]) if iou is None else "{:0.2f}".format(iou)
        lines.append((" {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = " + value).format(
            title, typ, iou_s, area, max_dets, v))
    return lines


def _format_crowd_stats(stats, max_dets):
    """xtcocotools summarize() of iouType 'keypoints_crowd' (_summarizeKps_crowd)."""
    lines = []
    all_iou = "{:0.2f}:{:0.2f}".format(IOU_THRS[0], IOU_THRS[-1])
    for (ap, iou), v in zip([(1, None), (1, .5), (1, .75), (0, None), (0, .5), (0, .75)], stats[:6]):
        title = "Average Precision" if ap == 1 else "Average Recall"
        typ = "(AP)" if ap == 1 else "(AR)"
        iou_s = all_iou if iou is None else "{:0.2f}".format(iou)
        lines.append(" {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {: 0.3f}".format(
            title, typ, iou_s, "all", max_dets, v))
    for kind, v in zip(("easy", "medium", "hard"), stats[6:]):
        lines.append(" {:<18} {} @[ IoU={:<9} | type={:>6s} | maxDets={:>3d} ] = {:0.3f}".format(
            "Average Precision", "(AP)", all_iou, kind, max_dets, v))
    return lines


def print_stats(stats, file=None, compat="pycocotools"):
    for line in format_stats(stats, compat=compat):
        print(line, file=file)


def gather_results(results):
    """Concatenate every rank's results on every rank (rank order) when
    torch.distributed runs with more than one process; else return input."""
    if "torch" not in sys.modules:  # distributed cannot be initialised without torch
        return results
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return results
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(results))
    return [r for part in parts for r in part]


def evaluate(gt, results, sigmas=None, **options):
    """One-shot helper: stats of ``results`` (list or JSON path) against ``gt``;
    options: those of KeypointEvaluator (use_area, crowd, part, compat, max_dets)."""
    plain = options.get("part") in (None, "body")  # the typed decoder keeps 'keypoints' and 'score' only
    res = _load_json(results, "results", _typed("results") if plain else None)
    return KeypointEvaluator(gt, sigmas=sigmas, **options).evaluate(res)


def evaluate_wholebody(gt, results, sigmas, parts=None, use_area=True, verbose=False):
    """COCO-WholeBody as mmpose's TopDownCocoWholeBodyDataset._do_python_keypoint_eval scores it:
    xtcocotools COCOeval with iouType keypoints_body, _foot, _face, _lefthand, _righthand (each with
    its slice of ``sigmas``) and keypoints_wholebody (all of them), use_area=True.

    gt: dict or path; results: list or path (each read once); sigmas: the 133 (or however
    many) sigmas; parts: part name -> (start, stop) joint range in ``sigmas``, default
    WHOLEBODY_PARTS (KeypointSpec.parts has this form).  Returns {part: 10 stats}, the five
    parts and then "wholebody" (mmpose reports only the last).  verbose: print each summary.
    """
    parts = WHOLEBODY_PARTS if parts is None else parts
    sigmas = np.asarray(sigmas, dtype=np.float64)
    unknown = [p for p in parts if p not in PART_FIELDS or p == "wholebody"]
    if unknown:
        raise ValueError(f"unknown COCO-WholeBody part(s) {unknown}: parts are {list(WHOLEBODY_PARTS)}")
    gt = _load_json(gt, "GT annotation")
    results = _load_json(results, "results")
    out = {}
    for name, (start, stop) in list(parts.items()) + [("wholebody", (0, sigmas.shape[0]))]:
        ev = KeypointEvaluator(gt, sigmas=sigmas[start:stop], use_area=use_area, part=name)
        out[name] = ev.evaluate(results, verbose=verbose)
    return out


def check_writable(path, option="--out"):
    """Raise a one-line EvaluationInputError unless ``path`` can be created or
    overwritten as a file (its missing parent folders are made when writing)."""
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise EvaluationInputError(f"{option} {path} cannot be written: is a directory")
    parent = os.path.dirname(full)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise EvaluationInputError(f"{option} {path} cannot be written: {parent} is not a directory")
    target = full if os.path.exists(full) else parent
    if not os.access(target, os.W_OK):
        raise EvaluationInputError(f"{option} {path} cannot be written: no write permission on {target}")


def main(argv=None, hard_exit=False):
    """``vitpose-scale coco-eval``; returns the exit code (2: bad input).

    hard_exit (the command line only): end the process as soon as the output is
    flushed, without freeing the parsed files or tearing down the interpreter,
    as mypy does (``mypy.util.hard_exit``): about 8% of a 5,000-image run.
    """
    parser = argparse.ArgumentParser(
        prog="vitpose-scale coco-eval",
        description="Keypoint OKS evaluation: COCO as pycocotools COCOeval, the other sets of the ViTPose "
                    "family as the official mmpose 0.x code calls xtcocotools (same numbers, faster).")
    parser.add_argument("--gt", required=True, help="COCO-layout keypoint annotation JSON")
    parser.add_argument("--results", required=True, help="keypoint results JSON (list of objects)")
    parser.add_argument("--out", default=None, help="write the stats as a JSON object here")
    parser.add_argument("--dataset", default="coco", choices=_oks_sets(),
                        help="keypoint set: its sigmas, area rule, crowd mode or parts (default coco; "
                             "MPII's PCKh: vitpose-scale pckh)")
    args = parser.parse_args(argv)
    with gc_paused():  # a short run over acyclic data: the cyclic GC only costs time
        if args.dataset != "coco":
            return _run_set(parser.prog, args)
        return _run(parser.prog, args, hard_exit)


def _with_file(error, args) -> str:
    """The message, led by the results file when it is about one of its entries."""
    text = str(error)
    return f"{args.results}: {text}" if text.startswith("results[") else text


def _oks_sets():
    from vitpose_scale.keypoints import available, get_spec

    return [n for n in available() if get_spec(n).evaluation["metric"] == "oks"]


def _run_set(prog, args):
    """Another set of the family: the lines xtcocotools prints (per part for COCO-WholeBody)."""
    from vitpose_scale.eval.scoring import evaluate
    from vitpose_scale.keypoints import get_spec

    try:
        if args.out:
            check_writable(args.out)
        stats = evaluate(get_spec(args.dataset), args.gt, args.results, verbose=True)
    except EvaluationInputError as e:
        print(f"{prog}: error: {_with_file(e, args)}", file=sys.stderr)
        return 2
    if args.out:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(stats, f, indent=2)
        except OSError as e:
            print(f"{prog}: error: --out {args.out} cannot be written: {e.strerror or e}", file=sys.stderr)
            return 2
    return 0


def _run(prog, args, hard_exit):
    ev = results = None
    try:
        if args.out:  # before the work, not after it
            check_writable(args.out)
        ev = KeypointEvaluator(args.gt)
        results = _read_json(args.results, "results", _typed("results"))
        stats = ev.evaluate(results)
        code = _report(prog, ev, stats, args.out)
    except EvaluationInputError as e:
        print(f"{prog}: error: {_with_file(e, args)}", file=sys.stderr)
        code = 2
    if hard_exit:  # `results` is still referenced here, so it is never freed
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing left to save
                pass
        os._exit(code)
    return code


def _report(prog, ev, stats, out):
    print_stats(stats)
    if ev.num_ignored:
        print(f"{prog}: note: {ev.num_ignored} of {ev.num_results} results ignored: category_id "
              f"not a GT category {ev.cat_ids} (pycocotools ignores them too)", file=sys.stderr)
    if out:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as f:
                json.dump({n: float(v) for n, v in zip(STAT_NAMES, stats)}, f, indent=2)
        except OSError as e:
            print(f"{prog}: error: --out {out} cannot be written: {e.strerror or e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(hard_exit=True))
