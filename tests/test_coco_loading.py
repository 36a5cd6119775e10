"""How an annotation file becomes samples: who is kept, with which box, and what the errors say.

The box rules are the reference's (mmpose TopDownCocoDataset._load_coco_keypoint_annotation_kernel),
written out here from its source rather than taken from ours.
"""
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from vitpose_scale.config import Config, ConfigError, DataConfig, load_config
from vitpose_scale.data import coco as coco_module
from vitpose_scale.data.coco import DROP_REASONS, TopDownCocoDataset, build_datasets, load_coco
from vitpose_scale.data.transforms import box_to_center_scale, sample_rng

SIZE = (64, 48)
W, H = 100, 80  # every hand-made image


def _reference_clean_box(bbox, area, width, height):
    """mmpose: x1 = max(0, x) ... kept iff ('area' absent or area > 0) and x2 > x1 and y2 > y1."""
    x, y, w, h = bbox
    x1 = max(0, x)
    y1 = max(0, y)
    x2 = min(width - 1, x1 + max(0, w - 1))
    y2 = min(height - 1, y1 + max(0, h - 1))
    if (area is None or area > 0) and x2 > x1 and y2 > y1:
        return [x1, y1, x2 - x1, y2 - y1]
    return None


def _reason(bbox, area, width, height):
    """Our documented split of the dropped boxes: thin (<= 1 px) boxes that touch the image and
    NaN/zero-area boxes are "box NaN or <= 1 px"; the rest lie outside the image."""
    x, y, w, h = bbox
    if not all(math.isfinite(v) for v in bbox) or (area is not None and area <= 0):
        return DROP_REASONS[0]
    touches = x < width - 1 and y < height - 1 and x + w > 0 and y + h > 0
    return DROP_REASONS[0] if touches and (w <= 1 or h <= 1) else DROP_REASONS[1]


EDGES_X = [-30.0, -5.0, -1.0, -0.5, 0.0, 0.5, 1.0, 10.0, W - 3.0, W - 2.0, W - 1.5, W - 1.0, W - 0.5, W + 5.0]
SIDES = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 5.0, 30.0, 200.0]


def test_box_sanitising_is_the_reference_rule_on_every_boundary():
    cases = 0
    for x in EDGES_X:
        for w in SIDES:
            for y, h in [(10.0, 20.0), (x * H / W, w), (-w, w)]:
                for area in [None, 1.0, 0.5, 0.0, -1.0]:
                    box, reason = TopDownCocoDataset._clean_box([x, y, w, h], area, W, H)
                    expected = _reference_clean_box([x, y, w, h], area, W, H)
                    assert box == expected, (x, y, w, h, area)
                    assert reason == (None if expected is not None else _reason([x, y, w, h], area, W, H)), \
                        (x, y, w, h, area)
                    cases += 1
    # The same along y (x inside), so the y clipping is checked at its own edges.
    for y in [v * H / W for v in EDGES_X] + [H - 2.0, H - 1.0, H - 0.5]:
        for h in SIDES:
            box, reason = TopDownCocoDataset._clean_box([10.0, y, 20.0, h], None, W, H)
            expected = _reference_clean_box([10.0, y, 20.0, h], None, W, H)
            assert box == expected and (reason is None) == (expected is not None), (y, h)
            if expected is None:
                assert reason == _reason([10.0, y, 20.0, h], None, W, H), (y, h)
            cases += 1
    assert cases > 2000
    # A NaN or infinite coordinate is never a box.
    for bad in ([math.nan, 1, 5, 5], [1, 1, math.inf, 5]):
        assert TopDownCocoDataset._clean_box(bad, None, W, H) == (None, DROP_REASONS[0])


def _write(tmp_path, anns, images=None, name="ann.json", keypoint_names=17):
    images = images if images is not None else [{"id": 1, "file_name": "a.jpg", "width": W, "height": H}]
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(keypoint_names)],
                            "skeleton": []},
                           {"id": 2, "name": "robot", "keypoints": []}]}
    (tmp_path / name).write_text(json.dumps(data))
    return name


