"""Heatmap decoding (argmax, DARK, UDP inverse), flip test and post-processing."""
import contextlib
import io

import numpy as np
import pytest
import torch

from vitpose_scale.config import DataConfig, EvalConfig
from vitpose_scale.data.coco import TopDownCocoDataset
from vitpose_scale.data.loader import build_eval_loader
from vitpose_scale.data.transforms import COCO_FLIP_PAIRS, get_warp_matrix, transform_points
from vitpose_scale.eval.decode import (average_flip, decode_heatmaps, dark_refine, flip_heatmaps, get_max_preds)
from vitpose_scale.eval.postprocess import postprocess_people, predict_dataset, rescore, to_coco_results


def _gaussian(h, w, mu, sigma=2.0):
    ys, xs = np.mgrid[0:h, 0:w]
    return np.exp(-((xs - mu[0]) ** 2 + (ys - mu[1]) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def test_dark_recovers_subpixel_centre():
    rng = np.random.default_rng(0)
    mus = rng.uniform([8, 8], [40, 56], size=(17, 2))
    hm = np.stack([_gaussian(64, 48, m) for m in mus])[None]
    preds, maxvals = get_max_preds(hm)
    assert np.array_equal(preds[0], np.floor(mus + 0.5))  # plain argmax: nearest pixel
    refined = dark_refine(hm, preds, kernel=11)
    assert np.abs(refined[0] - mus).max() < 0.05
    assert np.abs(preds[0] - mus).max() > 0.3  # the refinement did the work


def test_decode_maps_back_to_image_with_rotation():
    # A keypoint in the image -> crop (rotated, scaled) -> heatmap Gaussian -> decode -> image.
    image_size, hm_size = (256, 192), (64, 48)
    center, scale, rot = np.array([300.4, 210.9]), np.array([180.0, 240.0]), 25.0
    pts = np.array([[280.3, 150.2], [330.7, 260.1], [250.0, 222.2]])
    m = get_warp_matrix(rot, center, (image_size[1], image_size[0]), scale)
    stride = np.array([191 / 47, 255 / 63])
    mus = transform_points(pts, m) / stride
    hm = np.stack([_gaussian(*hm_size, mu) for mu in mus])[None]
    kp, maxvals = decode_heatmaps(hm, center[None], scale[None], np.array([rot]), image_size, dark=True)
    px_per_hm = scale / np.array([47, 63])  # image pixels per heatmap pixel
    assert np.all(np.abs(kp[0] - pts) < 0.05 * px_per_hm)
    assert maxvals.shape == (1, 3, 1) and np.all(maxvals > 0.9)
    # Without DARK the error is bounded by half a heatmap pixel (after rotation, by its diagonal).
    kp0, _ = decode_heatmaps(hm, center[None], scale[None], np.array([rot]), image_size, dark=False)
    assert np.all(np.linalg.norm(kp0[0] - pts, axis=1) <= np.linalg.norm(px_per_hm) / 2 + 1e-3)


def test_flip_heatmaps_swaps_and_mirrors():
    rng = np.random.default_rng(0)
    hm = rng.random((2, 17, 8, 6)).astype(np.float32)
    f = flip_heatmaps(hm, COCO_FLIP_PAIRS)
    assert np.array_equal(f[:, 5], hm[:, 6, :, ::-1]) and np.array_equal(f[:, 0], hm[:, 0, :, ::-1])
    assert np.array_equal(flip_heatmaps(f, COCO_FLIP_PAIRS), hm)  # an involution
    assert np.array_equal(flip_heatmaps(torch.from_numpy(hm), COCO_FLIP_PAIRS).numpy(), f)
    assert np.allclose(average_flip(hm, f), (hm + f) / 2)


def test_flip_test_of_symmetric_input_is_symmetric():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 17, 7, stride=4, padding=3), torch.nn.Softplus())
    img = torch.randn(1, 3, 256, 192)
    img = (img + img.flip(3)) / 2  # mirror-symmetric crop
    with torch.no_grad():
        avg = average_flip(net(img), flip_heatmaps(net(img.flip(3)), COCO_FLIP_PAIRS)).numpy()
    # With UDP the mirror axis is shared by crop and heatmap: no shift, exact symmetry.
    assert np.allclose(flip_heatmaps(avg, COCO_FLIP_PAIRS), avg, atol=1e-6)
    center, scale = np.array([[400.0, 300.0]]), np.array([[192.0, 256.0]])
    kp, _ = decode_heatmaps(avg, center, scale, image_size=(256, 192), dark=True)
    for left, right in COCO_FLIP_PAIRS:  # mirror pairs about the box centre
        assert kp[0, left, 0] + kp[0, right, 0] == pytest.approx(2 * center[0, 0], abs=1e-3)
        assert kp[0, left, 1] == pytest.approx(kp[0, right, 1], abs=1e-3)
    # The nose map is itself mirror-symmetric (its argmax may be either of two mirrored twins).
    assert np.allclose(avg[0, 0], avg[0, 0, :, ::-1], atol=1e-6)


