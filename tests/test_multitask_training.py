"""ViTPose+/++ training: the per-dataset loss as the official TopDownMoE defines it, heads and experts
that learn only from their own samples, exact per-epoch quotas, and multi-task runs under DeepSpeed
ZeRO-3, FSDP2 and DDP (resume bitwise equal, one distributed evaluation per dataset)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from vitpose_scale.config import ModelConfig, load_config
from vitpose_scale.data.loader import RatioConcatDataset, ratio_epoch_order
from vitpose_scale.data.multitask import TaskDataset, multitask_loss
from vitpose_scale.engine import checkpoint as ckpt
from vitpose_scale.jsonl import read_jsonl
from vitpose_scale.models.pose import build_pose_model
from vitpose_scale.models.vit import routes

from launch_env import free_port, launcher_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _moe(head="simple", experts=3, heads=(17, 14, 16), checkpointing=False) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(preset="tiny", image_size=[64, 48], head=head, head_channels=16, backbone="vit_moe",
                      num_experts=experts, part_features=16, head_keypoints=list(heads),
                      activation_checkpointing=checkpointing)
    return build_pose_model(cfg)


def _official_loss(model, images, index, target, weight, loss_weights):
    """TopDownMoE.forward_train written out: every head runs on the whole batch; its target and
    weight are multiplied by (index == k); JointsMSELoss (without its 0.5) averages over the batch,
    the head's joints and pixels; the heads' losses (times the dataset weights) are summed."""
    feats = model.backbone(images, routes(index, model.backbone.num_experts))
    total = 0.0
    for k, head in enumerate(model.heads):
        out = head(feats).float()
        kk = out.shape[1]
        mask = (index == k).float()
        t = target[:, :kk] * mask.view(-1, 1, 1, 1)
        w = weight[:, :kk] * mask.view(-1, 1, 1)
        per_joint = [((out[:, j] * w[:, j, None]) - (t[:, j] * w[:, j, None])).pow(2).mean() for j in range(kk)]
        total = total + loss_weights[k] * torch.stack(per_joint).mean()
    return total


def _batch(n=6, k_max=17, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 64, 48, generator=g)
    index = torch.tensor([0, 1, 2, 1, 0, 2][:n])
    target = torch.rand(n, k_max, 16, 12, generator=g)
    weight = (torch.rand(n, k_max, 1, generator=g) > 0.2).float()
    joints = torch.tensor([17.0, 14.0, 16.0])
    for b in range(n):  # the padding of a smaller set carries weight 0, as TaskDataset pads it
        weight[b, int(joints[index[b]]):] = 0
        target[b, int(joints[index[b]]):] = 0
    return images, index, target, weight, joints


def test_loss_equals_the_official_masked_formulation():
    model = _moe().eval()  # the simple head has no BatchNorm: eval and train agree
    images, index, target, weight, joints = _batch()
    lw = torch.tensor([1.0, 0.5, 2.0])
    ours = multitask_loss(model(images, index), target, weight, index, joints, lw)
    ref = _official_loss(model, images, index, target, weight, lw)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=0)


def test_heads_and_experts_learn_only_from_their_own_samples():
    model = _moe(head="classic")
    images, index, target, weight, joints = _batch()
    only_first = torch.zeros_like(index)
    multitask_loss(model(images, only_first), target, weight, only_first, joints, torch.ones(3)).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())  # every parameter in the graph: DDP/ZeRO-safe
    for name, g in grads.items():
        idle = name.startswith("associate_keypoint_heads.") or ".mlp.experts.1." in name or ".mlp.experts.2." in name
        if idle:
            assert torch.count_nonzero(g) == 0, name
    assert torch.count_nonzero(grads["keypoint_head.final_layer.weight"]) > 0
    assert torch.count_nonzero(grads["backbone.blocks.0.mlp.experts.0.weight"]) > 0
    # idle heads' BatchNorm statistics are untouched by the empty batches they ran on
    bn = model.associate_keypoint_heads[0].deconv_layers[1]
    assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_each_sample_meets_only_its_own_expert_and_head():
    """A sample's output does not depend on the other samples' datasets (no leaking across rows)."""
    model = _moe().eval()
    images, index, *_ = _batch()
    with torch.no_grad():
        mixed = model(images, index)
        for b in range(len(index)):
            alone = model(images[b:b + 1], index[b:b + 1])
            torch.testing.assert_close(mixed[b:b + 1], alone, rtol=1e-5, atol=1e-6)
            k = [17, 14, 16][int(index[b])]
            assert torch.count_nonzero(mixed[b, k:]) == 0


def test_activation_checkpointing_with_the_dataset_index_gives_the_same_gradients():
    images, index, target, weight, joints = _batch()
    grads = []
    for checkpointing in (False, True):
        model = _moe(checkpointing=checkpointing)
        multitask_loss(model(images, index), target, weight, index, joints, torch.ones(3)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-8, msg=name)


def test_a_dataset_index_outside_the_model_is_refused_naming_it():
    model = _moe()
    with pytest.raises(ValueError, match=r"dataset_index: \[3\] outside \[0, 3\)"):
        model(torch.zeros(2, 3, 64, 48), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="a dataset index per sample is required"):
        model(torch.zeros(2, 3, 64, 48))


def test_ddp_has_no_unused_parameters_when_a_dataset_is_absent_from_a_batch(tmp_path):
    """DDP's reducer fails on the next forward when a parameter got no gradient; a batch without
    dataset 2 must still give every expert and head one (zero)."""
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(_moe(head="classic"))
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        images, index, target, weight, joints = _batch()
        for step_index in (torch.zeros_like(index), torch.tensor([0, 1, 0, 1, 0, 1]), index):
            opt.zero_grad()
            multitask_loss(ddp(images, step_index), target, weight, step_index, joints, torch.ones(3)).backward()
            opt.step()
    finally:
        dist.destroy_process_group()


class _Sized(torch.utils.data.Dataset):
    def __init__(self, n, k):
        self.n, self.k = n, k

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"target": torch.ones(self.k, 4, 3), "target_weight": torch.ones(self.k, 1), "i": i}


def test_task_samples_are_tagged_padded_and_drawn_by_exact_quotas():
    sets = [TaskDataset(_Sized(50, 17), 0, 17), TaskDataset(_Sized(30, 14), 1, 17), TaskDataset(_Sized(20, 16), 2, 17)]
    s = sets[1][3]
    assert int(s["dataset_index"]) == 1 and s["target"].shape == (17, 4, 3) and s["target_weight"].shape == (17, 1)
    assert torch.count_nonzero(s["target_weight"][14:]) == 0 and torch.count_nonzero(s["target_weight"][:14]) == 14
    data = RatioConcatDataset(sets, [2.0, 1.0, 1.0])
    for epoch in range(3):
        order = ratio_epoch_order(data.sizes, data.ratios, seed=0, epoch=epoch)
        tags = np.array([int(data[int(i)]["dataset_index"]) for i in order])
        assert np.bincount(tags).tolist() == [50, 25, 25]


# ------------------------------------------------------------- distributed --
def _command(nproc, launcher, out, data, sets):
    base = [f"train.output_dir={out}", "data.synthetic_train=48", "data.synthetic_val=8",
            f"data.tasks=[{{name: coco, keypoint_set: coco, root: {data}/coco}}, "
            f"{{name: aic, keypoint_set: aic, root: {data}/aic, loss_weight: 0.5}}]",
            "train.batch_size=8", "train.max_steps=6", "train.log_every=1", "train.eval_every=1000",
            "train.save_every=3", "model.head=simple", "model.drop_path=0.0", "eval.flip_test=false",
            "optim.warmup_iters=2", "optim.lr=1e-3", "parallel.zero3_persistence_threshold=0",
            "model.image_size=[128,96]"]
    args = ["launch/train.py", "--config", "configs/demo_multitask.yaml"]
    for s in base + sets:
        args += ["--set", s]
    if launcher == "deepspeed":
        return [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(free_port()), *args]
    return [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_port",
            str(free_port()), *args]


def _train(nproc, out, data, *sets, launcher="deepspeed"):
    proc = subprocess.run(_command(nproc, launcher, out, data, list(sets)), cwd=ROOT, env=launcher_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _losses(out):
    return {r["step"]: r["loss"] for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "train"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from vitpose_scale.data.synthetic import generate_synthetic_coco

    root = tmp_path_factory.mktemp("multitask_data")
    for name in ("coco", "aic"):
        generate_synthetic_coco(root / name, 48, 8, seed=0, keypoints=name)
    return root


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("mt_zero3")
    _train(2, out, data_root)
    return out


@pytest.mark.distributed
def test_zero3_multitask_partitions_experts_and_heads_and_evaluates_each_dataset(zero3_run):
    records = read_jsonl(zero3_run / "metrics.jsonl")
    setup = next(r for r in records if r["kind"] == "setup")
    cfg = load_config(zero3_run / "config.yaml")
    full = sum(p.numel() for p in build_pose_model(cfg.model, device="meta").parameters())
    assert setup["params_full"] == full
    assert all(abs(n - full / 2) <= 2048 for n in setup["params_local_per_rank"]), setup
    losses = _losses(zero3_run)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and len(set(losses.values())) == 6
    final = [r for r in records if r["kind"] == "eval"][-1]
    for key in ("AP", "coco/AP", "aic/AP", "aic/AR"):
        assert key in final, key
    assert final["AP"] == final["coco/AP"]
    for name, joints in (("coco", 17), ("aic", 14)):  # each head's people, in its own joints
        people = json.loads((zero3_run / "eval" / f"results_{name}_step00000006.json").read_text())
        assert people and all(len(p["keypoints"]) == 3 * joints for p in people)
    state = torch.load(zero3_run / "final.pth", weights_only=True)["state_dict"]
    assert "backbone.blocks.0.mlp.experts.1.weight" in state and "associate_keypoint_heads.0.final_layer.weight" in state
    assert state["associate_keypoint_heads.0.final_layer.weight"].shape[0] == 14


@pytest.mark.distributed
def test_zero3_multitask_resume_is_bitwise_identical(zero3_run, data_root, tmp_path):
    # Resume the reference run's own step-3 checkpoint (ZeRO-3 shards, RNG states, data position) in
    # a new directory: one launch instead of a pause and a resume.
    step3 = zero3_run / "checkpoints" / "step_00000003"
    assert ckpt.is_complete(step3)
    out = tmp_path / "resumed"
    _train(2, out, data_root, f"train.resume={step3}")
    ref, got = _losses(zero3_run), _losses(out)
    for step in (4, 5, 6):
        assert got[step] == ref[step], (step, got[step], ref[step])


@pytest.mark.distributed
def test_fsdp2_multitask_agrees_with_zero3(zero3_run, data_root, tmp_path):
    out = tmp_path / "fsdp"
    _train(2, out, data_root, "parallel.backend=fsdp", launcher="torchrun")
    ref, got = _losses(zero3_run), _losses(out)
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-4), step


@pytest.mark.slow
@pytest.mark.distributed
def test_multitask_world_size_change_on_resume(zero3_run, data_root, tmp_path):
    out = tmp_path / "shrink"
    _train(2, out, data_root, "train.max_steps=3")
    proc = _train(1, out, data_root)
    assert "written by 2 ranks, now 1" in proc.stdout
    ref, got = _losses(zero3_run), _losses(out)
    for step in (4, 5, 6):
        assert got[step] == pytest.approx(ref[step], rel=1e-4), step


@pytest.mark.distributed
def test_eval_and_infer_per_dataset_match_the_training_evaluation(zero3_run, tmp_path, coco_sample):
    from vitpose_scale.evaluate import main as eval_main
    from vitpose_scale.infer import main as infer_main

    final = [r for r in read_jsonl(zero3_run / "metrics.jsonl") if r["kind"] == "eval"][-1]
    for name in ("coco", "aic"):
        out = tmp_path / name
        assert eval_main(["--config", str(zero3_run / "config.yaml"), "--checkpoint", str(zero3_run / "final.pth"),
                          "--dataset", name, "--out", str(out)]) == 0
        stats = json.loads((out / "stats.json").read_text())
        assert stats["AP"] == pytest.approx(final[f"{name}/AP"], abs=1e-12)
        assert stats["AR"] == pytest.approx(final[f"{name}/AR"], abs=1e-12)
    png = tmp_path / "aic.png"
    assert infer_main(["--config", str(zero3_run / "config.yaml"), "--checkpoint", str(zero3_run / "final.pth"),
                       "--image", str(coco_sample / "000000000785.jpg"), "--dataset", "aic", "--out", str(png)]) == 0
    people = json.loads(png.with_suffix(".json").read_text())
    assert len(people) == 1 and len(people[0]["keypoints"]) == 14 * 3
    assert eval_main(["--config", str(zero3_run / "config.yaml"), "--checkpoint", str(zero3_run / "final.pth"),
                      "--dataset", "mpii"]) == 2


def test_flop_formula_counts_one_expert_per_token_as_torch_measures_it():
    """MFU's numerator: the backbone's FLOP formula equals torch's FLOP counter on a real forward of
    a mixed-dataset batch (every token goes through the shared fc2 and exactly one expert)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vitpose_scale.models.pose import forward_flops_per_image

    cfg = ModelConfig(preset="tiny", image_size=[64, 48], attention="plain", backbone="vit_moe", num_experts=3,
                      part_features=16, head_keypoints=[17, 14, 16])
    model = build_pose_model(cfg).eval()
    images, index = torch.zeros(4, 3, 64, 48), torch.tensor([0, 2, 2, 1])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.backbone(images, routes(index, 3))
    assert counter.get_total_flops() == pytest.approx(4 * forward_flops_per_image(cfg), rel=1e-9)
    plain = ModelConfig(preset="tiny", image_size=[64, 48])
    assert forward_flops_per_image(cfg) == forward_flops_per_image(plain)  # an MoE block costs a plain block


