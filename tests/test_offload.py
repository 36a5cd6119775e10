"""ZeRO-Offload (optimizer states and step on the host: DeepSpeedCPUAdam) and ZeRO-3 parameter
offload, on 2 CPU ranks: the same loss curve as without offload, bitwise resume, convert; and
a user's DeepSpeed JSON merged over the generated one (changed keys printed, contradictions refused).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch_env import launcher_env
from vitpose_scale.config import ConfigError, load_config
from vitpose_scale.engine import checkpoint as ckpt
from vitpose_scale.engine.metrics import read_jsonl
from vitpose_scale.engine.parallel import deepspeed_config, merge_user_deepspeed_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CURVE_RTOL = 1e-4


@pytest.fixture(scope="module")
def data(synthetic_coco):
    return synthetic_coco(32, 4)


def train(out, data, *extra, port=29800):
    sets = [f"train.output_dir={out}", f"data.root={data}", "data.synthetic_train=32", "data.synthetic_val=4",
            "data.extra_train=[]", "train.batch_size=8", "train.max_steps=6", "train.log_every=1",
            "train.eval_every=-1", "train.save_every=3", "model.depth=2", "model.head=simple", "model.image_size=[128,96]",
            "model.drop_path=0.0", "optim.warmup_iters=2", "parallel.zero3_persistence_threshold=0", *extra]
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(port), "launch/train.py",
           "--config", "configs/demo.yaml"]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def losses(out):
    return {r["step"]: r["loss"] for r in read_jsonl(out / "metrics.jsonl") if r.get("kind") == "train"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("no_offload")
    train(out, data, port=29801)
    return out


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("offload")
    train(out, data, "parallel.offload_optimizer=cpu", port=29802)
    return out


@pytest.mark.distributed
def test_optimizer_offload_follows_the_device_optimizer(reference, offloaded):
    ref, got = losses(reference), losses(offloaded)
    assert sorted(got) == sorted(ref) == [1, 2, 3, 4, 5, 6]
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=CURVE_RTOL), step
    assert len(set(got.values())) == 6


def test_optimizer_offload_keeps_the_layer_decay_groups():
    from vitpose_scale.engine.optim import build_optimizer
    from vitpose_scale.engine.parallel import _offload_optimizer
    from vitpose_scale.models.pose import build_pose_model

    cfg = _cfg("parallel.offload_optimizer=cpu", "optim.layer_decay=0.75")
    model = build_pose_model(cfg.model)
    device_groups = build_optimizer(model, cfg).param_groups
    host = _offload_optimizer(model, cfg)
    assert type(host).__name__ == "DeepSpeedCPUAdam"
    assert len(host.param_groups) == len(device_groups) > 2
    for a, b in zip(host.param_groups, device_groups):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        assert a["lr_scale"] == b["lr_scale"] and a["weight_decay"] == b["weight_decay"]


@pytest.mark.distributed
def test_optimizer_offload_resumes_bitwise_and_converts(offloaded, data, tmp_path):
    out = tmp_path / "paused"
    train(out, data, "parallel.offload_optimizer=cpu", "train.stop_at=3", port=29803)
    train(out, data, "parallel.offload_optimizer=cpu", port=29804)
    ref, got = losses(offloaded), losses(out)
    for step in (4, 5, 6):
        assert got[step] == ref[step], step
    from vitpose_scale.cli import main

    converted = tmp_path / "c.pth"
    assert main(["convert", "--checkpoint", str(ckpt.latest_checkpoint(offloaded / "checkpoints")),
                 "--out", str(converted)]) == 0
    a = torch.load(converted, weights_only=True)["state_dict"]
    b = torch.load(offloaded / "final.pth", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.distributed
def test_parameter_offload_and_a_user_deepspeed_json(reference, data, tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage3_max_live_parameters": 123456},
                                "steps_per_print": 1000}))
    proc = train(tmp_path / "out", data, "parallel.offload_params=cpu", "parallel.offload_optimizer=cpu",
                 f"parallel.deepspeed_config={user}", port=29805)
    assert "changed: steps_per_print, zero_optimization.stage3_max_live_parameters" in proc.stdout
    ref, got = losses(reference), losses(tmp_path / "out")
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=CURVE_RTOL), step


def _cfg(*sets):
    return load_config(ROOT / "configs" / "demo.yaml", list(sets))


def test_offload_settings_map_to_deepspeed():
    ds = deepspeed_config(_cfg("parallel.offload_optimizer=cpu", "parallel.offload_params=nvme",
                               "parallel.nvme_path=/local/nvme"), world_size=2)
    zero = ds["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "nvme", "pin_memory": True, "nvme_path": "/local/nvme"}
    assert "offload_optimizer" not in deepspeed_config(_cfg(), world_size=2)["zero_optimization"]


@pytest.mark.parametrize("sets, message", [
    (["parallel.offload_params=cpu", "parallel.zero_stage=2"], "parameters are offloaded by ZeRO-3 only"),
    (["parallel.offload_optimizer=cpu", "parallel.zero_stage=0"], "needs ZeRO stage 1, 2 or 3"),
    (["parallel.offload_optimizer=cpu", "parallel.backend=fsdp"], "offload is DeepSpeed's"),
    (["parallel.offload_optimizer=nvme"], "parallel.nvme_path: required for nvme offload"),
    (["parallel.offload_optimizer=gpu"], "parallel.offload_optimizer: got 'gpu'"),
])
def test_impossible_offload_settings_are_refused(sets, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(*sets)


def test_user_json_changes_are_listed_and_contradictions_refused(tmp_path):
    cfg = _cfg()
    generated = deepspeed_config(cfg, world_size=2)
    path = tmp_path / "u.json"
    path.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1000, "stage": 3},
                                "train_batch_size": cfg.train.batch_size, "wall_clock_breakdown": True}))
    merged, changed = merge_user_deepspeed_config(generated, str(path), cfg, 2)
    assert changed == ["wall_clock_breakdown", "zero_optimization.reduce_bucket_size"]
    assert merged["zero_optimization"]["reduce_bucket_size"] == 1000
    assert merged["zero_optimization"]["allgather_bucket_size"] == generated["zero_optimization"][
        "allgather_bucket_size"]  # untouched keys stay
    for bad, key in (({"train_batch_size": 4 * cfg.train.batch_size}, f"train_batch_size={4 * cfg.train.batch_size}"),
                     ({"train_micro_batch_size_per_gpu": 2}, "train_micro_batch_size_per_gpu=2"),
                     ({"bf16": {"enabled": True}}, "bf16.enabled=True"),
                     ({"zero_optimization": {"stage": 2}}, "zero_optimization.stage=2")):
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            merge_user_deepspeed_config(generated, str(path), cfg, 2)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable JSON file"):
        merge_user_deepspeed_config(generated, str(path), cfg, 2)


@pytest.mark.parametrize("section, toolkit_key", [
    ({"optimizer": {"type": "Adam", "params": {"lr": 1e-3}}}, "optim.lr"),
    ({"scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}}}, "optim.schedule"),
    ({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}, "parallel.offload_optimizer"),
    ({"zero_optimization": {"offload_param": {"device": "cpu", "pin_memory": False}}}, "parallel.offload_params"),
    ({"zero_optimization": {"cpu_offload": True}}, "parallel.offload_optimizer"),  # DeepSpeed's older spelling
])
def test_user_json_sections_the_toolkit_owns_are_refused_naming_its_key(tmp_path, section, toolkit_key):
    """DeepSpeed would take these from the JSON, but the trainer builds its own AdamW, schedule and
    offload optimizer and hands them over: the sections would be listed as changed, then ignored
    (or, for offload_optimizer, end in a DeepSpeed exception). Refused with the key to use instead."""
    cfg = _cfg("parallel.offload_optimizer=cpu", "parallel.offload_params=cpu")  # even where they agree
    path = tmp_path / "u.json"
    path.write_text(json.dumps(section))
    key = next(iter(_flat_keys(section)))
    with pytest.raises(ConfigError) as refused:
        merge_user_deepspeed_config(deepspeed_config(cfg, world_size=2), str(path), cfg, 2)
    message = str(refused.value)
    assert message.startswith(f"parallel.deepspeed_config: {path} sets {key}") and toolkit_key in message


def _flat_keys(tree, prefix=""):
    """The JSON's section path down to the refused key (zero_optimization.offload_param, optimizer, ...)."""
    for k, v in tree.items():
        if k == "zero_optimization":
            yield from _flat_keys(v, "zero_optimization.")
        else:
            yield prefix + k
