"""Benchmark: vectorised COCO keypoint evaluation vs pycocotools vs faster-coco-eval.

    python bench/coco_eval.py --images 5000 --out bench/coco_eval.json

All three evaluate the same synthetic set (vitpose_scale.eval.synthetic_eval)
in one process; each repeat times load-results + evaluate + accumulate +
summarize from the in-memory results list (GT indexes are built once, outside
the timing, and reported separately).  The tools run interleaved per repeat
and the median is reported.  The 10 stats must agree to 1e-12.  A second
micro-benchmark times OKS alone: pycocotools computeOks over every image vs
one vectorised oks_pairs call over the same (detection, GT) pairs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vitpose_scale.eval.coco_eval import STAT_NAMES, KeypointEvaluator  # noqa: E402
from vitpose_scale.eval.oks import COCO_SIGMAS, GtKeypoints, oks_pairs  # noqa: E402
from vitpose_scale.eval.synthetic_eval import make_eval_set  # noqa: E402


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
    for mod in ("pycocotools", "faster_coco_eval"):
        try:
            from importlib.metadata import version
            vers[mod] = version(mod.replace("_", "-"))
        except Exception:  # noqa: BLE001 - informational only
            vers[mod] = "?"
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "versions": vers}


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def run_ours(ev, results):
    return ev.evaluate(results)


def run_pycocotools(coco_gt, results):
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        dt = coco_gt.loadRes(results)
        e = COCOeval(coco_gt, dt, "keypoints")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats[:10])


def run_faster(coco_gt, results):
    from faster_coco_eval import COCOeval_faster

    with _quiet():
        dt = coco_gt.loadRes(results)
        e = COCOeval_faster(coco_gt, dt, "keypoints", print_function=lambda *a, **k: None)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats[:10])


def oks_micro(gt, results, coco_gt, repeats):
    """computeOks over all images vs one vectorised call on the same pairs."""
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        e = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "keypoints")
        e.params.imgIds = sorted(coco_gt.getImgIds())
        e._prepare()
    img_ids = e.params.imgIds
    # the same pairs, built from the prepared per-image lists (sorted, <= 20 dts)
    dts_all, gts_all, p_dt, p_gt = [], [], [], []
    for img in img_ids:
        gts, dts = e._gts[img, 1], e._dts[img, 1]
        dts = [dts[i] for i in np.argsort([-d["score"] for d in dts], kind="mergesort")][:20]
        if gts and dts:
            d0, g0 = len(dts_all), len(gts_all)
            p_dt.append(np.repeat(np.arange(len(dts)), len(gts)) + d0)
            p_gt.append(np.tile(np.arange(len(gts)), len(dts)) + g0)
            dts_all += dts
            gts_all += gts
    xy = np.array([d["keypoints"] for d in dts_all], dtype=np.float64).reshape(-1, 17, 3)[:, :, :2].copy()
    gtk = GtKeypoints(np.array([g["keypoints"] for g in gts_all], dtype=np.float64).reshape(-1, 17, 3),
                      [g["area"] for g in gts_all], [g["bbox"] for g in gts_all])
    p_dt, p_gt = np.concatenate(p_dt), np.concatenate(p_gt)

    t_ref, t_ours = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ref = [e.computeOks(img, 1) for img in img_ids]
        t_ref.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours = oks_pairs(xy, gtk, p_dt, p_gt, COCO_SIGMAS)
        t_ours.append(time.perf_counter() - t0)
    ref_flat = np.concatenate([np.asarray(r).ravel() for r in ref if len(r)])
    assert np.array_equal(ref_flat, ours), "vectorised OKS differs from computeOks"
    return {"pairs": int(p_dt.shape[0]), "pycocotools_computeOks_s": statistics.median(t_ref),
            "ours_oks_pairs_s": statistics.median(t_ours),
            "speedup": statistics.median(t_ref) / statistics.median(t_ours), "identical": True}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/coco_eval.json")
    ap.add_argument("--skip-faster", action="store_true", help="without faster-coco-eval")
    args = ap.parse_args(argv)

    from pycocotools.coco import COCO as PyCOCO

    t0 = time.perf_counter()
    gt, results = make_eval_set(args.images, seed=args.seed)
    t_gen = time.perf_counter() - t0
    print(f"synthetic set: {args.images} images, {len(gt['annotations'])} GT, {len(results)} results "
          f"(generated in {t_gen:.1f}s)")

    build = {}
    t0 = time.perf_counter()
    ev = KeypointEvaluator(gt)
    build["ours"] = time.perf_counter() - t0
    with _quiet():
        t0 = time.perf_counter()
        py_gt = PyCOCO()
        py_gt.dataset = copy.deepcopy(gt)
        py_gt.createIndex()
        build["pycocotools"] = time.perf_counter() - t0
    tools = {"ours": lambda r: run_ours(ev, r), "pycocotools": lambda r: run_pycocotools(py_gt, r)}
    if not args.skip_faster:
        from faster_coco_eval import COCO as FCOCO

        t0 = time.perf_counter()
        f_gt = FCOCO(copy.deepcopy(gt))
        build["faster_coco_eval"] = time.perf_counter() - t0
        tools["faster_coco_eval"] = lambda r: run_faster(f_gt, r)

    times = {k: [] for k in tools}
    stats = {}
    for rep in range(args.repeats):
        for name, fn in tools.items():
            # loadRes mutates entries (adds id/area/bbox): fresh copies, made untimed
            res = results if name == "ours" else copy.deepcopy(results)
            t0 = time.perf_counter()
            s = fn(res)
            times[name].append(time.perf_counter() - t0)
            stats[name] = s
        print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))

    ref = stats["pycocotools"]
    diffs = {k: float(np.abs(v - ref).max()) for k, v in stats.items()}
    for k, d in diffs.items():
        assert d <= 1e-12, f"{k} stats differ from pycocotools by {d}"

    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {f"{k}_over_ours": med[k] / med["ours"] for k in med if k != "ours"}
    oks = oks_micro(gt, results, py_gt, args.repeats)

    print()
    print(f"{'tool':<18} {'median s':>10} {'x ours':>8} {'GT build s':>11} {'max |dstat|':>12}")
    for k in tools:
        print(f"{k:<18} {med[k]:>10.3f} {med[k] / med['ours']:>8.1f} {build[k]:>11.3f} {diffs[k]:>12.1e}")
    print(f"OKS over {oks['pairs']} pairs: computeOks {oks['pycocotools_computeOks_s']:.3f}s, "
          f"oks_pairs {oks['ours_oks_pairs_s']:.4f}s ({oks['speedup']:.0f}x), identical values")
    print("stats: " + ", ".join(f"{n}={v:.4f}" for n, v in zip(STAT_NAMES, stats["ours"])))

    out = {
        "command": "python bench/coco_eval.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "what": "load results + evaluate + accumulate + summarize, GT index prebuilt, median of repeats",
        "machine": _machine(),
        "config": {"images": args.images, "seed": args.seed, "repeats": args.repeats,
                   "gt_annotations": len(gt["annotations"]), "results": len(results)},
        "median_s": med, "all_s": times, "gt_build_s": build, "ratios": ratios,
        "max_abs_stat_diff_vs_pycocotools": diffs,
        "stats": {n: float(v) for n, v in zip(STAT_NAMES, stats["ours"])},
        "oks_micro": oks,
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
