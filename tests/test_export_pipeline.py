"""Exports used end to end: transformers' own pipeline (image processor, model, post-processing) against
`vitpose-scale infer`, the README's demo model in every format, single-file ONNX, and a Hugging Face
directory as its own config."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vitpose_scale.cli import main as cli
from vitpose_scale.config import ConfigError, load_config
from vitpose_scale.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, box_to_center_scale, crop_box,
                                           normalize_image, udp_heatmap_targets)
from vitpose_scale.export import export_hf, export_onnx, onnx_files
from vitpose_scale.models.weights import config_for_checkpoint, load_weights
from vitpose_scale.models.interop import CheckpointError, export_official
from vitpose_scale.models.pose import build_pose_model

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"

from hf_loading import load_hf_quietly  # noqa: E402
from random_models import random_model  # noqa: E402


def _sample_people(coco_sample):
    """(image path, [x, y, w, h] boxes) of every image of the COCO sample: its annotated people."""
    gt = json.loads((coco_sample / "test_coco.json").read_text())
    return [(coco_sample / im["file_name"],
             np.array([a["bbox"] for a in gt["annotations"] if a["image_id"] == im["id"] and a["num_keypoints"]]))
            for im in gt["images"]]


def _peaked_model(cfg, people):
    """A model with one clear, Gaussian-like peak per joint on every crop, moved a little by the image.

    Random weights give flat, noisy heatmaps on which any two decoders disagree by pixels (the
    sub-pixel step amplifies noise): no basis for comparing pipelines. Here the position embedding is
    made large (so features say where they are) and the final layer is fitted by least squares to
    sigma-2 Gaussians at fixed sub-pixel spots, as training would shape it; the image still moves the
    decoded joints (about 0.1 heatmap px), so the crops' pixels matter too."""
    torch.manual_seed(0)
    model = build_pose_model(cfg.model).eval()
    (in_h, in_w), (hm_h, hm_w) = cfg.model.image_size, cfg.model.heatmap_size
    k = cfg.model.num_keypoints
    rng = np.random.default_rng(0)
    spots = np.stack([rng.uniform(4, hm_w - 5, k), rng.uniform(4, hm_h - 5, k)], 1)
    stride = np.array([(in_w - 1) / (hm_w - 1), (in_h - 1) / (hm_h - 1)])
    target, _ = udp_heatmap_targets(spots * stride, np.ones(k), (in_h, in_w), (hm_h, hm_w))
    crops = []
    for path, boxes in people:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        for box in boxes:
            c, s = box_to_center_scale(box, in_w / in_h, cfg.data.bbox_padding)
            crops.append(normalize_image(crop_box(rgb, c, s, (in_h, in_w))))
    head = model.keypoint_head
    with torch.no_grad():
        model.backbone.pos_embed.normal_(0, 1.0)
        features = head.upsample(head.act(model.backbone(torch.from_numpy(np.stack(crops)))))
        cols = torch.nn.functional.unfold(features, 3, padding=1).transpose(1, 2).reshape(-1, 9 * features.shape[1])
        a = torch.cat([cols, torch.ones(len(cols), 1)], 1).double()
        t = torch.from_numpy(target).double().flatten(1).T.repeat(len(crops), 1)
        w = torch.linalg.solve(a.T @ a + 1e-3 * torch.eye(a.shape[1], dtype=a.dtype), a.T @ t)
        head.final_layer.weight.copy_(w[:-1].T.reshape(head.final_layer.weight.shape))
        head.final_layer.bias.copy_(w[-1])
    return model


