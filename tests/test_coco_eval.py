"""The vectorised COCO keypoint evaluator against pycocotools COCOeval; its OKS and OKS-NMS (eval/oks.py)
against written-out references; the coco-eval command."""
import contextlib
import copy
import io
import json
import math
import os
import sys
import tempfile

import numpy as np
import pytest

from vitpose_scale.eval import coco_eval
from vitpose_scale.eval.coco_eval import (STAT_NAMES, EvaluationInputError, KeypointEvaluator,
                                          format_stats, gather_results, print_stats)
from vitpose_scale.eval.oks import COCO_SIGMAS, GtKeypoints, compute_oks, oks_nms, oks_pairs, oks_upper_bound
from vitpose_scale.eval.synthetic_eval import make_eval_set, results_from_detections

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from launch_env import free_port  # noqa: E402


def _pycocotools(gt, results):
    """pycocotools' COCOeval after accumulate() and its printed summary (inputs are deep-copied:
    loadRes mutates)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dets = coco.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco, dets, "keypoints")
        ev.evaluate()
        ev.accumulate()
        start = len(out.getvalue())
        ev.summarize()
    return ev, out.getvalue()[start:]


def _reference(gt, results):
    """pycocotools stats and its printed summary."""
    ev, summary = _pycocotools(gt, results)
    return ev.stats, summary


def _assert_same(gt, results):
    ref, _ = _reference(gt, results)
    ours = KeypointEvaluator(gt).evaluate(results)
    assert ours.shape == (10,)
    diff = np.abs(np.asarray(ref) - ours)
    assert diff.max() <= 1e-12, dict(zip(STAT_NAMES, zip(ref, ours)))
    return ours


def _sample(coco_sample):
    gt = json.loads((coco_sample / "test_coco.json").read_text())
    dets = json.loads((coco_sample / "test_coco_det_AP_H_56.json").read_text())
    return gt, dets


# ---------------------------------------------------------------- equality


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bundled_sample_matches_pycocotools(coco_sample, seed):
    gt, dets = _sample(coco_sample)
    results = results_from_detections(gt, dets, seed=seed)
    assert len(results) == 118
    stats = _assert_same(gt, results)
    assert 0.2 < stats[0] < 1.0
    # results that carry the detector box: pycocotools then takes areas from it
    with_box = [dict(r, bbox=d["bbox"]) for r, d in zip(results, dets)]
    _assert_same(gt, with_box)


def test_perfect_results_on_sample(coco_sample):
    gt, _ = _sample(coco_sample)
    results = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
               for a in gt["annotations"] if a["num_keypoints"] > 0]
    stats = _assert_same(gt, results)
    assert stats[0] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kw", [
    {},
    {"crowd_frac": 0.4, "zero_vis_frac": 0.2, "many_det_frac": 0.25, "tie_frac": 0.5, "empty_frac": 0.3},
    {"with_bbox": True, "fp_rate": 3.0},
], ids=["default", "hard", "bbox"])
def test_synthetic_matches_pycocotools(seed, kw):
    gt, results = make_eval_set(120, seed=seed, **kw)
    anns = gt["annotations"]
    assert any(a["iscrowd"] for a in anns) or not kw.get("crowd_frac")
    _assert_same(gt, results)


def _adversarial(seed, n_img=40):
    """Degenerate cases: exact OKS ties, duplicate GT, crowd with joints, num_keypoints
    disagreeing with the flags, areas on range borders, GT id 0, score ties,
    two categories, integer keypoints, > maxDets detections."""
    rng = np.random.default_rng(seed)
    cats = [{"id": c, "name": f"c{c}", "keypoints": [f"k{j}" for j in range(17)]} for c in (1, 3)]
    images, anns, results = [], [], []
    aid = 0  # the first GT gets id 0 (a pycocotools quirk: it never counts as matched)
    for i in range(n_img):
        img_id = 1000 - 7 * i  # ids not in file order
        images.append({"id": img_id, "width": 640, "height": 480})
        gts = []
        for _ in range(rng.integers(0, 7)):
            cat = int(rng.choice([1, 3], p=[0.8, 0.2]))
            if gts and rng.random() < 0.25:  # duplicate joints; another area makes GT ties matter
                g = dict(gts[-1], id=aid, area=gts[-1]["area"] * float(rng.choice([1.0, 0.3, 3.0])))
            else:
                x, y = rng.uniform(0, 400, 2)
                w, h = rng.uniform(10, 200, 2)
                kp = np.zeros((17, 3))
                kp[:, 0] = np.round(x + rng.uniform(0, w, 17))
                kp[:, 1] = np.round(y + rng.uniform(0, h, 17))
                kp[:, 2] = rng.choice([0, 1, 2], 17, p=[0.3, 0.2, 0.5])
                if rng.random() < 0.15:
                    kp[:, 2] = 0
                nk = int((kp[:, 2] > 0).sum())
                if rng.random() < 0.1:  # num_keypoints disagrees with the flags
                    nk = 0 if nk else 3
                area = float(rng.choice([32 ** 2, 96 ** 2, w * h * 0.6, 500.0, 20000.0]))
                g = {"id": aid, "image_id": img_id, "category_id": cat,
                     "iscrowd": int(rng.random() < 0.12), "keypoints": kp.reshape(-1).astype(int).tolist(),
                     "num_keypoints": nk, "bbox": [x, y, w, h], "area": area}
            gts.append(g)
            anns.append(g)
            aid += 1
        n_det = int(rng.integers(0, 6)) if rng.random() < 0.8 else int(rng.integers(21, 30))
        for _ in range(n_det):
            if gts and rng.random() < 0.8:
                g = gts[rng.integers(len(gts))]
                kp = np.asarray(g["keypoints"], dtype=np.float64).reshape(17, 3)
                cat = g["category_id"]
                if rng.random() < 0.5:
                    kp[:, :2] += rng.normal(0, rng.choice([0.0, 2.0, 8.0]), (17, 2))
            else:
                kp = np.zeros((17, 3))
                kp[:, :2] = rng.uniform(0, 500, (17, 2))
                cat = int(rng.choice([1, 3]))
            kp[:, 2] = 1
            vals = kp.reshape(-1)
            vals = vals.astype(int).tolist() if rng.random() < 0.3 else vals.tolist()
            results.append({"image_id": img_id, "category_id": cat, "keypoints": vals,
                            "score": float(rng.choice([0.3, 0.5, 0.5, 0.9, rng.random()]))})
    gt = {"images": images, "annotations": anns, "categories": cats}
    return gt, results


@pytest.mark.parametrize("seed", range(6))
def test_adversarial_matches_pycocotools(seed):
    gt, results = _adversarial(seed)
    _assert_same(gt, results)


def test_gt_tie_goes_to_the_last_gt_as_in_pycocotools():
    """Two GT with the same joints but different areas: an exact copy ties at
    OKS 1 (pycocotools keeps the later GT); a noisier second detection then
    only fits the larger one, so the tie rule changes AP."""
    rng = np.random.default_rng(0)
    kp = np.zeros((17, 3))
    kp[:, :2] = np.round(rng.uniform(100, 300, (17, 2)))
    kp[:, 2] = 2
    g = {"image_id": 1, "category_id": 1, "iscrowd": 0, "num_keypoints": 17,
         "keypoints": kp.reshape(-1).astype(int).tolist(), "bbox": [100, 100, 200, 200]}
    cats = [{"id": 1, "name": "person", "keypoints": [str(j) for j in range(17)]}]
    noisy = kp.copy()
    noisy[:, :2] += rng.normal(0, 6, (17, 2))
    results = [{"image_id": 1, "category_id": 1, "keypoints": kp.reshape(-1).tolist(), "score": 0.9},
               {"image_id": 1, "category_id": 1, "keypoints": noisy.reshape(-1).tolist(), "score": 0.8}]
    for areas in ([40000.0, 2500.0], [2500.0, 40000.0]):
        gt = {"images": [{"id": 1}], "categories": cats,
              "annotations": [dict(g, id=i + 1, area=a) for i, a in enumerate(areas)]}
        _assert_same(gt, results)


def test_summary_lines_match_pycocotools(coco_sample):
    gt, dets = _sample(coco_sample)
    results = results_from_detections(gt, dets, seed=0)
    _, printed = _reference(gt, results)
    stats = KeypointEvaluator(gt).evaluate(results)
    assert "\n".join(format_stats(stats)) + "\n" == printed
    buf = io.StringIO()
    print_stats(stats, file=buf)
    assert buf.getvalue() == printed
    assert printed.startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets= 20 ] = ")


def test_empty_results_give_zero(coco_sample):
    gt, _ = _sample(coco_sample)
    stats = KeypointEvaluator(gt).evaluate([])
    assert (stats == 0).all()


# -------------------------------------------------------------------- OKS


def test_oks_matrix_equals_compute_oks():
    gt, results = make_eval_set(60, seed=5, zero_vis_frac=0.2, crowd_frac=0.3)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "keypoints")
        ev.params.imgIds = sorted(coco.getImgIds())
        ev._prepare()
    checked = 0
    for img in ev.params.imgIds:
        gts, dts = ev._gts[img, 1], ev._dts[img, 1]
        ref = ev.computeOks(img, 1)
        if len(ref) == 0:
            continue
        dts = [dts[i] for i in np.argsort([-d["score"] for d in dts], kind="mergesort")][:20]
        ours = compute_oks([d["keypoints"] for d in dts], [g["keypoints"] for g in gts],
                           [g["area"] for g in gts], [g["bbox"] for g in gts])
        assert np.array_equal(ours, ref)
        checked += 1
    assert checked > 20


def test_oks_upper_bound_is_never_below_oks():
    """The evaluator skips pairs whose box bound is below the lowest threshold, so
    the bound must hold for every pair, including GT without visible joints."""
    gt, results = make_eval_set(300, seed=8, zero_vis_frac=0.2, crowd_frac=0.2, fp_rate=2.0)
    ev = KeypointEvaluator(gt)
    img, _, xy, _, _ = ev._load_results(results)
    xy = np.ascontiguousarray(xy)
    g_img = ev._g_key % ev._n_img
    p_dt, p_gt = np.nonzero(img[:, None] == g_img[None, :])  # every same-image pair
    oks = oks_pairs(xy, ev.gt, p_dt, p_gt)
    bound = oks_upper_bound(xy, ev.gt, p_dt, p_gt)
    assert len(oks) > 5000 and (oks >= 0.5).sum() > 500
    assert (bound >= oks).all()
    assert (bound < 0.5).mean() > 0.5  # and it does rule out most pairs


def test_oks_nms_drops_duplicates():
    rng = np.random.default_rng(0)
    base = np.concatenate([rng.uniform(0, 100, (17, 2)), np.ones((17, 1))], axis=1)
    far = base.copy()
    far[:, :2] += 300
    kps = np.stack([base, base + [0.5, 0.5, 0], far, base + [40, 40, 0]])
    keep = oks_nms(kps, scores=[0.8, 0.9, 0.7, 0.6], areas=[5000.0] * 4, thr=0.9)
    assert keep.tolist() == [1, 2, 3]
    assert oks_nms(np.zeros((0, 17, 3)), [], []).tolist() == []
    assert len(COCO_SIGMAS) == 17 and COCO_SIGMAS[0] == pytest.approx(0.026)


# ----------------------------------------------------------------- errors


def _good(coco_sample):
    gt, dets = _sample(coco_sample)
    return gt, results_from_detections(gt, dets, seed=0)


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r[5].update(score=float("nan")), "results[5] (image_id="),
    (lambda r: r[5].update(score=float("inf")), "'score' is NaN/inf"),
    (lambda r: r[7]["keypoints"].__setitem__(4, float("nan")), "results[7] (image_id="),
    (lambda r: r[7]["keypoints"].__setitem__(4, float("-inf")), "'keypoints' contains NaN/inf"),
    (lambda r: r[3].update(image_id=123456), "results[3] (image_id=123456): image_id is not an image of the GT"),
    (lambda r: r[2].update(keypoints=r[2]["keypoints"][:-3]), "'keypoints' has 48 values, expected 3*K = 51"),
    (lambda r: r[9].pop("score"), "results[9] (image_id="),
    (lambda r: r[9].pop("keypoints"), "is missing the 'keypoints' field"),
    (lambda r: r[1].update(category_id=[7]), "category_id"),
    (lambda r: r[1].update(score="high"), "'score' is not a number"),
    # numbers in disguise: numpy would convert these silently
    (lambda r: r[1].update(score="0.9"), "results[1] (image_id="),
    (lambda r: r[4].update(score=True), "'score' is not a number (True)"),
    (lambda r: r[6]["keypoints"].__setitem__(10, "12.5"), "results[6] (image_id="),
    (lambda r: r[6]["keypoints"].__setitem__(10, "12.5"), "'keypoints' must be 51 numbers"),
])
def test_bad_results_are_reported(coco_sample, mutate, message):
    gt, results = _good(coco_sample)
    mutate(results)
    with pytest.raises(EvaluationInputError, match=None) as exc:
        KeypointEvaluator(gt).evaluate(results)
    assert message in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_nan_message_names_entry_and_image(coco_sample):
    gt, results = _good(coco_sample)
    results[5]["score"] = float("nan")
    with pytest.raises(EvaluationInputError) as exc:
        KeypointEvaluator(gt).evaluate(results)
    assert str(exc.value).startswith(f"results[5] (image_id={results[5]['image_id']}): 'score' is NaN/inf")


@pytest.mark.parametrize("mutate,message", [
    (lambda g: g.pop("annotations"), "not a COCO keypoint annotation file: missing 'annotations'"),
    (lambda g: g["categories"][0].pop("keypoints"), "has no 'keypoints' list"),
    (lambda g: g["annotations"][2].pop("keypoints"), "annotations[2]"),
    (lambda g: g["annotations"][1].update(keypoints=[1, 2, 3]), "has 3 keypoint values, expected 51"),
    (lambda g: g["annotations"][1]["keypoints"].__setitem__(3, "7"), "annotations[1] (id="),
    (lambda g: g["annotations"][1]["keypoints"].__setitem__(3, "7"), "'keypoints' must be 51 numbers"),
    (lambda g: g["annotations"][2].update(image_id=[1]), "annotations[2] (id="),
    (lambda g: g["annotations"][2].update(image_id=[1]), "is not a valid id"),
    (lambda g: g["annotations"][4].update(bbox=[1, 2, 3]), "bbox is not 4 numbers"),
    (lambda g: g["annotations"][4].update(area=float("nan")), "has NaN/inf area"),
])
def test_bad_gt_is_reported(coco_sample, mutate, message):
    gt, _ = _sample(coco_sample)
    mutate(gt)
    with pytest.raises(EvaluationInputError) as exc:
        KeypointEvaluator(gt)
    assert message in str(exc.value)


def test_gt_not_a_dict(tmp_path):
    p = tmp_path / "gt.json"
    p.write_text("[1, 2]")
    with pytest.raises(EvaluationInputError, match="not a COCO keypoint annotation file"):
        KeypointEvaluator(p)


# -------------------------------------------------------------------- CLI


def test_cli_writes_stats(coco_sample, tmp_path, capsys):
    gt, results = _good(coco_sample)
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(results))
    out = tmp_path / "sub" / "stats.json"
    rc = coco_eval.main(["--gt", str(coco_sample / "test_coco.json"), "--results", str(res_path),
                         "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 10 and printed[0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95")
    stats = json.loads(out.read_text())
    assert list(stats) == STAT_NAMES
    ref, _ = _reference(gt, results)
    assert np.abs(np.array([stats[k] for k in STAT_NAMES]) - ref).max() <= 1e-12


def test_cli_bad_input_exit_code(coco_sample, tmp_path, capsys):
    _, results = _good(coco_sample)
    results[0]["image_id"] = -1
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(results))
    rc = coco_eval.main(["--gt", str(coco_sample / "test_coco.json"), "--results", str(res_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"vitpose-scale coco-eval: error: {res_path}: results[0] (image_id=-1)" in err
    assert coco_eval.main(["--gt", str(tmp_path / "missing.json"), "--results", str(res_path)]) == 2


# ------------------------------------------------------------ distributed




def _rank_main(rank, world, port, gt, results, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # contiguous shards keep the global order, like a sequential sampler
        per = (len(results) + world - 1) // world
        mine = results[rank * per:(rank + 1) * per]
        merged = gather_results(mine)
        stats = KeypointEvaluator(gt).evaluate(merged)
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), np.concatenate([stats, [len(merged)]]))
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_rank_gloo_gather_equals_single_rank():
    torch_mp = pytest.importorskip("torch.multiprocessing")
    gt, results = make_eval_set(150, seed=11, tie_frac=0.3, many_det_frac=0.1)
    single = KeypointEvaluator(gt).evaluate(results)
    assert gather_results(results) is results  # no process group: identity
    with tempfile.TemporaryDirectory() as d:
        torch_mp.spawn(_rank_main, args=(2, free_port(), gt, results, d), nprocs=2, join=True)
        for rank in range(2):
            got = np.load(os.path.join(d, f"rank{rank}.npy"))
            assert got[10] == len(results)
            assert np.array_equal(got[:10], single)


# ------------------------------------------------------------ hardening


@pytest.mark.parametrize("variant", ["no annotations", "other category"])
def test_gt_without_scorable_annotations_gives_minus_one_like_pycocotools(coco_sample, variant):
    gt, results = _good(coco_sample)
    if variant == "no annotations":
        gt["annotations"] = []
    else:  # every GT in a category the file does not list
        for a in gt["annotations"]:
            a["category_id"] = 2
    ref, _ = _reference(gt, results)
    assert (np.asarray(ref) == -1).all()
    ours = KeypointEvaluator(gt).evaluate(results)
    assert np.array_equal(ours, ref)
    assert (KeypointEvaluator(gt).evaluate([]) == -1).all()


def test_duplicate_gt_ids_are_rejected(coco_sample):
    gt, results = _good(coco_sample)
    anns = gt["annotations"]
    dup = anns[3]["id"]
    anns[5]["id"] = dup
    anns[9]["id"] = dup
    # pycocotools indexes annotations by id (the last one wins), so its numbers
    # would silently change; we refuse the file instead
    ref, _ = _reference(gt, results)
    assert not np.array_equal(ref, _reference(*_good(coco_sample))[0])
    with pytest.raises(EvaluationInputError) as exc:
        KeypointEvaluator(gt)
    assert f"annotation id {dup} occurs 3 times" in str(exc.value)


def test_results_of_other_categories_are_ignored_like_pycocotools(coco_sample, tmp_path, capsys):
    gt, results = _good(coco_sample)
    extra = [dict(results[i], category_id=c) for i, c in ((0, 7), (3, 2), (8, 7))]
    mixed = results[:5] + extra + results[5:]
    ref, _ = _reference(gt, mixed)
    ev = KeypointEvaluator(gt)
    assert np.array_equal(ev.evaluate(mixed), ref)
    assert ev.num_ignored == 3
    assert np.array_equal(ev.evaluate(results), ref) and ev.num_ignored == 0
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(mixed))
    assert coco_eval.main(["--gt", str(coco_sample / "test_coco.json"), "--results", str(res_path)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 10
    assert "3 of 121 results ignored: category_id not a GT category" in err


def _cli_error(capsys, argv):
    rc = coco_eval.main(argv)
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""  # nothing evaluated or printed before the error
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vitpose-scale coco-eval: error: "), err
    return lines[0]


def test_cli_unreadable_inputs_are_one_line_errors(coco_sample, tmp_path, capsys):
    gt_path = str(coco_sample / "test_coco.json")
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(_good(coco_sample)[1]))
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    msg = _cli_error(capsys, ["--gt", str(tmp_path), "--results", str(res_path)])
    assert f"GT annotation file {tmp_path} cannot be read: is a directory" in msg
    msg = _cli_error(capsys, ["--gt", gt_path, "--results", str(tmp_path)])
    assert f"results file {tmp_path} cannot be read: is a directory" in msg
    msg = _cli_error(capsys, ["--gt", gt_path, "--results", str(a_file / "res.json")])
    assert f"results file {a_file / 'res.json'} cannot be read" in msg
    if os.geteuid() != 0:  # root reads any file
        locked = tmp_path / "locked.json"
        locked.write_text("[]")
        locked.chmod(0)
        msg = _cli_error(capsys, ["--gt", gt_path, "--results", str(locked)])
        assert "cannot be read: permission denied" in msg


def test_cli_unwritable_out_is_checked_before_evaluating(coco_sample, tmp_path, capsys):
    gt_path = str(coco_sample / "test_coco.json")
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(_good(coco_sample)[1]))
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    msg = _cli_error(capsys, ["--gt", gt_path, "--results", str(res_path), "--out", str(tmp_path)])
    assert f"--out {tmp_path} cannot be written: is a directory" in msg
    out = a_file / "sub" / "stats.json"
    msg = _cli_error(capsys, ["--gt", gt_path, "--results", str(res_path), "--out", str(out)])
    assert f"--out {out} cannot be written: {a_file} is not a directory" in msg
    # checked first: a bad --out is reported even when the inputs are bad too
    msg = _cli_error(capsys, ["--gt", gt_path, "--results", str(tmp_path / "missing.json"),
                              "--out", str(tmp_path)])
    assert "--out" in msg
    assert a_file.read_text() == "x"


def test_cli_reads_json_with_nan_literals(coco_sample, tmp_path, capsys):
    """Python's json.dump writes NaN for float('nan'), which strict JSON parsers
    refuse; the evaluator still names the entry, as for in-memory results."""
    _, results = _good(coco_sample)
    results[4]["score"] = float("nan")
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(results))
    msg = _cli_error(capsys, ["--gt", str(coco_sample / "test_coco.json"), "--results", str(res_path)])
    assert f"results[4] (image_id={results[4]['image_id']}): 'score' is NaN/inf" in msg
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 1,')
    msg = _cli_error(capsys, ["--gt", str(coco_sample / "test_coco.json"), "--results", str(bad)])
    assert f"results file {bad} is not valid JSON" in msg


def test_files_without_msgspec_use_the_standard_library(coco_sample, tmp_path, monkeypatch):
    """msgspec is optional at run time: without it (nor orjson) files are parsed by json."""
    monkeypatch.setitem(sys.modules, "msgspec", None)  # import fails
    monkeypatch.setitem(sys.modules, "orjson", None)
    monkeypatch.setattr(coco_eval, "_TYPED", {})
    gt, results = _good(coco_sample)
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(results))
    ref, _ = _reference(gt, results)
    assert np.array_equal(coco_eval.evaluate(coco_sample / "test_coco.json", res_path), ref)
    assert coco_eval._TYPED == {"results": None, "gt": None}


@pytest.mark.parametrize("kw", [{}, {"with_bbox": True}], ids=["keypoint areas", "box areas"])
def test_file_and_in_memory_inputs_give_identical_stats(tmp_path, kw):
    gt, results = make_eval_set(200, seed=4, crowd_frac=0.3, tie_frac=0.3, many_det_frac=0.1, **kw)
    gt_path, res_path = tmp_path / "gt.json", tmp_path / "res.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text(json.dumps(results))
    from_files = coco_eval.evaluate(gt_path, res_path)
    ref, _ = _reference(gt, results)
    assert np.array_equal(from_files, ref)
    assert np.array_equal(KeypointEvaluator(gt).evaluate(results), ref)


def test_command_line_exit_flushes_output(coco_sample, tmp_path):
    """As a program, coco-eval ends without interpreter teardown: piped (block-
    buffered) output, the --out file and the exit codes must all still be right."""
    import subprocess

    gt, results = _good(coco_sample)
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(results))
    gt_path, out = str(coco_sample / "test_coco.json"), tmp_path / "stats.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "vitpose_scale.cli", "coco-eval", "--gt", gt_path]
    ok = subprocess.run(cmd + ["--results", str(res_path), "--out", str(out)], capture_output=True, text=True,
                        cwd=root, timeout=60)
    assert ok.returncode == 0, ok.stderr
    ref, printed = _reference(gt, results)
    assert ok.stdout == printed
    assert np.array_equal([json.loads(out.read_text())[k] for k in STAT_NAMES], ref)
    bad = subprocess.run(cmd + ["--results", str(tmp_path / "missing.json")], capture_output=True, text=True,
                         cwd=root, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == f"vitpose-scale coco-eval: error: results file not found: {tmp_path / 'missing.json'}\n"


def test_coco_eval_command_does_not_import_torch(coco_sample, tmp_path):
    """Process start counts in end-to-end time: coco-eval must stay numpy-only."""
    import subprocess

    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(_good(coco_sample)[1]))
    code = ("import sys; from vitpose_scale.cli import main; "
            f"rc = main(['coco-eval', '--gt', {str(coco_sample / 'test_coco.json')!r}, '--results', {str(res_path)!r}]); "
            "heavy = sorted(m for m in ('torch', 'deepspeed', 'cv2', 'matplotlib', 'pycocotools') if m in sys.modules); "
            "print('HEAVY', heavy); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "HEAVY []"


def test_gt_without_num_keypoints_counts_labelled_joints(coco_sample):
    """num_keypoints decides ignore as in pycocotools; a GT lacking the field (which
    pycocotools cannot read) falls back to its labelled joints, per annotation."""
    gt, results = make_eval_set(150, seed=6, zero_vis_frac=0.2)
    ref, _ = _reference(gt, results)
    for drop in (lambda i: True, lambda i: i % 3 == 0):  # every annotation, or some
        g = copy.deepcopy(gt)
        for i, a in enumerate(g["annotations"]):
            assert a["num_keypoints"] == sum(v > 0 for v in a["keypoints"][2::3])
            if drop(i):
                del a["num_keypoints"]
        assert np.array_equal(KeypointEvaluator(g).evaluate(results), ref)
    gt["annotations"][3]["num_keypoints"] = "7"
    with pytest.raises(EvaluationInputError, match=r"annotations\[3\] .*'num_keypoints' is not a number"):
        KeypointEvaluator(gt)


@pytest.mark.parametrize("mutate", [
    lambda r: r[3].update(image_id=123456),
    lambda r: r[2].update(keypoints=r[2]["keypoints"][:-3]),
    lambda r: r[6]["keypoints"].__setitem__(10, "12.5"),
    lambda r: r[4].update(score=True),
    lambda r: r[1].update(category_id=[7]),
    lambda r: r[7].pop("bbox"),
    lambda r: r[8].update(bbox=[1, 2, 3]),
], ids=["image", "length", "string", "bool score", "list id", "no bbox", "short bbox"])
def test_file_results_report_the_same_errors_as_lists(coco_sample, tmp_path, mutate):
    """Files take a typed fast path; anything it cannot take must be reported exactly
    as for the same results passed as a list."""
    gt, dets = _sample(coco_sample)
    results = [dict(r, bbox=d["bbox"]) for r, d in zip(results_from_detections(gt, dets, seed=0), dets)]
    mutate(results)
    with pytest.raises(EvaluationInputError) as in_memory:
        KeypointEvaluator(gt).evaluate(copy.deepcopy(results))
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(results))
    with pytest.raises(EvaluationInputError) as from_file:
        coco_eval.evaluate(coco_sample / "test_coco.json", res_path)
    assert str(from_file.value) == str(in_memory.value)


@pytest.mark.parametrize("mutate", [
    lambda g: g["annotations"][5].update(id=g["annotations"][2]["id"]),
    lambda g: g["annotations"][2].pop("keypoints"),
    lambda g: g["annotations"][1]["keypoints"].__setitem__(3, "7"),
    lambda g: g["annotations"][1].update(keypoints=[1, 2, 3]),
    lambda g: g["annotations"][2].update(image_id=[1]),
    lambda g: g["annotations"][4].update(bbox=[1, 2, 3]),
    lambda g: g["annotations"][3].update(num_keypoints="7"),
    lambda g: g["categories"][0].pop("keypoints"),
    lambda g: g["images"][0].pop("id"),
], ids=["duplicate id", "no keypoints", "string", "length", "list id", "short bbox", "num_keypoints",
        "category", "image id"])
def test_gt_files_report_the_same_errors_as_dicts(coco_sample, tmp_path, mutate):
    gt, _ = _sample(coco_sample)
    mutate(gt)
    with pytest.raises(EvaluationInputError) as from_dict:
        KeypointEvaluator(copy.deepcopy(gt))
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with pytest.raises(EvaluationInputError) as from_file:
        KeypointEvaluator(path)
    assert str(from_file.value) == str(from_dict.value).replace("GT", f"GT {path}", 1)


def test_results_from_a_pipe_and_an_empty_file(coco_sample, tmp_path):
    """Files are memory-mapped; what cannot be mapped (a pipe, an empty file) is read."""
    import threading

    gt, results = _good(coco_sample)
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text(json.dumps(results)))
    writer.start()
    stats = coco_eval.evaluate(coco_sample / "test_coco.json", fifo)
    writer.join()
    assert np.array_equal(stats, _reference(gt, results)[0])
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(EvaluationInputError, match=f"results file {empty} is not valid JSON"):
        coco_eval.evaluate(coco_sample / "test_coco.json", empty)


# ------------------------------------------------- inputs pycocotools reads differently or not at all


def _loose_gt():
    """The bundled sample with GT fields in every form COCO files use in the wild."""
    gt, results = make_eval_set(60, seed=11, zero_vis_frac=0.1)
    anns = gt["annotations"]
    anns[0]["id"] = 0                              # pycocotools: never counts as matched
    for a in anns[1:40:3]:
        del a["iscrowd"]                           # absent: not a crowd
    for a in anns[2:40:5]:
        if "iscrowd" in a:
            a["iscrowd"] = bool(a["iscrowd"])      # booleans instead of 0/1
    anns[5]["iscrowd"] = True
    # a person with occluded joints only: labelled, so not ignored when num_keypoints is derived
    kp = np.asarray(anns[7]["keypoints"]).reshape(17, 3)
    kp[:, 2] = np.where(kp[:, 2] > 0, 1, 0)
    anns[7]["keypoints"] = kp.reshape(-1).tolist()
    anns[7]["num_keypoints"] = int((kp[:, 2] > 0).sum())
    return gt, results


def _pycocotools_form(gt):
    """The same GT as pycocotools needs it: every field present, integers, numeric ids."""
    g = copy.deepcopy(gt)
    for a in g["annotations"]:
        a["iscrowd"] = int(a.get("iscrowd", 0))
    return g


def test_absent_and_boolean_iscrowd_and_id_0_evaluate_like_pycocotools_on_the_filled_in_file():
    gt, results = _loose_gt()
    ref, _ = _reference(_pycocotools_form(gt), results)
    assert np.array_equal(KeypointEvaluator(gt).evaluate(results), ref)
    # num_keypoints absent everywhere: derived from the labelled joints, occluded (v=1) ones included
    no_numk = copy.deepcopy(gt)
    for a in no_numk["annotations"]:
        del a["num_keypoints"]
    assert np.array_equal(KeypointEvaluator(no_numk).evaluate(results), ref)


def test_non_numeric_annotation_ids_evaluate_like_their_numeric_renaming():
    gt, results = _loose_gt()
    ref = KeypointEvaluator(gt).evaluate(results)
    renamed = copy.deepcopy(gt)
    for a in renamed["annotations"]:
        # strings for most; keep 0 (never matched), 1 and another number among them
        if a["id"] not in (0, 1, 9):
            a["id"] = f"ann-{a['id']}"
    assert np.array_equal(KeypointEvaluator(renamed).evaluate(results), ref)


def test_detection_areas_on_the_range_borders_count_like_pycocotools():
    """Unmatched detections whose keypoint extent is exactly 0, 32^2 or 96^2 (the area-range
    borders: pycocotools counts a border area inside both ranges)."""
    gt, results = make_eval_set(20, seed=12, fp_rate=0.0, many_det_frac=0.0)
    extra = []
    for img, side, score in [(1, 32, 0.99), (2, 96, 0.98), (3, 0, 0.97), (4, 32, 0.2), (5, 96, 0.1)]:
        kp = np.zeros((17, 3))
        kp[:, 0] = 600 - side * (np.arange(17) % 2)  # x spans exactly `side`, at the far corner
        kp[:, 1] = 470 - side * (np.arange(17) // 16)
        kp[:, 2] = 1
        extra.append({"image_id": img, "category_id": 1, "keypoints": kp.reshape(-1).tolist(), "score": score})
    _assert_same(gt, results + extra)


def test_categories_without_detections_or_with_a_single_gt_like_pycocotools():
    gt, results = make_eval_set(30, seed=13)
    cats = [dict(gt["categories"][0], id=c, name=f"c{c}") for c in (1, 2, 3, 4)]
    gt["categories"] = cats
    lonely = dict(gt["annotations"][0], id=10 ** 6, category_id=4)  # one GT, no detection
    gt["annotations"].append(lonely)
    for i, r in enumerate(results):  # category 2: nothing; category 3: a third of the results
        if i % 3 == 0:
            r["category_id"] = 3
    for a in gt["annotations"][::4]:
        a["category_id"] = 3
    _assert_same(gt, results)


def test_precision_and_recall_arrays_are_pycocotools_eval():
    gt, results = make_eval_set(40, seed=14)
    ev, _ = _pycocotools(gt, results)
    ours = KeypointEvaluator(gt)
    ours.evaluate(results)
    assert set(ours.eval) == {"precision", "recall"}
    np.testing.assert_array_equal(ours.eval["precision"], ev.eval["precision"])
    np.testing.assert_array_equal(ours.eval["recall"], ev.eval["recall"])


def test_verbose_evaluate_prints_the_pycocotools_summary(coco_sample, capsys):
    gt, dets = _sample(coco_sample)
    results = results_from_detections(gt, dets, seed=0)
    _, expected = _reference(gt, results)
    KeypointEvaluator(gt).evaluate(results, verbose=True)
    assert capsys.readouterr().out == expected


def test_results_may_be_a_tuple_but_not_a_number(coco_sample):
    gt, dets = _sample(coco_sample)
    results = results_from_detections(gt, dets, seed=0)
    ev = KeypointEvaluator(gt)
    assert np.array_equal(ev.evaluate(tuple(results)), KeypointEvaluator(gt).evaluate(results))
    for bad, name in ((5, "int"), ({"a": 1}, "dict")):
        with pytest.raises(EvaluationInputError, match=rf"^results must be a list of objects, got {name}$"):
            KeypointEvaluator(gt).evaluate(bad)


def test_well_formed_files_are_read_by_the_typed_decoders(coco_sample, tmp_path):
    """The typed decoders (a fast path with a silent fallback) must accept COCO's own files,
    keeping every field the evaluation reads, with COCO's defaults for the optional ones."""
    pytest.importorskip("msgspec")
    gt, dets = _sample(coco_sample)
    del gt["annotations"][0]["iscrowd"]
    del gt["annotations"][1]["num_keypoints"]
    decoded = coco_eval._typed("gt").decode(json.dumps(gt).encode())
    assert [im.id for im in decoded.images] == [im["id"] for im in gt["images"]]
    for typed, plain in zip(decoded.annotations, gt["annotations"]):
        for f in ("id", "image_id", "category_id", "keypoints", "area", "bbox"):
            assert getattr(typed, f) == plain[f], f
        assert typed.iscrowd == plain.get("iscrowd", 0)
        assert (typed.num_keypoints is coco_eval._MISSING) == ("num_keypoints" not in plain)
    assert decoded.categories == gt["categories"]
    results = results_from_detections(gt, dets, seed=0)
    results[0]["bbox"] = [1.0, 2.0, 3.0, 4.0]
    records = coco_eval._typed("results").decode(json.dumps(results).encode())
    for typed, plain in zip(records, results):
        assert (typed.image_id, typed.category_id, typed.keypoints, typed.score) == (
            plain["image_id"], plain["category_id"], plain["keypoints"], plain["score"])
        assert typed.bbox == plain.get("bbox")
    # and the evaluator takes that path for files
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert coco_eval._is_typed(coco_eval._read_json(tmp_path / "gt.json", "GT", coco_eval._typed("gt")).annotations,
                               "annotation_type")


