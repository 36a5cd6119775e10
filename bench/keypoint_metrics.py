"""Benchmark: the evaluator on every OKS keypoint set, ours vs a reference one can run here.

    python bench/keypoint_metrics.py --images 5000 --repeats 7 --out bench/keypoint_metrics_cpu.json
    python bench/keypoint_metrics.py --smoke                 # 200 images, 2 repeats, no file: < 20 s
    python bench/keypoint_metrics.py --sets aic ap10k --repeats 5

For each set (``--sets``, default all) both tools score the same synthetic set of that skeleton
(joint count, sigmas, evaluation rules of ``vitpose_scale.keypoints.get_spec(name)``) and must give
the same stats to 1e-12 (``equal`` in the JSON; the run fails after writing the JSON otherwise):

* ``aic`` (14 joints, use_area=False), ``ap10k`` / ``apt36k`` (17 animal joints, 54 / 30
  categories, one species an image), ``ochuman`` (COCO joints, xtcocotools rules),
  ``coco_wholebody`` (133 joints in keypoints / foot_kpts / face_kpts / lefthand_kpts /
  righthand_kpts, results in mmpose's layout): ours is ``vitpose_scale.eval.scoring.oks_evaluator``
  (the evaluator training and `eval` build from the set's ``evaluation``); the reference is
  pycocotools ``COCOeval(iouType='keypoints')`` with ``params.kpt_oks_sigmas`` set, on the input
  rewritten by ``_pycocotools_form`` of tests/test_keypoint_metrics.py (imported from there: the
  rewrite the tests prove makes pycocotools compute exactly what xtcocotools computes).  For
  COCO-WholeBody that is six pycocotools runs, one per part (body, foot, face, lefthand,
  righthand: that part's field copied into 'keypoints', its sigma slice and score) plus the
  wholebody concatenation, as mmpose's TopDownCocoWholeBodyDataset runs xtcocotools; ours is the
  six part evaluators on the one results list (as ``scoring.evaluate`` runs them).  xtcocotools
  itself is not installed here.
* ``crowdpose``: faster-coco-eval ``COCOeval_faster(iouType='keypoints_crowd', use_area=False)``
  on the CrowdPose-like set of :func:`crowdpose_set` (made from the COCO people of
  ``make_eval_set``: 14 of the 17 joints, a crowdIndex per image, GT 'area' = w * h * 0.53 and only
  results with a visible joint, so that faster-coco-eval's C++ core and xtcocotools agree).

Timing, per repeat and tool: from the results list to the stats: load results + evaluate +
accumulate + summarize (the CrowdPose splits included); GT indexes are built once outside the
timing (``gt_build_s``: ours = the evaluator(s), reference = COCO(gt) of the rewritten GT).  Each run
gets a fresh copy of the results made outside the timing (loadRes writes into them).  The
reference's per-run rewrite of the results (``_pycocotools_form``) is NOT in ``reference_s`` (nor
in ``ratio`` = reference_s / ours_s); it is timed on its own as ``reference_prep_s``
(``ratio_incl_prep`` counts it).  The GT rewrite is one-off preparation, not timed.  The tools run
interleaved (the order alternates per repeat) and medians are reported.

The synthetic sets (:func:`skeleton_set`): people of log-uniform size (18 to 460 px tall) placed
from a template of the skeleton (the COCO template; AIC: 14 of its joints; COCO-WholeBody: feet,
face and hands placed around ankles, nose and wrists), joints labelled v=0/1/2 (20/10/70 %), 15 %
with the lower body unlabelled, 3 % with no joint, 35 % of the WholeBody people without a given
part (face, a hand, ...); 90 % detected with joint noise proportional to the joint's sigma (noise
scale * sigma / median COCO sigma: OKS as in the COCO synthetic set), 25 % of
those twice (worse duplicate), crowd regions (iscrowd=1) on 5 % of the images with people found
inside, 1 false positive an image on average, 3 % of the images with 21-40 more (beyond maxDets),
5 % with tied scores, 3 % of the results given another category, results shuffled.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import io
import json
import os
import platform
import statistics
import sys
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vitpose_scale.eval.coco_eval import CROWD_STAT_NAMES, PART_FIELDS, STAT_NAMES  # noqa: E402
from vitpose_scale.eval.oks import COCO_SIGMAS  # noqa: E402
from vitpose_scale.eval.scoring import oks_evaluator, split_parts  # noqa: E402
from vitpose_scale.eval.synthetic_eval import _TEMPLATE, make_eval_set  # noqa: E402
from vitpose_scale.keypoints import get_spec  # noqa: E402

SETS = ["aic", "ap10k", "apt36k", "ochuman", "crowdpose", "coco_wholebody"]
# categories of the animal sets: AP-10K has 54 species, APT-36K 30; ids 1..n, one species an image
CATEGORIES = {"ap10k": 54, "apt36k": 30}
# the COCO joints that stand in for the 14 of AIC / CrowdPose: shoulders .. ankles, nose, left eye
JOINTS = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 0, 1]
# COCO-WholeBody parts placed around a body joint of the template: (anchor joints, spread)
_ANCHORS = {"foot": ([15, 15, 15, 16, 16, 16], 0.03), "face": ([0] * 68, 0.05),
            "lefthand": ([9] * 21, 0.05), "righthand": ([10] * 21, 0.05)}


def _machine():
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    vers = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("pycocotools", "faster-coco-eval"):
        try:
            from importlib.metadata import version
            vers[mod.replace("-", "_")] = version(mod)
        except Exception:  # noqa: BLE001 - informational only
            vers[mod.replace("-", "_")] = "?"
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "versions": vers}


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def _test_rewrite():
    """``_pycocotools_form`` of tests/test_keypoint_metrics.py, imported from the file."""
    path = os.path.join(ROOT, "tests", "test_keypoint_metrics.py")
    spec = importlib.util.spec_from_file_location("_bench_test_keypoint_metrics", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._pycocotools_form


# ------------------------------------------------------------------------ synthetic sets


def crowdpose_set(n_img, seed):
    """(gt, results) of a CrowdPose-like synthetic set (see the module docstring)."""
    gt, results = make_eval_set(n_img, seed=seed)
    rng = np.random.default_rng(seed + 1)
    idx = np.array([[3 * j, 3 * j + 1, 3 * j + 2] for j in JOINTS]).reshape(-1)
    for im in gt["images"]:
        im["crowdIndex"] = float(rng.uniform(0, 1))
    for a in gt["annotations"]:
        kp = np.asarray(a["keypoints"])[idx]
        a["keypoints"] = kp.tolist()
        a["num_keypoints"] = int((kp[2::3] > 0).sum())
        a["area"] = a["bbox"][2] * a["bbox"][3] * 0.53
    for c in gt["categories"]:
        c["keypoints"] = [c["keypoints"][j] for j in JOINTS]
        c.pop("skeleton", None)
    out = []
    for r in results:
        kp = np.asarray(r["keypoints"])[idx]
        if (kp[2::3] > 0).any():
            out.append(dict(r, keypoints=kp.tolist()))
    return gt, out


def _template(spec):
    """(K, 2) box-normalised joint positions of a standing member of the set."""
    k = spec.num_keypoints
    if not spec.parts:
        return {17: _TEMPLATE, 14: _TEMPLATE[JOINTS]}[k].copy()
    rng = np.random.default_rng(133)
    t = np.zeros((k, 2))
    for part, (a, b) in spec.parts.items():
        if part == "body":
            t[a:b] = _TEMPLATE
        else:
            anchors, spread = _ANCHORS[part]
            t[a:b] = _TEMPLATE[anchors] + rng.uniform(-spread, spread, (b - a, 2))
    return t


def skeleton_set(name, n_img, seed, crowd_frac=0.05, empty_frac=0.1, zero_vis_frac=0.03, many_det_frac=0.03,
                 tie_frac=0.05, fp_rate=1.0, other_cat_frac=0.03, part_missing=0.35):
    """(gt, results) of a synthetic set of keypoint set ``name`` (see the module docstring)."""
    spec = get_spec(name)
    k, sig = spec.num_keypoints, spec.sigma_array
    use_area = spec.evaluation.get("use_area", True)
    tmpl = _template(spec)
    rel = sig / np.median(COCO_SIGMAS)  # joint noise ~ sigma: OKS terms as in the COCO set
    cats = list(range(1, CATEGORIES.get(name, 1) + 1))
    lower = list(spec.lower_body_ids)
    parts = {p: r for p, r in spec.parts.items() if p != "body"}
    body = spec.parts.get("body", (0, k))
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []

    def person(img_w, img_h, t=None):
        h = float(np.exp(rng.uniform(np.log(18.0), np.log(min(img_h, 460.0)))))
        w = h * rng.uniform(0.35, 0.75)
        x, y = rng.uniform(0, max(img_w - w, 1.0)), rng.uniform(0, max(img_h - h, 1.0))
        t = (tmpl if t is None else t) + rng.normal(0, 0.03, tmpl.shape)
        return np.stack([x + t[:, 0] * w, y + t[:, 1] * h], axis=1), (x, y, w, h)

    def det(xy, box, noise, score):
        pts = xy + rng.normal(0, 1, xy.shape) * (noise * np.sqrt(box[2] * box[3]) * rel)[:, None]
        conf = rng.uniform(0.2, 1.0, k)
        return np.concatenate([pts, conf[:, None]], axis=1).reshape(-1), float(np.clip(score, 1e-4, 1.0))

    def gt_fields(kp):
        if not parts:
            return {"keypoints": kp.reshape(-1).astype(int).tolist()}
        return {PART_FIELDS[p][0][0]: kp[a:b].reshape(-1).astype(int).tolist() for p, (a, b) in spec.parts.items()}

    ann_id = 1
    for i in range(n_img):
        img_id = i + 1
        img_w, img_h = (640, 480) if rng.random() < 0.6 else (480, 640)
        images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": img_w, "height": img_h})
        cat = cats[int(rng.integers(len(cats)))]
        n_people = 0 if rng.random() < empty_frac else int(min(rng.geometric(0.4), 15))
        dets = []
        for _ in range(n_people):
            xy, box = person(img_w, img_h)
            v = rng.choice([0, 1, 2], size=k, p=[0.2, 0.1, 0.7])
            if rng.random() < 0.15:
                v[lower] = 0  # truncated at the image border
            for a, b in parts.values():
                if rng.random() < part_missing:
                    v[a:b] = 0  # no face / hand / foot labels
            if rng.random() < zero_vis_frac:
                v[:] = 0
            kp = np.zeros((k, 3))
            lab = v > 0
            kp[lab, :2] = np.round(xy[lab])
            kp[:, 2] = v
            a = {"id": ann_id, "image_id": img_id, "category_id": cat, "iscrowd": 0, **gt_fields(kp),
                 "num_keypoints": int(lab[body[0]:body[1]].sum()), "bbox": [round(float(u), 2) for u in box]}
            if use_area:
                a["area"] = round(box[2] * box[3] * rng.uniform(0.45, 0.75), 2)
            anns.append(a)
            ann_id += 1
            if rng.random() < 0.9:
                noise = rng.uniform(0.002, 0.06)
                dets.append(det(xy, box, noise, 1.0 - 6 * noise + rng.normal(0, .08)))
                if rng.random() < 0.25:
                    noise = rng.uniform(0.02, 0.2)
                    dets.append(det(xy, box, noise, 0.7 - 2 * noise + rng.normal(0, .1)))
        if rng.random() < crowd_frac:
            cw, ch = rng.uniform(100, img_w * 0.9), rng.uniform(60, img_h * 0.6)
            cx, cy = rng.uniform(0, img_w - cw), rng.uniform(0, img_h - ch)
            a = {"id": ann_id, "image_id": img_id, "category_id": cat, "iscrowd": 1,
                 **gt_fields(np.zeros((k, 3))), "num_keypoints": 0,
                 "bbox": [round(float(u), 2) for u in (cx, cy, cw, ch)]}
            if use_area:
                a["area"] = round(cw * ch * rng.uniform(0.3, 0.7), 2)
            anns.append(a)
            ann_id += 1
            for _ in range(rng.integers(1, 5)):  # people found inside the crowd
                h = rng.uniform(30, ch)
                w = min(h * 0.5, cw)
                box = (cx + rng.uniform(0, cw - w), cy + rng.uniform(0, ch - h), w, h)
                xy = np.stack([box[0] + tmpl[:, 0] * box[2], box[1] + tmpl[:, 1] * box[3]], axis=1)
                dets.append(det(xy, box, 0.05, rng.uniform(0.2, 0.9)))
        n_fp = int(rng.poisson(fp_rate))
        if rng.random() < many_det_frac:
            n_fp += int(rng.integers(21, 41))
        for _ in range(n_fp):
            xy, box = person(img_w, img_h)
            dets.append(det(xy, box, 0.1, rng.uniform(0.0, 0.6) ** 2))
        ties = rng.random() < tie_frac
        for kp, score in dets:
            c = cat if len(cats) == 1 or rng.random() >= other_cat_frac else cats[int(rng.integers(len(cats)))]
            results.append({"image_id": img_id, "category_id": c, "keypoints": kp.tolist(),
                            "score": (round(score, 1) or 0.1) if ties else score})
    order = rng.permutation(len(results))
    results = split_parts(spec, [results[j] for j in order])  # mmpose's layout: a field a part
    names = list(spec.names[body[0]:body[1]])
    gt = {"info": {"description": f"vitpose_scale synthetic {name} set", "seed": int(seed)}, "images": images,
          "annotations": anns,
          "categories": [{"id": c, "name": f"{name}-{c}", "supercategory": name, "keypoints": names} for c in cats]}
    return gt, results


# ------------------------------------------------------------------------ the runs


def run_pycocotools(coco_gt, results, sigmas):
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        dt = coco_gt.loadRes(results)
        e = COCOeval(coco_gt, dt, "keypoints")
        e.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats[:10])


def run_faster(coco_gt, results, sigmas):
    from faster_coco_eval import COCOeval_faster

    with _quiet():
        dt = coco_gt.loadRes(results)
        e = COCOeval_faster(coco_gt, dt, "keypoints_crowd", kpt_oks_sigmas=list(sigmas), use_area=False,
                            print_function=lambda *a, **k: None)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats[:9])


def _pyco_gt(gt):
    from pycocotools.coco import COCO

    with _quiet():
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
    return coco


def _fresh(results):
    return [dict(r) for r in results]  # loadRes only sets top-level keys ('id', 'area', 'bbox', ...)


class Case:
    """One set's two tools: ``ours(results) -> {label: stats}``; ``prep(results) -> input`` (the
    reference's rewrite, timed apart) and ``ref(input) -> {label: stats}``."""

    def __init__(self, name, gt, results, ours, ref, prep, copy_ref, reference, build, what, stat_names):
        self.name, self.gt, self.results = name, gt, results
        self.ours, self.ref, self.prep, self.copy_ref = ours, ref, prep, copy_ref
        self.reference, self.build, self.what, self.stat_names = reference, build, what, stat_names