def _person(id, image_id=1, bbox=(20.0, 10.0, 30.0, 40.0), v=2, joints=17, **extra):
    kpts = []
    for j in range(joints):
        kpts += [25.0 + j, 15.0 + j, v]
    ann = {"id": id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "area": 900.0, "bbox": None if bbox is None else list(bbox),
           "keypoints": kpts}
    ann.update(extra)
    return {k: v for k, v in ann.items() if v is not None}


def _load(tmp_path, anns, train=False, images=None, **cfg):
    name = _write(tmp_path, anns, images)
    return TopDownCocoDataset(tmp_path, name, ".", DataConfig(**cfg), SIZE, train=train)


def test_crowds_other_categories_and_unlabelled_people_are_left_out_and_counted(tmp_path):
    anns = [_person(1, iscrowd=1),                       # a crowd region: not a person sample, not counted
            _person(2, category_id=2),                   # another category: not counted
            _person(3, iscrowd=None),                    # no iscrowd key: not a crowd
            _person(4, v=0),                             # no labelled joint
            _person(5, v=1),                             # labelled, occluded: kept
            _person(6, bbox=(W + 10.0, 5.0, 20.0, 20.0)),  # outside the image
            _person(7, bbox=(30.0, 30.0, 0.5, 20.0)),     # thinner than a pixel
            _person(8, area=0.0),                         # zero area
            _person(9, area=None),                        # no area: the box decides
            _person(10, bbox=None),                       # no box at all
            _person(11, v=3)]                             # visibility above 2 is clipped to 2
    ds = _load(tmp_path, anns)
    assert [r["ann_id"] for r in ds.records] == [3, 5, 9, 11]
    assert ds.load_report == ("9 people, 4 kept, 5 dropped (box NaN or <= 1 px 3, box outside the image 1, "
                              "no labelled joints 1, bad image size 0)")
    assert ds.drop_counts == Counter({DROP_REASONS[0]: 3, DROP_REASONS[1]: 1, DROP_REASONS[2]: 1})
    by_id = {r["ann_id"]: r for r in ds.records}
    assert (by_id[5]["joints"][:, 2] == 1).all() and (by_id[11]["joints"][:, 2] == 2).all()
    for rec in ds.records:  # evaluation records: GT box score 1, float32 joints (memory at COCO size)
        assert rec["bbox_score"] == 1.0 and rec["joints"].dtype == np.float32 and rec["size"] == (H, W)


@pytest.mark.parametrize("width,height", [(0, H), (W, 0), (None, H), ("100", H), (-5, H)])
def test_images_without_a_usable_size_drop_their_people_by_that_reason(tmp_path, width, height):
    images = [{"id": 1, "file_name": "a.jpg", "width": W, "height": H},
              {"id": 2, "file_name": "b.jpg", "width": width, "height": height}]
    ds = _load(tmp_path, [_person(1), _person(2, image_id=2), _person(3, image_id=2)], images=images)
    assert [r["ann_id"] for r in ds.records] == [1]
    assert ds.drop_counts == Counter({DROP_REASONS[3]: 2})


def _reference_center_scale(bbox, aspect, padding):
    """mmpose _xywh2cs (scale in pixels instead of pixel_std units)."""
    x, y, w, h = bbox
    center = [x + w * 0.5, y + h * 0.5]
    if w > aspect * h:
        h = w * 1.0 / aspect
    elif w < aspect * h:
        w = h * aspect
    return center, [w * padding, h * padding]


@pytest.mark.parametrize("bbox", [(20.0, 10.0, 60.0, 20.0), (20.0, 10.0, 10.0, 60.0), (5.0, 5.0, 36.0, 48.0)])
def test_evaluation_records_hold_the_reference_centre_and_padded_scale(tmp_path, bbox):
    ds = _load(tmp_path, [_person(1, bbox=bbox)], bbox_padding=1.3)
    clean = _reference_clean_box(list(bbox), 900.0, W, H)
    center, scale = _reference_center_scale(clean, SIZE[1] / SIZE[0], 1.3)
    np.testing.assert_allclose(ds.records[0]["center"], center, rtol=1e-6)
    np.testing.assert_allclose(ds.records[0]["scale"], scale, rtol=1e-6)


