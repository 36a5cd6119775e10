"""train.freeze (partial finetuning, docs/full_scale.md): which parameters each name freezes (hand
counts), the modes of frozen modules, training that leaves frozen tensors bitwise as initialised
(one process and 2-rank DeepSpeed ZeRO-3), the optimizer state they no longer take against the
planner's figure, bitwise resume, and one-line config errors (exit 2)."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch_env import free_port, launcher_env
from vitpose_scale import plan
from vitpose_scale.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The tiny preset at 64x48 (grid 4 x 3), width 64, 4 blocks, MLP 256, classic head of 64 channels.
TINY = ["model.preset=tiny", "model.embed_dim=64", "model.num_heads=4", "model.head_channels=64",
        "model.image_size=[64,48]", "model.drop_path=0.1"]
RUN = TINY + ["data.synthetic_train=16", "data.synthetic_val=4", "data.extra_train=[]", "data.num_workers=0",
              "train.batch_size=4", "train.log_every=1", "train.eval_every=-1", "train.save_every=2",
              "optim.warmup_iters=1", "parallel.zero3_persistence_threshold=0"]
C, HIDDEN, DEPTH, TOKENS = 64, 256, 4, 4 * 3
ATTENTION = (3 * C * C + 3 * C) + (C * C + C) + 2 * C  # qkv, proj, norm1
FFN = (C * HIDDEN + HIDDEN) + (HIDDEN * C + C) + 2 * C  # fc1, fc2, norm2
EMBED = (3 * 16 * 16 * C + C) + (TOKENS + 1) * C  # patch conv, pos_embed (with its extra token)
HEAD = C * 64 * 16 + 2 * 64 + 64 * 64 * 16 + 2 * 64 + 64 * 17 + 17  # two deconvs + BN, the 1x1 conv
# name -> (frozen elements, pattern every frozen parameter name matches)
CASES = {
    "attention": (DEPTH * ATTENTION, r"backbone\.blocks\.\d+\.(attn|norm1)\."),
    "ffn": (DEPTH * FFN + EMBED, r"backbone\.(blocks\.\d+\.(mlp|norm2)\.|patch_embed\.|pos_embed$)"),
    "patch_embed": (EMBED, r"backbone\.(patch_embed\.|pos_embed$)"),
    "blocks:2": (EMBED + 2 * (ATTENTION + FFN), r"backbone\.(blocks\.[01]\.|patch_embed\.|pos_embed$)"),
    "backbone": (EMBED + DEPTH * (ATTENTION + FFN) + 2 * C, r"backbone\."),
    "head": (HEAD, r"keypoint_head\."),
}


def _model(names: list[str]):
    from vitpose_scale.models.freeze import apply_freeze
    from vitpose_scale.models.pose import build_pose_model

    cfg = load_config(None, TINY + [f"train.freeze={names}"])
    model = build_pose_model(cfg.model)
    return model, apply_freeze(model, names)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_name_freezes_its_parts_and_nothing_else(name):
    count, pattern = CASES[name]
    model, summary = _model([name])
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(re.match(pattern, n) for n in frozen), frozen
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not any(re.match(pattern, n) for n in trainable), trainable
    assert summary["frozen"] == sum(p.numel() for p in model.parameters() if not p.requires_grad) == count


def test_whole_frozen_modules_stay_in_eval_mode_through_train():
    """blocks:N: the frozen blocks' drop path is off (official frozen_stages); attention: the block
    still trains, so its drop path stays on (official freeze_attn reaches attn and norm1 only)."""
    model, _ = _model(["blocks:2"])
    model.train(True)
    for i, block in enumerate(model.backbone.blocks):
        assert block.training == (i >= 2) and block.drop_path.training == (i >= 2), i
    assert not model.backbone.patch_embed.training and model.backbone.training and model.keypoint_head.training
    model, _ = _model(["attention"])
    model.train(True)
    for block in model.backbone.blocks:
        assert block.training and block.drop_path.training and block.mlp.training
        assert not block.attn.training and not block.norm1.training
    model.train(False)
    assert not any(m.training for m in model.modules())


def test_a_frozen_head_keeps_its_batchnorm_statistics_and_gets_no_gradient():
    model, summary = _model(["head"])
    assert summary["eval_modules"] == ["keypoint_head"]
    model.train(True)
    stats = {k: v.clone() for k, v in model.keypoint_head.state_dict().items()}
    out = model(torch.randn(2, 3, 64, 48))
    out.pow(2).mean().backward()
    assert all(torch.equal(v, model.keypoint_head.state_dict()[k]) for k, v in stats.items())
    assert all(p.grad is None for p in model.keypoint_head.parameters())
    assert all(p.grad is not None for p in model.backbone.parameters())


# ------------------------------------------------------------------- training --
def _init_file(path: Path) -> dict:
    """Weights unlike the trainer's own seeded draw, so frozen tensors must come from this file."""
    from vitpose_scale.models.interop import export_official
    from vitpose_scale.models.pose import build_pose_model

    model = build_pose_model(load_config(ROOT / "configs" / "demo.yaml", RUN).model)
    torch.manual_seed(123)
    model.init_weights()
    export_official(model, path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _final(run: Path) -> dict:
    return torch.load(run / "final.pth", weights_only=True)["state_dict"]


def _check_frozen_bitwise_and_the_rest_changed(init: dict, final: dict) -> list[str]:
    model, _ = _model(["ffn"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert frozen and trainable
    assert [n for n in frozen if not torch.equal(final[n], init[n])] == []
    assert [n for n in trainable if torch.equal(final[n], init[n])] == []
    return sorted(frozen)


def _plan_saving(world: int, stage: int) -> float:
    """The planner's model-state bytes per rank without and with train.freeze=[ffn] (fp32)."""
    setting = plan.Setting(stage, "none", "none", True, 2, 1)
    states = []
    for freeze in ([], ["ffn"]):
        cfg = load_config(ROOT / "configs" / "demo.yaml", RUN + [f"train.freeze={freeze}"])
        shape = plan.model_shape(cfg)
        states.append(plan.model_state_bytes(shape, setting, world, "fp32", plan.bucket_elements(cfg, shape.params,
                                                                                                 world), 0)["total"])
    return states[0] - states[1]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, synthetic_coco):
    """full / frozen / resumed (tests/freeze_runner.py) in this process: parallel.backend=none, AdamW."""
    from freeze_runner import run_all

    from vitpose_scale.engine.distributed import DistInfo

    out = tmp_path_factory.mktemp("freeze_one")
    init = _init_file(out / "init.pth")
    report = run_all(out, synthetic_coco(16, 4), out / "init.pth", RUN + ["parallel.backend=none"],
                     DistInfo(0, 1, 0, torch.device("cpu")))
    return out, init, report


def test_one_process_frozen_tensors_stay_bitwise_the_rest_train(one_process):
    out, init, _ = one_process
    _check_frozen_bitwise_and_the_rest_changed(init, _final(out / "frozen"))


def test_one_process_frozen_parameters_have_no_adam_state(one_process):
    """AdamW's two fp32 moments: 2 x 4 bytes per frozen element saved; the planner (ZeRO-0 fp32, the
    same torch AdamW layout) predicts exactly that."""
    _, _, report = one_process
    frozen = CASES["ffn"][0]
    assert report["frozen"]["ranks"][0]["frozen_elements"] == frozen
    saved = report["full"]["ranks"][0]["optimizer_state_bytes"] - report["frozen"]["ranks"][0]["optimizer_state_bytes"]
    assert saved == 2 * 4 * frozen
    assert _plan_saving(1, 0) == saved


def test_one_process_resume_of_a_frozen_run_is_bitwise(one_process):
    out, _, report = one_process
    assert report["resumed"]["losses"] == {k: v for k, v in report["frozen"]["losses"].items() if k > 2}
    ref, got = _final(out / "frozen"), _final(out / "resumed")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.distributed
def test_zero3_two_ranks_frozen_bitwise_saving_and_resume(tmp_path, synthetic_coco):
    """One launch (tests/freeze_runner.py): frozen tensors bitwise as initialised after ZeRO-3
    training (gathered final weights and the consolidated checkpoint); per rank the frozen
    partitions lose their fp32 master copy and Adam moments (3 x 4 bytes) and, in the trainer's
    model-state accounting, their fp32 gradient partition too (4 x 4 bytes): the planner's saving;
    a resume from the step-2 checkpoint repeats the uninterrupted run bitwise."""
    from vitpose_scale.engine import checkpoint as ckpt
    from vitpose_scale.jsonl import read_jsonl

    init = _init_file(tmp_path / "init.pth")
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           "tests/freeze_runner.py", str(tmp_path), str(synthetic_coco(16, 4)), str(tmp_path / "init.pth")]
    for s in RUN:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    report = json.loads((tmp_path / "report.json").read_text())

    frozen_names = _check_frozen_bitwise_and_the_rest_changed(init, _final(tmp_path / "frozen"))
    state = ckpt.consolidate(tmp_path / "frozen" / "checkpoints" / "step_00000004")  # zero_to_fp32's view
    assert all(torch.equal(state[n], init[n]) for n in frozen_names)

    model, _ = _model(["ffn"])
    partition = sum(math.ceil(p.numel() / 2) for p in model.parameters() if not p.requires_grad)
    full = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    frozen = read_jsonl(tmp_path / "frozen" / "metrics.jsonl")
    held = [next(r for r in records if r.get("kind") == "train")["model_state_mb_per_rank"]
            for records in (full, frozen)]
    planned = _plan_saving(2, 3)
    assert planned == 16 * partition
    for rank in range(2):
        without, with_ = report["full"]["ranks"][rank], report["frozen"]["ranks"][rank]
        assert with_["frozen_elements"] == partition
        assert without["optimizer_state_bytes"] - with_["optimizer_state_bytes"] == 3 * 4 * partition
        # Adam's step counter, one fp32 scalar per optimizer group (the embeddings' groups are gone), is
        # the only model-state byte the planner leaves out.
        steps = 4 * (without["groups"] - with_["groups"])
        assert (held[0][rank] - held[1][rank]) * 2 ** 20 == planned + steps, (rank, held, planned, steps)

    assert report["resumed"]["losses"] == {k: v for k, v in report["frozen"]["losses"].items() if int(k) > 2}
    ref, got = _final(tmp_path / "frozen"), _final(tmp_path / "resumed")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_fsdp2_trains_around_frozen_parameters(tmp_path):
    """FSDP2 shards frozen and trainable parameters in one unit (a block): the frozen stay bitwise,
    AdamW holds state for the trainable only, and the sharded checkpoint saves and loads."""
    import torch.distributed as dist

    from vitpose_scale.engine.distributed import DistInfo
    from vitpose_scale.engine.parallel import FSDPWrapper

    cfg = load_config(None, TINY + ["train.freeze=[ffn]", "parallel.backend=fsdp", "train.batch_size=2"])
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model, _ = _model(["ffn"])
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        wrapper = FSDPWrapper(model, cfg, DistInfo(0, 1, 0, torch.device("cpu")))
        wrapper.train(True)
        before = {k: v.clone() for k, v in wrapper.full_state_dict().items()}
        for _ in range(2):
            wrapper.backward(wrapper.forward(torch.randn(2, 3, 64, 48)).pow(2).mean())
            wrapper.step()
        after = wrapper.full_state_dict()
        assert [n for n in frozen if not torch.equal(before[n], after[n])] == []
        assert [n for n in trainable if torch.equal(before[n], after[n])] == []
        assert len(wrapper.optimizer.state) == len(trainable)
        wrapper.save(tmp_path / "ckpt")
        wrapper.load(tmp_path / "ckpt")
        assert all(torch.equal(after[k], v) for k, v in wrapper.full_state_dict().items())
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- refusals --
@pytest.mark.parametrize("value, message", [
    ("[attn]", "train.freeze[0]: got 'attn', expected one of attention, ffn, patch_embed, backbone, head or blocks:N"),
    ("[ffn, blocks:0]", "train.freeze[1]: got 'blocks:0', expected blocks:N with 1 <= N <= 4"),
    ("[blocks:5]", "train.freeze[0]: got 'blocks:5', expected blocks:N with 1 <= N <= 4"),
    ("ffn", "train.freeze: got 'ffn', expected a list of names, e.g. [ffn]"),
    ("[backbone, head]", "freezes every parameter"),
])
def test_bad_names_are_config_errors(value, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, TINY + [f"train.freeze={value}"])
    assert message in str(exc.value)


def test_a_bad_name_stops_training_with_exit_2_and_one_line():
    proc = subprocess.run([sys.executable, "launch/train.py", "--config", "configs/demo.yaml", "--set",
                           "train.freeze=[attention, mlp]"], cwd=ROOT, env=launcher_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["config error: train.freeze[1]: got 'mlp', expected one of attention, ffn, patch_embed, "
                     "backbone, head or blocks:N (1 <= N <= 4)"], proc.stderr


def test_resume_refuses_another_freeze_and_a_world_size_change(tmp_path):
    """Another set of frozen parameters would not match the saved optimizer states; DeepSpeed's
    universal (world-size change) loader would not restore the frozen ones."""
    from vitpose_scale.engine.distributed import DistInfo
    from vitpose_scale.engine.parallel import DeepSpeedWrapper
    from vitpose_scale.engine.resume_check import changed_keys

    saved = load_config(None, TINY + ["train.freeze=[ffn]"])
    assert changed_keys(saved, load_config(None, TINY + ["train.freeze=[attention]"])) == {
        "train.freeze": (["ffn"], ["attention"])}
    assert changed_keys(saved, load_config(None, TINY + ["train.freeze=[ffn, ffn]"])) == {}
    model, _ = _model(["ffn"])
    with pytest.raises(ConfigError, match="train.freeze: resuming at another world size"):
        DeepSpeedWrapper(model, saved, DistInfo(0, 1, 0, torch.device("cpu")), resume_world_size=2)