def make_case(name, n_img, seed, rewrite):
    spec = get_spec(name)
    t0 = time.perf_counter()
    if name == "crowdpose":
        gt, results = crowdpose_set(n_img, seed)
    else:
        gt, results = skeleton_set(name, n_img, seed)
    gen_s = time.perf_counter() - t0
    sig = spec.sigma_array
    ev = spec.evaluation
    build = {}
    if name == "crowdpose":
        from faster_coco_eval import COCO as FCOCO

        t0 = time.perf_counter()
        ours_ev = oks_evaluator(spec, gt)
        build["ours"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        f_gt = FCOCO(copy.deepcopy(gt))
        build["reference"] = time.perf_counter() - t0
        case = Case(name, gt, results, lambda r: {"crowdpose": ours_ev.evaluate(r)},
                    lambda r: {"crowdpose": run_faster(f_gt, r, sig)}, None, copy.deepcopy,
                    "faster-coco-eval COCOeval_faster(iouType='keypoints_crowd', use_area=False)", build,
                    "CrowdPose mode (xtcocotools keypoints_crowd, use_area=False): load results + evaluate + "
                    "accumulate + summarize incl. the easy/medium/hard splits; the set is made in the form both "
                    "tools read alike (no per-run rewrite: reference_prep_s null); copies by deepcopy",
                    CROWD_STAT_NAMES)
    else:
        parts = ([(p, PART_FIELDS[p][0], PART_FIELDS[p][1], slice(a, b)) for p, (a, b) in spec.parts.items()]
                 + [("wholebody", PART_FIELDS["wholebody"][0], PART_FIELDS["wholebody"][1], slice(None))]
                 if ev.get("mode") == "wholebody" else [(name, ("keypoints",), "score", slice(None))])
        use_area = ev.get("use_area", True)
        t0 = time.perf_counter()
        evs = {lab: oks_evaluator(spec, gt, lab if ev.get("mode") == "wholebody" else None)
               for lab, *_ in parts}
        build["ours"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cgts = {lab: _pyco_gt(rewrite(gt, [], fields, score_key, use_area=use_area)[0])
                for lab, fields, score_key, _ in parts}
        build["reference"] = time.perf_counter() - t0  # incl. the GT rewrite
        stub = {"annotations": []}

        def ours(r):
            return {lab: e.evaluate(r) for lab, e in evs.items()}

        def prep(r):
            return {lab: rewrite(stub, r, fields, score_key, use_area=use_area)[1]
                    for lab, fields, score_key, _ in parts}

        def ref(inputs):
            return {lab: run_pycocotools(cgts[lab], inputs[lab], sig[sl]) for lab, _, _, sl in parts}

        many = len(parts) > 1
        case = Case(name, gt, results, ours, ref, prep, lambda d: {k: _fresh(v) for k, v in d.items()},
                    ("pycocotools COCOeval(iouType='keypoints') with kpt_oks_sigmas, on _pycocotools_form of the "
                     "input" + (", one run per part + wholebody (6)" if many else "")), build,
                    (f"xtcocotools iouType {'keypoints_<part> x 6' if many else 'keypoints'}, use_area={use_area}, "
                     f"{len(gt['categories'])} categor{'ies' if len(gt['categories']) > 1 else 'y'}: load results "
                     f"+ evaluate + accumulate + summarize" + (" of each part" if many else "")),
                    STAT_NAMES)
    case.gen_s = gen_s
    return case


def _flat(stats):
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in stats.values()])


