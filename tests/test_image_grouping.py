"""data.group_by_image: images shuffled as units, one decode per image, the same crops per person."""
import dataclasses

import numpy as np
import pytest
import torch

from vitpose_scale.config import Config, ConfigError, DataConfig, validate
from vitpose_scale.data.coco import TopDownCocoDataset
from vitpose_scale.data.loader import TrainSampler, build_train_loader, image_groups


def _dataset(coco_sample, train=True, **cfg):
    return TopDownCocoDataset(coco_sample, "test_coco.json", ".", DataConfig(**cfg), (256, 192), train=train,
                              seed=0, uint8_images=True)


def _runs(order, group_of):
    """How many maximal runs of the same group an index order has."""
    return sum(1 for j, i in enumerate(order) if j == 0 or group_of[i] != group_of[order[j - 1]])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_grouped_sampler_visits_each_index_once_and_keeps_groups_together(world_size):
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 6, size=40)
    groups, start = [], 0
    for s in sizes:
        groups.append(list(range(start, start + s)))
        start += s
    n = start
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    for epoch in range(3):
        shares = []
        for rank in range(world_size):
            sampler = TrainSampler(n, rank, world_size, seed=5, epoch=epoch, groups=groups)
            order = list(sampler)
            assert len(order) == n // world_size
            # consecutive members: as many runs as distinct groups (a share may start or end mid-group)
            assert _runs(order, group_of) == len({group_of[i] for i in order})
            shares.append(order)
        seen = [i for share in shares for i in share]
        assert len(seen) == len(set(seen)) == world_size * (n // world_size)
    a = list(TrainSampler(n, 0, 1, seed=5, epoch=0, groups=groups))
    b = list(TrainSampler(n, 0, 1, seed=5, epoch=1, groups=groups))
    assert a != b and sorted(a) == sorted(b) == list(range(n))
    assert a == list(TrainSampler(n, 0, 1, seed=5, epoch=0, groups=groups)), "a pure function of (seed, epoch)"
    resumed = TrainSampler(n, 0, 1, seed=5, epoch=0, groups=groups, start_index=7)
    assert list(resumed) == a[7:]
    with pytest.raises(ValueError, match="partition"):
        TrainSampler(n, 0, 1, groups=groups[1:])


def test_grouped_items_equal_per_person_items_with_one_decode_per_image(coco_sample, monkeypatch):
    per_person = _dataset(coco_sample)
    grouped = _dataset(coco_sample, group_by_image=True)
    decodes = []
    real = TopDownCocoDataset.read_image
    monkeypatch.setattr(TopDownCocoDataset, "read_image",
                        lambda self, rec, window=None: decodes.append((self, rec["file_name"])) or real(self, rec, window))
    groups = grouped.image_groups()
    assert len(groups) == 4 and sorted(len(g) for g in groups) == [1, 2, 4, 5]
    for epoch in range(4):
        per_person.set_epoch(epoch)
        grouped.set_epoch(epoch)
        decodes.clear()
        order = list(TrainSampler(len(grouped), seed=0, epoch=epoch, groups=groups))
        for i in order:
            a, b = per_person[i], grouped[i]
            assert torch.equal(a["img"], b["img"]) and torch.equal(a["target"], b["target"]), (epoch, i)
        assert sum(1 for d, _ in decodes if d is grouped) == 4  # one per image
        assert sum(1 for d, _ in decodes if d is per_person) == len(order)


def test_evaluation_decodes_each_image_once(coco_sample, monkeypatch):
    val = _dataset(coco_sample, train=False)
    whole = _dataset(coco_sample, train=False, window_decode=False)
    count = []
    real = TopDownCocoDataset.read_image
    monkeypatch.setattr(TopDownCocoDataset, "read_image",
                        lambda self, rec, window=None: count.append(self) or real(self, rec, window))
    for i in range(len(val)):
        assert torch.equal(val[i]["img"], whole[i]["img"])
    assert count.count(val) == 4 and count.count(whole) == 4


def test_train_loader_groups_a_concatenation_of_sets(coco_sample):
    from torch.utils.data import ConcatDataset

    sets = ConcatDataset([_dataset(coco_sample, group_by_image=True), _dataset(coco_sample, group_by_image=True)])
    groups = image_groups(sets)
    assert len(groups) == 8 and sorted(i for g in groups for i in g) == list(range(24))
    loader = build_train_loader(sets, 4, 0, 1, seed=0, epoch=0, num_workers=0, group_by_image=True)
    assert loader.sampler.groups == groups
    order = [int(i) for batch in loader for i in batch["index"]]
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    assert len(order) == 24 and _runs(list(loader.sampler), group_of) == 8


def test_group_by_image_is_refused_with_sampling_ratios():
    cfg = Config()
    cfg.data = dataclasses.replace(cfg.data, group_by_image=True, train_ratio=1.0,
                                   extra_train=[{"root": ".", "ann": "a.json", "images": ".", "ratio": 1.0}])
    with pytest.raises(ConfigError, match=r"^data.group_by_image: not available with sampling ratios"):
        validate(cfg)
    cfg.data.train_ratio, cfg.data.extra_train = None, []
    assert validate(cfg).data.group_by_image
