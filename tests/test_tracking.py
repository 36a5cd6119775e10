"""train.loggers: TensorBoard event files and an offline W&B run, read back with the tools' own readers."""
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from vitpose_scale.config import ConfigError, load_config
from vitpose_scale.engine.metrics import MetricsLog
from vitpose_scale.jsonl import read_jsonl
from vitpose_scale.engine.tracking import (TENSORBOARD_DIR, WANDB_ID_FILE, TensorBoardLogger, WandbLogger,
                                           check_loggers, scalars)

ROOT = Path(__file__).resolve().parents[1]
COCO_STATS = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]


def _events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A real 1-process training run (4 steps, evaluations at steps 2 and 4) with TensorBoard and W&B on."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from vitpose_scale.data.synthetic import generate_synthetic_coco

    tmp = tmp_path_factory.mktemp("tracked")
    generate_synthetic_coco(tmp / "data", 32, 6, seed=5)
    out = tmp / "run"
    sets = [f"train.output_dir={out}", f"data.root={tmp / 'data'}", "data.synthetic_train=32",
            "data.synthetic_val=6", "data.extra_train=[]", "train.batch_size=8", "train.max_steps=4",
            "train.log_every=1", "train.eval_every=2", "train.save_every=100", "eval.flip_test=false",
            "parallel.backend=none", "model.activation_checkpointing=false", "model.image_size=[128,96]",
            "train.loggers=[jsonl,tensorboard,wandb]"]
    args = [sys.executable, "launch/train.py", "--config", "configs/demo.yaml"]
    for s in sets:
        args += ["--set", s]
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}  # offline must be the default
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


