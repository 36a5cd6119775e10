"""The evaluator's non-COCO modes against independent references.

What xtcocotools (jin-s13/xtcocoapi, xtcocotools/cocoeval.py, the evaluator of mmpose 0.x and the
official ViTPose) computes, reproduced by ``KeypointEvaluator(..., compat="xtcocotools")`` and the
options that imply it (use_area=False, crowd=True, part=...), is checked against:

* pycocotools ``COCOeval`` on inputs rewritten by :func:`_pycocotools_form`, which is exact: the
  xtcocotools code differs from pycocotools only where that rewrite puts the difference into the
  data (see its docstring for each line of xtcocotools it accounts for);
* :class:`_Xtcocoeval`, a straight transcription of the xtcocotools keypoint code path in plain
  Python loops (its docstring says which function each piece transcribes);
* faster-coco-eval 1.8.0 ``COCOeval_faster(iouType="keypoints_crowd", use_area=False)`` for
  CrowdPose mode (on inputs where its C++ core and xtcocotools agree: see the test).

The data are small synthetic sets made here with a numpy RNG, random and adversarial (ties in
scores and OKS, crowd GT, GT without labelled joints, images without GT or without detections,
more than maxDets detections, tiny and huge boxes, GT without 'area', ids 0 and negative,
results without any visible joint, results of a category the GT does not have, ...).
"""
import contextlib
import copy
import io
import json
import warnings
from collections import defaultdict

import numpy as np
import pytest

from vitpose_scale.eval import coco_eval
from vitpose_scale.eval.coco_eval import (CROWD_STAT_NAMES, PART_FIELDS, WHOLEBODY_PARTS, EvaluationInputError,
                                          KeypointEvaluator, evaluate_wholebody, format_stats)

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

# ----------------------------------------------------------------- official sigmas
# copied from configs/_base_/datasets/{aic,crowdpose,ap10k,coco_wholebody}.py (sigmas=[...]) of the
# official ViTPose repository (ViTAE-Transformer/ViTPose), which mmpose passes to xtcocotools as is
OFFICIAL_SIGMAS = {
    "aic": [0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144, 0.03909642, 0.03686941,
            0.01981803, 0.03843971, 0.03412318, 0.02415081, 0.01291456, 0.01236173],
    "crowdpose": [0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089, 0.079,
                  0.079],
    "ap10k": [0.025, 0.025, 0.026, 0.035, 0.035, 0.079, 0.072, 0.062, 0.079, 0.072, 0.062, 0.107, 0.087, 0.089,
              0.107, 0.087, 0.089],
    "coco_wholebody": [
        0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087,
        0.089, 0.089, 0.068, 0.066, 0.066, 0.092, 0.094, 0.094, 0.042, 0.043, 0.044, 0.043, 0.040, 0.035, 0.031,
        0.025, 0.020, 0.023, 0.029, 0.032, 0.037, 0.038, 0.043, 0.041, 0.045, 0.013, 0.012, 0.011, 0.011, 0.012,
        0.012, 0.011, 0.011, 0.013, 0.015, 0.009, 0.007, 0.007, 0.007, 0.012, 0.009, 0.008, 0.016, 0.010, 0.017,
        0.011, 0.009, 0.011, 0.009, 0.007, 0.013, 0.008, 0.011, 0.012, 0.010, 0.034, 0.008, 0.008, 0.009, 0.008,
        0.008, 0.007, 0.010, 0.008, 0.009, 0.009, 0.009, 0.007, 0.007, 0.008, 0.011, 0.008, 0.008, 0.008, 0.01,
        0.008, 0.029, 0.022, 0.035, 0.037, 0.047, 0.026, 0.025, 0.024, 0.035, 0.018, 0.024, 0.022, 0.026, 0.017,
        0.021, 0.021, 0.032, 0.02, 0.019, 0.022, 0.031, 0.029, 0.022, 0.035, 0.037, 0.047, 0.026, 0.025, 0.024,
        0.035, 0.018, 0.024, 0.022, 0.026, 0.017, 0.021, 0.021, 0.032, 0.02, 0.019, 0.022, 0.031],
}


def sigmas(name):
    return np.array(OFFICIAL_SIGMAS[name])


def test_official_sigma_lists_have_the_dataset_lengths():
    assert {k: len(v) for k, v in OFFICIAL_SIGMAS.items()} == {
        "aic": 14, "crowdpose": 14, "ap10k": 17, "coco_wholebody": 133}
    assert [b - a for a, b in WHOLEBODY_PARTS.values()] == [17, 6, 68, 21, 21]


# ----------------------------------------------------------------- synthetic sets


