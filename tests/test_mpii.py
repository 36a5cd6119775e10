"""MPII: the loader and PCKh against transcriptions of the official mmpose 0.x code.

The references below are written out from github.com/ViTAE-Transformer/ViTPose at commit
c050ed29112da7704797cc1a65af0234b525010d, ``mmpose/datasets/datasets/top_down/topdown_mpii_dataset.py``
(``TopDownMpiiDataset``), not from our code. The ground-truth .mat files are synthetic, written with
``scipy.io.savemat`` in the layout of mmpose's ``mpii_gt_val.mat``; the annotation sample and its
images are the official ``tests/data/mpii`` ones (tests/data/mpii/SOURCE.md).
"""
import json
import re
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.io import loadmat, savemat

from vitpose_scale.cli import main as cli_main
from vitpose_scale.config import Config, DataConfig
from vitpose_scale.data.coco import TopDownCocoDataset, build_datasets, dataset_class
from vitpose_scale.data.mpii import TopDownMpiiDataset
from vitpose_scale.eval import pckh as pckh_module
from vitpose_scale.eval import scoring
from vitpose_scale.eval.pckh import STAT_NAMES, PCKhInputError, load_gt, pckh
from vitpose_scale.keypoints import get_spec

SAMPLE = Path(__file__).resolve().parent / "data" / "mpii"
ROOT = Path(__file__).resolve().parents[1]
# The joint names of mpii_gt_val.mat's dataset_joints (the official code looks up the 13 named
# ones; pelvis, thorax and neck are only positions there).
MAT_JOINTS = ["rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thrx", "neck", "head",
              "rwri", "relb", "rsho", "lsho", "lelb", "lwri"]
# configs/_base_/datasets/mpii.py: the swap entries as index pairs.
OFFICIAL_FLIP_PAIRS = [[0, 5], [1, 4], [2, 3], [10, 15], [11, 14], [12, 13]]


# ----------------------------------------------------------- the references --
def official_evaluate(preds, gt_file):
    """TopDownMpiiDataset.evaluate, lines 192-263 (``preds = preds[..., :2] + 1.0`` to
    ``name_value = OrderedDict(name_value)``) verbatim, but for the ``res_folder`` savemat; ``preds``
    is the (N, K, 3) float32 array the lines before it stack from the sorted, unique results."""
    preds = preds[..., :2] + 1.0

    SC_BIAS = 0.6
    threshold = 0.5

    gt_dict = loadmat(gt_file)
    dataset_joints = gt_dict['dataset_joints']
    jnt_missing = gt_dict['jnt_missing']
    pos_gt_src = gt_dict['pos_gt_src']
    headboxes_src = gt_dict['headboxes_src']

    pos_pred_src = np.transpose(preds, [1, 2, 0])

    head = np.where(dataset_joints == 'head')[1][0]
    lsho = np.where(dataset_joints == 'lsho')[1][0]
    lelb = np.where(dataset_joints == 'lelb')[1][0]
    lwri = np.where(dataset_joints == 'lwri')[1][0]
    lhip = np.where(dataset_joints == 'lhip')[1][0]
    lkne = np.where(dataset_joints == 'lkne')[1][0]
    lank = np.where(dataset_joints == 'lank')[1][0]

    rsho = np.where(dataset_joints == 'rsho')[1][0]
    relb = np.where(dataset_joints == 'relb')[1][0]
    rwri = np.where(dataset_joints == 'rwri')[1][0]
    rkne = np.where(dataset_joints == 'rkne')[1][0]
    rank = np.where(dataset_joints == 'rank')[1][0]
    rhip = np.where(dataset_joints == 'rhip')[1][0]

    jnt_visible = 1 - jnt_missing
    uv_error = pos_pred_src - pos_gt_src
    uv_err = np.linalg.norm(uv_error, axis=1)
    headsizes = headboxes_src[1, :, :] - headboxes_src[0, :, :]
    headsizes = np.linalg.norm(headsizes, axis=0)
    headsizes *= SC_BIAS
    scale = headsizes * np.ones((len(uv_err), 1), dtype=np.float32)
    scaled_uv_err = uv_err / scale
    scaled_uv_err = scaled_uv_err * jnt_visible
    jnt_count = np.sum(jnt_visible, axis=1)
    less_than_threshold = (scaled_uv_err <= threshold) * jnt_visible
    PCKh = 100. * np.sum(less_than_threshold, axis=1) / jnt_count

    # save
    rng = np.arange(0, 0.5 + 0.01, 0.01)
    pckAll = np.zeros((len(rng), 16), dtype=np.float32)

    for r, threshold in enumerate(rng):
        less_than_threshold = (scaled_uv_err <= threshold) * jnt_visible
        pckAll[r, :] = 100. * np.sum(
            less_than_threshold, axis=1) / jnt_count

    PCKh = np.ma.array(PCKh, mask=False)
    PCKh.mask[6:8] = True

    jnt_count = np.ma.array(jnt_count, mask=False)
    jnt_count.mask[6:8] = True
    jnt_ratio = jnt_count / np.sum(jnt_count).astype(np.float64)

    name_value = [('Head', PCKh[head]),
                  ('Shoulder', 0.5 * (PCKh[lsho] + PCKh[rsho])),
                  ('Elbow', 0.5 * (PCKh[lelb] + PCKh[relb])),
                  ('Wrist', 0.5 * (PCKh[lwri] + PCKh[rwri])),
                  ('Hip', 0.5 * (PCKh[lhip] + PCKh[rhip])),
                  ('Knee', 0.5 * (PCKh[lkne] + PCKh[rkne])),
                  ('Ankle', 0.5 * (PCKh[lank] + PCKh[rank])),
                  ('PCKh', np.sum(PCKh * jnt_ratio)),
                  ('PCKh@0.1', np.sum(pckAll[10, :] * jnt_ratio))]
    name_value = OrderedDict(name_value)

    return name_value