def test_transformers_pipeline_equals_our_infer_with_its_blur_and_no_flip(coco_sample, tmp_path):
    """What separates transformers' pipeline from `vitpose-scale infer` on the same weights, measured on
    the 12 annotated people of the COCO sample (204 joints, this peaked model):

    * flip test: transformers' pipeline has none (its `flip_pairs` argument only mirrors the heatmaps
      back); infer flips by default (eval.flip_test) -> compare with --no-flip.
    * decode (the main part): `VitPoseImageProcessor.post_process_pose_estimation` runs the official
      UDP-DARK step but blurs with `gaussian_filter(sigma=0.8)` whatever `kernel_size` (default 11) says:
      kernel_size only sets the truncation radius. The official post_dark_udp (and our eval.decode
      udp_dark) blurs with cv2.GaussianBlur(11x11, sigma 0) = sigma 2. On identical heatmaps that moves
      joints by 0.61 px mean / 1.77 px max. OpenCV's sigma for a 3x3 kernel is 0.8, so
      `eval.blur_kernel=3` is transformers' blur: 0.08 mean / 0.30 max px left (its 11-tap truncation vs
      3 taps, and scipy's 'reflect' border vs OpenCV's reflect-101). Ours is the official protocol: the
      setting, not our code, changes.
    * crop: the same box -> center/scale (aspect fix, padding 1.25) and the same UDP affine; only the
      resampling differs (scipy's affine_transform vs cv2.warpAffine's 1/32-pixel fixed point): values
      within one grey level, except the one row/column of a crop that samples the last image pixel
      blended with the zero border (scipy gives other values there). That adds up to 0.1 px.
    Infer with --no-flip --set eval.blur_kernel=3: 0.09 px mean, 0.41 px max from transformers; with our
    defaults on this (not flip-symmetric) model, tens of pixels; without flip but blur 11: 1.84 px max.
    """
    transformers = pytest.importorskip("transformers")
    from vitpose_scale.eval.decode import decode_heatmaps
    from vitpose_scale.infer import run_inference

    cfg = load_config(DEMO, ["model.head=simple", "model.activation_checkpointing=false",
                             "eval.blur_kernel=3", "eval.decode=udp_dark"])
    people = _sample_people(coco_sample)
    model = _peaked_model(cfg, people)
    out = export_hf(model, cfg.model, tmp_path / "hf")
    processor = transformers.AutoImageProcessor.from_pretrained(str(out))
    theirs = transformers.VitPoseForPoseEstimation.from_pretrained(str(out)).eval()
    assert type(processor).__name__ == "VitPoseImageProcessor"
    (in_h, in_w), gaps, default_blur = cfg.model.image_size, [], []
    for path, boxes in people:
        bgr = cv2.imread(str(path))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        inputs = processor(images=rgb, boxes=[boxes.tolist()], return_tensors="pt")
        with torch.no_grad():
            outputs = theirs(**inputs)
        (poses,) = processor.post_process_pose_estimation(outputs, boxes=[boxes.tolist()])
        hf_xy = np.stack([p["keypoints"].numpy() for p in poses])
        ours = np.stack(run_inference(model, bgr, boxes, cfg, flip=False))
        assert ours[..., 2].min() > 0.5  # every joint a clear peak: the comparison measures decoding, not noise
        gaps.append(np.linalg.norm(ours[..., :2] - hf_xy, axis=-1))
        # the crop: our UDP affine against theirs, in grey levels
        ours_crops = []
        for box in boxes:
            c, s = box_to_center_scale(box, in_w / in_h, cfg.data.bbox_padding)
            ours_crops.append(crop_box(rgb, c, s, (in_h, in_w)).transpose(2, 0, 1))
        grey = np.abs(inputs["pixel_values"].numpy() * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]
                      - np.stack(ours_crops) / 255.0) * 255
        assert (grey > 1.01).mean() < 0.01  # beyond one grey level: only the image's border row/column
        # the decode alone, on transformers' own heatmaps: the official blur (11 <=> sigma 2) is not theirs
        centers, scales = zip(*(box_to_center_scale(b, in_w / in_h, 1.25) for b in boxes))
        official, _ = decode_heatmaps(outputs.heatmaps.numpy(), np.stack(centers), np.stack(scales),
                                      image_size=(in_h, in_w), method="udp_dark", kernel=11)
        default_blur.append(np.linalg.norm(official - hf_xy, axis=-1))
    gaps, default_blur = np.concatenate(gaps).ravel(), np.concatenate(default_blur).ravel()
    assert len(gaps) == 12 * 17
    assert gaps.max() < 0.5, (gaps.mean(), gaps.max())
    assert default_blur.max() > 1.0  # the blur is the protocol difference: with it left at 11 they disagree


