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

Inputs are untrusted: windows are checked against the image here and again in C, and no
path decodes more than ``images.max_image_pixels()`` pixels (decompression bombs).
"""
from __future__ import annotations

import ctypes
import hashlib
import operator
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from .images import ImageTooLargeError, max_image_pixels

SOURCE = Path(__file__).with_name("jpeg_region.c")
OK, ERROR, SIZE_MISMATCH, UNSUPPORTED, TOO_LARGE, BAD_ARGS = 0, 1, 2, 3, 4, 5
JPEG_MAX_SIDE = 65535  # a JPEG frame header holds 16-bit sizes
_ERR_LEN = 256

_library: ctypes.CDLL | None = None
_unavailable: str | None = None  # why the library could not be built or loaded


def build_dir() -> Path:
    env = os.environ.get("VITPOSE_SCALE_BUILD_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitpose_scale"


# The lines of a compiler's output that say what went wrong. Its last line is usually
# "compilation terminated." or "collect2: error: ld returned 1 exit status", which does not.
_CAUSE = re.compile(r"error|cannot find|undefined reference|not found|No such file", re.IGNORECASE)
_NOISE = re.compile(r"^(collect2: error: ld returned|compilation terminated)")


def _compiler_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    causes = [line for line in lines if _CAUSE.search(line) and not _NOISE.match(line)]
    return "; ".join(causes[:3]) or (lines[-1] if lines else "(no message)")


def _compile(target: Path) -> None:
    # CC may carry arguments (CC="gcc -O1", CC="ccache cc"), as in make.
    compiler = shlex.split(os.environ.get("CC", "")) or [c for c in [shutil.which("cc") or shutil.which("gcc")] if c]
    if not compiler:
        raise OSError("no C compiler (cc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    # A private name, then an atomic rename: data-loader workers may build at the same time.
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        try:
            done = subprocess.run([*compiler, "-O2", "-shared", "-fPIC", "-o", tmp, str(SOURCE), "-ljpeg"],
                                  capture_output=True, text=True)
        except OSError as exc:  # CC names no program
            raise OSError(f"cannot run the C compiler {compiler[0]!r}: {exc.strerror}") from exc
        if done.returncode != 0:
            raise OSError(f"compiling {SOURCE.name} with {shlex.join(compiler)} failed: "
                          f"{_compiler_error(done.stderr)}")
        # The linker keeps mkstemp's 0600: the shared cache is for every user of this machine.
        os.chmod(tmp, 0o755)
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
                   ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_ulonglong, ctypes.c_char_p,
                   ctypes.c_int]
    lib.vps_has_mcu_restarts.restype = ctypes.c_int
    lib.vps_has_mcu_restarts.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int]
    lib.vps_add_restarts.restype = ctypes.c_int
    lib.vps_add_restarts.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.POINTER(ctypes.c_ulong), ctypes.c_ulonglong, ctypes.c_char_p,
                                     ctypes.c_int]
    lib.vps_free.restype = None
    lib.vps_free.argtypes = [ctypes.c_void_p]
    _library = lib
    return lib


def clip_window(window, size_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``window`` = (x0, y0, x1, y1), four whole numbers with x0 <= x1 and y0 <= y1, clipped to
    the height x width image (an empty result is allowed). ValueError otherwise: a window is
    computed by the caller, so a reversed or non-integer one is a bug to report, not to guess."""
    try:
        x0, y0, x1, y1 = (operator.index(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window {window!r}: expected four whole numbers (x0, y0, x1, y1)") from None
    if x0 > x1 or y0 > y1:
        raise ValueError(f"window {window!r}: expected x0 <= x1 and y0 <= y1")
    height, width = int(size_hw[0]), int(size_hw[1])
    # Clipped here, as Python ints: ctypes would wrap 2**31 to -2**31 on its way to C.
    return (min(max(x0, 0), width), min(max(y0, 0), height), min(max(x1, 0), width), min(max(y1, 0), height))


def decode_window(data: bytes, size_hw: tuple[int, int], window: tuple[int, int, int, int],
                  max_pixels: int | None = None):
    """(status, image, message): ``image`` is (H, W, 3) uint8 RGB, exact inside
    ``window`` = (x0, y0, x1, y1) (half-open, clipped to the image, see :func:`clip_window`)
    and zero where nothing was decoded. ``status`` is OK, or ERROR / SIZE_MISMATCH / UNSUPPORTED /
    TOO_LARGE (``size_hw`` has more than ``max_pixels`` pixels, default
    :func:`~vitpose_scale.data.images.max_image_pixels`) with ``image`` None; None when the
    library is unavailable."""
    lib = load()
    if lib is None:
        return None, None, _unavailable
    height, width = int(size_hw[0]), int(size_hw[1])
    x0, y0, x1, y1 = clip_window(window, (height, width))
    if not (0 < height <= JPEG_MAX_SIDE and 0 < width <= JPEG_MAX_SIDE):
        return SIZE_MISMATCH, None, f"no JPEG is {width}x{height} pixels"
    limit = max_image_pixels(max_pixels)
    if height * width > limit:  # before np.zeros: the buffer is the whole image
        return TOO_LARGE, None, f"{width}x{height} pixels is more than the limit of {limit}"
    # np.zeros of a large image maps fresh zero pages: only the pages the decoder writes cost anything.
    out = np.zeros((height, width, 3), dtype=np.uint8)
    err = ctypes.create_string_buffer(_ERR_LEN)
    status = lib.vps_decode_region(data, len(data), out.ctypes.data, height, width, x0, y0, x1, y1, limit, err,
                                   _ERR_LEN)
    if status != OK:
        return status, None, err.value.decode(errors="replace")
    return OK, out, ""


def has_mcu_restarts(data: bytes, size_hw: tuple[int, int]) -> bool:
    """Does ``decode_window`` cut this file's window out by its restart markers (a sequential
    JPEG of that size with a restart marker after every MCU, numbered in turn, see
    :func:`add_restarts`)?"""
    lib = load()
    height, width = int(size_hw[0]), int(size_hw[1])
    if lib is None or not (0 < height <= JPEG_MAX_SIDE and 0 < width <= JPEG_MAX_SIDE):
        return False
    return bool(lib.vps_has_mcu_restarts(data, len(data), height, width))


def add_restarts(data: bytes, max_pixels: int | None = None) -> bytes:
    """``data`` (a JPEG) rewritten losslessly with a restart marker after every MCU, so that
    :func:`decode_window` decodes only the MCUs a window touches. The DCT coefficients,
    quantisation tables and markers are copied, so the decoded pixels are unchanged. The file
    grows (a marker and byte alignment per MCU, DC values coded without prediction; +7.7 % on
    the bundled COCO images, after re-optimised Huffman tables). ValueError when libjpeg cannot
    read the input or reads it with a corrupt-data warning (a truncated or damaged file: its
    rewrite would look complete); ImageTooLargeError (a ValueError) above ``max_pixels`` pixels
    (default :func:`~vitpose_scale.data.images.max_image_pixels`); OSError without the library."""
    lib = load()
    if lib is None:
        raise OSError(f"the JPEG library helper is unavailable ({_unavailable})")
    out, out_len = ctypes.c_void_p(), ctypes.c_ulong()
    err = ctypes.create_string_buffer(_ERR_LEN)
    limit = max_image_pixels(max_pixels)
    status = lib.vps_add_restarts(data, len(data), ctypes.byref(out), ctypes.byref(out_len), limit, err, _ERR_LEN)
    try:
        if status == TOO_LARGE:
            raise ImageTooLargeError(err.value.decode(errors="replace"))
        if status != OK:
            raise ValueError(err.value.decode(errors="replace") or "libjpeg could not rewrite the file")
        return ctypes.string_at(out, out_len.value)
    finally:
        if out:
            lib.vps_free(out)


__all__ = ["BAD_ARGS", "ERROR", "OK", "SIZE_MISMATCH", "TOO_LARGE", "UNSUPPORTED", "add_restarts", "build_dir",
           "clip_window", "decode_window", "has_mcu_restarts", "load"]
