"""Checks added for the mutants that survived the fast tests (docs/testing.md, `bash scripts/mutation.sh <target>`).

Each test pins a value some mutant changed without any other test noticing; the expected values are
written out by hand (the official formulas, analytic values), never taken from the code under test.
"""
import math

import pytest

from vitpose_scale.config import load_config
from vitpose_scale.engine.optim import build_optimizer, lr_factor, param_groups
from vitpose_scale.models.pose import build_pose_model

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _cfg(*sets):
    return load_config(ROOT / "configs" / "demo.yaml", list(sets))


# --- engine/optim.py ---------------------------------------------------------------------------

def test_optim_a_frozen_parameter_is_left_out_and_every_later_one_still_grouped():
    cfg = _cfg("model.depth=2")
    model = build_pose_model(cfg.model)
    names = [n for n, _ in model.named_parameters()]
    frozen = names[0]  # the very first parameter: every trainable one comes after it
    model.get_parameter(frozen).requires_grad_(False)
    grouped = [n for g in param_groups(model, cfg) for n in g["names"]]
    assert sorted(grouped) == sorted(names[1:])


def test_optim_adamw_uses_the_configured_betas():
    cfg = _cfg("model.depth=2", "optim.betas=[0.8,0.95]")
    opt = build_optimizer(build_pose_model(cfg.model), cfg)
    assert opt.defaults["betas"] == (0.8, 0.95)
    assert all(tuple(g["betas"]) == (0.8, 0.95) for g in opt.param_groups)


def test_optim_cosine_stays_at_zero_after_the_last_step_and_a_one_step_decay_reaches_zero():
    cfg = _cfg("optim.schedule=cosine", "optim.warmup_iters=10")
    # 0.5 * (1 + cos(pi * t)) for t = progress clipped to [0, 1]
    for step in (110, 111, 150, 210):
        assert lr_factor(step, cfg, 100, 110) == pytest.approx(0.0, abs=1e-12), step
    assert lr_factor(35, cfg, 100, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)), rel=1e-12)
    assert lr_factor(11, cfg, 100, 11) == pytest.approx(0.0, abs=1e-12)  # decay span of one step


def test_optim_step_schedule_with_one_step_per_epoch():
    cfg = _cfg("optim.schedule=step", "optim.warmup_iters=0", "optim.step_epochs=[2,3]", "optim.step_gamma=0.1")
    assert [lr_factor(s, cfg, 1, 10) for s in range(5)] == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.01])


# --- models/vit.py -----------------------------------------------------------------------------

def _vit(depth=4, drop_path=0.3, embed_dim=64, mlp_ratio=4.0):
    import torch

    from vitpose_scale.models.vit import ViT

    torch.manual_seed(0)
    return ViT(embed_dim=embed_dim, depth=depth, num_heads=4, mlp_ratio=mlp_ratio, drop_path=drop_path, grid=(4, 3))


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 12])
def test_vit_drop_path_rates_are_the_official_linspace(depth):
    """Official ViTPose: ``dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]``."""
    import torch
    from torch import nn

    vit = _vit(depth=depth, drop_path=0.3)
    official = [x.item() for x in torch.linspace(0, 0.3, depth)]
    assert len(vit.blocks) == depth
    rates = [0.0 if isinstance(b.drop_path, nn.Identity) else b.drop_path.drop_prob for b in vit.blocks]
    assert rates == pytest.approx(official, rel=1e-6, abs=1e-12)
    assert isinstance(vit.blocks[0].drop_path, nn.Identity)  # rate 0: no DropPath module at all


def test_vit_qkv_bias_and_attention_kernel_follow_the_config(monkeypatch):
    """model.qkv_bias=false removes exactly depth x 3 x dim parameters; model.attention=plain never
    calls torch's fused kernel (the numbers are equal, so only the call tells them apart)."""
    import torch
    import torch.nn.functional as F

    with_bias = build_pose_model(_cfg().model)
    without = build_pose_model(_cfg("model.qkv_bias=false").model)
    m = _cfg().model
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    vit = with_bias.backbone  # the preset's depth and width
    assert count(with_bias) - count(without) == vit.depth * 3 * vit.embed_dim > 0
    assert all(b.attn.qkv.bias is None for b in without.backbone.blocks)

    def fused(*args, **kwargs):
        raise AssertionError("sdpa called although model.attention=plain")

    plain = build_pose_model(_cfg("model.attention=plain").model).eval()
    monkeypatch.setattr(F, "scaled_dot_product_attention", fused)
    with torch.no_grad():
        plain(torch.randn(1, 3, *m.image_size))
    sdpa = build_pose_model(_cfg("model.attention=sdpa").model).eval()
    with pytest.raises(AssertionError, match="sdpa called"), torch.no_grad():
        sdpa(torch.randn(1, 3, *m.image_size))


def test_vit_layer_norms_use_eps_1e_6_and_the_mlp_width_is_the_rounded_ratio():
    vit = _vit(embed_dim=64, mlp_ratio=2.66)
    norms = [vit.last_norm] + [n for b in vit.blocks for n in (b.norm1, b.norm2)]
    assert all(n.eps == 1e-6 for n in norms)
    assert vit.blocks[0].mlp.fc1.out_features == 170  # round(64 * 2.66) = round(170.24)
    conv = vit.patch_embed.proj
    assert (conv.kernel_size, conv.stride, conv.padding) == ((16, 16), (16, 16), (2, 2))


