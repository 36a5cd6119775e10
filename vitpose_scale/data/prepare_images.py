"""`vitpose-scale prepare-images`: a copy of an image folder whose JPEGs decode per window.

Entropy decoding is sequential, so a plain JPEG costs most of a whole decode even when a
person crop reads a quarter of it. Rewritten with a restart marker after every MCU
(``jpeg_region.add_restarts``: lossless, the DCT coefficients are copied), each 16x16
block decodes on its own and the loader decodes only the blocks a crop reads (about 3x
less decoding per sample on COCO). Every rewritten file is decoded whole and compared
with its source before it is written; files that are not JPEGs, or that libjpeg cannot
rewrite (damaged, truncated, more pixels than the limit), are copied as they are, named in a
note. Point ``data.train_images`` (and ``val_images``) at the output folder; nothing else
changes (the loader detects the markers per file).

Files are rewritten in worker processes (``--workers``, at least one): a file that kills its
worker (a crash in libjpeg or the C helper) is found by re-running the files that were in
flight one per process, copied as it is and named; the run goes on.

    vitpose-scale prepare-images --src data/coco/train2017 --out data/coco/train2017_rst --workers 8

Re-running skips files already written (newer than their source), so an interrupted run
resumes.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

JPEG_SOI = b"\xff\xd8"


@dataclass
class FileResult:
    kind: str  # "rewritten", "copied", "skipped"
    src_bytes: int = 0
    out_bytes: int = 0
    note: str = ""
    cpu_s: float = 0.0  # CPU time of the worker process on this file


def _write_atomic(path: Path, data: bytes, mode_from: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode_from.stat().st_mode & 0o777)  # mkstemp's 0600 would hide the copy from others
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _same_pixels(a: bytes, b: bytes) -> bool:
    import cv2
    import numpy as np

    flags = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
    x = cv2.imdecode(np.frombuffer(a, np.uint8), flags)
    y = cv2.imdecode(np.frombuffer(b, np.uint8), flags)
    return x is not None and y is not None and x.shape == y.shape and bool((x == y).all())


def prepare_file(src: Path, out: Path, max_pixels: int | None = None) -> FileResult:
    """Rewrite one JPEG with per-MCU restart markers (verified), or copy anything else.
    ``max_pixels``: see :func:`~vitpose_scale.data.images.max_image_pixels`."""
    from . import jpeg_region

    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return FileResult("skipped")
    data = src.read_bytes()
    note = ""
    if data.startswith(JPEG_SOI):
        try:
            new = jpeg_region.add_restarts(data, max_pixels)
        except ValueError as exc:  # ImageTooLargeError included
            note = f"{src}: libjpeg cannot rewrite it ({exc}); copied as it is"
        else:
            if _same_pixels(data, new):
                _write_atomic(out, new, src)
                return FileResult("rewritten", len(data), len(new))
            note = f"{src}: the rewritten file decodes differently; copied as it is"  # never expected
    _write_atomic(out, data, src)
    return FileResult("copied", len(data), len(data), note)


def _prepare_pair(pair: tuple[str, str], max_pixels: int | None = None) -> FileResult:
    start = time.process_time()
    result = prepare_file(Path(pair[0]), Path(pair[1]), max_pixels)
    result.cpu_s = time.process_time() - start
    return result


def _copy_after_crash(pair: tuple[str, str], how: str) -> FileResult:
    """A file whose rewrite killed the process: the source as it is (pure Python, no libjpeg)."""
    src, out = Path(pair[0]), Path(pair[1])
    data = src.read_bytes()
    _write_atomic(out, data, src)
    return FileResult("copied", len(data), len(data), f"{src}: rewriting it {how}; copied as it is")


def _child(conn, worker, pair, max_pixels) -> None:
    try:
        conn.send((True, worker(pair, max_pixels)))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
        conn.send((False, exc))
    conn.close()


def _isolated(ctx, worker, pair: tuple[str, str], max_pixels: int | None) -> FileResult:
    """``worker(pair)`` alone in a fresh process: its exit status names a crash."""
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, worker, pair, max_pixels), daemon=True)
    proc.start()
    child.close()
    try:
        ok, value = parent.recv()
    except EOFError:  # died before sending anything
        ok, value = None, None
    proc.join()
    if ok is None:
        code = proc.exitcode
        how = (f"killed its worker process ({signal.Signals(-code).name})" if code is not None and code < 0
               and -code in signal.valid_signals() else f"made its worker process exit (status {code})")
        return _copy_after_crash(pair, how)
    if not ok:
        raise value
    return value


def _run_workers(pairs: list[tuple[str, str]], workers: int, max_pixels: int | None, worker, report) -> None:
    """``worker(pair, max_pixels)`` for every pair in ``workers`` processes, ``report(result)``
    for each. A worker that dies breaks the whole pool (BrokenProcessPool, never a hang); the
    files in flight then run one per process, the one that kills its process again is copied as
    it is with a note, and the pool restarts for the rest."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # no fork of a process holding threads (tqdm) or libjpeg state
    todo = deque(pairs)
    while todo:
        suspects = []
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            running = {}
            try:
                while todo or running:
                    while todo and len(running) < 4 * workers:  # a bounded number in flight: few suspects
                        pair = todo.popleft()
                        running[pool.submit(worker, pair, max_pixels)] = pair
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        result = future.result()  # BrokenProcessPool when a worker died
                        del running[future]
                        report(result)
            except BrokenProcessPool:
                for future, pair in running.items():
                    if future.done() and not future.cancelled() and future.exception() is None:
                        report(future.result())  # finished before the pool broke
                    else:
                        suspects.append(pair)
        for pair in suspects:
            report(_isolated(ctx, worker, pair, max_pixels))


