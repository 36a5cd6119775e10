"""The backbone extension point: a backbone that shares nothing with ViT but the interface of
models/backbone.py, registered under a new model.backbone name, is validated by the config, gets
its own lr-decay layer ids, is sharded unit by unit by FSDP2, counted by the planner and the MFU
formula -- without another module naming its parts."""
import pytest
import torch
import torch.distributed as dist
from torch import nn

from vitpose_scale.config import from_dict
from vitpose_scale.engine.distributed import DistInfo
from vitpose_scale.engine.optim import param_groups
from vitpose_scale.models import pose
from vitpose_scale.models.backbone import Backbone


class ConvBackbone(nn.Module):
    """A 16x16 patch conv and `depth` residual 3x3 conv layers."""

    def __init__(self, dim: int, depth: int, grid):
        super().__init__()
        self.embed_dim, self.depth, self.grid, self.num_experts = dim, depth, tuple(grid), 1
        self.stem = nn.Conv2d(3, dim, 16, 16)
        self.layers = nn.ModuleList(nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.GELU()) for _ in range(depth))

    def layer_id(self, name: str) -> int:
        if name.startswith("stem."):
            return 0
        return int(name.split(".")[1]) + 1

    def shard_units(self):
        return list(self.layers)

    def attention_modules(self):
        return []

    def forward_flops(self, grid) -> float:
        tokens = grid[0] * grid[1]
        return 2.0 * tokens * (self.stem.weight.numel() + sum(layer[0].weight.numel() for layer in self.layers))

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()

    def forward(self, x, rows=None):
        x = self.stem(x)
        for layer in self.layers:
            x = x + layer(x)
        return x


@pytest.fixture
def conv_config(monkeypatch):
    monkeypatch.setitem(pose.BACKBONES, "conv", lambda m, grid: ConvBackbone(m.embed_dim, m.depth, grid))
    return from_dict({"model": {"preset": "tiny", "backbone": "conv", "image_size": [64, 48], "embed_dim": 32,
                                "depth": 3, "head_channels": 16}, "optim": {"layer_decay": 0.5}})


def test_an_unregistered_backbone_is_a_config_error():
    from vitpose_scale.config import ConfigError

    with pytest.raises(ConfigError, match="model.backbone: got 'conv'"):
        from_dict({"model": {"backbone": "conv"}})


def test_a_registered_backbone_is_trained_planned_and_counted_through_the_interface(conv_config):
    model = pose.build_pose_model(conv_config.model)
    assert isinstance(model.backbone, Backbone)
    scales = {name: g["lr_scale"] for g in param_groups(model, conv_config) for name in g["names"]}
    assert scales["backbone.stem.weight"] == 0.5 ** 4  # layer 0 of depth 3
    assert scales["backbone.layers.2.0.weight"] == 0.5 ** 1
    assert scales["keypoint_head.final_layer.weight"] == 1.0
    tokens = 4 * 3
    want = 2.0 * tokens * (3 * 16 * 16 * 32 + 3 * 32 * 32 * 9)
    assert pose.forward_flops_per_image(conv_config.model) == want

    from vitpose_scale.plan import model_shape

    shape = model_shape(conv_config)
    assert shape.params == sum(p.numel() for p in model.parameters()) and shape.forward_flops == want


def test_fsdp2_shards_the_backbones_own_units(conv_config, tmp_path):
    from torch.distributed.fsdp import FSDPModule

    from vitpose_scale.engine.parallel import FSDPWrapper

    conv_config.parallel.backend = "fsdp"
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = pose.build_pose_model(conv_config.model)
        wrapper = FSDPWrapper(model, conv_config, DistInfo(0, 1, 0, torch.device("cpu")))
        assert all(isinstance(unit, FSDPModule) for unit in wrapper.module.backbone.layers)
        before = wrapper.full_state_dict()["backbone.layers.0.0.weight"].clone()  # one rank: may alias the shard
        loss = wrapper.forward(torch.randn(2, 3, 64, 48)).pow(2).mean()
        wrapper.backward(loss)
        wrapper.step()
        assert not torch.equal(wrapper.full_state_dict()["backbone.layers.0.0.weight"], before)
    finally:
        dist.destroy_process_group()
