"""Throughput, FLOPs, MFU, memory, and the JSONL metrics file."""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch


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
    """Appends one JSON object per line; only rank 0 writes."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = Path(path), enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        if self.enabled:
            record.setdefault("time", time.time())
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
