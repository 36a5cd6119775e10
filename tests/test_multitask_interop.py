"""ViTPose+/++ interop: the official ViTMoE and tools/model_split.py, transformers' MoE VitPose,
official multi-task checkpoints (strict, one-line errors), `split`, per-dataset export."""
import json
import os
import runpy
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vitpose_scale.cli import main as cli
from vitpose_scale.config import ModelConfig, load_config
from vitpose_scale.keypoints import get_spec
from vitpose_scale.models.interop import (
    CheckpointError,
    detect_checkpoint_format,
    export_official,
    from_hf_state_dict,
    hf_config,
    load_state_dict_strict,
    to_hf_state_dict,
)
from vitpose_scale.models.pose import build_pose_model
from vitpose_scale.models.split import split_state_dict
from vitpose_scale.models.vit import routes
from vitpose_scale.models.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_REPO = Path(os.environ.get("VITPOSE_OFFICIAL_REPO", "/work/.mirror/ViTAE-Transformer+ViTPose/repo"))
# A tiny ViTPose++: 2 blocks of width 64, 3 experts of 16 features, heads for coco / aic / mpii.
TINY = dict(preset="tiny", depth=2, image_size=[64, 48], head_channels=256)
MOE = dict(backbone="vit_moe", num_experts=3, part_features=16)
HEADS = [17, 14, 16]
TASKS = ("data.tasks=[{name: coco, keypoint_set: coco}, {name: aic, keypoint_set: aic}, "
         "{name: mpii, keypoint_set: mpii}]")
RUN_SETS = ["model.preset=tiny", "model.depth=2", "model.image_size=[64,48]", "model.head_channels=256",
            "model.backbone=vit_moe", "model.num_experts=3", "model.part_features=16", TASKS]

from hf_loading import load_hf_quietly  # noqa: E402


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights of order 1 (norm scales near 1) and random BatchNorm statistics: 1e-5 is then a real bound."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_scale = p.dim() == 1 and name.endswith("weight")  # LayerNorm / BatchNorm scales
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if is_scale else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) * 1.5 + 0.5)
    return model.eval()


def _tiny(seed=0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return _randomize(build_pose_model(ModelConfig(**{**TINY, **kw})), seed)


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 64, 48, generator=torch.Generator().manual_seed(seed))


def _close(got, expected, atol=1e-5):
    assert expected.abs().max() > 0.1  # outputs of order 1
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


# ----------------------------------------------------------- the official code --
def _official_source(rel: str) -> str:
    """A file of the official ViTPose repository: a checkout or a bare git directory (VITPOSE_OFFICIAL_REPO)."""
    if (OFFICIAL_REPO / rel).is_file():
        return (OFFICIAL_REPO / rel).read_text()
    if OFFICIAL_REPO.is_dir():
        r = subprocess.run(["git", "--git-dir", str(OFFICIAL_REPO), "show", f"HEAD:{rel}"], capture_output=True,
                           text=True)
        if r.returncode == 0:
            return r.stdout
    pytest.skip(f"the official ViTPose repository is not at {OFFICIAL_REPO} (or lacks {rel}): set "
                f"VITPOSE_OFFICIAL_REPO to a checkout or a bare git directory of ViTAE-Transformer/ViTPose")


@pytest.fixture(scope="module")
def official_vit_moe():
    """The official mmpose/models/backbones/vit_moe.py, run as a module; its two relative imports
    (the BACKBONES registry, BaseBackbone) get minimal stand-ins."""
    text = _official_source("mmpose/models/backbones/vit_moe.py")
    pkg = "_official_vitpose"

    class Registry:
        def register_module(self):
            return lambda cls: cls

    class BaseBackbone(nn.Module):
        def init_weights(self, pretrained=None, **kwargs):
            pass

    stand_ins = {pkg: types.ModuleType(pkg), f"{pkg}.builder": types.ModuleType(f"{pkg}.builder"),
                 f"{pkg}.backbones": types.ModuleType(f"{pkg}.backbones"),
                 f"{pkg}.backbones.base_backbone": types.ModuleType(f"{pkg}.backbones.base_backbone")}
    stand_ins[pkg].__path__ = []
    stand_ins[f"{pkg}.backbones"].__path__ = []
    stand_ins[f"{pkg}.builder"].BACKBONES = Registry()
    stand_ins[f"{pkg}.backbones.base_backbone"].BaseBackbone = BaseBackbone
    module = types.ModuleType(f"{pkg}.backbones.vit_moe")
    module.__package__ = f"{pkg}.backbones"
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        exec(compile(text, "official vit_moe.py", "exec"), module.__dict__)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module


