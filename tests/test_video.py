"""vitpose_scale.video: frames written with VideoWriter come back through VideoReader; bad files
and paths are one-line InputErrors."""
from __future__ import annotations

import numpy as np
import pytest

from vitpose_scale.cli import InputError
from vitpose_scale.video import VideoReader, VideoWriter

W, H, N, FPS = 64, 48, 12, 10.0


def _frame(i: int) -> np.ndarray:
    """A white rectangle moving right on a dark background."""
    frame = np.full((H, W, 3), 20, np.uint8)
    frame[12:32, 4 * i: 4 * i + 12] = 255
    return frame


def _write(path) -> None:
    with VideoWriter(path, FPS, W, H) as writer:
        for i in range(N):
            writer.write(_frame(i))
    assert writer.frames == N


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_round_trip(tmp_path, suffix):
    path = tmp_path / "out" / f"clip{suffix}"  # the writer creates the folder
    _write(path)
    with VideoReader(path) as reader:
        assert (reader.width, reader.height) == (W, H)
        assert reader.fps == pytest.approx(FPS)
        assert reader.frame_count == N
        batches = list(reader.batches(5))
    assert [len(b) for b in batches] == [5, 5, 2]
    frames = [f for b in batches for f in b]
    assert all(f.shape == (H, W, 3) and f.dtype == np.uint8 for f in frames)
    # Lossy codecs: the rectangle is still where it was drawn, frame by frame, in order.
    for i, frame in enumerate(frames):
        assert np.abs(frame.astype(int) - _frame(i).astype(int)).mean() < 8
        bright = np.nonzero(frame[22, :, 0] > 128)[0]
        assert abs(bright.mean() - (4 * i + 5.5)) < 2


def test_reader_is_one_pass_iterator(tmp_path):
    path = tmp_path / "clip.avi"
    _write(path)
    with VideoReader(path) as reader:
        first = next(iter(reader))
        rest = list(reader)
    assert len(rest) == N - 1
    assert np.abs(first.astype(int) - _frame(0).astype(int)).mean() < 8


def test_missing_and_corrupt_inputs(tmp_path):
    with pytest.raises(InputError) as exc:
        VideoReader(tmp_path / "missing.mp4")
    assert "does not exist" in _one_line(exc) and "missing.mp4" in _one_line(exc)

    corrupt = tmp_path / "x.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError) as exc:
        VideoReader(corrupt)
    assert "cannot decode" in _one_line(exc) and "x.mp4" in _one_line(exc)

    text = tmp_path / "notes.avi"
    text.write_text("not a video\n")
    with pytest.raises(InputError):
        VideoReader(text)

    with pytest.raises(InputError) as exc:
        VideoReader(tmp_path)  # a folder
    _one_line(exc)


def test_writer_bad_outputs(tmp_path):
    with pytest.raises(InputError) as exc:
        VideoWriter(tmp_path / "out.gif", FPS, W, H)
    assert ".mp4 or .avi" in _one_line(exc)

    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(InputError) as exc:
        VideoWriter(blocker / "out.mp4", FPS, W, H)
    assert "out.mp4" in _one_line(exc)

    with pytest.raises(InputError):
        VideoWriter(tmp_path / "out.mp4", 0.0, W, H)


def test_writer_refuses_frames_of_another_size(tmp_path):
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, FPS, W, H) as writer:
        writer.write(_frame(0))
        with pytest.raises(ValueError, match="expected uint8"):
            writer.write(np.zeros((H + 1, W, 3), np.uint8))
        with pytest.raises(ValueError):
            writer.write(_frame(1).astype(np.float32))
    with VideoReader(path) as reader:
        assert len(list(reader)) == 1
