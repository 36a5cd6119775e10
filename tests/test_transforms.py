"""UDP affine, flip folding, augmentation ranges and heatmap targets; crop_box, normalize_batch, the
official box and half-body rules, the sample generator keys and TopDownTransform's outputs."""
import dataclasses
import math

import numpy as np
import pytest

from vitpose_scale.config import DataConfig
from vitpose_scale.data.transforms import (
    TopDownTransform, box_to_center_scale, crop_box, flip_joints, get_warp_matrix, half_body_center_scale,
    invert_affine, normalize_batch, random_scale_rotation, sample_rng, transform_points, udp_crop_matrix,
    udp_heatmap_targets, warp_image)
from vitpose_scale.keypoints import get_spec

COCO_FLIP_PAIRS = get_spec("coco").flip_pairs
COCO_UPPER_BODY_IDS = get_spec("coco").upper_body_ids


def _transform(train=True, image_size=(256, 192), **cfg):
    return TopDownTransform(image_size=image_size, cfg=dataclasses.replace(DataConfig(), **cfg), train=train)


@pytest.mark.parametrize("theta", [0.0, 33.0, -71.5, 90.0])
def test_udp_affine_round_trip(theta):
    rng = np.random.default_rng(0)
    center, scale, out_wh = (311.7, 205.2), (180.3, 240.4), (192, 256)
    m = get_warp_matrix(theta, center, out_wh, scale)
    pts = rng.uniform(0, 600, size=(50, 2))
    back = transform_points(transform_points(pts, m), invert_affine(m))
    assert np.abs(back - pts).max() < 1e-4
    # UDP: the centre lands on ((W-1)/2, (H-1)/2) whatever the rotation.
    assert np.allclose(transform_points(np.array(center), m), [(out_wh[0] - 1) / 2, (out_wh[1] - 1) / 2])
    # The box spans W-1 by H-1 units along the (rotated) axes.
    ex = transform_points(np.array(center), m) - transform_points(
        np.array(center) + np.array([-scale[0] / 2, 0]) @ np.array(
            [[np.cos(np.radians(theta)), np.sin(np.radians(theta))],
             [-np.sin(np.radians(theta)), np.cos(np.radians(theta))]]).T, m)
    assert np.linalg.norm(ex) == pytest.approx((out_wh[0] - 1) / 2, abs=1e-6)


def test_box_corners_fill_crop():
    center, scale = box_to_center_scale([100, 50, 96, 256], aspect_ratio=192 / 256, padding=1.0)
    assert scale.tolist() == pytest.approx([192.0, 256.0])
    m = get_warp_matrix(0, center, (192, 256), scale)
    corners = np.array([center - scale / 2, center + scale / 2])
    assert np.allclose(transform_points(corners, m), [[0, 0], [191, 255]], atol=1e-5)
    # Padding grows the box; the aspect ratio is fixed to the input's.
    c2, s2 = box_to_center_scale([0, 0, 300, 100], 0.75, 1.25)
    assert s2[0] / s2[1] == pytest.approx(0.75) and s2[0] == pytest.approx(375.0)


@pytest.mark.parametrize("theta", [0.0, 90.0, -90.0, 180.0])
def test_warp_image_agrees_with_transform_points(theta):
    # Scale 1:1 and right-angle rotations map pixel centres onto pixel centres exactly.
    img = np.zeros((120, 160), dtype=np.float32)
    src = np.array([[37.0, 81.0], [120.0, 20.0], [80.0, 60.0]])
    for x, y in src.astype(int):
        img[y, x] = 1.0
    out_wh = (64, 64)
    # A centre on a half pixel lands on 31.5 = (64 - 1) / 2, so whole pixels stay whole.
    m = get_warp_matrix(theta, (80.5, 60.5), out_wh, (63.0, 63.0))
    warped = warp_image(img, m, out_wh)
    for p in transform_points(src, m):
        if 0 <= p[0] <= 63 and 0 <= p[1] <= 63:
            assert warped[int(round(p[1])), int(round(p[0]))] == pytest.approx(1.0, abs=1e-5)
    assert warped.sum() == pytest.approx(sum(1 for p in transform_points(src, m) if 0 <= p.min() and p.max() <= 63))


