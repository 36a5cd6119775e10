"""Engine behaviour in one process: layer-decay lrs, parameter groups and AdamW betas, schedules, engine config
errors, checkpoint discovery."""
import json
import math

import pytest
import torch

from vitpose_scale.config import ConfigError, load_config
from vitpose_scale.engine import checkpoint as ckpt
from vitpose_scale.engine.distributed import DistInfo
from vitpose_scale.engine.optim import build_optimizer, layer_id, lr_factor, param_groups, set_lr
from vitpose_scale.engine.parallel import check_engine_config
from vitpose_scale.engine.trainer import heatmap_loss
from vitpose_scale.models.pose import build_pose_model

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _cfg(*sets):
    return load_config(ROOT / "configs" / "demo.yaml", list(sets))


def test_every_group_lr_equals_the_layer_decay_formula():
    cfg = _cfg("optim.layer_decay=0.75", "optim.lr=5e-4", "model.depth=4")
    model = build_pose_model(cfg.model)
    opt = build_optimizer(model, cfg)
    factor = 0.37
    set_lr(opt, cfg.optim.lr, factor, [g["lr_scale"] for g in opt.param_groups])
    names = {id(p): n for n, p in model.named_parameters()}
    depth = 4
    seen = set()
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            seen.add(name)
            lid = 0 if name.startswith(("backbone.patch_embed", "backbone.pos_embed")) else (
                int(name.split(".")[2]) + 1 if name.startswith("backbone.blocks.") else depth + 1)
            assert group["lr"] == pytest.approx(5e-4 * factor * 0.75 ** (depth + 1 - lid), rel=1e-12), name
            decays = p.ndim > 1 and not name.endswith("bias") and "pos_embed" not in name
            assert group["weight_decay"] == (cfg.optim.weight_decay if decays else 0.0), name
    assert seen == set(names.values())


def test_layer_ids():
    from vitpose_scale.config import ModelConfig
    from vitpose_scale.models.pose import build_pose_model

    model = build_pose_model(ModelConfig(preset="B", backbone="vit_moe", num_experts=3, part_features=192,
                                         head_keypoints=[17, 14, 16]), device="meta")
    assert layer_id(model, "backbone.pos_embed", 12) == 0
    assert layer_id(model, "backbone.patch_embed.proj.weight", 12) == 0
    assert layer_id(model, "backbone.blocks.0.attn.qkv.weight", 12) == 1
    assert layer_id(model, "backbone.blocks.11.mlp.fc2.bias", 12) == 12
    assert layer_id(model, "backbone.blocks.11.mlp.experts.2.weight", 12) == 12  # an expert decays with its block
    assert layer_id(model, "backbone.last_norm.weight", 12) == 13
    assert layer_id(model, "keypoint_head.final_layer.weight", 12) == 13
    assert layer_id(model, "associate_keypoint_heads.1.final_layer.weight", 12) == 13


def test_head_and_last_norm_get_full_lr_and_pos_embed_no_decay():
    cfg = _cfg()
    groups = param_groups(build_pose_model(cfg.model), cfg)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["keypoint_head.final_layer.weight"]["lr_scale"] == 1.0
    assert by_name["backbone.pos_embed"]["weight_decay"] == 0.0


def test_warmup_then_step_schedule():
    cfg = _cfg("optim.schedule=step", "optim.warmup_iters=10", "optim.warmup_ratio=0.001",
               "optim.step_epochs=[2,3]")
    assert lr_factor(0, cfg, 100, 1000) == pytest.approx(0.001)
    assert lr_factor(5, cfg, 100, 1000) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(150, cfg, 100, 1000) == 1.0
    assert lr_factor(250, cfg, 100, 1000) == pytest.approx(0.1)
    assert lr_factor(350, cfg, 100, 1000) == pytest.approx(0.01)


def test_cosine_schedule_ends_at_zero():
    cfg = _cfg("optim.schedule=cosine", "optim.warmup_iters=10")
    assert lr_factor(10, cfg, 100, 110) == pytest.approx(1.0)
    assert lr_factor(60, cfg, 100, 110) == pytest.approx(0.5)
    assert lr_factor(110, cfg, 100, 110) == pytest.approx(0.0, abs=1e-12)


CPU2 = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))


def test_zero_stage_5_is_refused():
    with pytest.raises(ConfigError, match=r"parallel.zero_stage: got 5, expected one of \[0, 1, 2, 3\]"):
        _cfg("parallel.zero_stage=5")


def test_bf16_without_support_is_refused():
    cfg = _cfg("parallel.precision=bf16")
    with pytest.raises(ConfigError, match="parallel.precision: bf16 is not supported on this device"):
        check_engine_config(cfg, CPU2, bf16_supported=False)
    check_engine_config(cfg, CPU2, bf16_supported=True)


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        check_engine_config(_cfg("parallel.precision=fp16"), CPU2)


def test_batch_not_divisible_by_accumulation_or_world():
    with pytest.raises(ConfigError, match="train.batch_size: 32 is not divisible by parallel.grad_accum 3"):
        _cfg("train.batch_size=32", "parallel.grad_accum=3")
    with pytest.raises(ConfigError, match=r"world_size x parallel.grad_accum = 2 x 4: expected a multiple of 8"):
        check_engine_config(_cfg("parallel.grad_accum=4", "train.batch_size=12"), CPU2)


