"""ZeRO-Offload (optimizer states and step on the host: DeepSpeedCPUAdam) and ZeRO-3 parameter
offload, on 2 CPU ranks: the same loss curve as without offload (50 steps), bitwise resume,
convert; DeepSpeedCPUAdam's steps equal to torch AdamW's group by group (and the comparison
shown to catch a wrong bias correction, eps or weight decay); and a user's DeepSpeed JSON
merged over the generated one (changed keys printed, contradictions refused).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch_env import free_port, launcher_env
from vitpose_scale.config import ConfigError, load_config
from vitpose_scale.engine import checkpoint as ckpt
from vitpose_scale.jsonl import read_jsonl
from vitpose_scale.engine.parallel import deepspeed_config, merge_user_deepspeed_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# The offloaded loss curve against the device optimizer's, 50 steps (measured on 2 CPU ranks).
# Steps 1-14 within EARLY_RTOL (measured worst 1.1e-6; DeepSpeedCPUAdam with its own float32
# bias correction: 7.1e-6 at step 5, 2.4e-5 at step 8, 5.0e-5 at step 12). Step 15 of this run
# is a branch point that float32 rounding decides: torch AdamW itself, its lr scaled by
# 1 + 3e-8, 1 - 3e-7 or 1 - 1e-7 (and the offloaded run), goes 4.3e-6 off there, 1.6e-5 at
# step 16, 4.2e-5 at step 22; by 1 - 3e-8, 1 + 1e-7 or 1 + 3e-7 it stays within 1.1e-6 over
# the 50 steps. So steps 15-50 are held to CURVE_RTOL (measured worst 4.3e-5, step 22; a
# 1e-6 lr error: 1.7e-4; DeepSpeedCPUAdam's own correction: 2.4e-4). docs/full_scale.md 3b.
LONG_STEPS, EARLY_STEPS, EARLY_RTOL, CURVE_RTOL = 50, 14, 3e-6, 1e-4
STEPS = 8  # the default suite's runs: early steps, held to EARLY_RTOL (the stock kernel: 6.9e-6 at step 3); 50: slow suite


@pytest.fixture(scope="module")
def data(synthetic_coco):
    return synthetic_coco(32, 4)


def train(out, data, *extra, steps=STEPS, nproc=2):
    sets = [f"train.output_dir={out}", f"data.root={data}", "data.synthetic_train=32", "data.synthetic_val=4",
            "data.extra_train=[]", "train.batch_size=8", f"train.max_steps={steps}", "train.log_every=1",
            "train.eval_every=-1", "train.save_every=5", "model.depth=2", "model.head=simple",
            "model.image_size=[128,96]", "model.drop_path=0.0", "optim.warmup_iters=2",
            "parallel.zero3_persistence_threshold=0", *extra]
    if nproc == 2:
        cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
    else:
        cmd = [sys.executable]
    cmd += ["launch/train.py", "--config", "configs/demo.yaml"]
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
    train(out, data)
    return out


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("offload")
    train(out, data, "parallel.offload_optimizer=cpu")
    return out


@pytest.fixture(scope="module")
def reference_one_rank(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("no_offload_one")
    train(out, data, nproc=1)
    return out


def test_optimizer_offload_follows_the_device_optimizer_on_one_rank(reference_one_rank, data, tmp_path):
    """One process (python launch/train.py: DeepSpeed ZeRO-3 on one rank, DeepSpeedCPUAdam on the host):
    the offloaded curve follows the device optimizer's. The 2-rank version is in the slow suite."""
    got = tmp_path / "offload"
    train(got, data, "parallel.offload_optimizer=cpu", nproc=1)
    ref, got = losses(reference_one_rank), losses(got)
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    _assert_follows(got, ref)
    assert len(set(got.values())) == STEPS


