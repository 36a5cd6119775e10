"""Video frames in and out through OpenCV: `infer --video in.mp4 --out out.mp4`."""
from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vitpose_scale.cli import InputError

# Used when a container reports no frame rate (some raw streams): the writer needs one.
FALLBACK_FPS = 30.0
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".avi": "MJPG"}


class VideoReader:
    """BGR uint8 frames of a video file, one pass (a stream: iterating again continues where it stopped).

    Opening decodes the first frame, so a file OpenCV cannot read fails here, not mid-run.
    """

    def __init__(self, path: str | Path) -> None:
        import cv2

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"video {self.path} does not exist")
        self._cap = cv2.VideoCapture(str(self.path))
        ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok or first is None:
            self._cap.release()
            raise InputError(f"video {self.path}: OpenCV cannot decode it (expected a video file such as mp4, avi, "
                             f"mov, mkv)")
        self._next: np.ndarray | None = first
        self.height, self.width = (int(v) for v in first.shape[:2])  # the decoded size, not the header's
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and fps > 0 else FALLBACK_FPS
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        # The container's count: an estimate for some formats; 0 when unknown.
        self.frame_count = int(count) if math.isfinite(count) and count > 0 else 0

    def __iter__(self) -> Iterator[np.ndarray]:
        while self._next is not None:
            frame, self._next = self._next, None
            ok, following = self._cap.read()
            if ok and following is not None:
                self._next = following
            yield frame

    def batches(self, size: int) -> Iterator[list[np.ndarray]]:
        """Frames in lists of ``size`` (the last one shorter)."""
        if size < 1:
            raise InputError(f"video batch size {size}: expected >= 1")
        batch: list[np.ndarray] = []
        for frame in self:
            batch.append(frame)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        self._next = None
        self._cap.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """Writes BGR uint8 frames of one size: mp4v for .mp4, MJPG for .avi."""

    def __init__(self, path: str | Path, fps: float, width: int, height: int) -> None:
        import cv2

        self.path = Path(path)
        fourcc = FOURCC_BY_SUFFIX.get(self.path.suffix.lower())
        if fourcc is None:
            raise InputError(f"video output {self.path}: expected a .mp4 or .avi path")
        if not (math.isfinite(fps) and fps > 0 and width > 0 and height > 0):
            raise InputError(f"video output {self.path}: expected fps > 0 and a frame size, got {fps} fps, "
                             f"{width}x{height}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"video output {self.path}: cannot create its folder ({exc.strerror or exc})") from None
        self.width, self.height, self.fps, self.frames = int(width), int(height), float(fps), 0
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*fourcc), self.fps,
                                       (self.width, self.height))
        if not self._writer.isOpened():
            self._writer.release()
            raise InputError(f"video output {self.path}: OpenCV cannot open it for writing (expected a writable "
                             f"path; codec {fourcc})")

    def write(self, frame_bgr: np.ndarray) -> None:
        # OpenCV drops frames of another size or type without a word: refuse them instead.
        if frame_bgr.dtype != np.uint8 or frame_bgr.shape != (self.height, self.width, 3):
            raise ValueError(f"video output {self.path}: frame {frame_bgr.dtype} {frame_bgr.shape}, expected uint8 "
                             f"({self.height}, {self.width}, 3)")
        self._writer.write(np.ascontiguousarray(frame_bgr))
        self.frames += 1

    def close(self) -> None:
        self._writer.release()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