def test_training_box_shifts_are_bounded_by_the_factor_and_reach_it(tmp_path):
    box = (10.0, 10.0, 60.0, 50.0)  # w != h, so a shift in box units tells x from y
    anns = [_person(i, bbox=box) for i in range(1, 201)]
    base = _load(tmp_path, anns, train=False).records[0]["center"]
    shifted = _load(tmp_path, anns, train=True, bbox_shift_prob=1.0, bbox_shift_factor=0.4)
    rel = np.array([(r["center"] - base) / np.array([60.0, 50.0]) for r in shifted.records])
    assert np.abs(rel).max() <= 0.2 + 1e-6            # +-factor/2 of the box size
    assert np.abs(rel).max(axis=0).min() > 0.18        # and 200 draws come near the bound on both axes
    assert np.abs(rel[:, 0] - rel[:, 1]).max() > 0.05  # x and y drawn separately
    assert abs(rel.mean()) < 0.05                      # centred
    none = _load(tmp_path, anns, train=True, bbox_shift_prob=0.0)
    assert all((r["center"] == base).all() for r in none.records)
    some = _load(tmp_path, anns, train=True, bbox_shift_prob=0.3)
    moved = sum(not (r["center"] == base).all() for r in some.records)
    assert 30 <= moved <= 90  # about 60 of 200


def test_constructor_defaults_are_training_with_seed_0_stream_0_epoch_0(coco_sample):
    cfg = DataConfig()
    implicit = TopDownCocoDataset(coco_sample, "test_coco.json", ".", cfg, SIZE)
    explicit = TopDownCocoDataset(coco_sample, "test_coco.json", ".", cfg, SIZE, train=True, seed=0, stream=0)
    explicit.set_epoch(0)
    assert implicit.train and implicit.det_file is None
    for i in (0, 5):
        a, b = implicit[i], explicit[i]
        assert torch.equal(a["img"], b["img"]) and torch.equal(a["target"], b["target"])


def test_keypoint_maps_are_checked_against_the_target_joint_count(tmp_path):
    _write(tmp_path, [_person(1, joints=3)], keypoint_names=3)
    cfg = DataConfig()
    ds = TopDownCocoDataset(tmp_path, "ann.json", ".", cfg, SIZE, keypoint_map=[0, None, 16])  # both ends
    joints = ds.records[0]["joints"]
    assert joints.shape == (17, 3) and joints.dtype == np.float32
    assert joints[0].tolist() == [25.0, 15.0, 2.0] and joints[16].tolist() == [27.0, 17.0, 2.0]
    assert not joints[1:16].any()
    with pytest.raises(ValueError, match=r"keypoint_map targets \[17\] are outside \[0, 17\)"):
        TopDownCocoDataset(tmp_path, "ann.json", ".", cfg, SIZE, keypoint_map=[0, 17, None])
    with pytest.raises(ValueError, match=r"keypoint_map targets \[-1\] are outside"):
        TopDownCocoDataset(tmp_path, "ann.json", ".", cfg, SIZE, keypoint_map=[-1, 1, 2])
    with pytest.raises(ValueError, match=r"keypoint_map 'mpii': expected one of \['aic'\] or a list"):
        TopDownCocoDataset(tmp_path, "ann.json", ".", cfg, SIZE, keypoint_map="mpii")
    with pytest.raises(ValueError, match=r"lists 3 keypoints; expected 2 \(the length of keypoint_map\)"):
        TopDownCocoDataset(tmp_path, "ann.json", ".", cfg, SIZE, keypoint_map=[0, 1])
    with pytest.raises(ValueError, match=r"lists 3 keypoints; expected 17 \(keypoint set 'coco'; choose"):
        TopDownCocoDataset(tmp_path, "ann.json", ".", cfg, SIZE)


