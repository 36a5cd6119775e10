"""Partial JPEG decoding (data.window_decode): the pixels a crop reads are those of a whole decode."""
import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vitpose_scale.config import DataConfig
from vitpose_scale.data import jpeg_region
from vitpose_scale.data.coco import TopDownCocoDataset
from vitpose_scale.data.images import read_rgb, read_rgb_window
from vitpose_scale.data.transforms import TopDownTransform, sample_rng

ROOT = Path(__file__).resolve().parents[1]


def test_the_decoder_builds_here():
    """The suite machine has a compiler and libjpeg-dev: the fast path must really be taken."""
    assert jpeg_region.load() is not None


def _windows(h, w, rng):
    yield 0, 0, w, h
    yield 0, h - 1, 1, h  # the last pixel only
    yield w - 1, 0, w, 1
    yield 5, 7, 6, 8  # one pixel inside a block
    for _ in range(40):
        x0, x1 = sorted(rng.integers(0, w + 1, size=2))
        y0, y1 = sorted(rng.integers(0, h + 1, size=2))
        yield int(x0), int(y0), int(x1) + 1, int(y1) + 1


def _assert_window_equal(path, whole, rng):
    h, w = whole.shape[:2]
    for x0, y0, x1, y1 in _windows(h, w, rng):
        got = read_rgb_window(path, (h, w), (x0, y0, x1, y1))
        assert got.shape == whole.shape and got.dtype == np.uint8
        x1, y1 = min(x1, w), min(y1, h)
        np.testing.assert_array_equal(got[y0:y1, x0:x1], whole[y0:y1, x0:x1], err_msg=str((x0, y0, x1, y1)))


def test_windows_of_the_coco_images_equal_the_whole_decode(coco_sample):
    rng = np.random.default_rng(0)
    for path in sorted(coco_sample.glob("*.jpg")):
        _assert_window_equal(path, read_rgb(path), rng)


def _noise_image(h, w, seed=1):
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8), (w, h))
    return np.clip(base.astype(int) + rng.integers(-20, 21, size=base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name,params,size", [
    ("baseline 4:2:0", [cv2.IMWRITE_JPEG_QUALITY, 90], (53, 37)),
    ("progressive", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], (120, 161)),
    ("4:4:4", [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444], (99, 130)),
    ("4:2:2", [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422], (64, 200)),
    ("restart markers", [cv2.IMWRITE_JPEG_RST_INTERVAL, 3], (90, 90)),
])
def test_windows_of_unusual_jpegs_equal_the_whole_decode(tmp_path, name, params, size):
    path = tmp_path / "x.jpg"
    ok, buf = cv2.imencode(".jpg", _noise_image(*size), params)
    path.write_bytes(buf.tobytes())
    _assert_window_equal(path, read_rgb(path), np.random.default_rng(2))


def test_greyscale_jpeg_windows_equal_the_whole_decode(tmp_path):
    path = tmp_path / "grey.jpg"
    path.write_bytes(cv2.imencode(".jpg", _noise_image(70, 45)[..., 0])[1].tobytes())
    whole = read_rgb(path)
    assert whole.ndim == 3 and (whole[..., 0] == whole[..., 2]).all()
    _assert_window_equal(path, whole, np.random.default_rng(3))


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 Exif segment whose IFD0 holds one Orientation entry."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_files_the_window_decoder_leaves_to_opencv_decode_exactly_as_read_rgb(tmp_path):
    """EXIF-rotated and CMYK JPEGs, PNGs, a size other than the annotation's: decoded whole."""
    from PIL import Image

    img = _noise_image(40, 64)
    plain = cv2.imencode(".jpg", img)[1].tobytes()
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(_with_exif_orientation(plain, 6))
    assert read_rgb(rotated).shape[:2] == (64, 40), "OpenCV applies the EXIF rotation"
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(img).convert("CMYK").save(cmyk, format="JPEG", quality=90)
    png = tmp_path / "x.png"
    png.write_bytes(cv2.imencode(".png", img)[1].tobytes())
    for path, size in [(rotated, (40, 64)), (cmyk, (40, 64)), (png, (40, 64)), (rotated, (64, 40))]:
        np.testing.assert_array_equal(read_rgb_window(path, size, (3, 4, 20, 30)), read_rgb(path))
    # a JPEG whose real size differs from the expected one: whole image, so the caller's size check fires
    other = tmp_path / "other.jpg"
    other.write_bytes(plain)
    assert read_rgb_window(other, (41, 64), (0, 0, 5, 5)).shape == (40, 64, 3)
    status, _, _ = jpeg_region.decode_window(plain, (41, 64), (0, 0, 5, 5))
    assert status == jpeg_region.SIZE_MISMATCH


