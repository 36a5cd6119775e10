"""Throughput, FLOPs, MFU, memory, and the JSONL metrics file."""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from vitpose_scale.jsonl import read_jsonl


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory, or on CPU the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2 ** 20 if sys.platform == "darwin" else rss / 1024


def training_tflops(forward_flops_per_image: float, images_per_s: float) -> float:
    """Training is about 3x the forward FLOPs (forward + backward for inputs and weights)."""
    return 3.0 * forward_flops_per_image * images_per_s / 1e12


class MetricsLog:
    """Appends one JSON object per line and hands each record to the trackers (TensorBoard,
    W&B: `engine.tracking`); only rank 0 writes."""

    def __init__(self, path: Path, enabled: bool, loggers: list | tuple = ()):
        self.path, self.enabled = Path(path), enabled
        self.loggers = list(loggers) if enabled else []
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.loggers:
            import atexit

            atexit.register(self.close)

    def write(self, **record) -> None:
        if self.enabled:
            record.setdefault("time", time.time())
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            for logger in self.loggers:
                logger.log(record)

    def image(self, tag: str, rgb, step: int) -> None:
        """An (H, W, 3) uint8 RGB image for the trackers."""
        for logger in self.loggers:
            logger.image(tag, rgb, step)

    def predictions_figure(self, results: list, image_dir, images: dict, step: int, png: Path,
                           keypoints="coco", tag: str = "eval/predictions", stats: dict | None = None,
                           boxes: dict | None = None) -> None:
        """An evaluation's skeleton figure (written to `png`) as the trackers' eval/predictions image;
        nothing without trackers or results. ``images``: image id -> file name of the evaluated set.
        The title names the run, the step and (given the evaluation's ``stats``) its AP; ``boxes``:
        image id -> the evaluated boxes (`visualize.record_boxes`), drawn around their skeletons."""
        if not (self.loggers and results):
            return
        import cv2

        from vitpose_scale.visualize import save_predictions_figure

        save_predictions_figure(image_dir, results, images, png, max_images=4, keypoints=keypoints,
                                title=self.figure_title(step, stats, tag), boxes=boxes)
        self.image(tag, cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB), step)

    def figure_title(self, step: int, stats: dict | None = None, tag: str = "") -> str:
        """'<run_title> | step N, AP 0.123' (the dataset's name too for a multi-task run's head)."""
        from vitpose_scale.visualize import run_title

        dataset = tag.split("/", 2)[2] if tag.count("/") >= 2 else ""
        parts = [f"step {step}"] + ([f"dataset {dataset}"] if dataset else [])
        key = next((k for k in ("AP", "PCKh") if isinstance((stats or {}).get(k), (int, float))), None)
        if key:
            parts.append(f"{key} {stats[key]:.3f}")
        return f"{run_title(self.path.parent)} | {', '.join(parts)}"

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []


class SavedActivationMeter:
    """Bytes of activations autograd keeps for the backward pass during one forward.

    A `saved_tensors_hooks` pack hook sees every tensor saved outside checkpointed
    regions; inside them, non-reentrant checkpointing installs its own hooks and
    keeps nothing, which is exactly the saving this measures. Storages are counted
    once, and storages that are still the module's own parameters after the forward
    are left out (they are model states). Weights that ZeRO-3 gathered and released
    but autograd still holds for the backward do count: that memory is extra.
    """

    def __init__(self, module: torch.nn.Module | None = None):
        self.module = module
        self.bytes = 0
        # The storages themselves (not their addresses) until the forward ends: a buffer freed
        # and reused during the forward (ZeRO-3's gathered weights) cannot be mistaken for another.
        self._storages: list[torch.UntypedStorage] = []

    def _pack(self, tensor: torch.Tensor):
        if tensor.device.type != "meta":
            local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
            self._storages.append(local.untyped_storage())
        return tensor

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        result = self._ctx.__exit__(*exc)
        held = {s.data_ptr(): s.nbytes() for s in self._storages if s.nbytes()}
        if self.module is not None:
            for p in self.module.parameters():
                local = p.to_local() if hasattr(p, "to_local") else p
                held.pop(local.untyped_storage().data_ptr(), None)
        self.bytes = sum(held.values())
        self._storages = []
        return result


def held_tensor_bytes(*roots, max_depth: int = 6) -> int:
    """Bytes of the distinct tensor storages reachable from `roots` (modules, optimizers and
    the objects they hold: DeepSpeed's flat fp32 partitions, gradient partitions, Adam moments)."""
    seen_objects: set[int] = set()
    storages: dict[int, int] = {}

    def visit(obj, depth: int) -> None:
        if depth > max_depth or id(obj) in seen_objects:
            return
        seen_objects.add(id(obj))
        if isinstance(obj, torch.Tensor):
            for t in (obj, getattr(obj, "ds_tensor", None), obj.grad if obj.is_leaf else None):
                if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                    continue
                if hasattr(t, "to_local"):  # FSDP2 DTensor: this rank's shard
                    t = t.to_local()
                s = t.untyped_storage()
                storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
            return
        if isinstance(obj, torch.nn.Module):
            for t in list(obj.parameters()) + list(obj.buffers()):
                visit(t, depth + 1)
            return
        if isinstance(obj, dict):
            for k, v in obj.items():
                visit(k, depth + 1)
                visit(v, depth + 1)
        elif isinstance(obj, (list, tuple, set)):
            for v in obj:
                visit(v, depth + 1)
        elif type(obj).__module__.startswith(("deepspeed", "torch.optim", "torch.distributed")):
            for v in vars(obj).values() if hasattr(obj, "__dict__") else ():
                visit(v, depth + 1)

    for root in roots:
        visit(root, 0)
    return sum(storages.values())


def drop_records_after(path: Path, step: int) -> None:
    """Remove records of steps after `step` (written after the checkpoint a run resumes from, and
    about to be written again), so metrics.jsonl holds each step once. Atomic rewrite."""
    path = Path(path)
    if not path.is_file():
        return
    # Records are appended in step order: cutting the file at the first later record needs no
    # disk space (a resume after a disk-full failure must be able to start).
    lines = path.read_bytes().splitlines(keepends=True)
    steps = []
    for line in lines:
        try:
            steps.append(json.loads(line).get("step", 0))
        except ValueError:
            steps.append(None)
    cut = next((i for i, s in enumerate(steps) if s is None or s > step), len(lines))
    if all(s is not None and s <= step for s in steps[:cut]) and all(s is None or s > step for s in steps[cut:]):
        if cut < len(lines):
            os.truncate(path, sum(len(line) for line in lines[:cut]))
        return
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
