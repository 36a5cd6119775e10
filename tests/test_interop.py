import pickle

import pytest
import torch

from vitpose_scale.config import ModelConfig
from vitpose_scale.models.interop import (CheckpointError, detect_checkpoint_format, export_official,
                                          from_hf_state_dict, hf_config, load_official, load_state_dict_strict,
                                          safe_load, to_hf_state_dict)
from vitpose_scale.models.mae_transfer import load_init_weights
from vitpose_scale.models.pose import build_pose_model


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
    load_official(dst, path)
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


def test_strict_load_lists_missing_and_unexpected_keys(tmp_path):
    model = build_pose_model(ModelConfig(preset="tiny"))
    state = model.state_dict()
    state.pop("backbone.blocks.0.attn.qkv.weight")
    state["backbone.blocks.0.attn.extra.weight"] = torch.zeros(1)
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_official(model, tmp_path / "bad.pth")
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
    load_official(dst, tmp_path / "a.pth")
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
    load_official(dst, tmp_path / "ddp.pth")
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
    with pytest.raises(CheckpointError, match=r"k14.pth does not match the model:\n  shape mismatches \(2\): "
                                              r"keypoint_head.final_layer.bias: checkpoint \(14,\)"):
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
    load_official(dst, tmp_path / "landscape.pth")
    torch.testing.assert_close(dst.backbone.pos_embed, _bicubic(src.backbone.pos_embed.detach(), (12, 16), (16, 12)),
                               rtol=0, atol=1e-6)
    raw = torch.load(tmp_path / "landscape.pth", weights_only=True)
    raw["meta"]["pos_embed_grid"] = [16, 16]
    torch.save(raw, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"pos_embed grid \[16, 16\] does not match its 192 pos_embed tokens"):
        load_official(dst, tmp_path / "wrong.pth")
