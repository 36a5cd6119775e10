"""Heatmap decoding (argmax, DARK, UDP inverse), flip test and post-processing."""
import contextlib
import io

import cv2
import numpy as np
import pytest
import torch

from vitpose_scale.config import DataConfig, EvalConfig
from vitpose_scale.data.coco import TopDownCocoDataset
from vitpose_scale.data.loader import build_eval_loader
from vitpose_scale.data.transforms import get_warp_matrix, transform_points
from vitpose_scale.eval.decode import (_gaussian_blur, average_flip, dark_refine, decode_heatmaps, flip_heatmaps,
                                       get_max_preds, heatmap_to_image)
from vitpose_scale.eval.postprocess import postprocess_people, predict_dataset, rescore, to_coco_results
from vitpose_scale.keypoints import get_spec

COCO_FLIP_PAIRS = get_spec("coco").flip_pairs


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
    kp, maxvals = decode_heatmaps(hm, center[None], scale[None], np.array([rot]), image_size, method="dark")
    px_per_hm = scale / np.array([47, 63])  # image pixels per heatmap pixel
    assert np.all(np.abs(kp[0] - pts) < 0.05 * px_per_hm)
    assert maxvals.shape == (1, 3, 1) and np.all(maxvals > 0.9)
    # Without DARK the error is bounded by half a heatmap pixel (after rotation, by its diagonal).
    kp0, _ = decode_heatmaps(hm, center[None], scale[None], np.array([rot]), image_size, method="argmax")
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
    kp, _ = decode_heatmaps(avg, center, scale, image_size=(256, 192), method="dark")
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


