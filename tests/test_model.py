import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitpose_scale.config import ModelConfig, load_config
from vitpose_scale.models.pose import build_pose_model, count_parameters
from vitpose_scale.models.vit import ViT, resize_pos_embed

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


def _bicubic_reference(pos_embed: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """The official ViTPose resize written out (mmcv_custom/checkpoint.py, get_abs_pos): the extra token
    kept as it is, the grid resampled by F.interpolate(bicubic, align_corners=False), no antialiasing."""
    c = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].double().reshape(1, *old, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    return torch.cat([pos_embed[:, :1].double(), grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], c)], dim=1)


@pytest.mark.parametrize("old,new", [
    ((16, 12), (24, 18)),  # 256x192 -> 384x288
    ((36, 27), (16, 12)),  # down: no antialiasing, as the official code
    ((14, 14), (16, 12)),  # MAE/ImageNet square grid -> person crops
    ((12, 16), (16, 12)),  # landscape -> portrait: rows and columns not swapped
])
def test_pos_embed_resize_equals_the_official_bicubic_resize(old, new):
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + old[0] * old[1], 8)
    out = resize_pos_embed(pos, old, new)
    assert out.shape == (1, 1 + new[0] * new[1], 8)
    assert torch.equal(out[:, :1], pos[:, :1])  # the extra (cls) token is not resampled
    torch.testing.assert_close(out.double(), _bicubic_reference(pos, old, new), rtol=0, atol=1e-5)
    assert torch.equal(resize_pos_embed(pos, old, old), pos)


def test_pos_embed_resize_of_a_linear_ramp_matches_the_bicubic_closed_form():
    """Analytic case. A ramp v(y, x) = 0.7 y - 0.3 x + 0.1 over source positions, sampled at source
    coordinate s = (i + 0.5) * old / new - 0.5 (align_corners=False). Cubic convolution with Keys'
    a = -0.75 (PyTorch's) reproduces a ramp up to e(f) = -(2a + 1) f (f - 1) (2f - 1) at the
    fraction f of s: exact at whole and half positions, off by at most 0.048 in between. Points
    whose 4 taps leave the grid (borders are clamped) are not checked."""
    old, new = (8, 6), (13, 10)
    rows = torch.arange(old[0], dtype=torch.float64)[:, None].expand(old)
    cols = torch.arange(old[1], dtype=torch.float64)[None, :].expand(old)
    ramp = (0.7 * rows - 0.3 * cols + 0.1).reshape(1, -1, 1).float()
    pos = torch.cat([torch.full((1, 1, 1), 5.0), ramp], dim=1)
    out = resize_pos_embed(pos, old, new)[0, 1:, 0].double().reshape(new)

    def source(n_new: int, n_old: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = (torch.arange(n_new, dtype=torch.float64) + 0.5) * n_old / n_new - 0.5
        f = s - s.floor()
        inside = (s.floor() >= 1) & (s.floor() + 2 <= n_old - 1)
        return s + 0.5 * f * (f - 1) * (2 * f - 1), inside  # a = -0.75: -(2a + 1) = 0.5

    sy, in_y = source(new[0], old[0])
    sx, in_x = source(new[1], old[1])
    expected = 0.7 * sy[:, None] - 0.3 * sx[None, :] + 0.1
    interior = in_y[:, None] & in_x[None, :]
    assert interior.sum() >= 20
    torch.testing.assert_close(out[interior], expected[interior], rtol=0, atol=1e-5)


def test_forward_at_another_input_size_uses_the_resized_pos_embed():
    """A 16x12-grid model fed 384x288 images equals a 24x18-grid model holding the resized table."""
    torch.manual_seed(0)
    small = build_pose_model(ModelConfig(preset="tiny", image_size=[256, 192])).eval()
    large = build_pose_model(ModelConfig(preset="tiny", image_size=[384, 288])).eval()
    state = small.state_dict()
    state["backbone.pos_embed"] = _bicubic_reference(state["backbone.pos_embed"], (16, 12), (24, 18)).float()
    large.load_state_dict(state)
    x = torch.randn(1, 3, 384, 288)
    with torch.no_grad():
        out = small(x)
        torch.testing.assert_close(out, large(x), rtol=0, atol=1e-6)
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


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))


def _hand_counted_parameters(m, grid: tuple[int, int], k: int | None = None) -> tuple[int, int]:
    """(backbone, head) parameters by hand: patch conv, pos_embed with its extra token, per block two
    LayerNorms, qkv, proj, fc1, fc2 (ViTPose++: fc2 gives width - part_features outputs, each expert
    the other part_features); last norm. Classic head: one deconv per halving from the feature
    stride to 1/4, a BN after each, a 1x1 conv; simple head: a 3x3 conv. `k`: the head's joints."""
    c, k, hidden = m.embed_dim, k or m.num_keypoints, int(round(m.embed_dim * m.mlp_ratio))
    block = 2 * 2 * c + (3 * c * c + (3 * c if m.qkv_bias else 0)) + (c * c + c) + (c * hidden + hidden) \
        + (hidden * c + c)
    if m.backbone == "vit_moe":
        block += (m.num_experts - 1) * (hidden * m.part_features + m.part_features)
    backbone = (3 * m.patch_size ** 2 * c + c) + (1 + grid[0] * grid[1]) * c + m.depth * block + 2 * c
    if m.head == "simple":
        return backbone, c * k * 9 + k
    ch, deconvs = m.head_channels, {16: 2, 8: 1}[m.patch_stride]
    head = c * ch * 16 + (deconvs - 1) * ch * ch * 16 + deconvs * 2 * ch + ch * k + k
    return backbone, head


