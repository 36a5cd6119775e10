"""Several training sets in one config: keypoint maps onto COCO, sampling ratios, per-set streams."""
import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from vitpose_scale.config import Config, DataConfig, load_config
from vitpose_scale.data.coco import AIC_TO_COCO, TopDownCocoDataset, build_datasets
from vitpose_scale.data.loader import RatioConcatDataset, RatioSampler, build_train_loader

SIZE = (256, 192)

# Written out by hand from the datasets' own documentation (mmpose configs/_base_/datasets/aic.py and
# coco.py, which follow the AI Challenger 2017 and COCO keypoint definitions): names, not indices.
AIC_NAMES = ["right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
             "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck"]
COCO_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
              "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
              "right_knee", "left_ankle", "right_ankle"]
AIC_TO_COCO_BY_NAME = {
    "right_shoulder": "right_shoulder", "right_elbow": "right_elbow", "right_wrist": "right_wrist",
    "left_shoulder": "left_shoulder", "left_elbow": "left_elbow", "left_wrist": "left_wrist",
    "right_hip": "right_hip", "right_knee": "right_knee", "right_ankle": "right_ankle",
    "left_hip": "left_hip", "left_knee": "left_knee", "left_ankle": "left_ankle",
    "head_top": None, "neck": None,  # no COCO counterpart: dropped
}


def test_aic_table_matches_the_names():
    expected = [None if AIC_TO_COCO_BY_NAME[n] is None else COCO_NAMES.index(AIC_TO_COCO_BY_NAME[n])
                for n in AIC_NAMES]
    assert AIC_TO_COCO == expected
    assert sum(t is not None for t in AIC_TO_COCO) == 12


def _aic_annotation(coco_sample, tmp_path):
    """A hand-made AIC-layout file: one person on a real image, every joint at its own position."""
    data = json.loads((coco_sample / "test_coco.json").read_text())
    image = data["images"][0]
    shutil.copy(coco_sample / image["file_name"], tmp_path)
    aic = np.zeros((14, 3))
    for j in range(14):  # distinct, inside the box; v alternates 2 / 1
        aic[j] = [200 + 7 * j, 100 + 11 * j, 2 if j % 2 == 0 else 1]
    ann = {"id": 1, "image_id": image["id"], "category_id": 1, "iscrowd": 0, "area": 30000.0,
           "bbox": [180.0, 80.0, 150.0, 200.0], "num_keypoints": 14, "keypoints": aic.reshape(-1).tolist()}
    out = {"images": [image], "annotations": [ann],
           "categories": [{"id": 1, "name": "person", "keypoints": AIC_NAMES, "skeleton": []}]}
    (tmp_path / "aic.json").write_text(json.dumps(out))
    return aic


