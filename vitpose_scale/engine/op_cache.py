"""Whether DeepSpeed's JIT-compiled ops are already in the torch extensions cache (no torch import
when $TORCH_EXTENSIONS_DIR is set, so set-up and the launchers can ask cheaply)."""
import os
from pathlib import Path


def _root(environ) -> Path:
    """TORCH_EXTENSIONS_DIR, else torch's default root."""
    root = environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        from torch.utils.cpp_extension import get_default_build_root

        root = get_default_build_root()
    return Path(root)


def is_built(op: str, environ=os.environ) -> bool:
    root = _root(environ)
    # torch's default root holds one folder per Python/CUDA version (py311_cpu); TORCH_EXTENSIONS_DIR none
    return any(root.glob(f"{op}/{op}.so")) or any(root.glob(f"*/{op}/{op}.so"))


def first_build_note(op: str, environ=os.environ) -> str | None:
    """One line saying that DeepSpeed is about to compile `op` (its CPU communication op,
    deepspeed_shm_comm, on the first start: 1-4 minutes with no output), or None when a build is
    already in the cache."""
    if is_built(op, environ):
        return None
    return (f"DeepSpeed compiles its {op} op once before the first step (1-4 minutes with no output); later "
            f"starts reuse it from {_root(environ)}")