def test_forward_equals_the_official_vit_moe_for_every_dataset_and_a_mixed_batch(official_vit_moe):
    torch.manual_seed(0)
    theirs = official_vit_moe.ViTMoE(img_size=(64, 48), patch_size=16, embed_dim=64, depth=2, num_heads=4,
                                     mlp_ratio=4, qkv_bias=True, ratio=1, num_expert=3, part_features=16)
    _randomize(theirs, seed=3)
    ours = build_pose_model(ModelConfig(**TINY, **MOE)).eval()
    load_state_dict_strict(ours, {"backbone." + k: v for k, v in theirs.state_dict().items()}, "official ViTMoE",
                           prefixes=("backbone.",))
    x = _images(5)
    batches = [torch.full((5,), k) for k in range(3)] + [torch.tensor([2, 0, 1, 1, 0])]
    with torch.no_grad():
        for index in batches:
            _close(ours.backbone(x, routes(index, 3)), theirs(x, index))
        # the experts matter: another dataset gives other features
        assert (theirs(x, batches[0]) - theirs(x, batches[1])).abs().max() > 1e-2


def test_split_equals_the_official_tools_model_split(official_vit_moe, tmp_path, monkeypatch):
    """tools/model_split.py on a 6-dataset ViTPose++ file (the only count it handles): our split has
    its values on every key we keep; it keeps only experts and associate heads besides."""
    del official_vit_moe  # the same repository must be there
    script = _official_source("tools/model_split.py")
    heads = [17, 14, 16, 17, 17, 133]  # its hard-coded coco, aic, mpii, ap10k, apt36k, wholebody
    model = _tiny(seed=4, backbone="vit_moe", num_experts=6, part_features=16, head_keypoints=heads)
    export_official(model, tmp_path / "vitpose++.pth")
    (tmp_path / "model_split.py").write_text(script)
    monkeypatch.setattr(sys, "argv", ["model_split.py", "--source", str(tmp_path / "vitpose++.pth"),
                                      "--target", str(tmp_path)])
    runpy.run_path(str(tmp_path / "model_split.py"), run_name="__main__")
    state = model.state_dict()
    for k, name in enumerate(["coco", "aic", "mpii", "ap10k", "apt36k", "wholebody"]):
        official = torch.load(tmp_path / f"{name}.pth", weights_only=True)["state_dict"]
        ours = split_state_dict(state, k)
        assert set(ours) <= set(official)
        assert all(".mlp.experts." in key or key.startswith("associate_keypoint_heads.")
                   for key in set(official) - set(ours))
        for key, value in ours.items():
            assert torch.equal(value, official[key]), (name, key)


# -------------------------------------------------------------- transformers --
def test_hf_config_carries_the_experts():
    pytest.importorskip("transformers")
    backbone = hf_config(ModelConfig(**TINY, **MOE)).backbone_config
    assert (backbone.num_experts, backbone.part_features) == (3, 16)
    assert hf_config(ModelConfig(**TINY)).backbone_config.num_experts == 1


def test_matches_transformers_moe_vitpose_both_directions():
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig(**TINY, **MOE)  # one head, experts: the Hugging Face vitpose-plus layout
    x = _images(5, seed=2)
    batches = [torch.full((5,), k) for k in range(3)] + [torch.tensor([1, 2, 0, 2, 1])]
    # ours -> transformers
    ours = _tiny(seed=5, **MOE)
    theirs = transformers.VitPoseForPoseEstimation(hf_config(cfg)).eval()
    theirs.load_state_dict(to_hf_state_dict(ours.state_dict()), strict=True)
    with torch.no_grad():
        for index in batches:
            _close(theirs(pixel_values=x, dataset_index=index).heatmaps, ours(x, index))
        assert (ours(x, batches[0]) - ours(x, batches[2])).abs().max() > 1e-2
    # transformers (random init, then order-1 weights) -> ours
    torch.manual_seed(6)
    theirs = _randomize(transformers.VitPoseForPoseEstimation(hf_config(cfg)), seed=6)
    ours = build_pose_model(cfg).eval()
    load_state_dict_strict(ours, from_hf_state_dict(theirs.state_dict()), "hf")
    assert torch.equal(ours.backbone.blocks[1].mlp.experts[2].weight,
                       theirs.backbone.encoder.layer[1].mlp.experts[2].weight)
    with torch.no_grad():
        for index in batches:
            _close(ours(x, index), theirs(pixel_values=x, dataset_index=index).heatmaps)


