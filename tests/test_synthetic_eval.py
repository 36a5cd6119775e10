"""The synthetic evaluation set keeps the promises the evaluator tests rely on.

The equality tests compare us with pycocotools on ``make_eval_set``; they would still pass if
the generator stopped producing crowds, empty images or score ties, and then cover less.
These tests pin what its docstring promises, as frequencies with binomial margins
(about 4 standard deviations) on a 600-image set.
"""
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from vitpose_scale.eval.coco_eval import KeypointEvaluator
from vitpose_scale.eval.synthetic_eval import make_eval_set, results_from_detections
from vitpose_scale.keypoints import get_spec

KEYPOINT_NAMES = list(get_spec("coco").names)

N = 600


def _near(observed, expected, n, sds=4.0):
    """observed frequency within ``sds`` binomial standard deviations of ``expected``."""
    return abs(observed - expected) <= sds * math.sqrt(expected * (1 - expected) / n) + 1e-9


def _eval_set():
    # Built inside each test (0.1 s), not in a fixture: mutation testing maps a test to the code
    # its body runs, and a cached copy would outlive a change of the generator.
    return make_eval_set(N, seed=0)


def _by_image(anns):
    out = defaultdict(list)
    for a in anns:
        out[a["image_id"]].append(a)
    return out


def test_images_ids_and_sizes():
    gt, _ = _eval_set()
    assert [im["id"] for im in gt["images"]] == list(range(1, N + 1))
    assert all(im["file_name"] == f"{im['id']:012d}.jpg" for im in gt["images"])
    sizes = Counter((im["width"], im["height"]) for im in gt["images"])
    assert set(sizes) == {(640, 480), (480, 640)} and _near(sizes[(640, 480)] / N, 0.6, N)
    assert [a["id"] for a in gt["annotations"]] == list(range(1, len(gt["annotations"]) + 1))
    cat = gt["categories"]
    assert len(cat) == 1 and cat[0]["id"] == 1 and cat[0]["name"] == "person"
    assert cat[0]["keypoints"] == KEYPOINT_NAMES and cat[0]["skeleton"][:2] == [[16, 14], [14, 12]]
    assert len(cat[0]["skeleton"]) == 19  # COCO's 1-based links, as the annotation files write them
    assert gt["info"]["seed"] == 0
    other, _ = make_eval_set(3, seed=1, image_id_start=50, ann_id_start=900)
    assert [im["id"] for im in other["images"]] == [50, 51, 52] and other["annotations"][0]["id"] == 900


def test_people_per_image_empty_images_and_crowds():
    gt, _ = _eval_set()
    people = _by_image(a for a in gt["annotations"] if not a["iscrowd"])
    crowds = _by_image(a for a in gt["annotations"] if a["iscrowd"])
    counts = np.array([len(people.get(im["id"], [])) for im in gt["images"]])
    assert _near((counts == 0).mean(), 0.1, N)
    # min(geometric(0.4), 15): mean 2.5 (truncation changes it by < 0.01), sd ~1.9
    present = counts[counts > 0]
    assert abs(present.mean() - 2.5) < 4 * 1.94 / math.sqrt(len(present)) and present.max() <= 15
    assert _near(len(crowds) / N, 0.05, N) and all(len(v) == 1 for v in crowds.values())
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    for (crowd,) in crowds.values():
        x, y, w, h = crowd["bbox"]
        img_w, img_h = sizes[crowd["image_id"]]
        assert crowd["keypoints"] == [0] * 51 and crowd["num_keypoints"] == 0
        assert 100 - 0.01 <= w <= 0.9 * img_w + 0.01 and 60 - 0.01 <= h <= 0.6 * img_h + 0.01
        assert x >= 0 and y >= 0 and x + w <= img_w + 0.02 and y + h <= img_h + 0.02
        assert 0.3 * w * h - 1 <= crowd["area"] <= 0.7 * w * h + 1