def test_tensorboard_holds_every_metric_of_a_training_run(tracked_run):
    acc = _events(tracked_run / TENSORBOARD_DIR)
    tags = set(acc.Tags()["scalars"])
    rows = read_jsonl(tracked_run / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and [r["step"] for r in evals] == [2, 4]
    wanted = {"loss", "lr", "lr_group0", "grad_norm", "images_per_s", "tflops", "mfu"}
    assert {f"train/{k}" for k in wanted} | {"train/peak_mem_mb/rank0", "train/model_state_mb/rank0",
                                             "train/activation_mb/rank0"} <= tags
    assert {f"eval/{k}" for k in COCO_STATS} <= tags
    # Every scalar equals the metrics.jsonl record of its step (TensorBoard stores float32).
    for tag in tags:
        kind = tag.split("/")[0]
        expected = {r["step"]: v for r in rows if r["kind"] == kind for t, v in scalars(r).items() if t == tag}
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert got.keys() == expected.keys(), tag
        np.testing.assert_allclose(list(got.values()), [expected[s] for s in got], rtol=1e-6, err_msg=tag)
    lr0, lr = acc.Scalars("train/lr_group0")[-1].value, acc.Scalars("train/lr")[-1].value
    assert 0 < lr0 < lr  # layer-wise decay: the patch embedding's group learns slowest

    images = acc.Images("eval/predictions")
    assert [i.step for i in images] == [2, 4]
    import cv2

    png = cv2.imread(str(tracked_run / "eval" / "predictions_step00000004.png"))
    decoded = cv2.imdecode(np.frombuffer(images[-1].encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == png.shape and np.abs(decoded.astype(int) - png).max() <= 1


def test_wandb_run_of_a_training_run_holds_its_config_and_metrics(tracked_run):
    run_id = (tracked_run / WANDB_ID_FILE).read_text().strip()
    (run,) = (tracked_run / "wandb").glob(f"offline-run-*-{run_id}")
    records = _finished_wandb_records(run / f"run-{run_id}.wandb")
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update if item.key != "_wandb"}
    assert config == yaml.safe_load((tracked_run / "config.yaml").read_text())  # the resolved config
    history = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    logged = {(int(h["_step"]), k): v for h in history for k, v in h.items() if "/" in k}
    rows = read_jsonl(tracked_run / "metrics.jsonl")
    for r in rows:
        for tag, value in scalars(r).items():
            assert logged[(r["step"], tag)] == pytest.approx(value, rel=1e-12), tag
    media = run / "files" / logged[(4, "eval/predictions/path")]  # the skeleton figure, as a W&B image
    import cv2

    png = cv2.imread(str(tracked_run / "eval" / "predictions_step00000004.png"))
    assert cv2.imread(str(media)).shape == png.shape


def test_scalars_from_records():
    record = {"step": 5, "kind": "train", "time": 1.0, "loss": 0.5, "grad_norm": float("nan"), "ok": True,
              "peak_mem_mb_per_rank": [10.0, 12.5], "note": "x"}
    assert scalars(record) == {"train/loss": 0.5, "train/peak_mem_mb/rank0": 10.0, "train/peak_mem_mb/rank1": 12.5}


def test_tensorboard_logger_direct(tmp_path):
    pytest.importorskip("tensorboard")
    log = MetricsLog(tmp_path / "metrics.jsonl", True, [TensorBoardLogger(tmp_path / "tb")])
    log.write(step=1, kind="train", loss=2.0, peak_mem_mb_per_rank=[1.0, 3.0])
    rgb = np.zeros((8, 12, 3), np.uint8)
    rgb[2:5, 3:9] = (255, 0, 0)
    log.image("eval/predictions", rgb, 1)
    log.close()
    acc = _events(tmp_path / "tb")
    assert acc.Scalars("train/peak_mem_mb/rank1")[0].value == 3.0
    import cv2

    img = acc.Images("eval/predictions")[0]
    bgr = cv2.imdecode(np.frombuffer(img.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert (img.width, img.height) == (12, 8) and np.array_equal(bgr[..., ::-1], rgb)


def _wandb_records(path: Path) -> list:
    """The protobuf records of a .wandb file: a 7-byte W&B header, then a LevelDB-style log
    (32 KiB blocks; records of 7-byte header + payload, split FIRST/MIDDLE/LAST across blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, payloads, partial = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        partial = chunk if kind in (1, 2) else partial + chunk  # FULL/FIRST start, MIDDLE/LAST continue
        if kind in (1, 4):
            payloads.append(partial)
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def _finished_wandb_records(path: Path, timeout: float = 60.0) -> list:
    """The records once the run's exit record is in: wandb-core writes the file asynchronously and
    `finish()` can return before a second run of the same process is flushed."""
    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(path) if path.is_file() else []
        if (records and records[-1].WhichOneof("record_type") == "exit") or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def test_wandb_offline_run_holds_the_config_and_resumes_the_same_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the default must be offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["model.depth=3", "train.loggers=[jsonl,wandb]"])
    run_dir = tmp_path / "run"
    for step in (1, 2):  # a run, then its resumption in the same run directory
        log = MetricsLog(run_dir / "metrics.jsonl", True, [WandbLogger(run_dir, cfg.to_dict())])
        log.write(step=step, kind="train", loss=1.0 / step, peak_mem_mb_per_rank=[5.0])
        log.close()
    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    for step, run in zip((1, 2), runs):
        records = _finished_wandb_records(run / f"run-{run_id}.wandb")  # both offline runs: the one W&B run id
        (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run_record.run_id == run_id
        config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
        assert config["model"] == cfg.to_dict()["model"] and config["train"]["loggers"] == ["jsonl", "wandb"]
        history = [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
                   for r in records if r.WhichOneof("record_type") == "history"]
        assert [(h["_step"], h["train/loss"], h["train/peak_mem_mb/rank0"]) for h in history] == [(step, 1 / step, 5.0)]


def test_unknown_or_missing_logger_is_a_one_line_config_error(monkeypatch):
    with pytest.raises(ConfigError, match=r"train.loggers: got 'mlflow', expected some of"):
        check_loggers(["jsonl", "mlflow"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # what find_spec reports for an absent package
    with pytest.raises(ConfigError) as err:
        check_loggers(["jsonl", "wandb"])
    assert "needs the Python package 'wandb'" in str(err.value) and "\n" not in str(err.value)


def test_metrics_jsonl_alone_by_default(tmp_path):
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.train.loggers == ["jsonl"]
    log = MetricsLog(tmp_path / "m.jsonl", True)
    log.write(step=1, kind="train", loss=1.0)
    assert json.loads((tmp_path / "m.jsonl").read_text())["loss"] == 1.0 and log.loggers == []
