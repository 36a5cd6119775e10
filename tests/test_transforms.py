"""UDP affine, flip folding, augmentation ranges and heatmap targets."""
import numpy as np
import pytest

from vitpose_scale.data.transforms import (
    COCO_FLIP_PAIRS, IMAGENET_STD, TopDownTransform, box_to_center_scale, flip_joints, get_warp_matrix, half_body_center_scale,
    invert_affine, normalize_image, random_scale_rotation, sample_rng, transform_points, udp_heatmap_targets,
    warp_image)


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
    kw = dict(image_size=(256, 192), train=True, half_body_prob=0.0, scale_factor=0.0, rot_prob=0.0)
    flipped = TopDownTransform(flip_prob=1.0, **kw)(img, joints, center, scale, np.random.default_rng(0))
    # Reference: mirror the image and the joints first, then crop without a flip.
    img_m = np.ascontiguousarray(img[:, ::-1])
    joints_m = flip_joints(joints, img.shape[1], COCO_FLIP_PAIRS)
    center_m = np.array([img.shape[1] - 1 - center[0], center[1]])
    plain = TopDownTransform(flip_prob=0.0, **kw)(img_m, joints_m, center_m, scale, np.random.default_rng(0))
    assert flipped["flipped"] and not plain["flipped"]
    # warpAffine interpolates in 1/32-pixel fixed point: allow one grey level of rounding.
    diff = np.abs(flipped["img"] - plain["img"]) * IMAGENET_STD[:, None, None] * 255
    assert diff.max() <= 1.01 and diff.mean() < 0.05
    assert np.allclose(flipped["target"], plain["target"], atol=1e-6)
    # Left and right really swapped: the left shoulder now sits where the right one was, mirrored.
    assert np.allclose(joints_m[5, 0], img.shape[1] - 1 - joints[6, 0])


def test_augmentation_is_a_function_of_the_generator():
    img, joints = _toy_image()
    t = TopDownTransform(image_size=(256, 192), train=True)
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


def test_normalize_image():
    img = np.full((4, 5, 3), [124, 116, 104], dtype=np.uint8)  # ~ ImageNet mean in RGB
    x = normalize_image(img)
    assert x.shape == (3, 4, 5) and x.dtype == np.float32 and np.abs(x).max() < 0.01
