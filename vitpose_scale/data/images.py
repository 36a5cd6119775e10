"""Reading images with an integrity check.

OpenCV decodes a truncated JPEG without an error: libjpeg prints "Premature end
of JPEG file" on stderr and fills the missing rows with grey, and training would
silently learn from a half-grey picture. A complete JPEG ends with the
end-of-image marker FF D9 (only padding may follow it), and FF D9 cannot occur
inside the entropy-coded data (a data byte FF is always stuffed with 00), so a
file whose tail lacks the marker was cut short. The check reads nothing beyond
the bytes the decoder needs anyway.

Every decode path (whole, window, cut-out restart intervals, prepare-images) refuses images of
more than ``max_image_pixels()`` pixels, read from the file's header before anything is
allocated: a few hundred bytes can declare 32768x32768 pixels (a decompression bomb).
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
_PADDING = b"\x00\xff\r\n\t "  # what some writers leave after the end-of-image marker
# OpenCV >= 4.12 decodes straight to RGB (the same pixels as BGR + swap, one pass fewer).
_DECODE_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", cv2.IMREAD_COLOR)


MAX_PIXELS_ENV = "VITPOSE_SCALE_MAX_IMAGE_PIXELS"
# OpenCV's own limit (CV_IO_MAX_IMAGE_PIXELS, env OPENCV_IO_MAX_IMAGE_PIXELS): OpenCV refuses larger
# images anyway, so a higher limit here also needs that variable raised.
DEFAULT_MAX_PIXELS = 1 << 30
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Frame headers (SOF0..SOF15 but DHT C4, JPG C8 and DAC CC) hold the image size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class CorruptImageError(ValueError):
    """An image file is truncated or cannot be decoded."""


class ImageTooLargeError(CorruptImageError):
    """An image declares more pixels than :func:`max_image_pixels` allows (a decompression bomb?)."""


def max_image_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit of every decode: ``max_pixels`` when given, else the environment variable
    ``VITPOSE_SCALE_MAX_IMAGE_PIXELS``, else 2**30 (OpenCV's default)."""
    if max_pixels is None:
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_PIXELS
        try:
            max_pixels = int(raw)
        except ValueError:
            raise ValueError(f"{MAX_PIXELS_ENV}={raw!r}: expected a whole number of pixels "
                             f"(default {DEFAULT_MAX_PIXELS})") from None
    if int(max_pixels) < 1:
        raise ValueError(f"the image pixel limit must be at least 1, got {max_pixels}")
    return int(max_pixels)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header or a PNG's IHDR chunk, without decoding;
    None when the header is not found where it should be (the decoder then speaks for itself)."""
    if data.startswith(_PNG_SIGNATURE):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
        return None
    if not data.startswith(JPEG_SOI):
        return None
    p, n = 2, len(data)
    while p + 4 <= n:
        if data[p] != 0xFF:
            return None
        marker = data[p + 1]
        if marker == 0xFF:  # fill byte
            p += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            p += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        if marker in _JPEG_SOF:
            if p + 9 > n:
                return None
            return int.from_bytes(data[p + 5:p + 7], "big"), int.from_bytes(data[p + 7:p + 9], "big")
        p += 2 + int.from_bytes(data[p + 2:p + 4], "big")
    return None


def _check_pixels(size_hw: tuple[int, int], limit: int, path: Path, where: str) -> None:
    height, width = size_hw
    if height * width > limit:
        raise ImageTooLargeError(f"image {path}{where} is {width}x{height} = {width * height} pixels, more than "
                                 f"the limit of {limit} (a decompression bomb?); expected a smaller image, or "
                                 f"set {MAX_PIXELS_ENV} to allow it")


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


def _decode_whole(data: bytes, path: Path, where: str, limit: int) -> np.ndarray:
    if not data:  # cv2.imdecode asserts on an empty buffer
        raise CorruptImageError(f"image {path}{where} is empty (0 bytes); expected a JPEG or PNG image "
                                f"(re-copy or re-extract it)")
    size = image_size(data)
    if size is not None:
        _check_pixels(size, limit, path, where)
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _DECODE_FLAG)
    except cv2.error as exc:  # e.g. OpenCV's own size limit: say which file, not just OpenCV's line
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CorruptImageError(f"image {path}{where} cannot be decoded ({len(data)} bytes; OpenCV: "
                                f"{reason}); expected a JPEG or PNG image") from exc
    if img is None:
        raise CorruptImageError(f"image {path}{where} cannot be decoded ({len(data)} bytes); expected a "
                                f"JPEG or PNG image")
    if size is None:  # a format whose header is not read above: check what came out
        _check_pixels(img.shape[:2], limit, path, where)
    if _DECODE_FLAG == cv2.IMREAD_COLOR:
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)  # in place, as the reference's loader does
    return img


def read_rgb(path: str | Path, listed_in: str = "", max_pixels: int | None = None) -> np.ndarray:
    """Decode ``path`` to uint8 RGB (H, W, 3), refusing truncated or undecodable files and
    images of more than ``max_pixels`` pixels (default :func:`max_image_pixels`).

    ``listed_in`` names where the file comes from (the annotation file and image id)
    for the error message.
    """
    path = Path(path)
    where = f" ({listed_in})" if listed_in else ""
    limit = max_image_pixels(max_pixels)
    return _decode_whole(_read_jpeg_bytes(path, where), path, where, limit)


def read_rgb_window(path: str | Path, size_hw: tuple[int, int], window: tuple[int, int, int, int],
                    listed_in: str = "", max_pixels: int | None = None) -> np.ndarray:
    """Like :func:`read_rgb`, but only the pixels in ``window`` (x0, y0, x1, y1; half-open) are
    guaranteed: a JPEG of the expected ``size_hw`` is decoded there only (``jpeg_region``),
    the rest of the returned image is zero. Anything else (PNG, CMYK, an EXIF rotation, a
    size other than ``size_hw``, no compiled decoder) is decoded whole, exactly as ``read_rgb``.
    ``window`` must be four whole numbers with x0 <= x1, y0 <= y1 (it is clipped to the image);
    ValueError otherwise.
    """
    from . import jpeg_region

    path = Path(path)
    where = f" ({listed_in})" if listed_in else ""
    try:
        window = jpeg_region.clip_window(window, size_hw)
    except ValueError as exc:
        raise ValueError(f"image {path}{where}: {exc}") from None
    limit = max_image_pixels(max_pixels)
    data = _read_jpeg_bytes(path, where)
    if data.startswith(JPEG_SOI):
        actual = image_size(data)
        if actual is not None:
            _check_pixels(actual, limit, path, where)
        # A header that disagrees with size_hw (a wrong annotation) goes to the whole decode below,
        # without allocating size_hw's buffer: the caller's size check then names both.
        if actual is None or actual == (int(size_hw[0]), int(size_hw[1])):
            status, img, _ = jpeg_region.decode_window(data, size_hw, window, limit)
            if status == jpeg_region.OK:
                return img
    # Errors, unusual JPEGs and other formats: OpenCV's whole-image decode and its messages.
    return _decode_whole(data, path, where, limit)


__all__ = ["CorruptImageError", "DEFAULT_MAX_PIXELS", "ImageTooLargeError", "MAX_PIXELS_ENV", "image_size",
           "jpeg_is_complete", "max_image_pixels", "read_rgb", "read_rgb_window"]
