import pytest
import torch

from vitpose_scale.config import ModelConfig
from vitpose_scale.models.pose import build_pose_model, count_parameters

OFFICIAL_BACKBONE_PARAMS_M = {"S": 21.7, "B": 85.8, "L": 303.3, "H": 630.9}


@pytest.mark.parametrize("preset,millions", OFFICIAL_BACKBONE_PARAMS_M.items())
def test_backbone_parameter_counts_match_official(preset, millions):
    model = build_pose_model(ModelConfig(preset=preset), device="meta")
    assert round(count_parameters(model.backbone) / 1e6, 1) == millions
    # The head is counted on its own: 2 deconvs (C*256*16 + 256*256*16), 2 BNs, 1x1 conv.
    c = model.backbone.embed_dim
    expected_head = c * 256 * 16 + 256 * 256 * 16 + 2 * 2 * 256 + 256 * 17 + 17
    assert count_parameters(model.keypoint_head) == expected_head


def test_g_preset_is_one_billion_on_meta_device():
    model = build_pose_model(ModelConfig(preset="G", image_size=[576, 432]), device="meta")
    n = count_parameters(model.backbone)
    assert 0.95e9 < n < 1.1e9
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("size,stride,expected_grid", [
    ((256, 192), 16, (16, 12)), ((384, 288), 16, (24, 18)), ((576, 432), 16, (36, 27)), ((256, 192), 8, (32, 24))])
@pytest.mark.parametrize("head", ["classic", "simple"])
def test_output_shapes(size, stride, expected_grid, head):
    cfg = ModelConfig(preset="tiny", image_size=list(size), patch_stride=stride, head=head)
    assert cfg.grid == expected_grid
    model = build_pose_model(cfg).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, *size))
        out = model(torch.randn(1, 3, *size))
    assert feats.shape == (1, 64, *expected_grid)
    assert out.shape == (1, 17, size[0] // 4, size[1] // 4)
    # The B preset gives the same shapes (shape propagation on the meta device).
    big = build_pose_model(ModelConfig(preset="B", image_size=list(size), patch_stride=stride, head=head), "meta")
    assert big(torch.empty(2, 3, *size, device="meta")).shape == (2, 17, size[0] // 4, size[1] // 4)


def test_pos_embed_interpolates_to_other_input_sizes():
    model = build_pose_model(ModelConfig(preset="tiny", image_size=[256, 192])).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 384, 288))
    assert out.shape == (1, 17, 96, 72)


def _grads(model, x):
    model.zero_grad()
    out = model(x)
    (out.square().mean() + out.mean()).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_plain_and_sdpa_attention_agree_in_outputs_and_gradients():
    torch.manual_seed(0)
    model = build_pose_model(ModelConfig(preset="tiny", attention="plain", drop_path=0.0)).train()
    x = torch.randn(2, 3, 256, 192)
    out_plain, g_plain = _grads(model, x)
    model.backbone.set_attention("sdpa")
    out_sdpa, g_sdpa = _grads(model, x)
    assert (out_plain - out_sdpa).abs().max() <= 1e-5
    for name in g_plain:
        assert (g_plain[name] - g_sdpa[name]).abs().max() <= 1e-5, name


def test_activation_checkpointing_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    model = build_pose_model(ModelConfig(preset="tiny", drop_path=0.2)).train()
    x = torch.randn(2, 3, 256, 192)
    torch.manual_seed(1)
    out_ref, g_ref = _grads(model, x)
    model.backbone.activation_checkpointing = True
    torch.manual_seed(1)  # the same drop-path draws; checkpoint replays them in the recompute
    out_ckpt, g_ckpt = _grads(model, x)
    assert torch.equal(out_ref, out_ckpt)
    for name, grad in g_ref.items():
        assert grad.abs().sum() > 0, f"{name} received no gradient"
        torch.testing.assert_close(g_ckpt[name], grad, rtol=0, atol=1e-7, msg=name)


def test_meta_model_materialises_and_initialises():
    model = build_pose_model(ModelConfig(preset="tiny"), device="meta")
    model.to_empty(device="cpu")
    model.init_weights()
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    assert model.backbone.pos_embed.std() > 0


def test_triton_attention_falls_back_to_sdpa_once_with_a_message(tmp_path):
    """Without a GPU and without the interpreter the model says so once and computes with sdpa."""
    import os
    import subprocess
    import sys

    script = """
import torch
from vitpose_scale.config import ModelConfig
from vitpose_scale.models.pose import build_pose_model
torch.manual_seed(0)
model = build_pose_model(ModelConfig(preset="tiny", attention="triton")).eval()
x = torch.randn(1, 3, 256, 192)
with torch.no_grad():
    a = model(x); a = model(x)
    model.backbone.set_attention("sdpa")
    b = model(x)
print("MAXDIFF", (a - b).abs().max().item())
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.split("MAXDIFF")[1]) == 0.0
    assert proc.stderr.count("model.attention=triton is unavailable") == 1
    assert "using sdpa instead" in proc.stderr
