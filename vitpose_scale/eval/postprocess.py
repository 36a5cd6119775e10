"""Top-down post-processing: rescoring, per-image OKS-NMS, COCO result entries.

Area convention (checked against mmpose 0.x ``TopDown.forward_test`` +
``TopDownCocoDataset.evaluate``): each person's ``area`` for OKS-NMS is
``np.prod(scale * 200)`` of the *padded* box, i.e. s_w * s_h in pixels with
the 1.25 padding and aspect fix included. Our ``scale`` is already in pixels,
so ``area = scale_w * scale_h``.

Distributed evaluation: OKS-NMS must see all boxes of an image, but the eval
sampler shards boxes, not images. For several ranks call
``predict_dataset(..., postprocess=False)``, gather the raw people from every
rank (e.g. ``torch.distributed.gather_object``) and run
:func:`postprocess_people` once on the union.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from .decode import average_flip, decode_heatmaps, flip_heatmaps
from .oks import COCO_SIGMAS, oks_nms


def rescore(keypoint_scores: np.ndarray, box_score: float, thr: float = 0.2) -> float:
    """Mean of the keypoint scores above ``thr`` (0 if none) times the box score."""
    s = np.asarray(keypoint_scores, dtype=np.float64).reshape(-1)
    valid = s > thr
    kpt = float(s[valid].mean()) if valid.any() else 0.0
    return kpt * float(box_score)


def to_coco_results(image_ids, keypoints, scores, category_id=1) -> list[dict]:
    """COCO keypoint result dicts; ``keypoints`` (N, K, 3) with the per-joint score as third value.

    ``category_id``: one id for all, or one per result (AP-10K: the species of each box).
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    cats = [category_id] * len(kp) if np.isscalar(category_id) else list(category_id)
    return [{"image_id": int(i), "category_id": int(cats[n]),
             "keypoints": [float(v) for v in kp[n].reshape(-1)], "score": float(scores[n])}
            for n, i in enumerate(image_ids)]


def postprocess_people(people: list[dict], rescore_thr: float = 0.2, nms_thr: float = 0.9,
                       sigmas=None) -> list[dict]:
    """Group raw people by image, rescore, OKS-NMS; returns COCO result dicts.

    ``people``: dicts with image_id, keypoints (K, 3), area, bbox_score and optionally category_id
    (as returned by ``predict_dataset(..., postprocess=False)``). ``sigmas``: the keypoint set's OKS
    sigmas (None: COCO's).
    """
    sigmas = COCO_SIGMAS if sigmas is None else sigmas
    by_image: dict[int, list[dict]] = defaultdict(list)
    for p in people:
        by_image[int(p["image_id"])].append(p)
    results = []
    for image_id in sorted(by_image):
        group = by_image[image_id]
        kps = np.stack([np.asarray(p["keypoints"], dtype=np.float64) for p in group])
        scores = np.array([rescore(k[:, 2], p["bbox_score"], rescore_thr) for k, p in zip(kps, group)])
        areas = np.array([p["area"] for p in group], dtype=np.float64)
        keep = oks_nms(kps, scores, areas, nms_thr, sigmas) if nms_thr is not None and nms_thr < 1 \
            else np.arange(len(group))
        cats = [int(group[i].get("category_id", 1)) for i in keep]
        results += to_coco_results([image_id] * len(keep), kps[keep], scores[keep], cats)
    return results


@torch.no_grad()
def predict_batch(model_forward, imgs: torch.Tensor, flip_test: bool, flip_pairs) -> np.ndarray:
    """Heatmaps (N, K, h, w) float32 numpy; with flip test the mean of plain and mirrored passes."""
    heatmaps = model_forward(imgs)
    if flip_test:
        flipped = model_forward(imgs.flip(3))
        heatmaps = average_flip(heatmaps, flip_heatmaps(flipped, flip_pairs))
    return heatmaps.float().cpu().numpy()


@torch.no_grad()
def predict_dataset(model_forward, loader, eval_cfg, flip_pairs, progress: bool = False,
                    postprocess: bool = True, sigmas=None) -> list[dict]:
    """Run ``model_forward(imgs) -> heatmaps`` over ``loader`` and build results.

    ``imgs`` are handed over as the loader yields them (CPU); ``model_forward``
    moves them to its device and casts as it needs. ``model_forward`` may also be
    a :class:`~vitpose_scale.eval.ensemble.HeatmapEnsemble` (its averaged heatmaps are decoded). ``eval_cfg`` is an
    :class:`EvalConfig` (flip_test, decode, blur_kernel, rescore_thr, oks_nms_thr).
    Returns COCO result dicts for this loader's shard (``postprocess=True``) or
    the raw per-box people (``postprocess=False``, for gathering across ranks).
    """
    from tqdm import tqdm

    people = []
    for batch in tqdm(loader, desc="predict", disable=not progress, dynamic_ncols=True):
        imgs = batch["img"]
        # An object with predict(batch, flip_test, flip_pairs) (HeatmapEnsemble: members crop at their
        # own sizes, so it takes the whole batch); no import of it here: ensemble.py imports this module.
        if hasattr(model_forward, "predict"):
            heatmaps = model_forward.predict(batch, eval_cfg.flip_test, flip_pairs)
        else:
            heatmaps = predict_batch(model_forward, imgs, eval_cfg.flip_test, flip_pairs)
        coords, maxvals = decode_heatmaps(heatmaps, batch["center"], batch["scale"], batch.get("rotation"),
                                          image_size=tuple(imgs.shape[-2:]), method=eval_cfg.decode,
                                          kernel=eval_cfg.blur_kernel)
        kps = np.concatenate([coords, maxvals], axis=2)
        scales = np.asarray(batch["scale"], dtype=np.float64)
        for n in range(len(kps)):
            people.append({
                "image_id": int(batch["image_id"][n]),
                "category_id": int(batch["category_id"][n]) if "category_id" in batch else 1,
                "keypoints": kps[n],
                "area": float(scales[n, 0] * scales[n, 1]),  # padded box, as the reference
                "bbox_score": float(batch["bbox_score"][n]),
                "center": np.asarray(batch["center"][n], dtype=np.float32),
                "scale": scales[n].astype(np.float32),
                "index": int(batch["index"][n]),
            })
    if not postprocess:
        return people
    return postprocess_people(people, eval_cfg.rescore_thr, eval_cfg.oks_nms_thr, sigmas)