def test_targets_peak_at_keypoints():
    joints = np.array([[10.3, 20.7], [100.0, 200.0], [191.0, 255.0], [0.0, 0.0], [500.0, 30.0], [50.0, 50.0]])
    vis = np.array([2, 1, 2, 2, 2, 0])
    target, weight = udp_heatmap_targets(joints, vis, (256, 192), (64, 48), sigma=2.0)
    assert target.shape == (6, 64, 48) and weight.shape == (6, 1) and target.dtype == np.float32
    stride = np.array([191 / 47, 255 / 63])
    for k in range(4):
        mu = joints[k] / stride
        y, x = np.unravel_index(target[k].argmax(), target[k].shape)
        assert (x, y) == (int(np.floor(mu[0] + 0.5)), int(np.floor(mu[1] + 0.5)))
        d2 = ((np.array([x, y]) - mu) ** 2).sum()
        assert target[k, y, x] == pytest.approx(np.exp(-d2 / 8), rel=1e-5)
    # Corners of the crop sit exactly on corners of the heatmap (UDP).
    assert target[2, 63, 47] == pytest.approx(1.0) and target[3, 0, 0] == pytest.approx(1.0)
    assert weight[:, 0].tolist() == [1, 1, 1, 1, 0, 0]  # far outside / unlabelled
    assert target[4].max() == 0 and target[5].max() == 0


def _toy_image():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8)
    joints = np.zeros((17, 3), dtype=np.float32)
    joints[:, 0] = rng.uniform(100, 220, 17)
    joints[:, 1] = rng.uniform(40, 200, 17)
    joints[:, 2] = 2
    return img, joints