def test_a_set_of_another_joint_count_trains_with_its_own_flip_pairs_and_upper_body(tmp_path):
    """A 5-joint set registered at run time: the transform flips and crops half bodies by its spec
    (before keypoint sets, any set without 17 joints silently trained without flips)."""
    from vitpose_scale.keypoints import KeypointSpec, register

    _write(tmp_path, [_person(1, joints=5)], keypoint_names=5)
    five = register(KeypointSpec(
        name="five_test", names=("a", "l", "r", "lf", "rf"), flip_pairs=((1, 2), (3, 4)), upper_body_ids=(0, 1, 2),
        lower_body_ids=(3, 4), joint_weights=(1.0,) * 5, sigmas=(0.05,) * 5, skeleton=((0, 1), (0, 2)),
        keypoint_colors=((0, 0, 0),) * 5, link_colors=((0, 0, 0),) * 2))
    ds = TopDownCocoDataset(tmp_path, "ann.json", ".", DataConfig(flip_prob=1.0), SIZE, "five_test")
    assert ds.transform.flip_pairs == ((1, 2), (3, 4)) and ds.transform.upper_body_ids == (0, 1, 2)
    assert ds.keypoints is five
    rec = ds.records[0]
    plan = ds.transform.plan(rec["size"], rec["joints"], rec["center"], rec["scale"], ds.augmentation_rng(0))
    width = rec["size"][1]
    assert plan["flipped"] and plan["joints"][1, 0] == width - 1 - rec["joints"][2, 0]  # l <- mirrored r
    assert plan["joints"][0, 0] == width - 1 - rec["joints"][0, 0]


