"""Distributed evaluation of a model or ensemble: each rank predicts its shard, people are gathered,
OKS-NMS and rescoring run on the whole set, rank 0 scores with the pycocotools-equal evaluator
(or, without ground truth, e.g. COCO test-dev, only returns the results)."""
from __future__ import annotations

import math

import torch

from vitpose_scale.config import Config


def predict_people(forward, val_set, cfg: Config, rank: int, world_size: int,
                   progress: bool = True) -> list[dict]:
    """Every rank's raw people (before OKS-NMS), gathered on every rank in dataset order.

    ``forward(images) -> heatmaps``, or a :class:`~vitpose_scale.eval.ensemble.HeatmapEnsemble`
    (members are whole models on every rank: no collectives in their forwards).
    """
    from vitpose_scale.data.loader import build_eval_loader
    from vitpose_scale.eval.coco_eval import gather_results
    from vitpose_scale.eval.ensemble import HeatmapEnsemble
    from vitpose_scale.eval.postprocess import predict_dataset

    flip_pairs = val_set.keypoints.flip_pairs
    loader = build_eval_loader(val_set, cfg.eval.batch_size, rank, world_size, cfg.data.num_workers)
    if isinstance(forward, HeatmapEnsemble):
        people = predict_dataset(forward, loader, cfg.eval, flip_pairs, progress=progress, postprocess=False)
    else:
        calls = [0]

        def counted(images):
            calls[0] += 1
            return forward(images)

        people = predict_dataset(counted, loader, cfg.eval, flip_pairs, progress=progress, postprocess=False)
        # Sharded models (ZeRO-3, FSDP) make every forward a collective: ranks with a
        # shorter shard run dummy forwards so all ranks make the same number of calls.
        max_batches = math.ceil(math.ceil(len(val_set) / world_size) / cfg.eval.batch_size)
        per_batch = 2 if cfg.eval.flip_test else 1
        dummy = torch.zeros(1, 3, *cfg.model.image_size)
        for _ in range(max_batches * per_batch - calls[0]):
            forward(dummy)
    # Dataset order, whatever the world size: OKS-NMS breaks score ties by position.
    return sorted(gather_results(people), key=lambda p: p["index"])


def evaluate_model(forward, val_set, val_ann: str | None, cfg: Config, rank: int, world_size: int,
                   progress: bool = True) -> tuple[dict | None, list[dict]]:
    """Returns (stats by name on rank 0, else None; results after rescoring and OKS-NMS).

    The keypoint set of ``val_set`` decides the flip pairs, the OKS-NMS sigmas and the metric
    (:mod:`vitpose_scale.eval.scoring`). ``val_ann=None``: no ground truth to score against
    (test-dev); stats are None on every rank.
    """
    from vitpose_scale.eval.scoring import postprocess, score

    spec = val_set.keypoints
    people = predict_people(forward, val_set, cfg, rank, world_size, progress)
    results = postprocess(spec, people, cfg.eval)
    if rank != 0 or val_ann is None:
        return None, results
    return score(spec, val_ann, results, dataset=val_set), results