def test_person_boxes_areas_and_joints():
    gt, _ = _eval_set()
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    anns = [a for a in gt["annotations"] if not a["iscrowd"]]
    zero = 0
    visibility = {"head_arms": Counter(), "legs": Counter()}
    heights, ratios = [], []
    for a in anns:
        x, y, w, h = a["bbox"]
        img_w, img_h = sizes[a["image_id"]]
        assert all(v == round(v, 2) for v in a["bbox"])
        assert 18 - 0.01 <= h <= min(img_h, 460) + 0.01 and 0.35 - 1e-3 <= w / h <= 0.75 + 1e-3
        assert x >= 0 and y >= 0 and x + w <= max(img_w, w) + 0.02 and y + h <= max(img_h, h) + 0.02
        assert 0.45 * w * h * 0.99 <= a["area"] <= 0.75 * w * h * 1.01  # of the unrounded box
        heights.append(h)
        ratios.append(w / h)
        kp = np.asarray(a["keypoints"]).reshape(17, 3)
        v = kp[:, 2]
        assert set(v.tolist()) <= {0, 1, 2} and a["num_keypoints"] == int((v > 0).sum())
        assert not kp[v == 0].any()  # unlabelled: 0, 0, 0
        lab = kp[v > 0]
        assert (lab[:, 0] >= x - 0.3 * w).all() and (lab[:, 0] <= x + 1.3 * w).all()
        assert (lab[:, 1] >= y - 0.3 * h).all() and (lab[:, 1] <= y + 1.3 * h).all()
        if a["num_keypoints"] == 0:
            zero += 1
            continue
        visibility["head_arms"].update(v[:11].tolist())
        visibility["legs"].update(v[11:].tolist())
    assert _near(zero / len(anns), 0.03, len(anns))
    head = visibility["head_arms"]
    n_head = sum(head.values())
    for value, p in ((0, 0.2), (1, 0.1), (2, 0.7)):
        assert _near(head[value] / n_head, p, n_head), (value, head)
    legs = visibility["legs"]
    n_legs = sum(legs.values())
    # 15 % of people are truncated (legs unlabelled): P(v = 0) = 0.15 + 0.85 * 0.2
    assert _near(legs[0] / n_legs, 0.32, n_legs / 6)
    # heights log-uniform from 18 px: the median sits near the geometric middle of its range
    assert 50 < np.median(heights) < 150 and abs(np.mean(ratios) - 0.55) < 0.02
    # ... reaching both ends of [18, 460] px (about 1.7 % of people lie in each 1-px/20-px end)
    assert min(heights) < 19 and max(heights) > 440
    areas = np.array([a["area"] for a in anns])
    for lo, hi in ((0, 32 ** 2), (32 ** 2, 96 ** 2), (96 ** 2, math.inf)):  # every COCO area range
        assert 0.2 < ((areas >= lo) & (areas < hi)).mean() < 0.45


def test_people_are_seen_from_the_front_and_the_back():
    gt, _ = _eval_set()
    front = back = 0
    for a in gt["annotations"]:
        kp = np.asarray(a["keypoints"]).reshape(17, 3)
        if a["iscrowd"] or not (kp[5, 2] and kp[6, 2]) or a["bbox"][2] < 20:
            continue
        # the template faces the camera: the left shoulder (5) is right of the right one (6)
        if kp[5, 0] > kp[6, 0]:
            front += 1
        else:
            back += 1
    assert _near(back / (front + back), 0.4, front + back)


def test_results_scores_and_ties():
    gt, results = _eval_set()
    assert all(set(r) == {"image_id", "category_id", "keypoints", "score"} for r in results)
    scores = np.array([r["score"] for r in results])
    assert scores.min() >= 1e-4 and scores.max() <= 1.0
    conf = np.array([r["keypoints"][2::3] for r in results])
    assert conf.min() >= 0.2 and conf.max() <= 1.0 and abs(conf.mean() - 0.6) < 0.02
    per_image = _by_image(results)
    tied = [img for img, rs in per_image.items()
            if len(rs) > 1 and all(r["score"] == round(r["score"], 1) and r["score"] >= 0.1 for r in rs)]
    assert _near(len(tied) / N, 0.05, N, sds=5)
    many = [img for img, rs in per_image.items() if len(rs) > 20]
    assert _near(len(many) / N, 0.03, N, sds=5)
    # result files are not grouped by image: image ids change often along the list
    changes = sum(a["image_id"] != b["image_id"] for a, b in zip(results, results[1:]))
    assert changes > 0.9 * len(results)
    # with_bbox: each result carries its person's box
    gt_b, with_box = make_eval_set(40, seed=0, with_bbox=True)
    assert gt_b == make_eval_set(40, seed=0)[0]
    assert all(len(r["bbox"]) == 4 and all(isinstance(v, float) for v in r["bbox"]) for r in with_box)