def test_shipped_configs_are_found_recursively():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in SHIPPED}
    assert {"vitpose_b_256x192.yaml", "ablation/vitpose_b_224x224.yaml", "ablation/vitpose_b_256x256.yaml",
            "ablation/vitpose_b_384x288.yaml", "ablation/vitpose_b_384x384.yaml", "ablation/vitpose_b_576x432.yaml",
            "ablation/vitpose_b_256x192_stride8.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.relative_to(ROOT / "configs").as_posix() for p in SHIPPED])
def test_every_shipped_config_builds_with_hand_counted_parameters_and_grid(path):
    """Built on the meta device (nothing allocated, G included): grid = input / patch stride (padding
    2 at stride 16, 4 at stride 8), parameters as counted by hand, heatmaps 1/4 of the input."""
    import yaml

    from vitpose_scale.config import load_config
    from vitpose_scale.models.mae import build_mae

    cfg = load_config(path)
    m = cfg.model.resolved()
    h, w = m.image_size
    grid = (h // m.patch_stride, w // m.patch_stride)
    assert cfg.model.grid == grid
    model = build_pose_model(cfg.model, device="meta")
    pos_grid = tuple(m.pretrain_grid) if m.pretrain_grid else grid
    assert (count_parameters(model.backbone), count_parameters(model.keypoint_head)) == \
        _hand_counted_parameters(m, pos_grid)
    if model.num_datasets > 1:  # ViTPose+/++: every head by hand; routing by dataset needs real indices
        joints = m.head_keypoints or [m.num_keypoints]
        assert [count_parameters(head) for head in model.heads] == \
            [_hand_counted_parameters(m, pos_grid, k)[1] for k in joints]
        return
    x = torch.empty(1, 3, h, w, device="meta")
    assert model.backbone(x).shape == (1, m.embed_dim, *grid)
    assert model(x).shape == (1, m.num_keypoints, h // 4, w // 4)
    if "mae" in yaml.safe_load(path.read_text()):  # MAE pretraining configs: the encoder + decoder too
        with torch.device("meta"):
            mae = build_mae(cfg)
        patches = (h // m.patch_size) * (w // m.patch_size)
        assert mae.grid == (h // m.patch_size, w // m.patch_size)
        d, depth, p = cfg.mae.decoder_dim, cfg.mae.decoder_depth, m.patch_size
        encoder = _hand_counted_parameters(m, mae.grid)[0]
        decoder = d + (m.embed_dim * d + d) + patches * d + depth * (2 * 2 * d + 12 * d * d + 9 * d) + 2 * d \
            + (d * p * p * 3 + p * p * 3)
        assert count_parameters(mae) == encoder + decoder


def _cfg(*sets):
    return load_config(ROOT / "configs" / "demo.yaml", list(sets))


def _vit(depth=4, drop_path=0.3, embed_dim=64, mlp_ratio=4.0):
    torch.manual_seed(0)
    return ViT(embed_dim=embed_dim, depth=depth, num_heads=4, mlp_ratio=mlp_ratio, drop_path=drop_path, grid=(4, 3))


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 12])
def test_vit_drop_path_rates_are_the_official_linspace(depth):
    """Official ViTPose: ``dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]``."""
    vit = _vit(depth=depth, drop_path=0.3)
    official = [x.item() for x in torch.linspace(0, 0.3, depth)]
    assert len(vit.blocks) == depth
    rates = [0.0 if isinstance(b.drop_path, nn.Identity) else b.drop_path.drop_prob for b in vit.blocks]
    assert rates == pytest.approx(official, rel=1e-6, abs=1e-12)
    assert isinstance(vit.blocks[0].drop_path, nn.Identity)  # rate 0: no DropPath module at all


def test_vit_qkv_bias_and_attention_kernel_follow_the_config(monkeypatch):
    """model.qkv_bias=false removes exactly depth x 3 x dim parameters; model.attention=plain never
    calls torch's fused kernel (the numbers are equal, so only the call tells them apart)."""
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
    x = torch.randn(1, 3, 64, 48)
    plain = _vit(depth=2, drop_path=0.0)
    checkpointed = ViT(embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0, drop_path=0.0, grid=(4, 3),
                       activation_checkpointing=True)  # through the constructor, as the config does
    saved_plain, saved_checkpointed = _saved_tensor_count(plain, x), _saved_tensor_count(checkpointed, x)
    # each block saves at least its two LayerNorm inputs, attention and MLP activations when not checkpointed
    assert saved_plain >= saved_checkpointed + 4 * len(plain.blocks)


def test_vit_checkpointing_gives_block_gradients_with_a_frozen_embedding():
    """Block inputs that do not require grad (frozen patch_embed/pos_embed) still give block gradients:
    the non-reentrant checkpoint (docs/reference.md §6); a reentrant one would leave them None."""
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
