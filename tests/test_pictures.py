"""Pictures people look at: box scores and title bands, prediction grids with titles and boxes, the
`vitpose-scale plot` command, and the MAE pretrainer's reconstruction pictures."""
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vitpose_scale.visualize import (add_title, checkpoints_title, draw_skeletons, record_boxes,
                                     save_predictions_figure)

ROOT = Path(__file__).resolve().parents[1]


def _svg_texts(path: Path) -> list[str]:
    """matplotlib's SVG keeps every drawn string as a comment: the texts the figure shows."""
    return re.findall(r"<!-- (.*?) -->", path.read_text())


# ------------------------------------------------------------------ draw_skeletons / add_title --
def test_draw_skeletons_writes_each_box_score_at_its_top_left_corner():
    img = np.zeros((200, 200, 3), np.uint8)
    box = [50, 60, 100, 100]
    with_score = draw_skeletons(img, [], boxes=[box + [0.87]], thickness=2)
    without = draw_skeletons(img, [], boxes=[box + [0.87]], thickness=2, box_scores=False)
    four_columns = draw_skeletons(img, [], boxes=[box], thickness=2)
    assert np.array_equal(without, four_columns)  # no score column: nothing written
    changed = np.argwhere((with_score != without).any(axis=2))
    assert len(changed) > 20  # the digits
    # all of the label lies at the box's top-left corner, inside the box's first ~45 x 25 pixels
    assert changed[:, 0].min() >= 60 and changed[:, 0].max() < 85
    assert changed[:, 1].min() >= 50 and changed[:, 1].max() < 95
    label = with_score[62:76, 52:90]
    assert label.max() == 255 and (label == 0).all(axis=2).any()  # white digits on a black patch
    other = draw_skeletons(img, [], boxes=[box + [0.12]], thickness=2)
    assert not np.array_equal(other, with_score)  # the number itself is drawn


def test_add_title_adds_a_band_with_the_text_above_the_untouched_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (90, 300, 3), dtype=np.uint8)
    out = add_title(img, "ViTPose-B best.pth: AP 0.734")
    band = out.shape[0] - img.shape[0]
    assert out.shape[1:] == img.shape[1:] and 20 <= band <= 60
    assert np.array_equal(out[band:], img)  # the picture itself is unchanged
    top = out[:band]
    assert (top[:, :3] == 255).all() and (top[:, -3:] == 255).all()  # white margins
    assert top.min() < 100 and top.std() > 10  # dark text in the band
    assert not np.array_equal(add_title(img, "another title")[:band], top)
    assert add_title(img[..., 0], "grey").shape == out.shape  # a grey image becomes BGR
    long = add_title(img, "a very long title " * 10)
    assert long.shape == out.shape and long[:band].min() < 255  # shrunk to fit, still drawn