def test_results_per_person_detections_duplicates_and_false_positives():
    # Without crowds, empty images, extra false positives and many-detection images every
    # result is a person's detection or its duplicate: 0.9 * (1 + 0.25) per person.
    gt, results = make_eval_set(N, seed=2, crowd_frac=0.0, empty_frac=0.0, fp_rate=0.0, many_det_frac=0.0,
                                zero_vis_frac=0.0)
    assert not any(a["iscrowd"] for a in gt["annotations"])
    per_person = len(results) / len(gt["annotations"])
    assert abs(per_person - 1.125) < 0.06
    # The set is hard but learnable: the published AP of a good model lies in this band.
    stats = KeypointEvaluator(gt).evaluate(results)
    assert 0.6 < stats[0] < 0.85 and stats[1] > 0.85
    _, with_fp = make_eval_set(N, seed=2, crowd_frac=0.0, empty_frac=0.0, fp_rate=2.0, many_det_frac=0.0,
                               zero_vis_frac=0.0)
    assert abs((len(with_fp) - len(results)) / N - 2.0) < 4 * math.sqrt(2.0 / N)


def test_default_set_evaluates_in_its_known_band():
    gt, results = _eval_set()
    stats = KeypointEvaluator(gt).evaluate(results)
    # AP, AP50, AP75, AP medium, AP large, then the recalls: pinned loosely, so a generator
    # change that makes the set trivial or hopeless fails here
    assert 0.5 < stats[0] < 0.75 and 0.8 < stats[1] < 0.95 and 0.5 < stats[2] < 0.8
    assert 0.5 < stats[5] < 0.8 and stats[6] > stats[5]


# ---------------------------------------------------------------- results_from_detections
def _one_person_gt():
    kp = np.zeros((17, 3))
    kp[:, 0] = 100 + 10 * np.arange(17) % 80
    kp[:, 1] = 50 + 12 * np.arange(17)
    kp[:, 2] = 2
    kp[[1, 8, 12], 2] = 1  # occluded but labelled: kept like visible ones
    kp[3] = 0  # unlabelled: filled from the template in the GT box
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [90.0, 40.0, 100.0, 220.0],
             "area": 15000.0, "num_keypoints": 16, "keypoints": kp.reshape(-1).astype(int).tolist()},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [300.0, 40.0, 100.0, 220.0],
             "area": 15000.0, "num_keypoints": 0, "keypoints": [0] * 51}]
    gt = {"images": [{"id": 1, "width": 640, "height": 480}], "annotations": anns,
          "categories": [{"id": 1, "name": "person", "keypoints": KEYPOINT_NAMES}]}
    return gt, kp


def test_detections_take_the_best_overlapping_persons_joints_plus_box_scaled_noise():
    from vitpose_scale.eval.synthetic_eval import _TEMPLATE

    gt, kp = _one_person_gt()
    fill = np.stack([90 + _TEMPLATE[:, 0] * 100, 40 + _TEMPLATE[:, 1] * 220], axis=1)
    expected = np.where(kp[:, 2:3] > 0, kp[:, :2], fill)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [90.0, 40.0, 100.0, 220.0], "score": 0.8}] * 200
    out = results_from_detections(gt, dets, seed=0, noise=0.05)
    pts = np.array([r["keypoints"] for r in out]).reshape(200, 17, 3)
    err = (pts[:, :, :2] - expected[None]) / math.sqrt(100 * 220)
    # noise = uniform(0.3, 1.7) * 0.05 of sqrt(w * h): E|err| per axis = E[n] * sqrt(2 / pi)
    assert abs(np.abs(err).mean() - 0.05 * math.sqrt(2 / math.pi)) < 0.004
    assert abs(err.mean()) < 0.003
    # score = detector score * pose quality, quality = 1 - 2 * noise in [1 - 3.4 * 0.05, 1 - 0.6 * 0.05]
    q = np.array([r["score"] for r in out]) / 0.8
    assert q.min() >= 1 - 3.4 * 0.05 - 1e-9 and q.max() <= 1 - 0.6 * 0.05 + 1e-9
    assert q.max() - q.min() > 0.1
    assert all(r["image_id"] == 1 and r["category_id"] == 1 for r in out)
    assert results_from_detections(gt, dets[:3], seed=4) == results_from_detections(gt, dets[:3], seed=4)
    assert results_from_detections(gt, dets[:3], seed=4) != results_from_detections(gt, dets[:3], seed=5)