# ------------------------------------------------ official multi-task checkpoints --
def _official_layout(embed: int, depth: int, experts: int, part: int, heads: list[int],
                     grid: tuple[int, int] = (16, 12)) -> dict[str, tuple]:
    """Key -> shape of an official TopDownMoE checkpoint (vit_moe.py / top_down_moe.py, classic heads
    of 256 channels), written out from the official modules; experts=0: the plain ViT (ViTPose+)."""
    hidden = 4 * embed
    shapes = {"backbone.pos_embed": (1, 1 + grid[0] * grid[1], embed),
              "backbone.patch_embed.proj.weight": (embed, 3, 16, 16), "backbone.patch_embed.proj.bias": (embed,),
              "backbone.last_norm.weight": (embed,), "backbone.last_norm.bias": (embed,)}
    for i in range(depth):
        b = f"backbone.blocks.{i}."
        shapes |= {b + "norm1.weight": (embed,), b + "norm1.bias": (embed,), b + "norm2.weight": (embed,),
                   b + "norm2.bias": (embed,), b + "attn.qkv.weight": (3 * embed, embed),
                   b + "attn.qkv.bias": (3 * embed,),
                   b + "attn.proj.weight": (embed, embed), b + "attn.proj.bias": (embed,),
                   b + "mlp.fc1.weight": (hidden, embed), b + "mlp.fc1.bias": (hidden,),
                   b + "mlp.fc2.weight": (embed - part if experts else embed, hidden),
                   b + "mlp.fc2.bias": (embed - part if experts else embed,)}
        for k in range(experts):
            shapes |= {b + f"mlp.experts.{k}.weight": (part, hidden), b + f"mlp.experts.{k}.bias": (part,)}
    for h, joints in enumerate(heads):
        p = "keypoint_head." if h == 0 else f"associate_keypoint_heads.{h - 1}."
        shapes |= {p + "deconv_layers.0.weight": (embed, 256, 4, 4), p + "deconv_layers.3.weight": (256, 256, 4, 4),
                   p + "final_layer.weight": (joints, 256, 1, 1), p + "final_layer.bias": (joints,)}
        for bn in (1, 4):
            shapes |= {p + f"deconv_layers.{bn}.{n}": (256,) for n in ("weight", "bias", "running_mean", "running_var")}
            shapes[p + f"deconv_layers.{bn}.num_batches_tracked"] = ()
    return shapes


def _meta_state(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta", dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
            for k, s in shapes.items()}


SIX_TASKS = ("data.tasks=[{keypoint_set: coco}, {keypoint_set: aic}, {keypoint_set: mpii}, {keypoint_set: ap10k}, "
             "{name: apt36k, keypoint_set: apt36k}, {keypoint_set: coco_wholebody}]")


@pytest.mark.parametrize("kind", ["ViTPose++", "ViTPose+"])
def test_official_s_size_multitask_layouts_load_strictly_into_the_configured_model(kind):
    """The official ViTPose++-S (6 experts of 192 features, 6 heads) and a ViTPose+ (plain ViT, 6 heads)."""
    experts = 6 if kind == "ViTPose++" else 0
    shapes = _official_layout(384, 12, experts, 192 if experts else 0, [17, 14, 16, 17, 17, 133])
    state = _meta_state(shapes)
    assert detect_checkpoint_format(state) == "official"
    sets = ["model.preset=S", SIX_TASKS] + (
        ["model.backbone=vit_moe", "model.num_experts=6", "model.part_features=192"] if experts else [])
    cfg = load_config(None, sets)
    assert cfg.model.head_keypoints == [17, 14, 16, 17, 17, 133]
    model = build_pose_model(cfg.model, device="meta")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    load_state_dict_strict(model, state, f"{kind}-S")


