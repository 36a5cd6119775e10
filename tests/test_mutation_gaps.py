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
