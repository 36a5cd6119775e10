"""COCO test-dev: an image-info file (no annotations) + detections -> the server's results file."""
import json
import socket

import numpy as np
import pytest
import torch

from vitpose_scale.config import from_dict
from vitpose_scale.eval.testdev import check_results_format, results_file_name
from vitpose_scale.evaluate import evaluate_checkpoints, main
from vitpose_scale.models.interop import export_official
from vitpose_scale.models.pose import build_pose_model

DETS = "test_coco_det_AP_H_56.json"
MODEL = {"preset": "tiny", "image_size": [64, 48], "head": "simple"}


@pytest.fixture
def one_process_group(monkeypatch):
    """The environment of a one-process group, restored after the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def test_dev_sample(tmp_path, coco_sample):
    """The bundled sample's images as a test-dev image-info file (images, categories; no annotations),
    a tiny model whose heatmaps have some structure, and a config pointing at both."""
    gt = json.loads((coco_sample / "test_coco.json").read_text())
    info = {"info": gt["info"], "licenses": gt["licenses"], "images": gt["images"],
            "categories": [{"supercategory": "person", "id": 1, "name": "person"}]}
    image_info = tmp_path / "image_info_test-dev2017.json"
    image_info.write_text(json.dumps(info))
    torch.manual_seed(0)
    model = build_pose_model(from_dict({"model": MODEL}).model)
    with torch.no_grad():
        for p in model.keypoint_head.parameters():
            p.mul_(20.0)
    ckpt = tmp_path / "model.pth"
    export_official(model, ckpt)
    data = {"kind": "coco", "root": str(coco_sample), "val_images": ".", "det_file": DETS, "det_score_thr": 0.1,
            "num_workers": 0}
    config = tmp_path / "testdev.yaml"
    config.write_text(json.dumps({"model": MODEL, "data": {**data, "val_ann": str(image_info)},
                                  "eval": {"batch_size": 16}}))
    return dict(config=config, ckpt=ckpt, image_info=image_info, data=data)


def test_test_dev_writes_the_server_results_file(test_dev_sample, coco_sample, tmp_path, one_process_group, capsys):
    out = tmp_path / "out"
    assert main(["--config", str(test_dev_sample["config"]), "--checkpoint", str(test_dev_sample["ckpt"]),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    path = out / "person_keypoints_test-dev2017_vitposescale_results.json"
    assert "no ground truth to score" in printed and str(path) in printed
    assert "Average Precision" not in printed and not (out / "stats.json").exists()
    results = json.loads(path.read_text())

    # The server's format: one entry per person, exactly these fields and types.
    check_results_format(results)
    for r in results:
        assert set(r) == {"image_id", "category_id", "keypoints", "score"}
        assert type(r["image_id"]) is int and r["category_id"] == 1 and type(r["score"]) is float
        assert len(r["keypoints"]) == 51 and all(type(v) is float for v in r["keypoints"])
    dets = json.loads((coco_sample / DETS).read_text())
    assert {r["image_id"] for r in results} <= {im["id"] for im in json.loads(
        test_dev_sample["image_info"].read_text())["images"]}
    assert 0 < len(results) < len(dets)  # OKS-NMS merged duplicate boxes

    # Rescoring: every score is (mean joint score above 0.2) x the score of a detection of its image.
    det_scores = {}
    for d in dets:
        det_scores.setdefault(d["image_id"], []).append(d["score"])
    for r in results:
        joint_scores = np.array(r["keypoints"][2::3])
        valid = joint_scores[joint_scores > 0.2]
        mean = valid.mean() if len(valid) else 0.0
        assert any(abs(r["score"] - mean * s) < 1e-9 for s in det_scores[r["image_id"]])
    assert len({round(r["score"], 12) for r in results}) > 1

    # The same people as the same boxes evaluated against the annotated file.
    with_gt = from_dict({"model": MODEL, "data": {**test_dev_sample["data"], "val_ann": "test_coco.json"},
                         "eval": {"batch_size": 16}})
    scored = evaluate_checkpoints(with_gt, [str(test_dev_sample["ckpt"])])
    assert scored.has_ground_truth and scored.stats is not None
    assert results == scored.results


def test_test_dev_without_detections_names_the_key(test_dev_sample, tmp_path, one_process_group, capsys):
    assert main(["--config", str(test_dev_sample["config"]), "--set", "data.det_file=null",
                 "--checkpoint", str(test_dev_sample["ckpt"]), "--out", str(tmp_path / "o")]) == 2
    assert "data.det_file" in capsys.readouterr().err


def test_results_file_name_and_format_check():
    assert results_file_name("a/image_info_test-dev2017.json", "me") == "person_keypoints_test-dev2017_me_results.json"
    good = {"image_id": 1, "category_id": 1, "keypoints": [1.0] * 51, "score": 0.5}
    check_results_format([good])
    for bad in [{**good, "score": 1}, {**good, "keypoints": [1.0] * 50}, {**good, "image_id": 1.0},
                {**good, "bbox": [0, 0, 1, 1]}, {**good, "keypoints": [float("nan")] * 51}]:
        with pytest.raises(ValueError, match="result 0"):
            check_results_format([bad])


def test_test_dev_boxes_decode_each_image_once_and_name_a_missing_image(test_dev_sample, coco_sample, tmp_path,
                                                                        monkeypatch):
    import shutil

    from vitpose_scale.config import DataConfig
    from vitpose_scale.eval import testdev

    cfg = DataConfig(det_score_thr=0.1)
    boxes = testdev.DetectionBoxes(test_dev_sample["image_info"], coco_sample, coco_sample / DETS, cfg, (64, 48))
    reads = []
    real = testdev.read_rgb
    monkeypatch.setattr(testdev, "read_rgb", lambda path, listed_in="": reads.append(path) or real(path, listed_in))
    items = [boxes[i] for i in range(len(boxes))]
    assert len(items) > 8 and len(reads) == len({r["file_name"] for r in boxes.records}) == 4
    assert set(items[0]) == {"img", "center", "scale", "image_id", "bbox_score", "index"}
    # an image the info file lists but the folder lacks: the error names it, its id and the info file
    folder = tmp_path / "images"
    folder.mkdir()
    first = boxes.records[0]["file_name"]
    for name in {r["file_name"] for r in boxes.records} - {first}:
        shutil.copy(coco_sample / name, folder)
    missing = testdev.DetectionBoxes(test_dev_sample["image_info"], folder, coco_sample / DETS, cfg, (64, 48))
    with pytest.raises(FileNotFoundError) as err:
        missing[0]
    assert (f"image {folder / first} (image_id {boxes.records[0]['image_id']}, listed in "
            f"{test_dev_sample['image_info']}) is missing or unreadable") in str(err.value)