# ------------------------------------------------------------------------- prediction grids --
def _two_people_on(coco_sample):
    """Two results on the sample's first image, inside two dataset boxes, and the records of three boxes."""
    gt = json.loads((coco_sample / "test_coco.json").read_text())
    image = gt["images"][0]
    people = []
    for x0, y0, score in ((100, 80, 0.9), (400, 120, 0.6)):
        kp = np.zeros((17, 3))
        kp[:, 0], kp[:, 1], kp[:, 2] = x0 + np.linspace(0, 60, 17), y0 + np.linspace(0, 150, 17), 0.9
        people.append({"image_id": image["id"], "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                       "score": score})
    records = [{"image_id": image["id"], "center": np.array([c[0], c[1]], np.float32),
                "scale": np.array([s[0], s[1]], np.float32) * 1.25, "bbox_score": 1.0}
               for c, s in (((130, 155), (90, 200)), ((430, 195), (90, 200)), ((300, 300), (20, 20)))]
    return gt, people, records


def test_record_boxes_undo_the_padding():
    _, _, records = _two_people_on(Path(ROOT / "data" / "coco_sample"))
    boxes = record_boxes(records, padding=1.25)
    (image_id,) = boxes
    np.testing.assert_allclose(boxes[image_id][0], [85, 55, 90, 200, 1.0], atol=1e-4)


def test_prediction_grid_has_the_title_and_draws_each_persons_box(coco_sample, tmp_path):
    from vitpose_scale.visualize import _person_boxes

    gt, people, records = _two_people_on(coco_sample)
    boxes = record_boxes(records, 1.25)
    image_id = people[0]["image_id"]
    matched = _person_boxes(people, boxes[image_id])
    # each person gets the box holding its joints (not the tiny third one), with its own score
    np.testing.assert_allclose(matched, [[85, 55, 90, 200, 0.9], [385, 95, 90, 200, 0.6]], atol=1e-4)
    with_bbox = [dict(people[0], bbox=[10, 20, 30, 40])]
    np.testing.assert_allclose(_person_boxes(with_bbox, boxes[image_id]), [[10, 20, 30, 40, 0.9]])

    title = "ViTPose-B run/best.pth: AP 0.734"
    svg = save_predictions_figure(coco_sample, people, gt["images"], tmp_path / "grid.svg", title=title, boxes=boxes)
    assert title in _svg_texts(svg)
    plain = cv2.imread(str(save_predictions_figure(coco_sample, people, gt["images"], tmp_path / "a.png")))
    boxed = cv2.imread(str(save_predictions_figure(coco_sample, people, gt["images"], tmp_path / "b.png",
                                                   boxes=boxes)))
    assert plain.shape == boxed.shape and (plain != boxed).any(axis=2).sum() > 200  # two boxes and scores


def test_single_model_and_ensemble_titles_differ():
    from vitpose_scale.config import ModelConfig

    b, l_ = ModelConfig(preset="B"), ModelConfig(preset="L")
    one = checkpoints_title(["runs/b/best.pth"], [b], {"AP": 0.7341}, "AP")
    assert one == "ViTPose-B b/best.pth: AP 0.734"
    two = checkpoints_title(["runs/b/best.pth", "runs/l/best.pth"], [b, l_], {"AP": 0.75}, "AP", [0.3, 0.7])
    assert two == "ensemble of 2: ViTPose-B b/best.pth (w 0.3) + ViTPose-L l/best.pth (w 0.7): AP 0.750"
    assert checkpoints_title(["x.pth"], None, None) == "x.pth: no AP (no ground truth)"
    assert "PCKh 0.900" in checkpoints_title(["m.pth"], ["ViTPose-H"], {"PCKh": 0.9}, "PCKh")


def test_eval_command_titles_its_figure_with_the_checkpoints_and_ap(coco_sample, tmp_path, monkeypatch):
    """`vitpose-scale eval` in this process, one model then an ensemble of two: the figure's title."""
    import vitpose_scale.visualize as visualize
    from vitpose_scale.config import load_config
    from vitpose_scale.evaluate import main
    from vitpose_scale.models.interop import export_official
    from vitpose_scale.models.pose import build_pose_model

    config = tmp_path / "eval.yaml"
    config.write_text(json.dumps({
        "model": {"preset": "tiny", "depth": 1, "image_size": [64, 48], "head": "simple",
                  "activation_checkpointing": False},
        "data": {"kind": "coco", "root": str(coco_sample), "val_ann": "test_coco.json", "val_images": ".",
                 "train_ann": "test_coco.json", "train_images": ".", "num_workers": 0},
        "parallel": {"backend": "none", "precision": "fp32"},
        "eval": {"batch_size": 16, "flip_test": False}, "train": {"output_dir": str(tmp_path / "run")}}))
    cfg = load_config(config)
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        export_official(build_pose_model(cfg.model), tmp_path / name / "best.pth")
    calls = []
    real = visualize.save_predictions_figure

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(visualize, "save_predictions_figure", recording)
    base = ["--config", str(config)]
    assert main(base + ["--checkpoint", str(tmp_path / "a" / "best.pth"), "--out", str(tmp_path / "one")]) == 0
    assert main(base + ["--checkpoint", str(tmp_path / "a" / "best.pth"), "--checkpoint",
                        str(tmp_path / "b" / "best.pth"), "--out", str(tmp_path / "two")]) == 0
    stats = [json.loads((tmp_path / d / "stats.json").read_text()) for d in ("one", "two")]
    assert calls[0]["title"] == f"ViTPose-tiny a/best.pth: AP {stats[0]['AP']:.3f}"
    assert calls[1]["title"] == (f"ensemble of 2: ViTPose-tiny a/best.pth + ViTPose-tiny b/best.pth: "
                                 f"AP {stats[1]['AP']:.3f}")
    assert sum(len(b) for b in calls[0]["boxes"].values()) == len(
        [a for a in json.loads((coco_sample / "test_coco.json").read_text())["annotations"]
         if not a.get("iscrowd") and a.get("num_keypoints", 1) > 0])
    png = cv2.imread(str(tmp_path / "one" / "predictions.png"))
    assert png is not None and png.shape[0] > 400


def test_training_figure_title_names_the_run_step_and_ap(tmp_path):
    from vitpose_scale.config import load_config
    from vitpose_scale.engine.metrics import MetricsLog

    load_config(ROOT / "configs" / "demo.yaml").save(tmp_path / "config.yaml")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "kind": "setup", "world_size": 2,
                                                        "total_steps": 600}) + "\n")

    class Tracker:
        images = []

        def log(self, record):
            pass

        def image(self, tag, rgb, step):
            self.images.append((tag, rgb.shape, step))

        def close(self):
            pass

    log = MetricsLog(tmp_path / "metrics.jsonl", True, [Tracker()])
    title = log.figure_title(40, {"AP": 0.1234, "AP50": 0.5}, "eval/predictions/aic")
    assert title == (f"{tmp_path.name}: ViTPose-tiny (96-d, 4 blocks, 192x144), 2 ranks DeepSpeed ZeRO-3, 600 steps"
                     f" | step 40, dataset aic, AP 0.123")
    assert log.figure_title(40).endswith("| step 40")
    coco = ROOT / "data" / "coco_sample"
    gt, people, records = _two_people_on(coco)
    png = tmp_path / "eval" / "p.png"
    log.predictions_figure(people, coco, {im["id"]: im["file_name"] for im in gt["images"]}, 40, png,
                           stats={"AP": 0.5}, boxes=record_boxes(records, 1.25))
    assert cv2.imread(str(png)) is not None and Tracker.images == [("eval/predictions", Tracker.images[0][1], 40)]


