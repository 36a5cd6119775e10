"""UDP affine, flip folding, augmentation ranges and heatmap targets."""
import dataclasses
import math

import numpy as np
import pytest

from vitpose_scale.config import DataConfig
from vitpose_scale.data.transforms import (
    TopDownTransform, box_to_center_scale, flip_joints, get_warp_matrix, half_body_center_scale,
    invert_affine, random_scale_rotation, sample_rng, transform_points, udp_crop_matrix, udp_heatmap_targets,
    warp_image)
from vitpose_scale.keypoints import get_spec

COCO_FLIP_PAIRS = get_spec("coco").flip_pairs


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