def test_heatmap_loss_ignores_zero_weight_joints():
    pred, target = torch.zeros(1, 2, 4, 4), torch.ones(1, 2, 4, 4)
    weight = torch.tensor([[[1.0], [0.0]]])
    assert heatmap_loss(pred, target, weight).item() == pytest.approx(0.5)


def test_incomplete_checkpoints_are_never_latest(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        d = ckpt.step_dir(tmp_path, step)
        d.mkdir()
        if complete:
            (d / "meta.json").write_text(json.dumps({"step": step}))
    (tmp_path / ".tmp-step_00000008").mkdir()  # interrupted while writing
    (tmp_path / ".tmp-step_00000008" / "meta.json").write_text("{}")
    assert ckpt.latest_checkpoint(tmp_path).name == "step_00000004"


def test_training_can_start_from_official_and_mae_checkpoints(tmp_path):
    from vitpose_scale.engine.trainer import _init_weights_from
    from vitpose_scale.models.interop import export_official

    cfg = _cfg(f"train.init_from={tmp_path / 'official.pth'}")
    torch.manual_seed(1)
    source = build_pose_model(cfg.model)
    export_official(source, tmp_path / "official.pth")
    target = build_pose_model(cfg.model)
    _init_weights_from(target, cfg, CPU2)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key

    # An MAE encoder at 14x14 patches of 16 px (224x224), with its cls token, decoder and final norm.
    torch.manual_seed(2)
    mae = build_pose_model(load_config(ROOT / "configs" / "demo.yaml", ["model.image_size=[224,224]"]).model).backbone
    state = {k: v for k, v in mae.state_dict().items() if not k.startswith("last_norm")}
    state.update({"cls_token": torch.zeros(1, 1, 96), "mask_token": torch.zeros(1, 1, 96),
                  "norm.weight": torch.ones(96), "norm.bias": torch.zeros(96),
                  "decoder_embed.weight": torch.zeros(64, 96), "decoder_pos_embed": torch.zeros(1, 197, 64)})
    torch.save({"model": state}, tmp_path / "mae.pth")
    cfg = _cfg(f"train.init_from={tmp_path / 'mae.pth'}", "model.image_size=[128,96]")
    target = build_pose_model(cfg.model)
    before_norm = target.backbone.last_norm.weight.clone()
    _init_weights_from(target, cfg, CPU2)
    assert torch.equal(target.backbone.blocks[0].attn.qkv.weight, mae.blocks[0].attn.qkv.weight)
    assert target.backbone.pos_embed.shape == (1, 1 + 8 * 6, 96)  # 14x14 resized to the 8x6 grid of 128x96
    assert torch.equal(target.backbone.pos_embed[:, :1], mae.pos_embed[:, :1])
    assert torch.equal(target.backbone.last_norm.weight, before_norm)  # MAE's norm is not last_norm


def test_init_from_a_file_that_fits_nothing_names_the_file_and_the_layouts(tmp_path):
    from vitpose_scale.engine.trainer import _init_weights_from
    from vitpose_scale.models.interop import CheckpointError

    torch.save({"state_dict": {"foo": torch.zeros(1)}}, tmp_path / "junk.pth")
    cfg = _cfg(f"train.init_from={tmp_path / 'junk.pth'}")
    with pytest.raises(CheckpointError, match=r"train.init_from=.*junk.pth: .*unknown checkpoint layout \(keys: foo\)"):
        _init_weights_from(build_pose_model(cfg.model), cfg, CPU2)


def test_init_from_does_not_disguise_a_bug_as_a_checkpoint_error(tmp_path, monkeypatch):
    """Only checkpoint problems are reported as such: a failure inside loading propagates unchanged."""
    from vitpose_scale.engine.trainer import _init_weights_from
    from vitpose_scale.models import mae_transfer, interop

    cfg = _cfg(f"train.init_from={tmp_path / 'official.pth'}")
    interop.export_official(build_pose_model(cfg.model), tmp_path / "official.pth")

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(mae_transfer, "init_weights_from_state", broken)
    with pytest.raises(ZeroDivisionError, match="a bug"):
        _init_weights_from(build_pose_model(cfg.model), cfg, CPU2)


def test_no_weight_decay_reads_the_real_shape_of_partitioned_parameters():
    from vitpose_scale.engine.optim import no_weight_decay

    placeholder = torch.nn.Parameter(torch.empty(0))  # what zero.Init leaves in a module
    placeholder.ds_shape = torch.Size([96, 96])
    assert not no_weight_decay("backbone.blocks.0.attn.qkv.weight", placeholder)
    assert no_weight_decay("mask_token", torch.nn.Parameter(torch.zeros(1, 1, 96)))


def test_saved_activation_meter_counts_activations_not_parameters():
    from vitpose_scale.engine.metrics import SavedActivationMeter

    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    with SavedActivationMeter(layer) as meter:
        layer(x)
    assert meter.bytes == x.numel() * 4  # the input; the weight is a model state
    with SavedActivationMeter() as all_saved:
        layer(x)
    assert all_saved.bytes == (x.numel() + layer.weight.numel()) * 4

    model = build_pose_model(_cfg("model.activation_checkpointing=false", "model.image_size=[128,96]").model).train()
    images = torch.randn(2, 3, 128, 96)
    with SavedActivationMeter(model) as plain:
        model(images)
    model.backbone.activation_checkpointing = True
    with SavedActivationMeter(model) as checkpointed:
        model(images)
    assert 0 < checkpointed.bytes < plain.bytes


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
