"""Benchmark: vectorised COCO keypoint evaluation vs pycocotools vs faster-coco-eval.

    python bench/coco_eval.py --images 5000 20000 --end-to-end --out bench/coco_eval.json

In-process mode (always): all three evaluate the same synthetic set
(vitpose_scale.eval.synthetic_eval) in one process; each repeat times
load-results + evaluate + accumulate + summarize from the in-memory results
list (GT indexes are built once, outside the timing, and reported separately).
A micro-benchmark times OKS alone: pycocotools computeOks over every image vs
one vectorised oks_pairs call over the same (detection, GT) pairs.

End-to-end mode (--end-to-end): the set is written to JSON files and every tool
runs as its own process, from process start to printed stats: ours is the
`vitpose-scale coco-eval` command, the others the few lines of their documented
API (COCO(gt), loadRes(results), evaluate, accumulate, summarize).  Each
child's wall time, CPU time and peak RSS (os.wait4 rusage) are recorded.

In both modes the tools run interleaved per repeat (the order rotates) and
medians are reported, so ratios compare runs made side by side on a noisy
machine; the 10 stats must equal pycocotools' exactly.
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
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

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


def in_process(gt, results, repeats, skip_faster):
    """Median seconds of load-results + evaluate + accumulate + summarize, GT prebuilt."""
    from pycocotools.coco import COCO as PyCOCO

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
    if not skip_faster:
        from faster_coco_eval import COCO as FCOCO

        t0 = time.perf_counter()
        f_gt = FCOCO(copy.deepcopy(gt))
        build["faster_coco_eval"] = time.perf_counter() - t0
        tools["faster_coco_eval"] = lambda r: run_faster(f_gt, r)

    times = {k: [] for k in tools}
    stats = {}
    names = list(tools)
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            # loadRes mutates entries (adds id/area/bbox): fresh copies, made untimed,
            # for every tool alike (a fresh copy also lies compactly in memory)
            res = copy.deepcopy(results)
            t0 = time.perf_counter()
            stats[name] = tools[name](res)
            times[name].append(time.perf_counter() - t0)
        print(f"  in-process {rep + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    diffs = _check_stats(stats)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "what": "load results + evaluate + accumulate + summarize, GT index prebuilt, median of repeats",
        "median_s": med, "all_s": times, "gt_build_s": build,
        "ratios": {f"{k}_over_ours": med[k] / med["ours"] for k in med if k != "ours"},
        "max_abs_stat_diff_vs_pycocotools": diffs,
        "stats": {n: float(v) for n, v in zip(STAT_NAMES, stats["ours"])},
        "oks_micro": oks_micro(gt, results, py_gt, repeats),
    }


def _check_stats(stats):
    ref = stats["pycocotools"]
    diffs = {k: float(np.abs(np.asarray(v) - ref).max()) for k, v in stats.items()}
    for k, d in diffs.items():
        assert d == 0.0, f"{k} stats differ from pycocotools by {d}"
    return diffs


# one process per tool and run: the documented few lines of each API, stats saved at full precision
_CHILD = {
    "pycocotools": """
import json, sys
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
gt = COCO(sys.argv[1])
e = COCOeval(gt, gt.loadRes(sys.argv[2]), "keypoints")
e.evaluate(); e.accumulate(); e.summarize()
json.dump([float(v) for v in e.stats], open(sys.argv[3], "w"))
""",
    "faster_coco_eval": """
import json, sys
from faster_coco_eval import COCO, COCOeval_faster
gt = COCO(sys.argv[1])
e = COCOeval_faster(gt, gt.loadRes(sys.argv[2]), "keypoints")
e.evaluate(); e.accumulate(); e.summarize()
json.dump([float(v) for v in e.stats], open(sys.argv[3], "w"))
""",
}


def _child_cmd(name, gt_path, res_path, out_path):
    if name == "ours":
        return [sys.executable, "-m", "vitpose_scale.cli", "coco-eval", "--gt", gt_path, "--results", res_path,
                "--out", out_path]
    return [sys.executable, "-c", _CHILD[name], gt_path, res_path, out_path]


# Forks and execs the measured command, then reports its own child's rusage.  A
# small launcher matters: a child forked from this (large) process would start
# with our memory high-water mark, and ru_maxrss survives exec.
_LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, ru = os.wait4(pid, 0)
print(json.dumps([time.perf_counter() - t0, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024,
                  os.waitstatus_to_exitcode(status)]))
"""


def _child_env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # as installed packages are: byte-compiled once (the untimed warm-up run writes
    # this repository's .pyc files; pip already compiled the other tools)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_child(cmd, log_path):
    """(wall s, CPU s, peak RSS MB) of one child process, from its start to its exit."""
    env = _child_env()
    with open(log_path, "w") as log:
        rep = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], stdout=subprocess.PIPE, stderr=log,
                             cwd=ROOT, env=env, text=True, check=True).stdout
    lines = rep.strip().splitlines()
    wall, cpu, rss_mb, code = json.loads(lines[-1])  # ru_maxrss is KiB on Linux
    if code != 0:
        with open(log_path) as f:
            raise RuntimeError(f"{' '.join(cmd[:4])} failed ({code}):\n{rep[-1000:]}{f.read()[-2000:]}")
    return wall, cpu, rss_mb


