import pickle

import pytest
import torch
import torch.nn.functional as F

from vitpose_scale.config import ModelConfig
from vitpose_scale.models.interop import (
    CheckpointError,
    _grid_of,
    adapt_state_dict,
    detect_checkpoint_format,
    export_official,
    extract_state_dict,
    from_hf_state_dict,
    hf_config,
    load_state_dict_strict,
    pos_embed_grid_from_meta,
    safe_load,
    save_official,
    to_hf_state_dict,
)
from vitpose_scale.models.mae_transfer import load_init_weights
from vitpose_scale.models.pose import build_pose_model
from vitpose_scale.models.weights import load_weights


def _official_keys(depth: int) -> set[str]:
    keys = {"backbone.pos_embed", "backbone.patch_embed.proj.weight", "backbone.patch_embed.proj.bias",
            "backbone.last_norm.weight", "backbone.last_norm.bias",
            "keypoint_head.final_layer.weight", "keypoint_head.final_layer.bias"}
    for i in range(depth):
        for layer in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"backbone.blocks.{i}.{layer}.weight", f"backbone.blocks.{i}.{layer}.bias"}
    keys |= {"keypoint_head.deconv_layers.0.weight", "keypoint_head.deconv_layers.3.weight"}
    for bn in (1, 4):
        keys |= {f"keypoint_head.deconv_layers.{bn}.{n}"
                 for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    return keys


def test_state_dict_uses_official_key_names():
    model = build_pose_model(ModelConfig(preset="B"), device="meta")
    assert set(model.state_dict()) == _official_keys(12)


def test_official_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    src = build_pose_model(ModelConfig(preset="tiny"))
    src.keypoint_head.deconv_layers[1].running_mean.normal_()  # buffers travel too
    path = tmp_path / "vitpose_tiny.pth"
    export_official(src, path, meta={"epoch": 3})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"meta", "state_dict"} and raw["meta"]["epoch"] == 3
    dst = build_pose_model(ModelConfig(preset="tiny"))
    load_weights(dst, path)
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


def test_strict_load_lists_missing_and_unexpected_keys(tmp_path):
    model = build_pose_model(ModelConfig(preset="tiny"))
    state = model.state_dict()
    state.pop("backbone.blocks.0.attn.qkv.weight")
    state["backbone.blocks.0.attn.extra.weight"] = torch.zeros(1)
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_weights(model, tmp_path / "bad.pth")
    text = str(err.value)
    assert "missing keys (1): backbone.blocks.0.attn.qkv.weight" in text
    assert "unexpected keys (1): backbone.blocks.0.attn.extra.weight" in text


def test_shape_mismatch_is_reported():
    model = build_pose_model(ModelConfig(preset="tiny"))
    state = build_pose_model(ModelConfig(preset="tiny", num_keypoints=14)).state_dict()
    with pytest.raises(CheckpointError, match=r"keypoint_head.final_layer.weight: checkpoint \(14,"):
        load_state_dict_strict(model, state)


def test_pos_embed_is_resized_when_loading_another_input_size(tmp_path):
    src = build_pose_model(ModelConfig(preset="tiny", image_size=[256, 192]))
    export_official(src, tmp_path / "a.pth")
    dst = build_pose_model(ModelConfig(preset="tiny", image_size=[384, 288]))
    load_weights(dst, tmp_path / "a.pth")
    assert dst.backbone.pos_embed.shape == (1, 1 + 24 * 18, 64)
    assert torch.equal(dst.backbone.pos_embed[:, :1], src.backbone.pos_embed[:, :1])


class _Exploit:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_untrusted_pickles_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        safe_load(path)
    assert "pickled code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("head", ["classic", "simple"])
