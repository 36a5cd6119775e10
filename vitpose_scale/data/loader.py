"""Distributed samplers and loaders.

* :class:`TrainSampler` - DistributedSampler-like: one permutation per epoch
  from ``seed + epoch`` shared by all ranks, tail dropped so every rank gets the
  same number of samples, rank r takes positions r, r + W, ...; ``start_index``
  skips the samples this rank already consumed (mid-epoch resume).
* :class:`RatioSampler` - the same contract for a :class:`RatioConcatDataset`:
  each epoch draws from the sets by their sampling ratios, a pure function of
  (seed, epoch, position), so a resumed epoch continues the same sequence.
* :class:`ShardSampler` - evaluation: rank r gets r, r + W, ... with no padding
  and no duplicates, so every sample is scored exactly once overall.
* :func:`collate` - stacks tensors, keeps metadata as numpy arrays.

Workers are not persistent: each ``iter(loader)`` pickles the dataset afresh,
so :meth:`EpochDataLoader.set_epoch` (which also sets the dataset's epoch for
the augmentation RNG) takes effect in the workers. That costs one worker start
per epoch (about a second), against minutes of epoch. Batches are pinned when
a GPU is present, and crops travel as uint8 (normalised on the device).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Sampler


def set_dataset_epoch(dataset, epoch: int) -> None:
    """Call ``set_epoch`` on a dataset and on every dataset nested in ConcatDataset/Subset."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    for child in getattr(dataset, "datasets", []) or []:
        set_dataset_epoch(child, epoch)
    inner = getattr(dataset, "dataset", None)
    if inner is not None:
        set_dataset_epoch(inner, epoch)