def test_flip_folded_into_affine_equals_flipping_the_image():
    img, joints = _toy_image()
    center, scale = np.array([160.4, 120.2]), np.array([150.0, 200.0])
    kw = dict(half_body_prob=0.0, scale_factor=0.0, rot_prob=0.0)
    flipped = _transform(flip_prob=1.0, **kw)(img, joints, center, scale, np.random.default_rng(0))
    # Reference: mirror the image and the joints first, then crop without a flip.
    img_m = np.ascontiguousarray(img[:, ::-1])
    joints_m = flip_joints(joints, img.shape[1], COCO_FLIP_PAIRS)
    center_m = np.array([img.shape[1] - 1 - center[0], center[1]])
    plain = _transform(flip_prob=0.0, **kw)(img_m, joints_m, center_m, scale, np.random.default_rng(0))
    assert flipped["flipped"] and not plain["flipped"]
    # warpAffine interpolates in 1/32-pixel fixed point: allow one grey level of rounding.
    diff = np.abs(flipped["img"].astype(int) - plain["img"].astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.05
    assert np.allclose(flipped["target"], plain["target"], atol=1e-6)
    # Left and right really swapped: the left shoulder now sits where the right one was, mirrored.
    assert np.allclose(joints_m[5, 0], img.shape[1] - 1 - joints[6, 0])


def test_augmentation_is_a_function_of_the_generator():
    img, joints = _toy_image()
    t = _transform()
    center, scale = np.array([160.0, 120.0]), np.array([150.0, 200.0])
    a = t(img, joints, center, scale, sample_rng(0, 3, 7))
    b = t(img, joints, center, scale, sample_rng(0, 3, 7))
    assert np.array_equal(a["img"], b["img"]) and np.array_equal(a["target"], b["target"])
    others = [t(img, joints, center, scale, sample_rng(0, e, 7)) for e in range(4, 8)]
    assert any(not np.array_equal(a["img"], o["img"]) for o in others)


def test_scale_rotation_ranges():
    rng = np.random.default_rng(0)
    draws = np.array([random_scale_rotation(rng, 0.5, 40.0, 0.6) for _ in range(4000)])
    assert draws[:, 0].min() >= 0.5 and draws[:, 0].max() <= 1.5
    assert np.abs(draws[:, 1]).max() <= 80.0
    assert 0.55 < (draws[:, 1] != 0).mean() < 0.65
    assert draws[:, 0].mean() == pytest.approx(1.0, abs=0.03)


def test_half_body_box():
    _, joints = _toy_image()
    rng = np.random.default_rng(0)
    for _ in range(20):
        out = half_body_center_scale(joints, joints[:, 2], list(range(11)), 0.75, rng)
        assert out is not None
        c, s = out
        assert s[0] / s[1] == pytest.approx(0.75)
        sel_upper = np.allclose(c, joints[:11, :2].mean(0), atol=1e-4)
        sel_lower = np.allclose(c, joints[11:, :2].mean(0), atol=1e-4)
        assert sel_upper or sel_lower
    assert half_body_center_scale(joints, np.eye(17)[0] * 2, list(range(11)), 0.75, rng) is None


# ------------------------------------------------ independent references --
# The reference (mmpose 0.x as used by ViTPose) written out from its source, loop by loop,
# so every number below is checked against a second implementation, not against itself.
def _official_get_warp_matrix(theta, size_input, size_dst, size_target):
    """mmpose.core.post_processing.get_warp_matrix: float32, size_input = 2 * center."""
    theta = np.deg2rad(theta)
    m = np.zeros((2, 3), dtype=np.float32)
    sx, sy = size_dst[0] / size_target[0], size_dst[1] / size_target[1]
    m[0, 0] = np.cos(theta) * sx
    m[0, 1] = -np.sin(theta) * sx
    m[0, 2] = sx * (-0.5 * size_input[0] * np.cos(theta) + 0.5 * size_input[1] * np.sin(theta) + 0.5 * size_target[0])
    m[1, 0] = np.sin(theta) * sy
    m[1, 1] = np.cos(theta) * sy
    m[1, 2] = sy * (-0.5 * size_input[0] * np.sin(theta) - 0.5 * size_input[1] * np.cos(theta) + 0.5 * size_target[1])
    return m


def _official_udp_target(joints, visible, image_size_wh, heatmap_size_wh, sigma):
    """TopDownGenerateTarget._udp_generate_target (GaussianHeatmap), one joint at a time."""
    image_size, heatmap_size = np.array(image_size_wh), np.array(heatmap_size_wh)
    k = len(joints)
    weight = np.array(visible, dtype=np.float32).reshape(k, 1)
    target = np.zeros((k, heatmap_size[1], heatmap_size[0]), dtype=np.float32)
    tmp_size = sigma * 3
    size = 2 * tmp_size + 1
    x = np.arange(0, size, 1, np.float32)
    y = x[:, None]
    for j in range(k):
        stride = (image_size - 1.0) / (heatmap_size - 1.0)
        mu_x = int(joints[j][0] / stride[0] + 0.5)
        mu_y = int(joints[j][1] / stride[1] + 0.5)
        ul = [int(mu_x - tmp_size), int(mu_y - tmp_size)]
        br = [int(mu_x + tmp_size + 1), int(mu_y + tmp_size + 1)]
        if ul[0] >= heatmap_size[0] or ul[1] >= heatmap_size[1] or br[0] < 0 or br[1] < 0:
            weight[j] = 0
            continue
        x0 = y0 = size // 2
        x0 += joints[j][0] / stride[0] - mu_x
        y0 += joints[j][1] / stride[1] - mu_y
        g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2))
        g_x = max(0, -ul[0]), min(br[0], heatmap_size[0]) - ul[0]
        g_y = max(0, -ul[1]), min(br[1], heatmap_size[1]) - ul[1]
        img_x = max(0, ul[0]), min(br[0], heatmap_size[0])
        img_y = max(0, ul[1]), min(br[1], heatmap_size[1])
        if weight[j] > 0.5:
            target[j][img_y[0]:img_y[1], img_x[0]:img_x[1]] = g[g_y[0]:g_y[1], g_x[0]:g_x[1]]
    return target, weight