def test_matches_hugging_face_vitpose(head):
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig(preset="tiny", head=head)
    torch.manual_seed(0)
    theirs = transformers.VitPoseForPoseEstimation(hf_config(cfg)).eval()  # random weights, no hub
    ours = build_pose_model(cfg).eval()
    load_state_dict_strict(ours, from_hf_state_dict(theirs.state_dict()), "hf")
    x = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        diff = (ours(x) - theirs(pixel_values=x).heatmaps).abs().max().item()
    assert diff <= 1e-4
    back = to_hf_state_dict(ours.state_dict())
    assert set(back) == set(theirs.state_dict())
    assert all(torch.equal(back[k], v) for k, v in theirs.state_dict().items())


def _bicubic(pos_embed: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """The official ViTPose resize written out: extra token kept, grid bicubic, align_corners=False."""
    c = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, *old, c).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    return torch.cat([pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], c)], dim=1)


@pytest.mark.parametrize("layout", ["mmcv", "bare"])
def test_checkpoints_saved_from_a_ddp_wrapped_model_load(tmp_path, layout):
    """DataParallel/DDP saves carry `module.` on every key; the official loader strips it, so do we."""
    torch.manual_seed(0)
    src = build_pose_model(ModelConfig(preset="tiny"))
    state = torch.nn.DataParallel(src).state_dict()
    assert all(k.startswith("module.") for k in state)
    torch.save({"meta": {}, "state_dict": state} if layout == "mmcv" else state, tmp_path / "ddp.pth")
    dst = build_pose_model(ModelConfig(preset="tiny"))
    load_weights(dst, tmp_path / "ddp.pth")
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    fresh = build_pose_model(ModelConfig(preset="tiny"))
    assert load_init_weights(fresh, tmp_path / "ddp.pth") == "ViTPose checkpoint, every key"
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in src.state_dict().items())


def _timm_vit_state(depth: int = 4) -> dict:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(3)
    return VisionTransformer(img_size=224, patch_size=16, embed_dim=64, depth=depth, num_heads=4,
                             num_classes=0).state_dict()


def test_checkpoint_format_is_detected_from_the_keys():
    from vitpose_scale.config import load_config
    from vitpose_scale.models.mae import build_mae

    pose = build_pose_model(ModelConfig(preset="tiny"), device="meta").state_dict()
    mae = build_mae(load_config(None, ["model.preset=tiny", "model.image_size=[64,48]", "mae.decoder_depth=1",
                                       "mae.decoder_dim=32", "mae.decoder_heads=4"])).state_dict()
    timm_vit = _timm_vit_state()
    encoder_only = {k: v for k, v in mae.items() if k.startswith("backbone.")}
    cases = {
        "official": pose,
        "hf": to_hf_state_dict(pose),
        "mae": mae,
        "backbone": timm_vit,
    }
    for expected, state in cases.items():
        assert detect_checkpoint_format(state) == expected, expected
    assert detect_checkpoint_format(encoder_only) == "backbone"
    assert detect_checkpoint_format({"encoder." + k: v for k, v in timm_vit.items()}) == "backbone"
    with pytest.raises(CheckpointError, match=r"x.pth: unknown checkpoint layout \(keys: conv1.weight, fc.bias"):
        detect_checkpoint_format({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}, "x.pth")


def test_init_weights_from_a_timm_vit_takes_its_blocks_and_resizes_its_square_table(tmp_path):
    state = _timm_vit_state()
    torch.save({"model": state}, tmp_path / "vit.pth")
    torch.manual_seed(0)
    pose = build_pose_model(ModelConfig(preset="tiny"))
    head, last_norm = pose.keypoint_head.state_dict(), pose.backbone.last_norm.weight.clone()
    described = load_init_weights(pose, tmp_path / "vit.pth")
    assert described.startswith("ViT backbone checkpoint: backbone only")
    own = pose.state_dict()
    for key, value in state.items():
        if key.startswith(("blocks.", "patch_embed.")):
            assert torch.equal(own["backbone." + key], value), key
    torch.testing.assert_close(own["backbone.pos_embed"], _bicubic(state["pos_embed"], (14, 14), (16, 12)),
                               rtol=0, atol=1e-6)
    assert torch.equal(pose.backbone.last_norm.weight, last_norm)
    assert all(torch.equal(pose.keypoint_head.state_dict()[k], v) for k, v in head.items())