@pytest.mark.parametrize("moe", [True, False], ids=["ViTPose++", "ViTPose+"])
def test_tiny_multitask_checkpoint_round_trips_with_every_value(tmp_path, moe):
    extra = MOE if moe else {}
    src = _tiny(seed=7, head_keypoints=HEADS, **extra)
    export_official(src, tmp_path / "multi.pth")
    assert detect_checkpoint_format(torch.load(tmp_path / "multi.pth", weights_only=True)["state_dict"]) == "official"
    sets = RUN_SETS if moe else [s for s in RUN_SETS if not s.startswith(("model.backbone", "model.num_experts",
                                                                          "model.part_features"))]
    dst = build_pose_model(load_config(None, sets).model).eval()
    load_weights(dst, tmp_path / "multi.pth")
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key
    index = torch.tensor([0, 2, 1])
    with torch.no_grad():
        torch.testing.assert_close(dst(_images(3), index), src(_images(3), index), rtol=0, atol=0)


def _one_line_error(model, state, **kw) -> str:
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(model, state, "ckpt.pth", **kw)
    assert "\n" not in str(err.value), str(err.value)
    return str(err.value)


def test_structure_mismatches_are_one_line_naming_the_key():
    moe = build_pose_model(ModelConfig(**TINY, **MOE, head_keypoints=HEADS), device="meta")
    plain = build_pose_model(ModelConfig(**TINY, head_keypoints=HEADS), device="meta")
    text = _one_line_error(plain, moe.state_dict())
    assert text == ("ckpt.pth: backbone.blocks.0.mlp.experts.0.weight is unexpected: the checkpoint has "
                    "mixture-of-experts feed-forwards (ViTPose++): set model.backbone=vit_moe model.num_experts=3 "
                    "model.part_features=16 (or `vitpose-scale split` it for one dataset)")
    text = _one_line_error(moe, plain.state_dict())
    assert text.startswith("ckpt.pth: backbone.blocks.0.mlp.experts.0.weight is missing: the checkpoint has plain "
                           "feed-forwards") and "set model.backbone=vit model.num_experts=1" in text
    four = build_pose_model(ModelConfig(**TINY, backbone="vit_moe", num_experts=4, part_features=16,
                                        head_keypoints=HEADS + [17]), device="meta")
    assert "the checkpoint has 3 experts per block, the model 4: set model.num_experts=3" in _one_line_error(
        four, moe.state_dict())
    wider = build_pose_model(ModelConfig(**TINY, backbone="vit_moe", num_experts=3, part_features=32,
                                         head_keypoints=HEADS), device="meta")
    assert "experts give 16 features, the model's 32: set model.part_features=16" in _one_line_error(
        wider, moe.state_dict())
    # heads: another count, then another joint count for one dataset
    two = build_pose_model(ModelConfig(**TINY, head_keypoints=[17, 14]), device="meta")
    assert _one_line_error(two, plain.state_dict()) == (
        "ckpt.pth: associate_keypoint_heads.1.* is unexpected: the checkpoint has 3 keypoint heads (joints "
        "[17, 14, 16]), the model 2 (joints [17, 14]): set data.tasks to the checkpoint's datasets in order, or "
        "model.head_keypoints=[17, 14, 16]")
    assert "associate_keypoint_heads.1.* is missing" in _one_line_error(plain, two.state_dict())
    swapped = build_pose_model(ModelConfig(**TINY, head_keypoints=[17, 16, 14]), device="meta")
    assert _one_line_error(swapped, plain.state_dict(), keypoint_sets=["coco", "mpii", "aic"]).startswith(
        "ckpt.pth: associate_keypoint_heads.0.final_layer.weight: the checkpoint's head for dataset 1 has 14 joints, "
        "the model's has 16 (keypoint set 'mpii')")
    # anything else: the lists as before
    state = dict(moe.state_dict())
    state.pop("backbone.blocks.1.attn.qkv.weight")
    with pytest.raises(CheckpointError, match=r"ckpt.pth does not match the model:\n  missing keys \(1\): "
                                              r"backbone.blocks.1.attn.qkv.weight$"):
        load_state_dict_strict(moe, state, "ckpt.pth")


