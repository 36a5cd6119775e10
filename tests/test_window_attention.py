"""Window attention (model.attention_window: window, shifted window, pooling window, shift + pool)
against a reference written here from the definitions: explicit loops over windows and queries,
the Swin shift mask built from which tokens wrapped around the cyclic roll, pooled tokens averaged
cell by cell and projected with the same qkv weights. Then the config's one-line errors, the
planner's activation bytes against what autograd saves, activation checkpointing, checkpoints and
the bench's smoke path."""
import json
import logging
import math
import sys
from pathlib import Path

import pytest
import torch

from vitpose_scale import plan
from vitpose_scale.config import ConfigError, load_config
from vitpose_scale.models import attention as attn_mod
from vitpose_scale.models.attention import Attention
from vitpose_scale.models.pose import build_pose_model

ROOT = Path(__file__).resolve().parents[1]
GRID, SIZE, POOL = (8, 6), (4, 3), 2  # 4 windows of 12 tokens; shifted by (2, 1); 4x3 pooled tokens
VARIANTS = {"window": dict(size=list(SIZE)), "shift": dict(size=list(SIZE), shift=True),
            "pool": dict(size=list(SIZE), pool=POOL), "shift_pool": dict(size=list(SIZE), shift=True, pool=POOL),
            # the window spans the width: Swin shifts only the rows then
            "shift_rows_only": dict(size=[4, 6], shift=True, pool=POOL)}