def test_hf_export_writes_the_image_processor_of_the_models_input(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = load_config(DEMO, ["model.head=simple", "model.image_size=[128,96]"])
    out = export_hf(build_pose_model(cfg.model).eval(), cfg.model, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    processor = transformers.AutoImageProcessor.from_pretrained(str(out))
    assert type(processor).__name__ == "VitPoseImageProcessor"
    assert (processor.size["height"], processor.size["width"]) == (128, 96)  # not its 256x192 default
    np.testing.assert_allclose(processor.image_mean, IMAGENET_MEAN, rtol=1e-6)
    np.testing.assert_allclose(processor.image_std, IMAGENET_STD, rtol=1e-6)
    image = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    pixels = processor(images=image, boxes=[[[10.0, 20.0, 100.0, 150.0]]], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 128, 96)


def test_demo_model_exports_to_hf_and_onnx_with_equal_heatmaps(tmp_path):
    """The README's first model (configs/demo.yaml as it is: a 64-channel classic head, which the
    Hugging Face directory holds zero-padded to transformers' fixed 256) in transformers and in
    onnxruntime, and the directory read back as the 64-channel model."""
    transformers = pytest.importorskip("transformers")
    ort = pytest.importorskip("onnxruntime")
    cfg = load_config(DEMO)
    assert (cfg.model.head, cfg.model.head_channels) == ("classic", 64)
    model = random_model(cfg)
    x = torch.randn(2, 3, *cfg.model.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    assert expected.abs().max() > 0.1  # heatmaps of order 1, so the tolerances below are real bounds

    out = export_hf(model, cfg.model, tmp_path / "hf")
    theirs, info, emitted = load_hf_quietly(out)
    assert emitted == [] and info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()
    assert isinstance(theirs, transformers.VitPoseForPoseEstimation) and theirs.head.conv.in_channels == 256
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(pixel_values=x).heatmaps, expected, rtol=0, atol=1e-5)
    back = config_for_checkpoint(out, None, [])
    assert (back.model.head, back.model.head_channels) == ("classic", 64)
    again = build_pose_model(back.model).eval()
    load_weights(again, out)
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    # padding that no longer is (the directory fine-tuned in transformers): refused, not silently cut
    from safetensors.torch import load_file, save_file

    weights = load_file(str(out / "model.safetensors"))
    weights["head.batchnorm1.weight"][100] = 0.5
    save_file(weights, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"keypoint_head.deconv_layers.1.weight: channels 64.. are not the zero "
                                              r"padding of a 64-channel head"):
        load_weights(again, out)

    path = export_onnx(model, cfg.model, tmp_path / "onnx" / "demo.onnx")
    # One self-contained file: copied alone elsewhere, it still runs.
    assert onnx_files(path) == [path] and sorted(p.name for p in path.parent.iterdir()) == ["demo.onnx"]
    moved = tmp_path / "elsewhere" / "copy.onnx"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    session = ort.InferenceSession(str(moved), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=1e-4)


def test_onnx_weights_go_to_a_second_file_only_above_the_limit_and_the_message_names_both(
        tmp_path, monkeypatch, capsys):
    ort = pytest.importorskip("onnxruntime")
    import vitpose_scale.export as export

    sets = ["model.depth=1", "model.image_size=[64,48]"]
    cfg = load_config(DEMO, sets)
    run = tmp_path / "run"
    cfg.save(run / "config.yaml")
    export_official(random_model(cfg), run / "best.pth")
    out = tmp_path / "m.onnx"
    monkeypatch.setattr(export, "ONNX_SINGLE_FILE_BYTES", 0)  # stands for a model over 1.5 GiB
    assert cli(["export", "--checkpoint", str(run / "best.pth"), "--format", "onnx", "--out", str(out)]) == 0
    message = capsys.readouterr().out
    data = tmp_path / "m.onnx.data"
    assert onnx_files(out) == [out, data]
    assert f"wrote {out} and {data} (onnx: keep the two files together)" in message
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    # a smaller model written over it: one file again, the stale weights file gone
    monkeypatch.undo()
    assert cli(["export", "--checkpoint", str(run / "best.pth"), "--format", "onnx", "--out", str(out)]) == 0
    assert f"wrote {out} (onnx) from" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "run"]


@pytest.mark.parametrize("keypoint_set, sets", [("coco", []), ("aic", ["data.keypoint_set=aic", "model.head=classic",
                                                                       "model.head_channels=256"])])
def test_a_hugging_face_directory_is_its_own_config(tmp_path, keypoint_set, sets):
    pytest.importorskip("transformers")
    cfg = load_config(DEMO, ["model.depth=2", "model.image_size=[128,96]", *sets])
    model = random_model(cfg)
    out = export_hf(model, cfg.model, tmp_path / "run" / "hf", cfg.data.keypoint_set)
    # the run's config.yaml next to the directory says otherwise: the directory's config.json wins
    load_config(DEMO).save(tmp_path / "run" / "config.yaml")
    got = config_for_checkpoint(out, None, [])
    assert got.data.keypoint_set == keypoint_set
    a, b = got.model.resolved(), cfg.model.resolved()
    for key in ("embed_dim", "depth", "num_heads", "mlp_ratio", "image_size", "patch_size", "patch_stride",
                "patch_padding", "qkv_bias", "head", "num_keypoints", "backbone"):
        assert getattr(a, key) == getattr(b, key), key
    loaded = build_pose_model(got.model).eval()
    assert load_weights(loaded, out) == "hf"  # strict: every key, every shape
    x = torch.randn(1, 3, *cfg.model.image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-5)
    assert config_for_checkpoint(out, None, ["eval.blur_kernel=3"]).eval.blur_kernel == 3  # overrides still apply
    # Labels without names (LABEL_i): the set with that joint count, COCO first; 14 joints are AIC's and
    # CrowdPose's, so that one must be named.
    config = json.loads((out / "config.json").read_text())
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(len(config["id2label"]))}
    config.pop("label2id")
    (out / "config.json").write_text(json.dumps(config))
    if keypoint_set == "coco":
        assert config_for_checkpoint(out, None, []).data.keypoint_set == "coco"
        config["id2label"] = {str(i): f"joint {i}" for i in range(17)}  # names of no shipped set: not COCO by count
        (out / "config.json").write_text(json.dumps(config))
        with pytest.raises(ConfigError, match=r"its 17 joints \(id2label\) name no single shipped"):
            config_for_checkpoint(out, None, [])
    else:
        with pytest.raises(ConfigError, match=r"config.json: its 14 joints \(id2label\) name no single shipped "
                                              r"keypoint set: pass --set data.keypoint_set=NAME or --config"):
            config_for_checkpoint(out, None, [])
        assert config_for_checkpoint(out, None, ["data.keypoint_set=aic"]).data.keypoint_set == "aic"