def make_set(seed, k, *, n_img=36, adversarial=False, parts=None, area="all", bbox_results=False,
             part_scores=False, cats=(1, 3)):
    """(gt, results) with ``k`` joints, or the fields of ``parts`` (name -> joint range) when given.

    area: "all" every GT has 'area', "some" about half do not, "none" none has.
    Adversarial sets add: GT ids 0 and -5, GT without 'iscrowd', num_keypoints that disagree with the
    flags, duplicate GT (OKS ties), tiny (< 1 px) and huge (area beyond 1e5**2) boxes, results that
    copy a GT exactly, results without a visible joint (of a part), of a category the GT lacks,
    crowdIndex exactly on the split borders.
    """
    rng = np.random.default_rng(seed)
    fields = ["keypoints"] if parts is None else [PART_FIELDS[p][0][0] for p in parts]
    ranges = [(0, k)] if parts is None else list(parts.values())
    cat_list = [{"id": c, "name": f"c{c}", "keypoints": [f"j{j}" for j in range(ranges[0][1] - ranges[0][0])]}
                for c in cats]
    images, anns, results = [], [], []
    aid = 1
    special_ids = [0, -5] if adversarial else []

    def split_fields(kp, target):
        for f, (a, b) in zip(fields, ranges):
            target[f] = [float(v) for v in kp[a:b].reshape(-1)]

    for i in range(n_img):
        img_id = 5000 - 11 * i if adversarial else i + 1
        ci = float(rng.uniform(0, 1))
        if adversarial and rng.random() < 0.3:
            ci = float(rng.choice([0.0, 0.2, 0.8, 1.0]))
        images.append({"id": img_id, "width": 640, "height": 480, "crowdIndex": ci})
        gts = []
        n_gt = 0 if rng.random() < 0.2 else int(rng.integers(1, 7))
        for _ in range(n_gt):
            cat = int(rng.choice(cats, p=[0.8, 0.2] if len(cats) == 2 else None))
            if gts and adversarial and rng.random() < 0.2:  # the same joints again: OKS ties
                g = copy.deepcopy(gts[-1][0])
                xy, box = gts[-1][1], gts[-1][2]
            else:
                x, y = rng.uniform(0, 400, 2)
                w, h = rng.uniform(8, 250, 2)
                size = rng.random()
                if adversarial and size < 0.08:
                    w, h = rng.uniform(0.2, 2, 2)  # tiny
                elif adversarial and size < 0.14:
                    w, h = rng.uniform(1.5e5, 2.5e5, 2)  # area beyond 1e5**2: out of every range
                box = [round(float(x), 2), round(float(y), 2), round(float(w), 2) or 0.2, round(float(h), 2) or 0.2]
                xy = np.stack([box[0] + rng.uniform(0, box[2], k), box[1] + rng.uniform(0, box[3], k)], 1)
                kp = np.zeros((k, 3))
                v = rng.choice([0, 1, 2], k, p=[0.3, 0.2, 0.5])
                if rng.random() < 0.15:
                    v[:] = 0  # no labelled joint
                for a, b in ranges[1:] if parts else []:
                    if rng.random() < 0.3:
                        v[a:b] = 0  # an unlabelled part (hands, face)
                lab = v > 0
                kp[lab, :2] = np.round(xy[lab], 1)
                kp[:, 2] = v
                nk = int(lab.sum())
                if adversarial and rng.random() < 0.15:  # CrowdPose counts v == 2 only; or just wrong
                    nk = int((v == 2).sum()) if rng.random() < 0.5 else (0 if nk else 2)
                g = {"image_id": img_id, "category_id": cat, "iscrowd": int(rng.random() < 0.1),
                     "num_keypoints": nk, "bbox": box, "area": round(box[2] * box[3] * rng.uniform(0.4, 0.8), 3)}
                split_fields(kp, g)
                if adversarial and rng.random() < 0.15:
                    del g["iscrowd"]
            g["id"] = special_ids.pop(0) if special_ids and rng.random() < 0.3 else aid
            aid += 1
            g["image_id"] = img_id
            if area == "none" or (area == "some" and rng.random() < 0.5):
                g.pop("area", None)
            elif "area" not in g:
                g["area"] = round(g["bbox"][2] * g["bbox"][3] * 0.6, 3)
            gts.append((g, xy, box))
            anns.append(g)
        if rng.random() < 0.12:
            continue  # an image without results
        n_det = int(rng.integers(21, 30)) if rng.random() < 0.12 else int(rng.integers(0, 7))
        tie = rng.random() < 0.3
        for _ in range(n_det):
            if gts and rng.random() < 0.75:
                g, xy, box = gts[int(rng.integers(len(gts)))]
                cat = g["category_id"]
                scale = np.sqrt(box[2] * box[3])
                noise = 0.0 if (adversarial and rng.random() < 0.15) else float(np.exp(rng.uniform(-6, -1.6)))
                if noise:
                    pts = xy + rng.normal(0, noise * scale + 1e-9, xy.shape)
                else:  # the GT's own labelled joints: OKS exactly 1
                    gkp = np.array([v for f in fields for v in g[f]]).reshape(k, 3)
                    pts = np.where(gkp[:, 2:3] > 0, gkp[:, :2], xy)
                score = float(np.clip(1 - 3 * noise + rng.normal(0, 0.15), 0.001, 1))
            else:
                x, y = rng.uniform(0, 500, 2)
                w, h = rng.uniform(10, 200, 2)
                pts = np.stack([x + rng.uniform(0, w, k), y + rng.uniform(0, h, k)], 1)
                cat = int(rng.choice(cats))
                score = float(rng.uniform(0, 0.7))
            conf = rng.uniform(0.05, 1.0, k)
            if adversarial and rng.random() < 0.08:
                conf[:] = 0  # no visible joint: xtcocotools drops the result
            if adversarial and rng.random() < 0.05:
                conf = rng.choice([0.0, -1.0], k)
            for a, b in ranges[1:] if parts else []:
                if rng.random() < 0.1:
                    conf[a:b] = 0
            if adversarial and rng.random() < 0.03:
                cat = 7  # not a GT category: ignored
            kp = np.concatenate([pts, conf[:, None]], 1)
            r = {"image_id": img_id, "category_id": cat, "score": round(score, 1) if tie else score}
            split_fields(kp, r)
            if part_scores:
                for p in list(parts or []) + ["wholebody"]:
                    if p != "body" and rng.random() < 0.5:
                        r[f"{p}_score"] = float(rng.uniform(0, 1))
            if bbox_results:
                bx, by = pts.min(0)
                r["bbox"] = [float(bx), float(by), float(np.ptp(pts[:, 0]) * 1.1), float(np.ptp(pts[:, 1]) * 1.1)]
            results.append(r)
    return {"images": images, "annotations": anns, "categories": cat_list}, results


