"""Reading images with an integrity check.

OpenCV decodes a truncated JPEG without an error: libjpeg prints "Premature end
of JPEG file" on stderr and fills the missing rows with grey, and training would
silently learn from a half-grey picture. A complete JPEG ends with the
end-of-image marker FF D9 (only padding may follow it), and FF D9 cannot occur
inside the entropy-coded data (a data byte FF is always stuffed with 00), so a
file whose tail lacks the marker was cut short. The check reads nothing beyond
the bytes the decoder needs anyway.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
_PADDING = b"\x00\xff\r\n\t "  # what some writers leave after the end-of-image marker
# OpenCV >= 4.12 decodes straight to RGB (the same pixels as BGR + swap, one pass fewer).
_DECODE_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)


class CorruptImageError(ValueError):
    """An image file is truncated or cannot be decoded."""


def jpeg_is_complete(data: bytes) -> bool:
    """True unless ``data`` is a JPEG that stops before its end-of-image marker."""
    if not data.startswith(JPEG_SOI):
        return True  # not a JPEG: the decoder's own checks apply
    return data.rstrip(_PADDING).endswith(JPEG_EOI)


def _read_jpeg_bytes(path: Path, where: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileNotFoundError(f"image {path}{where} is missing or unreadable: {exc.strerror}") from exc
    if not jpeg_is_complete(data):
        raise CorruptImageError(f"image {path}{where} is truncated: the JPEG has no end-of-image marker "
                                f"(FF D9), so its last rows would decode as grey; expected a complete file "
                                f"(re-copy or re-extract it)")
    return data


def _decode_whole(data: bytes, path: Path, where: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _DECODE_FLAG)
    if img is None:
        raise CorruptImageError(f"image {path}{where} cannot be decoded ({len(data)} bytes); expected a "
                                f"JPEG or PNG image")
    if _DECODE_FLAG == cv2.IMREAD_COLOR:
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)  # in place, as the reference's loader does
    return img


def read_rgb(path: str | Path, listed_in: str = "") -> np.ndarray:
    """Decode ``path`` to uint8 RGB (H, W, 3), refusing truncated or undecodable files.

    ``listed_in`` names where the file comes from (the annotation file and image id)
    for the error message.
    """
    path = Path(path)
    where = f" ({listed_in})" if listed_in else ""
    return _decode_whole(_read_jpeg_bytes(path, where), path, where)


def read_rgb_window(path: str | Path, size_hw: tuple[int, int], window: tuple[int, int, int, int],
                    listed_in: str = "") -> np.ndarray:
    """Like :func:`read_rgb`, but only the pixels in ``window`` (x0, y0, x1, y1; half-open) are
    guaranteed: a JPEG of the expected ``size_hw`` is decoded there only (``jpeg_region``),
    the rest of the returned image is zero. Anything else (PNG, CMYK, an EXIF rotation, a
    size other than ``size_hw``, no compiled decoder) is decoded whole, exactly as ``read_rgb``.
    """
    from . import jpeg_region

    path = Path(path)
    where = f" ({listed_in})" if listed_in else ""
    data = _read_jpeg_bytes(path, where)
    if data.startswith(JPEG_SOI):
        status, img, _ = jpeg_region.decode_window(data, size_hw, window)
        if status == jpeg_region.OK:
            return img
    # Errors, unusual JPEGs and other formats: OpenCV's whole-image decode and its messages.
    return _decode_whole(data, path, where)


__all__ = ["CorruptImageError", "jpeg_is_complete", "read_rgb", "read_rgb_window"]