def test_vit_initial_weights_follow_the_official_init():
    """trunc_normal(std 0.02) for Linear weights and pos_embed, zero biases, LayerNorm (1, 0)."""
    import torch
    from torch import nn

    vit = _vit(embed_dim=128, drop_path=0.0)
    linears = [m for m in vit.modules() if isinstance(m, nn.Linear)]
    weights = torch.cat([m.weight.detach().flatten() for m in linears])
    assert weights.std().item() == pytest.approx(0.02, rel=0.03)
    assert weights.abs().max().item() < 0.02 * 6  # the +-2 cut is 100 std away: nothing near it
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears if m.bias is not None)
    assert vit.pos_embed.detach().std().item() == pytest.approx(0.02, rel=0.05)
    for m in vit.modules():
        if isinstance(m, nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.count_nonzero(m.bias) == 0


def _saved_tensor_count(vit, x):
    import torch

    count = 0

    def pack(t):
        nonlocal count
        count += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        vit(x).sum()
    return count


def test_vit_checkpoints_blocks_only_when_asked():
    """Checkpointing keeps the block internals out of the autograd graph; off, they are all saved."""
    import torch

    from vitpose_scale.models.vit import ViT

    x = torch.randn(1, 3, 64, 48)
    plain = _vit(depth=2, drop_path=0.0)
    checkpointed = ViT(embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0, drop_path=0.0, grid=(4, 3),
                       activation_checkpointing=True)  # through the constructor, as the config does
    saved_plain, saved_checkpointed = _saved_tensor_count(plain, x), _saved_tensor_count(checkpointed, x)
    # each block saves at least its two LayerNorm inputs, attention and MLP activations when not checkpointed
    assert saved_plain >= saved_checkpointed + 4 * len(plain.blocks)


def test_vit_checkpointing_gives_block_gradients_with_a_frozen_embedding():
    """Block inputs that do not require grad (frozen patch_embed/pos_embed) still give block gradients:
    the non-reentrant checkpoint (REFERENCE §6); a reentrant one would leave them None."""
    import torch

    x = torch.randn(1, 3, 64, 48)
    grads = []
    for ac in (False, True):
        vit = _vit(depth=2, drop_path=0.0)
        vit.activation_checkpointing = ac
        vit.patch_embed.requires_grad_(False)
        vit.pos_embed.requires_grad_(False)
        vit(x).square().sum().backward()
        grads.append([p.grad for p in vit.blocks.parameters()])
    assert all(g is not None for g in grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# --- data/transforms.py ------------------------------------------------------------------------

def test_transforms_crop_box_is_the_udp_box_to_crop_map_on_a_ramp():
    """crop_box had no test among the data tests. On the ramp img[y, x] = x + 100 y bilinear sampling is
    exact, so each crop pixel (u, v) must read the source point c + (u - (W - 1) / 2) * s_w / (W - 1)
    (UDP: the box spans W - 1 crop pixel intervals); cv2 samples at 1/32 px, hence the tolerance."""
    import numpy as np

    from vitpose_scale.data.transforms import crop_box

    ys, xs = np.mgrid[0:60, 0:80].astype(np.float32)
    img = xs + 100.0 * ys
    out_h, out_w = 25, 33
    # identity: the box is the whole image measured in pixel intervals
    same = crop_box(img, (39.5, 29.5), (79.0, 59.0), (60, 80))
    np.testing.assert_allclose(same, img, atol=1e-3)
    center, size = (20.0, 30.0), (16.0, 36.0)
    crop = crop_box(img, center, size, (out_h, out_w))
    assert crop.shape == (out_h, out_w)
    v, u = np.mgrid[0:out_h, 0:out_w].astype(np.float64)
    src_x = center[0] + (u - (out_w - 1) / 2) * size[0] / (out_w - 1)
    src_y = center[1] + (v - (out_h - 1) / 2) * size[1] / (out_h - 1)
    np.testing.assert_allclose(crop, src_x + 100.0 * src_y, atol=(1.0 + 100.0) / 32)


def test_transforms_normalize_batch_runs_on_the_given_device_and_names_a_wrong_dtype():
    import torch

    from vitpose_scale.data.transforms import normalize_batch

    crops = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    out = normalize_batch(crops, device="meta")  # the meta device: any device other than the input's
    assert out.device.type == "meta" and out.dtype == torch.float32 and out.shape == crops.shape
    assert normalize_batch(crops).device.type == "cpu"
    with pytest.raises(TypeError, match="torch.int32.*uint8"):
        normalize_batch(crops.to(torch.int32))


def test_transforms_sample_streams_are_the_documented_keys():
    """Stream 0 keeps the three-number key of earlier versions (same draws as before); stream i appends i."""
    import numpy as np

    from vitpose_scale.data.transforms import sample_rng

    assert sample_rng(7, 2, 11).random() == np.random.default_rng([7, 2, 11]).random()
    assert sample_rng(7, 2, 11, stream=3).random() == np.random.default_rng([7, 2, 11, 3]).random()


def test_transforms_box_to_center_scale_is_the_official_xywh2cs():
    """Official _xywh2cs (in pixels): centre x + w/2, y + h/2; the short side grown to the aspect ratio;
    times 1.25. Extra numbers after the box (a detection score) are ignored."""
    import numpy as np

    from vitpose_scale.data.transforms import box_to_center_scale

    center, scale = box_to_center_scale([10, 20, 30, 80, 0.9], 0.75)  # narrow: the width grows to 60
    np.testing.assert_array_equal(center, [25.0, 60.0])
    np.testing.assert_array_equal(scale, [75.0, 100.0])
    center, scale = box_to_center_scale((0, 4, 90, 60), 0.75, padding=1.0)  # wide: the height grows to 120
    np.testing.assert_array_equal(center, [45.0, 34.0])
    np.testing.assert_array_equal(scale, [90.0, 120.0])
    assert center.dtype == scale.dtype == np.float32


class _Normal:
    """A generator whose standard_normal() returns a chosen value (the half-body coin)."""

    def __init__(self, value):
        self.value = value

    def standard_normal(self):
        return self.value


def _half_body(visible_upper, visible_lower, draw, visibility=1):
    """17 COCO joints on a grid; the first ``visible_upper`` upper-body joints (0-10) and the first
    ``visible_lower`` lower-body ones (11-16) labelled with ``visibility``."""
    import numpy as np

    from vitpose_scale.data.transforms import half_body_center_scale
    from vitpose_scale.keypoints import get_spec

    COCO_UPPER_BODY_IDS = get_spec("coco").upper_body_ids

    joints = np.array([[3.0 * j, 5.0 * j + (j % 3)] for j in range(17)])
    visible = np.zeros(17)
    upper = [j for j in range(17) if j in COCO_UPPER_BODY_IDS]
    lower = [j for j in range(17) if j not in COCO_UPPER_BODY_IDS]
    visible[upper[:visible_upper]] = visibility
    visible[lower[:visible_lower]] = visibility
    return half_body_center_scale(joints, visible, COCO_UPPER_BODY_IDS, 0.75, _Normal(draw)), joints, upper, lower


def _box_of(points):
    """The official half-body box: mean centre, min/max extent grown to 3:4, times 1.5."""
    import numpy as np

    lt, rb = points.min(axis=0), points.max(axis=0)
    w, h = rb - lt
    w, h = (w, w / 0.75) if w > 0.75 * h else (h * 0.75, h)
    return points.mean(axis=0), np.array([w, h]) * 1.5


@pytest.mark.parametrize("n_upper, n_lower, draw, half", [
    (3, 3, 0.4, "upper"),   # draw < 0.5 and more than 2 upper joints: the upper body
    (2, 3, 0.4, "lower"),   # only 2 upper joints: the lower body (it has more than 2)
    (3, 3, 0.5, "lower"),   # draw not < 0.5: the lower body
    (2, 2, 0.5, "upper"),   # lower body has only 2: back to the upper body (2 joints suffice)
    (1, 2, 0.5, None),      # fewer than 2 joints in the half chosen: no half-body box
])
def test_transforms_half_body_choice_is_the_official_rule(n_upper, n_lower, draw, half):
    """Official HalfBodyTransform: upper if randn() < 0.5 and len(upper) > 2, else lower if len(lower) > 2,
    else upper; fewer than 2 joints -> none. Joints labelled but occluded (v = 1) count."""
    import numpy as np

    got, joints, upper, lower = _half_body(n_upper, n_lower, draw, visibility=1)
    if half is None:
        assert got is None
        return
    sel = upper[:n_upper] if half == "upper" else lower[:n_lower]
    center, scale = _box_of(joints[sel].astype(np.float32))
    np.testing.assert_allclose(got[0], center, rtol=1e-6)
    np.testing.assert_allclose(got[1], scale, rtol=1e-6)
    assert got[0].dtype == got[1].dtype == np.float32


def test_transforms_udp_target_defaults_to_sigma_2_and_keeps_a_window_ending_at_the_border():
    """Default sigma 2: the value one heatmap pixel from an integer centre is exp(-1/8). A joint whose
    window ends exactly at row 0 (br_y == 0, i.e. int(mu_y + 0.5) = -7) keeps weight 1 with an empty
    target, as the reference's `br[1] < 0` test does; one row further up it is dropped."""
    import numpy as np

    from vitpose_scale.data.transforms import udp_heatmap_targets

    image_hw, heatmap_hw = (257, 193), (65, 49)  # stride exactly 4
    target, weight = udp_heatmap_targets(np.array([[80.0, 120.0]]), np.array([2]), image_hw, heatmap_hw)
    assert target.dtype == weight.dtype == np.float32 and weight.shape == (1, 1)
    assert target[0, 30, 20] == 1.0
    assert target[0, 30, 21] == pytest.approx(math.exp(-1 / 8), rel=1e-6)
    assert target[0, 32, 20] == pytest.approx(math.exp(-4 / 8), rel=1e-6)
    joints = np.array([[80.0, -8.0 * 4], [80.0, -9.0 * 4]])  # mu_y = -8 -> br_y = 0; mu_y = -9 -> br_y = -1
    target, weight = udp_heatmap_targets(joints, np.array([1, 1]), image_hw, heatmap_hw)
    assert weight[:, 0].tolist() == [1.0, 0.0]
    assert not target.any()


def _transform(**cfg_overrides):
    from vitpose_scale.config import DataConfig
    from vitpose_scale.data.transforms import TopDownTransform

    cfg = DataConfig(**{"flip_prob": 0.0, "half_body_prob": 0.0, "scale_factor": 0.0, "rot_factor": 0.0,
                        **cfg_overrides})
    return TopDownTransform(image_size=(64, 48), cfg=cfg)


def _person(width=90, height=70):
    import numpy as np

    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    joints = np.concatenate([rng.uniform([20, 10], [70, 60], (17, 2)), np.full((17, 1), 2.0)], axis=1)
    return img, joints, np.array([44.0, 35.0], dtype=np.float32), np.array([48.0, 64.0], dtype=np.float32)


def test_transforms_a_flipped_sample_is_the_sample_of_the_mirrored_image():
    """flip_prob 1 must give what flip_prob 0 gives on the mirrored picture (x -> W - 1 - x, left and
    right joints swapped, centre mirrored): an independent statement of the flip."""
    import numpy as np

    from vitpose_scale.data.transforms import sample_rng
    from vitpose_scale.keypoints import get_spec

    COCO_FLIP_PAIRS = get_spec("coco").flip_pairs

    img, joints, center, scale = _person()
    width = img.shape[1]
    flipped = _transform(flip_prob=1.0)(img, joints, center, scale, sample_rng(0, 0, 0))
    mirrored_joints = joints.copy()
    mirrored_joints[:, 0] = width - 1 - mirrored_joints[:, 0]
    for a, b in COCO_FLIP_PAIRS:
        mirrored_joints[[a, b]] = mirrored_joints[[b, a]]
    mirrored_center = np.array([width - 1 - center[0], center[1]], dtype=np.float32)
    plain = _transform()(np.ascontiguousarray(img[:, ::-1]), mirrored_joints, mirrored_center, scale,
                         sample_rng(0, 0, 0))
    assert flipped["flipped"] and not plain["flipped"]
    np.testing.assert_allclose(flipped["joints"], plain["joints"], atol=1e-4)
    np.testing.assert_allclose(flipped["center"], plain["center"])
    assert np.abs(flipped["img"].astype(int) - plain["img"].astype(int)).max() <= 1  # cv2's 1/32-px sampling
    np.testing.assert_allclose(flipped["target"], plain["target"], atol=1e-4)


@pytest.mark.parametrize("labelled, half_body", [(8, False), (9, True)])
def test_transforms_half_body_needs_more_than_the_minimum_of_labelled_joints(labelled, half_body):
    """Official: half body only when sum(visible) > num_joints_half_body (8); unlabelled joints (v = 0) do
    not count, occluded ones (v = 1) do. The half-body box moves the centre off the person box's."""
    import numpy as np

    from vitpose_scale.data.transforms import sample_rng

    img, joints, center, scale = _person()
    joints[:, 2] = 0.0
    joints[:labelled, 2] = 1.0
    out = _transform(half_body_prob=1.0, half_body_min_joints=8)(img, joints, center, scale, sample_rng(0, 0, 1))
    assert (not np.allclose(out["center"], center)) == half_body


def test_transforms_outputs_have_the_documented_types_and_leave_the_inputs_alone():
    import numpy as np

    from vitpose_scale.data.transforms import sample_rng

    img, joints, center, scale = _person()
    joints64, center64, scale64 = joints.astype(np.float64), center.astype(np.float64), scale.astype(np.float64)
    before = (joints64.copy(), center64.copy(), scale64.copy())
    out = _transform(flip_prob=1.0, sigma=3.0)(img, joints64, center64, scale64, sample_rng(1, 0, 0))
    for name in ("joints", "center", "scale", "target", "target_weight"):
        assert out[name].dtype == np.float32, name
    assert out["joints"].shape == (17, 3) and (out["joints"][:, 2] == 2.0).all()  # the visibility column
    assert out["img"].dtype == np.uint8 and out["img"].shape == (3, 64, 48)
    for a, b in zip(before, (joints64, center64, scale64)):
        np.testing.assert_array_equal(a, b)
    # the targets are drawn with the config's sigma (3), not the function's default (2)
    from vitpose_scale.data.transforms import udp_heatmap_targets

    def drawn(sigma):
        return udp_heatmap_targets(out["joints"][:, :2], out["joints"][:, 2], (64, 48), (16, 12), sigma)[0]

    assert np.array_equal(out["target"], drawn(3.0)) and not np.allclose(out["target"], drawn(2.0))
    with pytest.raises(ValueError, match="needs its sample's generator"):
        _transform()(img, joints, center, scale, None)


# --- models/interop.py -------------------------------------------------------------------------


def _tiny(**kw):
    import torch

    from vitpose_scale.config import ModelConfig

    torch.manual_seed(0)
    return build_pose_model(ModelConfig(preset="tiny", **kw))


@pytest.mark.parametrize("tokens, hint, grid", [(196, None, (14, 14)), (192, None, (16, 12)), (972, None, (36, 27)),
                                                (48, None, (8, 6)), (192, (12, 16), (12, 16)), (60, (10, 6), (10, 6)),
                                                (192, (10, 6), (16, 12))])
def test_interop_pos_embed_grid_from_the_token_count(tokens, hint, grid):
    """Square (MAE/ImageNet) or 4:3 (ViTPose crops: 16x12 at 256x192, 36x27 at 576x432), unless the
    model's own grid has that many tokens."""
    from vitpose_scale.models.interop import _grid_of

    assert _grid_of(tokens, hint) == grid


def test_interop_a_token_count_of_no_known_shape_names_the_setting():
    from vitpose_scale.models.interop import CheckpointError, _grid_of

    with pytest.raises(CheckpointError, match=r"pos_embed has 60 grid tokens, neither square nor 4:3; set "
                                              r"model.pretrain_grid"):
        _grid_of(60, (12, 6))


def test_interop_a_model_of_an_unusual_grid_loads_its_own_file_without_meta(tmp_path):
    """160x96 input = a 10x6 grid (60 tokens, neither square nor 4:3): the model's own grid is used."""
    import torch

    src = _tiny(image_size=[160, 96])
    torch.save({"state_dict": src.state_dict()}, tmp_path / "no_meta.pth")  # no pos_embed_grid in meta
    dst = _tiny(image_size=[160, 96])
    from vitpose_scale.models.interop import load_official

    load_official(dst, tmp_path / "no_meta.pth")
    assert torch.equal(dst.backbone.pos_embed, src.backbone.pos_embed)


def test_interop_patch_kernel_of_another_size_is_resampled_bicubic_keeping_the_response():
    """A 14x14 patch kernel (MAE with patch 14) into a 16x16 model: bicubic (align_corners=False) resize,
    scaled by 14^2 / 16^2 so a constant image gives the same response; the dtype is kept. Equal sizes:
    untouched."""
    import torch
    import torch.nn.functional as F

    from vitpose_scale.models.interop import adapt_state_dict

    model = _tiny()
    key = "backbone.patch_embed.proj.weight"
    small = torch.randn(64, 3, 14, 14)
    expected = F.interpolate(small, size=(16, 16), mode="bicubic", align_corners=False) * (196 / 256)
    got = adapt_state_dict({key: small}, model)[key]
    assert got.shape == (64, 3, 16, 16)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    half = adapt_state_dict({key: small.bfloat16()}, model)[key]
    assert half.dtype == torch.bfloat16 and half.shape == (64, 3, 16, 16)
    same = torch.randn(64, 3, 16, 16)
    assert adapt_state_dict({key: same}, model)[key] is same
    other = {"backbone.blocks.0.norm1.weight": torch.ones(64)}  # no pos_embed, no kernel: passed through
    assert adapt_state_dict(other, model).keys() == other.keys()


def test_interop_meta_grid_must_be_two_positive_ints_and_the_error_names_the_file():
    from vitpose_scale.models.interop import CheckpointError, pos_embed_grid_from_meta

    assert pos_embed_grid_from_meta({"meta": {"pos_embed_grid": [1, 12]}}) == (1, 12)
    assert pos_embed_grid_from_meta({"meta": {}}) is None
    assert pos_embed_grid_from_meta({"state_dict": {}}) is None
    assert pos_embed_grid_from_meta(["not", "a", "dict"]) is None
    for bad in ([16, 0], [16], [16.0, 12], "16x12", [16, 12, 1], [-16, 12]):
        with pytest.raises(CheckpointError, match=r"^f\.pth: meta\.pos_embed_grid is .*, expected \[rows, cols\] "
                                                  r"of positive ints$"):
            pos_embed_grid_from_meta({"meta": {"pos_embed_grid": bad}}, "f.pth")
    with pytest.raises(CheckpointError, match=r"^<checkpoint>: meta\.pos_embed_grid is \[0, 0\]"):
        pos_embed_grid_from_meta({"meta": {"pos_embed_grid": [0, 0]}})


def test_interop_state_dict_is_found_under_each_known_key_and_otherwise_refused():
    import torch

    from vitpose_scale.models.interop import CheckpointError, extract_state_dict

    t = {"w": torch.ones(1)}
    for key in ("state_dict", "model", "module"):
        assert extract_state_dict({key: t, "meta": {}}) == t
    assert extract_state_dict(t) == t
    for bad in ({"meta": {"epoch": 1}, "step": 3}, {}, [torch.ones(1)]):
        with pytest.raises(CheckpointError, match=r"^<checkpoint>: no state_dict found \(expected an mmcv file "
                                                  r"\{'meta', 'state_dict'\} or a mapping"):
            extract_state_dict(bad)


def test_interop_safetensors_files_load_without_pickle(tmp_path):
    import torch
    from safetensors.torch import save_file

    from vitpose_scale.models.interop import safe_load

    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2])}
    save_file(state, str(tmp_path / "w.safetensors"))
    got = safe_load(tmp_path / "w.safetensors")
    assert got.keys() == {"state_dict"} and all(torch.equal(got["state_dict"][k], v) for k, v in state.items())


