"""Can this run continue from that checkpoint? The config a checkpoint was written with (in its
meta.json) against the config of the run about to load it.

Refused (exit 2, naming each key): what changes the tensors' shapes or the format of the saved
states (the model's architecture, the MAE decoder, the backend, ZeRO stage, precision, offload), the
datasets' order in a multi-task run (it assigns heads and experts)
and the global batch size, whose change would silently reinterpret the step counter, the epoch
and the data position. Free to change: the world size (checkpoints reshard), grad_accum,
the schedule's length, logging, evaluation and the attention implementation (same function).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from vitpose_scale.config import Config, ConfigError, from_dict

# Model keys that select an implementation, not the weights.
_MODEL_FREE = {"attention", "activation_checkpointing", "drop_path"}
_FIXED = [("parallel", "backend"), ("parallel", "zero_stage"), ("parallel", "precision"),
          ("parallel", "offload_optimizer"), ("parallel", "offload_params"),
          ("mae", "decoder_dim"), ("mae", "decoder_depth"), ("mae", "decoder_heads")]


def _flat_model(cfg: Config) -> dict:
    model = dataclasses.asdict(cfg.model.resolved())
    return {f"model.{k}": v for k, v in model.items() if k not in _MODEL_FREE}


def _values(cfg: Config) -> dict:
    values = _flat_model(cfg)
    for section, key in _FIXED:
        values[f"{section}.{key}"] = getattr(getattr(cfg, section), key)
    values["train.batch_size"] = cfg.train.batch_size
    # Frozen parameters have no optimizer state: another set would not match the saved states.
    values["train.freeze"] = sorted(set(cfg.train.freeze))
    # Which dataset owns which head and expert: reordering tasks of equal joint counts keeps the shapes
    # but would hand every head another dataset's samples.
    values["data.tasks"] = [f"{t.get('name') or t['keypoint_set']}:{t['keypoint_set']}" for t in cfg.data.tasks]
    return values


def changed_keys(saved: Config, now: Config) -> dict[str, tuple]:
    """{key: (value in the checkpoint, value now)} for every key that must not change."""
    before, after = _values(saved), _values(now)
    return {k: (before[k], after[k]) for k in before if before[k] != after[k]}


def check_resume_config(meta: dict, cfg: Config, directory: Path) -> None:
    raw = meta.get("config")
    if not isinstance(raw, dict):
        return  # written before configs were recorded: nothing to compare with
    try:
        saved = from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{directory}: the config recorded in its meta.json is not valid now ({exc})") from None
    changed = changed_keys(saved, cfg)
    if not changed:
        return
    listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
    note = ""
    if "train.batch_size" in changed:
        note = ("; a changed global batch would reinterpret the saved step counter, epoch and data position "
                "(steps are counted in batches of the old size) and change the schedule's length")
    raise ConfigError(f"cannot resume from {directory}: the config changed ({listed}){note}. Resume with the "
                      "checkpoint's values, or start a new run from its weights with "
                      f"train.init_from={directory} and another train.output_dir (or train.resume=never)")
