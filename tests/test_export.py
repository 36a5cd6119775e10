"""`vitpose-scale export`: Hugging Face directory, ONNX, safetensors; each read back by its own runtime."""
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from vitpose_scale.cli import main as cli
from vitpose_scale.config import load_config
from vitpose_scale.engine.distributed import DistInfo
from vitpose_scale.export import ONNX_OPSET
from vitpose_scale.models.weights import load_weights
from vitpose_scale.keypoints import get_spec
from vitpose_scale.models.interop import export_official
from vitpose_scale.models.pose import build_pose_model

ROOT = Path(__file__).resolve().parents[1]
# The demo model with the official classic head width (Hugging Face's classic decoder has 256 channels).
SETS = ["model.head_channels=256", "model.activation_checkpointing=false"]

from hf_loading import load_hf_quietly  # noqa: E402
from random_models import random_model  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as training leaves it: config.yaml and best.pth (official layout)."""
    cfg = load_config(ROOT / "configs" / "demo.yaml", SETS)
    run = tmp_path_factory.mktemp("run")
    cfg.save(run / "config.yaml")
    model = random_model(cfg)
    export_official(model, run / "best.pth", meta={"step": 7})
    return run, cfg, model


def _images(cfg, n, seed=1):
    return torch.randn(n, 3, *cfg.model.image_size, generator=torch.Generator().manual_seed(seed))


def test_hf_directory_loads_in_transformers_with_every_weight_and_equal_output(run_dir, tmp_path):
    pytest.importorskip("transformers")
    run, cfg, ours = run_dir
    out = tmp_path / "hf"
    assert cli(["export", "--checkpoint", str(run / "best.pth"), "--format", "hf", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    config = json.loads((out / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(17)] == list(get_spec("coco").names)
    assert config["id2label"]["0"] == "nose" and [15, 13] in config["edges"] and len(config["edges"]) == 19
    assert config["backbone_config"]["image_size"] == list(cfg.model.image_size)

    theirs, info, emitted = load_hf_quietly(out)
    assert emitted == []  # no warning of any kind
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set() and info["error_msgs"] == []
    x = _images(cfg, 2)
    with torch.no_grad():
        expected = ours(x)
        got = theirs.eval()(pixel_values=x).heatmaps
    assert expected.abs().max() > 0.1  # heatmaps of order 1, so 1e-5 is a real bound
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    # ... and back: train.init_from accepts the directory.
    from vitpose_scale.engine.trainer import _init_weights_from

    init_cfg = load_config(ROOT / "configs" / "demo.yaml", SETS + [f"train.init_from={out}"])
    target = build_pose_model(init_cfg.model)
    _init_weights_from(target, init_cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    for key, value in ours.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_hf_export_refuses_a_head_transformers_cannot_hold(tmp_path, capsys):
    pytest.importorskip("transformers")
    sets = ["model.head_channels=320", "model.depth=1", "model.image_size=[64,48]"]
    cfg = load_config(ROOT / "configs" / "demo.yaml", sets)  # wider than transformers' 256 (narrower is padded)
    export_official(build_pose_model(cfg.model), tmp_path / "w.pth")
    # The model config, not the checkpoint, is what the format cannot hold: a config error, exit 2.
    assert cli(["export", "--checkpoint", str(tmp_path / "w.pth"), "--config", str(ROOT / "configs" / "demo.yaml"),
                *[a for kv in sets for a in ("--set", kv)], "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"config error: model\.head_channels: 320.*expected at most 256", err[0])


def test_onnx_export_runs_in_onnxruntime_with_a_dynamic_batch(run_dir, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    run, cfg, ours = run_dir
    path = tmp_path / "vitpose.onnx"
    assert cli(["export", "--checkpoint", str(run / "best.pth"), "--format", "onnx", "--out", str(path)]) == 0
    graph = onnx.load(str(path))
    assert [(o.domain, o.version) for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [("", ONNX_OPSET)]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    for batch in (1, 3):
        x = _images(cfg, batch, seed=batch)
        (got,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            expected = ours(x).numpy()
        assert got.shape == expected.shape == (batch, 17, *cfg.model.heatmap_size)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_safetensors_export_is_the_official_layout_without_pickle(run_dir, tmp_path):
    run, cfg, ours = run_dir
    path = tmp_path / "vitpose.safetensors"
    assert cli(["export", "--checkpoint", str(run / "best.pth"), "--format", "safetensors", "--out", str(path)]) == 0
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]  # safetensors: u64 header size, JSON header, raw tensor bytes
    header = json.loads(raw[8:8 + header_len])
    assert set(header) - {"__metadata__"} == set(ours.state_dict())
    assert header["backbone.pos_embed"]["dtype"] == "F32"
    loaded = build_pose_model(cfg.model)
    assert load_weights(loaded, path) == "safetensors"
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_export_without_a_config_names_the_missing_file(tmp_path, capsys):
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    export_official(build_pose_model(cfg.model), tmp_path / "lonely.pth")
    assert cli(["export", "--checkpoint", str(tmp_path / "lonely.pth"), "--format", "safetensors",
                "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "no --config given and no config.yaml next to it" in capsys.readouterr().err