class TrainSampler(Sampler[int]):
    """Shuffled, rank-sharded, drop-last sampler with mid-epoch resumption."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, epoch: int = 0, start_index: int = 0,
                 groups: list[list[int]] | None = None):
        """``groups`` (``data.group_by_image``): index lists (the people of one image) that are
        shuffled as units and stay consecutive; ranks then take contiguous shares, so a group is
        split at most where one rank's share ends."""
        if groups is not None and sorted(i for g in groups for i in g) != list(range(int(num_samples))):
            raise ValueError(f"groups must partition range({num_samples})")
        self.groups = groups
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.n = int(num_samples)
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = int(seed), shuffle
        self.per_rank = self.n // world_size  # drop_last: equal shares, tail dropped
        if self.per_rank == 0:
            raise ValueError(f"dataset of {self.n} samples is smaller than world_size {world_size}")
        self.set_epoch(epoch, start_index)

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select the epoch's permutation; skip the first ``start_index`` samples of this rank."""
        if not 0 <= start_index <= self.per_rank:
            raise ValueError(f"start_index {start_index} is outside [0, {self.per_rank}]")
        self.epoch, self.start_index = int(epoch), int(start_index)

    def indices(self) -> list[int]:
        """This rank's full index list for the epoch (before ``start_index``)."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        if self.groups is not None:
            perm = torch.randperm(len(self.groups), generator=g).tolist() if self.shuffle else range(len(self.groups))
            order = [i for j in perm for i in self.groups[j]]
            return order[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]
        order = torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
        return order[: self.per_rank * self.world_size][self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start_index:])

    def __len__(self) -> int:
        return self.per_rank - self.start_index


class RatioConcatDataset(ConcatDataset):
    """Training sets drawn by sampling ratio (``ratios``: one positive weight per set).

    An epoch has as many draws as the sets have samples together (so the epoch
    length, the schedule and checkpoints count as for a plain concatenation);
    set ``i`` gets ``ratios[i] / sum(ratios)`` of them. Indices are global, as in
    :class:`torch.utils.data.ConcatDataset`.
    """

    def __init__(self, datasets, ratios):
        super().__init__(datasets)
        if len(ratios) != len(self.datasets):
            raise ValueError(f"{len(ratios)} sampling ratios for {len(self.datasets)} datasets; expected one each")
        if any(not r > 0 for r in ratios):
            raise ValueError(f"sampling ratios {list(ratios)}: expected positive numbers")
        self.ratios = [float(r) for r in ratios]

    @property
    def sizes(self) -> list[int]:
        return [len(d) for d in self.datasets]


def ratio_quotas(ratios, total: int) -> np.ndarray:
    """Draws per set in an epoch of ``total``: proportional, largest remainders rounded up."""
    share = np.asarray(ratios, dtype=np.float64) / float(np.sum(ratios)) * total
    quotas = np.floor(share).astype(np.int64)
    rest = np.argsort(-(share - quotas), kind="stable")[: total - int(quotas.sum())]
    quotas[rest] += 1
    return quotas


def ratio_epoch_order(sizes, ratios, seed: int, epoch: int) -> np.ndarray:
    """The epoch's global indices, a pure function of (sizes, ratios, seed, epoch).

    Which set each position draws from is a shuffle of exact per-set quotas (so the
    frequencies match the ratios over an epoch); within a set, samples come from a
    fresh permutation (repeated, re-shuffled, if the set's quota exceeds its size).
    """
    sizes = [int(n) for n in sizes]
    total = sum(sizes)
    quotas = ratio_quotas(ratios, total)
    rng = np.random.default_rng([int(seed), int(epoch), 0x5A3F])  # own stream: not an augmentation draw
    labels = np.repeat(np.arange(len(sizes)), quotas)
    rng.shuffle(labels)
    order = np.empty(total, dtype=np.int64)
    offset = 0
    for d, (size, quota) in enumerate(zip(sizes, quotas)):
        if quota:
            if size == 0:
                raise ValueError(f"dataset {d} is empty but has sampling ratio {ratios[d]}")
            perms = [rng.permutation(size) for _ in range(-(-int(quota) // size))]
            order[labels == d] = offset + np.concatenate(perms)[:quota]
        offset += size
    return order


class RatioSampler(TrainSampler):
    """:class:`TrainSampler` whose epoch order draws the sets of a :class:`RatioConcatDataset` by ratio."""

    def __init__(self, sizes, ratios, rank: int = 0, world_size: int = 1, seed: int = 0, epoch: int = 0,
                 start_index: int = 0):
        self.sizes, self.ratios = [int(n) for n in sizes], [float(r) for r in ratios]
        super().__init__(sum(self.sizes), rank, world_size, seed, shuffle=True, epoch=epoch,
                         start_index=start_index)

    def indices(self) -> list[int]:
        order = ratio_epoch_order(self.sizes, self.ratios, self.seed, self.epoch)
        return order[: self.per_rank * self.world_size][self.rank::self.world_size].tolist()


class ShardSampler(Sampler[int]):
    """Rank r gets indices r, r + W, ... : every sample exactly once overall, no padding."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.n, self.rank, self.world_size = int(num_samples), rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def collate(samples: list[dict]) -> dict:
    """Stack tensors with torch, everything else (metadata) into numpy arrays."""
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            out[key] = np.stack([np.asarray(v) for v in values])
    return out


def _worker_init(_worker_id: int) -> None:
    # Workers decode and warp with OpenCV; its own thread pool would oversubscribe the cores.
    import cv2

    cv2.setNumThreads(0)
    torch.set_num_threads(1)


class EpochDataLoader(DataLoader):
    """A DataLoader whose ``set_epoch`` moves both the sampler and the dataset's augmentation RNG."""

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """``start_index``: samples of this epoch this rank already consumed (resume)."""
        self.sampler.set_epoch(epoch, start_index)
        set_dataset_epoch(self.dataset, epoch)


def image_groups(dataset) -> list[list[int]]:
    """The indices of ``dataset`` (a TopDownCocoDataset or a ConcatDataset of them) grouped by image."""
    if isinstance(dataset, ConcatDataset):
        groups, offset = [], 0
        for part in dataset.datasets:
            groups += [[offset + i for i in g] for g in image_groups(part)]
            offset += len(part)
        return groups
    return dataset.image_groups()


def build_train_loader(dataset, batch_size_per_rank: int, rank: int, world_size: int, seed: int,
                       epoch: int, num_workers: int, start_index: int = 0,
                       group_by_image: bool = False) -> EpochDataLoader:
    """Training loader; call ``loader.set_epoch(e)`` before each epoch.

    Batches are full (drop_last) so all ranks run the same number of steps.
    ``start_index`` should be a multiple of ``batch_size_per_rank`` (steps done x batch).
    ``group_by_image``: shuffle images, not people (``data.group_by_image``).
    """
    if isinstance(dataset, RatioConcatDataset):
        if group_by_image:
            raise ValueError("group_by_image does not combine with sampling ratios")
        sampler = RatioSampler(dataset.sizes, dataset.ratios, rank, world_size, seed, epoch=epoch,
                               start_index=start_index)
    else:
        sampler = TrainSampler(len(dataset), rank, world_size, seed, shuffle=True, epoch=epoch,
                               start_index=start_index, groups=image_groups(dataset) if group_by_image else None)
    loader = EpochDataLoader(
        dataset, batch_size=batch_size_per_rank, sampler=sampler, num_workers=num_workers,
        collate_fn=collate, drop_last=True, pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_init if num_workers > 0 else None, persistent_workers=False,
        # Its own generator: creating an iterator must not draw from the global torch RNG,
        # or a resumed run (new iterator mid-epoch) would see other dropout/drop-path draws.
        generator=torch.Generator().manual_seed(seed + epoch),
    )
    loader.set_epoch(epoch, start_index)
    return loader


def build_eval_loader(dataset, batch_size: int, rank: int, world_size: int, num_workers: int) -> DataLoader:
    """Evaluation loader over this rank's shard (no padding, no duplicates, keeps the last partial batch)."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
        num_workers=num_workers, collate_fn=collate, drop_last=False,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )


__all__ = [
    "TrainSampler", "RatioSampler", "image_groups", "RatioConcatDataset", "ratio_epoch_order", "ratio_quotas", "ShardSampler",
    "collate", "EpochDataLoader", "build_train_loader", "build_eval_loader", "set_dataset_epoch",
]
