"""Training checkpoints: atomic directories, last-K retention, RNG and data position, consolidation.

Layout: <output_dir>/checkpoints/step_00000100/ holding the backend's files,
`rng_rank<r>.pt` per rank and `meta.json`; the directory is written under a
temporary name and renamed once every rank has finished, and `meta.json`
(written last, by rank 0) marks it complete. A directory without it is never
picked as the latest.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def is_complete(directory: Path) -> bool:
    return (directory / "meta.json").is_file() and STEP_DIR.match(directory.name) is not None


def latest_checkpoint(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    done = [d for d in root.iterdir() if d.is_dir() and is_complete(d)]
    return max(done, key=lambda d: int(STEP_DIR.match(d.name)[1])) if done else None


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_training_checkpoint(wrapper, root: Path, step: int, meta: dict, rank: int, keep_last: int) -> Path:
    """Write step_N atomically (temporary name, then rename) and prune to the last `keep_last`."""
    final = step_dir(root, step)
    tmp = root / f".tmp-step_{step:08d}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    wrapper.save(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    _barrier()
    if rank == 0:
        (tmp / "meta.json.tmp").write_text(json.dumps(meta, indent=1))
        os.replace(tmp / "meta.json.tmp", tmp / "meta.json")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = sorted((d for d in root.iterdir() if d.is_dir() and is_complete(d)), key=lambda d: d.name)
        for old in done[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_training_checkpoint(wrapper, directory: Path, rank: int) -> dict:
    meta = json.loads((directory / "meta.json").read_text())
    wrapper.load(directory)
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.is_file():  # absent for ranks that did not exist when it was written
        set_rng_state(torch.load(rng_file, weights_only=False))
    return meta


def consolidate(directory: Path) -> dict[str, torch.Tensor]:
    """One fp32 state_dict (official key names) from a DeepSpeed or FSDP/torch checkpoint directory."""
    directory = Path(directory)
    if not is_complete(directory):
        raise FileNotFoundError(f"{directory} is not a complete training checkpoint (no meta.json)")
    torch_file = directory / "model_and_optimizer.pt"
    if torch_file.is_file():
        state = torch.load(torch_file, map_location="cpu", weights_only=True)["model"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(directory.parent), tag=directory.name)
        # zero_to_fp32 keeps parameters only; buffers (BatchNorm statistics) come from the model-states file.
        for f in sorted(directory.glob("*model_states.pt")):
            module = torch.load(f, map_location="cpu", weights_only=False).get("module") or {}
            for k, v in module.items():
                if k not in state and ("running_" in k or k.endswith("num_batches_tracked")):
                    state.setdefault(k, v)
            break
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