@pytest.mark.parametrize("theta", [0.0, 17.5, -63.0, 90.0])
def test_udp_matrix_equals_official_formula(theta):
    # float32 box values, as both pipelines store them (the reference's arithmetic is float64: numpy 1.x).
    center = np.array([311.7, 205.2], dtype=np.float32).astype(np.float64)
    scale = np.array([180.3, 240.4], dtype=np.float32).astype(np.float64)
    image_wh = np.array([192, 256])
    official = _official_get_warp_matrix(theta, center * 2.0, image_wh - 1.0, scale)
    ours = get_warp_matrix(theta, center, image_wh, scale)
    assert np.allclose(ours, official, rtol=1e-6, atol=1e-4)
    # The crop uses the reference's float32 rounding: the same matrix bit for bit.
    assert np.array_equal(udp_crop_matrix(theta, center, image_wh, scale), official.astype(np.float64))
    if theta == 0.0:  # validation crop (no augmentation): bit-identical to the reference's TopDownAffine
        img, joints = _toy_image()
        out = _transform(train=False)(img, joints, center, scale)
        assert np.array_equal(out["img"].transpose(1, 2, 0), cv2_warp(img, official, image_wh))
        ref_joints = np.concatenate([joints[:, :2], np.ones((17, 1))], axis=1) @ official.T.astype(np.float64)
        assert np.allclose(out["joints"][:, :2], ref_joints, atol=1e-4)


def cv2_warp(img, matrix, size_wh):
    import cv2

    return cv2.warpAffine(img, matrix, (int(size_wh[0]), int(size_wh[1])), flags=cv2.INTER_LINEAR)


def test_udp_targets_equal_official_loop():
    rng = np.random.default_rng(5)
    # Inside, on the border, just outside (the int() truncation cases) and far outside the crop.
    joints = np.concatenate([rng.uniform(-40, 230, size=(60, 2)),
                             [[-27.0, 100.0], [-25.5, 60.0], [100.0, -26.0], [-24.0, -24.0], [191.0, 255.0],
                              [0.0, 0.0], [219.0, 100.0], [600.0, 30.0]]])
    visible = np.where(rng.random(len(joints)) < 0.8, 1, 0)
    visible[-8:] = 1
    target, weight = udp_heatmap_targets(joints, visible, (256, 192), (64, 48), sigma=2.0)
    ref_target, ref_weight = _official_udp_target(joints, visible, (192, 256), (48, 64), 2)
    assert np.array_equal(weight, ref_weight)
    assert np.abs(target - ref_target).max() < 1e-6


def test_udp_target_truncates_toward_zero_like_the_reference():
    # mu_x = -6.7 heatmap pixels: int(-6.2) = -6 (ours used to floor to -7), so the window
    # [-12, 0] still reaches column 0 with the analytic value exp(-(0 - mu)^2 / (2 sigma^2)).
    stride_x, stride_y = 191 / 47, 255 / 63
    joint = np.array([[-6.7 * stride_x, 20.0 * stride_y]])
    target, weight = udp_heatmap_targets(joint, np.array([2]), (256, 192), (64, 48), sigma=2.0)
    assert weight[0, 0] == 1.0
    assert target[0, 20, 0] == pytest.approx(np.exp(-(6.7 ** 2) / 8.0), rel=1e-5)
    assert target[0, 20, 1] == 0.0 and target[0, 27, 0] == 0.0  # outside the 13 x 13 window
    assert target[0, 26, 0] == pytest.approx(np.exp(-(6.7 ** 2 + 6.0 ** 2) / 8.0), rel=1e-5)


def test_udp_target_is_the_analytic_gaussian():
    stride = np.array([191 / 47, 255 / 63])
    mu = np.array([20.37, 31.81])
    target, _ = udp_heatmap_targets((mu * stride)[None], np.array([1]), (256, 192), (64, 48), sigma=2.0)
    ys, xs = np.mgrid[0:64, 0:48]
    window = (np.abs(xs - 20) <= 6) & (np.abs(ys - 32) <= 6)
    expected = np.exp(-((xs - mu[0]) ** 2 + (ys - mu[1]) ** 2) / 8.0) * window
    assert np.abs(target[0] - expected).max() < 1e-6