def official_get_db(anno, num_joints, test_mode):
    """TopDownMpiiDataset._get_db, lines 90-137, verbatim but for the image path and the
    bookkeeping keys (dataset, rotation, bbox_score)."""
    gt_db = []
    bbox_id = 0
    for a in anno:
        image_name = a['image']

        center = np.array(a['center'], dtype=np.float32)
        scale = np.array([a['scale'], a['scale']], dtype=np.float32)

        # Adjust center/scale slightly to avoid cropping limbs
        if center[0] != -1:
            center[1] = center[1] + 15 * scale[1]
            # padding to include proper amount of context
            scale = scale * 1.25

        # MPII uses matlab format, index is 1-based,
        # we should first convert to 0-based index
        center = center - 1

        joints_3d = np.zeros((num_joints, 3), dtype=np.float32)
        joints_3d_visible = np.zeros((num_joints, 3), dtype=np.float32)
        if not test_mode:
            joints = np.array(a['joints'])
            joints_vis = np.array(a['joints_vis'])
            assert len(joints) == num_joints

            joints_3d[:, 0:2] = joints[:, 0:2] - 1
            joints_3d_visible[:, :2] = joints_vis[:, None]
        gt_db.append({'image_file': image_name, 'bbox_id': bbox_id, 'center': center, 'scale': scale,
                      'joints_3d': joints_3d, 'joints_3d_visible': joints_3d_visible})
        bbox_id = bbox_id + 1
    gt_db = sorted(gt_db, key=lambda x: x['bbox_id'])
    return gt_db


