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
    "eval.flip_test": True, "eval.decode": "udp_dark", "eval.blur_kernel": 11,
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


# ------------------------------------------------------------- ViTPose+ and ViTPose++ --
# ViTPose++ (configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/coco/
# vitPose+_{small,base,large,huge}_coco+aic+mpii+ap10k+apt36k+wholebody_256x192_udp.py), per model:
# (embed_dim, depth, num_heads, drop_path_rate, layer_decay_rate, num_expert, part_features).
OFFICIAL_PP_MODELS = {
    "s": (384, 12, 12, 0.1, 0.8, 6, 192),  # part_features 192 for S too: half its width
    "b": (768, 12, 12, 0.3, 0.75, 6, 192),
    "l": (1024, 24, 16, 0.5, 0.8, 6, 256),
    "h": (1280, 32, 16, 0.55, 0.8, 6, 320),  # the single-set H config: 0.85
}
# Shared by the four: the single-set values above except AdamW lr 1e-3 and samples_per_gpu 128
# (x 8 GPUs: the GPU count is ours, the config does not give it).
OFFICIAL_PP_SHARED = {**OFFICIAL_SHARED, "optim.lr": 1e-3, "train.batch_size": 1024}
# `data.train` in order (dataset_idx 0-5) with the out_channels of keypoint_head / associate_keypoint_head,
# whether the set's data_cfg has use_gt_bbox=True, and whether its train pipeline has TopDownHalfBodyTransform.
OFFICIAL_PP_TASKS = [("coco", 17, False, True), ("aic", 14, True, True), ("mpii", 16, True, False),
                     ("ap10k", 17, True, True), ("apt36k", 17, True, True), ("coco_wholebody", 133, False, True)]
# Their training annotation files (official names, except AIC's, which docs/datasets.md names as mmpose's).
OFFICIAL_PP_TRAIN_ANN = ["person_keypoints_train2017.json", "aic_train.json", "mpii_train.json",
                         "ap10k-train-split1.json", "train_annotations_1.json", "coco_wholebody_train_v1.0.json"]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))  # tests/test_shipped_configs.py's discovery
MULTITASK_CONFIGS = ([f"vitpose_pp_{k}_256x192.yaml" for k in "sblh"]
                     + [f"vitpose_plus_{k}_256x192.yaml" for k in "blh"] + ["vitpose_plus_g_576x432.yaml"])


def _check_tasks(cfg, tasks, path):
    from vitpose_scale.config import task_configs, task_names

    assert task_names(cfg) == [t[0] for t in tasks], path
    assert cfg.model.head_keypoints == [t[1] for t in tasks], path
    assert all("ratio" not in e and "loss_weight" not in e for e in cfg.data.tasks), path  # concatenated
    for (name, task), (_, _, gt_boxes, half_body), ann in zip(task_configs(cfg), tasks, OFFICIAL_PP_TRAIN_ANN):
        assert task.data.keypoint_set == name and Path(task.data.train_ann).name == ann, (path, name)
        assert (task.data.det_file is None) == gt_boxes, (path, name)
        if not gt_boxes:
            assert task.data.det_file.endswith("COCO_val2017_detections_AP_H_56_person.json"), (path, name)
        assert task.data.half_body_prob == (0.3 if half_body else 0.0), (path, name)


@pytest.mark.parametrize("key", sorted(OFFICIAL_PP_MODELS))
def test_vitpose_pp_configs_equal_the_official_recipe(key):
    path = ROOT / "configs" / f"vitpose_pp_{key}_256x192.yaml"
    cfg = load_config(path)
    dim, depth, heads, drop_path, layer_decay, experts, part = OFFICIAL_PP_MODELS[key]
    m = cfg.model.resolved()
    assert (m.embed_dim, m.depth, m.num_heads, m.mlp_ratio, m.image_size) == (dim, depth, heads, 4.0, [256, 192])
    assert m.drop_path == drop_path and cfg.layer_decay == layer_decay, path
    assert (m.backbone, m.num_experts, m.part_features) == ("vit_moe", experts, part), path
    for k, want in OFFICIAL_PP_SHARED.items():
        assert _get(cfg, k) == want, f"{path}: {k} is {_get(cfg, k)!r}, the official recipe has {want!r}"
    _check_tasks(cfg, OFFICIAL_PP_TASKS, path)


@pytest.mark.parametrize("key", ["b", "l", "h"])
def test_vitpose_plus_configs_are_the_single_set_recipe_with_three_heads(key):
    """No official ViTPose+ training config exists: each size's single-set recipe, the first three
    datasets of the ViTPose++ configs, a plain backbone."""
    path = ROOT / "configs" / f"vitpose_plus_{key}_256x192.yaml"
    cfg = load_config(path)
    _check_model(cfg, key, path)
    _check_shared(cfg, path)
    assert (cfg.model.backbone, cfg.model.num_experts) == ("vit", 1)
    _check_tasks(cfg, OFFICIAL_PP_TASKS[:3], path)