def test_a_corrupt_jpeg_fails_or_decodes_as_read_rgb_does(tmp_path):
    data = bytearray(cv2.imencode(".jpg", _noise_image(64, 64))[1].tobytes())
    data[30:60] = b"\x00" * 30  # inside the quantisation tables / header
    path = tmp_path / "bad.jpg"
    path.write_bytes(bytes(data))
    try:
        expected = read_rgb(path)
    except Exception as exc:  # noqa: BLE001 - the same exception type and text are the contract
        with pytest.raises(type(exc), match="cannot be decoded"):
            read_rgb_window(path, (64, 64), (0, 0, 64, 64))
    else:
        np.testing.assert_array_equal(read_rgb_window(path, (64, 64), (0, 0, 64, 64)), expected)
    # a truncated file is refused before any decoding, with read_rgb's message
    path.write_bytes(bytes(data[:-40]))
    with pytest.raises(ValueError, match="truncated"):
        read_rgb_window(path, (64, 64), (0, 0, 64, 64))


def test_the_source_window_holds_every_pixel_the_warp_reads():
    """Zeroing everything outside the window changes no crop, for extreme scales and rotations."""
    cfg = DataConfig(rot_factor=80.0, rot_prob=1.0, scale_factor=0.9)
    transform = TopDownTransform(image_size=(256, 192), cfg=cfg)
    img = _noise_image(300, 417)
    joints = np.zeros((17, 3), dtype=np.float32)
    for i in range(200):
        rng = np.random.default_rng(i)
        center = rng.uniform([-50, -50], [467, 350])
        scale = rng.uniform(5, 700, size=2)
        geometry = transform.plan(img.shape[:2], joints, center, scale, sample_rng(0, 0, i))
        x0, y0, x1, y1 = transform.source_window(geometry, img.shape[:2])
        masked = np.zeros_like(img)
        masked[y0:y1, x0:x1] = img[y0:y1, x0:x1]
        np.testing.assert_array_equal(transform.apply(masked, geometry)["img"],
                                      transform.apply(img, geometry)["img"], err_msg=f"draw {i}")


@pytest.mark.parametrize("train", [True, False])
def test_dataset_items_are_identical_with_and_without_window_decoding(coco_sample, train):
    kw = dict(root=coco_sample, ann_file="test_coco.json", img_dir=".", image_size=(256, 192), train=train,
              seed=0, uint8_images=True)
    window = TopDownCocoDataset(data_cfg=DataConfig(), **kw)
    whole = TopDownCocoDataset(data_cfg=DataConfig(window_decode=False), **kw)
    for epoch in range(6 if train else 1):
        window.set_epoch(epoch)
        whole.set_epoch(epoch)
        for i in range(len(window)):
            a, b = window[i], whole[i]
            assert torch.equal(a["img"], b["img"]), (epoch, i)
            assert torch.equal(a["target"], b["target"]) and torch.equal(a["target_weight"], b["target_weight"])