@pytest.mark.parametrize("bbox,matched", [
    ([90.0, 40.0, 100.0, 220.0], True),     # the person's own box
    ([90.0, 40.0, 100.0, 70.0], True),      # IoU 0.318 > 0.3
    ([90.0, 40.0, 100.0, 60.0], False),     # IoU 0.273
    ([310.0, 50.0, 100.0, 220.0], False),   # on the crowd region only: crowds are never matched
    ([500.0, 300.0, 50.0, 100.0], False),   # on nobody
])
def test_detections_match_by_iou_above_0_3_else_a_template_in_their_own_box(bbox, matched):
    from vitpose_scale.eval.synthetic_eval import _TEMPLATE

    gt, kp = _one_person_gt()
    dets = [{"image_id": 1, "category_id": 1, "bbox": bbox, "score": 1.0}] * 100
    pts = np.array([r["keypoints"] for r in results_from_detections(gt, dets, noise=0.02)]).reshape(100, 17, 3)
    mean = pts[:, :, :2].mean(axis=0)
    x, y, w, h = bbox
    template = np.stack([x + _TEMPLATE[:, 0] * w, y + _TEMPLATE[:, 1] * h], axis=1)
    target = kp[:, :2] if matched else template
    rows = kp[:, 2] > 0 if matched else slice(None)
    assert np.abs(mean[rows] - target[rows]).max() < 0.02 * math.sqrt(w * h)


def test_the_set_is_a_complete_coco_keypoint_file_and_seeds_default_to_0():
    gt, results = make_eval_set(30)
    assert list(gt) == ["info", "licenses", "images", "annotations", "categories"]
    assert gt["info"] == {"description": "vitpose_scale synthetic keypoint set", "seed": 0}
    assert gt["licenses"] == [] and gt["categories"][0]["supercategory"] == "person"
    assert (gt, results) == make_eval_set(30, seed=0)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 50.0, 90.0], "score": 0.5}]
    assert results_from_detections(gt, dets) == results_from_detections(gt, dets, seed=0)


def test_crowd_regions_and_the_people_detected_inside_them():
    # every image: a crowd region and nobody else, so every result is a detection inside a crowd
    gt, results = make_eval_set(300, seed=3, crowd_frac=1.0, empty_frac=1.0, fp_rate=0.0, many_det_frac=0.0)
    crowds = {a["image_id"]: a for a in gt["annotations"]}
    assert len(crowds) == 300 and all(a["iscrowd"] == 1 and a["category_id"] == 1 for a in crowds.values())
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    for a in crowds.values():
        x, y, w, h = a["bbox"]
        img_w, img_h = sizes[a["image_id"]]
        assert all(v == round(v, 2) for v in a["bbox"]) and a["area"] == round(a["area"], 2)
        assert 100 <= w <= 0.9 * img_w + 0.01 and 60 <= h <= 0.6 * img_h + 0.01
        assert 0 <= x <= img_w - w + 0.01 and 0 <= y <= img_h - h + 0.01
    per_image = _by_image(results)
    counts = np.array([len(per_image.get(i, [])) for i in crowds])
    assert counts.min() == 1 and counts.max() == 4 and abs(counts.mean() - 2.5) < 0.2
    scores = np.array([r["score"] for r in results])
    assert scores.min() >= 0.2 - 1e-9 and scores.max() <= 0.9 + 1e-9 and scores.max() - scores.min() > 0.6
    for r in results:
        x, y, w, h = crowds[r["image_id"]]["bbox"]
        pts = np.asarray(r["keypoints"]).reshape(17, 3)
        # template people (half as wide as tall, at least 30 px) inside the crowd box, noise 0.05
        extent = pts[:, :2].max(axis=0) - pts[:, :2].min(axis=0)
        assert 30 * 0.5 * 0.5 < extent[1] and extent[0] < extent[1]
        margin = 0.3 * np.sqrt(w * h)
        assert (pts[:, 0] > x - margin).all() and (pts[:, 0] < x + w + margin).all()
        assert (pts[:, 1] > y - margin).all() and (pts[:, 1] < y + h + margin).all()


def test_many_detection_images_get_21_to_40_false_positives_of_low_score():
    gt, results = make_eval_set(200, seed=4, crowd_frac=0.0, empty_frac=1.0, fp_rate=0.0, many_det_frac=1.0,
                                tie_frac=0.0)
    counts = Counter(r["image_id"] for r in results)
    assert len(counts) == 200 and min(counts.values()) == 21 and max(counts.values()) == 40
    scores = np.array([r["score"] for r in results])  # uniform(0, 0.6) squared, at least 1e-4
    assert scores.min() >= 1e-4 and 0.3 < scores.max() <= 0.36 and abs(np.median(scores) - 0.09) < 0.02


def test_result_boxes_are_their_peoples_boxes():
    gt, results = make_eval_set(100, seed=5, crowd_frac=0.0, fp_rate=0.0, many_det_frac=0.0, with_bbox=True)
    boxes = defaultdict(list)
    for a in gt["annotations"]:
        boxes[a["image_id"]].append(a["bbox"])
    for r in results:
        assert [round(v, 2) for v in r["bbox"]] in boxes[r["image_id"]]