def test_plus_g_is_the_g_config_with_three_heads():
    g = load_config(ROOT / "configs" / "vitpose_g_576x432.yaml")
    path = ROOT / "configs" / "vitpose_plus_g_576x432.yaml"
    plus = load_config(path)
    _check_shared(plus, path)
    for section in ("optim", "parallel", "eval"):
        assert getattr(plus, section) == getattr(g, section), section
    for key in ("preset", "backbone", "image_size", "drop_path", "attention", "activation_checkpointing"):
        assert getattr(plus.model, key) == getattr(g.model, key), key
    assert (plus.train.epochs, plus.train.batch_size) == (g.train.epochs, g.train.batch_size)
    assert g.data.extra_train and not g.data.tasks and g.model.head_keypoints is None  # the single-head option
    assert not plus.data.extra_train
    _check_tasks(plus, OFFICIAL_PP_TASKS[:3], path)
    for text in (path.read_text(), (ROOT / "configs" / "vitpose_g_576x432.yaml").read_text()):
        assert "Which G config" in text  # each header names the other option


def _vit_params(C, depth, hidden, tokens):
    """qkv + proj with biases, fc1 + fc2 with biases, two LayerNorms per block; patch conv, pos_embed
    with its extra token, last norm."""
    block = (3 * C * C + 3 * C) + (C * C + C) + (C * hidden + hidden) + (hidden * C + C) + 4 * C
    return depth * block + (3 * 16 * 16 * C + C) + (tokens + 1) * C + 2 * C


def _head_params(C, joints):
    """Two 4x4 deconvolutions to 256 channels (no bias) with BatchNorm, then a 1x1 conv to the joints."""
    return C * 256 * 16 + 2 * 256 + 256 * 256 * 16 + 2 * 256 + 256 * joints + joints


# (width, depth, MLP hidden, tokens, experts, part_features) -> backbone with experts, the experts alone,
# each head (hand arithmetic below, and written out).
PARAMS = {
    "vitpose_pp_s_256x192.yaml": ((384, 12, 1536, 192, 6, 192), 39_369_984, 21_247_488,
                                  [2_626_833, 2_626_062, 2_626_576, 2_626_833, 2_626_833, 2_656_645]),
    "vitpose_pp_b_256x192.yaml": ((768, 12, 3072, 192, 6, 192), 121_195_776, 42_481_152,
                                  [4_199_697, 4_198_926, 4_199_440, 4_199_697, 4_199_697, 4_229_509]),
    "vitpose_pp_l_256x192.yaml": ((1024, 24, 4096, 192, 6, 256), 429_156_352, 151_031_808,
                                  [5_248_273, 5_247_502, 5_248_016, 5_248_273, 5_248_273, 5_278_085]),
    "vitpose_pp_h_256x192.yaml": ((1280, 32, 5120, 192, 6, 320), 893_107_200, 314_634_240,
                                  [6_296_849, 6_296_078, 6_296_592, 6_296_849, 6_296_849, 6_326_661]),
    "vitpose_plus_b_256x192.yaml": ((768, 12, 3072, 192, 1, 0), 85_794_816, 0, [4_199_697, 4_198_926, 4_199_440]),
    "vitpose_plus_l_256x192.yaml": ((1024, 24, 4096, 192, 1, 0), 303_296_512, 0, [5_248_273, 5_247_502, 5_248_016]),
    "vitpose_plus_h_256x192.yaml": ((1280, 32, 5120, 192, 1, 0), 630_912_000, 0, [6_296_849, 6_296_078, 6_296_592]),
    "vitpose_plus_g_576x432.yaml": ((1408, 40, 6144, 36 * 27, 1, 0), 1_012_462_592, 0,
                                    [6_821_137, 6_820_366, 6_820_880]),
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_multitask_parameter_counts_by_hand(name):
    from vitpose_scale.models.pose import build_pose_model

    (C, depth, hidden, tokens, experts, part), backbone, expert_params, heads = PARAMS[name]
    # An expert block: fc2 gives C - part outputs, each of the E experts the last `part` (with biases).
    moe = depth * (experts * (hidden * part + part) - (hidden * part + part)) if experts > 1 else 0
    assert _vit_params(C, depth, hidden, tokens) + moe == backbone
    assert depth * experts * (hidden * part + part) * (experts > 1) == expert_params
    cfg = load_config(ROOT / "configs" / name)
    assert [_head_params(C, k) for k in cfg.model.head_keypoints] == heads
    model = build_pose_model(cfg.model, device="meta")
    assert sum(p.numel() for p in model.backbone.parameters()) == backbone
    assert sum(p.numel() for n, p in model.backbone.named_parameters() if ".mlp.experts." in n) == expert_params
    assert [sum(p.numel() for p in h.parameters()) for h in model.heads] == heads


def test_shipped_config_discovery_finds_and_builds_every_config():
    """The rglob of tests/test_shipped_configs.py finds the multi-task configs, and every shipped pose
    config loads and builds on the meta device with the heads and experts it names."""
    import yaml

    from vitpose_scale.models.pose import build_pose_model

    assert set(MULTITASK_CONFIGS) <= {c.name for c in CONFIGS}
    built = 0
    for path in CONFIGS:
        if "mae" in (yaml.safe_load(path.read_text()) or {}):
            continue  # MAE pretraining configs: no pose model
        cfg = load_config(path)
        model = build_pose_model(cfg.model, device="meta")
        joints = cfg.model.head_keypoints or [cfg.model.num_keypoints]
        assert [h.final_layer.out_channels for h in model.heads] == joints, path
        assert model.backbone.num_experts == (cfg.model.num_experts if cfg.model.backbone == "vit_moe" else 1), path
        built += 1
    assert built >= len(MULTITASK_CONFIGS) + 5  # + S/B/L/H/G
