"""`vitpose-scale infer` end to end on a bundled COCO image, plus the drawing helpers."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vitpose_scale.config import load_config
from vitpose_scale.infer import image_id_from_name, load_boxes, main, run_inference
from vitpose_scale.keypoints import get_spec
from vitpose_scale.visualize import (draw_skeletons, plot_training_curves,
                                     save_predictions_figure)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo.yaml"
DET_THR = 0.5  # image 785 has one confident detection (1.00), then 0.30 and below


@pytest.fixture(scope="module")
def infer_out(coco_sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("infer") / "pose.png"
    with pytest.warns(UserWarning, match="RANDOM weights"):  # no checkpoint: must say so loudly
        rc = main(["--config", str(CONFIG), "--image", str(coco_sample / "000000000785.jpg"),
                   "--boxes", str(coco_sample / "test_coco_det_AP_H_56.json"), "--det-thr", str(DET_THR),
                   "--out", str(out), "--set", "model.activation_checkpointing=false"])
    assert rc == 0
    return out


def test_infer_writes_png_and_json(infer_out, coco_sample):
    image = cv2.imread(str(coco_sample / "000000000785.jpg"))
    drawn = cv2.imread(str(infer_out))
    # the drawing is the image under a title band (the model, the image, how many people)
    assert drawn is not None and drawn.shape[1:] == image.shape[1:] and drawn.shape[0] > image.shape[0]
    band = drawn.shape[0] - image.shape[0]
    assert (drawn[:band] < 128).any() and (drawn[:band] == 255).mean() > 0.5  # dark text on white
    dets = json.loads((coco_sample / "test_coco_det_AP_H_56.json").read_text())
    expected = sum(1 for d in dets if d["image_id"] == 785 and d["score"] >= DET_THR)
    results = json.loads(infer_out.with_suffix(".json").read_text())
    assert len(results) == expected == 1
    h, w = image.shape[:2]
    for r in results:
        assert r["image_id"] == 785 and r["category_id"] == 1 and np.isfinite(r["score"])
        kp = np.asarray(r["keypoints"]).reshape(17, 3)
        assert np.isfinite(kp).all()
        assert (kp[:, 0] >= 0).all() and (kp[:, 0] <= w - 1).all()
        assert (kp[:, 1] >= 0).all() and (kp[:, 1] <= h - 1).all()


def test_missing_image_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope.jpg"
    assert main(["--config", str(CONFIG), "--image", str(missing), "--out", str(tmp_path / "o.png")]) == 2
    assert capsys.readouterr().err.strip() == f"error: image {missing} does not exist"


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a JSON file"),
    ('{"boxes": []}', "expected a JSON list of detections or of [x, y, w, h] boxes"),
    ("[[1, 2, 3]]", "box [1, 2, 3] is not [x, y, w, h(, score)] numbers"),
    ('[["a", 2, 3, 4]]', "is not [x, y, w, h(, score)] numbers"),
    ('[{"image_id": 785, "score": 0.9}]', "is not {image_id, category_id, bbox: [x, y, w, h], score}"),
])
def test_a_bad_boxes_file_is_an_input_error_naming_it(tmp_path, content, message):
    from vitpose_scale.cli import InputError

    path = tmp_path / "boxes.json"
    path.write_text(content)
    with pytest.raises(InputError) as refused:
        load_boxes(path, "000000000785.jpg")
    assert str(refused.value).startswith(f"{path}") and message in str(refused.value)


def test_box_loading(coco_sample, tmp_path):
    assert image_id_from_name("000000000785.jpg") == 785
    boxes = load_boxes(coco_sample / "test_coco_det_AP_H_56.json", "000000000785.jpg", 0.2)
    assert boxes.shape == (2, 5) and boxes[0, 4] > boxes[1, 4]
    plain = tmp_path / "boxes.json"
    plain.write_text(json.dumps([[10, 20, 30, 40], [0, 0, 5, 5, 0.5]]))
    boxes = load_boxes(plain, "anything.png")
    assert boxes.shape == (2, 5) and boxes[:, 4].tolist() == [1.0, 0.5]


class _FixedPeak(torch.nn.Module):
    """Fake model: every joint's heatmap is a Gaussian at heatmap pixel (hx, hy)."""

    def __init__(self, hx, hy, k=17):
        super().__init__()
        self.hx, self.hy, self.k = hx, hy, k
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        b, _, h, w = x.shape
        ys, xs = torch.meshgrid(torch.arange(h // 4.0), torch.arange(w // 4.0), indexing="ij")
        g = torch.exp(-((xs - self.hx) ** 2 + (ys - self.hy) ** 2) / (2 * 2.0 ** 2))
        return g.expand(b, self.k, -1, -1).clone()


@pytest.mark.parametrize("flip", [False, True])
def test_run_inference_maps_heatmaps_back_to_the_image(flip):
    cfg = load_config(CONFIG)
    in_h, in_w = cfg.model.image_size
    hm_h, hm_w = in_h // 4, in_w // 4
    # With flip test the peak must sit on the mirror axis ((hm_w - 1) / 2) to survive averaging.
    hx, hy = ((hm_w - 1) / 2 if flip else 7.0), 20.0
    box = [100.0, 50.0, 60.0, 80.0]  # aspect 0.75 = 96 / 128: no aspect fix, only padding
    people = run_inference(_FixedPeak(hx, hy), np.zeros((300, 300, 3), np.uint8), [box], cfg, flip=flip)
    assert len(people) == 1 and people[0].shape == (17, 3)
    center = np.array([130.0, 90.0])
    scale = np.array([60.0, 80.0]) * cfg.data.bbox_padding
    crop = np.array([hx * (in_w - 1) / (hm_w - 1), hy * (in_h - 1) / (hm_h - 1)])
    expected = center + (crop - np.array([in_w - 1, in_h - 1]) / 2) * scale / np.array([in_w - 1, in_h - 1])
    np.testing.assert_allclose(people[0][:, :2], np.broadcast_to(expected, (17, 2)), atol=0.05)
    assert (people[0][:, 2] > 0.9).all()  # the grid's highest value (the peak may fall between pixels)


class _OffGridPeaks(torch.nn.Module):
    """Fake model: joint j's heatmap is a Gaussian at a sub-pixel spot of its own, so the decodes disagree."""

    def __init__(self, k=17):
        super().__init__()
        self.k = k
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        b, _, h, w = x.shape
        hm_h, hm_w = h // 4, w // 4
        j = torch.arange(self.k, dtype=torch.float32)[:, None, None]
        cx = 3.3 + 0.37 * j * (hm_w - 7) / self.k  # fractional positions well inside the map
        cy = 4.6 + 0.71 * j * (hm_h - 9) / self.k
        ys, xs = torch.meshgrid(torch.arange(float(hm_h)), torch.arange(float(hm_w)), indexing="ij")
        g = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 1.7 ** 2))
        return g.expand(b, -1, -1, -1).clone()