def test_init_weights_from_a_hugging_face_file_and_errors_name_the_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = build_pose_model(ModelConfig(preset="tiny"))
    save_file({k: v.contiguous() for k, v in to_hf_state_dict(src.state_dict()).items()},
              str(tmp_path / "hf.safetensors"))
    dst = build_pose_model(ModelConfig(preset="tiny"))
    assert load_init_weights(dst, tmp_path / "hf.safetensors") == "Hugging Face VitPose checkpoint, every key"
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    # A ViTPose file that does not fit (14 keypoints) says so, not "neither ... nor ...".
    export_official(build_pose_model(ModelConfig(preset="tiny", num_keypoints=14)), tmp_path / "k14.pth")
    with pytest.raises(CheckpointError, match=r"k14.pth: keypoint_head.final_layer.weight: checkpoint \(14, 256, 1, "
                                              r"1\) vs model \(17, 256, 1, 1\) \(2 tensors differ in shape\): the "
                                              r"model section of the config does not match the weights: use the run's "
                                              r"config \(config.yaml next to the checkpoint\) or pass --config"):
        load_init_weights(dst, tmp_path / "k14.pth")
    with pytest.raises(CheckpointError, match="nope.pth does not exist"):
        load_init_weights(dst, tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a directory: expected a file"):
        load_init_weights(dst, tmp_path)


def test_pos_embed_grid_in_meta_decides_the_resize_also_at_equal_token_counts(tmp_path):
    """A 12x16 table (192 tokens, landscape) into a 16x12 model is resized, not copied."""
    torch.manual_seed(0)
    src = build_pose_model(ModelConfig(preset="tiny", image_size=[192, 256]))
    assert src.backbone.grid == (12, 16)
    export_official(src, tmp_path / "landscape.pth")
    assert torch.load(tmp_path / "landscape.pth", weights_only=True)["meta"]["pos_embed_grid"] == [12, 16]
    dst = build_pose_model(ModelConfig(preset="tiny"))
    load_weights(dst, tmp_path / "landscape.pth")
    torch.testing.assert_close(dst.backbone.pos_embed, _bicubic(src.backbone.pos_embed.detach(), (12, 16), (16, 12)),
                               rtol=0, atol=1e-6)
    raw = torch.load(tmp_path / "landscape.pth", weights_only=True)
    raw["meta"]["pos_embed_grid"] = [16, 16]
    torch.save(raw, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"pos_embed grid \[16, 16\] does not match its 192 pos_embed tokens"):
        load_weights(dst, tmp_path / "wrong.pth")


def _tiny(**kw):
    torch.manual_seed(0)
    return build_pose_model(ModelConfig(preset="tiny", **kw))


@pytest.mark.parametrize("tokens, hint, grid", [(196, None, (14, 14)), (192, None, (16, 12)), (972, None, (36, 27)),
                                                (48, None, (8, 6)), (192, (12, 16), (12, 16)), (60, (10, 6), (10, 6)),
                                                (192, (10, 6), (16, 12))])
def test_interop_pos_embed_grid_from_the_token_count(tokens, hint, grid):
    """Square (MAE/ImageNet) or 4:3 (ViTPose crops: 16x12 at 256x192, 36x27 at 576x432), unless the
    model's own grid has that many tokens."""
    assert _grid_of(tokens, hint) == grid


def test_interop_a_token_count_of_no_known_shape_names_the_setting():
    with pytest.raises(CheckpointError, match=r"pos_embed has 60 grid tokens, neither square nor 4:3; set "
                                              r"model.pretrain_grid"):
        _grid_of(60, (12, 6))


def test_interop_a_model_of_an_unusual_grid_loads_its_own_file_without_meta(tmp_path):
    """160x96 input = a 10x6 grid (60 tokens, neither square nor 4:3): the model's own grid is used."""
    src = _tiny(image_size=[160, 96])
    torch.save({"state_dict": src.state_dict()}, tmp_path / "no_meta.pth")  # no pos_embed_grid in meta
    dst = _tiny(image_size=[160, 96])
    load_weights(dst, tmp_path / "no_meta.pth")
    assert torch.equal(dst.backbone.pos_embed, src.backbone.pos_embed)


def test_interop_patch_kernel_of_another_size_is_resampled_bicubic_keeping_the_response():
    """A 14x14 patch kernel (MAE with patch 14) into a 16x16 model: bicubic (align_corners=False) resize,
    scaled by 14^2 / 16^2 so a constant image gives the same response; the dtype is kept. Equal sizes:
    untouched."""
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
    t = {"w": torch.ones(1)}
    for key in ("state_dict", "model", "module"):
        assert extract_state_dict({key: t, "meta": {}}) == t
    assert extract_state_dict(t) == t
    for bad in ({"meta": {"epoch": 1}, "step": 3}, {}, [torch.ones(1)]):
        with pytest.raises(CheckpointError, match=r"^<checkpoint>: no state_dict found \(expected an mmcv file "
                                                  r"\{'meta', 'state_dict'\} or a mapping"):
            extract_state_dict(bad)


def test_interop_safetensors_files_load_without_pickle(tmp_path):
    from safetensors.torch import save_file

    state = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2])}
    save_file(state, str(tmp_path / "w.safetensors"))
    got = safe_load(tmp_path / "w.safetensors")
    assert got["meta"] == {} and all(torch.equal(got["state_dict"][k], v) for k, v in state.items())
    # the header's metadata is the meta (our exports store the pos_embed grid there, as JSON)
    save_file(state, str(tmp_path / "m.safetensors"), metadata={"format": "pt", "pos_embed_grid": "[16, 12]"})
    assert safe_load(tmp_path / "m.safetensors")["meta"] == {"format": "pt", "pos_embed_grid": [16, 12]}