# ------------------------------------------------- the official UDP decode --
def official_udp_decode(heatmaps, centers, scales_px, kernel=11):
    """A line-by-line transcription of mmpose 0.x (as vendored by ViTPose) for the ViTPose test config:
    ``keypoints_from_heatmaps(use_udp=True, target_type='GaussianHeatmap', post_process='default',
    kernel=11)`` = ``_get_max_preds`` + ``post_dark_udp`` + ``transform_preds(use_udp=True)``
    (mmpose/core/evaluation/top_down_eval.py, mmpose/core/post_processing/post_transforms.py).
    ``scales_px`` is mmpose's ``scale * 200``. Kept deliberately in the reference's own form
    (flat indices, in-place float32 arithmetic) so it is an independent check of ours."""
    heatmaps = np.asarray(heatmaps, dtype=np.float32).copy()  # ndarray.copy(): C order
    N, K, H, W = heatmaps.shape
    # _get_max_preds
    flat = heatmaps.reshape((N, K, -1))
    idx = np.argmax(flat, 2).reshape((N, K, 1))
    maxvals = np.amax(flat, 2).reshape((N, K, 1))
    preds = np.tile(idx, (1, 1, 2)).astype(np.float32)
    preds[:, :, 0] = preds[:, :, 0] % W
    preds[:, :, 1] = preds[:, :, 1] // W
    preds = np.where(np.tile(maxvals, (1, 1, 2)) > 0.0, preds, -1)
    # post_dark_udp(preds, heatmaps, kernel)
    for maps in heatmaps:
        for hm in maps:
            cv2.GaussianBlur(hm, (kernel, kernel), 0, hm)
    np.clip(heatmaps, 0.001, 50, heatmaps)
    np.log(heatmaps, heatmaps)
    pad = np.pad(heatmaps, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge").flatten()
    index = preds[..., 0] + 1 + (preds[..., 1] + 1) * (W + 2)
    index += (W + 2) * (H + 2) * np.arange(0, N * K).reshape(-1, K)
    index = index.astype(int).reshape(-1, 1)
    i_ = pad[index]
    ix1 = pad[index + 1]
    iy1 = pad[index + W + 2]
    ix1y1 = pad[index + W + 3]
    ix1_y1_ = pad[index - W - 3]
    ix1_ = pad[index - 1]
    iy1_ = pad[index - 2 - W]
    dx = 0.5 * (ix1 - ix1_)
    dy = 0.5 * (iy1 - iy1_)
    derivative = np.concatenate([dx, dy], axis=1).reshape(N, K, 2, 1)
    dxx = ix1 - 2 * i_ + ix1_
    dyy = iy1 - 2 * i_ + iy1_
    dxy = 0.5 * (ix1y1 - ix1 - iy1 + i_ + i_ - ix1_ - iy1_ + ix1_y1_)
    hessian = np.concatenate([dxx, dxy, dxy, dyy], axis=1).reshape(N, K, 2, 2)
    hessian = np.linalg.inv(hessian + np.finfo(np.float32).eps * np.eye(2))
    preds -= np.einsum("ijmn,ijnk->ijmk", hessian, derivative).squeeze()
    heatmap_xy = preds.copy()
    # transform_preds(preds[i], center[i], scale[i], [W, H], use_udp=True)
    out = np.empty_like(preds)
    for i in range(N):
        scale = np.asarray(scales_px[i], dtype=np.float32)
        center = np.asarray(centers[i], dtype=np.float32)
        scale_x = scale[0] / (W - 1.0)
        scale_y = scale[1] / (H - 1.0)
        out[i, :, 0] = preds[i, :, 0] * scale_x + center[0] - scale[0] * 0.5
        out[i, :, 1] = preds[i, :, 1] * scale_y + center[1] - scale[1] * 0.5
    return out, maxvals, heatmap_xy


def _official_test_maps(rng, n, k, h, w, border: bool):
    """Gaussian maps (sigma 2, the training target) plus noise; with ``border`` some peaks on the edge
    rows/columns and some just outside the map."""
    mus = np.stack([rng.uniform(-1.5, w + 0.5, (n, k)), rng.uniform(-1.5, h + 0.5, (n, k))], axis=-1) if border \
        else np.stack([rng.uniform(2, w - 3, (n, k)), rng.uniform(2, h - 3, (n, k))], axis=-1)
    if border:
        mus[:, ::3, 0] = rng.choice([0.0, w - 1.0], size=mus[:, ::3, 0].shape)
        mus[:, 1::4, 1] = rng.choice([0.0, h - 1.0], size=mus[:, 1::4, 1].shape)
    maps = np.stack([np.stack([_gaussian(h, w, mus[i, j]) for j in range(k)]) for i in range(n)])
    return (maps * rng.uniform(0.3, 1.0, (n, k, 1, 1)) + rng.normal(0, 0.02, maps.shape)).astype(np.float32)


@pytest.mark.parametrize("case", ["gaussian", "gaussian_border", "random"])
def test_default_decode_equals_official_udp_dark(case):
    rng = np.random.default_rng({"gaussian": 1, "gaussian_border": 2, "random": 3}[case])
    n, k, h, w = 6, 17, 64, 48
    if case == "random":
        maps = rng.random((n, k, h, w)).astype(np.float32)
    else:
        maps = _official_test_maps(rng, n, k, h, w, border=case == "gaussian_border")
    centers = rng.uniform(100, 540, (n, 2)).astype(np.float32)
    scales = rng.uniform(40, 400, (n, 2)).astype(np.float32)
    ref_xy, ref_vals, ref_hm = official_udp_decode(maps, centers, scales)
    if case == "gaussian_border":  # the case is what it says: peaks on all four edges
        arg, _ = get_max_preds(maps)
        assert (arg[..., 0] == 0).any() and (arg[..., 0] == w - 1).any()
        assert (arg[..., 1] == 0).any() and (arg[..., 1] == h - 1).any()
    kp, vals = decode_heatmaps(maps, centers, scales, image_size=(256, 192))  # the default: udp_dark
    assert np.array_equal(vals, ref_vals)
    assert np.abs(kp - ref_xy).max() <= 1e-4, np.abs(kp - ref_xy).max()
    from vitpose_scale.eval.decode import udp_dark_refine

    arg, _ = get_max_preds(maps)
    assert np.abs(udp_dark_refine(maps, arg) - ref_hm).max() <= 1e-5
    # Any memory layout (torch's flip test hands over strided arrays) decodes the same.
    strided = np.ascontiguousarray(maps.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    assert not strided.flags["C_CONTIGUOUS"]
    assert np.array_equal(decode_heatmaps(strided, centers, scales, image_size=(256, 192))[0], kp)


def test_decode_options_select_the_algorithm():
    rng = np.random.default_rng(4)
    maps = _official_test_maps(rng, 3, 17, 64, 48, border=True)
    centers, scales = np.full((3, 2), 300, np.float32), np.full((3, 2), 200, np.float32)
    ref, _, _ = official_udp_decode(maps, centers, scales)
    official, _ = decode_heatmaps(maps, centers, scales, image_size=(256, 192), method="udp_dark")
    bounded, _ = decode_heatmaps(maps, centers, scales, image_size=(256, 192), method="dark")
    argmax, _ = decode_heatmaps(maps, centers, scales, image_size=(256, 192), method="argmax")
    assert np.abs(official - ref).max() <= 1e-4
    preds, _ = get_max_preds(maps)
    px = 200 / np.array([47, 63])
    assert np.allclose(argmax, preds * px + 300 - 100, atol=1e-3)
    assert np.allclose(bounded, dark_refine(maps, preds) * px + 300 - 100, atol=1e-3)
    assert np.abs(bounded - ref).max() > 0.1  # the options really differ
    with pytest.raises(ValueError, match="udp_dark"):
        decode_heatmaps(maps, centers, scales, image_size=(256, 192), method="dakr")


def test_udp_inverse_transform_equals_official_transform_preds():
    # Rotation 0 (the test path): our affine inverse and mmpose's transform_preds(use_udp=True) agree.
    rng = np.random.default_rng(5)
    for _ in range(20):
        hm_hw = (int(rng.integers(16, 150)), int(rng.integers(12, 110)))
        coords = rng.uniform(-2, max(hm_hw) + 2, (17, 2)).astype(np.float32)
        center = rng.uniform(0, 640, 2).astype(np.float32)
        scale = rng.uniform(10, 600, 2).astype(np.float32)
        ours = heatmap_to_image(coords, center, scale, 0.0, (hm_hw[0] * 4, hm_hw[1] * 4), hm_hw)
        s = scale.astype(np.float64)
        ref = coords * (s / (np.array(hm_hw[::-1]) - 1.0)) + center - 0.5 * s
        assert np.abs(ours - ref).max() < 1e-9


def test_decode_config_is_checked_and_old_configs_still_load():
    from vitpose_scale.config import ConfigError, from_dict

    assert from_dict({}).eval.decode == "udp_dark"
    # a run's config.yaml from before the two keys went: their values of today's behaviour load
    assert from_dict({"eval": {"dark": None, "use_udp": True}}).eval.decode == "udp_dark"
    with pytest.raises(ConfigError, match="eval.decode"):
        from_dict({"eval": {"decode": "dakr"}})
    with pytest.raises(ConfigError, match="eval.blur_kernel"):
        from_dict({"eval": {"blur_kernel": 10}})


def test_biased_inverse_transform_equals_official_transform_preds_without_udp():
    # mmpose transform_preds(use_udp=False): scale / output_size (pixel counts, not intervals).
    rng = np.random.default_rng(6)
    for _ in range(20):
        hm_hw = (int(rng.integers(16, 150)), int(rng.integers(12, 110)))
        coords = rng.uniform(-2, max(hm_hw) + 2, (17, 2))
        center = rng.uniform(0, 640, 2).astype(np.float32)
        scale = rng.uniform(10, 600, 2).astype(np.float32)
        ours = heatmap_to_image(coords, center, scale, 0.0, (hm_hw[0] * 4, hm_hw[1] * 4), hm_hw, use_udp=False)
        ref = np.empty((17, 2))
        c, s = center.astype(np.float64), scale.astype(np.float64)
        ref[:, 0] = coords[:, 0] * (s[0] / hm_hw[1]) + c[0] - s[0] * 0.5
        ref[:, 1] = coords[:, 1] * (s[1] / hm_hw[0]) + c[1] - s[1] * 0.5
        assert np.abs(ours - ref).max() < 1e-9
    with pytest.raises(ValueError, match=r"^non-UDP decoding supports rotation 0 only$"):
        heatmap_to_image(coords, center, scale, 30.0, (256, 192), (64, 48), use_udp=False)
    # decode_heatmaps passes the choice on: an argmax peak maps through the biased formula
    maps = np.stack([_gaussian(64, 48, (10, 20)), _gaussian(64, 48, (30, 5))])[None]
    out, _ = decode_heatmaps(maps, [[300, 200]], [[192, 256]], image_size=(256, 192), use_udp=False,
                             method="argmax")
    np.testing.assert_allclose(out[0], [[10 * 4 + 300 - 96, 20 * 4 + 200 - 128], [30 * 4 + 300 - 96,
                                                                                5 * 4 + 200 - 128]])


def test_argmax_marks_joints_without_a_positive_peak_with_minus_one():
    # mmpose _get_max_preds: preds where maxval > 0, else -1
    hm = np.zeros((1, 3, 8, 6), np.float32)
    hm[0, 0, 5, 2] = 0.7
    hm[0, 1] -= 1.0  # nothing above zero
    hm[0, 2, 3, 4] = 0.0  # all zero
    preds, maxvals = get_max_preds(hm)
    assert preds.dtype == np.float32 and maxvals.dtype == np.float32
    np.testing.assert_array_equal(preds[0], [[2, 5], [-1, -1], [-1, -1]])
    np.testing.assert_array_equal(maxvals[0, :, 0], np.float32([0.7, -1.0, 0.0]))


@pytest.mark.parametrize("method,refine", [("udp_dark", "udp"), ("dark", "dark")])
def test_the_blur_kernel_reaches_the_refinement(method, refine):
    from vitpose_scale.eval.decode import udp_dark_refine

    rng = np.random.default_rng(7)
    maps = _official_test_maps(rng, 2, 17, 64, 48, border=False)
    centers, scales = np.full((2, 2), 150.0), np.full((2, 2), 100.0)
    preds, _ = get_max_preds(maps)
    fn = udp_dark_refine if refine == "udp" else dark_refine
    for kernel in (3, 17):
        out, _ = decode_heatmaps(maps, centers, scales, image_size=(256, 192), method=method, kernel=kernel)
        ref = fn(maps, preds, kernel)
        expected = np.stack([heatmap_to_image(ref[i], centers[i], scales[i], 0.0, (256, 192), (64, 48))
                             for i in range(2)])
        np.testing.assert_allclose(out, expected, atol=1e-4)
    k3, _ = decode_heatmaps(maps, centers, scales, image_size=(256, 192), method=method, kernel=3)
    k17, _ = decode_heatmaps(maps, centers, scales, image_size=(256, 192), method=method, kernel=17)
    assert np.abs(k3 - k17).max() > 1e-3


def _gaussian_map(cx, cy, h=16, w=12, sigma=1.5):
    ys, xs = np.mgrid[0:h, 0:w]
    return np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))[None, None]


