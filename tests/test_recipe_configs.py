"""The shipped pose configs carry the official ViTPose recipe (configs/body/.../coco/ViTPose_*_coco_256x192.py of
github.com/ViTAE-Transformer/ViTPose, transcribed below), and fp32 is one override away."""
from pathlib import Path

import pytest

from vitpose_scale.config import load_config

ROOT = Path(__file__).resolve().parents[1]

# Per model: (embed_dim, depth, num_heads, drop_path_rate, layer_decay_rate) of the official configs.
OFFICIAL_MODELS = {
    "s": (384, 12, 12, 0.1, 0.8),
    "b": (768, 12, 12, 0.3, 0.75),
    "l": (1024, 24, 16, 0.5, 0.8),
    "h": (1280, 32, 16, 0.55, 0.85),
}
# Shared by all four: optimizer, lr_config, total_epochs, 64 samples per GPU x 8 GPUs, pipeline, test_cfg, data_cfg.
OFFICIAL_SHARED = {
    "optim.lr": 5e-4, "optim.betas": [0.9, 0.999], "optim.weight_decay": 0.1, "optim.grad_clip": 1.0,
    "optim.schedule": "step", "optim.warmup_iters": 500, "optim.warmup_ratio": 0.001,
    "optim.step_epochs": [170, 200], "optim.step_gamma": 0.1, "train.epochs": 210, "train.batch_size": 512,
    "data.sigma": 2.0, "data.flip_prob": 0.5, "data.half_body_prob": 0.3, "data.half_body_min_joints": 8,
    "data.scale_factor": 0.5, "data.rot_factor": 40.0, "data.det_score_thr": 0.0,
    "eval.flip_test": True, "eval.use_udp": True, "eval.decode": "udp_dark", "eval.blur_kernel": 11,
    "eval.oks_nms_thr": 0.9, "eval.rescore_thr": 0.2,
    "model.patch_size": 16, "model.qkv_bias": True, "model.head": "classic", "model.head_channels": 256,
}
ABLATIONS = sorted((ROOT / "configs" / "ablation").glob("*.yaml"))


def _get(cfg, dotted):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def _check_shared(cfg, path):
    for key, want in OFFICIAL_SHARED.items():
        assert _get(cfg, key) == want, f"{path}: {key} is {_get(cfg, key)!r}, the official recipe has {want!r}"
    assert cfg.data.det_file.endswith("COCO_val2017_detections_AP_H_56_person.json")


def _check_model(cfg, key, path):
    dim, depth, heads, drop_path, layer_decay = OFFICIAL_MODELS[key]
    m = cfg.model.resolved()
    assert (m.embed_dim, m.depth, m.num_heads, m.mlp_ratio) == (dim, depth, heads, 4.0), path
    assert m.drop_path == drop_path and cfg.layer_decay == layer_decay, path


@pytest.mark.parametrize("key", sorted(OFFICIAL_MODELS))
def test_main_configs_equal_the_official_recipe(key):
    path = ROOT / "configs" / f"vitpose_{key}_256x192.yaml"
    cfg = load_config(path)
    assert cfg.model.image_size == [256, 192]
    _check_model(cfg, key, path)
    _check_shared(cfg, path)


@pytest.mark.parametrize("path", ABLATIONS, ids=[p.name for p in ABLATIONS])
def test_ablations_are_the_b_recipe(path):
    cfg = load_config(path)
    _check_model(cfg, "b", path)
    _check_shared(cfg, path)


def test_g_config_is_the_shared_recipe_on_coco_and_aic():
    path = ROOT / "configs" / "vitpose_g_576x432.yaml"
    cfg = load_config(path)
    _check_shared(cfg, path)
    assert cfg.layer_decay == 0.85 and cfg.model.image_size == [576, 432]
    (aic,) = cfg.data.extra_train
    assert aic["ann"] == "annotations/aic_train.json"
    assert aic["keypoint_map"] == [6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, None, None]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("vitpose_*.yaml")) + ABLATIONS,
                         ids=lambda p: p.name)
def test_bf16_is_stated_and_fp32_is_one_override_away(path):
    text = path.read_text()
    assert load_config(path).parallel.precision == "bf16"
    assert "official" in text and "--set parallel.precision=fp32" in text  # the comment says how to match it
    assert load_config(path, ["parallel.precision=fp32"]).parallel.precision == "fp32"