def test_every_fraction_parameter_and_the_id_offsets_are_honoured():
    n = 400
    gt, results = make_eval_set(n, seed=3, crowd_frac=0.25, empty_frac=0.2, zero_vis_frac=0.2, many_det_frac=0.1,
                                tie_frac=0.3, fp_rate=1.0, image_id_start=1000, ann_id_start=50)

    def within(count, frac, total):  # a binomial count within 4 standard deviations of its mean
        sd = math.sqrt(total * frac * (1 - frac))
        return abs(count - total * frac) <= 4 * sd + 1

    images = {im["id"]: im for im in gt["images"]}
    assert list(images) == list(range(1000, 1000 + n))
    assert all((im["width"], im["height"]) in ((640, 480), (480, 640)) and im["file_name"] == f"{im['id']:012d}.jpg"
               for im in images.values())
    assert [a["id"] for a in gt["annotations"]] == list(range(50, 50 + len(gt["annotations"])))
    assert gt["categories"][0]["keypoints"] == KEYPOINT_NAMES and gt["categories"][0]["id"] == 1
    people = [a for a in gt["annotations"] if not a["iscrowd"]]
    crowds = [a for a in gt["annotations"] if a["iscrowd"]]
    for a in people:
        kp = np.asarray(a["keypoints"]).reshape(17, 3)
        assert set(kp[:, 2]) <= {0, 1, 2} and a["num_keypoints"] == int((kp[:, 2] > 0).sum())
        assert not kp[kp[:, 2] == 0].any()  # unlabelled joints are 0, 0, 0
        x, y, w, h = a["bbox"]
        im = images[a["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= im["width"] + 0.01 and y + h <= im["height"] + 0.01 and w < h
        assert 0.44 * w * h <= a["area"] <= 0.76 * w * h
    assert all(a["num_keypoints"] == 0 and not any(a["keypoints"]) for a in crowds)
    assert within(len({a["image_id"] for a in crowds}), 0.25, n)
    assert within(n - len({a["image_id"] for a in people}), 0.2, n)
    assert within(sum(a["num_keypoints"] == 0 for a in people), 0.2, len(people))
    areas = [a["area"] for a in people]
    assert min(areas) < 32 ** 2 and any(32 ** 2 <= s < 96 ** 2 for s in areas) and max(areas) >= 96 ** 2
    per_image = Counter(r["image_id"] for r in results)
    assert within(sum(c > 20 for c in per_image.values()), 0.1, n)
    assert set(per_image) <= set(images)
    scores_of = {}
    for r in results:
        assert len(r["keypoints"]) == 51 and "bbox" not in r and 1e-4 <= r["score"] <= 1.0
        conf = np.asarray(r["keypoints"][2::3])
        assert ((conf >= 0.2) & (conf <= 1.0)).all()
        scores_of.setdefault(r["image_id"], []).append(r["score"])
    tied = sum(all(round(s, 1) == s for s in scores) for scores in scores_of.values())
    assert within(tied, 0.3, len(scores_of))
    ids = [r["image_id"] for r in results]
    assert ids != sorted(ids)  # not grouped by image
    again, again_results = make_eval_set(n, seed=3, crowd_frac=0.25, empty_frac=0.2, zero_vis_frac=0.2,
                                         many_det_frac=0.1, tie_frac=0.3, image_id_start=1000, ann_id_start=50)
    assert again == gt and again_results == results
    _, boxed = make_eval_set(5, seed=1, with_bbox=True)
    assert all(len(r["bbox"]) == 4 for r in boxed)
    other, _ = make_eval_set(n, seed=4)
    assert other["annotations"] != gt["annotations"]
    # the defaults: 5 % crowds, 10 % empty images, 3 % zero-joint people, 3 % many-detection images, 5 % ties
    m = 1500
    gt, results = make_eval_set(m)
    people = [a for a in gt["annotations"] if not a["iscrowd"]]
    assert gt["images"][0]["id"] == 1 and gt["annotations"][0]["id"] == 1
    assert within(len({a["image_id"] for a in gt["annotations"] if a["iscrowd"]}), 0.05, m)
    assert within(m - len({a["image_id"] for a in people}), 0.1, m)
    assert within(sum(a["num_keypoints"] == 0 for a in people), 0.03, len(people))
    per_image = Counter(r["image_id"] for r in results)
    assert within(sum(c > 20 for c in per_image.values()), 0.03, m)