def test_a_file_of_the_official_split_script_is_named_as_such():
    """tools/model_split.py widens fc2 but keeps the experts: say so rather than ask for vit_moe."""
    moe = _tiny(seed=8, head_keypoints=HEADS, **MOE)
    state = split_state_dict(moe.state_dict(), 1)
    state |= {k: v for k, v in moe.state_dict().items() if ".mlp.experts." in k}
    plain = build_pose_model(ModelConfig(**TINY, num_keypoints=14), device="meta")
    assert "fc2 is already full width next to 3 experts per block (a file of the official tools/model_split.py" \
        in _one_line_error(plain, state)


# --------------------------------------------------------------------- split --
@pytest.mark.parametrize("moe", [True, False], ids=["ViTPose++", "ViTPose+"])
def test_split_gives_each_dataset_a_plain_model_with_the_same_output(moe):
    model = _tiny(seed=9, head_keypoints=HEADS, **(MOE if moe else {}))
    x = _images(2, seed=3)
    for k, joints in enumerate(HEADS):
        state = split_state_dict(model.state_dict(), k)
        assert not any(".mlp.experts." in key or key.startswith("associate_keypoint_heads.") for key in state)
        plain = build_pose_model(ModelConfig(**TINY, backbone="vit", num_keypoints=joints)).eval()
        load_state_dict_strict(plain, state, f"dataset {k}")
        with torch.no_grad():
            expected = model(x, torch.full((2,), k))
            _close(plain(x), expected[:, :joints])
            assert not expected[:, joints:].any()


@pytest.fixture(scope="module")
def moe_run(tmp_path_factory):
    """A ViTPose++ run directory as training leaves it: config.yaml (three data.tasks) and best.pth."""
    cfg = load_config(None, RUN_SETS)
    run = tmp_path_factory.mktemp("moe_run")
    cfg.save(run / "config.yaml")
    model = _randomize(build_pose_model(cfg.model), seed=11)
    export_official(model, run / "best.pth", meta={"step": 3})
    return run, cfg, model


def test_split_command_writes_a_strict_plain_checkpoint_and_refuses_unknown_datasets(moe_run, tmp_path, capsys):
    """In this process: `vitpose-scale split` and `python -m vitpose_scale.cli split` both end in
    cli.split_main (a fresh process per command: tests/test_cli_help.py; `python -m vitpose_scale.cli`:
    tests/test_coco_eval.py, tests/test_mpii.py)."""
    from vitpose_scale.cli import split_main

    run, cfg, model = moe_run
    out = tmp_path / "aic.pth"
    capsys.readouterr()
    assert split_main(["--checkpoint", str(run / "best.pth"), "--dataset", "aic", "--out", str(out)]) == 0
    assert "dataset aic (index 1), 14 joints" in capsys.readouterr().out
    raw = torch.load(out, weights_only=True)
    assert set(raw) == {"meta", "state_dict"}
    assert raw["meta"]["dataset"] == "aic" and raw["meta"]["dataset_index"] == 1 and raw["meta"]["step"] == 3
    plain = build_pose_model(ModelConfig(**TINY, num_keypoints=14)).eval()
    load_weights(plain, out)
    x = _images(2, seed=4)
    with torch.no_grad():
        _close(plain(x), model(x, torch.full((2,), 1))[:, :14])

    assert cli(["split", "--checkpoint", str(run / "best.pth"), "--dataset", "crowdpose",
                "--out", str(tmp_path / "x.pth")]) == 2
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()
    assert len(err) == 1, stderr
    assert err[0].startswith("error: --dataset crowdpose: not a dataset of this model (0=coco, 1=aic, 2=mpii)")
    assert not (tmp_path / "x.pth").exists()