def end_to_end(gt, results, repeats, skip_faster, workdir):
    gt_path, res_path = os.path.join(workdir, "gt.json"), os.path.join(workdir, "results.json")
    with open(gt_path, "w") as f:
        json.dump(gt, f)
    with open(res_path, "w") as f:
        json.dump(results, f)
    names = ["ours", "pycocotools"] + ([] if skip_faster else ["faster_coco_eval"])
    wall, cpu, rss = ({k: [] for k in names} for _ in range(3))
    stats = {}
    for name in names:  # warm-up, untimed: page cache, byte code
        run_child(_child_cmd(name, gt_path, res_path, os.path.join(workdir, "warmup.json")),
                  os.path.join(workdir, f"{name}.log"))
    for rep in range(repeats):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            out = os.path.join(workdir, f"{name}.json")
            w, c, m = run_child(_child_cmd(name, gt_path, res_path, out), os.path.join(workdir, f"{name}.log"))
            wall[name].append(w)
            cpu[name].append(c)
            rss[name].append(m)
            with open(out) as f:
                got = json.load(f)
            stats[name] = np.asarray(list(got.values()) if isinstance(got, dict) else got[:10])
        print(f"  end-to-end {rep + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in wall.items()))
    diffs = _check_stats(stats)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "what": "separate process per run: interpreter start, imports, JSON parsing, GT index, "
                "evaluate, accumulate, summarize, printed stats; median of repeats",
        "files_mb": {"gt": os.path.getsize(gt_path) / 2 ** 20, "results": os.path.getsize(res_path) / 2 ** 20},
        "commands": {k: " ".join(_child_cmd(k, "GT", "RESULTS", "OUT")[:2]) + (" ..." if k != "ours" else "")
                     for k in names},
        "median_wall_s": med, "median_cpu_s": med_cpu, "all_wall_s": wall, "all_cpu_s": cpu,
        "peak_rss_mb": {k: max(v) for k, v in rss.items()},
        "ratios_wall": {f"{k}_over_ours": med[k] / med["ours"] for k in names if k != "ours"},
        "ratios_cpu": {f"{k}_over_ours": med_cpu[k] / med_cpu["ours"] for k in names if k != "ours"},
        "max_abs_stat_diff_vs_pycocotools": diffs,
    }


def cli_import_check(repeats, workdir):
    """Start-up cost of the command itself and the heavy modules it must not load."""
    code = ("import sys\nfrom vitpose_scale.cli import main\ntry:\n    main(['coco-eval', '--help'])\n"
            "except SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in ('torch', 'deepspeed', 'cv2', 'matplotlib', 'pycocotools', "
            "'faster_coco_eval') if m in sys.modules))")
    cmds = {"python -c pass": [sys.executable, "-c", "pass"],
            "vitpose-scale coco-eval --help": [sys.executable, "-m", "vitpose_scale.cli", "coco-eval", "--help"]}
    wall, cpu = ({k: [] for k in cmds} for _ in range(2))
    for _ in range(repeats):
        for name, cmd in cmds.items():
            w, c, _ = run_child(cmd, os.path.join(workdir, "startup.log"))
            wall[name].append(w)
            cpu[name].append(c)
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env=_child_env(), check=True).stdout.split("LOADED", 1)[1].strip()
    return {"median_wall_s": {k: statistics.median(v) for k, v in wall.items()},
            "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()}, "heavy_modules_loaded": loaded}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[5000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--end-to-end", action="store_true", help="also time each tool as its own process")
    ap.add_argument("--out", default="bench/coco_eval.json")
    ap.add_argument("--skip-faster", action="store_true", help="without faster-coco-eval")
    args = ap.parse_args(argv)

    sizes = {}
    for n_img in args.images:
        t0 = time.perf_counter()
        gt, results = make_eval_set(n_img, seed=args.seed)
        print(f"synthetic set: {n_img} images, {len(gt['annotations'])} GT, {len(results)} results "
              f"(generated in {time.perf_counter() - t0:.1f}s)")
        entry = {"gt_annotations": len(gt["annotations"]), "results": len(results),
                 "in_process": in_process(gt, results, args.repeats, args.skip_faster)}
        if args.end_to_end:
            with tempfile.TemporaryDirectory(prefix="coco_eval_bench_") as d:
                entry["end_to_end"] = end_to_end(gt, results, args.repeats, args.skip_faster, d)
        sizes[str(n_img)] = entry
        _print_size(n_img, entry)
    out = {
        "command": "python bench/coco_eval.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": _machine(),
        "config": {"images": args.images, "seed": args.seed, "repeats": args.repeats},
        "sizes": sizes,
    }
    if args.end_to_end:
        with tempfile.TemporaryDirectory(prefix="coco_eval_bench_") as d:
            out["cli_startup"] = cli_import_check(args.repeats, d)
        print(f"start-up: {out['cli_startup']}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.out}")
    return out


def _print_size(n_img, entry):
    ip = entry["in_process"]
    print(f"\n{n_img} images, in-process (GT prebuilt): median s and x ours")
    for k, v in ip["median_s"].items():
        print(f"  {k:<18} {v:>8.3f} {v / ip['median_s']['ours']:>6.1f}x   GT build {ip['gt_build_s'][k]:.3f}s")
    oks = ip["oks_micro"]
    print(f"  OKS over {oks['pairs']} pairs: computeOks {oks['pycocotools_computeOks_s']:.3f}s, "
          f"oks_pairs {oks['ours_oks_pairs_s']:.4f}s ({oks['speedup']:.0f}x), identical values")
    e2e = entry.get("end_to_end")
    if e2e:
        print(f"{n_img} images, end to end (own process each): wall s, x ours, CPU s, x ours, peak RSS MB")
        w, c = e2e["median_wall_s"], e2e["median_cpu_s"]
        for k in w:
            print(f"  {k:<18} {w[k]:>8.2f} {w[k] / w['ours']:>6.1f}x {c[k]:>8.2f} {c[k] / c['ours']:>6.1f}x "
                  f"{e2e['peak_rss_mb'][k]:>8.0f}")
    print("  stats identical to pycocotools: " + ", ".join(f"{n}={v:.4f}" for n, v in ip["stats"].items()))


if __name__ == "__main__":
    main()