def test_export_reads_a_hugging_face_directory_without_config(tmp_path, capsys):
    pytest.importorskip("transformers")
    cfg = load_config(DEMO, ["model.depth=1", "model.image_size=[64,48]"])
    hf = export_hf(random_model(cfg), cfg.model, tmp_path / "hf")
    assert cli(["export", "--checkpoint", str(hf), "--format", "safetensors", "--out", str(tmp_path / "w.st")]) == 0
    assert "(hf," in capsys.readouterr().out


def test_a_config_of_another_model_is_one_line_naming_the_tensor_and_the_fix(tmp_path, capsys):
    cfg = load_config(DEMO, ["model.depth=1", "model.image_size=[64,48]"])
    export_official(build_pose_model(cfg.model), tmp_path / "best.pth")
    with pytest.raises(CheckpointError):  # the library raises it ...
        load_weights(build_pose_model(load_config(DEMO, ["model.depth=1", "model.embed_dim=64"]).model),
                     tmp_path / "best.pth")
    # ... and the command reports it in one line, exit 4
    assert cli(["export", "--checkpoint", str(tmp_path / "best.pth"), "--config", str(DEMO), "--set",
                "model.embed_dim=64", "--set", "model.depth=1", "--set", "model.image_size=[64,48]",
                "--format", "safetensors", "--out", str(tmp_path / "w.safetensors")]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"checkpoint error: {tmp_path / 'best.pth'}: backbone.")
    assert "checkpoint (" in err[0] and "vs model (" in err[0] and "96" in err[0] and "64" in err[0]
    assert err[0].endswith("use the run's config (config.yaml next to the checkpoint) or pass --config with the "
                           "model the weights were trained with")
