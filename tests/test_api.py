"""The Python API (vitpose_scale/api.py): the README's three lines give the evaluator's keypoints
for the same boxes, from every weight layout, batched or not; images without people say so."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vitpose_scale import Person, PoseEstimator
from vitpose_scale.models.weights import resolve_weights
from vitpose_scale.config import load_config
from vitpose_scale.errors import CheckpointError, InputError
from vitpose_scale.eval.postprocess import rescore
from vitpose_scale.infer import load_boxes, run_inference

ROOT = Path(__file__).resolve().parents[1]
SETS = ["model.activation_checkpointing=false", "eval.batch_size=3"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as training leaves it (config.yaml + best.pth), with a head of order-1
    weights: distinct, confident heatmap peaks."""
    from vitpose_scale.models.interop import export_official
    from vitpose_scale.models.pose import build_pose_model

    cfg = load_config(ROOT / "configs" / "demo.yaml", SETS)
    torch.manual_seed(5)
    model = build_pose_model(cfg.model).eval()
    with torch.no_grad():
        model.keypoint_head.final_layer.weight.normal_(0, 0.5)
    out = tmp_path_factory.mktemp("run")
    cfg.save(out / "config.yaml")
    export_official(model, out / "best.pth")
    return out, model, cfg


def _boxes(coco_sample, name="000000000785.jpg", thr=0.2):
    return load_boxes(coco_sample / "test_coco_det_AP_H_56.json", coco_sample / name, thr)