@pytest.mark.parametrize("mutate,message", [
    (lambda g: g.update(categories=[]), r"^GT has no categories$"),
    (lambda g: g["categories"].append("person"), r"^GT: categories\[1\] has no 'id'$"),
    (lambda g: g["categories"].append({"name": "dog"}), r"^GT: categories\[1\] has no 'id'$"),
    (lambda g: g["categories"].append({"id": 2, "name": "dog"}),
     r"^GT is not a keypoint annotation file: category 2 \(dog\) has no 'keypoints' list$"),
    (lambda g: g["categories"].append({"id": 2}), r"category 2 \(\?\) has no 'keypoints' list$"),
    (lambda g: g["categories"].append({"id": 3, "keypoints": ["a"]}),
     r"^GT: category 3 has 1 keypoints but 17 OKS sigmas are given$"),
    (lambda g: g["images"].append({"file_name": "x.jpg"}),
     r"^GT: an image or category entry has a bad or missing id \(KeyError\('id'\)\)$"),
    (lambda g: g.update(images={}), r"^GT is not a COCO keypoint annotation file: missing 'images' list$"),
])
def test_bad_categories_and_images_are_named_exactly(coco_sample, mutate, message):
    gt, _ = _sample(coco_sample)
    mutate(gt)
    with pytest.raises(EvaluationInputError, match=message):
        KeypointEvaluator(gt)
    with pytest.raises(EvaluationInputError, match=r"^GT is not a COCO keypoint annotation file: expected a JSON "
                                                   r"object, got list$"):
        KeypointEvaluator([gt])