# ----------------------------------------------------------------------- vitpose-scale plot --
def _write_run(run: Path, rows: list[dict], config: str = "demo.yaml") -> Path:
    from vitpose_scale.config import load_config

    run.mkdir(parents=True, exist_ok=True)
    load_config(ROOT / "configs" / config).save(run / "config.yaml")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _train_rows(steps=range(10, 110, 10)) -> list[dict]:
    rows = [{"step": 0, "kind": "setup", "world_size": 1, "total_steps": 100}]
    return rows + [{"step": s, "kind": "train", "loss": 1e-3 / (1 + s), "lr": 5e-4 * s / 100} for s in steps]


def test_plot_command_draws_a_pose_run_into_the_run_directory(tmp_path, capsys):
    from vitpose_scale.cli import main

    run = _write_run(tmp_path / "pose", _train_rows() + [{"step": 50, "kind": "eval", "AP": 0.2},
                                                         {"step": 100, "kind": "eval", "AP": 0.3}])
    assert main(["plot", str(run)]) == 0
    png = cv2.imread(str(run / "training_curves.png"))
    assert png is not None and png.shape[:2] == (600, 800) and png.std() > 0  # loss/AP panel above the lr panel
    assert str(run / "training_curves.png") in capsys.readouterr().out
    svg = tmp_path / "elsewhere" / "curves.svg"
    assert main(["plot", str(run), "--out", str(svg)]) == 0
    texts = _svg_texts(svg)
    assert "AP (synthetic val, 100 images)" in texts and "lr" in texts and "loss" in texts
    assert any(t.startswith("pose: ViTPose-tiny") for t in texts)