def test_the_readme_lines_give_the_evaluators_keypoints_and_a_titled_drawing(run_dir, coco_sample):
    out, model, cfg = run_dir
    pose = PoseEstimator.load(out, device="cpu")  # the run directory: its best.pth and config.yaml
    image = coco_sample / "000000000785.jpg"
    boxes = _boxes(coco_sample)
    assert len(boxes) >= 2
    people = pose(str(image), boxes=boxes)
    direct = run_inference(model, cv2.imread(str(image)), boxes[:, :4], cfg, flip=cfg.eval.flip_test)
    assert len(people) == len(boxes) and all(isinstance(p, Person) for p in people)
    for p, kp, box in zip(people, direct, boxes):
        np.testing.assert_allclose(p.as_array(), kp, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(p.box, box[:4])
        assert p.box_score == box[4] and p.score == pytest.approx(rescore(kp[:, 2], box[4], cfg.eval.rescore_thr))
    assert pose.keypoint_names[:3] == ["nose", "left_eye", "right_eye"]
    drawn = pose.draw(str(image), people)
    original = cv2.imread(str(image))
    band = drawn.shape[0] - original.shape[0]
    assert band > 0 and drawn.shape[1] == original.shape[1]
    assert (drawn[band:] != original).any()  # skeletons and boxes drawn on the image itself


def test_every_weight_layout_loads_with_its_config_found_alone(run_dir, coco_sample, tmp_path):
    from vitpose_scale.export import export_hf, export_safetensors

    out, model, cfg = run_dir
    shutil.copy(out / "config.yaml", tmp_path / "config.yaml")
    export_safetensors(model, tmp_path / "model.safetensors")
    hf = export_hf(model, cfg.model, tmp_path / "hf", cfg.data.keypoint_set)  # its config.json is its config
    image = cv2.imread(str(coco_sample / "000000000785.jpg"))
    boxes = _boxes(coco_sample)
    expected = [p.as_array() for p in PoseEstimator.load(out / "best.pth", device="cpu", flip=False)(image, boxes)]
    for source in (out, tmp_path / "model.safetensors", hf):
        got = [p.as_array() for p in PoseEstimator.load(source, device="cpu", flip=False)(image, boxes)]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_a_batch_of_images_equals_each_image_alone(run_dir, coco_sample):
    out, _, _ = run_dir
    pose = PoseEstimator.load(out, device="cpu")
    names = ["000000000785.jpg", "000000040083.jpg", "000000196141.jpg"]
    images = [cv2.imread(str(coco_sample / n)) for n in names]
    boxes = [_boxes(coco_sample, n)[:2] for n in names]
    assert sum(map(len, boxes)) > 3  # crops of several images share model batches of 3
    together = pose.predict(images, boxes)
    for image, b, people in zip(images, boxes, together):
        alone = pose(image, b)
        assert len(alone) == len(people) == len(b)
        for a, p in zip(alone, people):
            np.testing.assert_allclose(a.as_array(), p.as_array(), rtol=0, atol=1e-5)


def test_without_boxes_or_a_detector_the_whole_image_is_one_person_and_it_says_so(run_dir, coco_sample, capsys):
    pose = PoseEstimator.load(run_dir[0], device="cpu")
    image = cv2.imread(str(coco_sample / "000000000785.jpg"))
    people = pose(image)
    h, w = image.shape[:2]
    assert len(people) == 1 and list(people[0].box) == [0, 0, w, h]
    assert "no person boxes and no detector" in capsys.readouterr().err


def test_an_image_without_people_is_drawn_saying_so(run_dir):
    pose = PoseEstimator.load(run_dir[0], device="cpu")
    blank = np.full((120, 90, 3), 200, np.uint8)
    assert pose(blank, boxes=np.zeros((0, 4))) == []
    drawn = pose.draw(blank, [])
    assert drawn.shape[0] > 120 and (drawn[120 - drawn.shape[0]:] == 200).all()  # the image untouched
    with pytest.raises(InputError, match="expected rows of x, y, w, h"):
        pose(blank, boxes=[[1, 2, 3]])


def test_a_run_directory_means_best_then_final_then_its_newest_step(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000009").mkdir(parents=True)
    (run / "checkpoints" / "step_00000010").mkdir()
    assert resolve_weights(run) == run / "checkpoints" / "step_00000010"  # by number
    (run / "final.pth").write_bytes(b"")
    assert resolve_weights(run) == run / "final.pth"
    (run / "best.pth").write_bytes(b"")
    assert resolve_weights(run) == run / "best.pth"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="a directory with no weights"):
        resolve_weights(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_weights(tmp_path / "nope")


def test_infer_cli_takes_a_run_directory_without_config(run_dir, coco_sample, tmp_path):
    from vitpose_scale.infer import main

    out, _, _ = run_dir
    png = tmp_path / "p.png"
    assert main(["--checkpoint", str(out), "--image", str(coco_sample / "000000000785.jpg"), "--out", str(png),
                 "--boxes", str(coco_sample / "test_coco_det_AP_H_56.json")]) == 0
    results = json.loads(png.with_suffix(".json").read_text())
    assert len(results) == 1 and results[0]["image_id"] == 785 and cv2.imread(str(png)) is not None


# ----------------------------------------------------------- detector and video --
@pytest.fixture(scope="module")
def detectors(tmp_path_factory):
    """Tiny RT-DETRs with random weights saved locally: one that finds people, one that finds cars."""
    from detector_models import save_tiny_rtdetr

    root = tmp_path_factory.mktemp("detectors")
    return {"person": save_tiny_rtdetr(root / "person"), "car": save_tiny_rtdetr(root / "car", favoured=0)}


def test_infer_with_a_detector_poses_its_boxes_and_writes_them_for_evaluation(run_dir, detectors, coco_sample,
                                                                              tmp_path, capsys):
    from pycocotools.coco import COCO

    from vitpose_scale.detect import load_detector
    from vitpose_scale.infer import main

    image = coco_sample / "000000000785.jpg"
    png = tmp_path / "p.png"
    assert main(["--checkpoint", str(run_dir[0]), "--image", str(image), "--detector", str(detectors["person"]),
                 "--out", str(png)]) == 0
    assert "person detector: rt_detr" in capsys.readouterr().out
    results = json.loads(png.with_suffix(".json").read_text())
    dets = json.loads((tmp_path / "p_detections.json").read_text())
    boxes = load_detector(str(detectors["person"]))([cv2.imread(str(image))])[0]  # default threshold 0.5
    assert len(results) == len(dets) == len(boxes) > 0
    np.testing.assert_allclose([d["bbox"] + [d["score"]] for d in dets], boxes, rtol=0, atol=1e-6)
    assert [r["bbox"] for r in results] == [d["bbox"] for d in dets]
    gt = COCO(str(coco_sample / "test_coco.json"))
    assert len(gt.loadRes(dets).getAnnIds()) == len(dets)  # the data.det_file format
    expected = PoseEstimator.load(run_dir[0], device="cpu")(image, boxes)
    np.testing.assert_allclose([r["keypoints"] for r in results], [p.as_array().ravel() for p in expected],
                               rtol=0, atol=1e-4)


def test_an_image_without_people_says_so_in_one_note_and_in_the_drawing(run_dir, detectors, coco_sample, tmp_path,
                                                                        capsys):
    from vitpose_scale.infer import main

    png = tmp_path / "p.png"
    assert main(["--checkpoint", str(run_dir[0]), "--image", str(coco_sample / "000000000785.jpg"),
                 "--detector", str(detectors["car"]), "--out", str(png)]) == 0
    assert "no person found in 000000000785.jpg" in capsys.readouterr().err
    assert json.loads(png.with_suffix(".json").read_text()) == []
    assert cv2.imread(str(png)) is not None


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    from vitpose_scale.video import VideoWriter

    with VideoWriter(path, fps, frames[0].shape[1], frames[0].shape[0]) as writer:
        for f in frames:
            writer.write(f)
    return path


def test_infer_video_poses_every_frame_in_batches(run_dir, detectors, coco_sample, tmp_path, capsys):
    """7 frames in batches of 3: the drawn video has every frame, the JSON every frame's people, equal
    to the API on the decoded frames; frames per second printed."""
    from vitpose_scale.infer import main
    from vitpose_scale.video import VideoReader

    photo = cv2.resize(cv2.imread(str(coco_sample / "000000000785.jpg")), (160, 106))
    frames = [np.roll(photo, 6 * i, axis=1) for i in range(7)]
    video = _write_video(tmp_path / "clip.mp4", frames)
    out = tmp_path / "out" / "posed.mp4"
    assert main(["--checkpoint", str(run_dir[0]), "--video", str(video), "--detector", str(detectors["person"]),
                 "--batch-size", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "7 frames in" in printed and "frames/s" in printed
    record = json.loads(out.with_suffix(".json").read_text())
    assert [f["frame"] for f in record["frames"]] == list(range(7)) and len(record["keypoints"]) == 17
    with VideoReader(out) as drawn:
        assert drawn.width == 160 and drawn.height > 106 and len(list(drawn)) == 7  # frames under a title band
    with VideoReader(video) as reader:
        decoded = list(reader)
    pose = PoseEstimator.load(run_dir[0], device="cpu", detector=str(detectors["person"]))
    expected = pose.predict(decoded)
    assert sum(len(f["people"]) for f in record["frames"]) == sum(map(len, expected)) > 0
    for frame, people in zip(record["frames"], expected):
        np.testing.assert_allclose([p["keypoints"] for p in frame["people"]], [p.as_array() for p in people],
                                   rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", ["corrupt video", "not a detector", "video out suffix"])
def test_bad_video_and_detector_inputs_are_one_line_exit_2(run_dir, detectors, coco_sample, tmp_path, capsys, case):
    from vitpose_scale.infer import main

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    good = _write_video(tmp_path / "good.mp4", [np.zeros((48, 64, 3), np.uint8)] * 2)
    argv = {"corrupt video": ["--video", str(bad)],
            "not a detector": ["--image", str(coco_sample / "000000000785.jpg"), "--detector", str(run_dir[0])],
            "video out suffix": ["--video", str(good), "--out", str(tmp_path / "o.png")]}[case]
    assert main(["--checkpoint", str(run_dir[0]), *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1, err


def test_one_dataset_reader_for_every_command(run_dir):
    """--dataset of eval/infer/the API is read as split/export read it: a single-task model takes its
    own keypoint set or 0; anything else is one InputError naming what is there."""
    from vitpose_scale.evaluate import select_dataset

    cfg = run_dir[2]
    assert select_dataset(cfg, None) == (None, cfg) == select_dataset(cfg, "coco") == select_dataset(cfg, "0")
    for bad in ("aic", "1"):
        with pytest.raises(InputError, match=rf"--dataset {bad}: .*0=coco"):
            select_dataset(cfg, bad)