def test_decode_dark_refines_only_two_pixels_away_from_the_border():
    """Official DARK (_taylor): refine only when 1 < px < W - 2 and 1 < py < H - 2 (the second
    differences reach two pixels out); at the border the argmax stays as it is."""
    for peak, moves in (((1.3, 8.0), False), ((8.0, 1.3), False), ((2.3, 8.0), True), ((8.0, 2.3), True),
                        ((9.3, 8.0), True), ((10.3, 8.0), False), ((6.0, 13.3), True), ((6.0, 14.3), False)):
        hm = _gaussian_map(*peak)
        argmax = np.array([[[round(peak[0]), round(peak[1])]]], dtype=np.float32)
        refined = dark_refine(hm, argmax)
        assert (not np.array_equal(refined, argmax)) == moves, peak
        if moves:  # toward the true peak (the blur's zero padding biases it near the far borders)
            assert np.abs(refined[0, 0] - peak).max() < np.abs(argmax[0, 0] - peak).max(), peak
        if peak in ((2.3, 8.0), (8.0, 2.3)):
            np.testing.assert_allclose(refined[0, 0], peak, atol=0.05)


def test_decode_blur_of_an_empty_heatmap_stays_zero():
    out = _gaussian_blur(np.zeros((1, 2, 8, 6)), 11)
    assert np.isfinite(out).all() and not out.any()


