"""How a keypoint set is scored: the one place that reads ``KeypointSpec.evaluation``.

* ``metric: oks`` — OKS AP/AR with the set's sigmas as the official code calls xtcocotools
  (``use_area``; ``mode`` ``keypoints`` (10 stats), ``keypoints_crowd`` (CrowdPose, 9 stats) or
  ``wholebody`` (body/foot/face/hands/whole body, 10 stats each)); ``reference`` says whose rules:
  pycocotools (COCO) or xtcocotools (every other set). Results are rescored and OKS-NMSed.
* ``metric: pckh`` — MPII PCKh (:mod:`vitpose_scale.eval.pckh`): one prediction per ground-truth
  person, in the dataset's order; no rescoring or NMS.

Stats come back as a dict; :func:`primary` names the one that picks the best checkpoint.
"""
from __future__ import annotations

import numpy as np

from vitpose_scale.keypoints import KeypointSpec

# CrowdPose's official stat names -> the keys used in metrics.jsonl and stats.json
_CROWD_KEYS = {"AP .5": "AP50", "AP .75": "AP75", "AR .5": "AR50", "AR .75": "AR75"}


def primary(spec: KeypointSpec) -> str:
    """The stat that ranks checkpoints: AP for OKS sets (COCO-WholeBody: the whole body's), PCKh
    (the official "Mean") for MPII."""
    return "PCKh" if spec.evaluation["metric"] == "pckh" else "AP"


def postprocess(spec: KeypointSpec, people: list[dict], eval_cfg) -> list[dict]:
    """Raw gathered people -> result entries as the set's evaluation expects them."""
    from vitpose_scale.eval.postprocess import postprocess_people, to_coco_results

    if spec.evaluation["metric"] == "pckh":  # one result per GT box, in dataset order
        people = sorted(people, key=lambda p: p["index"])
        return to_coco_results([p["image_id"] for p in people], [p["keypoints"] for p in people],
                               [p["bbox_score"] for p in people], [p.get("category_id", 1) for p in people])
    return postprocess_people(people, eval_cfg.rescore_thr, eval_cfg.oks_nms_thr, spec.sigma_array)


def split_parts(spec: KeypointSpec, results: list[dict]) -> list[dict]:
    """Whole-body results (all joints in ``keypoints``) -> the official layout: each part in its
    own field (``keypoints`` = body, ``foot_kpts``, ...), as mmpose writes them. Results already
    split are returned as they are."""
    from vitpose_scale.eval.coco_eval import PART_FIELDS

    k3 = 3 * spec.num_keypoints
    if not spec.parts or not results or any(len(r.get("keypoints", ())) != k3 for r in results):
        return results
    out = []
    for r in results:
        entry = {key: value for key, value in r.items() if key != "keypoints"}
        for part, (start, stop) in spec.parts.items():
            entry[PART_FIELDS[part][0][0]] = list(r["keypoints"][3 * start:3 * stop])
        out.append(entry)
    return out


def oks_evaluator(spec: KeypointSpec, gt, part: str | None = None):
    """The :class:`KeypointEvaluator` of an OKS set (of one part of it, for COCO-WholeBody)."""
    from vitpose_scale.eval.coco_eval import KeypointEvaluator

    e = spec.evaluation
    sigmas = spec.sigma_array
    if part is not None and part != "wholebody":
        start, stop = spec.parts[part]
        sigmas = sigmas[start:stop]
    return KeypointEvaluator(gt, sigmas=sigmas, use_area=e.get("use_area", True),
                             crowd=e.get("mode") == "keypoints_crowd", part=part,
                             compat=e.get("reference", "xtcocotools"))


def _named(spec: KeypointSpec, stats) -> dict[str, float]:
    from vitpose_scale.eval.coco_eval import CROWD_STAT_NAMES, STAT_NAMES

    names = CROWD_STAT_NAMES if spec.evaluation.get("mode") == "keypoints_crowd" else STAT_NAMES
    return {_CROWD_KEYS.get(n, n): float(v) for n, v in zip(names, np.asarray(stats))}


def evaluate(spec: KeypointSpec, gt, results, verbose: bool = False) -> dict[str, float]:
    """Stats by name; COCO-WholeBody: the whole body's under the plain names, each part's as
    ``<part>/<stat>``. ``verbose``: print the reference tool's lines (per part, titled)."""
    if spec.evaluation["metric"] == "pckh":
        from vitpose_scale.eval import pckh

        return pckh.score_results(gt, results, verbose=verbose)
    if spec.evaluation.get("mode") != "wholebody":
        ev = oks_evaluator(spec, gt)
        stats = ev.evaluate(results)
        if verbose:
            print("\n".join(ev.summary_lines()))
        return _named(spec, stats)
    from vitpose_scale.eval.coco_eval import _load_json

    gt = _load_json(gt, "GT annotation")  # read once for the six evaluations
    results = split_parts(spec, _load_json(results, "results"))
    out: dict[str, float] = {}
    for part in [*spec.parts, "wholebody"]:
        ev = oks_evaluator(spec, gt, part)
        stats = _named(spec, ev.evaluate(results))
        if verbose:
            print(f"keypoints_{part}:")
            print("\n".join(ev.summary_lines()))
        out.update(stats if part == "wholebody" else {f"{part}/{k}": v for k, v in stats.items()})
    return out


def score(spec: KeypointSpec, gt, results: list[dict], dataset=None) -> dict[str, float]:
    """Stats by name of ``results`` against the ground truth ``gt`` (path or dict) of ``dataset``."""
    if spec.evaluation["metric"] == "pckh":
        from vitpose_scale.eval import pckh

        return pckh.score_dataset(gt, results, dataset)
    return evaluate(spec, gt, results)


def report_lines(spec: KeypointSpec, stats: dict[str, float]) -> list[str]:
    """The lines the set's reference tool prints for ``stats`` (a dict from :func:`score`)."""
    if spec.evaluation["metric"] == "pckh":
        from vitpose_scale.eval import pckh

        return pckh.table_lines(stats)
    from vitpose_scale.eval.coco_eval import CROWD_STAT_NAMES, STAT_NAMES, format_stats

    compat = spec.evaluation.get("reference", "xtcocotools")
    if spec.evaluation.get("mode") == "keypoints_crowd":
        return format_stats([stats[_CROWD_KEYS.get(n, n)] for n in CROWD_STAT_NAMES], compat=compat)
    lines = []
    for part in [*spec.parts, None]:
        prefix = f"{part}/" if part else ""
        if spec.parts:
            lines.append(f"keypoints_{part or 'wholebody'}:")
        lines += format_stats([stats[prefix + n] for n in STAT_NAMES], compat=compat)
    return lines