# ------------------------------------------------------------------ references


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def pycocotools_stats(gt, results, sig):
    """pycocotools COCOeval(iouType='keypoints') with params.kpt_oks_sigmas = sig."""
    with _quiet():
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sig, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def _pycocotools_form(gt, results, fields=("keypoints",), score_key="score", use_area=True, crowd=False):
    """xtcocotools' input rewritten so that pycocotools COCOeval computes xtcocotools' numbers.

    Exact, because xtcocotools/cocoeval.py differs from pycocotools' only in what this rewrites:
    * computeOks / evaluateImg with use_area=False use gt['bbox'][3] * gt['bbox'][2] * 0.53 and
      g['bbox'][2] * g['bbox'][3] * 0.53 (the same float) where pycocotools uses gt['area']:
      area := w * h * 0.53 (evaluateImg also does this for a GT without 'area');
    * _prepare: GT ignore by np.count_nonzero(g[2::3] > 0) of the part's keypoints, except for
      'keypoints_crowd' (gt['num_keypoints'], as pycocotools): num_keypoints := that count;
    * _prepare: results whose keypoints (of the part) have no v > 0 are skipped: dropped here;
    * the part's field(s) and score (dt[score_key], 'score' where missing): copied into
      'keypoints' and 'score';
    * loadRes takes a result's area from its 'keypoints' field (the body) without 'bbox': the
      same extent as a 'bbox' here, whose w * h is the same product;
    * evaluateImg / accumulate keep -1 for "unmatched" and test dtm >= 0 where pycocotools keeps 0
      and tests dtm != 0: a GT id <= -1 never counts as matched in xtcocotools, id 0 never in
      pycocotools, so id 0 -> a new positive id, and the one negative id -> 0;
    * COCO.__init__ sets a missing 'iscrowd' to False.
    """
    gt = copy.deepcopy(gt)
    ids = [a["id"] for a in gt["annotations"]]
    assert sum(i <= -1 for i in ids) <= 1
    top = max(ids, default=0) + 1
    for a in gt["annotations"]:
        a["keypoints"] = [v for f in fields for v in a[f]]
        if not crowd:
            a["num_keypoints"] = int(np.count_nonzero(np.array(a["keypoints"])[2::3] > 0))
        if not use_area:
            a["area"] = a["bbox"][2] * a["bbox"][3] * 0.53
        a.setdefault("iscrowd", 0)
        if a["id"] == 0:
            a["id"] = top
        elif a["id"] <= -1:
            a["id"] = 0
    out = []
    first_bbox = bool(results) and "bbox" in results[0] and results[0]["bbox"] != []
    for r in results:
        kp = [v for f in fields for v in r[f]]
        if np.count_nonzero(np.array(kp)[2::3] > 0) == 0:
            continue
        new = {"image_id": r["image_id"], "category_id": r["category_id"], "keypoints": kp,
               "score": r[score_key] if score_key in r else r["score"]}
        if first_bbox:
            new["bbox"] = r["bbox"]
        elif list(fields) != ["keypoints"]:
            s = r["keypoints"]
            x0, x1, y0, y1 = np.min(s[0::3]), np.max(s[0::3]), np.min(s[1::3]), np.max(s[1::3])
            new["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        out.append(new)
    return gt, out


_XT_FIELDS = {"keypoints": ["keypoints"], "keypoints_crowd": ["keypoints"], "keypoints_body": ["keypoints"],
              "keypoints_foot": ["foot_kpts"], "keypoints_face": ["face_kpts"],
              "keypoints_lefthand": ["lefthand_kpts"], "keypoints_righthand": ["righthand_kpts"],
              "keypoints_wholebody": ["keypoints", "foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts"]}


class _XtCOCO:
    """xtcocotools/coco.py: COCO.__init__ (a missing 'iscrowd' becomes False), createIndex,
    getImgIds / getCatIds / getAnnIds / loadAnns, and loadRes (its 'bbox' and 'keypoints' branches,
    an empty list allowed)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.anns, self.imgToAnns = {}, defaultdict(list)
        for ann in dataset.get("annotations", []):
            self.imgToAnns[ann["image_id"]].append(ann)
            self.anns[ann["id"]] = ann
        self.imgs = {img["id"]: img for img in dataset.get("images", [])}
        self.cats = {cat["id"]: cat for cat in dataset.get("categories", [])}
        for ann in dataset.get("annotations", []):
            if "iscrowd" not in ann:
                ann["iscrowd"] = False

    def getImgIds(self):
        return list(self.imgs.keys())

    def getCatIds(self):
        return [c["id"] for c in self.dataset["categories"]]

    def getAnnIds(self, imgIds, catIds):
        if len(imgIds) == len(catIds) == 0:
            anns = self.dataset["annotations"]
        else:
            anns = ([a for i in imgIds if i in self.imgToAnns for a in self.imgToAnns[i]] if len(imgIds)
                    else self.dataset["annotations"])
            anns = anns if len(catIds) == 0 else [a for a in anns if a["category_id"] in catIds]
        return [a["id"] for a in anns]

    def loadAnns(self, ids):
        return [self.anns[i] for i in ids]

    def loadRes(self, anns):
        if len(anns) == 0:
            pass
        elif "bbox" in anns[0] and not anns[0]["bbox"] == []:
            for id, ann in enumerate(anns):
                bb = ann["bbox"]
                ann["area"] = bb[2] * bb[3]
                ann["id"] = id + 1
                ann["iscrowd"] = 0
        elif "keypoints" in anns[0]:
            for id, ann in enumerate(anns):
                s = ann["keypoints"]
                x = s[0::3]
                y = s[1::3]
                x0, x1, y0, y1 = np.min(x), np.max(x), np.min(y), np.max(y)
                ann["area"] = (x1 - x0) * (y1 - y0)
                ann["id"] = id + 1
                ann["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        return _XtCOCO({"images": list(self.dataset["images"]), "annotations": anns,
                        "categories": copy.deepcopy(self.dataset["categories"])})


class _Xtcocoeval:
    """xtcocotools/cocoeval.py (jin-s13/xtcocoapi HEAD d74033f), the keypoint iouTypes only,
    transcribed function by function: __init__ + Params.setKpParams (-> __init__), _prepare,
    evaluate, computeOks, evaluateImg, accumulate, summarize (_summarize, _summarizeKps,
    _summarizeKps_crowd, with the lines it prints collected in ``self.lines``), get_type_result and
    split (reading the GT's 'images' instead of re-reading its file).  The five part branches of
    _prepare / computeOks are folded into the _XT_FIELDS table; everything else keeps the order of
    operations of the source."""

    def __init__(self, cocoGt, cocoDt, iouType, sigmas, use_area=True):
        self.sigmas = sigmas
        self.cocoGt, self.cocoDt, self.iouType, self.use_area = cocoGt, cocoDt, iouType, use_area
        self.iouThrs = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
        self.recThrs = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
        self.maxDets = [20]
        self.areaRng = [[0 ** 2, 1e5 ** 2], [32 ** 2, 96 ** 2], [96 ** 2, 1e5 ** 2]]
        self.areaRngLbl = ["all", "medium", "large"]
        self.imgIds = sorted(cocoGt.getImgIds())
        self.catIds = sorted(cocoGt.getCatIds())
        self.score_key = "score"
        self.lines = []

    def _prepare(self):
        fields = _XT_FIELDS[self.iouType]
        gts = self.cocoGt.loadAnns(self.cocoGt.getAnnIds(imgIds=self.imgIds, catIds=self.catIds))
        dts = self.cocoDt.loadAnns(self.cocoDt.getAnnIds(imgIds=self.imgIds, catIds=self.catIds))
        part = self.iouType not in ("keypoints", "keypoints_crowd", "keypoints_body")
        for gt in gts:
            gt["ignore"] = gt["ignore"] if "ignore" in gt else 0
            gt["ignore"] = "iscrowd" in gt and gt["iscrowd"]
            if self.iouType == "keypoints_crowd":
                k = gt["num_keypoints"]
            else:
                g = np.array(sum((gt[f] for f in fields), []))
                k = np.count_nonzero(g[2::3] > 0)
            self.score_key = self.iouType[len("keypoints_"):] + "_score" if part else "score"
            gt["ignore"] = (k == 0) or gt["ignore"]
        self._gts, self._dts = defaultdict(list), defaultdict(list)
        for gt in gts:
            self._gts[gt["image_id"], gt["category_id"]].append(gt)
        for dt in dts:
            d = np.array(sum((dt[f] for f in fields), []))
            k = np.count_nonzero(d[2::3] > 0)
            if part and self.score_key not in dt:
                dt[self.score_key] = dt["score"]
            if k == 0:
                continue
            self._dts[dt["image_id"], dt["category_id"]].append(dt)

    def evaluate(self):
        self.imgIds = list(np.unique(self.imgIds))
        self.catIds = list(np.unique(self.catIds))
        self._prepare()
        self.ious = {(imgId, catId): self.computeOks(imgId, catId) for imgId in self.imgIds
                     for catId in self.catIds}
        self.evalImgs = [self.evaluateImg(imgId, catId, areaRng, self.maxDets[-1]) for catId in self.catIds
                         for areaRng in self.areaRng for imgId in self.imgIds]

    def computeOks(self, imgId, catId):
        fields = _XT_FIELDS[self.iouType]
        gts = self._gts[imgId, catId]
        dts = self._dts[imgId, catId]
        inds = np.argsort([-d[self.score_key] for d in dts], kind="mergesort")
        dts = [dts[i] for i in inds]
        if len(dts) > self.maxDets[-1]:
            dts = dts[0:self.maxDets[-1]]
        if len(gts) == 0 or len(dts) == 0:
            return []
        ious = np.zeros((len(dts), len(gts)))
        sigmas = self.sigmas
        vars = (sigmas * 2) ** 2
        k = len(sigmas)
        for j, gt in enumerate(gts):
            g = np.array(sum((gt[f] for f in fields), []))
            xg = g[0::3]; yg = g[1::3]; vg = g[2::3]  # noqa: E702
            k1 = np.count_nonzero(vg > 0)
            bb = gt["bbox"]
            x0 = bb[0] - bb[2]; x1 = bb[0] + bb[2] * 2  # noqa: E702
            y0 = bb[1] - bb[3]; y1 = bb[1] + bb[3] * 2  # noqa: E702
            for i, dt in enumerate(dts):
                d = np.array(sum((dt[f] for f in fields), []))
                xd = d[0::3]; yd = d[1::3]  # noqa: E702
                if k1 > 0:
                    dx = xd - xg
                    dy = yd - yg
                else:
                    z = np.zeros((k))
                    dx = np.max((z, x0 - xd), axis=0) + np.max((z, xd - x1), axis=0)
                    dy = np.max((z, y0 - yd), axis=0) + np.max((z, yd - y1), axis=0)
                if self.use_area:
                    e = (dx ** 2 + dy ** 2) / vars / (gt["area"] + np.spacing(1)) / 2
                else:
                    tmparea = gt["bbox"][3] * gt["bbox"][2] * 0.53
                    e = (dx ** 2 + dy ** 2) / vars / (tmparea + np.spacing(1)) / 2
                if k1 > 0:
                    e = e[vg > 0]
                ious[i, j] = np.sum(np.exp(-e)) / e.shape[0]
        return ious

    def evaluateImg(self, imgId, catId, aRng, maxDet):
        gt = self._gts[imgId, catId]
        dt = self._dts[imgId, catId]
        if len(gt) == 0 and len(dt) == 0:
            return None
        for g in gt:
            if "area" not in g or not self.use_area:
                tmp_area = g["bbox"][2] * g["bbox"][3] * 0.53
            else:
                tmp_area = g["area"]
            if g["ignore"] or (tmp_area < aRng[0] or tmp_area > aRng[1]):
                g["_ignore"] = 1
            else:
                g["_ignore"] = 0
        gtind = np.argsort([g["_ignore"] for g in gt], kind="mergesort")
        gt = [gt[i] for i in gtind]
        dtind = np.argsort([-d[self.score_key] for d in dt], kind="mergesort")
        dt = [dt[i] for i in dtind[0:maxDet]]
        iscrowd = [int(o["iscrowd"]) for o in gt]
        ious = self.ious[imgId, catId][:, gtind] if len(self.ious[imgId, catId]) > 0 else self.ious[imgId, catId]
        T = len(self.iouThrs)
        G = len(gt)
        D = len(dt)
        gtm = np.ones((T, G), dtype=np.int64) * -1
        dtm = np.ones((T, D), dtype=np.int64) * -1
        gtIg = np.array([g["_ignore"] for g in gt])
        dtIg = np.zeros((T, D))
        if len(ious):
            for tind, t in enumerate(self.iouThrs):
                for dind, d in enumerate(dt):
                    iou = min([t, 1 - 1e-10])
                    m = -1
                    for gind, g in enumerate(gt):
                        if gtm[tind, gind] >= 0 and not iscrowd[gind]:
                            continue
                        if m > -1 and gtIg[m] == 0 and gtIg[gind] == 1:
                            break
                        if ious[dind, gind] < iou:
                            continue
                        iou = ious[dind, gind]
                        m = gind
                    if m == -1:
                        continue
                    dtIg[tind, dind] = gtIg[m]
                    dtm[tind, dind] = gt[m]["id"]
                    gtm[tind, m] = d["id"]
        a = np.array([d["area"] < aRng[0] or d["area"] > aRng[1] for d in dt]).reshape((1, len(dt)))
        dtIg = np.logical_or(dtIg, np.logical_and(dtm < 0, np.repeat(a, T, 0)))
        return {"dtMatches": dtm, "dtScores": [d[self.score_key] for d in dt], "gtIgnore": gtIg, "dtIgnore": dtIg}

    def accumulate(self):
        T, R, K, A, M = (len(self.iouThrs), len(self.recThrs), len(self.catIds), len(self.areaRng),
                         len(self.maxDets))
        precision = -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        I0, A0 = len(self.imgIds), len(self.areaRng)
        for k in range(K):
            Nk = k * A0 * I0
            for a in range(A):
                Na = a * I0
                for m, maxDet in enumerate(self.maxDets):
                    E = [self.evalImgs[Nk + Na + i] for i in range(I0)]
                    E = [e for e in E if e is not None]
                    if len(E) == 0:
                        continue
                    dtScores = np.concatenate([e["dtScores"][0:maxDet] for e in E])
                    inds = np.argsort(-dtScores, kind="mergesort")
                    dtm = np.concatenate([e["dtMatches"][:, 0:maxDet] for e in E], axis=1)[:, inds]
                    dtIg = np.concatenate([e["dtIgnore"][:, 0:maxDet] for e in E], axis=1)[:, inds]
                    gtIg = np.concatenate([e["gtIgnore"] for e in E])
                    npig = np.count_nonzero(gtIg == 0)
                    if npig == 0:
                        continue
                    tps = np.logical_and(dtm >= 0, np.logical_not(dtIg))
                    fps = np.logical_and(dtm < 0, np.logical_not(dtIg))
                    tp_sum = np.cumsum(tps, axis=1).astype(dtype=np.float64)
                    fp_sum = np.cumsum(fps, axis=1).astype(dtype=np.float64)
                    for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum)):
                        tp = np.array(tp)
                        fp = np.array(fp)
                        nd = len(tp)
                        rc = tp / npig
                        pr = tp / (fp + tp + np.spacing(1))
                        q = np.zeros((R,))
                        recall[t, k, a, m] = rc[-1] if nd else 0
                        pr = pr.tolist()
                        q = q.tolist()
                        for i in range(nd - 1, 0, -1):
                            if pr[i] > pr[i - 1]:
                                pr[i - 1] = pr[i]
                        inds = np.searchsorted(rc, self.recThrs, side="left")
                        try:
                            for ri, pi in enumerate(inds):
                                q[ri] = pr[pi]
                        except IndexError:
                            pass
                        precision[t, :, k, a, m] = np.array(q)
        self.eval = {"precision": precision, "recall": recall}

    def _summarize(self, ap=1, iouThr=None, areaRng="all", maxDets=100):
        iStr = " {:<18} {} @[ IoU={:<9} | area={:>6s} | maxDets={:>3d} ] = {: 0.3f}"
        titleStr = "Average Precision" if ap == 1 else "Average Recall"
        typeStr = "(AP)" if ap == 1 else "(AR)"
        iouStr = "{:0.2f}:{:0.2f}".format(self.iouThrs[0], self.iouThrs[-1]) \
            if iouThr is None else "{:0.2f}".format(iouThr)
        aind = [i for i, aRng in enumerate(self.areaRngLbl) if aRng == areaRng]
        mind = [i for i, mDet in enumerate(self.maxDets) if mDet == maxDets]
        if ap == 1:
            s = self.eval["precision"]
            if iouThr is not None:
                s = s[np.where(iouThr == self.iouThrs)[0]]
            s = s[:, :, :, aind, mind]
        else:
            s = self.eval["recall"]
            if iouThr is not None:
                s = s[np.where(iouThr == self.iouThrs)[0]]
            s = s[:, :, aind, mind]
        mean_s = -1 if len(s[s > -1]) == 0 else np.mean(s[s > -1])
        self.lines.append(iStr.format(titleStr, typeStr, iouStr, areaRng, maxDets, mean_s))
        return mean_s

    def summarize(self):
        if self.iouType == "keypoints_crowd":
            stats = np.zeros((9,))
            stats[0] = self._summarize(1, maxDets=20)
            stats[1] = self._summarize(1, maxDets=20, iouThr=.5)
            stats[2] = self._summarize(1, maxDets=20, iouThr=.75)
            stats[3] = self._summarize(0, maxDets=20)
            stats[4] = self._summarize(0, maxDets=20, iouThr=.5)
            stats[5] = self._summarize(0, maxDets=20, iouThr=.75)
            type_result = self.get_type_result(first=0.2, second=0.8)
            iStr = " {:<18} {} @[ IoU={:<9} | type={:>6s} | maxDets={:>3d} ] = {:0.3f}"
            iouStr = "{:0.2f}:{:0.2f}".format(self.iouThrs[0], self.iouThrs[-1])
            for name, v in zip(("easy", "medium", "hard"), type_result):
                self.lines.append(iStr.format("Average Precision", "(AP)", iouStr, name, 20, v))
            stats[6:9] = type_result
        else:
            stats = np.zeros((10,))
            stats[0] = self._summarize(1, maxDets=20)
            stats[1] = self._summarize(1, maxDets=20, iouThr=.5)
            stats[2] = self._summarize(1, maxDets=20, iouThr=.75)
            stats[3] = self._summarize(1, maxDets=20, areaRng="medium")
            stats[4] = self._summarize(1, maxDets=20, areaRng="large")
            stats[5] = self._summarize(0, maxDets=20)
            stats[6] = self._summarize(0, maxDets=20, iouThr=.5)
            stats[7] = self._summarize(0, maxDets=20, iouThr=.75)
            stats[8] = self._summarize(0, maxDets=20, areaRng="medium")
            stats[9] = self._summarize(0, maxDets=20, areaRng="large")
        self.stats = stats

    def get_type_result(self, first=0.01, second=0.85):
        easy, mid, hard = self.split(first, second)
        res = []
        lines = self.lines
        for curr_list in [easy, mid, hard]:
            self.imgIds = curr_list
            self.evaluate()
            self.accumulate()
            score = self.eval["precision"][:, :, :, 0, :]
            res.append(round(np.mean(score), 4))
        self.lines = lines
        return res

    def split(self, first=0.01, second=0.85):
        easy, mid, hard = [], [], []
        for item in self.cocoGt.dataset["images"]:
            if item["crowdIndex"] < first:
                easy.append(item["id"])
            elif item["crowdIndex"] < second:
                mid.append(item["id"])
            else:
                hard.append(item["id"])
        return easy, mid, hard


def xtcocotools_transcript(gt, results, iou_type, sig, use_area=True):
    """(stats, printed lines) of the transcription, mmpose's call: loadRes, COCOeval(gt, dt, iou_type,
    sigmas, use_area), evaluate, accumulate, summarize."""
    coco = _XtCOCO(copy.deepcopy(gt))
    ev = _Xtcocoeval(coco, coco.loadRes(copy.deepcopy(results)), iou_type, np.asarray(sig, dtype=np.float64),
                     use_area)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats, ev.lines


def assert_equal_stats(ref, ours, names=None):
    ref, ours = np.asarray(ref, dtype=np.float64), np.asarray(ours, dtype=np.float64)
    assert ref.shape == ours.shape
    diff = np.abs(ref - ours)
    assert diff.max() <= 1e-12, list(zip(names or range(len(ref)), ref, ours))


# ------------------------------------------------- use_area=True, non-COCO sigmas


SETS = [("aic", 14), ("ap10k", 17)]


@pytest.mark.parametrize("name,k", SETS)
@pytest.mark.parametrize("seed,adversarial", [(0, False), (1, False), (2, True), (3, True)])
def test_non_coco_sigmas_with_area_match_pycocotools(name, k, seed, adversarial):
    """compat='pycocotools' (the default) with AIC / AP-10K sigmas vs pycocotools with
    params.kpt_oks_sigmas set: GT ids 0 and -5, num_keypoints disagreeing with the flags and
    results without visible joints all count as pycocotools counts them."""
    gt, results = make_set(seed, k, adversarial=adversarial)
    for a in gt["annotations"]:
        a.setdefault("iscrowd", 0)  # pycocotools reads it unconditionally
    ours = KeypointEvaluator(gt, sigmas=sigmas(name)).evaluate(results)
    assert_equal_stats(pycocotools_stats(gt, results, sigmas(name)), ours)
    assert 0 < ours[0] < 1


@pytest.mark.parametrize("name,k", SETS)
@pytest.mark.parametrize("seed,adversarial", [(10, False), (11, True), (12, True)])
def test_xtcocotools_keypoints_with_area_match_both_references(name, k, seed, adversarial):
    """compat='xtcocotools', use_area=True (how mmpose scores AP-10K, OCHuman): vs the
    transcription and vs pycocotools on the rewritten input."""
    gt, results = make_set(seed, k, adversarial=adversarial, bbox_results=seed == 12)
    ev = KeypointEvaluator(gt, sigmas=sigmas(name), compat="xtcocotools")
    ours = ev.evaluate(results)
    ref, lines = xtcocotools_transcript(gt, results, "keypoints", sigmas(name))
    assert_equal_stats(ref, ours)
    assert ev.summary_lines() == lines
    assert_equal_stats(pycocotools_stats(*_pycocotools_form(gt, results), sigmas(name)), ours)
    if adversarial:
        assert ev.num_invisible > 0 and ev.num_ignored > 0


# ---------------------------------------------------------------- use_area=False


@pytest.mark.parametrize("name,k", [("aic", 14), ("crowdpose", 14)])
@pytest.mark.parametrize("seed,adversarial,area", [(20, False, "all"), (21, True, "some"), (22, True, "none"),
                                                   (23, False, "none")])
def test_use_area_false_matches_pycocotools_on_bbox_areas_and_the_transcription(name, k, seed, adversarial, area):
    """use_area=False (AIC, and CrowdPose's OKS) with 'area' present, partly absent or absent:
    vs pycocotools with each GT 'area' rewritten to w * h * 0.53 (plus the other rewrites of
    _pycocotools_form, which xtcocotools' keypoint mode needs anyway), and vs the transcription."""
    gt, results = make_set(seed, k, adversarial=adversarial, area=area, bbox_results=seed == 23)
    ev = KeypointEvaluator(gt, sigmas=sigmas(name), use_area=False)
    assert ev.compat == "xtcocotools"
    ours = ev.evaluate(results)
    ref, lines = xtcocotools_transcript(gt, results, "keypoints", sigmas(name), use_area=False)
    assert_equal_stats(ref, ours)
    assert ev.summary_lines() == lines
    assert_equal_stats(pycocotools_stats(*_pycocotools_form(gt, results, use_area=False), sigmas(name)), ours)
    # 'area' is not read at all: a nonsense value changes nothing
    if area == "all":
        bad = copy.deepcopy(gt)
        for a in bad["annotations"]:
            a["area"] = "n/a"
        assert_equal_stats(ours, KeypointEvaluator(bad, sigmas=sigmas(name), use_area=False).evaluate(results))


def test_use_area_false_reads_gt_files_without_area(tmp_path):
    gt, results = make_set(24, 14, area="none")
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    from_files = coco_eval.evaluate(tmp_path / "gt.json", tmp_path / "res.json", sigmas("aic"), use_area=False)
    assert_equal_stats(KeypointEvaluator(gt, sigmas=sigmas("aic"), use_area=False).evaluate(results), from_files)
    with pytest.raises(EvaluationInputError, match=r"^GT .*gt.json is not a keypoint annotation file: "
                                                    r"annotations\[0\] \(id=1\) has no 'area'$"):
        KeypointEvaluator(tmp_path / "gt.json", sigmas=sigmas("aic"))
    # with use_area, a file and a dict without 'area' on a GT of a category not scored fail alike
    gt, _ = make_set(24, 14)
    gt["annotations"].append(dict(gt["annotations"][0], id=10 ** 6, category_id=99))
    del gt["annotations"][-1]["area"]
    (tmp_path / "gt2.json").write_text(json.dumps(gt))
    with pytest.raises(EvaluationInputError) as from_dict:
        KeypointEvaluator(copy.deepcopy(gt), sigmas=sigmas("aic"))
    with pytest.raises(EvaluationInputError) as from_file:
        KeypointEvaluator(tmp_path / "gt2.json", sigmas=sigmas("aic"))
    assert str(from_file.value) == str(from_dict.value).replace("GT", f"GT {tmp_path / 'gt2.json'}", 1)
    assert str(from_dict.value).endswith(f"annotations[{len(gt['annotations']) - 1}] (id=1000000) has no 'area'")


# --------------------------------------------------------------------- CrowdPose


def faster_crowd_stats(gt, results, sig):
    """faster-coco-eval 1.8.0 COCOeval_faster(iouType='keypoints_crowd', use_area=False), given
    _pycocotools_form(crowd=True, use_area=False) of the input: its C++ evaluateImg reads the GT
    'area' for the range test where xtcocotools reads w * h * 0.53 (rewritten), keeps results
    without visible joints (dropped) and treats matches to GT id 0 as unmatched (renamed)."""
    from faster_coco_eval import COCO as FCOCO
    from faster_coco_eval import COCOeval_faster

    gt_f, res_f = _pycocotools_form(gt, results, crowd=True, use_area=False)
    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Found annotation id 0": on purpose, see above
        coco = FCOCO(gt_f)
        ev = COCOeval_faster(coco, coco.loadRes(res_f), "keypoints_crowd", kpt_oks_sigmas=sig, use_area=False,
                             print_function=lambda *a, **k: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats[:9])


@pytest.mark.parametrize("seed,adversarial,kw", [
    (30, False, {}), (31, True, {}), (32, True, {"area": "none"}), (33, False, {"cats": (1,)}),
    (34, True, {"bbox_results": True, "cats": (1,)}), (35, True, {"n_img": 60}),
])
def test_crowdpose_matches_faster_coco_eval_and_the_transcription(seed, adversarial, kw):
    gt, results = make_set(seed, 14, adversarial=adversarial, **kw)
    ev = KeypointEvaluator(gt, sigmas=sigmas("crowdpose"), use_area=False, crowd=True)
    ours = ev.evaluate(results)
    assert ours.shape == (9,)
    ref, lines = xtcocotools_transcript(gt, results, "keypoints_crowd", sigmas("crowdpose"), use_area=False)
    assert_equal_stats(ref, ours, CROWD_STAT_NAMES)
    assert ev.summary_lines() == lines and len(lines) == 9
    assert_equal_stats(faster_crowd_stats(gt, results, sigmas("crowdpose")), ours, CROWD_STAT_NAMES)
    assert all(v == round(v, 4) for v in ours[6:])
    same = KeypointEvaluator.xtcocotools(gt, "keypoints_crowd", sigmas("crowdpose"), use_area=False)
    assert np.array_equal(same.evaluate(results), ours)


def test_crowdpose_empty_splits_and_categories_without_gt_give_xtcocotools_minus_ones():
    """A split without images is -1; a split of images whose GT are all of one category averages
    the -1 rows of the other category in (xtcocotools takes np.mean of the whole precision
    array): neither is -1 alone in AP(M) here, so the mean is exact."""
    gt, results = make_set(36, 14, n_img=30)
    for im in gt["images"]:
        im["crowdIndex"] = 0.5 if im["id"] % 3 else 0.1  # no hard image
    first = {im["id"] for im in gt["images"] if im["crowdIndex"] == 0.1}
    for a in gt["annotations"]:
        if a["image_id"] in first:
            a["category_id"] = 1
    ours = KeypointEvaluator(gt, sigmas=sigmas("crowdpose"), use_area=False, crowd=True).evaluate(results)
    ref, _ = xtcocotools_transcript(gt, results, "keypoints_crowd", sigmas("crowdpose"), use_area=False)
    assert_equal_stats(ref, ours, CROWD_STAT_NAMES)
    assert ours[8] == -1 and -1 < ours[6] < 0.5  # easy: category 3 has no GT there: -1 rows averaged in
    assert_equal_stats(faster_crowd_stats(gt, results, sigmas("crowdpose")), ours, CROWD_STAT_NAMES)


def test_crowdpose_summary_lines_are_xtcocotools_lines():
    stats = np.array([0.61234, 0.8, 0.65, 0.7, 0.9, 0.75, 0.7123, 0.6, -1.0])
    assert format_stats(stats, compat="xtcocotools") == [
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets= 20 ] =  0.612",
        " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets= 20 ] =  0.800",
        " Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets= 20 ] =  0.650",
        " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 20 ] =  0.700",
        " Average Recall     (AR) @[ IoU=0.50      | area=   all | maxDets= 20 ] =  0.900",
        " Average Recall     (AR) @[ IoU=0.75      | area=   all | maxDets= 20 ] =  0.750",
        " Average Precision  (AP) @[ IoU=0.50:0.95 | type=  easy | maxDets= 20 ] = 0.712",
        " Average Precision  (AP) @[ IoU=0.50:0.95 | type=medium | maxDets= 20 ] = 0.600",
        " Average Precision  (AP) @[ IoU=0.50:0.95 | type=  hard | maxDets= 20 ] = -1.000"]


def test_crowdpose_needs_crowd_index():
    gt, _ = make_set(37, 14, n_img=5)
    del gt["images"][2]["crowdIndex"]
    with pytest.raises(EvaluationInputError, match=r"^GT: images\[2\] \(id=3\) has no 'crowdIndex'"):
        KeypointEvaluator(gt, sigmas=sigmas("crowdpose"), use_area=False, crowd=True)


# ------------------------------------------------------------------ COCO-WholeBody


@pytest.mark.parametrize("seed,kw", [(40, {}), (41, {"adversarial": True, "part_scores": True}),
                                     (42, {"adversarial": True, "bbox_results": True, "part_scores": True})])
def test_wholebody_parts_match_pycocotools_and_the_transcription(seed, kw):
    """Each part (and wholebody) vs pycocotools with that part's field copied into 'keypoints',
    num_keypoints recounted from the part's flags (xtcocotools _prepare counts them; it never reads
    num_keypoints outside CrowdPose mode), the part's sigma slice and score; vs the transcription
    for the hardest ones; evaluate_wholebody runs all six as mmpose does."""
    gt, results = make_set(seed, 133, parts=WHOLEBODY_PARTS, n_img=24, **kw)
    sig = sigmas("coco_wholebody")
    every = evaluate_wholebody(gt, results, sig)
    assert list(every) == ["body", "foot", "face", "lefthand", "righthand", "wholebody"]
    for part, (a, b) in list(WHOLEBODY_PARTS.items()) + [("wholebody", (0, 133))]:
        fields, score_key = PART_FIELDS[part]
        ours = KeypointEvaluator(gt, sigmas=sig[a:b], part=part).evaluate(results)
        assert np.array_equal(ours, every[part])
        ref = pycocotools_stats(*_pycocotools_form(gt, results, fields, score_key), sig[a:b])
        assert_equal_stats(ref, ours)
        if part in ("foot", "wholebody") or seed == 41:
            xt, _ = xtcocotools_transcript(gt, results, f"keypoints_{part}", sig[a:b])
            assert_equal_stats(xt, ours)
    assert all(0 < s[0] < 1 for s in every.values())


def test_wholebody_from_files_and_the_iou_type_constructor(tmp_path):
    gt, results = make_set(43, 133, parts=WHOLEBODY_PARTS, n_img=10, part_scores=True)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    sig = sigmas("coco_wholebody")
    from_files = evaluate_wholebody(tmp_path / "gt.json", tmp_path / "res.json", sig)
    in_memory = evaluate_wholebody(gt, results, sig)
    assert all(np.array_equal(from_files[p], in_memory[p]) for p in in_memory)
    ev = KeypointEvaluator.xtcocotools(tmp_path / "gt.json", "keypoints_face", sig[23:91])
    assert np.array_equal(ev.evaluate(tmp_path / "res.json"), in_memory["face"])
    assert np.array_equal(coco_eval.evaluate(gt, tmp_path / "res.json", sig[91:112], part="lefthand"),
                          in_memory["lefthand"])


# ------------------------------------------------------------------------ input checks


def test_results_with_another_keypoint_count_are_one_line_errors(tmp_path):
    gt, results = make_set(50, 14, n_img=6)
    ev = KeypointEvaluator(gt, sigmas=sigmas("aic"), use_area=False)
    coco_like = copy.deepcopy(results)
    coco_like[3]["keypoints"] = coco_like[3]["keypoints"] + [1.0, 2.0, 1.0] * 3  # 17 joints
    path = tmp_path / "res.json"
    path.write_text(json.dumps(coco_like))
    img = coco_like[3]["image_id"]
    for src in (coco_like, path):
        with pytest.raises(EvaluationInputError) as exc:
            ev.evaluate(copy.deepcopy(src) if isinstance(src, list) else src)
        msg = str(exc.value)
        assert "\n" not in msg
        assert msg == (f"results[3] (image_id={img}): 'keypoints' has 51 values, expected 3*K = 42 "
                       f"(1 bad entries in total)")
    # a part: the message names its field and its count
    gt, results = make_set(51, 133, parts=WHOLEBODY_PARTS, n_img=6)
    results[1]["foot_kpts"] = results[1]["foot_kpts"][:-3]
    ev = KeypointEvaluator(gt, sigmas=sigmas("coco_wholebody")[17:23], part="foot")
    with pytest.raises(EvaluationInputError, match=r"^results\[1\] \(image_id=\d+\): 'foot_kpts' has 15 values, "
                                                    r"expected 3\*K = 18 \(1 bad entries in total\)$"):
        ev.evaluate(results)
    with pytest.raises(EvaluationInputError, match=r"^results\[1\] .*'foot_kpts' has 15 values"):
        evaluate_wholebody(gt, results, sigmas("coco_wholebody"))
    # GT of another joint count
    with pytest.raises(EvaluationInputError, match=r"^GT: annotations\[0\] \(id=\d+\) has 18 keypoint values in "
                                                    r"'foot_kpts', expected 21$"):
        KeypointEvaluator(gt, sigmas=sigmas("coco_wholebody")[17:24], part="foot")


def test_option_combinations_that_do_not_exist_are_refused():
    gt, _ = make_set(52, 14, n_img=3)
    with pytest.raises(ValueError, match="exist only in xtcocotools"):
        KeypointEvaluator(gt, sigmas=sigmas("aic"), use_area=False, compat="pycocotools")
    with pytest.raises(ValueError, match="part must be one of"):
        KeypointEvaluator(gt, sigmas=sigmas("aic"), part="tail")
    with pytest.raises(ValueError, match="not an xtcocotools keypoint iouType"):
        KeypointEvaluator.xtcocotools(gt, "bbox", sigmas("aic"))


# ------------------------------------------- each keypoint set, as the command line scores it
# The set's spec decides sigmas, area rule, crowd mode and parts: `coco-eval --dataset NAME` must print
# the lines and write the stats of mmpose's call for that set (the xtcocotools transcription above).
# (set, xtcocotools iouType, use_area) as in the official dataset classes
OFFICIAL_CALLS = {"aic": ("keypoints", False), "crowdpose": ("keypoints_crowd", False),
                  "ochuman": ("keypoints", True), "ap10k": ("keypoints", True), "apt36k": ("keypoints", True)}


def _cli(args, capsys):
    from vitpose_scale.eval.coco_eval import main

    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("name", sorted(OFFICIAL_CALLS))
def test_each_set_scores_as_its_official_call_from_the_command_line(name, tmp_path, capsys):
    from vitpose_scale.keypoints import get_spec

    spec = get_spec(name)
    gt, results = make_set(60 + len(name), spec.num_keypoints, n_img=20, adversarial=True)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    code, out, err = _cli(["--dataset", name, "--gt", str(tmp_path / "gt.json"), "--results",
                           str(tmp_path / "res.json"), "--out", str(tmp_path / "stats.json")], capsys)
    assert code == 0, err
    iou_type, use_area = OFFICIAL_CALLS[name]
    ref, lines = xtcocotools_transcript(gt, results, iou_type, spec.sigma_array, use_area)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert_equal_stats(ref, list(stats.values()))
    assert out.splitlines() == lines
    if name == "crowdpose":
        assert list(stats) == ["AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP(E)", "AP(M)", "AP(H)"]


def test_wholebody_from_the_command_line_takes_our_133_joint_results(tmp_path, capsys):
    """Our pipeline writes all 133 joints in 'keypoints'; they are split into the official part fields
    and each part is scored as mmpose does; the whole body's stats carry the plain names."""
    from vitpose_scale.eval.scoring import split_parts
    from vitpose_scale.keypoints import get_spec

    spec = get_spec("coco_wholebody")
    gt, official = make_set(70, 133, parts=dict(spec.parts), n_img=12)
    fields = [PART_FIELDS[p][0][0] for p in spec.parts]
    ours = [{"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"],
             "keypoints": sum((list(r[f]) for f in fields), [])} for r in official]
    assert split_parts(spec, ours) == [{k: r[k] for k in ("image_id", "category_id", "score", *fields)}
                                       for r in official]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(ours))
    code, out, err = _cli(["--dataset", "coco_wholebody", "--gt", str(tmp_path / "gt.json"), "--results",
                           str(tmp_path / "res.json"), "--out", str(tmp_path / "stats.json")], capsys)
    assert code == 0, err
    stats = json.loads((tmp_path / "stats.json").read_text())
    every = evaluate_wholebody(gt, official, spec.sigma_array)
    assert_equal_stats(every["wholebody"], [stats[n] for n in coco_eval.STAT_NAMES])
    assert_equal_stats(every["foot"], [stats[f"foot/{n}"] for n in coco_eval.STAT_NAMES])
    assert out.count("keypoints_") == 6 and "keypoints_righthand:" in out


def test_a_results_file_of_another_set_is_one_line_and_exit_2(tmp_path, capsys):
    gt, _ = make_set(71, 17, n_img=4)  # an AP-10K ground truth, results of a 14-joint set
    _, results = make_set(71, 14, n_img=4)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    code, out, err = _cli(["--dataset", "ap10k", "--gt", str(tmp_path / "gt.json"), "--results",
                           str(tmp_path / "res.json")], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and f"{tmp_path / 'res.json'}: results[0]" in err
    assert "has 42 values, expected 3*K = 51" in err