def _opencv_gaussian_kernel(size):
    """OpenCV's kernel for sigma 0: sigma = 0.3 ((size - 1) / 2 - 1) + 0.8, normalised to sum 1."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def test_decode_blur_is_the_official_zero_padded_gaussian_rescaled_to_the_peak():
    """Official DARK blur: zero border of (k - 1) / 2, cv2.GaussianBlur(k, sigma 0), the original maximum
    restored. Written out here as two 1-D convolutions."""
    rng = np.random.default_rng(0)
    maps = rng.random((1, 2, 12, 9))
    g = _opencv_gaussian_kernel(11)  # (OpenCV uses fixed tables below size 9, the formula above)
    for j in range(2):
        padded = np.pad(maps[0, j], 5)
        rows = np.stack([np.convolve(r, g, mode="valid") for r in padded])        # (22, 9)
        both = np.stack([np.convolve(c, g, mode="valid") for c in rows.T]).T     # (12, 9)
        expected = both * (maps[0, j].max() / both.max())
        np.testing.assert_allclose(_gaussian_blur(maps, 11)[0, j], expected, rtol=1e-6, atol=1e-9)


def _log_quadratic_map(cx, cy, a=0.30, b=0.12, c=0.15, h=20, w=16):
    """exp(-(a dx^2 + 2 c dx dy + b dy^2)): a rotated, anisotropic Gaussian whose log is exactly quadratic."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = xs - cx, ys - cy
    return np.exp(-(a * dx ** 2 + 2 * c * dx * dy + b * dy ** 2))[None, None]


