"""COCO dataset, samplers/loaders, synthetic generator, keypoint mapping, builders."""
import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, Dataset

from vitpose_scale.config import Config, DataConfig
from vitpose_scale.data.coco import AIC_TO_COCO, TopDownCocoDataset, build_datasets
from vitpose_scale.data.loader import (ShardSampler, TrainSampler, build_eval_loader, build_train_loader,
                                       collate)
from vitpose_scale.data.synthetic import generate_synthetic_coco, main as synthetic_main, render_image

SIZE = (256, 192)


def _ds(root, train=True, **kw):
    return TopDownCocoDataset(root, "test_coco.json", ".", DataConfig(), SIZE, train=train, **kw)


# ------------------------------------------------------------ COCO sample --
def test_coco_sample_counts(coco_sample):
    ann = json.loads((coco_sample / "test_coco.json").read_text())["annotations"]
    usable = [a for a in ann if not a["iscrowd"] and a["num_keypoints"] > 0]
    assert len(ann) == 14 and len(usable) == 12  # two people have no labelled joint
    assert len(_ds(coco_sample, train=True)) == 12
    assert len(_ds(coco_sample, train=False)) == 12  # ground-truth boxes
    dets = json.loads((coco_sample / "test_coco_det_AP_H_56.json").read_text())
    val = _ds(coco_sample, train=False, det_file="test_coco_det_AP_H_56.json")
    assert len(val) == len(dets) == 118
    # The reference keeps score >= det_bbox_thr: a threshold equal to a detection's score keeps it.
    scores = sorted(d["score"] for d in dets if d["category_id"] == 1)
    thr = scores[len(scores) // 2]
    val_thr = TopDownCocoDataset(coco_sample, "test_coco.json", ".", DataConfig(det_score_thr=thr), SIZE,
                                 train=False, det_file="test_coco_det_AP_H_56.json")
    assert len(val_thr) == sum(s >= thr for s in scores) == len(scores) - len(scores) // 2
    assert any(r["bbox_score"] == thr for r in val_thr.records)


def test_sample_layout(coco_sample):
    s = _ds(coco_sample)[0]
    assert s["img"].shape == (3, 256, 192) and s["img"].dtype == torch.float32
    assert s["target"].shape == (17, 64, 48) and s["target_weight"].shape == (17, 1)
    assert s["center"].shape == (2,) and s["scale"].shape == (2,)
    assert isinstance(s["image_id"], int) and isinstance(s["rotation"], float) and s["index"] == 0
    val = _ds(coco_sample, train=False, det_file="test_coco_det_AP_H_56.json")
    v = val[5]
    assert v["rotation"] == 0.0 and 0 < v["bbox_score"] <= 1
    assert v["scale"][0] / v["scale"][1] == pytest.approx(192 / 256, rel=1e-5)
    assert float(v["target_weight"].sum()) == 0.0  # detections carry no joints


def test_same_seed_epoch_index_gives_same_sample(coco_sample):
    a, b = _ds(coco_sample, seed=3), _ds(coco_sample, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    for i in (0, 7, 11):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["img"], sb["img"]) and torch.equal(sa["target"], sb["target"])
        assert np.array_equal(sa["center"], sb["center"]) and sa["rotation"] == sb["rotation"]
    b.set_epoch(6)
    assert any(not torch.equal(a[i]["img"], b[i]["img"]) for i in range(12))


def test_missing_image_names_file_and_annotation(coco_sample, tmp_path):
    shutil.copy(coco_sample / "test_coco.json", tmp_path / "ann.json")
    ds = TopDownCocoDataset(tmp_path, "ann.json", "images", DataConfig(), SIZE, train=False)
    with pytest.raises(FileNotFoundError) as err:
        ds[0]
    msg = str(err.value)
    assert "000000000785.jpg" in msg and "ann.json" in msg


def test_not_a_keypoint_file(coco_sample, tmp_path):
    data = json.loads((coco_sample / "test_coco.json").read_text())
    data["categories"] = [{"id": 1, "name": "person", "supercategory": "person"}]
    for a in data["annotations"]:
        del a["keypoints"], a["num_keypoints"]
    (tmp_path / "instances.json").write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        TopDownCocoDataset(tmp_path, "instances.json", ".", DataConfig(), SIZE)
    assert "instances.json" in str(err.value) and "keypoint" in str(err.value)


# ------------------------------------------------------------ samplers --
@pytest.mark.parametrize("world", [2, 3])
def test_eval_sampler_covers_every_index_once(world):
    seen = [i for r in range(world) for i in ShardSampler(7, r, world)]
    assert sorted(seen) == list(range(7))
    assert sum(len(ShardSampler(7, r, world)) for r in range(world)) == 7


def test_train_sampler_shards_and_shuffles():
    def reference(epoch):  # the documented order: one randperm from seed + epoch, tail dropped, strided
        g = torch.Generator()
        g.manual_seed(1 + epoch)
        order = torch.randperm(10, generator=g).tolist()[:9]
        return [order[r::3] for r in range(3)]

    shards = [list(TrainSampler(10, r, 3, seed=1, epoch=2)) for r in range(3)]
    assert all(len(s) == 3 for s in shards)  # 10 // 3, tail dropped
    assert len(set(sum(shards, []))) == 9
    assert shards == reference(2)
    assert [list(TrainSampler(10, r, 3, seed=1, epoch=3)) for r in range(3)] == reference(3)
    assert reference(3) != reference(2)  # a new epoch is a new order


class _Toy(Dataset):
    def __init__(self, n):
        self.n, self.epoch = n, None

    def set_epoch(self, e):
        self.epoch = e

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": torch.tensor([float(i)]), "index": i, "meta": np.array([i, 2 * i])}


def test_train_loader_resume_skips_consumed_samples():
    ds = _Toy(23)
    full = build_train_loader(ds, 2, rank=1, world_size=2, seed=0, epoch=4, num_workers=0)
    order = [int(i) for b in full for i in b["index"]]
    assert len(order) == 10  # 11 per rank, last partial batch dropped
    resumed = build_train_loader(ds, 2, rank=1, world_size=2, seed=0, epoch=4, num_workers=0, start_index=6)
    assert [int(i) for b in resumed for i in b["index"]] == order[6:]
    assert ds.epoch == 4
    resumed.set_epoch(5)  # the next epoch starts from its beginning again
    assert len(resumed.sampler) == 11 and ds.epoch == 5


def test_collate_stacks_tensors_keeps_metadata():
    b = collate([_Toy(3)[i] for i in range(3)])
    assert isinstance(b["x"], torch.Tensor) and b["x"].shape == (3, 1)
    assert isinstance(b["index"], np.ndarray) and b["index"].tolist() == [0, 1, 2]
    assert b["meta"].shape == (3, 2)


def test_eval_loader_keeps_partial_batch(coco_sample):
    ds = _ds(coco_sample, train=False)
    got = [int(i) for r in range(3) for b in build_eval_loader(ds, 5, r, 3, 0) for i in b["index"]]
    assert sorted(got) == list(range(12))


# ------------------------------------------------------------ synthetic --
def test_synthetic_generator_writes_valid_coco(tmp_path):
    from pycocotools.coco import COCO

    root = tmp_path / "syn"
    generate_synthetic_coco(root, num_train=12, num_val=4, seed=3, progress=False)
    for split, n in (("train", 12), ("val", 4)):
        path = root / "annotations" / f"person_keypoints_{split}.json"
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
        assert len(coco.getImgIds()) == n
        assert coco.loadCats(1)[0]["keypoints"][0] == "nose"
        for img in coco.loadImgs(coco.getImgIds()):
            assert (root / split / img["file_name"]).is_file()
            assert 256 <= img["width"] <= 320 and 256 <= img["height"] <= 320
        for a in coco.loadAnns(coco.getAnnIds()):
            k = np.array(a["keypoints"]).reshape(17, 3)
            assert a["num_keypoints"] == int((k[:, 2] > 0).sum()) and a["iscrowd"] == 0
            assert np.all(k[k[:, 2] == 0] == 0)
            x, y, w, h = a["bbox"]
            vis = k[k[:, 2] > 0]
            assert np.all((vis[:, 0] >= x - 0.5) & (vis[:, 0] <= x + w + 0.5))
            assert np.all((vis[:, 1] >= y - 0.5) & (vis[:, 1] <= y + h + 0.5))
            assert 0 < a["area"] <= w * h
    # Deterministic: the same seed writes the same annotations.
    again = tmp_path / "again"
    synthetic_main(["--out", str(again), "--train", "12", "--val", "4", "--seed", "3"])
    assert (again / "annotations" / "person_keypoints_train.json").read_bytes() == \
        (root / "annotations" / "person_keypoints_train.json").read_bytes()


def test_synthetic_statistics():
    counts, vis, heights = [], [], []
    for i in range(60):
        img, people = render_image(np.random.default_rng([0, 0, i]))
        counts.append(len(people))
        for kps, bbox, _ in people:
            vis += kps[:, 2].tolist()
            heights.append(bbox[3] / img.shape[0])
    counts, vis = np.array(counts), np.array(vis)
    assert (counts == 0).any() and counts.max() >= 3
    assert (vis == 1).mean() > 0.02 and (vis == 2).mean() > 0.6  # occlusions happen, most joints visible
    assert np.median(heights) > 0.4


# ------------------------------------------------------------ keypoint maps --
def _aic_file(coco_sample, tmp_path):
    """One COCO-sample person rewritten in AI Challenger's 14-joint order."""
    data = json.loads((coco_sample / "test_coco.json").read_text())
    ann = dict(data["annotations"][0])
    coco_k = np.array(ann["keypoints"]).reshape(17, 3)
    aic_k = np.zeros((14, 3))
    for s, t in enumerate(AIC_TO_COCO):
        if t is not None:
            aic_k[s] = coco_k[t]
    aic_k[12] = [350, 50, 2]  # head_top, neck: no COCO counterpart
    aic_k[13] = [352, 90, 2]
    ann["keypoints"] = aic_k.reshape(-1).tolist()
    names = ["right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
             "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck"]
    out = {"images": [data["images"][0]], "annotations": [ann],
           "categories": [{"id": 1, "name": "person", "keypoints": names, "skeleton": []}]}
    (tmp_path / "aic.json").write_text(json.dumps(out))
    shutil.copy(coco_sample / data["images"][0]["file_name"], tmp_path)
    return coco_k


def test_aic_mapping(coco_sample, tmp_path):
    coco_k = _aic_file(coco_sample, tmp_path)
    ds = TopDownCocoDataset(tmp_path, "aic.json", ".", DataConfig(), SIZE, keypoint_map="aic")
    assert len(ds) == 1
    joints = ds.records[0]["joints"]
    assert np.allclose(joints[5:], coco_k[5:])  # limbs land on their COCO slots
    assert np.all(joints[:5] == 0)  # no face joints in AIC
    assert float(ds[0]["target_weight"][:5].sum()) == 0
    # Same crop as the COCO person: only the face joints differ.
    coco_ds = _ds(coco_sample)
    assert np.allclose(coco_ds.records[0]["center"], ds.records[0]["center"])
    with pytest.raises(ValueError, match="14 keypoints"):
        TopDownCocoDataset(tmp_path, "aic.json", ".", DataConfig(), SIZE)  # forgot the map
    both = ConcatDataset([coco_ds, ds])
    assert len(both) == 13 and both[12]["target"].shape == (17, 64, 48)


def test_build_datasets_with_extra_train(coco_sample, tmp_path):
    _aic_file(coco_sample, tmp_path)
    cfg = Config()
    cfg.model.image_size = [256, 192]
    cfg.data = DataConfig(root=str(coco_sample), train_ann="test_coco.json", train_images=".",
                          val_ann="test_coco.json", val_images=".", det_file="test_coco_det_AP_H_56.json",
                          extra_train=[{"root": str(tmp_path), "ann": "aic.json", "images": ".",
                                        "keypoint_map": AIC_TO_COCO}])
    train, val, val_ann = build_datasets(cfg)
    assert len(train) == 13 and len(val) == 118 and val_ann.endswith("test_coco.json")
    loader = build_train_loader(train, 4, 0, 1, seed=0, epoch=1, num_workers=0)
    batch = next(iter(loader))
    assert batch["img"].shape == (4, 3, 256, 192) and batch["center"].shape == (4, 2)


def test_build_datasets_synthetic(tmp_path):
    cfg = Config()
    cfg.model.image_size = [128, 96]
    cfg.data = DataConfig(kind="synthetic", root=str(tmp_path / "syn"), synthetic_train=6, synthetic_val=2)
    train, val, val_ann = build_datasets(cfg)
    assert len(train) > 0 and len(val) > 0
    assert train[0]["img"].shape == (3, 128, 96) and train[0]["target"].shape == (17, 32, 24)
    mtime = (tmp_path / "syn" / "annotations" / "person_keypoints_train.json").stat().st_mtime_ns
    build_datasets(cfg)  # already there: not regenerated
    assert (tmp_path / "syn" / "annotations" / "person_keypoints_train.json").stat().st_mtime_ns == mtime


# ------------------------------------------------------------ hardening --
def test_truncated_jpeg_is_refused(coco_sample, tmp_path):
    from vitpose_scale.data.images import CorruptImageError

    data = json.loads((coco_sample / "test_coco.json").read_text())
    (tmp_path / "ann.json").write_text(json.dumps(data))
    for img in data["images"]:
        shutil.copy(coco_sample / img["file_name"], tmp_path)
    def dataset():  # a fresh one each time: a dataset keeps the last decoded image for its neighbours
        return TopDownCocoDataset(tmp_path, "ann.json", ".", DataConfig(), SIZE, train=False)

    first = dataset().records[0]["file_name"]
    dataset()[0]  # complete: decodes
    whole = (tmp_path / first).read_bytes()
    (tmp_path / first).write_bytes(whole[: len(whole) * 2 // 3])  # a copy cut short
    with pytest.raises(CorruptImageError) as err:
        dataset()[0]
    msg = str(err.value)
    assert first in msg and "ann.json" in msg and "truncated" in msg
    # Padding after the end-of-image marker is fine (some writers add it).
    (tmp_path / first).write_bytes(whole + b"\x00" * 16)
    assert dataset()[0]["img"].shape == (3, 256, 192)


def test_image_size_must_match_annotation(coco_sample, tmp_path):
    data = json.loads((coco_sample / "test_coco.json").read_text())
    data["images"][0]["width"] += 10
    (tmp_path / "ann.json").write_text(json.dumps(data))
    shutil.copy(coco_sample / data["images"][0]["file_name"], tmp_path)
    ds = TopDownCocoDataset(tmp_path, "ann.json", ".", DataConfig(), SIZE, train=False)
    index = next(i for i, r in enumerate(ds.records) if r["image_id"] == data["images"][0]["id"])
    with pytest.raises(ValueError, match="annotation file says"):
        ds[index]


@pytest.mark.parametrize("missing", ["images", "annotations"])
def test_annotation_file_without_images_or_annotations(coco_sample, tmp_path, missing):
    data = json.loads((coco_sample / "test_coco.json").read_text())
    del data[missing]
    (tmp_path / "broken.json").write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        TopDownCocoDataset(tmp_path, "broken.json", ".", DataConfig(), SIZE)
    assert "broken.json" in str(err.value) and f"'{missing}'" in str(err.value)


def test_file_with_no_usable_person_fails_at_load(coco_sample, tmp_path):
    data = json.loads((coco_sample / "test_coco.json").read_text())
    for a in data["annotations"]:
        a["keypoints"] = [0] * 51
        a["num_keypoints"] = 0
    (tmp_path / "empty.json").write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        TopDownCocoDataset(tmp_path, "empty.json", ".", DataConfig(), SIZE)
    assert "empty.json" in str(err.value) and "no labelled joints 14" in str(err.value)


def test_dropped_people_are_counted_and_reported(coco_sample, tmp_path, capsys):
    from vitpose_scale.data.coco import DROP_REASONS

    data = json.loads((coco_sample / "test_coco.json").read_text())
    anns = [a for a in data["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]
    assert len(anns) == 12
    img_size = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
    anns[0]["bbox"] = [10.0, 10.0, float("nan"), 50.0]                 # NaN size
    anns[1]["bbox"] = [10.0, 10.0, 0.0, 50.0]                          # zero width
    w, h = img_size[anns[2]["image_id"]]
    anns[2]["bbox"] = [w + 5.0, 10.0, 40.0, 50.0]                      # right of the image
    anns[3]["keypoints"] = [0] * 51                                    # no labelled joint
    anns[3]["num_keypoints"] = 0
    bad_image = next(i["id"] for i in data["images"] if i["id"] not in {a["image_id"] for a in anns[:4]})
    for img in data["images"]:
        if img["id"] == bad_image:
            img["width"] = 0                                           # broken image record
    people = [a for a in data["annotations"] if not a["iscrowd"]]
    people_on_bad = sum(1 for a in people if a["image_id"] == bad_image)
    jointless_elsewhere = sum(1 for a in people if a["num_keypoints"] == 0 and a["image_id"] != bad_image)
    usable_on_bad = sum(1 for a in anns if a["image_id"] == bad_image)
    (tmp_path / "dirty.json").write_text(json.dumps(data))
    ds = TopDownCocoDataset(tmp_path, "dirty.json", ".", DataConfig(), SIZE)
    counts = dict(ds.drop_counts)
    assert people_on_bad > 0
    assert counts == {DROP_REASONS[0]: 2, DROP_REASONS[1]: 1, DROP_REASONS[2]: jointless_elsewhere,  # anns[3] + the sample's own
                      DROP_REASONS[3]: people_on_bad}
    assert len(ds) == 12 - 4 - usable_on_bad
    # One line per dataset from build_datasets.
    cfg = Config()
    cfg.model.image_size = list(SIZE)
    cfg.data = DataConfig(root=str(tmp_path), train_ann="dirty.json", train_images=".",
                          val_ann=str(coco_sample / "test_coco.json"), val_images=str(coco_sample))
    build_datasets(cfg)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("dataset ")]
    assert len(lines) == 2 and "dirty.json" in lines[0]
    assert f"{len(people)} people, {len(ds)} kept" in lines[0]
    assert f"box NaN or <= 1 px 2, box outside the image 1, no labelled joints {jointless_elsewhere}, " \
        f"bad image size {people_on_bad}" in lines[0]


def test_training_crops_ship_as_uint8_and_normalise_to_the_same_input(coco_sample):
    from vitpose_scale.data.transforms import normalize_batch

    host = _ds(coco_sample, seed=2)
    device = _ds(coco_sample, seed=2, uint8_images=True)
    for i in (0, 5, 11):
        a, b = host[i], device[i]
        assert b["img"].dtype == torch.uint8 and a["img"].dtype == torch.float32
        assert torch.equal(normalize_batch(b["img"]), a["img"])
        assert torch.equal(a["target"], b["target"]) and torch.equal(a["target_weight"], b["target_weight"])


def test_reader_decodes_like_opencv_imread(coco_sample):
    import cv2

    from vitpose_scale.data.images import read_rgb

    for path in sorted(coco_sample.glob("*.jpg")):
        reference = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert np.array_equal(read_rgb(path), reference)


def test_training_box_centres_shift_at_load_like_the_reference(coco_sample):
    # ViTPose's _xywh2cs (training only): with probability 0.3 the centre moves by
    # 0.4 * (U(0,1) - 0.5) * (w, h) of the cleaned box, once, when the set is built.
    val = _ds(coco_sample, train=False)
    data = json.loads((coco_sample / "test_coco.json").read_text())
    boxes = {a["id"]: a["bbox"] for a in data["annotations"]}
    shifted, total = 0, 0
    for seed in range(40):
        train = _ds(coco_sample, seed=seed)
        for t, v in zip(train.records, val.records):
            assert t["ann_id"] == v["ann_id"] and np.array_equal(t["scale"], v["scale"])
            delta = np.abs(t["center"] - v["center"])
            w, h = boxes[t["ann_id"]][2], boxes[t["ann_id"]][3]
            assert delta[0] <= 0.2 * w + 1e-3 and delta[1] <= 0.2 * h + 1e-3
            shifted += bool(delta.any())
            total += 1
    assert shifted / total == pytest.approx(0.3, abs=0.05)
    same = _ds(coco_sample, seed=3)
    assert all(np.array_equal(a["center"], b["center"]) for a, b in zip(same.records, _ds(coco_sample, seed=3).records))
    off = TopDownCocoDataset(coco_sample, "test_coco.json", ".", DataConfig(bbox_shift_prob=0.0), SIZE)
    assert all(np.array_equal(a["center"], b["center"]) for a, b in zip(off.records, val.records))