@pytest.mark.slow  # 2-rank variant: the one-rank curve above and the per-step host-Adam equality tests are the default
@pytest.mark.distributed
def test_optimizer_offload_follows_the_device_optimizer(reference, offloaded):
    ref, got = losses(reference), losses(offloaded)
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    _assert_follows(got, ref)
    assert len(set(got.values())) == STEPS


@pytest.mark.slow  # two 50-step 2-rank runs, about 2 minutes
@pytest.mark.distributed
def test_optimizer_offload_follows_the_device_optimizer_over_50_steps(tmp_path, data):
    ref, got = tmp_path / "ref", tmp_path / "off"
    train(ref, data, steps=LONG_STEPS)
    train(got, data, "parallel.offload_optimizer=cpu", steps=LONG_STEPS)
    ref, got = losses(ref), losses(got)
    assert sorted(got) == sorted(ref) == list(range(1, LONG_STEPS + 1))
    _assert_follows(got, ref)


def _assert_follows(got, ref):
    for step in ref:
        rtol = EARLY_RTOL if step <= EARLY_STEPS else CURVE_RTOL
        assert got[step] == pytest.approx(ref[step], rel=rtol), (step, got[step] / ref[step] - 1)


def test_optimizer_offload_keeps_the_layer_decay_groups():
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    from vitpose_scale.engine.optim import ExactBiasCorrection, build_optimizer
    from vitpose_scale.engine.parallel import _offload_optimizer
    from vitpose_scale.models.pose import build_pose_model

    cfg = _cfg("parallel.offload_optimizer=cpu", "optim.layer_decay=0.75")
    model = build_pose_model(cfg.model)
    device_groups = build_optimizer(model, cfg).param_groups
    host = _offload_optimizer(model, cfg)
    # ZeRO tests `type(optimizer) == DeepSpeedCPUAdam` (stage 3's offload path): no subclass.
    assert type(host) is DeepSpeedCPUAdam and isinstance(host.ds_opt_adam, ExactBiasCorrection)
    assert len(host.param_groups) == len(device_groups) > 2
    for a, b in zip(host.param_groups, device_groups):
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]
        assert a["lr_scale"] == b["lr_scale"] and a["weight_decay"] == b["weight_decay"]


# ZeRO-Offload's DeepSpeedCPUAdam (as _offload_optimizer builds it) against torch AdamW (as
# build_optimizer builds it), each over its own copy of the same parameters, fed the same
# gradients step after step from a fresh state, every update compared group by group. The
# kernel's own float32 bias correction shrinks a whole update by 3.2e-6 at step 2, 6.6e-6 at
# step 3, 1.1e-6 at step 7 (measured here, against torch); fed in at every step it took the
# offloaded loss curve 2.4e-5 off the device one by step 8 and 2.4e-4 by step 22 (2 ranks).
UPDATE_TOL = 2e-6  # per element, in units of the group's lr (an Adam step is ~lr), + 2 ulp of the parameter
SCALE_TOL = 5e-7  # the step's update as a whole (all groups): |<host - device, device>| / |device|^2


def _spread(shape, low, high, gen):
    """Normal numbers with magnitudes log-uniform in [10^low, 10^high]."""
    return torch.randn(shape, generator=gen) * 10 ** (low + (high - low) * torch.rand(shape, generator=gen))