def test_decode_dark_step_lands_on_the_centre_of_a_rotated_gaussian():
    """On a blurred Gaussian the log stays quadratic, so one Newton step with the full Hessian (cross
    term included) reaches the centre; the result is float32 (N, K, 2)."""
    hm = _log_quadratic_map(7.35, 9.6)
    refined = dark_refine(hm, np.array([[[7.0, 10.0]]], dtype=np.float32))
    assert refined.dtype == np.float32 and refined.shape == (1, 1, 2)
    np.testing.assert_allclose(refined[0, 0], [7.35, 9.6], atol=0.02)


def test_decode_dark_leaves_flat_and_saddle_maps_at_the_argmax():
    flat = np.full((1, 1, 16, 12), 0.5)
    saddle = _log_quadratic_map(6.0, 8.0, a=0.2, b=-0.05, c=0.0)  # a maximum along x, a minimum along y
    for hm, at in ((flat, [5.0, 7.0]), (saddle, [6.0, 8.3])):
        start = np.array([[at]], dtype=np.float32)
        np.testing.assert_array_equal(dark_refine(hm, start), start)


def _people_of_one_image():
    """Three people in image 7: two near-duplicates (OKS ~ 1) and a distant one; keypoint scores chosen
    so that the rescoring threshold matters."""
    base = np.stack([np.linspace(100, 160, 17), np.linspace(50, 250, 17)], axis=1)
    conf_a = np.full(17, 0.9)
    conf_b = np.where(np.arange(17) < 9, 0.8, 0.1)   # 8 joints at 0.1: below a 0.2 threshold
    conf_c = np.full(17, 0.5)
    people = []
    for xy, conf, box in ((base, conf_a, 0.9), (base + 0.5, conf_b, 0.95), (base + 300, conf_c, 0.6)):
        people.append({"image_id": 7, "keypoints": np.concatenate([xy, conf[:, None]], axis=1),
                       "area": 96.0 * 128.0, "bbox_score": box})
    return people


def test_postprocess_rescores_with_the_threshold_and_suppresses_duplicates_by_oks():
    """Official: score = box score x mean of the keypoint scores above rescore_thr; OKS-NMS (greedy by
    score) drops a person whose OKS with a kept one exceeds nms_thr; nms_thr None or >= 1 keeps all."""
    people = _people_of_one_image()
    kept = postprocess_people(people, rescore_thr=0.2, nms_thr=0.9)
    scores = {round(r["keypoints"][0], 3): r["score"] for r in kept}
    # a: 0.9 * 0.9 = 0.81; b (duplicate of a): 0.95 * 0.8 = 0.76 -> suppressed; c: 0.6 * 0.5 = 0.30
    assert sorted(scores.values(), reverse=True) == pytest.approx([0.81, 0.30])
    assert [r["image_id"] for r in kept] == [7, 7]
    low_thr = postprocess_people(people, rescore_thr=0.05, nms_thr=None)  # b's mean now includes 0.1s
    assert sorted(r["score"] for r in low_thr) == pytest.approx(sorted([0.81, 0.95 * (9 * 0.8 + 8 * 0.1) / 17, 0.30]))
    assert len(postprocess_people(people, 0.2, 1.0)) == 3 and len(postprocess_people(people, 0.2, 0.9)) == 2
    # COCO sigmas by default; huge sigmas make even the distant person a duplicate
    assert len(postprocess_people(people, 0.2, 0.9, sigmas=[50.0] * 17)) == 1
