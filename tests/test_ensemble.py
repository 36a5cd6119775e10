"""Heatmap ensembles: one member is the model, identical members are one, different members average."""
import copy
import pickle

import numpy as np
import pytest
import torch

from vitpose_scale.config import from_dict
from vitpose_scale.eval.decode import decode_heatmaps
from vitpose_scale.eval.ensemble import (
    EnsembleMember,
    HeatmapEnsemble,
    MultiSizeDataset,
    resize_heatmaps,
    size_key,
)
from vitpose_scale.evaluate import build_eval_set, evaluate_checkpoints
from vitpose_scale.models.interop import export_official
from vitpose_scale.models.pose import build_pose_model
from vitpose_scale.models.weights import load_weights


def _cfg(coco_sample, image_size=(64, 48), **eval_keys):
    return from_dict({
        "model": {"preset": "tiny", "image_size": list(image_size), "head": "simple"},
        "data": {"kind": "coco", "root": str(coco_sample), "val_ann": "test_coco.json", "val_images": ".",
                 "num_workers": 0},
        "eval": {"batch_size": 5, **eval_keys},
    })


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, coco_sample):
    """Two different random tiny models at 64x48 and one at 128x96 (official format)."""
    root = tmp_path_factory.mktemp("ensemble")
    paths = {}
    for name, size, seed in [("a", (64, 48), 0), ("b", (64, 48), 1), ("c", (128, 96), 2)]:
        torch.manual_seed(seed)
        model = build_pose_model(_cfg(coco_sample, size).model)
        with torch.no_grad():  # a random head's maps are near zero everywhere: give them structure
            for p in model.keypoint_head.parameters():
                p.mul_(20.0)
        paths[name] = str(root / f"{name}.pth")
        export_official(model, paths[name])
        big = root / f"{name}.yaml"
        big.write_text(f"model: {{preset: tiny, image_size: {list(size)}, head: simple}}\n")
        paths[name + "_cfg"] = str(big)
    return paths


def _same_results(r1, r2):
    assert len(r1) == len(r2)
    for x, y in zip(r1, r2):
        assert x == y


def test_one_member_ensemble_equals_the_model(coco_sample, checkpoints):
    from vitpose_scale.eval.runner import evaluate_model

    cfg = _cfg(coco_sample)
    model = build_pose_model(cfg.model)
    load_weights(model, checkpoints["a"])
    model.eval()
    dataset, ann, _ = build_eval_set(cfg)
    stats, results = evaluate_model(lambda x: model(x).float(), dataset, ann, cfg, 0, 1, progress=False)
    one = evaluate_checkpoints(cfg, [checkpoints["a"]])
    _same_results(one.results, results)
    assert one.stats == stats
    assert len(results) == 12 and max(r["score"] for r in results) > 0


def test_two_identical_members_equal_one(coco_sample, checkpoints):
    cfg = _cfg(coco_sample)
    one = evaluate_checkpoints(cfg, [checkpoints["a"]])
    two = evaluate_checkpoints(cfg, [checkpoints["a"], checkpoints["a"]])
    _same_results(two.results, one.results)
    # Unequal weights on identical models: the same heatmaps up to float rounding (compared as
    # heatmaps: the official decode's unbounded Newton step amplifies 1e-7 on a random model's maps).
    from vitpose_scale.data.loader import collate
    from vitpose_scale.keypoints import get_spec

    COCO_FLIP_PAIRS = get_spec("coco").flip_pairs
    from vitpose_scale.evaluate import build_ensemble

    batch = collate([one.dataset[i] for i in range(4)])
    single = build_ensemble(cfg, [checkpoints["a"]]).predict(batch, True, COCO_FLIP_PAIRS)
    weighted = build_ensemble(cfg, [checkpoints["a"]] * 2, weights=[3.0, 1.0]).predict(batch, True, COCO_FLIP_PAIRS)
    assert np.allclose(weighted, single, rtol=1e-6, atol=1e-7)


def test_different_members_change_the_prediction_and_mix_input_sizes(coco_sample, checkpoints):
    cfg = _cfg(coco_sample)
    a = evaluate_checkpoints(cfg, [checkpoints["a"]]).results
    mixed = evaluate_checkpoints(cfg, [checkpoints["a"], checkpoints["c"]],
                                 model_configs=[checkpoints["a_cfg"], checkpoints["c_cfg"]])
    assert len(mixed.results) == 12
    assert any(x["keypoints"] != y["keypoints"] for x, y in zip(a, mixed.results))
    # The 128x96 member saw its own crops, exactly those of a dataset built at 128x96.
    big, _, _ = build_eval_set(_cfg(coco_sample, (128, 96)))
    for i in (0, 7):
        assert torch.equal(mixed.dataset[i]["img_128x96"], big[i]["img"])
        assert torch.equal(mixed.dataset[i]["img"], build_eval_set(cfg)[0][i]["img"])


