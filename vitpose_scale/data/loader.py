"""Distributed samplers and loaders.

* :class:`TrainSampler` - DistributedSampler-like: one permutation per epoch
  from ``seed + epoch`` shared by all ranks, tail dropped so every rank gets the
  same number of samples, rank r takes positions r, r + W, ...; ``start_index``
  skips the samples this rank already consumed (mid-epoch resume).
* :class:`ShardSampler` - evaluation: rank r gets r, r + W, ... with no padding
  and no duplicates, so every sample is scored exactly once overall.
* :func:`collate` - stacks tensors, keeps metadata as numpy arrays.

Workers are not persistent: each ``iter(loader)`` pickles the dataset afresh,
so :meth:`EpochDataLoader.set_epoch` (which also sets the dataset's epoch for
the augmentation RNG) takes effect in the workers.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


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
                 shuffle: bool = True, epoch: int = 0, start_index: int = 0):
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
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        return order[: self.per_rank * self.world_size][self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start_index:])

    def __len__(self) -> int:
        return self.per_rank - self.start_index


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


def build_train_loader(dataset, batch_size_per_rank: int, rank: int, world_size: int, seed: int,
                       epoch: int, num_workers: int, start_index: int = 0) -> EpochDataLoader:
    """Training loader; call ``loader.set_epoch(e)`` before each epoch.

    Batches are full (drop_last) so all ranks run the same number of steps.
    ``start_index`` should be a multiple of ``batch_size_per_rank`` (steps done x batch).
    """
    sampler = TrainSampler(len(dataset), rank, world_size, seed, shuffle=True, epoch=epoch,
                           start_index=start_index)
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


def steps_per_epoch(num_samples: int, batch_size_per_rank: int, world_size: int) -> int:
    """Optimizer-agnostic count of full batches each rank draws per epoch."""
    return (num_samples // world_size) // batch_size_per_rank


__all__ = [
    "TrainSampler", "ShardSampler", "collate", "EpochDataLoader", "build_train_loader",
    "build_eval_loader", "set_dataset_epoch", "steps_per_epoch",
]