def test_half_body_takes_upper_body_with_the_reference_probability():
    # The reference picks the upper body when np.random.randn() < 0.5: P = Phi(0.5) = 0.6915.
    _, joints = _toy_image()
    upper_ids = list(range(11))
    rng = np.random.default_rng(0)
    n = 20000
    upper = 0
    for _ in range(n):
        c, _s = half_body_center_scale(joints, joints[:, 2], upper_ids, 0.75, rng)
        if np.allclose(c, joints[:11, :2].mean(0), atol=1e-4):
            upper += 1
        else:
            assert np.allclose(c, joints[11:, :2].mean(0), atol=1e-4)
    phi = 0.5 * (1 + math.erf(0.5 / math.sqrt(2)))
    assert phi == pytest.approx(0.6915, abs=1e-4)
    assert upper / n == pytest.approx(phi, abs=0.01)


def test_defaults_are_the_official_recipe():
    # ViTPose's COCO configs: TopDownRandomFlip(flip_prob=0.5), TopDownHalfBodyTransform(num_joints_half_body=8,
    # prob_half_body=0.3), TopDownGetRandomScaleRotation(rot_factor=40, scale_factor=0.5, rot_prob=0.6 default),
    # TopDownGenerateTarget(sigma=2), _xywh2cs(padding=1.25), det_bbox_thr=0.0.
    d = DataConfig()
    assert (d.flip_prob, d.half_body_prob, d.half_body_min_joints) == (0.5, 0.3, 8)
    assert (d.rot_factor, d.scale_factor, d.rot_prob, d.sigma) == (40.0, 0.5, 0.6, 2.0)
    assert (d.bbox_padding, d.det_score_thr) == (1.25, 0.0)
    # The transform has no defaults of its own: what it does follows the config it is given.
    t = TopDownTransform(image_size=(256, 192), cfg=d)
    assert t.cfg is d
    fields = {f.name for f in dataclasses.fields(TopDownTransform)}
    assert not fields & {"flip_prob", "half_body_prob", "scale_factor", "rot_factor", "rot_prob", "sigma"}
    img, joints = _toy_image()
    center, scale = np.array([160.0, 120.0]), np.array([150.0, 200.0])
    flips = [_transform(flip_prob=p)(img, joints, center, scale, sample_rng(0, 0, i))["flipped"]
             for p in (0.0, 1.0) for i in range(5)]
    assert flips == [False] * 5 + [True] * 5


def test_coco_flip_pairs_from_names():
    names = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
             "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
             "right_knee", "left_ankle", "right_ankle"]
    pairs = sorted((names.index(n), names.index("right_" + n[5:])) for n in names if n.startswith("left_"))
    assert sorted(tuple(p) for p in COCO_FLIP_PAIRS) == pairs


def test_normalisation_exact_values():
    import torch
    import torchvision.transforms.functional as TF

    from vitpose_scale.data.transforms import normalize_batch, normalize_image

    # Hand-computed (v / 255 - mean) / std for v = 0, 128, 255 with the ImageNet statistics.
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = {v: [(v / 255 - m) / s for m, s in zip(mean, std)] for v in (0, 128, 255)}
    assert expected[0] == pytest.approx([-2.1179039, -2.0357143, -1.8044444], abs=1e-6)
    assert expected[255] == pytest.approx([2.2489083, 2.4285714, 2.64], abs=1e-6)
    img = np.stack([np.full((2, 3, 3), v, dtype=np.uint8) for v in (0, 128, 255)])  # (3 images, H, W, C)
    for i, v in enumerate((0, 128, 255)):
        host = normalize_image(img[i])
        device = normalize_batch(torch.from_numpy(img[i]).permute(2, 0, 1))
        for c in range(3):
            assert host[c] == pytest.approx(np.full((2, 3), expected[v][c]), abs=1e-6)
        assert device.dtype == torch.float32 and torch.equal(device, torch.from_numpy(host))
    # Bit-identical to the reference's ToTensor + NormalizeTensor (torchvision) on random crops.
    crops = np.random.default_rng(0).integers(0, 256, size=(4, 64, 48, 3), dtype=np.uint8)
    batch = normalize_batch(torch.from_numpy(crops).permute(0, 3, 1, 2))
    for n in range(4):
        ref = TF.normalize(TF.to_tensor(crops[n]), list(mean), list(std))
        assert torch.equal(batch[n], ref)
    # Already-normalised float input passes through untouched.
    assert normalize_batch(batch) is batch