def test_a_fresh_evaluator_has_counted_nothing_and_lists_its_images(coco_sample):
    gt, _ = _sample(coco_sample)
    ev = KeypointEvaluator(gt)
    assert ev.num_results == 0 and ev.num_ignored == 0
    assert ev.img_ids == sorted(im["id"] for im in gt["images"])
    assert ev.sigmas.dtype == np.float64 and np.array_equal(ev.sigmas, COCO_SIGMAS)


def _other_category(results, i, **changes):
    """results[i] as a result of category 7 (no GT category), e.g. from a 21-keypoint hand model."""
    return dict(results[i], category_id=7, **changes)


def test_results_of_another_category_with_other_keypoint_counts_are_ignored_like_pycocotools(coco_sample, tmp_path,
                                                                                            capsys):
    gt, results = _good(coco_sample)
    extra = [_other_category(results, 0, keypoints=[float(v) for v in range(63)]),  # 21 joints
             _other_category(results, 4, keypoints=[1.0, 2.0, 0.5] * 5),
             _other_category(results, 9, keypoints=[3.5, 1.0])]  # pycocotools: x, y of one joint, no score
    mixed = results[:2] + extra + results[2:]
    ref, _ = _reference(gt, mixed)
    ev = KeypointEvaluator(gt)
    assert np.array_equal(ev.evaluate(mixed), ref) and np.array_equal(ref, _reference(gt, results)[0])
    assert ev.num_ignored == 3 and ev.num_results == len(mixed)
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(mixed))
    assert coco_eval.main(["--gt", str(coco_sample / "test_coco.json"), "--results", str(res_path)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 10
    assert err.strip() == (f"vitpose-scale coco-eval: note: 3 of {len(mixed)} results ignored: category_id not a GT "
                           f"category [1] (pycocotools ignores them too)")


@pytest.mark.parametrize("changes, message", [
    (dict(keypoints=[]), "results[3] (image_id="),  # pycocotools: min() of an empty array
    (dict(keypoints=["1.5"] * 63), "'keypoints' must be numbers"),
    (dict(keypoints=[None] * 63), "'keypoints' must be numbers"),
    (dict(keypoints=[True] * 63), "'keypoints' must be numbers"),
    (dict(keypoints=5), "'keypoints' is not a list"),
    (dict(image_id=123456, keypoints=[1.0] * 63), "results[3] (image_id=123456): image_id is not an image of the GT"),
], ids=["empty", "strings", "null", "bools", "number", "image"])
def test_results_of_another_category_that_pycocotools_refuses_stay_refused(coco_sample, tmp_path, changes, message):
    gt, results = _good(coco_sample)
    results.insert(3, _other_category(results, 3, **changes))
    with pytest.raises(Exception):  # noqa: B017 - pycocotools fails with whatever numpy or Python raises
        _reference(gt, results)
    with pytest.raises(EvaluationInputError) as in_memory:
        KeypointEvaluator(gt).evaluate(copy.deepcopy(results))
    assert message in str(in_memory.value)
    res_path = tmp_path / "res.json"
    res_path.write_text(json.dumps(results))
    with pytest.raises(EvaluationInputError) as from_file:  # the typed fast path says the same
        coco_eval.evaluate(coco_sample / "test_coco.json", res_path)
    assert str(from_file.value) == str(in_memory.value)


def _gt_with(*anns):
    return {"images": [{"id": 1, "width": 100, "height": 100}], "annotations": list(anns),
            "categories": [{"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(17)], "skeleton": []}]}


def _ann(**fields):
    return {"id": 1, "image_id": 1, "category_id": 1, "keypoints": [0] * 51, "num_keypoints": 0, "area": 100.0,
            "bbox": [0, 0, 10, 10], "iscrowd": 0, **fields}


@pytest.mark.parametrize("anns, message", [
    ([7], "GT: annotations[0] is not an object"),
    ([{"image_id": 1}], "GT is not a keypoint annotation file: annotations[0] (id=None) has no 'id'"),
    ([{"id": 7}], "GT is not a keypoint annotation file: annotations[0] (id=7) has no 'image_id'"),
    ([_ann(id=5, area=None) | {"bbox": None}, _ann(id=6)], "GT: annotations[0] (id=5) bbox is not 4 numbers"),
    ([_ann(id=[1])], "GT: annotations[0] (id=[1]): id / image_id / category_id is not a valid id"),
    # an annotation of an image that is not listed is not scored, so not checked: the next one is
    ([_ann(id=2, image_id=99, keypoints=[0]), _ann(id=3, keypoints=[0] * 50)],
     "GT: annotations[1] (id=3) has 50 keypoint values, expected 51"),
    ([_ann(id=4, keypoints=7)], "GT: annotations[0] (id=4) has no keypoint values, expected 51"),
    ([_ann(id=8, keypoints=["a"] * 51)], "GT: annotations[0] (id=8): 'keypoints' must be 51 numbers"),
    ([_ann(id=9, area="big")], "GT: annotations[0] (id=9): 'area' is not a number ('big')"),
])
def test_coco_eval_malformed_gt_is_named_exactly(anns, message):
    with pytest.raises(EvaluationInputError) as err:
        KeypointEvaluator(_gt_with(*anns))
    assert str(err.value) == message


def test_coco_eval_cli_help_and_required_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        coco_eval.main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("usage: vitpose-scale coco-eval", "COCO as pycocotools COCOeval, the other sets of the ViTPose "
                 "family as the official mmpose 0.x code calls xtcocotools (same numbers, faster).",
                 "--gt GT COCO-layout keypoint annotation JSON", "--results RESULTS keypoint results JSON "
                 "(list of objects)", "--out OUT write the stats as a JSON object here", "--dataset {aic,ap10k,"):
        assert text in out, text
    for argv, missing in ((["--results", "r.json"], "--gt"), (["--gt", "g.json"], "--results")):
        with pytest.raises(SystemExit) as exit_:
            coco_eval.main(argv)
        assert exit_.value.code == 2
        assert f"the following arguments are required: {missing}" in capsys.readouterr().err


def test_coco_eval_cli_writes_stats_into_new_and_existing_folders(tmp_path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_gt_with(_ann(keypoints=[50, 50, 2] * 17, num_keypoints=17))))
    res = tmp_path / "res.json"
    res.write_text(json.dumps([{"image_id": 1, "category_id": 1, "keypoints": [50, 50, 1] * 17, "score": 1.0}]))
    for out in (tmp_path / "new" / "deeper" / "stats.json", tmp_path / "stats.json"):  # created / existing folder
        assert coco_eval.main(["--gt", str(gt), "--results", str(res), "--out", str(out)]) == 0
        text = out.read_text()
        assert text.startswith('{\n  "AP": ') and '\n  "AP50": ' in text  # indent 2, the pycocotools names
        stats = json.loads(text)
        assert list(stats) == list(STAT_NAMES) and stats["AP"] == pytest.approx(1.0) and stats["APm"] == -1.0
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets= 20 ] = 1.000" in capsys.readouterr().out


def test_coco_eval_sigmas_reach_the_evaluation_and_a_failed_write_is_reported(tmp_path, capsys):
    gt = _gt_with(_ann(keypoints=[50, 50, 2] * 17, num_keypoints=17, area=2000.0))
    res = [{"image_id": 1, "category_id": 1, "keypoints": [53, 50, 1] * 17, "score": 1.0}]  # 3 px off
    tight, loose = coco_eval.evaluate(gt, res), coco_eval.evaluate(gt, res, sigmas=[1.0] * 17)
    assert tight[0] < 0.9 and loose[0] == pytest.approx(1.0)
    ev = KeypointEvaluator(gt)
    stats = ev.evaluate(res)
    assert coco_eval._report("prog", ev, stats, str(tmp_path)) == 2  # a folder: open() fails after the check
    assert f"prog: error: --out {tmp_path} cannot be written: Is a directory" in capsys.readouterr().err


def test_coco_eval_command_line_exit_codes(tmp_path):
    """The module's own entry point (hard exit after flushing): 0 with the stats printed, 2 on bad input."""
    import subprocess

    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_gt_with(_ann(keypoints=[50, 50, 2] * 17, num_keypoints=17))))
    res = tmp_path / "res.json"
    res.write_text(json.dumps([{"image_id": 1, "category_id": 1, "keypoints": [50, 50, 1] * 17, "score": 1.0}]))
    run = [sys.executable, "-m", "vitpose_scale.eval.coco_eval", "--gt", str(gt), "--results"]
    ok = subprocess.run(run + [str(res)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "Average Precision  (AP) @[ IoU=0.50:0.95" in ok.stdout
    bad = subprocess.run(run + [str(gt)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("vitpose-scale coco-eval: error: ")


@pytest.mark.parametrize("with_bbox", [True, False])
def test_coco_eval_result_areas_come_from_bbox_as_in_pycocotools(tmp_path, with_bbox):
    """pycocotools' loadRes takes each result's area from its 'bbox' when the first result has one,
    else from the extent of its keypoints; the area decides medium/large. Boxes are chosen here to put
    each detection in the other range than its keypoints would. Files (the typed fast path) and
    in-memory lists must both give pycocotools' numbers."""

    def person(x, y, span):
        return [v for j in range(17) for v in (x + span * (j % 4) / 3, y + span * (j // 4) / 4, 2)]

    small, large = person(10, 10, 30), person(60, 60, 130)
    gt = {"images": [{"id": 1, "width": 200, "height": 200}],
          "annotations": [_ann(id=1, keypoints=small, num_keypoints=17, area=1500.0, bbox=[10, 10, 30, 30]),
                          _ann(id=2, keypoints=large, num_keypoints=17, area=16900.0, bbox=[60, 60, 130, 130])],
          "categories": _gt_with()["categories"]}
    rng = np.random.default_rng(0)
    results = []
    for kps, box, score in ((small, [0, 0, 150, 150], 0.9), (large, [60, 60, 20, 20], 0.8)):
        noisy = [v + (rng.normal(0, 1.5) if i % 3 != 2 else 0) for i, v in enumerate(kps)]
        res = {"image_id": 1, "category_id": 1, "keypoints": noisy, "score": score}
        if with_bbox:
            res["bbox"] = box
        results.append(res)
    expected = _pycocotools(gt, results)[0].stats
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    for got in (coco_eval.evaluate(gt, results),
                coco_eval.evaluate(str(tmp_path / "gt.json"), str(tmp_path / "res.json"))):
        np.testing.assert_allclose(got, expected, atol=1e-12)


def _result(**fields):
    return {"image_id": 1, "category_id": 1, "keypoints": [50, 50, 1] * 17, "score": 0.5, **fields}


_BOX_RULE = "'bbox' must be 4 finite numbers (results[0] has a bbox, so result areas come from boxes as in " \
            "pycocotools loadRes)"


@pytest.mark.parametrize("results, message", [
    ([5], "results[0] is not an object but int"),
    ([_result(), _result(image_id=99), _result(image_id=98)],
     "results[1] (image_id=99): image_id is not an image of the GT (2 bad entries in total)"),
    ([_result(keypoints=7)], "results[0] (image_id=1): 'keypoints' is not a list (1 bad entries in total)"),
    ([_result(keypoints=[1] * 50)],
     "results[0] (image_id=1): 'keypoints' has 50 values, expected 3*K = 51 (1 bad entries in total)"),
    ([_result(keypoints=[float("nan")] * 51)],
     "results[0] (image_id=1): 'keypoints' contains NaN/inf (1 bad entries in total)"),
    ([_result(score=float("inf"))], "results[0] (image_id=1): 'score' is NaN/inf (1 bad entries in total)"),
    ([_result(bbox=[0, 0, 1, 1]), _result(bbox=["a", 0, 0, 0])], f"results[1] (image_id=1): {_BOX_RULE}"),
    ([_result(bbox=[0, 0, 1, 1]), _result()], f"results[1] (image_id=1): {_BOX_RULE}"),
    ([_result(bbox=[0, 0, 1, 1]), _result(bbox=[0, 0, float("inf"), 1])], f"results[1] (image_id=1): {_BOX_RULE}"),
    # An entry missing a field sends the whole list down the entry-by-entry scan, which names the
    # first problem in list order (without a count).
    ([_result(image_id=99), {"image_id": 1}], "results[0] (image_id=99): image_id is not an image of the GT"),
    ([_result(keypoints=7), {"image_id": 1}], "results[0] (image_id=1): 'keypoints' is not a list"),
    ([_result(keypoints=[1] * 50), {"image_id": 1}],
     "results[0] (image_id=1): 'keypoints' has 50 values, expected 3*K = 51"),
    ([_result(keypoints=[float("nan")] * 51), {"image_id": 1}], "results[0] (image_id=1): 'keypoints' contains NaN/inf"),
    ([_result(score=float("inf")), {"image_id": 1}], "results[0] (image_id=1): 'score' is NaN/inf (inf)"),
    ([_result(), {"image_id": 1}], "results[1] (image_id=1) is missing the 'category_id' field"),
])
def test_coco_eval_malformed_results_are_named_exactly(results, message, tmp_path):
    """In memory and from a file (the typed fast path falls back to the same checks)."""
    gt = _gt_with(_ann(keypoints=[50, 50, 2] * 17, num_keypoints=17))
    with pytest.raises(EvaluationInputError) as err:
        coco_eval.evaluate(gt, results)
    assert str(err.value) == message
    try:
        text = json.dumps(results, allow_nan=False)
    except ValueError:  # NaN/inf: not valid JSON, so no file of it
        return
    path = tmp_path / "res.json"
    path.write_text(text)
    with pytest.raises(EvaluationInputError) as err:
        coco_eval.evaluate(gt, str(path))
    assert str(err.value) == message


def test_coco_eval_typed_records_take_the_fast_path_with_the_same_arrays(tmp_path):
    """A well-formed results file parsed by the typed decoder is turned into arrays directly (no fallback
    to the dict path), and those arrays equal the dict path's, bbox areas included."""
    gt, results = make_eval_set(30, seed=2, with_bbox=True)
    if coco_eval._typed("results") is None:
        pytest.skip("msgspec is not installed: no typed path")
    records = coco_eval._typed("results").decode(json.dumps(results).encode())
    ev = KeypointEvaluator(gt)
    fast = ev._typed_result_arrays(records)
    assert fast is not None
    for a, b in zip(fast, ev._result_arrays(results)):
        np.testing.assert_array_equal(a, b)
    no_box = coco_eval._typed("results").decode(json.dumps([{k: v for k, v in r.items() if k != "bbox"}
                                                  for r in results]).encode())
    assert ev._typed_result_arrays(no_box)[4] is None
    bad_id = coco_eval._typed("results").decode(json.dumps([dict(results[0], image_id=10 ** 6)] + results[1:]).encode())
    assert ev._typed_result_arrays(bad_id) is None


def test_coco_eval_command_notes_ignored_results_under_its_name(tmp_path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_gt_with(_ann(keypoints=[50, 50, 2] * 17, num_keypoints=17))))
    res = tmp_path / "res.json"
    res.write_text(json.dumps([_result(), _result(category_id=2)]))
    assert coco_eval.main(["--gt", str(gt), "--results", str(res)]) == 0
    err = capsys.readouterr().err
    assert ("vitpose-scale coco-eval: note: 1 of 2 results ignored: category_id not a GT category [1] "
            "(pycocotools ignores them too)") in err


def test_oks_with_no_detection_or_no_gt_is_an_empty_matrix_and_sigmas_are_used():
    gt = np.array([[10.0, 10.0, 2.0] * 17])
    assert compute_oks(np.zeros((0, 17, 2)), gt, [100.0]).shape == (0, 1)
    assert compute_oks(np.zeros((2, 17, 2)), np.zeros((0, 51)), []).shape == (2, 0)
    # one joint off by 1 px, the rest exact: OKS = (16 + exp(-d^2 / (2 s^2 (2 sigma)^2))) / 17 with s^2 = area
    dt = np.tile([10.0, 10.0], (1, 17, 1))
    dt[0, 0, 0] += 1.0
    sigmas = np.full(17, 0.1)
    expected = (16 + math.exp(-1.0 / (2 * 100.0 * (2 * 0.1) ** 2))) / 17
    assert compute_oks(dt, gt, [100.0], sigmas=sigmas)[0, 0] == pytest.approx(expected, rel=1e-12)


def _official_oks_nms(kpts, scores, areas, thr, sigmas, vis_thr=None):
    """mmpose 0.x oks_nms / oks_iou written out (eps 1e-10 per its eps), both poses' visibility masked."""
    var = (np.asarray(sigmas) * 2) ** 2
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    keep = []
    while order:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        survivors = []
        for j in rest:
            dx, dy = kpts[j, :, 0] - kpts[i, :, 0], kpts[j, :, 1] - kpts[i, :, 1]
            e = (dx ** 2 + dy ** 2) / var / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
            if vis_thr is not None:
                e = e[(kpts[i, :, 2] > vis_thr) & (kpts[j, :, 2] > vis_thr)]
            iou = np.exp(-e).sum() / e.shape[0] if e.shape[0] else 0.0
            if iou <= thr:
                survivors.append(j)
        order = survivors
    return keep


@pytest.mark.parametrize("vis_thr", [None, 0.3])
def test_oks_nms_keeps_what_the_official_greedy_rule_keeps(vis_thr):
    rng = np.random.default_rng(11)
    centres = rng.uniform(50, 400, (4, 2))
    kpts = []
    for c in centres[rng.integers(0, 4, 30)]:  # 30 poses around 4 people: many near-duplicates
        xy = c + np.linspace(-40, 40, 17)[:, None] + rng.normal(0, 1, (17, 2))
        kpts.append(np.concatenate([xy, rng.uniform(0, 1, (17, 1))], axis=1))
    kpts = np.asarray(kpts)
    scores, areas = rng.uniform(0.1, 1.0, 30), rng.uniform(2000, 9000, 30)
    for thr in (0.5, 0.9):
        expected = _official_oks_nms(kpts, scores, areas, thr, COCO_SIGMAS, vis_thr)
        got = oks_nms(kpts, scores, areas, thr, COCO_SIGMAS, vis_thr=vis_thr)
        assert got.dtype == np.int64 and got.tolist() == expected
        assert 4 <= len(expected) < 30  # the case really suppresses
    assert oks_nms(np.zeros((0, 17, 3)), [], []).dtype == np.int64


def test_oks_takes_float32_sigmas_and_preprocessed_gt_with_pycocotools_float64_numbers():
    """Written-out pycocotools computeOks in float64 on the float32 inputs a model produces."""
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (3, 17, 3)).astype(np.float32)
    gt[..., 2] = rng.integers(0, 3, (3, 17))
    gt[2, :, 2] = 0  # no visible joint: distances to the box
    dt = rng.uniform(0, 100, (4, 17, 3)).astype(np.float32)
    areas = np.array([900.0, 2500.0, 400.0], dtype=np.float32)
    boxes = np.array([[10, 10, 30, 30], [0, 0, 50, 50], [40, 40, 20, 20]], dtype=np.float32)
    sigmas32 = COCO_SIGMAS.astype(np.float32)
    var = (sigmas32.astype(np.float64) * 2) ** 2
    expected = np.zeros((4, 3))
    for j in range(3):
        xg, yg, vg = (gt[j, :, c].astype(np.float64) for c in range(3))
        x0, y0, w, h = boxes[j].astype(np.float64)
        for i in range(4):
            xd, yd = dt[i, :, 0].astype(np.float64), dt[i, :, 1].astype(np.float64)
            if (vg > 0).sum() > 0:
                dx, dy = xd - xg, yd - yg
            else:
                dx = np.maximum(0, (x0 - w) - xd) + np.maximum(0, xd - (x0 + 2 * w))
                dy = np.maximum(0, (y0 - h) - yd) + np.maximum(0, yd - (y0 + 2 * h))
            e = (dx ** 2 + dy ** 2) / var / (float(areas[j]) + np.spacing(1)) / 2
            if (vg > 0).sum() > 0:
                e = e[vg > 0]
            expected[i, j] = np.sum(np.exp(-e)) / e.shape[0]
    got = compute_oks(dt, gt, areas, boxes, sigmas=sigmas32)
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=0)
    pre = GtKeypoints(gt, areas, boxes)
    np.testing.assert_array_equal(compute_oks(dt, pre, None, sigmas=sigmas32), got)


@pytest.mark.parametrize("vis_thr", [None, 0.3])
def test_oks_nms_threshold_default_and_ties_on_poses_at_every_distance(vis_thr):
    """One person predicted with growing error: OKS with the best pose falls from ~1 to ~0, so every
    threshold, the default (0.9) and the variances decide something; equal scores keep the lower index.
    Joint scores include the visibility threshold itself, poses sharing one visible joint and none."""
    rng = np.random.default_rng(3)
    base = rng.uniform(100, 300, (17, 2))
    vis = rng.choice([0.1, 0.3, 0.9], size=(40, 17))
    vis[5] = 0.1
    vis[5, 0] = 0.9  # shares at most joint 0 with the others
    vis[6] = 0.1  # no joint above the threshold
    kpts = np.array([np.c_[base + rng.normal(0, s, (17, 2)), v] for s, v in zip(np.linspace(0.5, 25, 40), vis)])
    areas = rng.uniform(3000, 5000, 40)
    scores = rng.uniform(0.1, 1.0, 40)
    kept = {}
    for thr in (0.3, 0.5, 0.7, 0.9):
        kept[thr] = oks_nms(kpts, scores, areas, thr, vis_thr=vis_thr)
        assert kept[thr].dtype == np.int64
        assert kept[thr].tolist() == _official_oks_nms(kpts, scores, areas, thr, COCO_SIGMAS, vis_thr), thr
    assert len({tuple(k) for k in kept.values()}) == 4, "each threshold keeps a different set"
    assert oks_nms(kpts, scores, areas, vis_thr=vis_thr).tolist() == kept[0.9].tolist()
    tied = rng.integers(1, 4, 40) / 4.0  # three score levels: ties everywhere
    assert (oks_nms(kpts, tied, areas, 0.5, vis_thr=vis_thr).tolist()
            == _official_oks_nms(kpts, tied, areas, 0.5, COCO_SIGMAS, vis_thr))
