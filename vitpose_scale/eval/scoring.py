"""How a keypoint set is scored: the one place that reads ``KeypointSpec.evaluation``.

* ``metric: oks`` — OKS AP/AR with the set's sigmas as the official code calls xtcocotools
  (``use_area``; ``mode`` ``keypoints`` (10 stats), ``keypoints_crowd`` (CrowdPose, 9 stats) or
  ``wholebody`` (body/foot/face/hands/whole body, 10 stats each)); results are rescored and OKS-NMSed.
* ``metric: pckh`` — MPII PCKh (:mod:`vitpose_scale.eval.pckh`): one prediction per ground-truth
  person, in the dataset's order; no rescoring or NMS.

Stats come back as a dict; :func:`primary` names the one that picks the best checkpoint.
"""
from __future__ import annotations

import numpy as np

from vitpose_scale.keypoints import KeypointSpec


def primary(spec: KeypointSpec) -> str:
    """The stat that ranks checkpoints: AP for OKS sets, PCKh (the official "Mean") for MPII."""
    return "PCKh" if spec.evaluation["metric"] == "pckh" else "AP"


def postprocess(spec: KeypointSpec, people: list[dict], eval_cfg) -> list[dict]:
    """Raw gathered people -> result entries as the set's evaluation expects them."""
    from vitpose_scale.eval.postprocess import postprocess_people, to_coco_results

    if spec.evaluation["metric"] == "pckh":  # one result per GT box, in dataset order
        people = sorted(people, key=lambda p: p["index"])
        return to_coco_results([p["image_id"] for p in people], [p["keypoints"] for p in people],
                               [p["bbox_score"] for p in people], [p.get("category_id", 1) for p in people])
    return postprocess_people(people, eval_cfg.rescore_thr, eval_cfg.oks_nms_thr, spec.sigma_array)


def score(spec: KeypointSpec, gt, results: list[dict], dataset=None) -> dict[str, float]:
    """Stats by name of ``results`` against the ground truth ``gt`` (path or dict)."""
    from vitpose_scale.eval.coco_eval import STAT_NAMES, KeypointEvaluator

    stats = KeypointEvaluator(gt, sigmas=spec.sigma_array).evaluate(results)
    return dict(zip(STAT_NAMES, (float(s) for s in np.asarray(stats))))