@pytest.mark.parametrize("decode,kernel", [("argmax", 11), ("udp_dark", 11), ("udp_dark", 5), ("dark", 11)])
def test_infer_decodes_with_the_configured_method_as_the_evaluator_does(decode, kernel):
    """eval.decode / eval.blur_kernel reach infer's decoder: its keypoints equal the evaluator's
    (predict_dataset on the same crops and heatmaps), and the methods really differ on these maps."""
    from vitpose_scale.data.transforms import box_to_center_scale, crop_box, normalize_image
    from vitpose_scale.eval.postprocess import predict_dataset

    cfg = load_config(CONFIG, [f"eval.decode={decode}", f"eval.blur_kernel={kernel}"])
    model = _OffGridPeaks()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    boxes = np.array([[40.0, 30.0, 90.0, 150.0], [150.0, 20.0, 120.0, 100.0]])
    people = run_inference(model, image, boxes, cfg, flip=False)

    in_h, in_w = cfg.model.image_size
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    cs = [box_to_center_scale(b, in_w / in_h, cfg.data.bbox_padding) for b in boxes]
    batch = {"img": torch.from_numpy(np.stack([normalize_image(crop_box(rgb, c, s, (in_h, in_w))) for c, s in cs])),
             "center": np.stack([c for c, _ in cs]), "scale": np.stack([s for _, s in cs]),
             "rotation": np.zeros(len(boxes)), "image_id": [1, 1], "bbox_score": [1.0, 1.0], "index": [0, 1]}
    cfg.eval.flip_test = False
    evaluated = predict_dataset(model, [batch], cfg.eval, [], postprocess=False)
    for ours, theirs in zip(people, evaluated):
        np.testing.assert_allclose(ours, theirs["keypoints"], rtol=0, atol=1e-4)

    other = "argmax" if decode != "argmax" else "udp_dark"
    other_cfg = load_config(CONFIG, [f"eval.decode={other}"])
    moved = np.abs(run_inference(model, image, boxes, other_cfg, flip=False)[0][:, :2] - people[0][:, :2]).max()
    assert moved > 0.5  # pixels in the image: the check above could not pass by decoding the same way