def prepare_folder(src: str | Path, out: str | Path, workers: int = 1, progress: bool = True,
                   max_pixels: int | None = None, worker=_prepare_pair) -> dict:
    """Mirror ``src`` into ``out`` (same relative paths). Returns counts, byte totals and
    ``cpu_seconds``, the workers' CPU time (the files are prepared in worker processes, so the
    caller's own ``time.process_time()`` does not see it).
    ``worker(pair, max_pixels)`` prepares one (src, out) pair of paths in a worker process
    (a picklable function; tests pass one that crashes)."""
    from tqdm import tqdm

    from . import jpeg_region
    from .images import max_image_pixels

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src} is not a folder")
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ValueError(f"--out {out} must not be --src or inside it")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    max_pixels = max_image_pixels(max_pixels)  # a bad environment variable fails here, not per file
    if jpeg_region.load() is None:
        raise OSError("the JPEG helper library is unavailable (it needs a C compiler and libjpeg-dev)")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    pairs = [(str(p), str(out / p.relative_to(src))) for p in files]
    totals = {"rewritten": 0, "copied": 0, "skipped": 0, "src_bytes": 0, "out_bytes": 0, "cpu_seconds": 0.0,
              "notes": []}
    bar = tqdm(total=len(pairs), desc="prepare-images", unit="file", disable=not progress, dynamic_ncols=True)

    def report(r: FileResult) -> None:
        _count(totals, r)
        bar.update()

    try:
        _run_workers(pairs, workers, max_pixels, worker, report)
    finally:
        bar.close()
    return totals


def _count(totals: dict, r: FileResult) -> None:
    totals[r.kind] += 1
    totals["src_bytes"] += r.src_bytes
    totals["out_bytes"] += r.out_bytes
    totals["cpu_seconds"] += r.cpu_s
    if r.note:
        totals["notes"].append(r.note)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vitpose-scale prepare-images",
                                 description="Copy an image folder, rewriting its JPEGs losslessly with a restart "
                                             "marker per MCU so that training decodes only what a crop reads.")
    ap.add_argument("--src", required=True, help="image folder (searched recursively)")
    ap.add_argument("--out", required=True, help="output folder (same relative paths)")
    ap.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    ap.add_argument("--max-pixels", type=int, default=None,
                    help="copy JPEGs of more pixels as they are (default: $VITPOSE_SCALE_MAX_IMAGE_PIXELS, "
                         "else 2**30 as OpenCV)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    try:
        t = prepare_folder(args.src, args.out, args.workers, progress=sys.stderr.isatty(),
                           max_pixels=args.max_pixels)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"prepare-images: {exc}", file=sys.stderr)
        return 2
    for note in t["notes"]:
        print(f"note: {note}", file=sys.stderr)
    growth = 100.0 * (t["out_bytes"] - t["src_bytes"]) / max(1, t["src_bytes"])
    print(f"{t['rewritten']} JPEGs rewritten with per-MCU restart markers and verified, {t['copied']} files copied "
          f"as they are, {t['skipped']} already done; {t['src_bytes'] / 1e6:.1f} MB -> {t['out_bytes'] / 1e6:.1f} MB "
          f"({growth:+.1f} %) into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
