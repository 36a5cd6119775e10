"""Heatmap ensembles: several models (any sizes, any input resolutions of one aspect ratio),
each with its flip test, averaged (optionally weighted) as heatmaps before decoding.

Alignment: with UDP the first and last heatmap pixels sit on the box edges at
every resolution (crop pixel 0 <-> the left edge, W-1 <-> the right edge), so
bringing a member's heatmaps to the common size is a bilinear resize with
corners aligned (``align_corners=True``), no shift.

Each member sees its own crop, warped from the image at its own input size
(:class:`MultiSizeDataset`), exactly as it would when evaluated alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .postprocess import predict_batch


def size_key(image_size) -> str:
    """The batch key of the crops at input size (H, W); the main size stays under "img"."""
    return f"img_{int(image_size[0])}x{int(image_size[1])}"


def resize_heatmaps(heatmaps: torch.Tensor, size_hw) -> torch.Tensor:
    """(N, K, h, w) -> (N, K, H, W), bilinear with corners aligned (the UDP grid); unchanged if equal."""
    size_hw = (int(size_hw[0]), int(size_hw[1]))
    if tuple(heatmaps.shape[-2:]) == size_hw:
        return heatmaps
    return F.interpolate(heatmaps, size=size_hw, mode="bilinear", align_corners=True)


@dataclass
class EnsembleMember:
    forward: Callable[[torch.Tensor], torch.Tensor]  # images (N, 3, H, W) -> heatmaps (N, K, H/4, W/4)
    image_size: tuple[int, int]  # its input (H, W)
    weight: float = 1.0
    name: str = ""


class HeatmapEnsemble:
    """Weighted mean of the members' (flip-tested) heatmaps at ``heatmap_size`` (H, W).

    ``predict(batch, flip_test, flip_pairs)`` takes a loader batch: the crops of
    the main input size under "img", the others under :func:`size_key`.
    """

    def __init__(self, members: list[EnsembleMember], heatmap_size, main_image_size):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        weights = np.array([float(m.weight) for m in members], dtype=np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"ensemble weights {weights.tolist()}: expected non-negative weights with a positive sum")
        self.members = list(members)
        self.weights = (weights / weights.sum()).tolist()  # one member: exactly 1.0, the model itself
        self.heatmap_size = (int(heatmap_size[0]), int(heatmap_size[1]))
        self.main_image_size = (int(main_image_size[0]), int(main_image_size[1]))

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """The distinct input sizes the members need, in member order."""
        return list(dict.fromkeys(tuple(int(v) for v in m.image_size) for m in self.members))

    def images_for(self, batch: dict, image_size) -> torch.Tensor:
        image_size = tuple(int(v) for v in image_size)
        key = "img" if image_size == self.main_image_size else size_key(image_size)
        if key not in batch:
            raise KeyError(f"the batch has no crops at input size {image_size} (key {key!r}); build the "
                           f"dataset with MultiSizeDataset for the sizes {self.image_sizes}")
        return batch[key]

    @torch.no_grad()
    def predict(self, batch: dict, flip_test: bool, flip_pairs) -> np.ndarray:
        total = None
        for member, weight in zip(self.members, self.weights):
            heatmaps = predict_batch(member.forward, self.images_for(batch, member.image_size), flip_test, flip_pairs)
            heatmaps = resize_heatmaps(torch.from_numpy(heatmaps), self.heatmap_size).numpy()
            part = heatmaps * np.float32(weight) if weight != 1.0 else heatmaps
            total = part if total is None else total + part
        return np.ascontiguousarray(total, dtype=np.float32)


class MultiSizeDataset(Dataset):
    """The same boxes cropped at several input sizes: the main dataset's items, plus
    the crops of each other dataset under :func:`size_key` of its size.

    All datasets must list the same boxes (same records, centres and scales), which
    holds when their input sizes share one aspect ratio (the box padding depends on it).
    """

    def __init__(self, main: Dataset, others: dict):
        self.main = main
        self.others = dict(others)
        for size, ds in self.others.items():
            if len(ds) != len(main):
                raise ValueError(f"ensemble input size {tuple(size)}: {len(ds)} boxes, the main size has "
                                 f"{len(main)}; expected the same detections/annotations")
            a = np.array([np.concatenate([r["center"], r["scale"]]) for r in main.records])
            b = np.array([np.concatenate([r["center"], r["scale"]]) for r in ds.records])
            if not np.allclose(a, b, rtol=0, atol=1e-3):
                raise ValueError(f"ensemble input size {tuple(size)} gives other boxes than {main.image_size}: "
                                 f"expected every member's input size to have the same aspect ratio (width/height)")

    def __getattr__(self, name):  # records, images, img_dir, ... of the main dataset
        if name in ("main", "others"):
            raise AttributeError(name)
        return getattr(self.main, name)

    def __len__(self) -> int:
        return len(self.main)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.main[index])
        for size, ds in self.others.items():
            item[size_key(size)] = ds[index]["img"]
        return item