def _host_vs_device(module_a, module_b, cfg, steps: int, seed: int = 0):
    """Yields (step, worst element error / allowed, scale error of the whole update) of each step.

    Every step starts from the same parameters: 0 where gradients come (the step is then the
    update itself, rounded once), 0.5-1 in magnitude where none ever come (zero moments:
    decoupled weight decay alone moves them). The moments are each optimizer's own, grown
    from the same gradients, magnitudes 1e-9 to 1e-2 (eps, 1e-8, decides the smallest)."""
    from vitpose_scale.engine.optim import build_optimizer, set_lr
    from vitpose_scale.engine.parallel import _offload_optimizer

    device, host = build_optimizer(module_a, cfg), _offload_optimizer(module_b, cfg)
    gen = torch.Generator().manual_seed(seed)
    groups = [list(zip(d["params"], h["params"])) for d, h in zip(device.param_groups, host.param_groups)]
    grad_scale, start = {}, {}
    for pd, _ in (pair for g in groups for pair in g):
        idle = torch.rand(pd.shape, generator=gen) < 0.1
        grad_scale[pd] = _spread(pd.shape, -9, -2, gen).abs() * ~idle
        start[pd] = torch.where(idle, _spread(pd.shape, -0.3, 0, gen), 0.0)
    eps32 = torch.finfo(torch.float32).eps
    for t in range(1, steps + 1):
        factor = 0.05 + 0.95 * ((0.618 * t) % 1.0)  # the lr changes at every step
        for opt in (device, host):
            set_lr(opt, cfg.optim.lr, factor, [g["lr_scale"] for g in opt.param_groups])
        with torch.no_grad():
            for pd, ph in (pair for g in groups for pair in g):
                pd.copy_(start[pd]), ph.copy_(start[pd])
                pd.grad = grad_scale[pd] * torch.randn(pd.shape, generator=gen)
                ph.grad = pd.grad.clone()
        device.step(), host.step()
        worst_element, cross, norm = 0.0, 0.0, 0.0
        for g, group in zip(groups, device.param_groups):
            p0 = torch.cat([start[pd].flatten() for pd, _ in g]).double()
            d_up = torch.cat([pd.detach().flatten() for pd, _ in g]).double() - p0
            h_up = torch.cat([ph.detach().flatten() for _, ph in g]).double() - p0
            allowed = UPDATE_TOL * group["lr"] + 2 * eps32 * p0.abs()
            worst_element = max(worst_element, ((h_up - d_up).abs() / allowed).max().item())
            moved = p0 == 0  # the Adam updates, without weight decay's rounding to the parameter's ulp
            cross += ((h_up - d_up) * d_up)[moved].sum().item()
            norm += (d_up * d_up)[moved].sum().item()
        yield t, worst_element, abs(cross) / norm


def _pose_models():
    from vitpose_scale.models.pose import build_pose_model

    cfg = _cfg("parallel.offload_optimizer=cpu", "optim.layer_decay=0.75", "model.depth=2", "model.head=simple",
               "model.embed_dim=32", "model.num_heads=2", "model.image_size=[64,48]")
    return build_pose_model(cfg.model), build_pose_model(cfg.model), cfg


def _head_only():
    """One 64x64 Linear named like the head: one weight-decay group and one without."""
    cfg = _cfg("parallel.offload_optimizer=cpu")
    make = lambda: torch.nn.ModuleDict({"head": torch.nn.Linear(64, 64)})  # noqa: E731
    return make(), make(), cfg


def _mismatches(models, steps):
    return ((t, e, s) for t, e, s in _host_vs_device(*models(), steps=steps) if e > 1.0 or s > SCALE_TOL)


def test_host_adam_steps_equal_torch_adamw_in_every_group():
    """50 steps over the pose model's layer-decay groups (lr scales 0.75**k, weight decay 0.05
    and 0): bias correction, eps, decoupled weight decay and each group's lr are torch's, to
    float32 rounding (measured worst: 0.25 of the allowed element error, scale 1.6e-7)."""
    assert list(_mismatches(_pose_models, 50)) == []


def test_host_adam_steps_equal_torch_adamw_far_into_training():
    """500 steps: torch's v adds float32(1 - 0.999) g^2, the kernel (1 - float32(0.999)) g^2,
    1.3e-5 apart; the correction accounts for it, else the update's scale drifts 1.5e-6 by step
    500 (6.4e-6 in the long run). Measured worst: 0.4 of the element error, scale 2.8e-7."""
    assert list(_mismatches(_head_only, 500)) == []


