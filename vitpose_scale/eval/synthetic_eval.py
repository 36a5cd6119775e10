"""Synthetic COCO keypoint GT + results for evaluator tests and benchmarks.

``make_eval_set`` builds a person-keypoint GT dict and a list of top-down
style result entries that exercise every branch of COCO keypoint evaluation:
small / medium / large people, crowd regions, people with zero labelled joints,
images with no people, images with more than maxDets (20) detections,
duplicate and false-positive detections, and tied scores.
"""

from __future__ import annotations

import numpy as np

from vitpose_scale.keypoints import get_spec

from .oks import COCO_SIGMAS

_COCO = get_spec("coco")

# A standing person facing the camera, in box-normalised (x, y) coordinates.
_TEMPLATE = np.array([
    [.50, .07], [.54, .05], [.46, .05], [.58, .07], [.42, .07], [.68, .21], [.32, .21],
    [.76, .38], [.24, .38], [.80, .52], [.20, .52], [.62, .55], [.38, .55], [.63, .75],
    [.37, .75], [.64, .95], [.36, .95]])
_FLIP = _COCO.flip_index


def _person(rng, img_w, img_h):
    """True joint positions (17, 2) and the person box (x, y, w, h)."""
    h = float(np.exp(rng.uniform(np.log(18.0), np.log(min(img_h, 460.0)))))
    w = h * rng.uniform(0.35, 0.75)
    x = rng.uniform(0, max(img_w - w, 1.0))
    y = rng.uniform(0, max(img_h - h, 1.0))
    t = _TEMPLATE[_FLIP] if rng.random() < 0.4 else _TEMPLATE  # seen from the back
    t = t + rng.normal(0, 0.04, t.shape)  # pose variation
    xy = np.stack([x + t[:, 0] * w, y + t[:, 1] * h], axis=1)
    return xy, (x, y, w, h)


def _gt_keypoints(rng, xy, zero_visible):
    k = xy.shape[0]
    if zero_visible:
        v = np.zeros(k, dtype=np.int64)
    else:
        v = rng.choice([0, 1, 2], size=k, p=[0.2, 0.1, 0.7])
        if rng.random() < 0.15:  # truncated at the image border: legs unlabelled
            v[11:] = 0
    kp = np.zeros((k, 3))
    lab = v > 0
    # COCO stores integer pixel coords for labelled joints and 0,0,0 otherwise
    kp[lab, :2] = np.round(xy[lab])
    kp[:, 2] = v
    return kp, int(lab.sum())


def _det(rng, xy, box, noise, score):
    w, h = box[2], box[3]
    scale = np.sqrt(w * h)
    pts = xy + rng.normal(0, noise * scale, xy.shape)
    conf = np.clip(rng.uniform(0.2, 1.0, xy.shape[0]), 0, 1)
    kp = np.concatenate([pts, conf[:, None]], axis=1)
    return kp.reshape(-1), float(np.clip(score, 1e-4, 1.0))