def test_plot_command_draws_every_dataset_of_a_multitask_run(tmp_path):
    from vitpose_scale.plot import main

    evals = [{"step": s, "kind": "eval", "AP": ap, "coco/AP": ap, "aic/AP": ap / 2} for s, ap in ((50, .2), (100, .4))]
    run = _write_run(tmp_path / "multi", _train_rows() + evals)
    assert main([str(run), "--out", str(tmp_path / "multi.svg")]) == 0
    texts = _svg_texts(tmp_path / "multi.svg")
    assert "coco/AP" in texts and "aic/AP" in texts and "AP" in texts  # one curve per dataset, the axis
    assert "0.400" in texts and "0.200" in texts  # each dataset's best AP


def test_plot_command_draws_an_mae_run_loss_and_lr_only(tmp_path):
    from vitpose_scale.plot import main

    run = _write_run(tmp_path / "mae", _train_rows(), "mae_demo.yaml")
    (run / "reconstructions").mkdir()
    assert main([str(run), "--out", str(tmp_path / "mae.svg")]) == 0
    texts = _svg_texts(tmp_path / "mae.svg")
    assert "loss" in texts and "lr" in texts and not any(t.startswith("AP") for t in texts)
    assert any(t.startswith("mae: MAE ViT-tiny (96-d") for t in texts)


@pytest.mark.parametrize("case", ["missing", "no_metrics", "empty"])
def test_plot_command_without_metrics_is_one_line_and_exit_2(tmp_path, capsys, case):
    from vitpose_scale.cli import main

    run = tmp_path / "run"
    if case != "missing":
        run.mkdir()
    if case == "empty":
        (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "kind": "setup"}) + "\n")
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(run) in err
    assert not (run / "training_curves.png").exists()