def test_interop_layout_detection_needs_pos_embed_and_blocks_and_shows_six_keys():
    import torch

    from vitpose_scale.models.interop import CheckpointError, detect_checkpoint_format

    one = torch.zeros(1)
    for partial in ({"pos_embed": one}, {"blocks.0.norm1.weight": one}):
        with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
            detect_checkpoint_format(partial)
    six = {f"k{i}": one for i in range(6)}
    with pytest.raises(CheckpointError, match=r"^<checkpoint>: unknown checkpoint layout \(keys: k0, k1, k2, k3, k4, "
                                              r"k5\): expected"):
        detect_checkpoint_format(six)
    with pytest.raises(CheckpointError, match=r"\(keys: k0, k1, k2, k3, k4, k5 \.\.\.\): expected"):
        detect_checkpoint_format({**six, "k6": one}, "f.pth")
    with pytest.raises(CheckpointError, match=r"^f\.pth: unknown checkpoint layout \(keys: none\)"):
        detect_checkpoint_format({}, "f.pth")


def test_interop_strict_load_errors_list_at_most_20_keys_and_10_shapes():
    import torch

    from vitpose_scale.models.interop import CheckpointError, load_state_dict_strict

    model = _tiny()
    own = model.state_dict()
    names = sorted(own)
    for n, more in ((20, ""), (21, " ...")):
        state = {k: v for k, v in own.items() if k not in names[:n]}
        with pytest.raises(CheckpointError) as err:
            load_state_dict_strict(model, state, "f.pth")  # missing keys alone are an error
        lines = str(err.value).splitlines()
        assert lines[0] == "f.pth does not match the model:" and len(lines) == 2
        with pytest.raises(CheckpointError, match="^<checkpoint> does not match the model:"):
            load_state_dict_strict(model, state)  # the default name of the source
        assert lines[1] == f"  missing keys ({n}): {', '.join(names[:20])}{more}"
        extra = {**own, **{f"x{i:02d}": torch.zeros(1) for i in range(n)}}
        with pytest.raises(CheckpointError) as err:
            load_state_dict_strict(model, extra, "f.pth")
        assert str(err.value).splitlines()[1] == (f"  unexpected keys ({n}): "
                                                   f"{', '.join(f'x{i:02d}' for i in range(20))}{more}")
    weights = sorted(k for k, v in own.items() if v.ndim == 2)[:11]
    wrong = {**own, **{k: torch.zeros(1, 1) for k in weights}}
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(model, wrong, "f.pth")
    shown = sorted(f"{k}: checkpoint (1, 1) vs model {tuple(own[k].shape)}" for k in weights)[:10]
    assert str(err.value).splitlines()[1] == f"  shape mismatches (11): {'; '.join(shown)}"