def test_rescore_and_results_format():
    assert rescore([0.9, 0.1, 0.5, 0.3], 0.5, thr=0.2) == pytest.approx((0.9 + 0.5 + 0.3) / 3 * 0.5)
    assert rescore([0.1, 0.2], 0.9) == 0.0
    res = to_coco_results([7], np.ones((1, 17, 3)), [0.5])
    assert res[0]["image_id"] == 7 and res[0]["category_id"] == 1 and len(res[0]["keypoints"]) == 51


def test_postprocess_nms_merges_duplicates():
    rng = np.random.default_rng(0)
    base = np.concatenate([rng.uniform(50, 150, (17, 2)), np.full((17, 1), 0.9)], axis=1)
    far = base.copy()
    far[:, :2] += 300
    people = [dict(image_id=1, keypoints=base, area=10000.0, bbox_score=0.9),
              dict(image_id=1, keypoints=base + [0.5, 0.5, 0], area=10000.0, bbox_score=0.8),
              dict(image_id=1, keypoints=far, area=10000.0, bbox_score=0.7),
              dict(image_id=2, keypoints=base, area=10000.0, bbox_score=0.6)]
    res = postprocess_people(people, 0.2, 0.9)
    assert [r["image_id"] for r in res] == [1, 1, 2]
    assert res[0]["score"] == pytest.approx(0.9 * 0.9) and res[1]["score"] == pytest.approx(0.9 * 0.7)


def test_oracle_predictions_score_near_perfect_ap(coco_sample):
    """Encode GT with the dataset, decode with the evaluator: COCO AP must be ~1 (flip test on)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ds = TopDownCocoDataset(coco_sample, "test_coco.json", ".", DataConfig(), (256, 192), train=False)
    loader = build_eval_loader(ds, batch_size=5, rank=0, world_size=1, num_workers=0)
    targets = {}  # the oracle model returns each crop's own target heatmaps
    for batch in build_eval_loader(ds, batch_size=5, rank=0, world_size=1, num_workers=0):
        targets[batch["img"].sum().item()] = batch["target"]
    state = {}

    def oracle(imgs):
        key = imgs.sum().item()
        if key in targets and state.get("last") is not None and not torch.equal(imgs, state["last"].flip(3)):
            state["last"] = imgs
            return targets[key]
        if state.get("last") is not None and torch.equal(imgs, state["last"].flip(3)):
            return flip_heatmaps(targets[state["last"].sum().item()], COCO_FLIP_PAIRS)
        state["last"] = imgs
        return targets[key]

    results = predict_dataset(oracle, loader, EvalConfig(flip_test=True), COCO_FLIP_PAIRS)
    assert len(results) == len(ds) == 12
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_sample / "test_coco.json"))
        ev = COCOeval(gt, gt.loadRes(results), "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] > 0.95, ev.stats


def test_dark_never_moves_more_than_one_pixel_on_flat_or_saddle_maps():
    from vitpose_scale.eval.decode import dark_refine, get_max_preds

    rng = np.random.default_rng(0)
    heatmaps = (rng.random((4, 17, 32, 24)) * 1e-3).astype(np.float32)  # an untrained model's noise
    preds, _ = get_max_preds(heatmaps)
    refined = dark_refine(heatmaps, preds[..., :2] if preds.shape[-1] > 2 else preds)
    assert np.abs(refined - preds[..., :2]).max() <= 1.0 + 1e-6