def test_a_plain_pretrained_backbone_initialises_every_expert_from_fc2_as_the_official_loader(tmp_path):
    """ViTPose++ starts from a plain (MAE) backbone: the official loader gives each expert the last
    part_features outputs of fc2 and the shared fc2 the rest, so the untrained MoE model computes
    exactly what the plain backbone computes, for every dataset."""
    from vitpose_scale.models.interop import save_official
    from vitpose_scale.models.mae_transfer import load_init_weights

    torch.manual_seed(3)
    plain = build_pose_model(ModelConfig(preset="tiny", image_size=[64, 48])).eval()
    backbone_only = {k: v for k, v in plain.state_dict().items() if k.startswith("backbone.")}
    save_official(backbone_only, tmp_path / "vit.pth")
    moe = _moe()
    assert "backbone" in load_init_weights(moe, tmp_path / "vit.pth")
    moe.eval()
    images = torch.randn(3, 3, 64, 48)
    with torch.no_grad():
        want = plain.backbone(images)
        for k in range(3):
            got = moe.backbone(images, routes(torch.full((3,), k), 3))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    w = plain.state_dict()["backbone.blocks.1.mlp.fc2.weight"]
    assert torch.equal(moe.state_dict()["backbone.blocks.1.mlp.experts.2.weight"], w[-16:])
    assert torch.equal(moe.state_dict()["backbone.blocks.1.mlp.fc2.weight"], w[:-16])