def test_streams_give_independent_draws():
    # Same seed, epoch and index, two training sets: the draws must not coincide or correlate.
    a = np.array([sample_rng(0, 3, i, stream=0).random(4) for i in range(2000)])
    b = np.array([sample_rng(0, 3, i, stream=1).random(4) for i in range(2000)])
    assert not np.any(np.all(np.isclose(a, b), axis=1))
    for col in range(4):
        assert abs(np.corrcoef(a[:, col], b[:, col])[0, 1]) < 0.1
    # Stream 0 keeps the earlier (seed, epoch, index) key: existing runs resume unchanged.
    assert np.array_equal(sample_rng(0, 3, 7).random(3), np.random.default_rng([0, 3, 7]).random(3))


def test_transforms_crop_box_is_the_udp_box_to_crop_map_on_a_ramp():
    """On the ramp img[y, x] = x + 100 y bilinear sampling is exact, so each crop pixel (u, v) must read
    the source point c + (u - (W - 1) / 2) * s_w / (W - 1) (UDP: the box spans W - 1 crop pixel
    intervals); cv2 samples at 1/32 px, hence the tolerance."""
    ys, xs = np.mgrid[0:60, 0:80].astype(np.float32)
    img = xs + 100.0 * ys
    out_h, out_w = 25, 33
    # identity: the box is the whole image measured in pixel intervals
    same = crop_box(img, (39.5, 29.5), (79.0, 59.0), (60, 80))
    np.testing.assert_allclose(same, img, atol=1e-3)
    center, size = (20.0, 30.0), (16.0, 36.0)
    crop = crop_box(img, center, size, (out_h, out_w))
    assert crop.shape == (out_h, out_w)
    v, u = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
    src_x = center[0] + (u - (out_w - 1) / 2) * size[0] / (out_w - 1)
    src_y = center[1] + (v - (out_h - 1) / 2) * size[1] / (out_h - 1)
    np.testing.assert_allclose(crop, src_x + 100.0 * src_y, atol=(1.0 + 100.0) / 32)


def test_transforms_normalize_batch_runs_on_the_given_device_and_names_a_wrong_dtype():
    import torch

    crops = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    out = normalize_batch(crops, device="meta")  # the meta device: any device other than the input's
    assert out.device.type == "meta" and out.dtype == torch.float32 and out.shape == crops.shape
    assert normalize_batch(crops).device.type == "cpu"
    with pytest.raises(TypeError, match="torch.int32.*uint8"):
        normalize_batch(crops.to(torch.int32))


def test_transforms_sample_streams_are_the_documented_keys():
    """Stream 0 keeps the three-number key of earlier versions (same draws as before); stream i appends i."""
    assert sample_rng(7, 2, 11).random() == np.random.default_rng([7, 2, 11]).random()
    assert sample_rng(7, 2, 11, stream=3).random() == np.random.default_rng([7, 2, 11, 3]).random()


def test_transforms_box_to_center_scale_is_the_official_xywh2cs():
    """Official _xywh2cs (in pixels): centre x + w/2, y + h/2; the short side grown to the aspect ratio;
    times 1.25. Extra numbers after the box (a detection score) are ignored."""
    center, scale = box_to_center_scale([10, 20, 30, 80, 0.9], 0.75)  # narrow: the width grows to 60
    np.testing.assert_array_equal(center, [25.0, 60.0])
    np.testing.assert_array_equal(scale, [75.0, 100.0])
    center, scale = box_to_center_scale((0, 4, 90, 60), 0.75, padding=1.0)  # wide: the height grows to 120
    np.testing.assert_array_equal(center, [45.0, 34.0])
    np.testing.assert_array_equal(scale, [90.0, 120.0])
    assert center.dtype == scale.dtype == np.float32


class _Normal:
    """A generator whose standard_normal() returns a chosen value (the half-body coin)."""

    def __init__(self, value):
        self.value = value

    def standard_normal(self):
        return self.value


