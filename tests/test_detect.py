"""vitpose_scale.detect on real detectors with random weights, saved and loaded the libraries' own
way: a tiny RT-DETR (transformers save_pretrained directory) and torchvision's
fasterrcnn_mobilenet_v3_large_320_fpn (a state-dict file, and torchvision's hub cache). Their class
heads are set so that one chosen class (person, or car) scores high with varied scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detector_models import LABELS, save_tiny_rtdetr
from vitpose_scale.cli import InputError
from vitpose_scale.detect import DetectorOptions, PersonDetector, coco_detections, load_detector, \
    write_coco_detections

ROOT = Path(__file__).resolve().parents[1]
TV_NAME = "fasterrcnn_mobilenet_v3_large_320_fpn"
COCO_CAR = 3  # torchvision's COCO category list: 1 person, 3 car


def _images(seed: int = 0) -> list[np.ndarray]:
    """Three BGR images, two sizes: the first and last share one (they batch together)."""
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, shape, np.uint8) for shape in [(96, 128, 3), (128, 96, 3), (96, 128, 3)]]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def _check_boxes(boxes: np.ndarray, image: np.ndarray, score_thr: float) -> None:
    assert boxes.dtype == np.float64 and boxes.ndim == 2 and boxes.shape[1] == 5
    h, w = image.shape[:2]
    x, y, bw, bh, score = boxes.T
    assert (bw > 0).all() and (bh > 0).all()
    assert (x >= 0).all() and (y >= 0).all() and (x + bw <= w + 1e-6).all() and (y + bh <= h + 1e-6).all()
    assert (score >= score_thr).all() and (score <= 1).all()
    assert (np.diff(score) <= 0).all()  # best first


def _max_iou(boxes: np.ndarray) -> float:
    from torchvision.ops import box_iou

    if len(boxes) < 2:
        return 0.0
    xyxy = torch.from_numpy(boxes[:, :4].copy())
    xyxy[:, 2:] += xyxy[:, :2]
    iou = box_iou(xyxy, xyxy)
    iou.fill_diagonal_(0)
    return float(iou.max())


def _is_subset(small: np.ndarray, big: np.ndarray) -> bool:
    return all(np.abs(big - row).max(axis=1).min() < 1e-9 for row in small)


# --- a tiny RT-DETR -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rtdetr_dirs(tmp_path_factory) -> dict[str, Path]:
    """{"person": dir, "car": dir}: the same tiny RT-DETR whose heads favour that class."""
    root = tmp_path_factory.mktemp("rtdetr")
    return {name: save_tiny_rtdetr(root / name, favoured) for name, favoured in [("person", 2), ("car", 0)]}


@pytest.fixture(scope="module")
def rtdetr_all(rtdetr_dirs) -> PersonDetector:
    """Every person box: no score floor, no NMS."""
    return load_detector(str(rtdetr_dirs["person"]), options=DetectorOptions(score_thr=0.0, nms_iou=1.0))


def test_rtdetr_boxes_format_and_batching(rtdetr_dirs, rtdetr_all):
    images = _images()
    det = load_detector(str(rtdetr_dirs["person"]), options=DetectorOptions(score_thr=0.3, batch_size=3))
    assert "rt_detr" in det.name and str(rtdetr_dirs["person"]) in det.name
    together = det(images)
    assert len(together) == 3
    for boxes, image in zip(together, images):
        assert len(boxes) > 0
        _check_boxes(boxes, image, 0.3)
        assert _max_iou(boxes) <= 0.7 + 1e-6
    for boxes, image in zip(together, images):  # each image alone: the same boxes
        np.testing.assert_allclose(det([image])[0], boxes, rtol=1e-5, atol=1e-4)
    assert det([]) == []
    # Every query is a candidate (num_queries 20), and the model's boxes are clipped to the image.
    assert all(len(b) == 20 for b in rtdetr_all(images))


def test_rtdetr_matches_the_library_run_by_hand(rtdetr_dirs, rtdetr_all):
    """RGB input, (height, width) target sizes, person label, x1y1x2y2 -> x, y, w, h."""
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    processor = AutoImageProcessor.from_pretrained(rtdetr_dirs["person"])
    model = AutoModelForObjectDetection.from_pretrained(rtdetr_dirs["person"]).eval()
    image = _images(2)[1]  # 128 x 96: height and width differ
    h, w = image.shape[:2]
    with torch.no_grad():
        outputs = model(**processor(images=[image[..., ::-1].copy()], return_tensors="pt"))
    found = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[(h, w)])[0]
    person = found["labels"] == LABELS.index("Person")
    xyxy = found["boxes"][person].numpy().astype(np.float64)
    xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, w)
    xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, h)
    expected = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2], found["scores"][person].numpy()[:, None]], 1)
    got = rtdetr_all([image])[0]
    assert len(got) == len(expected) > 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_rtdetr_class_filtering(rtdetr_dirs):
    images = _images()[:2]
    car = load_detector(str(rtdetr_dirs["car"]), options=DetectorOptions(score_thr=0.0))
    assert [len(b) for b in car(images)] == [0, 0]  # cars everywhere, no person
    person = load_detector(str(rtdetr_dirs["person"]), options=DetectorOptions(score_thr=0.0))
    assert all(len(b) > 0 for b in person(images))


def test_rtdetr_thresholds(rtdetr_dirs, rtdetr_all):
    image = _images(1)[:1]
    every = rtdetr_all(image)[0]
    det = load_detector(str(rtdetr_dirs["person"]))
    kept = {}
    for thr in (0.3, 0.6):
        det.options = DetectorOptions(score_thr=thr, nms_iou=1.0)  # options are read at each call
        kept[thr] = det(image)[0]
        np.testing.assert_allclose(kept[thr], every[every[:, 4] >= thr], rtol=1e-6, atol=1e-6)
    assert 0 < len(kept[0.6]) < len(kept[0.3]) < len(every)  # the scores are spread
    by_iou = {}
    for iou in (0.7, 0.3):
        det.options = DetectorOptions(score_thr=0.0, nms_iou=iou)
        by_iou[iou] = det(image)[0]
        assert _max_iou(by_iou[iou]) <= iou + 1e-6
        assert _is_subset(by_iou[iou], every)
        assert by_iou[iou][0, 4] == every[0, 4]  # the best box always stays
    assert len(by_iou[0.3]) < len(by_iou[0.7]) < len(every)
    det.options = DetectorOptions(score_thr=0.0, nms_iou=1.0, max_people=3)
    np.testing.assert_array_equal(det(image)[0], every[:3])


def test_transformers_bad_inputs(tmp_path, rtdetr_dirs):
    from transformers import VitPoseBackboneConfig, VitPoseConfig

    def fails(spec, *words, checkpoint=None):
        with pytest.raises(InputError) as exc:
            load_detector(str(spec), checkpoint)
        message = _one_line(exc)
        for word in words:
            assert word in message, message

    vitpose = tmp_path / "vitpose"
    VitPoseConfig(backbone_config=VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=1)).save_pretrained(vitpose)
    fails(vitpose, str(vitpose), "vitpose", "not an object detector")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(empty, str(empty), "no config.json")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("{ this is not json")
    fails(garbage, str(garbage), "not a transformers config")
    fails(tmp_path / "missing", "does not exist")
    weights = rtdetr_dirs["person"] / "model.safetensors"
    fails(weights, "is a file")
    fails("no-such-org/no-such-detector", "no-such-org/no-such-detector", "--detector")

    # A detector without a person class.
    no_person = tmp_path / "no_person"
    config = json.loads((rtdetr_dirs["car"] / "config.json").read_text())
    config["id2label"] = {"0": "car", "1": "dog", "2": "cat", "3": "bicycle"}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    no_person.mkdir()
    (no_person / "config.json").write_text(json.dumps(config))
    fails(no_person, "no 'person' label")
    # Weights that do not fit the config: missing, or of another size.
    (no_person / "config.json").write_text((rtdetr_dirs["car"] / "config.json").read_text())
    for name in ("preprocessor_config.json",):
        (no_person / name).write_text((rtdetr_dirs["car"] / name).read_text())
    fails(no_person, str(no_person), "weights")
    config = json.loads((rtdetr_dirs["car"] / "config.json").read_text())
    config["decoder_ffn_dim"] = 48
    (no_person / "config.json").write_text(json.dumps(config))
    (no_person / "model.safetensors").write_bytes(weights.read_bytes())
    fails(no_person, str(no_person), "weights")
    # A checkpoint file only goes with torchvision detectors.
    fails(rtdetr_dirs["person"], "--detector-checkpoint", checkpoint=str(weights))


def test_hub_id_from_the_local_cache(rtdetr_dirs, rtdetr_all, tmp_path, monkeypatch):
    """A hub id resolves through the Hugging Face cache only (its snapshot layout, no network)."""
    import shutil

    import huggingface_hub.constants

    repo = tmp_path / "models--tiny-org--tiny-rtdetr"
    shutil.copytree(rtdetr_dirs["person"], repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    det = load_detector("tiny-org/tiny-rtdetr", options=DetectorOptions(score_thr=0.0, nms_iou=1.0))
    assert det.name == "rt_detr (tiny-org/tiny-rtdetr)"
    image = _images()[:1]
    np.testing.assert_allclose(det(image)[0], rtdetr_all(image)[0], rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError) as exc:
        load_detector("tiny-org/other-detector")
    assert str(tmp_path) in _one_line(exc) and "--detector" in _one_line(exc)


def test_options_and_image_checks(rtdetr_all):
    for bad in (dict(score_thr=1.5), dict(nms_iou=0.0), dict(batch_size=0), dict(max_people=0)):
        with pytest.raises(InputError):
            DetectorOptions(**bad)
    with pytest.raises(InputError, match="BGR uint8"):
        rtdetr_all([np.zeros((32, 32), np.uint8)])
    with pytest.raises(InputError, match="BGR uint8"):
        rtdetr_all([np.zeros((32, 32, 3), np.float32)])


# --- torchvision Faster R-CNN ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def frcnn_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """{"person": file, "car": file}: state dicts of one random Faster R-CNN whose box classifier
    favours that class with varied scores."""
    from torchvision.models import get_model

    torch.manual_seed(0)
    model = get_model(TV_NAME, weights=None, weights_backbone=None, num_classes=91).eval()
    # Random convs shrink activations to ~1e-8 through the untrained BatchNorms: give them the
    # statistics of normalized noise images (as the model's transform feeds it) so that features are
    # O(1), proposals differ in their features, and batched and single runs agree to float precision.
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the calibration batch
    model.backbone.train()
    with torch.no_grad():
        model.backbone(torch.stack([model.transform.normalize(torch.rand(3, 320, 320)) for _ in range(2)]))
    model.backbone.eval()
    # The person logit: a random direction of the box features, scaled to a spread of ~1.5 around 2.5
    # (softmax against 90 zero logits: scores ~0.01 to ~0.8); box regression near identity.
    feats = []
    hook = model.roi_heads.box_head.register_forward_hook(lambda mod, inp, out: feats.append(out))
    with torch.no_grad():
        model([torch.from_numpy(im[..., ::-1].copy()).permute(2, 0, 1).float() / 255 for im in _images()[:2]])
    hook.remove()
    cls = model.roi_heads.box_predictor.cls_score
    with torch.no_grad():
        direction = cls.weight[1].clone()
        z = torch.cat(feats) @ direction
        cls.weight.zero_()
        cls.bias.zero_()
        cls.weight[1] = direction * 1.5 / z.std()
        cls.bias[1] = 2.5 - float(z.mean() * 1.5 / z.std())
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(0.01)
    root = tmp_path_factory.mktemp("frcnn")
    state = model.state_dict()
    files = {"person": root / "person.pth", "car": root / "car.pth"}
    torch.save(state, files["person"])
    swapped = dict(state)
    for key in ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias"):
        swapped[key] = state[key][[0, COCO_CAR, 2, 1, *range(4, 91)]]  # person's row becomes car's
    torch.save(swapped, files["car"])
    return files


def test_torchvision_boxes_and_batching(frcnn_checkpoints):
    images = _images()
    det = load_detector(f"torchvision:{TV_NAME}", checkpoint=str(frcnn_checkpoints["person"]),
                        options=DetectorOptions(score_thr=0.2, batch_size=3))
    assert det.name == f"torchvision:{TV_NAME}"
    together = det(images)  # the first and last image run as one batch
    for boxes, image in zip(together, images):
        assert len(boxes) > 1
        _check_boxes(boxes, image, 0.2)
        assert _max_iou(boxes) <= 0.7 + 1e-6
    for boxes, image in zip(together, images):
        np.testing.assert_allclose(det([image])[0], boxes, rtol=1e-5, atol=1e-4)


def test_torchvision_matches_the_library_run_by_hand(frcnn_checkpoints):
    from torchvision.models import get_model

    model = get_model(TV_NAME, weights=None, weights_backbone=None, num_classes=91).eval()
    model.load_state_dict(torch.load(frcnn_checkpoints["person"], weights_only=True))
    image = _images(2)[1]
    with torch.no_grad():
        found = model([torch.from_numpy(image[..., ::-1].copy()).permute(2, 0, 1).float() / 255])[0]
    person = found["labels"] == 1
    xyxy = found["boxes"][person].numpy().astype(np.float64)
    expected = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2], found["scores"][person].numpy()[:, None]], 1)
    det = load_detector(f"torchvision:{TV_NAME}", checkpoint=str(frcnn_checkpoints["person"]),
                        options=DetectorOptions(score_thr=0.05, nms_iou=1.0))  # the model's own floor
    got = det([image])[0]
    assert len(got) == len(expected) > 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_torchvision_class_filtering(frcnn_checkpoints):
    car = load_detector(f"torchvision:{TV_NAME}", checkpoint=str(frcnn_checkpoints["car"]),
                        options=DetectorOptions(score_thr=0.05))
    assert [len(b) for b in car(_images()[:1])] == [0]


def test_torchvision_thresholds(frcnn_checkpoints):
    image = _images(1)[:1]
    det = load_detector(f"torchvision:{TV_NAME}", checkpoint=str(frcnn_checkpoints["person"]),
                        options=DetectorOptions(score_thr=0.0, nms_iou=1.0))
    every = det(image)[0]
    assert every[-1, 4] < 0.05  # below the model's own 0.05 floor, which the detector lowers
    det.options = DetectorOptions(score_thr=0.3, nms_iou=1.0)
    high = det(image)[0]
    np.testing.assert_allclose(high, every[every[:, 4] >= 0.3], rtol=1e-6, atol=1e-6)
    assert 0 < len(high) < len(every)
    det.options = DetectorOptions(score_thr=0.0, nms_iou=0.2)
    merged = det(image)[0]
    assert _max_iou(merged) <= 0.2 + 1e-6 and _is_subset(merged, every)
    assert len(merged) < len(every)


def test_torchvision_default_weights_from_hub_cache(frcnn_checkpoints, tmp_path, monkeypatch):
    from torchvision.models import get_model_weights

    url = get_model_weights(TV_NAME).DEFAULT.url
    cached = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # torch.hub looks in TORCH_HOME/hub/checkpoints
    cached.symlink_to(frcnn_checkpoints["person"])
    det = load_detector(f"torchvision:{TV_NAME}")
    expected = torch.load(frcnn_checkpoints["person"], weights_only=True)
    weight = det.model.roi_heads.box_predictor.cls_score.weight
    assert torch.equal(weight, expected["roi_heads.box_predictor.cls_score.weight"])

    cached.unlink()
    cached.write_bytes(b"not a checkpoint")  # a damaged download: torch.hub trusts the cache
    with pytest.raises(InputError) as exc:
        load_detector(f"torchvision:{TV_NAME}")
    assert "--detector-checkpoint FILE" in _one_line(exc)


def test_torchvision_bad_inputs(frcnn_checkpoints, tmp_path):
    def fails(spec, checkpoint, *words):
        with pytest.raises(InputError) as exc:
            load_detector(spec, checkpoint)
        message = _one_line(exc)
        for word in words:
            assert word in message, message

    fails("torchvision:resnet50", None, "not a torchvision detection model", TV_NAME)
    fails("torchvision:", None, "not a torchvision detection model")
    spec = f"torchvision:{TV_NAME}"
    fails(spec, str(tmp_path / "missing.pth"), "missing.pth", "does not exist")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    fails(spec, str(junk), "junk.pth", "state dict")
    state = torch.load(frcnn_checkpoints["person"], weights_only=True)
    del state["rpn.head.conv.0.0.weight"]
    state["roi_heads.box_predictor.cls_score.bias"] = torch.zeros(2)  # a person-only head
    state["extra.weight"] = torch.zeros(1)
    odd = tmp_path / "odd.pth"
    torch.save(state, odd)
    fails(spec, str(odd), "odd.pth", "1 missing", "rpn.head.conv.0.0.weight", "1 unexpected", "another shape")
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    fails(spec, str(listed), "list.pth", "expected a state dict")


# --- COCO detection results -----------------------------------------------------------------------

def test_coco_detections_load_as_results(tmp_path):
    from pycocotools.coco import COCO

    boxes = {785: np.array([[10.0, 20.0, 30.0, 40.0, 0.9], [0.0, 0.0, 5.5, 6.5, 0.25]]),
             40083: np.zeros((0, 5)), 196141: np.array([[1.0, 2.0, 3.0, 4.0, 0.5]])}
    results = coco_detections(boxes)
    assert results[0] == {"image_id": 785, "category_id": 1, "bbox": [10.0, 20.0, 30.0, 40.0], "score": 0.9}
    assert [r["image_id"] for r in results] == [785, 785, 196141]
    # The keys and value types of the shipped detection file.
    shipped = json.loads((ROOT / "data" / "coco_sample" / "test_coco_det_AP_H_56.json").read_text())[0]
    assert set(results[0]) == set(shipped)
    assert all(type(results[0][k]) is type(shipped[k]) for k in shipped)
    path = tmp_path / "dets.json"
    assert write_coco_detections(path, boxes) == 3
    gt = COCO(str(ROOT / "data" / "coco_sample" / "test_coco.json"))
    dt = gt.loadRes(str(path))
    assert len(dt.getAnnIds(imgIds=[785])) == 2 and dt.anns[1]["area"] == pytest.approx(1200.0)
    with pytest.raises(ValueError):
        coco_detections({1: np.zeros((2, 4))})