def reference(x: torch.Tensor, module: Attention, grid, size, shift=False, pool=None) -> torch.Tensor:
    """Attention of the normed tokens x (B, hp*wp, C), from the definitions, one query at a time."""
    b, n, c = x.shape
    (hp, wp), (wh, ww), heads = grid, size, module.num_heads
    d = c // heads
    sh = wh // 2 if shift and wh < hp else 0
    sw = ww // 2 if shift and ww < wp else 0
    weight, bias = module.qkv.weight, module.qkv.bias
    qkv = x @ weight.T + bias
    q, k, v = (t.reshape(b, n, heads, d) for t in qkv.split(c, dim=-1))
    pooled_k = pooled_v = x.new_zeros(b, 0, heads, d)
    if pool:  # each pool x pool cell of the map averaged, then the same projection
        grid_map = x.reshape(b, hp, wp, c)
        cells = [grid_map[:, i:i + pool, j:j + pool].mean(dim=(1, 2))
                 for i in range(0, hp, pool) for j in range(0, wp, pool)]
        projected = torch.stack(cells, dim=1) @ weight.T + bias
        pooled_k = projected[..., c:2 * c].reshape(b, -1, heads, d)
        pooled_v = projected[..., 2 * c:].reshape(b, -1, heads, d)
    rows_out = {}
    for wi in range(hp // wh):
        for wj in range(wp // ww):
            # window (wi, wj) of the map rolled by (-sh, -sw): rolled position (r, s) holds token
            # ((r + sh) % hp, (s + sw) % wp); the rows/cols that came around the edge are "wrapped"
            members, wrapped = [], []
            for r in range(wi * wh, (wi + 1) * wh):
                for s in range(wj * ww, (wj + 1) * ww):
                    members.append(((r + sh) % hp) * wp + (s + sw) % wp)
                    wrapped.append((sh > 0 and r >= hp - sh, sw > 0 and s >= wp - sw))
            for qi, token in enumerate(members):
                # Swin: tokens that wrapped around never meet tokens that did not (per axis)
                keys = [m for m, w in zip(members, wrapped) if w == wrapped[qi]]
                kk = torch.cat([k[:, keys], pooled_k], dim=1)  # (b, S, heads, d)
                vv = torch.cat([v[:, keys], pooled_v], dim=1)
                scores = torch.einsum("bhd,bshd->bhs", q[:, token], kk) / math.sqrt(d)
                rows_out[token] = torch.einsum("bhs,bshd->bhd", scores.softmax(dim=-1), vv).reshape(b, c)
    out = torch.stack([rows_out[t] for t in range(n)], dim=1)
    return out @ module.proj.weight.T + module.proj.bias


def _grads(out: torch.Tensor, tensors) -> list[torch.Tensor]:
    torch.manual_seed(1)
    probe = torch.randn_like(out)
    return torch.autograd.grad((out * probe).sum(), tensors)


@pytest.mark.parametrize("impl", ["sdpa", "plain"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_windows_match_the_reference_forward_and_gradients(variant, impl):
    spec = VARIANTS[variant]
    torch.manual_seed(0)
    module = Attention(16, 2, impl=impl, window=spec)
    x = torch.randn(2, GRID[0] * GRID[1], 16, requires_grad=True)
    out = module(x, grid=GRID)
    ref = reference(x, module, GRID, spec["size"], spec.get("shift", False), spec.get("pool"))
    assert (out - ref).abs().max() < 1e-5
    leaves = [x, *module.parameters()]
    for got, want in zip(_grads(out, leaves), _grads(ref, leaves)):
        assert (got - want).abs().max() < 1e-5


def test_the_reference_sees_what_windows_change():
    """The reference is not blind: a shift, pooled tokens and the window size each change its output."""
    torch.manual_seed(0)
    module = Attention(16, 2)
    x = torch.randn(1, GRID[0] * GRID[1], 16)
    outs = [reference(x, module, GRID, SIZE), reference(x, module, GRID, SIZE, shift=True),
            reference(x, module, GRID, SIZE, pool=POOL), reference(x, module, GRID, (2, 3))]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert (outs[i] - outs[j]).abs().max() > 1e-3


@pytest.mark.parametrize("impl", ["sdpa", "plain"])
def test_a_window_covering_the_grid_is_full_attention(impl):
    """Through the whole model (Block and ViT pass the grid): window = grid, no shift, no pool."""
    sets = ["model.preset=tiny", "model.image_size=[64,48]", f"model.attention={impl}"]
    full = build_pose_model(load_config(None, sets).model).eval()
    cfg = load_config(None, sets + ["model.attention_window={size: [4, 3]}"])
    windowed = build_pose_model(cfg.model).eval()
    windowed.load_state_dict(full.state_dict())
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert (windowed(x) - full(x)).abs().max() < 1e-6


def test_state_dict_unchanged_and_an_official_checkpoint_loads(tmp_path):
    from vitpose_scale.models.interop import export_official
    from vitpose_scale.models.weights import load_weights

    sets = ["model.preset=tiny", "model.image_size=[64,48]", "model.patch_stride=8"]
    full = build_pose_model(load_config(None, sets).model)
    windowed = build_pose_model(load_config(None, sets + ["model.attention_window={size: [4, 3], shift: true, "
                                                          "pool: 2}"]).model)
    assert {k: v.shape for k, v in full.state_dict().items()} == {k: v.shape for k, v in windowed.state_dict().items()}
    export_official(full, tmp_path / "official.pth")
    load_weights(windowed, tmp_path / "official.pth")  # strict: every key, no extra one
    for (key, a), b in zip(full.state_dict().items(), windowed.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.skipif(not __import__("vitpose_scale.kernels.flash_attn", fromlist=["x"]).triton_available()[0],
                    reason="triton kernels cannot run here")
def test_triton_runs_windows_in_the_interpreter_and_the_rest_on_sdpa(monkeypatch, caplog):
    """Plain windows: our kernel on (B x windows, heads, L, D); shifted windows need a mask it does not
    have, pooling windows more keys than queries: sdpa, one note each. One tiny shape (the interpreter
    takes seconds a call)."""
    from vitpose_scale.kernels import flash_attn as fa

    calls = []
    kernel = fa.flash_attention
    monkeypatch.setattr(fa, "flash_attention", lambda *a, **kw: calls.append(a[0].shape) or kernel(*a, **kw))
    monkeypatch.setattr(attn_mod, "_warned_fallback", set())
    device = "cpu" if fa._interpreting() else "cuda"
    torch.manual_seed(0)
    cases = (({"size": [2, 2]}, True), ({"size": [2, 2], "shift": True}, False), ({"size": [2, 2], "pool": 2}, False),
             ({"size": [2, 2], "shift": True, "pool": 2}, False))
    for spec, kernel_runs in cases:
        triton = Attention(16, 2, impl="triton", window=spec).to(device)
        sdpa = Attention(16, 2, impl="sdpa", window=spec).to(device)
        sdpa.load_state_dict(triton.state_dict())
        x = torch.randn(1, 16, 16, device=device, requires_grad=True)
        calls.clear()
        with caplog.at_level(logging.WARNING, logger=attn_mod.__name__):
            out = triton(x, grid=(4, 4))
            grads = _grads(out, [x, *triton.parameters()])
        assert calls == ([torch.Size([4, 2, 4, 8])] if kernel_runs else [])
        ref = sdpa(x, grid=(4, 4))
        assert (out - ref).abs().max() < 1e-5
        for got, want in zip(grads, _grads(ref, [x, *sdpa.parameters()])):
            assert (got - want).abs().max() < 1e-5
    notes = [r.getMessage() for r in caplog.records if "model.attention=triton is unavailable" in r.getMessage()]
    assert len(notes) == 2 and "no attention mask" in notes[0] and "pooling windows" in notes[1], notes


def _receptive_field(window: dict, token: int) -> set[int]:
    """Input tokens that reach one output token through two blocks of the tiny ViT (8x6 grid)."""
    cfg = load_config(None, ["model.preset=tiny", "model.depth=2", "model.image_size=[64,48]",
                             "model.patch_stride=8", f"model.attention_window={json.dumps(window)}"])
    vit = build_pose_model(cfg.model).backbone
    x = torch.randn(1, 48, 64, requires_grad=True)
    h = x
    for blk in vit.blocks:
        h = blk(h, grid=(8, 6))
    (grad,) = torch.autograd.grad(h[0, token].sum(), x)
    return set(torch.nonzero(grad[0].abs().sum(-1)).flatten().tolist())


def test_shifted_windows_alternate_so_information_crosses_windows():
    """Swin: block 0 regular windows, block 1 shifted by (2, 1). Token (3, 2), the last of window 0,
    sits in a shifted window spanning rows 2-5, cols 1-3, i.e. all four regular windows: after two
    blocks it has seen every token; without the shift, only its own window (the same shift in every
    block would give rows 2-5, cols 1-3 only)."""
    torch.manual_seed(0)
    vit = build_pose_model(load_config(None, ["model.preset=tiny", "model.image_size=[64,48]", "model.patch_stride=8",
                                              "model.attention_window={size: [4, 3], shift: true}"]).model).backbone
    assert [blk.attn.window.shift for blk in vit.blocks] == [False, True, False, True]
    token = 3 * 6 + 2
    assert _receptive_field({"size": [4, 3]}, token) == {r * 6 + c for r in range(4) for c in range(3)}
    assert _receptive_field({"size": [4, 3], "shift": True}, token) == set(range(48))


def test_activation_checkpointing_gives_the_same_gradients():
    sets = ["model.preset=tiny", "model.depth=2", "model.image_size=[64,48]", "model.patch_stride=8",
            "model.drop_path=0.0", "model.attention_window={size: [4, 3], shift: true, pool: 2}"]
    torch.manual_seed(0)
    plain = build_pose_model(load_config(None, sets).model).train()
    ckpt = build_pose_model(load_config(None, sets + ["model.activation_checkpointing=true"]).model).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 48)
    grads = []
    for model in (plain, ckpt):
        out = model(x)
        grads.append(_grads(out, list(model.parameters())))
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-6


def test_extra_tokens_are_refused_at_forward_time():
    model = build_pose_model(load_config(None, ["model.preset=tiny", "model.image_size=[64,48]",
                                                "model.attention_window={size: [2, 3]}"]).model)
    with pytest.raises(ValueError, match=r"knowledge token.*no place in a window"):
        model.backbone(torch.randn(1, 3, 64, 48), extra_tokens=torch.zeros(1, 1, 64))


def test_experts_and_windows_combine():
    cfg = load_config(None, ["model.preset=tiny", "model.image_size=[64,48]", "model.backbone=vit_moe",
                             "model.num_experts=2", "model.part_features=16", "model.head_keypoints=[17,17]",
                             "model.attention_window={size: [2, 3], shift: true, pool: 1}"])
    model = build_pose_model(cfg.model).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 48), torch.tensor([0, 1]))
    assert out.shape == (2, 17, 16, 12) and torch.isfinite(out).all()


# --------------------------------------------------------------------- configs --
BAD = {  # 256x192 with stride-8 patches: a 32x24 token grid
    "{size: [5, 5]}": "model.attention_window.size: [5, 5] does not divide the 32x24 token grid (model.image_size "
                      "256x192, patch stride 8): expected a window dividing both axes, e.g. [4, 4] (windows are not "
                      "padded: there is no padding rule)",
    "{size: [32, 24], shift: true}": "model.attention_window.shift: the window [32, 24] covers the 32x24 token grid "
                                     "(model.image_size 256x192, patch stride 8): there is nothing to shift; "
                                     "expected shift false or a smaller window",
    "{size: 8, pool: 3}": "model.attention_window.pool: 3 does not divide the 32x24 token grid (model.image_size "
                          "256x192, patch stride 8): expected a divisor of both axes, e.g. 2",
    "{size: 8, stride: 2}": "model.attention_window: unknown key 'stride': expected size, shift, pool",
    "{shift: true}": "model.attention_window.size: got None, expected [rows, cols] of the window in tokens (or one "
                     "int for a square window)",
    "{size: 8, shift: 1}": "model.attention_window.shift: got 1, expected true or false",
}


@pytest.mark.parametrize("window", list(BAD))
def test_bad_windows_are_one_line_config_errors(window, capsys, tmp_path):
    sets = ["model.image_size=[256,192]", "model.patch_stride=8", f"model.attention_window={window}"]
    with pytest.raises(ConfigError) as err:
        load_config(None, sets)
    assert str(err.value) == BAD[window]
    # the command line: exit 2, the message on one line
    assert plan.main(["--config", str(ROOT / "configs/vitpose_b_256x192.yaml"), "--gpus", "8",
                      *[arg for s in sets for arg in ("--set", s)]]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and BAD[window] in lines[0]


def test_dotted_overrides_and_an_int_size_are_normalised():
    cfg = load_config(None, ["model.attention_window.size=4", "model.attention_window.pool=2"])
    assert cfg.model.attention_window == {"size": [4, 4], "shift": False, "pool": 2}


STRIDE8 = [f"vitpose_b_stride8_{v}.yaml" for v in ("full", "window", "shift", "pool", "shift_pool")]


def test_the_ablation_configs_differ_only_in_the_window():
    cfgs = [load_config(ROOT / "configs/ablation" / name) for name in STRIDE8]
    windows = [c.model.attention_window for c in cfgs]
    assert windows == [None] + [{"size": [8, 8], "shift": shift, "pool": pool}
                                for shift, pool in ((False, None), (True, None), (False, 4), (True, 4))]
    reference = load_config(ROOT / "configs/ablation/vitpose_b_256x192_stride8.yaml").to_dict()
    for cfg in cfgs:
        d = cfg.to_dict()
        d["model"]["attention_window"] = None
        d["train"]["output_dir"] = reference["train"]["output_dir"]
        assert d == reference


# --------------------------------------------------------------------- planner --
@pytest.mark.parametrize("impl,variant", [("plain", "window"), ("plain", "shift"), ("plain", "pool"),
                                          ("plain", "shift_pool"), ("sdpa", "shift_pool")])
def test_planned_activations_equal_the_bytes_autograd_saves(impl, variant):
    """As tests/test_plan.py does for full attention: SavedActivationMeter on the real model, fp32."""
    from vitpose_scale.engine.metrics import SavedActivationMeter
    from vitpose_scale.engine.trainer import heatmap_loss

    window = json.dumps(VARIANTS[variant])
    cfg = load_config(None, ["model.preset=tiny", "model.image_size=[64,48]", "model.patch_stride=8",
                             f"model.attention={impl}", f"model.attention_window={window}"])
    model = build_pose_model(cfg.model).train()
    h, w = cfg.model.heatmap_size
    with SavedActivationMeter(model) as meter:
        loss = heatmap_loss(model(torch.randn(3, 3, 64, 48)), torch.rand(3, 17, h, w), torch.ones(3, 17, 1))
    loss.backward()
    assert plan.saved_activation_bytes(plan.model_shape(cfg), 3, "fp32", False) == meter.bytes


def test_windows_save_memory_only_where_attention_keeps_scores():
    """ViTPose-B stride 8 (the ablation configs), 64 images: plain attention keeps heads x 768 scores
    per token, windows heads x 64 (+ 48 pooled); the fused kernels keep no scores, and the windows'
    merge copy and pooled keys/values make them cost a little more than full attention."""
    def block(name, impl):
        cfg = load_config(ROOT / "configs/ablation" / name, [f"model.attention={impl}"])
        return plan.block_saved_bytes(plan.model_shape(cfg), 64, "bf16")

    full_plain, full_sdpa = block(STRIDE8[0], "plain"), block(STRIDE8[0], "sdpa")
    for name in STRIDE8[1:]:
        assert block(name, "plain") < 0.75 * full_plain, name
        assert full_sdpa < block(name, "sdpa") < 1.25 * full_sdpa, name


def test_window_flops_by_hand():
    """Attention FLOPs: each query meets its window's 12 keys (+ 12 pooled ones, which also pass qkv)."""
    sets = ["model.preset=tiny", "model.image_size=[64,48]", "model.patch_stride=8"]
    full = plan.model_shape(load_config(None, sets)).forward_flops
    pooled = plan.model_shape(load_config(None, sets + ["model.attention_window={size: [4, 3], pool: 2}"]))
    depth, n, c = 4, 48, 64
    attention_saved = 4 * depth * n * (n - 24) * c
    assert pooled.forward_flops == full - attention_saved + 2 * 12 * depth * 3 * c * c


# ----------------------------------------------------------------------- bench --
def test_bench_smoke(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import window_attention

    out = tmp_path / "w.json"
    assert window_attention.main(["--smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    (shape,) = report["shapes"]
    assert report["smoke"] and list(shape["attention"]) == ["sdpa", "plain"]
    for impl, variants in shape["attention"].items():
        assert list(variants) == ["full", "window", "shift", "pool", "shift_pool"]
        for name, entry in variants.items():
            assert entry["saved_bytes"] == entry["planned_saved_bytes"], (impl, name)
            assert len(entry["seconds_per_step"]) == 2 and entry["time_ratio_vs_full"] > 0
        assert variants["full"]["memory_ratio_vs_full"] == 1.0
        assert variants["pool"]["memory_ratio_vs_full"] > variants["window"]["memory_ratio_vs_full"]
