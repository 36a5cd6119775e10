#!/usr/bin/env python
"""Hostile JPEGs for the image readers, rebuilt from the bundled COCO images (no binary blobs).

Each case is a file that crashed, hung or silently mis-decoded an earlier jpeg_region.c /
images.py / prepare-images (tests/test_jpeg_hostile.py checks every one of them), made
deterministically from data/coco_sample, so the corpus needs no committed binaries:

    python scripts/jpeg_corpus.py --out /tmp/corpus           # the regression cases
    python scripts/jpeg_corpus.py --out /tmp/corpus --seeds   # + small variants to mutate
                                                              #   (scripts/fuzz_jpeg_asan.sh)

The restart-marked cases need the compiled helper (vitpose_scale.data.jpeg_region).
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "coco_sample"
PHOTO = "000000000785.jpg"  # 640x425, 4:2:0, JFIF + COM + ICC: an ordinary camera-roll JPEG


@dataclass
class Case:
    data: bytes
    size_hw: tuple[int, int] | None  # what the file declares (None: nothing usable)
    what: str
    tags: list[str] = field(default_factory=list)


def segments(jpeg: bytes) -> list[tuple[int, int, int]]:
    """(offset, marker, length) of the header segments, up to and including SOS."""
    out, p = [], 2
    while p + 4 <= len(jpeg):
        marker = jpeg[p + 1]
        length = struct.unpack(">H", jpeg[p + 2:p + 4])[0]
        out.append((p, marker, length))
        if marker == 0xDA:
            break
        p += 2 + length
    return out


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def with_exif_thumbnail(jpeg: bytes, thumb_side: int = 160, thumb_of: bytes | None = None) -> bytes:
    """``jpeg`` with the APP1 Exif segment a camera writes: IFD0 (orientation 1) and IFD1
    pointing at a JPEG thumbnail of the picture (or of ``thumb_of``; about 9 KB for the bundled
    photo, over libjpeg's 4 KB first output buffer)."""
    img = cv2.imdecode(np.frombuffer(thumb_of or jpeg, np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    thumb = cv2.imencode(".jpg", cv2.resize(img, (thumb_side, max(1, thumb_side * h // w))),
                         [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    # TIFF header, IFD0 with Orientation=1, IFD1 with JPEGInterchangeFormat(+Length)
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 1, 0)
    ifd1_at = 8 + len(ifd0) + 4
    ifd1 = struct.pack("<H", 2)
    thumb_at = ifd1_at + 2 + 2 * 12 + 4
    ifd1 += struct.pack("<HHII", 0x0201, 4, 1, thumb_at) + struct.pack("<HHII", 0x0202, 4, 1, len(thumb))
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd0 + struct.pack("<I", ifd1_at) + ifd1 + struct.pack("<I", 0)
    return jpeg[:2] + _segment(0xE1, b"Exif\x00\x00" + tiff + thumb) + jpeg[2:]


def with_damaged_dc_table(jpeg: bytes) -> bytes:
    """The first DC Huffman table's first symbol (a short, frequent code) set to category 15:
    libjpeg reads the file (with a corrupt-data warning at the end) into DC values that baseline
    coding cannot hold, so the rewrite fails late, after the markers were written."""
    out = bytearray(jpeg)
    for p, marker, _ in segments(jpeg):
        if marker == 0xC4 and jpeg[p + 4] >> 4 == 0:  # class 0: DC
            first_symbol = p + 4 + 1 + 16
            out[first_symbol] = 15
            return bytes(out)
    raise ValueError("no DC Huffman table")


def _bits_to_bytes(bits: str) -> bytes:
    bits += "1" * (-len(bits) % 8)  # pad with ones, as encoders do
    raw = int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
    return raw.replace(b"\xff", b"\xff\x00")  # byte stuffing


def dc_overflow_jpeg(blocks_side: int = 4) -> bytes:
    """A syntactically valid grey baseline JPEG (no corrupt-data warning) whose DC differences
    of +-2047 add up to DC values of 4094: libjpeg reads it, but re-coding each MCU on its own
    (restart interval 1: the difference is the value) fails with "DCT coefficient out of range"
    after the header and markers were written."""
    side = 8 * blocks_side
    dqt = _segment(0xDB, b"\x00" + b"\x01" * 64)
    sof = _segment(0xC0, b"\x08" + struct.pack(">HH", side, side) + b"\x01" + b"\x01\x11\x00")
    # DC: two 2-bit codes, 00 -> category 11, 01 -> category 0. AC: one 1-bit code, 0 -> EOB.
    dht_dc = _segment(0xC4, b"\x00" + bytes([0, 2] + [0] * 14) + bytes([11, 0]))
    dht_ac = _segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + bytes([0x00]))
    sos = _segment(0xDA, b"\x01" + b"\x01\x00" + b"\x00\x3f\x00")
    bits = ""
    for i in range(blocks_side * blocks_side):
        diff_up = i % 4 < 2  # DC: 2047, 4094, 2047, 0, 2047, 4094, ...
        bits += "00" + ("1" * 11 if diff_up else "0" * 11) + "0"
    return b"\xff\xd8" + dqt + sof + dht_dc + dht_ac + sos + _bits_to_bytes(bits) + b"\xff\xd9"


def bomb(jpeg: bytes, height: int, width: int, data: bytes = b"\x12\x34\x56\x78") -> bytes:
    """The tables of ``jpeg`` with a frame header declaring height x width pixels and a few
    bytes of scan data: a few hundred bytes that claim gigapixels."""
    out = b"\xff\xd8"
    for p, marker, length in segments(jpeg):
        seg = jpeg[p:p + 2 + length]
        if marker in (0xDB, 0xC4):
            out += seg
        elif marker == 0xC0:
            out += seg[:5] + struct.pack(">HH", height, width) + seg[9:]
        elif marker == 0xDA:
            out += seg
    return out + data + b"\xff\xd9"


def header_with_short_sos(jpeg: bytes) -> bytes:
    """``jpeg``'s header with a restart interval of 1, ending in a 2-byte SOS segment (its
    length field and nothing after it): the SOS parser must not read the component count that
    should follow."""
    out = b"\xff\xd8"
    for p, marker, length in segments(jpeg):
        if marker == 0xDA:
            break
        out += jpeg[p:p + 2 + length]
    return out + _segment(0xDD, struct.pack(">H", 1)) + b"\xff\xda\x00\x02"


def progressive_first_scans(jpeg: bytes, keep: int) -> bytes:
    """A progressive ``jpeg`` cut after its first ``keep`` scans, with an end-of-image marker:
    complete-looking, but its AC coefficients are never refined, so libjpeg smooths its blocks
    (reading DC values up to two blocks away, and taking a crop's edge for the image's)."""
    p, scans = segments(jpeg)[-1][0], 0  # the first SOS
    while p + 4 <= len(jpeg):
        marker = jpeg[p + 1]
        if marker == 0xD9:
            break
        if marker == 0xDA:
            if scans == keep:
                break
            scans += 1
            p += 2 + struct.unpack(">H", jpeg[p + 2:p + 4])[0]
            while True:  # entropy-coded data: up to the next marker that is not RSTn
                p = jpeg.index(b"\xff", p)
                if jpeg[p + 1] == 0x00 or 0xD0 <= jpeg[p + 1] <= 0xD7:
                    p += 2
                elif jpeg[p + 1] == 0xFF:
                    p += 1
                else:
                    break
        else:  # tables between scans (DHT)
            p += 2 + struct.unpack(">H", jpeg[p + 2:p + 4])[0]
    return jpeg[:p] + b"\xff\xd9"


def rst_marker_offsets(jpeg: bytes) -> list[int]:
    """Offsets of the RSTn markers in the (first) scan's entropy-coded data."""
    p, offsets = segments(jpeg)[-1][0], []
    p += 2 + struct.unpack(">H", jpeg[p + 2:p + 4])[0]
    while True:
        p = jpeg.find(b"\xff", p)
        if p < 0 or p + 1 >= len(jpeg):
            return offsets
        b = jpeg[p + 1]
        if 0xD0 <= b <= 0xD7:
            offsets.append(p)
        elif b not in (0x00, 0xFF):
            return offsets  # EOI
        p += 2 if b != 0xFF else 1


def rst_misnumbered(rst: bytes, k: int, by: int = 1) -> bytes:
    """Marker k (RST k%8) renumbered to RST (k+by)%8. For by = 1 or 2 libjpeg's resync takes
    the markers in between as lost and decodes empty intervals until the count catches up (for
    -1, -2 it skips an interval's data; further off it takes the marker as the due one)."""
    at = rst_marker_offsets(rst)[k]
    return rst[:at + 1] + bytes([0xD0 + (k + by) % 8]) + rst[at + 2:]


def rst_moved(rst: bytes, k: int, by: int = 3) -> bytes:
    """Marker k taken out and put back ``by`` intervals later: the marker count is right, the
    numbering is not (k+1, ..., k+by, k), and intervals k..k+by now split at other places."""
    offsets = rst_marker_offsets(rst)
    at, to = offsets[k], offsets[k + by]
    marker = rst[at:at + 2]
    return rst[:at] + rst[at + 2:to] + marker + rst[to:]


def regression_cases(sample: Path = SAMPLE) -> dict[str, Case]:
    """Every input that broke an earlier version, with what it broke."""
    from vitpose_scale.data import jpeg_region

    photo = (sample / PHOTO).read_bytes()
    h, w = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    rst = jpeg_region.add_restarts(photo)
    return {
        "exif_thumbnail_damaged_dc_table": Case(
            with_damaged_dc_table(with_exif_thumbnail(photo)), (h, w),
            "damaged JPEG with a 9 KB Exif thumbnail: double free in vps_add_restarts (prepare-images abort, "
            "hang with --workers 2)", ["crash", "rewrite"]),
        "exif_thumbnail_dc_overflow": Case(
            with_exif_thumbnail(dc_overflow_jpeg(), thumb_of=photo), (32, 32),
            "valid grey JPEG with an Exif thumbnail whose rewrite fails after the markers: the same double free "
            "without any corrupt-data warning", ["crash", "rewrite"]),
        "short_sos_at_end": Case(
            header_with_short_sos(photo), (h, w),
            "2-byte SOS segment ending the buffer: one-byte over-read in rst_parse", ["overread"]),
        "rst_misnumbered": Case(
            rst_misnumbered(rst, 37), (h, w),
            "restart-marked file with one RST marker misnumbered: the cut path decoded other pixels than a "
            "whole decode", ["pixels"]),
        "rst_moved": Case(
            rst_moved(rst, 200), (h, w),
            "restart-marked file with one RST marker moved 3 intervals on: wrong pixels on the cut path",
            ["pixels"]),
        "progressive_dc_only": Case(
            progressive_first_scans(cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(photo, np.uint8),
                                                                      cv2.IMREAD_COLOR),
                                                 [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(), 1), (h, w),
            "progressive file with its DC scan only (found by the ASan fuzz): libjpeg smooths the blocks, so the "
            "cropped window path differed from a whole decode at the crop's edges and the 'lossless' rewrite was "
            "not", ["pixels", "rewrite"]),
        "bomb_32768": Case(
            bomb(photo, 32768, 32768), (32768, 32768),
            "a few hundred bytes declaring 32768x32768 (= 2^30, at the limit): prepare-images spent 22 s and "
            "2.2 GB and wrote 50 MB of grey, 'rewritten and verified'", ["bomb"]),
        "bomb_65500": Case(
            bomb(photo, 64206, 65500), (64206, 65500),
            "65500x64206 declared (over the 2^30 limit): read_rgb refused it, the window path decoded it",
            ["bomb"]),
        "empty": Case(b"", None, "0-byte file: a raw cv2 assertion instead of a message naming the file",
                      ["message"]),
    }


def fuzz_seeds(sample: Path = SAMPLE) -> dict[str, bytes]:
    """Small, varied JPEGs to mutate: every sampling and coding the decoder has branches for
    (the fuzz driver adds the restart-marked rewrite of each). Small keeps an ASan run fast."""
    from PIL import Image

    photo = cv2.imdecode(np.frombuffer((sample / PHOTO).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    crop = photo[100:148, 200:261]  # 61x48: partial MCUs on both edges
    modes = {
        "420": [cv2.IMWRITE_JPEG_QUALITY, 90],
        "444": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444],
        "422": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422],
        "411": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411],
        "440": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440],
        "progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
        "rst3": [cv2.IMWRITE_JPEG_RST_INTERVAL, 3],
    }
    seeds = {f"crop_{name}": cv2.imencode(".jpg", crop, params)[1].tobytes() for name, params in modes.items()}
    seeds["crop_grey"] = cv2.imencode(".jpg", crop[..., 1])[1].tobytes()
    import io

    buf = io.BytesIO()
    Image.fromarray(crop[..., ::-1]).convert("CMYK").save(buf, format="JPEG", quality=90)
    seeds["crop_cmyk"] = buf.getvalue()
    seeds["crop_exif_thumbnail"] = with_exif_thumbnail(seeds["crop_420"], thumb_side=48)
    seeds["dc_overflow"] = dc_overflow_jpeg()
    seeds["small_photo"] = cv2.imencode(".jpg", cv2.resize(photo, (160, 106)))[1].tobytes()
    return seeds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="folder to write the files into")
    ap.add_argument("--seeds", action="store_true", help="also write the fuzzing seeds (seed_*.jpg)")
    ap.add_argument("--sample", type=Path, default=SAMPLE, help="the bundled images (default data/coco_sample)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    index = {}
    for name, case in regression_cases(args.sample).items():
        (args.out / f"{name}.jpg").write_bytes(case.data)
        index[name] = {"size_hw": case.size_hw, "what": case.what, "tags": case.tags, "bytes": len(case.data)}
    if args.seeds:
        for name, data in fuzz_seeds(args.sample).items():
            (args.out / f"seed_{name}.jpg").write_bytes(data)
    (args.out / "cases.json").write_text(json.dumps(index, indent=1) + "\n")
    print(f"{len(index)} regression cases{' and the fuzzing seeds' if args.seeds else ''} in {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
