"""Multi-task training data (ViTPose+/++): one dataset per head, every sample tagged with its
dataset index, heatmap targets padded to the widest head so that one batch mixes datasets."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset

from vitpose_scale.config import Config, ConfigError, task_configs
from vitpose_scale.data.loader import RatioConcatDataset, image_groups


class TaskDataset(Dataset):
    """A training set of dataset index `index`: its samples gain `dataset_index`, and `target` /
    `target_weight` are zero-padded to `channels` joints (weight 0: the padding never counts)."""

    def __init__(self, dataset, index: int, channels: int):
        self.dataset, self.index, self.channels = dataset, index, channels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        sample = dict(self.dataset[i])
        extra = self.channels - sample["target"].shape[0]
        sample["target"] = F.pad(sample["target"], (0, 0, 0, 0, 0, extra))
        sample["target_weight"] = F.pad(sample["target_weight"], (0, 0, 0, extra))
        sample["dataset_index"] = torch.tensor(self.index)
        return sample

    def image_groups(self) -> list[list[int]]:
        return image_groups(self.dataset)


def build_task_datasets(cfg: Config):
    """(training set over every task, [(name, dataset index, val set, val annotation file)]).

    With data.tasks[].ratio the sets are drawn by ratio (exact per-epoch quotas,
    :class:`RatioConcatDataset`), else concatenated. Each task is read exactly as a single-task
    config of its own would read it (its extra_train included)."""
    from vitpose_scale.data.coco import build_datasets

    tasks = task_configs(cfg)
    channels = max(c.model.num_keypoints for _, c in tasks)
    train_sets, vals = [], []
    for index, (name, task_cfg) in enumerate(tasks):
        train, val, val_ann = build_datasets(task_cfg)
        if isinstance(train, RatioConcatDataset):
            raise ConfigError(f"data.tasks[{index}] ({name}): sampling ratios inside a task (train_ratio, "
                              f"extra_train[].ratio) do not combine with data.tasks[].ratio: give one ratio per task")
        train_sets.append(TaskDataset(train, index, channels))
        vals.append((name, index, val, val_ann))
    ratios = [e.get("ratio") for e in cfg.data.tasks]
    train = RatioConcatDataset(train_sets, ratios) if ratios[0] is not None else ConcatDataset(train_sets)
    return train, vals


def multitask_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, dataset_index: torch.Tensor,
                   joints: torch.Tensor, loss_weights: torch.Tensor) -> torch.Tensor:
    """The official TopDownMoE loss: each head's weighted MSE averaged over its own joints and pixels
    and over the whole batch (its mean counts the other datasets' samples as zeros), times the
    dataset's loss weight; the heads' losses summed. fp32.

    `joints` / `loss_weights`: per dataset index, the head's joint count and loss weight."""
    err = ((pred.float() - target) * weight.unsqueeze(-1)).pow(2).sum(dim=(2, 3))  # (B, K_max)
    per_sample = err.sum(dim=1) / (joints[dataset_index] * pred.shape[-1] * pred.shape[-2])
    return (per_sample * loss_weights[dataset_index]).mean()


__all__ = ["TaskDataset", "build_task_datasets", "multitask_loss"]