def _person(points: dict, k=17):
    kp = np.zeros((k, 3))
    for j, (x, y, s) in points.items():
        kp[j] = (x, y, s)
    return kp


def test_draw_skeletons_draws_the_limb():
    img = np.zeros((100, 100, 3), np.uint8)
    skeleton = get_spec("coco").skeleton
    assert (5, 7) in skeleton and (5, 6) in skeleton  # left shoulder-elbow, shoulders
    # Shoulder -> elbow along y = 50; the right shoulder (6) is below the score threshold.
    person = _person({5: (20, 50, 0.9), 7: (80, 50, 0.9), 6: (20, 10, 0.1)})
    out = draw_skeletons(img, [person], score_thr=0.3)
    assert out.shape == img.shape and not np.shares_memory(out, img) and img.max() == 0
    assert out[50, 35:66].max(axis=1).min() > 0  # every pixel along the limb's middle is painted
    assert out[10, 20].max() == 0 and out[30, 20].max() == 0  # nothing drawn towards the weak joint
    assert out[90, 90].max() == 0


def test_plot_training_curves(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1e-3 / (1 + s / 10)}) for s in range(0, 100, 10)]
    lines += [json.dumps({"step": 50, "AP": 0.12}), json.dumps({"step": 100, "AP": 0.2}), '{"step": 10']
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = plot_training_curves(path, tmp_path / "curves.png")
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 100 and img.std() > 0
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"step": 1}\n')
    with pytest.raises(ValueError, match="no lines"):
        plot_training_curves(empty, tmp_path / "none.png")


def test_save_predictions_figure(infer_out, coco_sample, tmp_path):
    results = json.loads(infer_out.with_suffix(".json").read_text())
    gt = json.loads((coco_sample / "test_coco.json").read_text())
    out = save_predictions_figure(coco_sample, results, gt["images"], tmp_path / "grid.png", score_thr=0.0)
    assert cv2.imread(str(out)) is not None


# ---------------------------------------------------------------- a folder, every weight format --
HF_SETS = ["model.head_channels=256", "model.activation_checkpointing=false"]  # HF's classic head is 256 wide


@pytest.fixture(scope="module")
def weights_in_every_format(tmp_path_factory):
    from vitpose_scale.export import export_hf, export_safetensors
    from vitpose_scale.models.interop import export_official
    from vitpose_scale.models.pose import build_pose_model

    cfg = load_config(CONFIG, HF_SETS)
    torch.manual_seed(3)
    model = build_pose_model(cfg.model).eval()
    with torch.no_grad():  # a head of order-1 weights: distinct, confident peaks
        model.keypoint_head.final_layer.weight.normal_(0, 0.5)
    tmp = tmp_path_factory.mktemp("weights")
    export_official(model, tmp / "vitpose.pth")
    return model, cfg, {"official": tmp / "vitpose.pth", "hf": export_hf(model, cfg.model, tmp / "hf"),
                        "safetensors": export_safetensors(model, tmp / "vitpose.safetensors")}