def official_warp_matrix(theta, size_input, size_dst, size_target):
    """mmpose/core/post_processing/post_transforms.py get_warp_matrix (what TopDownAffine(use_udp=True)
    calls as get_warp_matrix(r, c * 2.0, image_size - 1.0, s * 200.0)), verbatim."""
    import math

    theta = np.deg2rad(theta)
    matrix = np.zeros((2, 3), dtype=np.float32)
    scale_x = size_dst[0] / size_target[0]
    scale_y = size_dst[1] / size_target[1]
    matrix[0, 0] = math.cos(theta) * scale_x
    matrix[0, 1] = -math.sin(theta) * scale_x
    matrix[0, 2] = scale_x * (-0.5 * size_input[0] * math.cos(theta) +
                              0.5 * size_input[1] * math.sin(theta) +
                              0.5 * size_target[0])
    matrix[1, 0] = math.sin(theta) * scale_y
    matrix[1, 1] = math.cos(theta) * scale_y
    matrix[1, 2] = scale_y * (-0.5 * size_input[0] * math.sin(theta) -
                              0.5 * size_input[1] * math.cos(theta) +
                              0.5 * size_target[1])
    return matrix


# ------------------------------------------------------------------ helpers --
def write_mat(path, positions, missing, headboxes, joints=MAT_JOINTS, drop=()):
    """A .mat in mpii_gt_val.mat's layout: dataset_joints a 1x16 cell of names, jnt_missing (16, N),
    pos_gt_src (16, 2, N) 1-based, headboxes_src (2, 2, N)."""
    names = np.empty((1, len(joints)), dtype=object)
    names[0, :] = joints
    mdict = {"dataset_joints": names, "jnt_missing": missing, "pos_gt_src": positions, "headboxes_src": headboxes}
    savemat(str(path), {k: v for k, v in mdict.items() if k not in drop})
    return Path(path)


def random_gt(rng, n, missing_rate=0.2, missing_dtype=np.uint8, pos_dtype=np.float64):
    positions = rng.uniform(1, 1200, size=(16, 2, n)).astype(pos_dtype)
    missing = (rng.random((16, n)) < missing_rate).astype(missing_dtype)
    corner = rng.uniform(1, 1000, size=(2, n))
    size = rng.uniform(5, 80, size=(2, n))
    headboxes = np.stack([corner, corner + size])  # [[x1, y1], [x2, y2]] by person
    return positions, missing, headboxes


def near_predictions(rng, positions, headboxes):
    """0-based float32 predictions scattered around the GT, at distances around the thresholds."""
    n = positions.shape[2]
    head = np.linalg.norm(headboxes[1] - headboxes[0], axis=0) * 0.6
    radius = rng.uniform(0, 0.8, size=(n, 16)) * head[:, None]
    angle = rng.uniform(0, 2 * np.pi, size=(n, 16))
    gt = np.transpose(positions, [2, 0, 1]) - 1  # (N, 16, 2) 0-based
    pred = gt + np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1)
    score = rng.random((n, 16, 1))
    return np.concatenate([pred, score], axis=-1).astype(np.float32)


def as_plain(value):
    """A stat of the official dict as a float (the masked constant, where everything is masked, as NaN)."""
    return float("nan") if value is np.ma.masked else float(value)