def test_without_a_compiler_the_loader_says_so_once_and_decodes_whole_images(tmp_path, coco_sample):
    path = sorted(coco_sample.glob("*.jpg"))[0]
    script = f"""
import numpy as np
from vitpose_scale.data.images import read_rgb, read_rgb_window
whole = read_rgb({str(path)!r})
for _ in range(3):
    got = read_rgb_window({str(path)!r}, whole.shape[:2], (10, 10, 50, 60))
    assert np.array_equal(got, whole)
print("same")
"""
    env = dict(os.environ, CC=str(tmp_path / "no-such-compiler"), VITPOSE_SCALE_BUILD_DIR=str(tmp_path / "build"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "same"
    notes = [line for line in done.stderr.splitlines() if "partial JPEG decoding is unavailable" in line]
    assert len(notes) == 1, done.stderr


# ------------------------------------------------ restart-marked copies (vitpose-scale prepare-images)
UNUSUAL = [("baseline 4:2:0", [cv2.IMWRITE_JPEG_QUALITY, 90], (53, 37)),
           ("progressive", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], (120, 161)),
           ("4:4:4", [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444], (99, 130)),
           ("4:2:2", [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422], (64, 200)),
           ("restart every 3 MCUs", [cv2.IMWRITE_JPEG_RST_INTERVAL, 3], (90, 90)),
           ("4:1:1", [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411], (83, 117)),
           ("4:4:0", [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440], (83, 117))]


def _rewritten(tmp_path, data, name="rst.jpg"):
    path = tmp_path / name
    path.write_bytes(jpeg_region.add_restarts(data))
    return path


def test_restart_marked_coco_images_decode_the_same_and_their_windows_equal_the_whole_decode(coco_sample, tmp_path):
    rng = np.random.default_rng(10)
    for src in sorted(coco_sample.glob("*.jpg")):
        whole = read_rgb(src)
        path = _rewritten(tmp_path, src.read_bytes(), src.name)
        assert not jpeg_region.has_mcu_restarts(src.read_bytes(), whole.shape[:2])
        assert jpeg_region.has_mcu_restarts(path.read_bytes(), whole.shape[:2])
        np.testing.assert_array_equal(read_rgb(path), whole)  # lossless
        _assert_window_equal(path, whole, rng)


@pytest.mark.parametrize("name,params,size", UNUSUAL + [("grey", None, (70, 45))])
def test_restart_marked_unusual_jpegs_take_the_cut_path_with_exact_windows(tmp_path, name, params, size):
    img = _noise_image(*size)
    data = (cv2.imencode(".jpg", img[..., 0])[1] if params is None else cv2.imencode(".jpg", img, params)[1]).tobytes()
    src = tmp_path / "src.jpg"
    src.write_bytes(data)
    whole = read_rgb(src)
    path = _rewritten(tmp_path, data)
    assert jpeg_region.has_mcu_restarts(path.read_bytes(), size)  # progressive sources come out sequential
    assert not jpeg_region.has_mcu_restarts(data, size)  # no markers, or not after every MCU
    np.testing.assert_array_equal(read_rgb(path), whole)
    _assert_window_equal(path, whole, np.random.default_rng(11))


def test_restart_marked_files_keep_their_exif_rotation_and_cmyk_still_decodes_whole(tmp_path):
    from PIL import Image

    img = _noise_image(40, 64)
    rotated = _with_exif_orientation(cv2.imencode(".jpg", img)[1].tobytes(), 6)
    path = _rewritten(tmp_path, rotated)
    assert read_rgb(path).shape[:2] == (64, 40)
    np.testing.assert_array_equal(read_rgb_window(path, (40, 64), (3, 4, 20, 30)), read_rgb(path))
    buf = io.BytesIO()
    Image.fromarray(img).convert("CMYK").save(buf, format="JPEG", quality=90)
    cmyk = _rewritten(tmp_path, buf.getvalue(), "cmyk.jpg")
    assert not jpeg_region.has_mcu_restarts(cmyk.read_bytes(), (40, 64))
    np.testing.assert_array_equal(read_rgb_window(cmyk, (40, 64), (3, 4, 20, 30)), read_rgb(cmyk))


def test_a_damaged_restart_marked_file_decodes_its_window_as_a_whole_decode_does(tmp_path):
    data = bytearray(jpeg_region.add_restarts(cv2.imencode(".jpg", _noise_image(96, 128))[1].tobytes()))
    rng = np.random.default_rng(12)
    scan = bytes(data).index(b"\xff\xda") + 20
    compared = 0
    for trial in range(6):
        bad = bytearray(data)
        at = int(rng.integers(scan, len(data) - 40))
        bad[at] ^= 0x5A
        path = tmp_path / f"bad{trial}.jpg"
        path.write_bytes(bytes(bad))
        whole = cv2.imdecode(np.frombuffer(bytes(bad), np.uint8), cv2.IMREAD_COLOR)
        if whole is None:
            continue
        got = read_rgb_window(path, (96, 128), (30, 20, 90, 70))
        np.testing.assert_array_equal(got[20:70, 30:90], whole[20:70, 30:90, ::-1], err_msg=f"byte {at}")
        compared += 1
    assert compared >= 3


def test_add_restarts_refuses_what_libjpeg_cannot_read():
    with pytest.raises(ValueError):
        jpeg_region.add_restarts(b"\xff\xd8not a jpeg at all")


def test_prepare_images_rewrites_jpegs_copies_the_rest_and_the_dataset_gives_identical_items(coco_sample, tmp_path):
    from vitpose_scale.data.prepare_images import main

    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    for p in coco_sample.glob("*.jpg"):
        (src / p.name).write_bytes(p.read_bytes())
    (src / "nested" / "x.png").write_bytes(cv2.imencode(".png", _noise_image(20, 30))[1].tobytes())
    (src / "nested" / "fake.jpg").write_bytes(b"\xff\xd8not a jpeg")
    os.chmod(src / "nested" / "x.png", 0o640)
    out = tmp_path / "out"
    assert main(["--src", str(src), "--out", str(out), "--workers", "2"]) == 0
    for p in coco_sample.glob("*.jpg"):
        new = (out / p.name).read_bytes()
        assert new != p.read_bytes() and jpeg_region.has_mcu_restarts(new, read_rgb(p).shape[:2])
    assert (out / "nested" / "x.png").read_bytes() == (src / "nested" / "x.png").read_bytes()
    assert (out / "nested" / "x.png").stat().st_mode & 0o777 == 0o640
    assert (out / "nested" / "fake.jpg").read_bytes() == b"\xff\xd8not a jpeg"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["--src", str(src), "--out", str(out)]) == 0  # nothing left to do
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert main(["--src", str(src), "--out", str(src / "inside")]) == 2
    # Training reads the copy: the very same crops and targets, epoch after epoch
    kw = dict(ann_file=coco_sample / "test_coco.json", data_cfg=DataConfig(), image_size=(256, 192), train=True,
              seed=3, uint8_images=True)
    a = TopDownCocoDataset(coco_sample, img_dir=coco_sample, **kw)
    b = TopDownCocoDataset(coco_sample, img_dir=out, **kw)
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(len(a)):
            x, y = a[i], b[i]
            assert torch.equal(x["img"], y["img"]) and torch.equal(x["target"], y["target"])


def test_prepare_images_cli_is_listed_and_explains_a_missing_source(tmp_path, capsys):
    from vitpose_scale.cli import main

    assert main(["prepare-images", "--src", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "prepare-images: --src" in capsys.readouterr().err
    main([])
    assert "prepare-images" in capsys.readouterr().out