def test_interop_load_errors_name_the_file(tmp_path):
    import torch

    from vitpose_scale.models.interop import CheckpointError, load_official

    model = _tiny()
    cases = {"empty.pth": {"meta": {}}, "grid.pth": {"meta": {"pos_embed_grid": [0, 1]}, "state_dict": model.state_dict()},
             "keys.pth": {"state_dict": {"backbone.pos_embed": model.state_dict()["backbone.pos_embed"]}}}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"^{tmp_path / name}"):
            load_official(model, tmp_path / name)


def test_interop_official_files_hold_fp32_cpu_floats_and_keep_integer_buffers(tmp_path):
    import torch

    from vitpose_scale.models.interop import save_official

    state = {"w": torch.randn(3).bfloat16(), "n": torch.tensor(7), "m": torch.ones(2, dtype=torch.float64)}
    path = tmp_path / "a" / "b" / "w.pth"  # parent folders created
    save_official(state, path, {"epoch": 2})
    raw = torch.load(path, weights_only=True)
    assert raw["meta"] == {"epoch": 2}
    got = raw["state_dict"]
    assert got["w"].dtype == torch.float32 and torch.equal(got["w"], state["w"].float())
    assert got["n"].dtype == torch.int64 and got["n"].item() == 7
    assert got["m"].dtype == torch.float32
    assert [p.name for p in path.parent.iterdir()] == ["w.pth"]  # the temporary file renamed away


def test_interop_hugging_face_config_matches_the_model_shape():
    """Transformers sizes the MLP from mlp_ratio (intermediate_size is ignored): a ratio-2 model must
    map to a ratio-2 Hugging Face model, with LayerNorm eps 1e-6, the qkv bias and 4x upsampling."""
    pytest.importorskip("transformers")
    import torch
    import transformers

    from vitpose_scale.config import ModelConfig
    from vitpose_scale.models.interop import CheckpointError, from_hf_state_dict, hf_config, load_state_dict_strict

    cfg = ModelConfig(preset="tiny", mlp_ratio=2.0, qkv_bias=False, num_keypoints=14)
    hf = hf_config(cfg)
    assert hf.backbone_config.layer_norm_eps == 1e-6 and hf.backbone_config.qkv_bias is False
    assert hf.backbone_config.out_indices == [4] and hf.num_labels == 14 and hf.scale_factor == 4
    torch.manual_seed(0)
    theirs = transformers.VitPoseForPoseEstimation(hf).eval()
    ours = build_pose_model(cfg).eval()
    load_state_dict_strict(ours, from_hf_state_dict(theirs.state_dict()), "hf")
    x = torch.randn(1, 3, 256, 192)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(pixel_values=x).heatmaps, rtol=1e-4, atol=1e-5)
    with pytest.raises(CheckpointError, match=r"^the Hugging Face VitPose layout has no overlapping-patch variant "
                                              r"\(patch_stride 8\)$"):
        hf_config(ModelConfig(preset="tiny", patch_stride=8, patch_padding=4))
    with pytest.raises(CheckpointError, match=r"takes an integer mlp_ratio .* this model has 4\.0625 \(MLP width 260\)"):
        hf_config(ModelConfig(preset="tiny", mlp_ratio=4.0625))


def test_interop_hugging_face_renaming_errors_name_the_key():
    import torch

    from vitpose_scale.models.interop import CheckpointError, from_hf_state_dict, to_hf_state_dict

    with pytest.raises(CheckpointError, match=r"^no Hugging Face name for key backbone.cls_token$"):
        to_hf_state_dict({"backbone.cls_token": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"^unknown Hugging Face VitPose key head.extra.weight$"):
        from_hf_state_dict({"head.extra.weight": torch.zeros(1)})
    part = "backbone.encoder.layer.3.attention.attention.{}.bias"
    with pytest.raises(CheckpointError, match=r"^layer 3 bias: query/key/value incomplete \(\['key', 'query'\]\)$"):
        from_hf_state_dict({part.format("query"): torch.zeros(2), part.format("key"): torch.zeros(2)})


# --- data/coco.py ------------------------------------------------------------------------------


def _dataset(tmp_path, dets=None, **cfg):
    import json

    from vitpose_scale.config import DataConfig
    from vitpose_scale.data.coco import TopDownCocoDataset

    det_file = None
    if dets is not None:
        det_file = tmp_path / "dets.json"
        det_file.write_text(json.dumps(dets))
    return TopDownCocoDataset(ROOT / "data" / "coco_sample", "test_coco.json", ".", DataConfig(**cfg), (64, 48),
                              train=False, det_file=det_file)


def test_coco_detections_keep_persons_at_or_above_the_threshold_and_count_the_rest(tmp_path):
    import numpy as np

    from vitpose_scale.data.transforms import box_to_center_scale

    dets = [{"image_id": 785, "category_id": 1, "bbox": [10, 20, 30, 80], "score": 0.9},
            {"image_id": 785, "category_id": 1, "bbox": [0, 0, 50, 50], "score": 0.5},   # == threshold: kept
            {"image_id": 40083, "category_id": 1, "bbox": [5, 5, 40, 40], "score": 0.49},  # below: dropped
            {"image_id": 40083, "bbox": [1, 2, 3, 4], "score": 0.7},                       # no category: a person
            {"image_id": 40083, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.99}]    # not a person
    ds = _dataset(tmp_path, dets, det_score_thr=0.5, bbox_padding=1.1)
    assert ds.load_report == "4 person detections, 3 kept, 1 with score < 0.5 dropped"
    assert [r["bbox_score"] for r in ds.records] == [0.9, 0.5, 0.7]
    first = ds.records[0]
    center, scale = box_to_center_scale([10, 20, 30, 80], 48 / 64, 1.1)
    np.testing.assert_array_equal(first["center"], center)
    np.testing.assert_array_equal(first["scale"], scale)
    assert first["size"] == (425, 640) and first["ann_id"] == -1 and first["file_name"] == "000000000785.jpg"
    assert first["joints"].shape == (17, 3) and first["joints"].dtype == np.float32 and not first["joints"].any()


def test_coco_detection_file_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match=r"dets\.json: detection for image_id 123, which is not in .*test_coco\.json; "
                                         r"expected detections for that annotation file's images"):
        _dataset(tmp_path, [{"image_id": 123, "category_id": 1, "bbox": [0, 0, 9, 9], "score": 1.0}])
    with pytest.raises(ValueError, match=r"dets\.json: expected a COCO results list of \{image_id, category_id, "
                                         r"bbox, score\} dicts"):
        _dataset(tmp_path, {"image_id": 785})


