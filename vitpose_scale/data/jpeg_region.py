"""Decode only the window of a JPEG that a crop reads (``jpeg_region.c``), through ctypes.

Half of a training sample's CPU time is JPEG decoding, and a person crop reads on
average a quarter to a half of the image. libjpeg-turbo can leave out the pixel work
outside a window and stop after its last row; the pixels inside are those of a full
decode. The shared library is compiled on first use with the system C compiler against
the system libjpeg (Debian/Ubuntu: ``libjpeg-dev``) into the build cache
(``$VITPOSE_SCALE_BUILD_DIR``, else ``~/.cache/vitpose_scale``). Where that cannot be done
the loader says so once and decodes whole images with OpenCV: same pixels, slower.

Files rewritten by :func:`add_restarts` (``vitpose-scale prepare-images``) carry a restart
marker after every MCU; for those only the MCUs a window touches are decoded at all
(entropy decoding included), about a third of the window path's cost on COCO crops.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("jpeg_region.c")
OK, ERROR, SIZE_MISMATCH, UNSUPPORTED = 0, 1, 2, 3
_ERR_LEN = 256

_library: ctypes.CDLL | None = None
_unavailable: str | None = None  # why the library could not be built or loaded


def build_dir() -> Path:
    env = os.environ.get("VITPOSE_SCALE_BUILD_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitpose_scale"


def _compile(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise OSError("no C compiler (cc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    # A private name, then an atomic rename: data-loader workers may build at the same time.
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", tmp, str(SOURCE), "-ljpeg"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise OSError(f"compiling {SOURCE.name} failed: {last}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load() -> ctypes.CDLL | None:
    """The compiled decoder, built if needed; None (with a one-time notice) when it cannot be."""
    global _library, _unavailable
    if _library is not None or _unavailable is not None:
        return _library
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    target = build_dir() / f"jpeg_region_{digest}.so"
    try:
        if not target.exists():
            _compile(target)
        lib = ctypes.CDLL(str(target))
    except OSError as exc:
        _unavailable = str(exc)
        print(f"note: partial JPEG decoding is unavailable ({_unavailable}); decoding whole images instead "
              f"(same pixels, slower; install a C compiler and libjpeg-dev to enable it)", file=sys.stderr)
        return None
    fn = lib.vps_decode_region
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                   ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.vps_has_mcu_restarts.restype = ctypes.c_int
    lib.vps_has_mcu_restarts.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int]
    lib.vps_add_restarts.restype = ctypes.c_int
    lib.vps_add_restarts.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.POINTER(ctypes.c_ulong), ctypes.c_char_p, ctypes.c_int]
    lib.vps_free.restype = None
    lib.vps_free.argtypes = [ctypes.c_void_p]
    _library = lib
    return lib


def decode_window(data: bytes, size_hw: tuple[int, int], window: tuple[int, int, int, int]):
    """(status, image, message): ``image`` is (H, W, 3) uint8 RGB, exact inside
    ``window`` = (x0, y0, x1, y1) (half-open, clipped to the image) and zero where nothing
    was decoded. ``status`` is OK, or ERROR / SIZE_MISMATCH / UNSUPPORTED with ``image``
    None; None when the library is unavailable."""
    lib = load()
    if lib is None:
        return None, None, _unavailable
    height, width = int(size_hw[0]), int(size_hw[1])
    x0, y0, x1, y1 = window
    x0, x1 = max(0, int(x0)), min(width, int(x1))
    y0, y1 = max(0, int(y0)), min(height, int(y1))
    # np.zeros of a large image maps fresh zero pages: only the pages the decoder writes cost anything.
    out = np.zeros((height, width, 3), dtype=np.uint8)
    err = ctypes.create_string_buffer(_ERR_LEN)
    status = lib.vps_decode_region(data, len(data), out.ctypes.data, height, width, x0, y0, x1, y1, err, _ERR_LEN)
    if status != OK:
        return status, None, err.value.decode(errors="replace")
    return OK, out, ""


def has_mcu_restarts(data: bytes, size_hw: tuple[int, int]) -> bool:
    """Does ``decode_window`` cut this file's window out by its restart markers (a sequential
    JPEG of that size with a restart marker after every MCU, see :func:`add_restarts`)?"""
    lib = load()
    return lib is not None and bool(lib.vps_has_mcu_restarts(data, len(data), int(size_hw[0]), int(size_hw[1])))


def add_restarts(data: bytes) -> bytes:
    """``data`` (a JPEG) rewritten losslessly with a restart marker after every MCU, so that
    :func:`decode_window` decodes only the MCUs a window touches. The DCT coefficients,
    quantisation tables and markers are copied, so the decoded pixels are unchanged. The file
    grows (a marker and byte alignment per MCU, DC values coded without prediction; +7.7 % on
    the bundled COCO images, after re-optimised Huffman tables). ValueError when libjpeg cannot
    read the input; OSError without the library."""
    lib = load()
    if lib is None:
        raise OSError(f"the JPEG library helper is unavailable ({_unavailable})")
    out, out_len = ctypes.c_void_p(), ctypes.c_ulong()
    err = ctypes.create_string_buffer(_ERR_LEN)
    status = lib.vps_add_restarts(data, len(data), ctypes.byref(out), ctypes.byref(out_len), err, _ERR_LEN)
    try:
        if status != OK:
            raise ValueError(err.value.decode(errors="replace") or "libjpeg could not rewrite the file")
        return ctypes.string_at(out, out_len.value)
    finally:
        if out:
            lib.vps_free(out)


__all__ = ["ERROR", "OK", "SIZE_MISMATCH", "UNSUPPORTED", "add_restarts", "build_dir", "decode_window",
           "has_mcu_restarts", "load"]
