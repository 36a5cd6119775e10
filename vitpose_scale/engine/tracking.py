"""Experiment trackers behind `MetricsLog`: TensorBoard event files and Weights & Biases.

`train.loggers` lists them; metrics.jsonl is always written. Rank 0 writes. Every
number of a metrics record becomes a scalar named `<kind>/<key>` (train/loss,
train/lr, train/lr_group0, eval/AP, ...); a per-rank list becomes one scalar per
rank (train/peak_mem_mb/rank1). The evaluation's skeleton figure is logged as an
image (eval/predictions).

W&B runs offline unless WANDB_MODE says otherwise (`wandb sync` uploads later);
its run id is kept in the run directory (WANDB_ID_FILE), so a resumed run
continues the same W&B run.
"""
from __future__ import annotations

import importlib.util
import math
import os
import uuid
from pathlib import Path

import numpy as np

from vitpose_scale.config import Config, ConfigError

LOGGERS = ("jsonl", "tensorboard", "wandb")
# logger -> the Python package it needs
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id"
_NOT_SCALARS = ("step", "time", "kind")


def check_loggers(names) -> None:
    """Unknown logger names and missing packages are config errors (raised on every rank, before
    any work, so no rank is left waiting in a collective)."""
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"train.loggers: got {name!r}, expected some of {list(LOGGERS)}")
        package = PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"train.loggers: {name} needs the Python package '{package}', which is not installed: "
                              f"pip install -e .[track] (or remove {name} from train.loggers)")


def scalars(record: dict) -> dict[str, float]:
    """The finite numbers of a metrics record as `<kind>/<key>` scalars; lists become one per rank."""
    kind = record.get("kind", "train")
    out: dict[str, float] = {}

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))

    for key, value in record.items():
        if key in _NOT_SCALARS:
            continue
        if number(value):
            out[f"{kind}/{key}"] = float(value)
        elif isinstance(value, (list, tuple)) and value and all(number(v) for v in value):
            name = key.removesuffix("_per_rank")
            out.update({f"{kind}/{name}/rank{i}": float(v) for i, v in enumerate(value)})
    return out


class TensorBoardLogger:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, record: dict) -> None:
        step = int(record.get("step", 0))
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a killed run keeps what it logged

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, rgb, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    def __init__(self, run_dir: Path, config: dict):
        os.environ.setdefault("WANDB_MODE", "offline")  # no account or network needed; `wandb sync` later
        import wandb

        self.wandb = wandb
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]  # W&B's id alphabet
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "vitpose-scale"), name=run_dir.name,
                              id=run_id, resume="allow", dir=str(run_dir), config=config)
        id_file.write_text(run_id + "\n")

    def log(self, record: dict) -> None:
        values = scalars(record)
        if values:
            self.run.log(values, step=int(record.get("step", 0)))

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        self.run.log({tag: self.wandb.Image(rgb)}, step=step)

    def close(self) -> None:
        self.run.finish()


def build_loggers(cfg: Config, run_dir: Path, is_main: bool) -> list:
    """The trackers of `train.loggers` besides jsonl (checked on every rank; built on rank 0)."""
    names = list(cfg.train.loggers)
    check_loggers(names)
    if not is_main:
        return []
    loggers = []
    if "tensorboard" in names:
        loggers.append(TensorBoardLogger(Path(run_dir) / TENSORBOARD_DIR))
    if "wandb" in names:
        loggers.append(WandbLogger(Path(run_dir), cfg.to_dict()))
    return loggers

