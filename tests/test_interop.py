import pickle

import pytest
import torch

from vitpose_scale.config import ModelConfig
from vitpose_scale.models.interop import (CheckpointError, export_official, from_hf_state_dict, hf_config,
                                          load_official, load_state_dict_strict, safe_load, to_hf_state_dict)
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