def make_eval_set(num_images, seed=0, crowd_frac=0.05, empty_frac=0.1, zero_vis_frac=0.03,
                  many_det_frac=0.03, tie_frac=0.05, fp_rate=1.0, with_bbox=False,
                  image_id_start=1, ann_id_start=1):
    """Return ``(gt_dict, results_list)`` of a synthetic person keypoint set.

    crowd_frac: fraction of images with a crowd region (iscrowd=1, no joints);
    empty_frac: images with no person (still receive false positives);
    zero_vis_frac: people annotated with a box but ``num_keypoints == 0``;
    many_det_frac: images that receive 21-40 detections (beyond maxDets=20);
    tie_frac: images whose scores are rounded to one decimal (score ties);
    fp_rate: mean number of random false-positive detections per image;
    with_bbox: add a ``bbox`` to each result (pycocotools then takes the
    result area from that box instead of the keypoint extent).
    """
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    ann_id = ann_id_start
    for i in range(num_images):
        img_id = image_id_start + i
        img_w, img_h = (640, 480) if rng.random() < 0.6 else (480, 640)
        images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": img_w,
                       "height": img_h})
        n_people = 0 if rng.random() < empty_frac else int(min(rng.geometric(0.4), 15))
        dets = []  # (keypoints, score, box)
        for _ in range(n_people):
            xy, box = _person(rng, img_w, img_h)
            zero = rng.random() < zero_vis_frac
            kp, nk = _gt_keypoints(rng, xy, zero)
            anns.append({
                "id": ann_id, "image_id": img_id, "category_id": 1, "iscrowd": 0,
                "keypoints": kp.reshape(-1).astype(int).tolist(), "num_keypoints": nk,
                "bbox": [round(v, 2) for v in box],
                # COCO areas are segmentation areas: a fraction of the box
                "area": round(box[2] * box[3] * rng.uniform(0.45, 0.75), 2),
            })
            ann_id += 1
            if rng.random() < 0.9:  # detected
                noise = rng.uniform(0.002, 0.06)
                dets.append((*_det(rng, xy, box, noise, 1.0 - 6 * noise + rng.normal(0, .08)), box))
                if rng.random() < 0.25:  # a worse duplicate that OKS-NMS kept
                    noise = rng.uniform(0.02, 0.2)
                    dets.append((*_det(rng, xy, box, noise, 0.7 - 2 * noise + rng.normal(0, .1)), box))
        if rng.random() < crowd_frac:
            cw, ch = rng.uniform(100, img_w * 0.9), rng.uniform(60, img_h * 0.6)
            cx, cy = rng.uniform(0, img_w - cw), rng.uniform(0, img_h - ch)
            anns.append({
                "id": ann_id, "image_id": img_id, "category_id": 1, "iscrowd": 1,
                "keypoints": [0] * 51, "num_keypoints": 0,
                "bbox": [round(cx, 2), round(cy, 2), round(cw, 2), round(ch, 2)],
                "area": round(cw * ch * rng.uniform(0.3, 0.7), 2),
            })
            ann_id += 1
            for _ in range(rng.integers(1, 5)):  # people found inside the crowd
                h = rng.uniform(30, ch)
                w = min(h * 0.5, cw)
                box = (cx + rng.uniform(0, cw - w), cy + rng.uniform(0, ch - h), w, h)
                xy = np.stack([box[0] + _TEMPLATE[:, 0] * box[2],
                               box[1] + _TEMPLATE[:, 1] * box[3]], axis=1)
                dets.append((*_det(rng, xy, box, 0.05, rng.uniform(0.2, 0.9)), box))
        n_fp = int(rng.poisson(fp_rate))
        if rng.random() < many_det_frac:
            n_fp += int(rng.integers(21, 41))
        for _ in range(n_fp):
            xy, box = _person(rng, img_w, img_h)
            dets.append((*_det(rng, xy, box, 0.1, rng.uniform(0.0, 0.6) ** 2), box))
        ties = rng.random() < tie_frac
        for kp, score, box in dets:
            if ties:
                score = round(score, 1) or 0.1
            r = {"image_id": img_id, "category_id": 1, "keypoints": kp.tolist(), "score": score}
            if with_bbox:
                r["bbox"] = [float(box[0]), float(box[1]), float(box[2]), float(box[3])]
            results.append(r)
    # result files are not grouped by image in general; order also breaks ties
    order = rng.permutation(len(results))
    results = [results[j] for j in order]
    gt = {
        "info": {"description": "vitpose_scale synthetic keypoint set", "seed": int(seed)},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": list(_COCO.names), "skeleton": _COCO.coco_skeleton()}],
    }
    return gt, results


def results_from_detections(gt, detections, seed=0, noise=0.06):
    """Pose results for person detections (e.g. the AP-56 detector boxes).

    Each detection gets the keypoints of the GT person its box overlaps best
    (IoU > 0.3; invisible joints are filled from a template in the GT box)
    plus Gaussian noise scaled to the box size; other detections get a
    template pose in their box.  Score = detector score times a pose quality.
    """
    rng = np.random.default_rng(seed)
    by_img = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0):
            by_img.setdefault(a["image_id"], []).append(a)
    out = []
    for det in detections:
        x, y, w, h = det["bbox"]
        best, best_iou = None, 0.3
        for a in by_img.get(det["image_id"], []):
            gx, gy, gw, gh = a["bbox"]
            iw = max(0.0, min(x + w, gx + gw) - max(x, gx))
            ih = max(0.0, min(y + h, gy + gh) - max(y, gy))
            inter = iw * ih
            iou = inter / (w * h + gw * gh - inter + 1e-9)
            if iou > best_iou:
                best, best_iou = a, iou
        tmpl = np.stack([x + _TEMPLATE[:, 0] * w, y + _TEMPLATE[:, 1] * h], axis=1)
        if best is not None:
            kp = np.asarray(best["keypoints"], dtype=np.float64).reshape(-1, 3)
            gx, gy, gw, gh = best["bbox"]
            fill = np.stack([gx + _TEMPLATE[:, 0] * gw, gy + _TEMPLATE[:, 1] * gh], axis=1)
            xy = np.where(kp[:, 2:3] > 0, kp[:, :2], fill)
        else:
            xy = tmpl
        n = rng.uniform(0.3, 1.7) * noise
        kp, q = _det(rng, xy, (x, y, w, h), n, 1.0 - 2 * n)
        out.append({"image_id": det["image_id"], "category_id": 1, "keypoints": kp.tolist(),
                    "score": float(det["score"]) * q})
    return out


__all__ = ["make_eval_set", "results_from_detections", "COCO_SIGMAS"]