def test_aic_mapping_round_trip(coco_sample, tmp_path):
    aic = _aic_annotation(coco_sample, tmp_path)
    ds = TopDownCocoDataset(tmp_path, "aic.json", ".", DataConfig(), SIZE, keypoint_map="aic")
    joints = ds.records[0]["joints"]
    assert joints.shape == (17, 3)
    # Back from COCO slots to AIC names: every mapped joint comes back exactly.
    for a, name in enumerate(AIC_NAMES):
        target = AIC_TO_COCO_BY_NAME[name]
        if target is not None:
            assert np.array_equal(joints[COCO_NAMES.index(target)], aic[a].astype(np.float32)), name
    # Head top and neck are dropped; the five face joints have no source: v = 0, weight 0.
    unmapped = [COCO_NAMES.index(n) for n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear")]
    assert np.all(joints[unmapped] == 0)
    # Unaugmented crop (every mapped joint lies inside it): weight 1 on the 12 mapped joints, 0 elsewhere.
    val = TopDownCocoDataset(tmp_path, "aic.json", ".", DataConfig(), SIZE, train=False, keypoint_map="aic")
    weight = val[0]["target_weight"][:, 0].numpy()
    mapped = [COCO_NAMES.index(t) for t in AIC_TO_COCO_BY_NAME.values() if t is not None]
    assert weight[mapped].tolist() == [1.0] * 12 and weight[unmapped].tolist() == [0.0] * 5
    assert float(val[0]["target"][unmapped].abs().sum()) == 0.0
    assert float(ds[0]["target"][unmapped].abs().sum()) == 0.0  # augmented too


# ------------------------------------------------------------ ratios --
def test_ratio_frequencies_over_10000_draws():
    sizes, ratios = [6000, 3000, 1000], [0.2, 0.5, 0.3]  # AIC-like: a small set drawn more than its share
    offsets = np.cumsum([0] + sizes)
    draws = []
    for rank in range(2):
        draws += list(RatioSampler(sizes, ratios, rank=rank, world_size=2, seed=4, epoch=1))
    assert len(draws) == 10000
    which = np.searchsorted(offsets, np.asarray(draws), side="right") - 1
    freq = np.bincount(which, minlength=3) / len(draws)
    assert np.all(np.abs(freq - np.asarray(ratios)) <= 0.01), freq
    # Within a set, samples are spread: the 1000-sample set drawn 3000 times gives each sample 3 draws.
    small = np.asarray(draws)[which == 2]
    assert np.bincount(small - offsets[2], minlength=1000).tolist() == [3] * 1000
    # The 6000-sample set drawn 2000 times: no repeats.
    big = np.asarray(draws)[which == 0]
    assert len(set(big.tolist())) == len(big)


def test_ratio_order_depends_on_seed_and_epoch_only():
    a = list(RatioSampler([50, 30], [1, 1], seed=3, epoch=2))
    assert a == list(RatioSampler([50, 30], [1, 1], seed=3, epoch=2))
    assert a != list(RatioSampler([50, 30], [1, 1], seed=3, epoch=3))
    assert a != list(RatioSampler([50, 30], [1, 1], seed=4, epoch=2))


class _Toy(Dataset):
    def __init__(self, n, tag):
        self.n, self.tag, self.epoch = n, tag, None

    def set_epoch(self, e):
        self.epoch = e

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": torch.tensor([self.tag * 1000.0 + i])}


def test_loader_draws_by_ratio_and_resumes_mid_epoch():
    mixed = RatioConcatDataset([_Toy(40, 0), _Toy(10, 1)], [0.5, 0.5])
    full = build_train_loader(mixed, 3, rank=1, world_size=2, seed=7, epoch=2, num_workers=0)
    seq = [float(v) for b in full for v in b["x"][:, 0]]
    assert len(seq) == 24  # 50 draws per epoch, 25 per rank, full batches of 3
    assert sum(v >= 1000 for v in seq) == pytest.approx(12, abs=4)  # half from the 10-sample set
    # Resume after 4 batches: the rest of the same sequence, not a new one.
    resumed = build_train_loader(mixed, 3, rank=1, world_size=2, seed=7, epoch=2, num_workers=0, start_index=12)
    assert [float(v) for b in resumed for v in b["x"][:, 0]] == seq[12:]
    assert mixed.datasets[0].epoch == 2 and mixed.datasets[1].epoch == 2


def test_config_with_ratios_builds_a_ratio_set(coco_sample, tmp_path):
    _aic_annotation(coco_sample, tmp_path)
    cfg_file = tmp_path / "mixed.yaml"
    cfg_file.write_text(f"""
model: {{image_size: [256, 192]}}
data:
  root: {coco_sample}
  train_ann: test_coco.json
  train_images: .
  val_ann: test_coco.json
  val_images: .
  train_ratio: 3
  extra_train:
    - {{root: {tmp_path}, ann: aic.json, images: ., keypoint_map: aic, ratio: 1}}
""")
    cfg = load_config(cfg_file)
    train, val, _ = build_datasets(cfg)
    assert isinstance(train, RatioConcatDataset) and train.ratios == [3.0, 1.0] and len(train) == 13
    assert [d.stream for d in train.datasets] == [0, 1]
    loader = build_train_loader(train, 13, 0, 1, seed=0, epoch=0, num_workers=0)
    assert isinstance(loader.sampler, RatioSampler)
    batch = next(iter(loader))
    assert batch["img"].dtype == torch.uint8 and batch["img"].shape == (13, 3, 256, 192)
    # A ratio on some sets but not all is refused, naming the key.
    cfg.data.train_ratio = None
    with pytest.raises(ValueError, match=r"data.train_ratio is not set"):
        build_datasets(cfg)


def test_configs_without_ratios_still_concatenate(coco_sample, tmp_path):
    _aic_annotation(coco_sample, tmp_path)
    cfg = Config()
    cfg.model.image_size = list(SIZE)
    cfg.data = DataConfig(root=str(coco_sample), train_ann="test_coco.json", train_images=".",
                          val_ann="test_coco.json", val_images=".",
                          extra_train=[{"root": str(tmp_path), "ann": "aic.json", "images": ".",
                                        "keypoint_map": AIC_TO_COCO}])
    train, _, _ = build_datasets(cfg)
    assert type(train).__name__ == "ConcatDataset" and len(train) == 13
    assert not isinstance(build_train_loader(train, 4, 0, 1, 0, 0, 0).sampler, RatioSampler)


# ------------------------------------------------------------ streams --
def test_two_training_sets_draw_different_augmentations(coco_sample):
    # The same annotation file twice: before, sample i of the second set repeated sample i's
    # flip, rotation and scale of the first exactly.
    cfg = Config()
    cfg.model.image_size = list(SIZE)
    cfg.data = DataConfig(root=str(coco_sample), train_ann="test_coco.json", train_images=".",
                          val_ann="test_coco.json", val_images=".",
                          extra_train=[{"root": str(coco_sample), "ann": "test_coco.json", "images": "."}])
    train, _, _ = build_datasets(cfg)
    first, second = train.datasets
    for ds in (first, second):
        ds.set_epoch(3)
    scales_a = [first.augmentation_rng(i).standard_normal(8) for i in range(len(first))]
    scales_b = [second.augmentation_rng(i).standard_normal(8) for i in range(len(second))]
    assert all(not np.allclose(a, b) for a, b in zip(scales_a, scales_b))
    a, b = first[4], second[4]
    assert not np.allclose(a["scale"], b["scale"])  # the actual samples differ, not only the generators