def test_a_detection_file_is_found_from_the_root_or_the_working_directory(tmp_path, monkeypatch):
    _write(tmp_path, [_person(1)])
    dets = [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 30], "score": 0.1},
            {"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 30], "score": 0.2},
            {"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 30], "score": 0.9}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    cfg = DataConfig(det_score_thr=0.5)
    from_root = TopDownCocoDataset(tmp_path, "ann.json", ".", cfg, SIZE, train=False, det_file="dets.json")
    assert from_root.det_file == tmp_path / "dets.json" and from_root.drop_counts == Counter()
    assert from_root.load_report == "3 person detections, 1 kept, 2 with score < 0.5 dropped"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)  # relative to the working directory, not the root
    from_cwd = TopDownCocoDataset(elsewhere.parent, "ann.json", ".", cfg, SIZE, train=False,
                                  det_file="dets.json")
    assert len(from_cwd.records) == 1
    other_root = tmp_path / "root2"
    other_root.mkdir()
    _write(other_root, [_person(1)])
    found = TopDownCocoDataset(other_root, "ann.json", ".", cfg, SIZE, train=False, det_file="dets.json")
    assert found.det_file == __import__("pathlib").Path("dets.json")
    with pytest.raises(FileNotFoundError, match=r"detection file nope\.json not found \(looked in .*root2/nope\.json "
                                                r"and .*/nope\.json\); expected a COCO results json"):
        TopDownCocoDataset(other_root, "ann.json", ".", cfg, SIZE, train=False, det_file="nope.json")


@pytest.mark.parametrize("content,message", [
    (None, r"annotation file .*missing\.json does not exist"),
    ("{not json", r"not a COCO annotation file \(JSONDecodeError.*; expected a COCO person-keypoint json"),
    ({"images": [{"id": 1}], "annotations": []}, r"not a keypoint annotation file \(categories \[\]\)"),
    ({"images": [{"id": 1}], "annotations": [], "categories": [{"id": 2, "name": "dog"}]},
     r"\(categories \['dog'\]\); expected a COCO keypoint json with a category holding a 'keypoints'"),
    ({"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "person"}]},
     r"not a keypoint annotation file \(categories \['person'\]\)"),
    ({"images": [], "annotations": [], "categories": [{"id": 1, "name": "person", "keypoints": ["a"]}]},
     r"the 'images' list is empty; expected at least one image entry"),
    ({"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}],
      "categories": [{"id": 1, "name": "person", "keypoints": ["a"]}]},
     r"annotations have no 'keypoints' field; expected a COCO person-keypoint file \(instances_\*\.json"),
])
def test_annotation_files_that_are_not_person_keypoints_say_so(tmp_path, content, message):
    path = tmp_path / "missing.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_coco(path)


def test_training_items_decode_only_their_window_and_evaluation_the_union(coco_sample, monkeypatch):
    calls = []
    real = coco_module.read_rgb_window

    def spy(path, size, window, listed=""):
        calls.append((path.name, tuple(int(v) for v in window), listed))
        return real(path, size, window, listed)

    monkeypatch.setattr(coco_module, "read_rgb_window", spy)
    monkeypatch.setattr(coco_module, "read_rgb", lambda *a: pytest.fail("a whole image was decoded"))
    ds = TopDownCocoDataset(coco_sample, "test_coco.json", ".", DataConfig(), SIZE, train=True, seed=1)
    ds[3]
    rec = ds.records[3]
    assert calls == [(rec["file_name"], tuple(ds.transform.source_window(ds._plan(3), rec["size"])),
                      f"image_id {rec['image_id']}, listed in {ds.ann_file}")]
    calls.clear()
    val = TopDownCocoDataset(coco_sample, "test_coco.json", ".", DataConfig(), SIZE, train=False)
    people = max(val.image_groups(), key=len)
    assert len(people) > 1
    for i in people:
        val[i]
    windows = np.array([val.transform.source_window(val._plan(i), val.records[i]["size"]) for i in people])
    union = (windows[:, 0].min(), windows[:, 1].min(), windows[:, 2].max(), windows[:, 3].max())
    assert [c[1] for c in calls] == [tuple(int(v) for v in union)]  # one decode for that image's people


def test_a_missing_image_names_its_annotation_file_also_without_window_decoding(tmp_path):
    _write(tmp_path, [_person(1)])
    ds = TopDownCocoDataset(tmp_path, "ann.json", ".", DataConfig(window_decode=False), SIZE)
    with pytest.raises(Exception, match=r"a\.jpg.*image_id 1, listed in .*ann\.json"):
        ds[0]


# ------------------------------------------------------------ build_datasets --
def _cfg_14(tmp_path, coco_sample, **data):
    """A 14-joint set (the sample's first 14 COCO joints, read as AIC's 14) as main, extra and validation set."""
    raw = json.loads((coco_sample / "test_coco.json").read_text())
    raw["categories"][0]["keypoints"] = raw["categories"][0]["keypoints"][:14]
    for ann in raw["annotations"]:
        ann["keypoints"] = ann["keypoints"][:42]
    (tmp_path / "k14.json").write_text(json.dumps(raw))
    raw["annotations"] = raw["annotations"][:5]  # a second, smaller set: its own report line
    (tmp_path / "k14_small.json").write_text(json.dumps(raw))
    cfg = Config()
    cfg.model.image_size = list(SIZE)
    cfg.model.num_keypoints = 14
    cfg.train.seed = 7
    entry = {"root": str(tmp_path), "ann": "k14.json", "images": str(coco_sample)}
    cfg.data = DataConfig(root=str(tmp_path), train_ann="k14.json", train_images=str(coco_sample),
                          val_ann="k14.json", val_images=str(coco_sample), keypoint_set="aic", **data)
    cfg.data.extra_train = [dict(entry), dict(entry, ann="k14_small.json")]
    return cfg


def test_build_datasets_passes_joints_seed_and_streams_and_reports_each_set(tmp_path, coco_sample, capsys):
    train, val, val_ann = build_datasets(_cfg_14(tmp_path, coco_sample))
    sets = train.datasets
    assert [d.num_keypoints for d in sets] == [14, 14, 14] and val.num_keypoints == 14
    assert [d.stream for d in sets] == [0, 1, 2] and all(d.train and d.uint8_images for d in sets)
    assert [d.seed for d in sets + [val]] == [7, 7, 7, 7]
    assert not val.train and val.det_file is None and val_ann == str(tmp_path / "k14.json")
    report, small = sets[0].load_report, sets[2].load_report
    assert report != small and len(sets[2]) < len(sets[1])
    assert capsys.readouterr().out.splitlines() == [
        f"dataset train (k14.json): {report}", f"dataset extra_train[0] (k14.json): {report}",
        f"dataset extra_train[1] (k14_small.json): {small}", f"dataset val (k14.json): {report}"]


def test_build_datasets_one_set_is_the_dataset_itself(tmp_path, coco_sample):
    cfg = _cfg_14(tmp_path, coco_sample)
    cfg.data.extra_train = []
    train, _, _ = build_datasets(cfg)
    assert isinstance(train, TopDownCocoDataset)


@pytest.mark.parametrize("entry,ratio,message", [
    ({"root": ".", "ann": "a.json"}, None, r"data\.extra_train\[0\]: got keys \['ann', 'root'\]; expected root, ann, "
                                           r"images and optionally keypoint_map, ratio"),
    ({"root": ".", "ann": "a.json", "images": ".", "weight": 2}, None, r"got keys \['ann', 'images', 'root', 'weight'\]"),
    ({"root": ".", "ann": "a.json", "images": ".", "ratio": 0}, 1, r"data\.extra_train\[0\]\.ratio: got 0, expected a "
                                                                  r"positive number"),
    ({"root": ".", "ann": "a.json", "images": ".", "ratio": True}, 1, r"ratio: got True, expected a positive"),
    ({"root": ".", "ann": "a.json", "images": ".", "ratio": "2"}, 1, r"ratio: got '2', expected a positive"),
    ({"root": ".", "ann": "a.json", "images": "."}, 2, r"data\.extra_train\[0\]\.ratio is not set while "
                                                       r"data\.train_ratio is"),
    ({"root": ".", "ann": "a.json", "images": ".", "ratio": 1}, None, r"data\.train_ratio is not set while "
                                                                     r"data\.extra_train\[0\]\.ratio is"),
    ({"root": ".", "ann": "a.json", "images": ".", "keypoint_map": "wholebody"}, None,
     r"data\.extra_train\[0\]\.keypoint_map: got 'wholebody', expected one of \['aic'\] or a list"),
    ({"root": ".", "ann": "a.json", "images": ".", "keypoint_map": [0, 20, None]}, None,
     r"data\.extra_train\[0\]\.keypoint_map: targets \[20\] are outside \[0, 1[47]\)"),
    ({"root": ".", "ann": "a.json", "images": ".", "keypoint_map": ["nose"]}, None,
     r"data\.extra_train\[0\]\.keypoint_map: got \['nose'\], expected .* list of target indices"),
    ({"root": 5, "ann": "a.json", "images": "."}, None, r"data\.extra_train\[0\]\.root: got 5, expected a path"),
])
def test_bad_extra_sets_are_config_errors_at_load_time_naming_the_key(tmp_path, coco_sample, entry, ratio, message):
    """Refused while the config loads (ConfigError: one line, exit 2 from every command), before any
    data is read; build_datasets refuses the same for a config built or changed in Python."""
    overrides = [f"data.extra_train={json.dumps([entry])}", f"data.train_ratio={'null' if ratio is None else ratio}"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    cfg = _cfg_14(tmp_path, coco_sample, train_ratio=ratio)
    cfg.data.extra_train = [entry]
    with pytest.raises(ConfigError, match=message):
        build_datasets(cfg)


def test_a_named_keypoint_map_and_ratios_load():
    cfg = load_config(None, ['data.extra_train=[{root: ., ann: a.json, images: ., keypoint_map: aic, ratio: 1}]',
                             "data.train_ratio=3"])
    assert cfg.data.extra_train[0]["keypoint_map"] == "aic" and cfg.data.train_ratio == 3.0


def test_ensure_synthetic_defaults_to_seed_0(tmp_path):
    from vitpose_scale.data.synthetic import generate_synthetic_coco

    coco_module.ensure_synthetic(tmp_path / "a", 3, 2)
    generate_synthetic_coco(tmp_path / "b", 3, 2, seed=0)
    for rel in ("annotations/person_keypoints_train.json", "annotations/person_keypoints_val.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def _dataset(coco_sample, tmp_path, dets=None, **cfg):
    det_file = None
    if dets is not None:
        det_file = tmp_path / "dets.json"
        det_file.write_text(json.dumps(dets))
    return TopDownCocoDataset(coco_sample, "test_coco.json", ".", DataConfig(**cfg), SIZE, train=False,
                              det_file=det_file)


def test_coco_detections_keep_persons_at_or_above_the_threshold_and_count_the_rest(coco_sample, tmp_path):
    dets = [{"image_id": 785, "category_id": 1, "bbox": [10, 20, 30, 80], "score": 0.9},
            {"image_id": 785, "category_id": 1, "bbox": [0, 0, 50, 50], "score": 0.5},   # == threshold: kept
            {"image_id": 40083, "category_id": 1, "bbox": [5, 5, 40, 40], "score": 0.49},  # below: dropped
            {"image_id": 40083, "bbox": [1, 2, 3, 4], "score": 0.7},                       # no category: a person
            {"image_id": 40083, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.99}]    # not a person
    ds = _dataset(coco_sample, tmp_path, dets, det_score_thr=0.5, bbox_padding=1.1)
    assert ds.load_report == "4 person detections, 3 kept, 1 with score < 0.5 dropped"
    assert [r["bbox_score"] for r in ds.records] == [0.9, 0.5, 0.7]
    first = ds.records[0]
    center, scale = box_to_center_scale([10, 20, 30, 80], 48 / 64, 1.1)
    np.testing.assert_array_equal(first["center"], center)
    np.testing.assert_array_equal(first["scale"], scale)
    assert first["size"] == (425, 640) and first["ann_id"] == -1 and first["file_name"] == "000000000785.jpg"
    assert first["joints"].shape == (17, 3) and first["joints"].dtype == np.float32 and not first["joints"].any()


def test_coco_detection_file_errors_say_what_is_wrong(coco_sample, tmp_path):
    with pytest.raises(ValueError, match=r"dets\.json: detection for image_id 123, which is not in .*test_coco\.json; "
                                         r"expected detections for that annotation file's images"):
        _dataset(coco_sample, tmp_path, [{"image_id": 123, "category_id": 1, "bbox": [0, 0, 9, 9], "score": 1.0}])
    with pytest.raises(ValueError, match=r"dets\.json: expected a COCO results list of \{image_id, category_id, "
                                         r"bbox, score\} dicts"):
        _dataset(coco_sample, tmp_path, {"image_id": 785})


def test_coco_image_of_another_size_names_both_sizes(coco_sample, tmp_path):
    ds = _dataset(coco_sample, tmp_path)
    rec = dict(ds.records[0], size=(100, 200))
    with pytest.raises(ValueError, match=r" is 640x425 pixels; the annotation file says 200x100, so its boxes"):
        ds.read_image(rec)


def test_coco_augmentation_draws_follow_seed_epoch_index_and_stream(coco_sample, tmp_path):
    ds = TopDownCocoDataset(coco_sample, "test_coco.json", ".", DataConfig(), SIZE, train=True, seed=5, stream=2)
    ds.set_epoch(3)
    assert ds.augmentation_rng(4).random() == sample_rng(5, 3, 4, 2).random()
    assert _dataset(coco_sample, tmp_path).augmentation_rng(4) is None  # evaluation: no augmentation