def test_coco_image_of_another_size_names_both_sizes(tmp_path):
    ds = _dataset(tmp_path)
    rec = dict(ds.records[0], size=(100, 200))
    with pytest.raises(ValueError, match=r" is 640x425 pixels; the annotation file says 200x100, so its boxes"):
        ds.read_image(rec)


def test_coco_augmentation_draws_follow_seed_epoch_index_and_stream(tmp_path):
    from vitpose_scale.config import DataConfig
    from vitpose_scale.data.coco import TopDownCocoDataset
    from vitpose_scale.data.transforms import sample_rng

    ds = TopDownCocoDataset(ROOT / "data" / "coco_sample", "test_coco.json", ".", DataConfig(), (64, 48),
                            train=True, seed=5, stream=2)
    ds.set_epoch(3)
    assert ds.augmentation_rng(4).random() == sample_rng(5, 3, 4, 2).random()
    assert _dataset(tmp_path).augmentation_rng(4) is None  # evaluation: no augmentation


# --- eval/coco_eval.py -------------------------------------------------------------------------


def _gt_with(*anns):
    return {"images": [{"id": 1, "width": 100, "height": 100}], "annotations": list(anns),
            "categories": [{"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(17)], "skeleton": []}]}


def _ann(**fields):
    return {"id": 1, "image_id": 1, "category_id": 1, "keypoints": [0] * 51, "num_keypoints": 0, "area": 100.0,
            "bbox": [0, 0, 10, 10], "iscrowd": 0, **fields}


@pytest.mark.parametrize("anns, message", [
    ([7], "GT: annotations[0] is not an object"),
    ([{"image_id": 1}], "GT is not a keypoint annotation file: annotations[0] (id=None) has no 'id'"),
    ([{"id": 7}], "GT is not a keypoint annotation file: annotations[0] (id=7) has no 'image_id'"),
    ([_ann(id=5, area=None) | {"bbox": None}, _ann(id=6)], "GT: annotations[0] (id=5) bbox is not 4 numbers"),
    ([_ann(id=[1])], "GT: annotations[0] (id=[1]): id / image_id / category_id is not a valid id"),
    # an annotation of an image that is not listed is not scored, so not checked: the next one is
    ([_ann(id=2, image_id=99, keypoints=[0]), _ann(id=3, keypoints=[0] * 50)],
     "GT: annotations[1] (id=3) has 50 keypoint values, expected 51"),
    ([_ann(id=4, keypoints=7)], "GT: annotations[0] (id=4) has no keypoint values, expected 51"),
    ([_ann(id=8, keypoints=["a"] * 51)], "GT: annotations[0] (id=8): 'keypoints' must be 51 numbers"),
    ([_ann(id=9, area="big")], "GT: annotations[0] (id=9): 'area' is not a number ('big')"),
])
def test_coco_eval_malformed_gt_is_named_exactly(anns, message):
    from vitpose_scale.eval.coco_eval import EvaluationInputError, KeypointEvaluator

    with pytest.raises(EvaluationInputError) as err:
        KeypointEvaluator(_gt_with(*anns))
    assert str(err.value) == message


def test_coco_eval_cli_help_and_required_options(capsys):
    from vitpose_scale.eval.coco_eval import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("usage: vitpose-scale coco-eval", "COCO as pycocotools COCOeval, the other sets of the ViTPose "
                 "family as the official mmpose 0.x code calls xtcocotools (same numbers, faster).",
                 "--gt GT COCO-layout keypoint annotation JSON", "--results RESULTS keypoint results JSON "
                 "(list of objects)", "--out OUT write the stats as a JSON object here", "--dataset {aic,ap10k,"):
        assert text in out, text
    for argv, missing in ((["--results", "r.json"], "--gt"), (["--gt", "g.json"], "--results")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert f"the following arguments are required: {missing}" in capsys.readouterr().err


def test_coco_eval_cli_writes_stats_into_new_and_existing_folders(tmp_path, capsys):
    import json

    from vitpose_scale.eval.coco_eval import STAT_NAMES, main

    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_gt_with(_ann(keypoints=[50, 50, 2] * 17, num_keypoints=17))))
    res = tmp_path / "res.json"
    res.write_text(json.dumps([{"image_id": 1, "category_id": 1, "keypoints": [50, 50, 1] * 17, "score": 1.0}]))
    for out in (tmp_path / "new" / "deeper" / "stats.json", tmp_path / "stats.json"):  # created / existing folder
        assert main(["--gt", str(gt), "--results", str(res), "--out", str(out)]) == 0
        text = out.read_text()
        assert text.startswith('{\n  "AP": ') and '\n  "AP50": ' in text  # indent 2, the pycocotools names
        stats = json.loads(text)
        assert list(stats) == list(STAT_NAMES) and stats["AP"] == pytest.approx(1.0) and stats["APm"] == -1.0
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets= 20 ] = 1.000" in capsys.readouterr().out


# --- eval/decode.py ----------------------------------------------------------------------------


def _gaussian_map(cx, cy, h=16, w=12, sigma=1.5):
    import numpy as np

    ys, xs = np.mgrid[0:h, 0:w]
    return np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))[None, None]


def test_decode_dark_refines_only_two_pixels_away_from_the_border():
    """Official DARK (_taylor): refine only when 1 < px < W - 2 and 1 < py < H - 2 (the second
    differences reach two pixels out); at the border the argmax stays as it is."""
    import numpy as np

    from vitpose_scale.eval.decode import dark_refine

    for peak, moves in (((1.3, 8.0), False), ((8.0, 1.3), False), ((2.3, 8.0), True), ((8.0, 2.3), True),
                        ((9.3, 8.0), True), ((10.3, 8.0), False), ((6.0, 13.3), True), ((6.0, 14.3), False)):
        hm = _gaussian_map(*peak)
        argmax = np.array([[[round(peak[0]), round(peak[1])]]], dtype=np.float32)
        refined = dark_refine(hm, argmax)
        assert (not np.array_equal(refined, argmax)) == moves, peak
        if moves:  # toward the true peak (the blur's zero padding biases it near the far borders)
            assert np.abs(refined[0, 0] - peak).max() < np.abs(argmax[0, 0] - peak).max(), peak
        if peak in ((2.3, 8.0), (8.0, 2.3)):
            np.testing.assert_allclose(refined[0, 0], peak, atol=0.05)


def test_decode_blur_of_an_empty_heatmap_stays_zero():
    import numpy as np

    from vitpose_scale.eval.decode import _gaussian_blur

    out = _gaussian_blur(np.zeros((1, 2, 8, 6)), 11)
    assert np.isfinite(out).all() and not out.any()


def _opencv_gaussian_kernel(size):
    """OpenCV's kernel for sigma 0: sigma = 0.3 ((size - 1) / 2 - 1) + 0.8, normalised to sum 1."""
    import numpy as np

    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def test_decode_blur_is_the_official_zero_padded_gaussian_rescaled_to_the_peak():
    """Official DARK blur: zero border of (k - 1) / 2, cv2.GaussianBlur(k, sigma 0), the original maximum
    restored. Written out here as two 1-D convolutions."""
    import numpy as np

    from vitpose_scale.eval.decode import _gaussian_blur

    rng = np.random.default_rng(0)
    maps = rng.random((1, 2, 12, 9))
    g = _opencv_gaussian_kernel(11)  # (OpenCV uses fixed tables below size 9, the formula above)
    for j in range(2):
        padded = np.pad(maps[0, j], 5)
        rows = np.stack([np.convolve(r, g, mode="valid") for r in padded])        # (22, 9)
        both = np.stack([np.convolve(c, g, mode="valid") for c in rows.T]).T     # (12, 9)
        expected = both * (maps[0, j].max() / both.max())
        np.testing.assert_allclose(_gaussian_blur(maps, 11)[0, j], expected, rtol=1e-6, atol=1e-9)