def assert_equal_stats(ours, official):
    assert list(ours) == list(official) == list(STAT_NAMES)
    for key in STAT_NAMES:
        a, b = ours[key], as_plain(official[key])
        assert (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-12, (key, a, b)


def compare(tmp_path, preds, positions, missing, headboxes, name="gt.mat"):
    mat = write_mat(tmp_path / name, positions, missing, headboxes)
    with np.errstate(divide="ignore", invalid="ignore"):
        official = official_evaluate(preds, str(mat))
    ours = pckh(preds, load_gt(mat))
    assert_equal_stats(ours, official)
    return ours


# --------------------------------------------------------------- (a) PCKh --
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtypes", [(np.uint8, np.float64), (np.float64, np.float32)])
def test_pckh_equals_the_official_on_random_people(tmp_path, seed, dtypes):
    rng = np.random.default_rng(seed)
    positions, missing, headboxes = random_gt(rng, 300, missing_dtype=dtypes[0], pos_dtype=dtypes[1])
    preds = near_predictions(rng, positions, headboxes)
    stats = compare(tmp_path, preds, positions, missing, headboxes)
    assert 10 < stats["PCKh"] < 95 and 0 < stats["PCKh@0.1"] < stats["PCKh"]  # not all right, not all wrong


def test_pckh_equals_the_official_at_and_just_past_the_thresholds(tmp_path):
    """Head box diagonal 5 -> normaliser 0.6 * 5 = 3.0: an error of 1.5 px is exactly 0.5 (counted,
    <=), the next float32 position past it is not; 0.3 px, after the float32 + 1.0 of the
    predictions, is 0.30000305 px: just past the 0.1 threshold. The last person's prediction
    x = 4e-8 becomes exactly 1.0 in float32 (mmpose's preds are float32): 1.5 px from the GT at
    x = -0.5 (1-based), counted; in float64 it would be 1.50000004 px, not counted."""
    n = 7
    positions = np.tile(np.array([100.0, 200.0])[None, :, None], (16, 1, n))
    headboxes = np.zeros((2, 2, n))
    headboxes[1] = np.array([3.0, 4.0])[:, None]
    missing = np.zeros((16, n), np.uint8)
    offsets = [1.5, np.nextafter(np.float32(100.0 - 1 + 1.5), np.float32(1e9)) - np.float32(99.0),
               0.3, 0.0, -1.5, 2.9]
    preds = np.zeros((n, 16, 3), np.float32)
    for i, dx in enumerate(offsets):
        preds[i, :, 0] = np.float32(99.0) + np.float32(dx)
        preds[i, :, 1] = 199.0
    positions[:, 0, 6] = -0.5
    preds[6, :, 0], preds[6, :, 1] = np.float32(4e-8), 199.0
    stats = compare(tmp_path, preds, positions, missing, headboxes)
    assert stats["Head"] == 100 * 5 / 7  # 1.5, 0.3, 0.0, -1.5, the float32 one in; just past 1.5 and 2.9 out
    assert stats["PCKh@0.1"] == pytest.approx(100 / 7, rel=1e-6)  # 0.0 alone (a float32 table value)


def test_pckh_equals_the_official_with_missing_joints_and_degenerate_boxes(tmp_path):
    rng = np.random.default_rng(5)
    positions, missing, headboxes = random_gt(rng, 120, missing_rate=0.5)
    missing[6:8] = 1  # pelvis and thorax never annotated: masked out anyway
    missing[:, :3] = 1  # people with nothing annotated
    headboxes[1, :, 10] = headboxes[0, :, 10]  # a zero head box: inf / NaN distances
    positions[:, :, 11] = np.nan  # NaN ground truth (annotated): never correct
    preds = near_predictions(rng, positions, headboxes)
    preds[20, 3] = np.nan  # a NaN prediction
    preds[21] = -1.0  # predictions on the ground truth of a person at (0, 0)
    positions[:, :, 21] = 0.0
    stats = compare(tmp_path, preds, positions, missing, headboxes)
    assert np.isfinite(stats["PCKh"])


def test_pckh_equals_the_official_when_a_joint_is_never_annotated(tmp_path):
    """0/0 for one reported joint: NaN there and in both means (the official divides the same way);
    with only pelvis/thorax annotated nothing is left: the official returns the masked constant."""
    rng = np.random.default_rng(6)
    positions, missing, headboxes = random_gt(rng, 40)
    preds = near_predictions(rng, positions, headboxes)
    missing[5] = 1  # left ankle
    stats = compare(tmp_path, preds, positions, missing, headboxes, "a.mat")
    assert np.isnan(stats["Ankle"]) and np.isnan(stats["PCKh"]) and np.isfinite(stats["Knee"])
    missing[:] = 1
    missing[6:8] = 0
    stats = compare(tmp_path, preds, positions, missing, headboxes, "b.mat")
    assert np.isnan(stats["PCKh"]) and np.isnan(stats["PCKh@0.1"])


def test_pckh_is_100_for_perfect_predictions_and_counts_the_neck(tmp_path):
    """The Mean weights every joint but pelvis and thorax by its annotated count, the upper neck
    (in no group) included."""
    rng = np.random.default_rng(7)
    positions, missing, headboxes = random_gt(rng, 50, missing_rate=0.0)
    preds = np.zeros((50, 16, 3), np.float32)
    preds[..., :2] = np.transpose(positions, [2, 0, 1]) - 1
    stats = compare(tmp_path, preds, positions, missing, headboxes)
    assert all(v == 100.0 for v in stats.values())
    preds[:, 8, 0] += 1000  # every neck wrong: only the means move
    preds[:, 6:8, 0] += 1000  # pelvis and thorax wrong: nothing moves
    stats = compare(tmp_path, preds, positions, missing, headboxes, "b.mat")
    assert [stats[g] for g in STAT_NAMES[:7]] == [100.0] * 7
    assert stats["PCKh"] == pytest.approx(100 * 13 / 14)


def test_one_person_mat_as_matlab_writes_it(tmp_path):
    """MATLAB drops the trailing 1 of a one-person file (16x2, 2x2): read as (16, 2, 1)."""
    rng = np.random.default_rng(8)
    positions, missing, headboxes = random_gt(rng, 1)
    preds = near_predictions(rng, positions, headboxes)
    three_d = pckh(preds, load_gt(write_mat(tmp_path / "3d.mat", positions, missing, headboxes)))
    two_d = pckh(preds, load_gt(write_mat(tmp_path / "2d.mat", positions[..., 0], missing, headboxes[..., 0])))
    with np.errstate(divide="ignore", invalid="ignore"):
        assert_equal_stats(two_d, official_evaluate(preds, str(tmp_path / "3d.mat")))
    assert three_d == two_d or all(np.isnan(three_d[k]) == np.isnan(two_d[k]) for k in STAT_NAMES)


# ------------------------------------------------------------ (b) loader --
def _sample_anno():
    return json.loads((SAMPLE / "test_mpii.json").read_text())


@pytest.mark.parametrize("train", [True, False])
def test_loader_records_equal_the_official_get_db(train):
    anno = _sample_anno()
    ds = TopDownMpiiDataset(SAMPLE, "test_mpii.json", ".", DataConfig(window_decode=False), (256, 192), "mpii",
                            train=train)
    official = official_get_db(anno, 16, test_mode=not train)
    assert len(ds) == len(official) == 5
    for i, (rec, ref) in enumerate(zip(ds.records, official)):
        assert rec["file_name"] == ref["image_file"] and rec["image_id"] == i == ref["bbox_id"]
        assert rec["center"].dtype == np.float32 and np.array_equal(rec["center"], ref["center"])
        # mmpose keeps 200-pixel units and multiplies in the affine (s * 200.0, float32): we store the product
        assert rec["scale"].dtype == np.float32 and np.array_equal(rec["scale"], ref["scale"] * 200.0)
        assert rec["scale"][0] == rec["scale"][1]  # square: no aspect-ratio fit
        assert np.array_equal(rec["joints"][:, :2], ref["joints_3d"][:, :2])
        assert np.array_equal(rec["joints"][:, 2], ref["joints_3d_visible"][:, 0])
        assert rec["size"] == cv2.imread(str(SAMPLE / rec["file_name"])).shape[:2]
    assert ds.load_report == "5 people in 5 images, 5 kept, 0 dropped (MPII keeps every annotated person)"
    if not train:  # the crop is the official UDP affine of the square box onto 192x256
        for i, ref in enumerate(official):
            crop = ds._plan(i)["crop"]
            expected = official_warp_matrix(0, ref["center"] * 2.0, np.array([192, 256]) - 1.0, ref["scale"] * 200.0)
            assert np.array_equal(crop.astype(np.float32), expected)
            assert crop[0, 0] < crop[1, 1]  # squeezed horizontally


def test_loader_center_minus_one_branch_and_errors(tmp_path):
    anno = _sample_anno()[:2]
    anno[1]["center"] = [-1.0, 300.0]  # the official skips the shift and the padding, but still subtracts 1
    anno.append(dict(anno[0], image="004645041.jpg"))
    for name in ("005808361.jpg", "052475643.jpg", "004645041.jpg"):
        shutil.copy(SAMPLE / name, tmp_path / name)
    (tmp_path / "ann.json").write_text(json.dumps(anno))
    ds = TopDownMpiiDataset(tmp_path, "ann.json", ".", DataConfig(window_decode=False), (256, 192), "mpii")
    for rec, ref in zip(ds.records, official_get_db(anno, 16, test_mode=False)):
        assert np.array_equal(rec["center"], ref["center"]) and np.array_equal(rec["scale"], ref["scale"] * 200.0)
    assert list(ds.records[1]["center"]) == [-2.0, 299.0]
    (tmp_path / "004645041.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"004645041\.jpg \(entry 2 of .*ann\.json\) is missing"):
        TopDownMpiiDataset(tmp_path, "ann.json", ".", DataConfig(window_decode=False), (256, 192), "mpii")
    anno[0]["joints"] = anno[0]["joints"][:15]
    (tmp_path / "ann.json").write_text(json.dumps(anno))
    with pytest.raises(ValueError, match=r"entry 0 has joints \(15, 2\) and joints_vis \(16,\); expected \(16, 2\)"):
        TopDownMpiiDataset(tmp_path, "ann.json", ".", DataConfig(window_decode=False), (256, 192), "mpii")
    with pytest.raises(ValueError, match=r"expected no detection file"):
        TopDownMpiiDataset(tmp_path, "ann.json", ".", DataConfig(window_decode=False), (256, 192), "mpii",
                           train=False, det_file="dets.json")


def test_training_flip_uses_the_mpii_pairs():
    spec = get_spec("mpii")
    assert [list(p) for p in spec.flip_pairs] == OFFICIAL_FLIP_PAIRS
    still = dict(window_decode=False, scale_factor=0.0, rot_factor=0.0, rot_prob=0.0, half_body_prob=0.0)
    plain = TopDownMpiiDataset(SAMPLE, "test_mpii.json", ".", DataConfig(flip_prob=0.0, **still), (256, 192), spec)
    flipped = TopDownMpiiDataset(SAMPLE, "test_mpii.json", ".", DataConfig(flip_prob=1.0, **still), (256, 192), spec)
    i = 2  # 051423444.jpg: both ankles unannotated (zero weight, flipped or not)
    rec = flipped.records[i]
    geometry = flipped._plan(i)
    assert geometry["flipped"]
    # mmpose fliplr_joints: x -> width - 1 - x, then the pairs swap
    expected = rec["joints"].copy()
    expected[:, 0] = rec["size"][1] - 1 - expected[:, 0]
    for a, b in OFFICIAL_FLIP_PAIRS:
        expected[[a, b]] = expected[[b, a]]
    assert np.array_equal(geometry["joints"], expected)
    a, b = plain[i], flipped[i]
    index = spec.flip_index
    # UDP: flipping commutes with the crop (up to cv2's 1/32-pixel sampling of the mirrored matrix)
    assert np.abs(b["img"].numpy() - a["img"].numpy()[:, :, ::-1]).mean() < 0.02
    assert np.allclose(b["target"].numpy(), a["target"].numpy()[index][:, :, ::-1], atol=1e-6)
    assert np.array_equal(b["target_weight"].numpy(), a["target_weight"].numpy()[index])
    assert not np.allclose(b["target"].numpy(), a["target"].numpy()[:, :, ::-1], atol=1e-3)  # the swap matters


def test_build_datasets_reads_mpii_layout_for_a_pckh_set(tmp_path):
    assert dataset_class("mpii") is TopDownMpiiDataset and dataset_class("coco") is TopDownCocoDataset
    cfg = Config()
    cfg.model.image_size = [256, 192]
    cfg.model.num_keypoints = 16
    cfg.data = DataConfig(root=str(SAMPLE), train_ann="test_mpii.json", train_images=".", val_ann="test_mpii.json",
                          val_images=".", keypoint_set="mpii", window_decode=False)
    train, val, val_ann = build_datasets(cfg)
    assert type(train) is TopDownMpiiDataset and type(val) is TopDownMpiiDataset
    assert train.train and not val.train and val_ann == str(SAMPLE / "test_mpii.json")


# ---------------------------------------------------------------- (c) CLI --
def _sample_gt(tmp_path, name="mpii_gt_val.mat", drop=()):
    """The official sample as a ground truth: 1-based joints, jnt_missing = 1 - joints_vis, made-up head boxes."""
    anno = _sample_anno()
    positions = np.stack([np.array(a["joints"], dtype=np.float64) for a in anno], axis=-1)
    missing = np.stack([1 - np.array(a["joints_vis"], dtype=np.uint8) for a in anno], axis=-1)
    top = positions[9]  # head top (2, N)
    headboxes = np.stack([top - 20.0, top + 20.0])
    return write_mat(tmp_path / name, positions, missing, headboxes, drop=drop), positions


def _results(positions, k=16, shift=0.0):
    """Our evaluation's result entries (0-based, x y score), one per person."""
    out = []
    for n in range(positions.shape[2]):
        kp = np.zeros((k, 3))
        kp[:16, :2] = positions[:, :, n] - 1 + shift
        kp[:, 2] = 0.9
        out.append({"image_id": n, "category_id": 1, "keypoints": kp.reshape(-1).tolist(), "score": 0.9})
    return out


def test_cli_prints_the_table_and_writes_stats(tmp_path, capsys):
    mat, positions = _sample_gt(tmp_path)
    results = _results(positions)
    results[0]["keypoints"][0] += 500.0  # one wrong (annotated) right ankle
    (tmp_path / "res.json").write_text(json.dumps(results))
    rc = cli_main(["pckh", "--gt", str(mat), "--results", str(tmp_path / "res.json"),
                   "--out", str(tmp_path / "out" / "stats.json")])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0] == "| Head | Shoulder | Elbow | Wrist | Hip | Knee | Ankle | Mean | Mean@0.1 |"
    assert out[1] == "|---|---|---|---|---|---|---|---|---|"
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert list(stats) == list(STAT_NAMES) and stats["Ankle"] == 0.5 * (100 * 2 / 3 + 100.0)
    assert out[2] == "| " + " | ".join(f"{stats[k]:.3f}" for k in STAT_NAMES) + " |"
    # the raw list-of-lists form gives the same numbers
    raw = [np.array(r["keypoints"]).reshape(16, 3)[:, :2].tolist() for r in results]
    (tmp_path / "raw.json").write_text(json.dumps(raw))
    assert cli_main(["pckh", "--gt", str(mat), "--results", str(tmp_path / "raw.json")]) == 0
    assert capsys.readouterr().out.splitlines()[2] == out[2]


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    mat, positions = _sample_gt(tmp_path)
    nobox, _ = _sample_gt(tmp_path, "nobox.mat", drop=("headboxes_src",))
    good = tmp_path / "res.json"
    good.write_text(json.dumps(_results(positions)))
    k17 = tmp_path / "k17.json"
    k17.write_text(json.dumps(_results(positions, k=17)))
    short = tmp_path / "short.json"
    short.write_text(json.dumps(_results(positions)[:4]))
    cases = [(nobox, good, rf"error: {nobox}: no 'headboxes_src' \(variables: \['dataset_joints', 'jnt_missing', "
                           rf"'pos_gt_src'\]\); expected mpii_gt_val\.mat as distributed with mmpose 0\.x"),
             (mat, k17, rf"error: {k17}: result 0 has 17 keypoints; expected 16 \(the MPII joints\)$"),
             (mat, short, rf"error: {short}: 4 results; expected 5, one per person of the ground truth"),
             (tmp_path / "none.mat", good, rf"error: {tmp_path / 'none.mat'}: no such file")]
    for gt, res, message in cases:
        rc = cli_main(["pckh", "--gt", str(gt), "--results", str(res)])
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert rc == 2 and captured.out == "" and len(lines) == 1, (gt, res, captured)
        assert re.match(message, lines[0]), lines[0]


def test_cli_exit_code_as_a_program(tmp_path):
    nobox, positions = _sample_gt(tmp_path, "nobox.mat", drop=("headboxes_src",))
    (tmp_path / "res.json").write_text(json.dumps(_results(positions)))
    proc = subprocess.run([sys.executable, "-m", "vitpose_scale.cli", "pckh", "--gt", str(nobox), "--results",
                           str(tmp_path / "res.json")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.splitlines()) == 1
    assert "headboxes_src" in proc.stderr


# ------------------------------------------------------------ (d) scoring --
def test_scoring_reads_the_mat_next_to_the_val_annotations(tmp_path):
    ann_dir = tmp_path / "annotations"
    ann_dir.mkdir()
    shutil.copy(SAMPLE / "test_mpii.json", ann_dir / "mpii_val.json")
    spec = get_spec("mpii")
    _, positions = _sample_gt(tmp_path, "elsewhere.mat")
    message = (rf"{ann_dir / 'mpii_gt_val.mat'}: no such file; PCKh reads mpii_gt_val\.mat from the folder "
               rf"of the val annotations mpii_val\.json")
    with pytest.raises(PCKhInputError, match=message):
        scoring.score(spec, str(ann_dir / "mpii_val.json"), _results(positions))
    mat, _ = _sample_gt(ann_dir)
    # The val set's own order, through the pckh postprocess: predictions at the loaded (0-based) joints.
    ds = TopDownMpiiDataset(ann_dir, "mpii_val.json", str(SAMPLE), DataConfig(window_decode=False), (256, 192), spec)
    people = [{"index": i, "image_id": r["image_id"], "keypoints": np.concatenate([r["joints"][:, :2],
              np.full((16, 1), 0.9)], axis=1), "bbox_score": 1.0} for i, r in enumerate(ds.records)][::-1]
    results = scoring.postprocess(spec, people, Config().eval)
    stats = scoring.score(spec, str(ann_dir / "mpii_val.json"), results, dataset=ds)
    assert scoring.primary(spec) == "PCKh" and list(stats) == list(STAT_NAMES)
    assert all(v == 100.0 for v in stats.values())
    assert_equal_stats(stats, official_evaluate(np.array([p["keypoints"] for p in people[::-1]], np.float32), str(mat)))
    with pytest.raises(PCKhInputError, match=r"5 people, but the val set .* has 2"):
        scoring.score(spec, str(ann_dir / "mpii_val.json"), results, dataset=[0, 1])


def test_score_results_takes_the_mat_or_the_annotation_file_and_a_path_or_list(tmp_path, capsys):
    ann_dir = tmp_path / "annotations"
    ann_dir.mkdir()
    (ann_dir / "mpii_val.json").write_text("[]")
    mat, positions = _sample_gt(ann_dir)
    results = _results(positions, shift=3.0)
    (tmp_path / "res.json").write_text(json.dumps(results))
    expected = pckh(np.array([np.reshape(r["keypoints"], (16, 3)) for r in results]), load_gt(mat))
    assert pckh_module.score_results(mat, results) == expected
    assert pckh_module.score_results(ann_dir / "mpii_val.json", tmp_path / "res.json", verbose=True) == expected
    assert capsys.readouterr().out.splitlines()[0].startswith("| Head | Shoulder |")
    assert scoring.evaluate(get_spec("mpii"), str(mat), str(tmp_path / "res.json")) == expected
    assert pckh_module.gt_file_for(ann_dir / "mpii_val.json") == mat