def _half_body(visible_upper, visible_lower, draw, visibility=1):
    """17 COCO joints on a grid; the first ``visible_upper`` upper-body joints (0-10) and the first
    ``visible_lower`` lower-body ones (11-16) labelled with ``visibility``."""
    joints = np.array([[3.0 * j, 5.0 * j + (j % 3)] for j in range(17)])
    visible = np.zeros(17)
    upper = [j for j in range(17) if j in COCO_UPPER_BODY_IDS]
    lower = [j for j in range(17) if j not in COCO_UPPER_BODY_IDS]
    visible[upper[:visible_upper]] = visibility
    visible[lower[:visible_lower]] = visibility
    return half_body_center_scale(joints, visible, COCO_UPPER_BODY_IDS, 0.75, _Normal(draw)), joints, upper, lower


def _box_of(points):
    """The official half-body box: mean centre, min/max extent grown to 3:4, times 1.5."""
    lt, rb = points.min(axis=0), points.max(axis=0)
    w, h = rb - lt
    w, h = (w, w / 0.75) if w > 0.75 * h else (h * 0.75, h)
    return points.mean(axis=0), np.array([w, h]) * 1.5


@pytest.mark.parametrize("n_upper, n_lower, draw, half", [
    (3, 3, 0.4, "upper"),   # draw < 0.5 and more than 2 upper joints: the upper body
    (2, 3, 0.4, "lower"),   # only 2 upper joints: the lower body (it has more than 2)
    (3, 3, 0.5, "lower"),   # draw not < 0.5: the lower body
    (2, 2, 0.5, "upper"),   # lower body has only 2: back to the upper body (2 joints suffice)
    (1, 2, 0.5, None),      # fewer than 2 joints in the half chosen: no half-body box
])
def test_transforms_half_body_choice_is_the_official_rule(n_upper, n_lower, draw, half):
    """Official HalfBodyTransform: upper if randn() < 0.5 and len(upper) > 2, else lower if len(lower) > 2,
    else upper; fewer than 2 joints -> none. Joints labelled but occluded (v = 1) count."""
    got, joints, upper, lower = _half_body(n_upper, n_lower, draw, visibility=1)
    if half is None:
        assert got is None
        return
    sel = upper[:n_upper] if half == "upper" else lower[:n_lower]
    center, scale = _box_of(joints[sel].astype(np.float32))
    np.testing.assert_allclose(got[0], center, rtol=1e-6)
    np.testing.assert_allclose(got[1], scale, rtol=1e-6)
    assert got[0].dtype == got[1].dtype == np.float32


def test_transforms_udp_target_defaults_to_sigma_2_and_keeps_a_window_ending_at_the_border():
    """Default sigma 2: the value one heatmap pixel from an integer centre is exp(-1/8). A joint whose
    window ends exactly at row 0 (br_y == 0, i.e. int(mu_y + 0.5) = -7) keeps weight 1 with an empty
    target, as the reference's `br[1] < 0` test does; one row further up it is dropped."""
    image_hw, heatmap_hw = (257, 193), (65, 49)  # stride exactly 4
    target, weight = udp_heatmap_targets(np.array([[80.0, 120.0]]), np.array([2]), image_hw, heatmap_hw)
    assert target.dtype == weight.dtype == np.float32 and weight.shape == (1, 1)
    assert target[0, 30, 20] == 1.0
    assert target[0, 30, 21] == pytest.approx(math.exp(-1 / 8), rel=1e-6)
    assert target[0, 32, 20] == pytest.approx(math.exp(-4 / 8), rel=1e-6)
    joints = np.array([[80.0, -8.0 * 4], [80.0, -9.0 * 4]])  # mu_y = -8 -> br_y = 0; mu_y = -9 -> br_y = -1
    target, weight = udp_heatmap_targets(joints, np.array([1, 1]), image_hw, heatmap_hw)
    assert weight[:, 0].tolist() == [1.0, 0.0]
    assert not target.any()