def test_infer_folder_writes_one_coco_results_file_from_every_weight_format(weights_in_every_format, coco_sample,
                                                                           tmp_path):
    from pycocotools.coco import COCO

    model, cfg, files = weights_in_every_format
    dets_file = coco_sample / "test_coco_det_AP_H_56.json"
    images = sorted(coco_sample.glob("*.jpg"))
    results = {}
    for name, path in files.items():
        out = tmp_path / name
        sets = [arg for kv in HF_SETS for arg in ("--set", kv)]
        assert main(["--config", str(CONFIG), *sets, "--checkpoint", str(path), "--images",
                     str(coco_sample), "--detections", str(dets_file), "--det-thr", str(DET_THR), "--no-flip",
                     "--out", str(out)]) == 0
        results[name] = json.loads((out / "results.json").read_text())
        assert sorted(p.name for p in out.glob("*_pose.png")) == [f"{p.stem}_pose.png" for p in images]
    dets = json.loads(dets_file.read_text())
    ids = {image_id_from_name(p) for p in images}
    expected = sorted(d["image_id"] for d in dets if d["image_id"] in ids and d["score"] >= DET_THR)
    assert sorted(r["image_id"] for r in results["official"]) == expected and len(expected) > len(ids)
    for name in ("hf", "safetensors"):  # the same weights give the same people
        assert len(results[name]) == len(results["official"])
        for a, b in zip(results[name], results["official"]):
            assert a["image_id"] == b["image_id"] and a["bbox"] == b["bbox"]
            np.testing.assert_allclose(a["keypoints"], b["keypoints"], rtol=0, atol=1e-4)
    # Equal to the model called directly on the first image's boxes.
    first = images[0]
    boxes = load_boxes(dets_file, first, DET_THR)
    direct = run_inference(model, cv2.imread(str(first)), boxes[:, :4], cfg, flip=False)
    mine = [r for r in results["official"] if r["image_id"] == image_id_from_name(first)]
    np.testing.assert_allclose([r["keypoints"] for r in mine], [p.reshape(-1) for p in direct], rtol=0, atol=1e-6)
    # COCO format: pycocotools loads it against the ground truth.
    gt = COCO(str(coco_sample / "test_coco.json"))
    assert len(gt.loadRes(str(tmp_path / "official" / "results.json")).anns) == len(expected)


def test_training_curves_are_titled_with_the_run_and_the_eval_set(tmp_path):
    import re

    from vitpose_scale.visualize import eval_set_name, run_title

    load_config(CONFIG).save(tmp_path / "config.yaml")  # a run directory: its config and metrics
    rows = [{"step": 0, "kind": "setup", "world_size": 2, "total_steps": 600}]
    rows += [{"step": s, "kind": "train", "loss": 1e-3 / (1 + s)} for s in range(10, 610, 10)]
    rows += [{"step": 200, "kind": "eval", "AP": 0.05}, {"step": 600, "kind": "eval", "AP": 0.07}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    title = run_title(tmp_path, "configs/demo.yaml")
    assert title == "configs/demo.yaml: ViTPose-tiny (96-d, 4 blocks, 192x144), 2 ranks DeepSpeed ZeRO-3, 600 steps"
    assert eval_set_name(tmp_path) == "synthetic val, 100 images"
    # matplotlib's SVG keeps every drawn string as a comment: the figure shows exactly these texts.
    svg = plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.svg").read_text()
    texts = re.findall(r"<!-- (.*?) -->", svg)
    assert f"{tmp_path.name}: ViTPose-tiny (96-d, 4 blocks, 192x144), 2 ranks DeepSpeed ZeRO-3, 600 steps" in texts
    assert "AP (synthetic val, 100 images)" in texts and "metrics.jsonl" not in texts


def test_a_bad_override_is_one_line_and_exit_2(capsys):
    from vitpose_scale.infer import main

    assert main(["--config", str(CONFIG), "--set", "model.num_heads=5", "--image", "x.jpg"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "config error: model.num_heads: 5 does not divide model.embed_dim 96: expected a divisor of the width"