def test_plot_help_imports_neither_torch_nor_matplotlib():
    code = ("import sys\nfrom vitpose_scale.cli import main\ntry:\n    main(['plot', '--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0\n"
            "print('torch' in sys.modules, 'matplotlib' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "vitpose-scale plot" in proc.stdout and proc.stdout.strip().endswith("False False")


# ---------------------------------------------------------------------- MAE reconstructions --
def test_reconstruction_of_a_perfect_prediction_is_the_original():
    """With norm_pix_loss the model predicts per-patch normalised pixels: un-normalised with the patches'
    own statistics, the exact target gives back the image on every patch."""
    from vitpose_scale.data.transforms import normalize_image
    from vitpose_scale.engine.pretrain import FILL_RGB, reconstruction_panels
    from vitpose_scale.models.mae import patchify

    rgb = np.random.default_rng(1).integers(0, 256, (2, 32, 48, 3), dtype=np.uint8)
    images = torch.stack([torch.from_numpy(normalize_image(im)) for im in rgb])
    target = patchify(images, 16)
    mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
    mask = torch.tensor([[1, 0, 0, 1, 0, 1]] * 2, dtype=torch.float32)
    for norm, pred in ((True, (target - mean) / (var + 1e-6) ** 0.5), (False, target)):
        for n, (masked, recon, original) in enumerate(reconstruction_panels(images, pred, mask, 16, norm)):
            assert np.abs(original.astype(int) - rgb[n]).max() <= 1
            assert np.abs(recon.astype(int) - rgb[n]).max() <= 1
            assert all((masked[cell] == FILL_RGB).all() for cell in (np.s_[:16, :16], np.s_[16:, :16], np.s_[16:, 32:]))
            assert np.array_equal(masked[:16, 16:32], original[:16, 16:32])
    wrong = reconstruction_panels(images, torch.zeros_like(target), mask, 16, False)[0][1]
    assert np.abs(wrong[:16, :16].astype(int) - rgb[0][:16, :16]).max() > 50  # masked: the prediction shows


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory, synthetic_coco):
    """A 2-step MAE pretraining in this process (parallel.backend=none), a checkpoint at every step."""
    from vitpose_scale.config import load_config
    from vitpose_scale.engine.distributed import DistInfo
    from vitpose_scale.engine.pretrain import MAEPretrainer

    out = tmp_path_factory.mktemp("mae") / "run"
    cfg = load_config(ROOT / "configs" / "mae_demo.yaml", [
        f"data.root={synthetic_coco(8, 2)}", "data.synthetic_train=8", "data.synthetic_val=2", "data.extra_train=[]",
        "mae.decoder_dim=32", "mae.decoder_depth=1", "mae.decoder_heads=4", "model.activation_checkpointing=false",
        "parallel.backend=none", f"train.output_dir={out}", "train.batch_size=4", "train.max_steps=2",
        "train.save_every=1", "train.log_every=1", "optim.warmup_iters=1"])
    trainer = MAEPretrainer(cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    trainer.train()
    return trainer, out


def test_mae_run_writes_masked_reconstruction_and_original_at_each_checkpoint(mae_run):
    from vitpose_scale.engine.pretrain import FILL_RGB, RECONSTRUCTION_IMAGES

    trainer, out = mae_run
    assert sorted(p.name for p in (out / "reconstructions").iterdir()) == ["step_00000001.png", "step_00000002.png"]
    png = cv2.imread(str(out / "reconstructions" / "step_00000002.png"))
    h, w, gap, patch = 128, 96, 4, 16
    scale = 2  # 128x96 crops are shown twice as large
    ph, pw = h * scale, w * scale
    assert png.shape[1] == gap + 3 * (pw + gap)  # three panels per row
    rows = RECONSTRUCTION_IMAGES
    top = png.shape[0] - rows * (ph + gap) - gap
    assert top > 0 and (png[top:top + gap] == 255).all()  # a header (title, column labels) above the rows
    ds = trainer.train_set
    index = np.linspace(0, len(ds) - 1, rows).round().astype(int)
    from vitpose_scale.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    epoch = ds.epoch
    ds.set_epoch(0)
    crops = [ds[int(i)]["img"].numpy().transpose(1, 2, 0) for i in index]
    ds.set_epoch(epoch)
    keep = round(h // patch * (w // patch) * 0.25)
    for r, crop in enumerate(crops):
        y = top + gap + r * (ph + gap)
        panels = [png[y:y + ph, gap + c * (pw + gap):gap + c * (pw + gap) + pw][::scale, ::scale, ::-1]
                  for c in range(3)]
        masked, recon, original = panels
        expected = np.clip(np.round((crop * IMAGENET_STD + IMAGENET_MEAN) * 255), 0, 255)
        assert np.abs(original.astype(int) - expected).max() <= 1  # the input image, un-normalised
        filled = visible = 0
        for py in range(0, h, patch):
            for px in range(0, w, patch):
                cell = (slice(py, py + patch), slice(px, px + patch))
                if (masked[cell] == FILL_RGB).all():
                    filled += 1
                else:  # a visible patch: the input, also pasted into the reconstruction
                    visible += 1
                    assert np.array_equal(masked[cell], original[cell]) and np.array_equal(recon[cell], original[cell])
        assert visible == keep and filled == 48 - keep
        assert not np.array_equal(recon, original)  # the masked patches are predicted


def test_mae_reconstructions_leave_the_training_rng_alone(mae_run):
    trainer, _ = mae_run
    state = torch.get_rng_state()
    first = trainer.reconstruct()
    assert torch.equal(torch.get_rng_state(), state)  # exact resume: the training stream is untouched
    second = trainer.reconstruct()
    assert torch.equal(first[2], second[2]) and torch.allclose(first[1], second[1])  # the same masks every time