def test_split_by_index_and_its_errors(moe_run, tmp_path, capsys):
    run, _, model = moe_run
    ckpt = str(run / "best.pth")
    assert cli(["split", "--checkpoint", ckpt, "--dataset", "2", "--out", str(tmp_path / "m.pth")]) == 0
    state = torch.load(tmp_path / "m.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(v, split_state_dict(model.state_dict(), 2)[k]) for k, v in state.items())
    capsys.readouterr()
    assert cli(["split", "--checkpoint", ckpt, "--dataset", "3", "--out", str(tmp_path / "n.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --dataset 3: outside the model's 3 datasets"), err
    export_official(build_pose_model(ModelConfig(**TINY)), tmp_path / "single.pth")
    assert cli(["split", "--checkpoint", str(tmp_path / "single.pth"), "--dataset", "0",
                "--out", str(tmp_path / "o.pth")]) == 4
    assert "serves one dataset" in capsys.readouterr().err


# -------------------------------------------------------------------- export --
def test_hf_export_holds_one_dataset_with_its_head_names_and_index(moe_run, tmp_path):
    pytest.importorskip("transformers")
    run, cfg, ours = moe_run
    assert cli(["export", "--checkpoint", str(run / "best.pth"), "--format", "hf", "--out", str(tmp_path / "d0")]) == 0
    config = json.loads((tmp_path / "d0" / "config.json").read_text())
    assert config["dataset_index"] == 0 and config["dataset_name"] == "coco" and len(config["id2label"]) == 17

    out = tmp_path / "mpii"
    assert cli(["export", "--checkpoint", str(run / "best.pth"), "--format", "hf", "--dataset", "mpii",
                "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["dataset_index"] == 2 and config["dataset_name"] == "mpii"
    assert [config["id2label"][str(i)] for i in range(16)] == list(get_spec("mpii").names)
    assert config["backbone_config"]["num_experts"] == 3 and config["backbone_config"]["part_features"] == 16
    assert "dataset_index=torch.full((batch,), 2)" in (out / "README.md").read_text()
    theirs, info, emitted = load_hf_quietly(out)
    assert emitted == []  # the extra config keys included
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    assert theirs.config.dataset_index == 2
    x = _images(3, seed=5)
    with torch.no_grad():
        _close(theirs.eval()(pixel_values=x, dataset_index=torch.full((3,), 2)).heatmaps,
               ours(x, torch.full((3,), 2))[:, :16])


def test_onnx_export_is_per_dataset_and_equals_the_moe_model(moe_run, tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    run, cfg, ours = moe_run
    path = tmp_path / "aic.onnx"
    assert cli(["export", "--checkpoint", str(run / "best.pth"), "--format", "onnx", "--out", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --dataset: required for ONNX of a model with 3 datasets "
                                               "(coco, aic, mpii)"), err
    assert not path.exists()
    assert cli(["export", "--checkpoint", str(run / "best.pth"), "--format", "onnx", "--dataset", "aic",
                "--out", str(path)]) == 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _images(3, seed=6)
    (got,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = ours(x, torch.full((3,), 1))[:, :14].numpy()
    assert got.shape == expected.shape == (3, 14, 16, 12)
    # onnxruntime sums in another order: heatmaps up to ~10 differ by ~1e-5 (test_export.py's bound)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_safetensors_export_keeps_every_dataset(moe_run, tmp_path, capsys):
    run, cfg, ours = moe_run
    path = tmp_path / "all.safetensors"
    assert cli(["export", "--checkpoint", str(run / "best.pth"), "--format", "safetensors", "--out", str(path)]) == 0
    loaded = build_pose_model(cfg.model)
    assert load_weights(loaded, path) == "safetensors"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ours.state_dict().items())
    capsys.readouterr()
    assert cli(["export", "--checkpoint", str(run / "best.pth"), "--format", "safetensors", "--dataset", "aic",
                "--out", str(tmp_path / "aic.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "safetensors keeps every dataset" in err[0] and "vitpose-scale split" in err[0], err
    assert not (tmp_path / "aic.safetensors").exists()


def test_export_of_a_moe_checkpoint_with_a_plain_config_exits_4_with_one_line(moe_run, tmp_path, capsys):
    run, _, _ = moe_run
    plain = load_config(None, [s for s in RUN_SETS if not s.startswith(("model.backbone", "model.num_experts",
                                                                        "model.part_features"))])
    plain.save(tmp_path / "plain.yaml")
    assert cli(["export", "--checkpoint", str(run / "best.pth"), "--config", str(tmp_path / "plain.yaml"),
                "--format", "safetensors", "--out", str(tmp_path / "x.safetensors")]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set model.backbone=vit_moe model.num_experts=3 model.part_features=16" in err[0], err