def _deterministic_transform(**cfg_overrides):
    """A 64x48 training transform without random scale, rotation, flip or half body unless overridden."""
    return _transform(image_size=(64, 48), **{"flip_prob": 0.0, "half_body_prob": 0.0, "scale_factor": 0.0,
                                              "rot_factor": 0.0, **cfg_overrides})


def _person(width=90, height=70):
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    joints = np.concatenate([rng.uniform([20, 10], [70, 60], (17, 2)), np.full((17, 1), 2.0)], axis=1)
    return img, joints, np.array([44.0, 35.0], dtype=np.float32), np.array([48.0, 64.0], dtype=np.float32)


def test_transforms_a_flipped_sample_is_the_sample_of_the_mirrored_image():
    """flip_prob 1 must give what flip_prob 0 gives on the mirrored picture (x -> W - 1 - x, left and
    right joints swapped, centre mirrored): an independent statement of the flip."""
    img, joints, center, scale = _person()
    width = img.shape[1]
    flipped = _deterministic_transform(flip_prob=1.0)(img, joints, center, scale, sample_rng(0, 0, 0))
    mirrored_joints = joints.copy()
    mirrored_joints[:, 0] = width - 1 - mirrored_joints[:, 0]
    for a, b in COCO_FLIP_PAIRS:
        mirrored_joints[[a, b]] = mirrored_joints[[b, a]]
    mirrored_center = np.array([width - 1 - center[0], center[1]], dtype=np.float32)
    plain = _deterministic_transform()(np.ascontiguousarray(img[:, ::-1]), mirrored_joints, mirrored_center,
                                       scale, sample_rng(0, 0, 0))
    assert flipped["flipped"] and not plain["flipped"]
    np.testing.assert_allclose(flipped["joints"], plain["joints"], atol=1e-4)
    np.testing.assert_allclose(flipped["center"], plain["center"])
    assert np.abs(flipped["img"].astype(int) - plain["img"].astype(int)).max() <= 1  # cv2's 1/32-px sampling
    np.testing.assert_allclose(flipped["target"], plain["target"], atol=1e-4)


@pytest.mark.parametrize("labelled, half_body", [(8, False), (9, True)])
def test_transforms_half_body_needs_more_than_the_minimum_of_labelled_joints(labelled, half_body):
    """Official: half body only when sum(visible) > num_joints_half_body (8); unlabelled joints (v = 0) do
    not count, occluded ones (v = 1) do. The half-body box moves the centre off the person box's."""
    img, joints, center, scale = _person()
    joints[:, 2] = 0.0
    joints[:labelled, 2] = 1.0
    transform = _deterministic_transform(half_body_prob=1.0, half_body_min_joints=8)
    out = transform(img, joints, center, scale, sample_rng(0, 0, 1))
    assert (not np.allclose(out["center"], center)) == half_body


def test_transforms_outputs_have_the_documented_types_and_leave_the_inputs_alone():
    img, joints, center, scale = _person()
    joints64, center64, scale64 = joints.astype(np.float64), center.astype(np.float64), scale.astype(np.float64)
    before = (joints64.copy(), center64.copy(), scale64.copy())
    out = _deterministic_transform(flip_prob=1.0, sigma=3.0)(img, joints64, center64, scale64, sample_rng(1, 0, 0))
    for name in ("joints", "center", "scale", "target", "target_weight"):
        assert out[name].dtype == np.float32, name
    assert out["joints"].shape == (17, 3) and (out["joints"][:, 2] == 2.0).all()  # the visibility column
    assert out["img"].dtype == np.uint8 and out["img"].shape == (3, 64, 48)
    for a, b in zip(before, (joints64, center64, scale64)):
        np.testing.assert_array_equal(a, b)

    # the targets are drawn with the config's sigma (3), not the function's default (2)
    def drawn(sigma):
        return udp_heatmap_targets(out["joints"][:, :2], out["joints"][:, 2], (64, 48), (16, 12), sigma)[0]

    assert np.array_equal(out["target"], drawn(3.0)) and not np.allclose(out["target"], drawn(2.0))
    with pytest.raises(ValueError, match="needs its sample's generator"):
        _deterministic_transform()(img, joints, center, scale, None)