def test_resume_refuses_datasets_in_another_order_even_with_equal_shapes():
    """AP-10K and APT-36K both have 17 joints: swapping them keeps every tensor's shape but would give
    each head and expert the other dataset's samples."""
    from vitpose_scale.config import from_dict
    from vitpose_scale.engine.resume_check import changed_keys

    def cfg(order):
        return from_dict({"model": {"preset": "tiny", "backbone": "vit_moe", "num_experts": 3, "part_features": 16},
                          "data": {"tasks": [{"keypoint_set": k} for k in order]}})

    assert changed_keys(cfg(["coco", "ap10k", "apt36k"]), cfg(["coco", "ap10k", "apt36k"])) == {}
    changed = changed_keys(cfg(["coco", "ap10k", "apt36k"]), cfg(["coco", "apt36k", "ap10k"]))
    assert set(changed) == {"data.tasks"}
    assert "model.head_keypoints" in changed_keys(cfg(["coco", "ap10k", "apt36k"]), cfg(["coco", "aic", "apt36k"]))


BAD_TASK_CONFIGS = [
    ({"model": {"backbone": "vit_moe", "num_experts": 2, "part_features": 16}}, "data.tasks: model.backbone vit_moe"),
    ({"model": {"backbone": "vit_moe", "num_experts": 3, "part_features": 16},
      "data": {"tasks": [{"keypoint_set": "coco"}, {"keypoint_set": "aic"}]}}, "model.num_experts: got 3, but data.tasks has 2"),
    ({"model": {"backbone": "vit_moe", "num_experts": 2, "part_features": 64},
      "data": {"tasks": [{"keypoint_set": "coco"}, {"keypoint_set": "aic"}]}}, "model.part_features: got 64"),
    ({"model": {"num_experts": 2}}, "model.num_experts: got 2, expected 1 with model.backbone vit"),
    ({"data": {"tasks": [{"keypoint_set": "coco"}, {"root": "x"}]}}, "data.tasks[1]: got {'root': 'x'}"),
    ({"data": {"tasks": [{"keypoint_set": "coco"}, {"keypoint_set": "coco"}]}}, "names ['coco', 'coco'] repeat"),
    ({"data": {"tasks": [{"keypoint_set": "coco"}, {"keypoint_set": "aic", "colour": 1}]}}, "unknown keys ['colour']"),
    ({"data": {"tasks": [{"keypoint_set": "coco", "ratio": 1}, {"keypoint_set": "aic"}]}}, "data.tasks[1].ratio is not set"),
    ({"data": {"tasks": [{"keypoint_set": "coco"}, {"keypoint_set": "aic", "loss_weight": -1}]}}, "data.tasks[1].loss_weight"),
    ({"model": {"head_keypoints": [17, 16]}, "data": {"tasks": [{"keypoint_set": "coco"}, {"keypoint_set": "aic"}]}},
     "model.head_keypoints: got [17, 16], but data.tasks' keypoint sets have [17, 14]"),
    ({"data": {"keypoint_set": "aic", "tasks": [{"keypoint_set": "coco"}, {"keypoint_set": "aic"}]}},
     "data.keypoint_set: 'aic', but data.tasks[0]"),
    ({"data": {"tasks": [{"keypoint_set": "coco"}, {"keypoint_set": "nope"}]}}, "keypoint"),
]


@pytest.mark.parametrize("raw,message", BAD_TASK_CONFIGS, ids=[m[:30] for _, m in BAD_TASK_CONFIGS])
def test_bad_multitask_configs_are_refused_in_one_line(raw, message):
    from vitpose_scale.config import ConfigError, from_dict

    raw = {"model": {"preset": "tiny", **raw.get("model", {})}, "data": raw.get("data", {})}
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_bad_multitask_config_exits_2_with_one_line_before_any_work(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {preset: tiny, backbone: vit_moe, num_experts: 3, part_features: 16}\n"
                   "data: {tasks: [{keypoint_set: coco}, {keypoint_set: aic}]}\n"
                   f"train: {{output_dir: {tmp_path / 'run'}}}\n")
    proc = subprocess.run([sys.executable, "-m", "vitpose_scale.cli", "train", "--config", str(cfg)], cwd=ROOT,
                          env=launcher_env(), capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "model.num_experts" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()