def _log_quadratic_map(cx, cy, a=0.30, b=0.12, c=0.15, h=20, w=16):
    """exp(-(a dx^2 + 2 c dx dy + b dy^2)): a rotated, anisotropic Gaussian whose log is exactly quadratic."""
    import numpy as np

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    dx, dy = xs - cx, ys - cy
    return np.exp(-(a * dx ** 2 + 2 * c * dx * dy + b * dy ** 2))[None, None]


def test_decode_dark_step_lands_on_the_centre_of_a_rotated_gaussian():
    """On a blurred Gaussian the log stays quadratic, so one Newton step with the full Hessian (cross
    term included) reaches the centre; the result is float32 (N, K, 2)."""
    import numpy as np

    from vitpose_scale.eval.decode import dark_refine

    hm = _log_quadratic_map(7.35, 9.6)
    refined = dark_refine(hm, np.array([[[7.0, 10.0]]], dtype=np.float32))
    assert refined.dtype == np.float32 and refined.shape == (1, 1, 2)
    np.testing.assert_allclose(refined[0, 0], [7.35, 9.6], atol=0.02)


def test_decode_dark_leaves_flat_and_saddle_maps_at_the_argmax():
    import numpy as np

    from vitpose_scale.eval.decode import dark_refine

    flat = np.full((1, 1, 16, 12), 0.5)
    saddle = _log_quadratic_map(6.0, 8.0, a=0.2, b=-0.05, c=0.0)  # a maximum along x, a minimum along y
    for hm, at in ((flat, [5.0, 7.0]), (saddle, [6.0, 8.3])):
        start = np.array([[at]], dtype=np.float32)
        np.testing.assert_array_equal(dark_refine(hm, start), start)


def test_oks_with_no_detection_or_no_gt_is_an_empty_matrix_and_sigmas_are_used():
    import numpy as np

    from vitpose_scale.eval.oks import compute_oks

    gt = np.array([[10.0, 10.0, 2.0] * 17])
    assert compute_oks(np.zeros((0, 17, 2)), gt, [100.0]).shape == (0, 1)
    assert compute_oks(np.zeros((2, 17, 2)), np.zeros((0, 51)), []).shape == (2, 0)
    # one joint off by 1 px, the rest exact: OKS = (16 + exp(-d^2 / (2 s^2 (2 sigma)^2))) / 17 with s^2 = area
    dt = np.tile([10.0, 10.0], (1, 17, 1))
    dt[0, 0, 0] += 1.0
    sigmas = np.full(17, 0.1)
    expected = (16 + math.exp(-1.0 / (2 * 100.0 * (2 * 0.1) ** 2))) / 17
    assert compute_oks(dt, gt, [100.0], sigmas=sigmas)[0, 0] == pytest.approx(expected, rel=1e-12)


def test_coco_eval_sigmas_reach_the_evaluation_and_a_failed_write_is_reported(tmp_path, capsys):
    from vitpose_scale.eval.coco_eval import KeypointEvaluator, _report, evaluate

    gt = _gt_with(_ann(keypoints=[50, 50, 2] * 17, num_keypoints=17, area=2000.0))
    res = [{"image_id": 1, "category_id": 1, "keypoints": [53, 50, 1] * 17, "score": 1.0}]  # 3 px off
    tight, loose = evaluate(gt, res), evaluate(gt, res, sigmas=[1.0] * 17)
    assert tight[0] < 0.9 and loose[0] == pytest.approx(1.0)
    ev = KeypointEvaluator(gt)
    stats = ev.evaluate(res)
    assert _report("prog", ev, stats, str(tmp_path)) == 2  # a folder: open() fails after the check
    assert f"prog: error: --out {tmp_path} cannot be written: Is a directory" in capsys.readouterr().err