def _gaussian_maps(h, w, mu, k=17, sigma=2.0):
    ys, xs = np.mgrid[0:h, 0:w]
    g = np.exp(-((xs - mu[0]) ** 2 + (ys - mu[1]) ** 2) / (2 * sigma ** 2)).astype(np.float32)
    return np.repeat(g[None], k, axis=0)


def _box_fraction_to_heatmap(frac, hm_hw):
    """A point given as a fraction of the box (0 = left/top edge, 1 = right/bottom) on the UDP heatmap grid."""
    return np.array([frac[0] * (hm_hw[1] - 1), frac[1] * (hm_hw[0] - 1)])


def test_two_different_models_average_to_a_point_between_them():
    """Hand-made 'models' answer one Gaussian per joint at a fixed place of the box; B runs at twice
    A's input size. Their ensemble's keypoints lie between theirs, at the weighted place."""
    fa, fb = (0.40, 0.50), (0.52, 0.58)  # where each model puts every joint, as box fractions

    def model_at(frac, in_hw):
        hm_hw = (in_hw[0] // 4, in_hw[1] // 4)
        sigma = 2.0 * in_hw[0] / 64  # the same width in box units at both input sizes

        def forward(images):
            assert tuple(images.shape[-2:]) == in_hw
            maps = _gaussian_maps(*hm_hw, _box_fraction_to_heatmap(frac, hm_hw), sigma=sigma)
            return torch.from_numpy(np.repeat(maps[None], len(images), axis=0))
        return forward

    a = EnsembleMember(model_at(fa, (64, 48)), (64, 48))
    b = EnsembleMember(model_at(fb, (128, 96)), (128, 96))
    batch = {"img": torch.zeros(2, 3, 64, 48), "img_128x96": torch.zeros(2, 3, 128, 96)}
    center, scale = np.array([[320.0, 240.0]] * 2), np.array([[150.0, 200.0]] * 2)

    def decode(hm):
        return decode_heatmaps(hm, center, scale, image_size=(64, 48))[0][0]  # person 0: (17, 2)

    alone_a = decode(HeatmapEnsemble([a], (16, 12), (64, 48)).predict(batch, False, []))
    alone_b = decode(HeatmapEnsemble([b], (32, 24), (64, 48)).predict(batch, False, []))
    expected_a = center[0] - scale[0] / 2 + np.array(fa) * scale[0]
    expected_b = center[0] - scale[0] / 2 + np.array(fb) * scale[0]
    assert np.abs(alone_a - expected_a).max() < 0.5 and np.abs(alone_b - expected_b).max() < 0.5
    for wa, wb in [(1.0, 1.0), (3.0, 1.0)]:
        a.weight, b.weight = wa, wb
        mix = decode(HeatmapEnsemble([a, b], (16, 12), (64, 48)).predict(batch, False, []))
        d = alone_b - alone_a
        t = ((mix - alone_a) * d).sum(1) / (d * d).sum(1)  # position along A -> B
        off_line = np.abs((mix - alone_a)[:, 0] * d[:, 1] - (mix - alone_a)[:, 1] * d[:, 0]) / np.linalg.norm(d, axis=1)
        assert np.all((t > 0.05) & (t < 0.95)), t
        assert np.all(off_line < 0.05 * np.linalg.norm(d, axis=1))
        if wa == wb:  # symmetric: the middle
            assert np.abs(t - 0.5).max() < 0.05, t
        else:  # closer to the heavier member
            assert np.all(t < 0.45), t


def test_resizing_keeps_the_udp_grid_aligned():
    # A Gaussian at a sub-pixel spot on a 64x48 map, brought to 16x12 and back: same image point.
    mu = np.array([30.3, 17.6])
    hm = _gaussian_maps(64, 48, mu, k=1, sigma=6.0)[None]
    small = resize_heatmaps(torch.from_numpy(hm), (16, 12)).numpy()
    c, s = np.array([[300.0, 200.0]]), np.array([[120.0, 160.0]])
    truth = mu * s[0] / np.array([47, 63]) + c[0] - s[0] / 2
    # Bounded DARK decodes a wide Gaussian best (the official decode's 11-px blur and one-pixel
    # differences are tuned to sigma 2); the resize is what is tested here.
    big_xy = decode_heatmaps(hm, c, s, image_size=(256, 192), method="dark")[0]
    small_xy = decode_heatmaps(small, c, s, image_size=(64, 48), method="dark")[0]
    assert np.abs(big_xy - truth).max() < 1e-3
    assert np.abs(small_xy - truth).max() < 0.05
    misaligned = torch.nn.functional.interpolate(torch.from_numpy(hm), size=(16, 12), mode="bilinear",
                                                 align_corners=False).numpy()
    assert np.abs(decode_heatmaps(misaligned, c, s, image_size=(64, 48), method="dark")[0] - truth).max() > 1.0


def test_ensemble_arguments_are_checked(coco_sample, checkpoints):
    from vitpose_scale.config import ConfigError

    cfg = _cfg(coco_sample)
    with pytest.raises(ConfigError, match="--weight"):
        evaluate_checkpoints(cfg, [checkpoints["a"], checkpoints["b"]], weights=[1.0])
    with pytest.raises(ConfigError, match="--model-config"):
        evaluate_checkpoints(cfg, [checkpoints["a"], checkpoints["b"]], model_configs=[checkpoints["a_cfg"]])
    with pytest.raises(ValueError, match="weights"):
        HeatmapEnsemble([EnsembleMember(lambda x: x, (64, 48), -1.0)], (16, 12), (64, 48))


def test_model_config_takes_set_style_overrides_per_member(coco_sample, checkpoints):
    """`--model-config b.yaml model.image_size=[128,96]`: one member's config file with overrides,
    parsed by the eval command's own parser; a word that is not KEY=VALUE is named."""
    from vitpose_scale.config import ConfigError
    from vitpose_scale.evaluate import build_parser, member_model_configs

    cfg = _cfg(coco_sample)
    args = build_parser().parse_args(["--config", "x.yaml", "--checkpoint", checkpoints["a"], "--checkpoint",
                                      checkpoints["c"], "--model-config", checkpoints["a_cfg"],
                                      "--model-config", checkpoints["a_cfg"], "model.image_size=[128,96]"])
    first, second = member_model_configs(cfg, args.checkpoint, args.model_config)
    assert tuple(first.image_size) == (64, 48) and tuple(second.image_size) == (128, 96)
    with pytest.raises(ConfigError, match="'model.image_size' is not KEY=VALUE"):
        member_model_configs(cfg, ["a"], [[checkpoints["a_cfg"], "model.image_size", "128"]])


class _Boxes:
    """A stand-in dataset: records with centre and scale, like TopDownCocoDataset's."""

    def __init__(self, boxes, image_size=(256, 192)):
        self.records = [{"center": np.array(b[:2], dtype=np.float32), "scale": np.array(b[2:], dtype=np.float32)}
                        for b in boxes]
        self.image_size = image_size

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return {"img": f"crop {i} at {self.image_size}", "index": i}


def test_ensemble_multi_size_dataset_checks_its_members_and_stands_for_the_main_one():
    boxes = [(1000, 20, 48, 64), (30, 40, 96, 128)]
    main, other = _Boxes(boxes), _Boxes([(b[0] + 5e-4, *b[1:]) for b in boxes], (384, 288))
    ds = MultiSizeDataset(main, {(384, 288): other})
    assert ds.image_size == (256, 192) and ds.records is main.records  # attributes of the main dataset
    assert len(ds) == 2 and ds[1] == {"img": "crop 1 at (256, 192)", "index": 1,
                                      size_key((384, 288)): "crop 1 at (384, 288)"}
    for clone in (copy.copy(ds), pickle.loads(pickle.dumps(ds))):  # DataLoader workers copy it
        assert clone[0][size_key((384, 288))] == "crop 0 at (384, 288)"
    with pytest.raises(ValueError, match=r"^ensemble input size \(384, 288\): 1 boxes, the main size has 2; "
                                         r"expected the same detections/annotations$"):
        MultiSizeDataset(main, {(384, 288): _Boxes(boxes[:1])})
    shifted = _Boxes([(boxes[0][0] + 2e-3, *boxes[0][1:]), boxes[1]])  # 2e-3 px apart (an absolute tolerance)
    with pytest.raises(ValueError, match=r"^ensemble input size \(384, 288\) gives other boxes than \(256, 192\): "
                                         r"expected every member's input size to have the same aspect ratio"):
        MultiSizeDataset(main, {(384, 288): shifted})
    scaled = _Boxes([(*b[:2], b[2] * 1.01, b[3] * 1.01) for b in boxes])  # 1 % larger: not within 1e-3 px
    with pytest.raises(ValueError, match="gives other boxes"):
        MultiSizeDataset(main, {(384, 288): scaled})