def bench_case(case, repeats):
    times = {"ours": [], "reference": []}
    prep_s = []
    stats = {}
    ref_input = case.prep(case.results) if case.prep is not None else case.results
    for rep in range(repeats):
        for tool in (["ours", "reference"] if rep % 2 == 0 else ["reference", "ours"]):
            if tool == "ours":
                res = _fresh(case.results)
                t0 = time.perf_counter()
                stats[tool] = case.ours(res)
            else:
                if case.prep is not None:
                    t0 = time.perf_counter()
                    ref_input = case.prep(case.results)  # fresh dicts: its own copy
                    prep_s.append(time.perf_counter() - t0)
                    res = ref_input
                else:
                    res = case.copy_ref(ref_input)
                t0 = time.perf_counter()
                stats[tool] = case.ref(res)
            times[tool].append(time.perf_counter() - t0)
        print(f"  {case.name} {rep + 1}/{repeats}: ours {times['ours'][-1]:.3f}s, reference "
              f"{times['reference'][-1]:.3f}s" + (f" (+ rewrite {prep_s[-1]:.3f}s)" if prep_s else ""), flush=True)
    diff = float(np.abs(_flat(stats["ours"]) - _flat(stats["reference"])).max())
    med = {k: statistics.median(v) for k, v in times.items()}
    prep = statistics.median(prep_s) if prep_s else None
    n_ref = (len(next(iter(ref_input.values()))) if isinstance(ref_input, dict) else len(ref_input))
    return {
        "ours_s": med["ours"], "reference": case.reference, "reference_s": med["reference"],
        "ratio": med["reference"] / med["ours"], "equal": diff <= 1e-12,
        "n_gt": len(case.gt["annotations"]), "n_results": len(case.results),
        "n_images": len(case.gt["images"]), "n_categories": len(case.gt["categories"]),
        "n_results_reference": n_ref,
        "reference_prep_s": prep,
        "ratio_incl_prep": (med["reference"] + prep) / med["ours"] if prep is not None else None,
        "what": case.what,
        "timing": "median of interleaved repeats; GT indexes prebuilt (gt_build_s); the reference's per-run "
                  "rewrite of the results is not in reference_s (timed apart as reference_prep_s)",
        "all_s": times, "reference_prep_all_s": prep_s or None, "gt_build_s": case.build,
        "generate_s": case.gen_s, "max_abs_stat_diff": diff,
        "stats": {lab: {n: float(x) for n, x in zip(case.stat_names, v)} for lab, v in stats["ours"].items()},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=["all"], choices=["all"] + SETS, help="default: all")
    ap.add_argument("--images", type=int, default=None, help="synthetic images a set (default 5000; smoke 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=None, help="timed runs a tool (default 7; smoke 2)")
    ap.add_argument("--smoke", action="store_true", help="200 images, 2 repeats, no JSON unless --out: a quick check")
    ap.add_argument("--out", default=None, help="default bench/keypoint_metrics_cpu.json (smoke: none)")
    args = ap.parse_args(argv)
    images = args.images or (200 if args.smoke else 5000)
    repeats = args.repeats or (2 if args.smoke else 7)
    out_path = args.out if args.out is not None else (None if args.smoke else "bench/keypoint_metrics_cpu.json")
    sets = SETS if "all" in args.sets else [s for s in SETS if s in args.sets]
    warnings.simplefilter("ignore", UserWarning)
    rewrite = _test_rewrite()
    entries = {}
    t_all = time.perf_counter()
    for name in sets:
        case = make_case(name, images, args.seed, rewrite)
        print(f"{name}: {images} images, {len(case.gt['annotations'])} GT, {len(case.results)} results "
              f"(generated in {case.gen_s:.1f}s)", flush=True)
        entries[name] = e = bench_case(case, repeats)
        print(f"{name}: ours {e['ours_s']:.3f}s, reference {e['reference_s']:.3f}s -> {e['ratio']:.1f}x; "
              f"equal={e['equal']} (max diff {e['max_abs_stat_diff']:.1e})", flush=True)
        del case
    print("\nset              ours_s  reference_s  ratio  (incl. rewrite)  equal")
    for name, e in entries.items():
        incl = f"{e['ratio_incl_prep']:.1f}" if e["ratio_incl_prep"] is not None else "-"
        print(f"{name:15s} {e['ours_s']:7.3f} {e['reference_s']:12.3f} {e['ratio']:6.1f} {incl:>16s}  {e['equal']}")
    print(f"total {time.perf_counter() - t_all:.1f}s")
    out = {"command": "python bench/keypoint_metrics.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "machine": _machine(),
           "config": {"images": images, "seed": args.seed, "repeats": repeats, "sets": sets,
                      "notes": {"apt36k": "the AP-10K protocol (same sigmas and rules, xtcocotools keypoints, "
                                          "use_area=True); 30 categories instead of 54",
                                "ochuman": "COCO joints and sigmas, scored by xtcocotools' rules "
                                           "(compat='xtcocotools', use_area=True)"}},
           "sets": entries}
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {out_path}")
    bad = [n for n, e in entries.items() if not e["equal"]]
    if bad:
        raise SystemExit(f"stats differ from the reference for {bad}")
    return out


if __name__ == "__main__":
    main()
