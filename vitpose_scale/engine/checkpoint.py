"""Training checkpoints: atomic directories, verified contents, safe loading, last-K retention.

Layout: <output_dir>/checkpoints/step_00000100/ holding the backend's files,
`rng_rank<r>.pt` per rank and `meta.json`; the directory is written under a
temporary name and renamed once every rank has finished. `meta.json` (written
last, by rank 0) marks it complete and records the size and SHA-256 of every
other file, so a resume never loads a truncated, altered or incomplete
checkpoint: it reports the damage and takes the previous one.

No file is unpickled beyond plain tensors and containers: RNG states are saved
as tensors, and DeepSpeed's own files (which DeepSpeed unpickles freely) are
checked first to hold no global outside a short allow-list of DeepSpeed classes.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

STEP_DIR = re.compile(r"^step_(\d{8})$")
META = "meta.json"
# The only non-tensor classes DeepSpeed's checkpoint files hold (loss scaler, ZeRO stage enum,
# bf16 optimizer fragment addresses); anything else in a pickle is refused before loading.
ALLOWED_PICKLE_GLOBALS = frozenset({
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
})


from vitpose_scale.models.interop import CheckpointError  # noqa: E402  (one error type for every checkpoint)


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file would run code when unpickled."""


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:08d}"


def is_complete(directory: Path) -> bool:
    return (directory / META).is_file() and STEP_DIR.match(directory.name) is not None


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete step_N directories, newest first."""
    if not root.is_dir():
        return []
    done = [d for d in root.iterdir() if d.is_dir() and is_complete(d)]
    return sorted(done, key=lambda d: int(STEP_DIR.match(d.name)[1]), reverse=True)


def step_directories(root: Path) -> list[Path]:
    """Every step_N directory, complete or not, newest first."""
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if d.is_dir() and STEP_DIR.match(d.name)]
    return sorted(found, key=lambda d: int(STEP_DIR.match(d.name)[1]), reverse=True)


def latest_checkpoint(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[0] if done else None


# ------------------------------------------------------------------ RNG --
def rng_state() -> dict[str, torch.Tensor]:
    """Python, numpy and torch generator states as plain tensors (loadable with weights_only)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    assert kind == "MT19937"
    state = {
        "python_version": torch.tensor(version),
        "python_mt": torch.tensor(mt, dtype=torch.int64),
        "python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
        "numpy_pos_gauss": torch.tensor([pos, has_gauss], dtype=torch.int64),
        "numpy_cached": torch.tensor(cached, dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    has_gauss, gauss = state["python_gauss"].tolist()
    random.setstate((int(state["python_version"]), tuple(state["python_mt"].tolist()),
                     gauss if has_gauss else None))
    pos, np_has_gauss = state["numpy_pos_gauss"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, np_has_gauss,
                         float(state["numpy_cached"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ------------------------------------------------------------ integrity --
def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _checkpoint_files(directory: Path, world_size: int = 1) -> list[str]:
    """The checkpoint's files but meta.json: one listing for every rank, the union of what each
    rank sees (each rank sees the files it wrote itself; a directory listing on NFS may lag)."""
    mine = sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if p.is_file() and p.name not in (META, META + ".tmp"))
    if dist.is_initialized() and world_size > 1:
        parts = [None] * world_size
        dist.all_gather_object(parts, mine)
        mine = sorted(set().union(*parts))
    return mine


def _shared(items: list, rank: int, world_size: int, fn) -> dict:
    """fn over items split round-robin across ranks, results gathered on every rank
    (hashing a 1 B model's shards is a few GB per rank instead of 16 GB on one)."""
    mine = {item: fn(item) for item in items[rank::world_size]}
    if dist.is_initialized() and world_size > 1:
        parts = [None] * world_size
        dist.all_gather_object(parts, mine)
        for part in parts:
            mine.update(part)
    return mine


def file_records(directory: Path, rank: int = 0, world_size: int = 1) -> dict[str, dict]:
    """{relative path: {size, sha256}} for every file of a checkpoint except meta.json."""
    return _shared(_checkpoint_files(directory, world_size), rank, world_size,
                   lambda rel: {"size": (directory / rel).stat().st_size, "sha256": _sha256(directory / rel)})


def _manifest_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_meta(directory: Path, meta: dict) -> None:
    """meta.json (atomically), carrying the SHA-256 of its own content: one flipped bit in the
    manifest (a step number, a checksum) is found like one in any other file."""
    tmp = directory / (META + ".tmp")
    tmp.write_text(json.dumps({**meta, "manifest_sha256": _manifest_digest(meta)}, indent=1))
    os.replace(tmp, directory / META)


def read_meta(directory: Path) -> dict:
    """meta.json after checking its own checksum and that its step is the directory's."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / META).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / META}: unreadable ({exc})") from None
    if not isinstance(meta, dict) or "manifest_sha256" not in meta or "files" not in meta:
        raise CheckpointError(f"{directory / META}: no manifest checksum or file list (not written by this "
                              "version, or altered)")
    if meta["manifest_sha256"] != _manifest_digest(meta):
        raise CheckpointError(f"{directory / META}: its content does not match its recorded checksum")
    named = STEP_DIR.match(directory.name)
    if named and meta.get("step") != int(named[1]):
        raise CheckpointError(f"{directory / META}: records step {meta.get('step')} in {directory.name}")
    return meta


def verify_checkpoint(directory: Path, rank: int = 0, world_size: int = 1) -> list[str]:
    """Problems found (empty: intact): meta.json's own checksum and step, then every file against
    the sizes and checksums it records. Every rank must call it (the hashing is shared)."""
    try:
        recorded = read_meta(directory)["files"]
    except CheckpointError as exc:
        recorded, problem = {}, str(exc).replace(f"{Path(directory) / META}: ", f"{META}: ")
    else:
        problem = None
    if dist.is_initialized() and world_size > 1:  # one decision for every rank, read from rank 0's view
        parts = [None] * world_size
        dist.all_gather_object(parts, (recorded, problem))
        recorded, problem = parts[0]
    if problem:
        return [problem]
    problems = []
    present = set(_checkpoint_files(directory, world_size))
    for rel in sorted(set(recorded) - present):
        problems.append(f"{rel}: missing (expected {recorded[rel]['size']} bytes)")

    def check(rel: str) -> str | None:
        want, path = recorded[rel], directory / rel
        size = path.stat().st_size
        if size != want["size"]:
            return f"{rel}: {size} bytes, expected {want['size']}"
        digest = _sha256(path)
        if digest != want["sha256"]:
            return f"{rel}: sha256 {digest[:12]}..., expected {want['sha256'][:12]}..."
        return None

    found = _shared(sorted(set(recorded) & present), rank, world_size, check)
    problems += [p for _, p in sorted(found.items()) if p]
    return problems


def ensure_safe_pickles(directory: Path) -> None:
    """Refuse a checkpoint whose pickles name any global outside torch's safe set and our allow-list."""
    for path in sorted(Path(directory).rglob("*.pt")):
        try:
            unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except Exception as exc:  # not a torch zip archive: cannot be inspected without running it
            raise UnsafeCheckpointError(f"{path}: cannot be inspected safely ({exc}); refusing to load it") from exc
        refused = sorted(unsafe - ALLOWED_PICKLE_GLOBALS)
        if refused:
            raise UnsafeCheckpointError(f"{path}: holds pickled objects outside the allow-list "
                                        f"({', '.join(refused)}); refusing to load it: it could run code")


# torch.distributed.checkpoint's `.metadata` is a plain pickle that torch's own reader unpickles
# without any restriction; ours (safe_dcp_reader_and_planner) admits only its metadata dataclasses,
# torch sizes/dtypes and builtin containers.
# Exact (module, qualified name) pairs: protocol 4 resolves dotted names (module
# `torch.distributed.checkpoint.metadata`, name `os.system` is os.system, since that module
# imports os), so a prefix test or a dotted name would let any reachable callable through.
_DCP_ALLOWED = frozenset(
    [("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")]
    + [("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
       ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
       ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath")]
    + [("torch", name) for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)])


def _dcp_global_allowed(module, name) -> bool:
    return isinstance(module, str) and isinstance(name, str) and (module, name) in _DCP_ALLOWED


def _refused(path: Path, names) -> UnsafeCheckpointError:
    listed = ", ".join(sorted(f"{m}.{n}" if m != "?" else "?" for m, n in names))
    return UnsafeCheckpointError(f"{path}: holds pickled objects outside the allow-list ({listed}); "
                                 "refusing to load it: it could run code")


def safe_dcp_reader_and_planner(directory, whole: bool = False):
    """(storage_reader, planner) for ``torch.distributed.checkpoint.load`` that cannot run code.

    torch's own reader unpickles ``.metadata`` without restriction and its planners load every
    non-tensor entry (optimizer hyper-parameters) with weights-only turned off: ours unpickle the
    metadata with a class allow-list (the one ``ensure_safe_dcp_metadata`` scans for) and load
    those entries weights-only. ``whole``: load everything into an empty state dict
    (what ``dcp_to_torch_save`` does), else into the caller's state dict.
    """
    import pickle

    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.metadata import StorageMeta

    class AllowListUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if not _dcp_global_allowed(module, name):
                raise _refused(Path(directory) / ".metadata", [(module, name)])
            return super().find_class(module, name)

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):  # torch 2.14's, with the allow-list unpickler
            with self.fs.create_stream(self._get_metadata_path(kwargs.get("rank")), "rb") as file:
                metadata = AllowListUnpickler(file).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    base = _EmptyStateDictLoadPlanner if whole else DefaultLoadPlanner

    class Planner(base):
        def load_bytes(self, read_item, value):
            try:
                obj = torch.load(value, weights_only=True)  # refuses anything but plain data
            except pickle.UnpicklingError as exc:
                what = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "not plain data")
                entry = getattr(getattr(read_item, "dest_index", None), "fqn", "?")
                raise UnsafeCheckpointError(f"{directory}: entry {entry} of a .distcp shard "
                                            f"holds pickled code ({what}); refusing to load it") from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return Reader(str(directory)), Planner()


def dcp_load(state: dict, directory: Path, whole: bool = False) -> None:
    """torch.distributed.checkpoint's load with the safe reader and planner; a refusal on any
    rank comes out as one UnsafeCheckpointError, not DCP's per-rank traceback dump."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    reader, planner = safe_dcp_reader_and_planner(directory, whole=whole)
    try:
        if whole:
            from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

            _load_state_dict(state, storage_reader=reader, planner=planner, no_dist=True)
        else:
            dcp.load(state, storage_reader=reader, planner=planner)
    except CheckpointException as exc:
        for failure in exc.failures.values():  # (exception, its traceback summary) per rank
            inner = failure[0] if isinstance(failure, tuple) else failure
            if isinstance(inner, CheckpointError):
                raise type(inner)(str(inner)) from None
        raise


def pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """Every global a pickle stream would import, as (module, name) pairs, found without unpickling.
    STACK_GLOBAL must take its two names from the string pushes (or memo reads of strings)
    directly before it, as pickle writes it; anything else is reported as "?" (refused)."""
    import pickletools

    found, memo, recent = set(), {}, []  # recent: values of the last pushes, MEMOIZE/PUT skipped
    pushes = ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8", "SHORT_BINSTRING", "BINSTRING", "STRING")
    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in pushes:
            recent.append(arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
            continue
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = recent[-1] if recent else None
            continue
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            recent.append(memo.get(arg))
        elif name in ("GLOBAL", "INST"):
            module, _, attr = arg.partition(" ")
            found.add((module, attr))
            recent.append(None)
        elif name == "STACK_GLOBAL":
            module, attr = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
            ok = isinstance(module, str) and isinstance(attr, str)
            found.add((module, attr) if ok else ("?", "?"))
            recent.append(None)
        else:
            recent.append(None)  # any other op breaks the run of names
        del recent[:-2]
    return found


def ensure_safe_dcp_metadata(directory: Path) -> None:
    """Refuse a torch.distributed.checkpoint directory whose metadata pickle imports anything else."""
    path = Path(directory) / ".metadata"
    try:
        names = pickle_globals(path.read_bytes())
    except Exception as exc:
        raise UnsafeCheckpointError(f"{path}: cannot be inspected safely ({exc}); refusing to load it") from exc
    refused = [pair for pair in names if not _dcp_global_allowed(*pair)]
    if refused:
        raise _refused(path, refused)


def _allowed_classes() -> list:
    import importlib

    classes = []
    for name in ALLOWED_PICKLE_GLOBALS:
        module, attr = name.rsplit(".", 1)
        try:
            classes.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            pass
    return classes


# ------------------------------------------------------------ save/load --
def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (the partial directory is removed)."""


def _space_left(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def _disk_full(exc: BaseException, path: Path) -> bool:
    """ENOSPC anywhere in the chain, or (torch's writer reports only "iostream error") almost no
    space left on the filesystem after the failed write."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return 0 <= _space_left(path) < 8 * 2 ** 20


def save_training_checkpoint(wrapper, root: Path, step: int, meta: dict, rank: int, keep_last: int,
                             world_size: int = 1) -> Path:
    """Write step_N atomically (temporary name, checksums, then rename) and prune to the last `keep_last`.
    A failed write (disk full above all) removes the partial directory and says why."""
    final = step_dir(root, step)
    tmp = root / f".tmp-step_{step:08d}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    try:
        wrapper.save(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
        _barrier()
        records = file_records(tmp, rank, world_size)
        if rank == 0:
            write_meta(tmp, {**meta, "files": records})
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # any rank: the partial directory must not stay
        if _disk_full(exc, root):
            raise CheckpointWriteError(f"no space left on {root} while writing {final.name} (rank {rank}); the "
                                       "partial checkpoint was removed, the previous ones are intact") from None
        raise
    if rank == 0:
        if final.exists():  # an older run's step_N (resumed from an earlier step): replaced
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune(root, keep_last, keep=final)
    _barrier()
    return final


def prune(root: Path, keep_last: int, keep: Path | None = None) -> None:
    """Keep the newest `keep_last` checkpoints, always including `keep` (the one just written:
    a newer step_N left by an earlier run must not push it out). Conversions left by older
    versions (step_N_universal) go too: conversions now live only while a resume loads them."""
    for orphan in [*root.glob("step_*_universal"), *root.glob(".universal-*")]:
        shutil.rmtree(orphan, ignore_errors=True)
    if keep_last <= 0:
        return
    done = complete_checkpoints(root)
    if keep is not None and keep in done:
        done.remove(keep)
        done.insert(0, keep)
    for old in done[keep_last:]:
        shutil.rmtree(old, ignore_errors=True)


def set_aside(directory: Path, why: str) -> Path:
    """Rename a damaged checkpoint out of the way (never deleted: it may hold what a person wants
    to recover); it no longer counts as a checkpoint for resume or keep_last."""
    target = directory.with_name(f"damaged-{directory.name}")
    n = 1
    while target.exists():
        n += 1
        target = directory.with_name(f"damaged-{directory.name}.{n}")
    os.replace(directory, target)
    print(f"checkpoint {directory} is damaged ({why}): renamed to {target.name}", file=sys.stderr, flush=True)
    return target


def load_training_checkpoint(wrapper, directory: Path, rank: int) -> dict:
    meta = read_meta(directory)
    ensure_safe_pickles(directory)
    if (directory / ".metadata").is_file():
        ensure_safe_dcp_metadata(directory)
    wrapper.load(directory)
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.is_file():  # absent for ranks that did not exist when it was written
        set_rng_state(torch.load(rng_file, weights_only=True))
    return meta


def consolidate(directory: Path) -> dict[str, torch.Tensor]:
    """One fp32 state_dict (official key names) from a DeepSpeed or FSDP/torch checkpoint directory."""
    directory = Path(directory)
    if not is_complete(directory):
        raise FileNotFoundError(f"{directory} is not a complete training checkpoint (no meta.json)")
    problems = verify_checkpoint(directory)
    if problems:
        raise CheckpointError(f"{directory} is damaged: " + "; ".join(problems))
    ensure_safe_pickles(directory)
    torch_file = directory / "model_and_optimizer.pt"
    if torch_file.is_file():
        state = torch.load(torch_file, map_location="cpu", weights_only=True)["model"]
    elif (directory / ".metadata").is_file():  # FSDP2: torch.distributed.checkpoint shards
        # dcp_to_torch_save's load, in memory, with our reader and planner (the public dcp.load
        # fills only keys the given state dict already has).
        ensure_safe_dcp_metadata(directory)
        whole: dict = {}
        dcp_load(whole, directory, whole=True)
        state = whole["model"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(directory.parent), tag=directory.name)
        # zero_to_fp32 keeps parameters only; buffers (BatchNorm statistics) come from the model-states file.
        for f in sorted(directory.glob("*model_states.pt")):
            from vitpose_scale.models.interop import safe_load

            module = safe_load(f, _allowed_classes()).get("module") or {}
            for k, v in module.items():
                if k not in state and ("running_" in k or k.endswith("num_batches_tracked")):
                    state.setdefault(k, v)
            break
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
