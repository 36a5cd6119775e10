"""Every command's failures as docs/operations.md "Exit codes" lists them: one line on stderr, no
traceback, exit 2 for a bad config or input, 4 for a checkpoint that is missing, damaged or unsafe.
One case per entry point (the `vitpose-scale` console script, launch/evaluate.py) is a real run in
a process of its own, where an import-time warning or a traceback would show; the others call the
same `main` in this process (a process start costs seconds), warnings counted as the lines they print."""
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from launch_env import launcher_env
from vitpose_scale.config import load_config
from vitpose_scale.models.interop import export_official
from vitpose_scale.models.pose import build_pose_model

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO = str(ROOT / "configs" / "demo.yaml")


def _fails_in_a_process(*argv, code):
    """Run `argv` (the vitpose-scale command unless it starts with python); its one stderr line."""
    cmd = [*argv] if argv[0] == sys.executable else [str(BIN / "vitpose-scale"), *argv]
    proc = subprocess.run(cmd, cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
    return lines[0]


@pytest.fixture
def _fails(capsys, monkeypatch):
    """`vitpose-scale *argv` through its `main` in this process: its exit code and its one stderr line."""
    from vitpose_scale.cli import main

    monkeypatch.chdir(ROOT)

    def fails(*argv, code):
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                got = main(list(argv))
            except SystemExit as exc:  # argparse and the commands that exit themselves
                got = exc.code
        out, err = capsys.readouterr()
        lines = err.strip().splitlines() + [f"warning: {w.message}" for w in caught]
        assert got == code and len(lines) == 1, (got, lines[-20:], out[-2000:])
        return lines[0]
    return fails


class _Exploit:
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Checkpoints of the demo model: intact, unsafe (pickled code), truncated, damaged safetensors."""
    d = tmp_path_factory.mktemp("ckpt")
    export_official(build_pose_model(load_config(DEMO).model), d / "good.pth")
    with open(d / "unsafe.pth", "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Exploit()}, f)
    (d / "truncated.pth").write_bytes((d / "good.pth").read_bytes()[:4096])
    (d / "damaged.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    return d


# ------------------------------------------------------------------- training config --
@pytest.mark.parametrize("override, message", [
    # demo.yaml has one extra set without a ratio: the ratio must then be on every set or none
    ("data.train_ratio=0.5", "config error: data.extra_train[0].ratio is not set while data.train_ratio is"),
    ("data.extra_train=[{root: data/coco_sample, ann: test_coco.json}]",
     "config error: data.extra_train[0]: got keys ['ann', 'root']; expected root, ann, images"),
])
def test_a_bad_training_set_is_a_config_error_before_any_work(override, message, tmp_path, _fails):
    line = _fails("train", "--config", DEMO, "--set", override, "--set", f"train.output_dir={tmp_path}", code=2)
    assert line.startswith(message)


# --------------------------------------------------------------------------- export --
def test_export_of_an_unsafe_checkpoint_exits_4(checkpoints, tmp_path):
    line = _fails_in_a_process("export", "--checkpoint", str(checkpoints / "unsafe.pth"), "--config", DEMO,
                  "--format", "safetensors", "--out", str(tmp_path / "x.safetensors"), code=4)
    assert line.startswith("checkpoint error: ") and "unsafe.pth" in line and "pickled" in line
    assert not (tmp_path / "x.safetensors").exists()


def test_export_of_a_damaged_safetensors_file_exits_4(checkpoints, tmp_path, _fails):
    line = _fails("export", "--checkpoint", str(checkpoints / "damaged.safetensors"), "--config", DEMO,
                  "--format", "safetensors", "--out", str(tmp_path / "x.safetensors"), code=4)
    assert line.startswith("checkpoint error: ") and "damaged.safetensors" in line


def test_export_without_a_config_is_an_input_error(checkpoints, tmp_path, _fails):
    line = _fails("export", "--checkpoint", str(checkpoints / "good.pth"), "--format", "safetensors",
                  "--out", str(tmp_path / "x.safetensors"), code=2)
    assert line.startswith("error: --checkpoint ") and "no --config given" in line


# ---------------------------------------------------------------------------- infer --
def test_infer_on_a_video_file_is_an_input_error(checkpoints, tmp_path, _fails):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    assert video.stat().st_size > 0
    line = _fails("infer", "--config", DEMO, "--checkpoint", str(checkpoints / "good.pth"), "--image", str(video),
                  "--out", str(tmp_path / "o.png"), code=2)
    assert line.startswith("error: image ") and "clip.mp4" in line


def test_infer_on_a_missing_image_is_an_input_error(checkpoints, tmp_path, _fails):
    line = _fails("infer", "--config", DEMO, "--checkpoint", str(checkpoints / "good.pth"),
                  "--image", str(tmp_path / "nope.jpg"), code=2)
    assert line == f"error: image {tmp_path / 'nope.jpg'} does not exist"


@pytest.mark.parametrize("name", ["truncated.pth", "missing.pth"])
def test_infer_with_a_damaged_or_missing_checkpoint_exits_4(checkpoints, coco_sample, tmp_path, name, _fails):
    line = _fails("infer", "--config", DEMO, "--checkpoint", str(checkpoints / name),
                  "--image", str(coco_sample / "000000000785.jpg"), "--out", str(tmp_path / "o.png"), code=4)
    assert line.startswith("checkpoint error: ") and name in line
    assert not (tmp_path / "o.png").exists()


# ------------------------------------------------------------------ eval and convert --
def test_eval_of_an_unsafe_checkpoint_exits_4_as_training_does(checkpoints, tmp_path):
    line = _fails_in_a_process(sys.executable, "launch/evaluate.py", "--config", DEMO, "--checkpoint",
                  str(checkpoints / "unsafe.pth"), "--out", str(tmp_path), code=4)
    assert line.startswith("checkpoint error: ") and "unsafe.pth" in line


def test_convert_of_a_truncated_file_exits_4(checkpoints, tmp_path, _fails):
    line = _fails("convert", "--checkpoint", str(checkpoints / "truncated.pth"), "--out", str(tmp_path / "c.pth"),
                  code=4)
    assert "truncated.pth" in line


def test_plan_with_nothing_that_fits_exits_2(_fails):
    line = _fails("plan", "--config", str(ROOT / "configs" / "vitpose_g_576x432.yaml"), "--gpus", "1",
                  "--gpu-mem", "1", code=2)
    assert line == "plan: nothing fits in 1 GB per GPU"