def test_coco_eval_command_line_exit_codes(tmp_path):
    """The module's own entry point (hard exit after flushing): 0 with the stats printed, 2 on bad input."""
    import json
    import subprocess
    import sys

    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_gt_with(_ann(keypoints=[50, 50, 2] * 17, num_keypoints=17))))
    res = tmp_path / "res.json"
    res.write_text(json.dumps([{"image_id": 1, "category_id": 1, "keypoints": [50, 50, 1] * 17, "score": 1.0}]))
    run = [sys.executable, "-m", "vitpose_scale.eval.coco_eval", "--gt", str(gt), "--results"]
    ok = subprocess.run(run + [str(res)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "Average Precision  (AP) @[ IoU=0.50:0.95" in ok.stdout
    bad = subprocess.run(run + [str(gt)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("vitpose-scale coco-eval: error: ")


def _pycocotools_stats(gt, results):
    import contextlib
    import copy
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("with_bbox", [True, False])
def test_coco_eval_result_areas_come_from_bbox_as_in_pycocotools(tmp_path, with_bbox):
    """pycocotools' loadRes takes each result's area from its 'bbox' when the first result has one,
    else from the extent of its keypoints; the area decides medium/large. Boxes are chosen here to put
    each detection in the other range than its keypoints would. Files (the typed fast path) and
    in-memory lists must both give pycocotools' numbers."""
    import json

    import numpy as np

    from vitpose_scale.eval.coco_eval import evaluate

    def person(x, y, span):
        return [v for j in range(17) for v in (x + span * (j % 4) / 3, y + span * (j // 4) / 4, 2)]

    small, large = person(10, 10, 30), person(60, 60, 130)
    gt = {"images": [{"id": 1, "width": 200, "height": 200}],
          "annotations": [_ann(id=1, keypoints=small, num_keypoints=17, area=1500.0, bbox=[10, 10, 30, 30]),
                          _ann(id=2, keypoints=large, num_keypoints=17, area=16900.0, bbox=[60, 60, 130, 130])],
          "categories": _gt_with()["categories"]}
    rng = np.random.default_rng(0)
    results = []
    for kps, box, score in ((small, [0, 0, 150, 150], 0.9), (large, [60, 60, 20, 20], 0.8)):
        noisy = [v + (rng.normal(0, 1.5) if i % 3 != 2 else 0) for i, v in enumerate(kps)]
        res = {"image_id": 1, "category_id": 1, "keypoints": noisy, "score": score}
        if with_bbox:
            res["bbox"] = box
        results.append(res)
    expected = _pycocotools_stats(gt, results)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    for got in (evaluate(gt, results), evaluate(str(tmp_path / "gt.json"), str(tmp_path / "res.json"))):
        np.testing.assert_allclose(got, expected, atol=1e-12)


def _result(**fields):
    return {"image_id": 1, "category_id": 1, "keypoints": [50, 50, 1] * 17, "score": 0.5, **fields}


_BOX_RULE = "'bbox' must be 4 finite numbers (results[0] has a bbox, so result areas come from boxes as in " \
            "pycocotools loadRes)"


@pytest.mark.parametrize("results, message", [
    ([5], "results[0] is not an object but int"),
    ([_result(), _result(image_id=99), _result(image_id=98)],
     "results[1] (image_id=99): image_id is not an image of the GT (2 bad entries in total)"),
    ([_result(keypoints=7)], "results[0] (image_id=1): 'keypoints' is not a list (1 bad entries in total)"),
    ([_result(keypoints=[1] * 50)],
     "results[0] (image_id=1): 'keypoints' has 50 values, expected 3*K = 51 (1 bad entries in total)"),
    ([_result(keypoints=[float("nan")] * 51)],
     "results[0] (image_id=1): 'keypoints' contains NaN/inf (1 bad entries in total)"),
    ([_result(score=float("inf"))], "results[0] (image_id=1): 'score' is NaN/inf (1 bad entries in total)"),
    ([_result(bbox=[0, 0, 1, 1]), _result(bbox=["a", 0, 0, 0])], f"results[1] (image_id=1): {_BOX_RULE}"),
    ([_result(bbox=[0, 0, 1, 1]), _result()], f"results[1] (image_id=1): {_BOX_RULE}"),
    ([_result(bbox=[0, 0, 1, 1]), _result(bbox=[0, 0, float("inf"), 1])], f"results[1] (image_id=1): {_BOX_RULE}"),
    # An entry missing a field sends the whole list down the entry-by-entry scan, which names the
    # first problem in list order (without a count).
    ([_result(image_id=99), {"image_id": 1}], "results[0] (image_id=99): image_id is not an image of the GT"),
    ([_result(keypoints=7), {"image_id": 1}], "results[0] (image_id=1): 'keypoints' is not a list"),
    ([_result(keypoints=[1] * 50), {"image_id": 1}],
     "results[0] (image_id=1): 'keypoints' has 50 values, expected 3*K = 51"),
    ([_result(keypoints=[float("nan")] * 51), {"image_id": 1}], "results[0] (image_id=1): 'keypoints' contains NaN/inf"),
    ([_result(score=float("inf")), {"image_id": 1}], "results[0] (image_id=1): 'score' is NaN/inf (inf)"),
    ([_result(), {"image_id": 1}], "results[1] (image_id=1) is missing the 'category_id' field"),
])
def test_coco_eval_malformed_results_are_named_exactly(results, message, tmp_path):
    """In memory and from a file (the typed fast path falls back to the same checks)."""
    import json

    from vitpose_scale.eval.coco_eval import EvaluationInputError, evaluate

    gt = _gt_with(_ann(keypoints=[50, 50, 2] * 17, num_keypoints=17))
    with pytest.raises(EvaluationInputError) as err:
        evaluate(gt, results)
    assert str(err.value) == message
    try:
        text = json.dumps(results, allow_nan=False)
    except ValueError:  # NaN/inf: not valid JSON, so no file of it
        return
    path = tmp_path / "res.json"
    path.write_text(text)
    with pytest.raises(EvaluationInputError) as err:
        evaluate(gt, str(path))
    assert str(err.value) == message


def test_coco_eval_typed_records_take_the_fast_path_with_the_same_arrays(tmp_path):
    """A well-formed results file parsed by the typed decoder is turned into arrays directly (no fallback
    to the dict path), and those arrays equal the dict path's, bbox areas included."""
    import json

    import numpy as np

    from vitpose_scale.eval.coco_eval import KeypointEvaluator, _typed
    from vitpose_scale.eval.synthetic_eval import make_eval_set

    gt, results = make_eval_set(30, seed=2, with_bbox=True)
    if _typed("results") is None:
        pytest.skip("msgspec is not installed: no typed path")
    records = _typed("results").decode(json.dumps(results).encode())
    ev = KeypointEvaluator(gt)
    fast = ev._typed_result_arrays(records)
    assert fast is not None
    for a, b in zip(fast, ev._result_arrays(results)):
        np.testing.assert_array_equal(a, b)
    no_box = _typed("results").decode(json.dumps([{k: v for k, v in r.items() if k != "bbox"}
                                                  for r in results]).encode())
    assert ev._typed_result_arrays(no_box)[4] is None
    bad_id = _typed("results").decode(json.dumps([dict(results[0], image_id=10 ** 6)] + results[1:]).encode())
    assert ev._typed_result_arrays(bad_id) is None


# --- eval/ensemble.py --------------------------------------------------------------------------


class _Boxes:
    """A stand-in dataset: records with centre and scale, like TopDownCocoDataset's."""

    def __init__(self, boxes, image_size=(256, 192)):
        import numpy as np

        self.records = [{"center": np.array(b[:2], dtype=np.float32), "scale": np.array(b[2:], dtype=np.float32)}
                        for b in boxes]
        self.image_size = image_size

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return {"img": f"crop {i} at {self.image_size}", "index": i}


def test_ensemble_multi_size_dataset_checks_its_members_and_stands_for_the_main_one():
    import copy
    import pickle

    from vitpose_scale.eval.ensemble import MultiSizeDataset, size_key

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


# --- eval/postprocess.py -----------------------------------------------------------------------


def _people_of_one_image():
    """Three people in image 7: two near-duplicates (OKS ~ 1) and a distant one; keypoint scores chosen
    so that the rescoring threshold matters."""
    import numpy as np

    base = np.stack([np.linspace(100, 160, 17), np.linspace(50, 250, 17)], axis=1)
    conf_a = np.full(17, 0.9)
    conf_b = np.where(np.arange(17) < 9, 0.8, 0.1)   # 8 joints at 0.1: below a 0.2 threshold
    conf_c = np.full(17, 0.5)
    people = []
    for xy, conf, box in ((base, conf_a, 0.9), (base + 0.5, conf_b, 0.95), (base + 300, conf_c, 0.6)):
        people.append({"image_id": 7, "keypoints": np.concatenate([xy, conf[:, None]], axis=1),
                       "area": 96.0 * 128.0, "bbox_score": box})
    return people


def test_postprocess_rescores_with_the_threshold_and_suppresses_duplicates_by_oks():
    """Official: score = box score x mean of the keypoint scores above rescore_thr; OKS-NMS (greedy by
    score) drops a person whose OKS with a kept one exceeds nms_thr; nms_thr None or >= 1 keeps all."""
    from vitpose_scale.eval.postprocess import postprocess_people

    people = _people_of_one_image()
    kept = postprocess_people(people, rescore_thr=0.2, nms_thr=0.9)
    scores = {round(r["keypoints"][0], 3): r["score"] for r in kept}
    # a: 0.9 * 0.9 = 0.81; b (duplicate of a): 0.95 * 0.8 = 0.76 -> suppressed; c: 0.6 * 0.5 = 0.30
    assert sorted(scores.values(), reverse=True) == pytest.approx([0.81, 0.30])
    assert [r["image_id"] for r in kept] == [7, 7]
    low_thr = postprocess_people(people, rescore_thr=0.05, nms_thr=None)  # b's mean now includes 0.1s
    assert sorted(r["score"] for r in low_thr) == pytest.approx(sorted([0.81, 0.95 * (9 * 0.8 + 8 * 0.1) / 17, 0.30]))
    assert len(postprocess_people(people, 0.2, 1.0)) == 3 and len(postprocess_people(people, 0.2, 0.9)) == 2
    # COCO sigmas by default; huge sigmas make even the distant person a duplicate
    assert len(postprocess_people(people, 0.2, 0.9, sigmas=[50.0] * 17)) == 1


def _official_oks_nms(kpts, scores, areas, thr, sigmas, vis_thr=None):
    """mmpose 0.x oks_nms / oks_iou written out (eps 1e-10 per its eps), both poses' visibility masked."""
    import numpy as np

    var = (np.asarray(sigmas) * 2) ** 2
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    keep = []
    while order:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        survivors = []
        for j in rest:
            dx, dy = kpts[j, :, 0] - kpts[i, :, 0], kpts[j, :, 1] - kpts[i, :, 1]
            e = (dx ** 2 + dy ** 2) / var / ((areas[i] + areas[j]) / 2 + np.spacing(1)) / 2
            if vis_thr is not None:
                e = e[(kpts[i, :, 2] > vis_thr) & (kpts[j, :, 2] > vis_thr)]
            iou = np.exp(-e).sum() / e.shape[0] if e.shape[0] else 0.0
            if iou <= thr:
                survivors.append(j)
        order = survivors
    return keep


@pytest.mark.parametrize("vis_thr", [None, 0.3])
def test_oks_nms_keeps_what_the_official_greedy_rule_keeps(vis_thr):
    import numpy as np

    from vitpose_scale.eval.oks import COCO_SIGMAS, oks_nms

    rng = np.random.default_rng(11)
    centres = rng.uniform(50, 400, (4, 2))
    kpts = []
    for c in centres[rng.integers(0, 4, 30)]:  # 30 poses around 4 people: many near-duplicates
        xy = c + np.linspace(-40, 40, 17)[:, None] + rng.normal(0, 1, (17, 2))
        kpts.append(np.concatenate([xy, rng.uniform(0, 1, (17, 1))], axis=1))
    kpts = np.asarray(kpts)
    scores, areas = rng.uniform(0.1, 1.0, 30), rng.uniform(2000, 9000, 30)
    for thr in (0.5, 0.9):
        expected = _official_oks_nms(kpts, scores, areas, thr, COCO_SIGMAS, vis_thr)
        got = oks_nms(kpts, scores, areas, thr, COCO_SIGMAS, vis_thr=vis_thr)
        assert got.dtype == np.int64 and got.tolist() == expected
        assert 4 <= len(expected) < 30  # the case really suppresses
    assert oks_nms(np.zeros((0, 17, 3)), [], []).dtype == np.int64


# --- eval/oks.py: inputs ---------------------------------------------------------------------------


def test_oks_takes_float32_sigmas_and_preprocessed_gt_with_pycocotools_float64_numbers():
    """Written-out pycocotools computeOks in float64 on the float32 inputs a model produces."""
    import numpy as np

    from vitpose_scale.eval.oks import COCO_SIGMAS, GtKeypoints, compute_oks

    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (3, 17, 3)).astype(np.float32)
    gt[..., 2] = rng.integers(0, 3, (3, 17))
    gt[2, :, 2] = 0  # no visible joint: distances to the box
    dt = rng.uniform(0, 100, (4, 17, 3)).astype(np.float32)
    areas = np.array([900.0, 2500.0, 400.0], dtype=np.float32)
    boxes = np.array([[10, 10, 30, 30], [0, 0, 50, 50], [40, 40, 20, 20]], dtype=np.float32)
    sigmas32 = COCO_SIGMAS.astype(np.float32)
    var = (sigmas32.astype(np.float64) * 2) ** 2
    expected = np.zeros((4, 3))
    for j in range(3):
        xg, yg, vg = (gt[j, :, c].astype(np.float64) for c in range(3))
        x0, y0, w, h = boxes[j].astype(np.float64)
        for i in range(4):
            xd, yd = dt[i, :, 0].astype(np.float64), dt[i, :, 1].astype(np.float64)
            if (vg > 0).sum() > 0:
                dx, dy = xd - xg, yd - yg
            else:
                dx = np.maximum(0, (x0 - w) - xd) + np.maximum(0, xd - (x0 + 2 * w))
                dy = np.maximum(0, (y0 - h) - yd) + np.maximum(0, yd - (y0 + 2 * h))
            e = (dx ** 2 + dy ** 2) / var / (float(areas[j]) + np.spacing(1)) / 2
            if (vg > 0).sum() > 0:
                e = e[vg > 0]
            expected[i, j] = np.sum(np.exp(-e)) / e.shape[0]
    got = compute_oks(dt, gt, areas, boxes, sigmas=sigmas32)
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=0)
    pre = GtKeypoints(gt, areas, boxes)
    np.testing.assert_array_equal(compute_oks(dt, pre, None, sigmas=sigmas32), got)


# --- eval/runner.py ------------------------------------------------------------------------------


def _runner_cfg(coco_sample, **eval_settings):
    from vitpose_scale.config import Config, DataConfig

    cfg = Config()
    cfg.model.image_size = [64, 48]
    cfg.data = DataConfig(root=str(coco_sample), val_ann="test_coco.json", val_images=".", num_workers=0)
    for key, value in eval_settings.items():
        setattr(cfg.eval, key, value)
    return cfg


def _heatmaps_from_the_crop(images):
    """A deterministic stand-in for a model whose maps depend on the crop (a real model could not
    be told apart by the runner): the grey crop, pooled to the heatmap size, per joint scaled."""
    import torch
    import torch.nn.functional as F

    grey = images.float().mean(1, keepdim=True)
    maps = F.interpolate(grey, size=(images.shape[2] // 4, images.shape[3] // 4), mode="area")
    return maps.expand(-1, 17, -1, -1) * torch.linspace(0.5, 1.5, 17).view(1, 17, 1, 1)


@pytest.mark.parametrize("flip_test", [True, False])
def test_runner_every_rank_forwards_as_often_as_the_longest_shard(coco_sample, flip_test):
    """Sharded models make each forward a collective: a shorter shard pads with zero dummies."""
    from vitpose_scale.data.loader import ShardSampler
    from vitpose_scale.eval.runner import predict_people
    from vitpose_scale.evaluate import build_eval_set

    cfg = _runner_cfg(coco_sample, flip_test=flip_test, batch_size=2)
    dataset, _, _ = build_eval_set(cfg)
    world = 5
    per_batch = 2 if flip_test else 1
    expected = math.ceil(math.ceil(len(dataset) / world) / 2) * per_batch
    shard_sizes = [len(list(ShardSampler(len(dataset), rank, world))) for rank in range(world)]
    assert len(set(shard_sizes)) == 2, "the test needs uneven shards"
    for rank, size in enumerate(shard_sizes):
        calls = []

        def forward(images):
            calls.append(images.clone())
            return _heatmaps_from_the_crop(images)

        people = predict_people(forward, dataset, cfg, rank, world, progress=False)
        assert len(people) == size
        real = math.ceil(size / 2) * per_batch
        assert len(calls) == expected, (rank, size)
        for dummy in calls[real:]:
            assert dummy.shape == (1, 3, 64, 48) and not dummy.any()
        assert all(c.any() for c in calls[:real])


def test_runner_uses_the_configured_rescoring_and_oks_nms_thresholds(coco_sample):
    from vitpose_scale.eval.coco_eval import STAT_NAMES
    from vitpose_scale.eval.postprocess import postprocess_people
    from vitpose_scale.eval.runner import evaluate_model, predict_people
    from vitpose_scale.evaluate import build_eval_set

    cfg = _runner_cfg(coco_sample, oks_nms_thr=0.3, rescore_thr=0.4)
    cfg.data.det_file = "test_coco_det_AP_H_56.json"
    dataset, ann, _ = build_eval_set(cfg)
    people = predict_people(_heatmaps_from_the_crop, dataset, cfg, 0, 1, progress=False)
    stats, results = evaluate_model(_heatmaps_from_the_crop, dataset, ann, cfg, 0, 1, progress=False)
    assert results == postprocess_people(people, 0.4, 0.3)
    assert results != postprocess_people(people, 0.4, 0.9), "the NMS threshold must matter on this set"
    assert results != postprocess_people(people, 0.2, 0.3), "the rescoring threshold must matter on this set"
    assert list(stats) == list(STAT_NAMES) and all(isinstance(v, float) for v in stats.values())
    no_gt_stats, same = evaluate_model(_heatmaps_from_the_crop, dataset, None, cfg, 0, 1, progress=False)
    assert no_gt_stats is None and same == results


@pytest.mark.parametrize("vis_thr", [None, 0.3])
def test_oks_nms_threshold_default_and_ties_on_poses_at_every_distance(vis_thr):
    """One person predicted with growing error: OKS with the best pose falls from ~1 to ~0, so every
    threshold, the default (0.9) and the variances decide something; equal scores keep the lower index.
    Joint scores include the visibility threshold itself, poses sharing one visible joint and none."""
    import numpy as np

    from vitpose_scale.eval.oks import COCO_SIGMAS, oks_nms

    rng = np.random.default_rng(3)
    base = rng.uniform(100, 300, (17, 2))
    vis = rng.choice([0.1, 0.3, 0.9], size=(40, 17))
    vis[5] = 0.1
    vis[5, 0] = 0.9  # shares at most joint 0 with the others
    vis[6] = 0.1  # no joint above the threshold
    kpts = np.array([np.c_[base + rng.normal(0, s, (17, 2)), v] for s, v in zip(np.linspace(0.5, 25, 40), vis)])
    areas = rng.uniform(3000, 5000, 40)
    scores = rng.uniform(0.1, 1.0, 40)
    kept = {}
    for thr in (0.3, 0.5, 0.7, 0.9):
        kept[thr] = oks_nms(kpts, scores, areas, thr, vis_thr=vis_thr)
        assert kept[thr].dtype == np.int64
        assert kept[thr].tolist() == _official_oks_nms(kpts, scores, areas, thr, COCO_SIGMAS, vis_thr), thr
    assert len({tuple(k) for k in kept.values()}) == 4, "each threshold keeps a different set"
    assert oks_nms(kpts, scores, areas, vis_thr=vis_thr).tolist() == kept[0.9].tolist()
    tied = rng.integers(1, 4, 40) / 4.0  # three score levels: ties everywhere
    assert (oks_nms(kpts, tied, areas, 0.5, vis_thr=vis_thr).tolist()
            == _official_oks_nms(kpts, tied, areas, 0.5, COCO_SIGMAS, vis_thr))


def test_coco_eval_command_notes_ignored_results_under_its_name(tmp_path, capsys):
    import json

    from vitpose_scale.eval.coco_eval import main

    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_gt_with(_ann(keypoints=[50, 50, 2] * 17, num_keypoints=17))))
    res = tmp_path / "res.json"
    res.write_text(json.dumps([_result(), _result(category_id=2)]))
    assert main(["--gt", str(gt), "--results", str(res)]) == 0
    err = capsys.readouterr().err
    assert ("vitpose-scale coco-eval: note: 1 of 2 results ignored: category_id not a GT category [1] "
            "(pycocotools ignores them too)") in err