def test_interop_layout_detection_needs_pos_embed_and_blocks_and_shows_six_keys():
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
    # Tensors of other shapes: one line naming the first in the model's order (not sorted) and both shapes.
    weights = [k for k, v in own.items() if v.ndim == 2][-11:]
    wrong = {**own, **{k: torch.zeros(1, 1) for k in weights}}
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(model, {k: v for k, v in wrong.items() if k != names[0]}, "f.pth")
    assert str(err.value) == (f"f.pth: {weights[0]}: checkpoint (1, 1) vs model {tuple(own[weights[0]].shape)} "
                              f"(11 tensors differ in shape, 1 missing): the model section of the config does not "
                              f"match the weights: use the run's config (config.yaml next to the checkpoint) or pass "
                              f"--config with the model the weights were trained with")


def test_interop_load_errors_name_the_file(tmp_path):
    model = _tiny()
    cases = {"empty.pth": {"meta": {}}, "grid.pth": {"meta": {"pos_embed_grid": [0, 1]}, "state_dict": model.state_dict()},
             "keys.pth": {"state_dict": {"backbone.pos_embed": model.state_dict()["backbone.pos_embed"]}}}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"^{tmp_path / name}"):
            load_weights(model, tmp_path / name)


def test_interop_official_files_hold_fp32_cpu_floats_and_keep_integer_buffers(tmp_path):
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
    transformers = pytest.importorskip("transformers")

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
    with pytest.raises(CheckpointError, match=r"^no Hugging Face name for key backbone.cls_token$"):
        to_hf_state_dict({"backbone.cls_token": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"^unknown Hugging Face VitPose key head.extra.weight$"):
        from_hf_state_dict({"head.extra.weight": torch.zeros(1)})
    part = "backbone.encoder.layer.3.attention.attention.{}.bias"
    with pytest.raises(CheckpointError, match=r"^layer 3 bias: query/key/value incomplete \(\['key', 'query'\]\)$"):
        from_hf_state_dict({part.format("query"): torch.zeros(2), part.format("key"): torch.zeros(2)})