def _patch_arguments(monkeypatch, mutate):
    from vitpose_scale.engine import optim

    exact = optim.host_adam_arguments
    monkeypatch.setattr(optim, "host_adam_arguments",
                        lambda *a: mutate(exact(*a), *a))


def _f32(x):
    return torch.tensor(x, dtype=torch.float32).item()


def _with_bc2(bc2):
    """host_adam_arguments with another bc2 (and bc1 = 1 - beta1_f32**t)."""
    import math

    def mutate(_, step, lr, beta1, beta2, eps, weight_decay):
        bc1, root = 1 - _f32(beta1) ** step, math.sqrt(bc2(step, beta2))
        return lr * root / bc1, eps * root, weight_decay * bc1 / root
    return mutate


MUTATIONS = {
    "the kernel's float32 bias correction": None,
    "eps not scaled by sqrt(bc2)": lambda r, step, lr, b1, b2, eps, wd: (r[0], eps, r[2]),
    "weight decay not rescaled": lambda r, step, lr, b1, b2, eps, wd: (r[0], r[1], wd),
    "no bias correction": lambda r, step, lr, b1, b2, eps, wd: (lr, eps, wd),
    "bc2 = 1 - 0.999**t": _with_bc2(lambda t, b2: 1 - b2 ** t),
    "bc2 = 1 - float32(0.999)**t": _with_bc2(lambda t, b2: 1 - _f32(b2) ** t),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_the_step_comparison_catches_a_wrong_bias_correction_eps_or_decay(monkeypatch, mutation):
    from vitpose_scale.engine import parallel

    if MUTATIONS[mutation] is None:  # DeepSpeedCPUAdam as DeepSpeed ships it (the finding)
        build = parallel._offload_optimizer

        def stock(*args):
            optimizer = build(*args)
            optimizer.ds_opt_adam = optimizer.ds_opt_adam.op
            return optimizer
        monkeypatch.setattr(parallel, "_offload_optimizer", stock)
    else:
        _patch_arguments(monkeypatch, MUTATIONS[mutation])
    if mutation == "bc2 = 1 - float32(0.999)**t":  # a scale of 5e-7 at step 100, 1.5e-6 at 500
        assert next(_mismatches(_head_only, 500), None)
    else:
        assert next(_mismatches(_head_only, 10), None)


@pytest.mark.slow  # bitwise resume is in the default suite without offload (test_distributed_training.py)
@pytest.mark.distributed
def test_optimizer_offload_resumes_bitwise_and_converts(offloaded, data, tmp_path):
    out = tmp_path / "paused"
    train(out, data, "parallel.offload_optimizer=cpu", "train.stop_at=3")
    train(out, data, "parallel.offload_optimizer=cpu")
    ref, got = losses(offloaded), losses(out)
    for step in range(4, STEPS + 1):
        assert got[step] == ref[step], step
    from vitpose_scale.cli import main

    converted = tmp_path / "c.pth"
    assert main(["convert", "--checkpoint", str(ckpt.latest_checkpoint(offloaded / "checkpoints")),
                 "--out", str(converted)]) == 0
    a = torch.load(converted, weights_only=True)["state_dict"]
    b = torch.load(offloaded / "final.pth", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # the JSON merge is unit-tested below; optimizer offload's curve is the default check
@pytest.mark.distributed
def test_parameter_offload_and_a_user_deepspeed_json(reference, data, tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage3_max_live_parameters": 123456},
                                "steps_per_print": 1000}))
    proc = train(tmp_path / "out", data, "parallel.offload_params=cpu", "parallel.offload_optimizer=cpu",
                 f"parallel.deepspeed_config={user}")
    assert "changed: steps_per_print, zero_optimization.stage3_max_live_parameters" in proc.stdout
    ref, got = losses(reference), losses(tmp_path / "out")
    assert sorted(got) == sorted(ref)
    _assert_follows(got, ref)


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
