"""Knowledge transfer (docs/distillation.md): the knowledge token as the paper defines it, stage 1
changing nothing but the token, stage 2 never changing it, output distillation from a teacher that
holds no optimizer state, under one process and 2-rank DeepSpeed ZeRO-3; bad teachers and tokens
refused in one line."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vitpose_scale.config import ModelConfig
from vitpose_scale.jsonl import read_jsonl
from vitpose_scale.models.pose import build_pose_model

from launch_env import free_port, launcher_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _reference_backbone(backbone, images, token):
    """A ViT forward written from the definitions, the token concatenated to the visual tokens after
    the position embedding: x <- x + proj(softmax(q k^T / sqrt(d)) v) of LN1(x), x <- x + fc2(gelu(fc1(LN2(x))));
    last LN; the visual tokens back on their grid."""
    x = backbone.patch_embed.proj(images)
    b, c, h, w = x.shape
    x = x.flatten(2).transpose(1, 2) + backbone.pos_embed[:, 1:] + backbone.pos_embed[:, :1]
    x = torch.cat([x, token.expand(b, -1, -1)], dim=1)
    for blk in backbone.blocks:
        a = F.layer_norm(x, (c,), blk.norm1.weight, blk.norm1.bias, 1e-6)
        heads = blk.attn.num_heads
        q, k, v = F.linear(a, blk.attn.qkv.weight, blk.attn.qkv.bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
        scores = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
        x = x + F.linear((scores @ v).transpose(1, 2).reshape(b, -1, c), blk.attn.proj.weight, blk.attn.proj.bias)
        m = F.layer_norm(x, (c,), blk.norm2.weight, blk.norm2.bias, 1e-6)
        x = x + F.linear(F.gelu(F.linear(m, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
    x = F.layer_norm(x, (c,), backbone.last_norm.weight, backbone.last_norm.bias, 1e-6)
    return x[:, :h * w].transpose(1, 2).reshape(b, c, h, w)


@pytest.mark.parametrize("attention", ["plain", "sdpa"])
def test_the_token_enters_every_block_as_the_paper_defines_it(attention):
    torch.manual_seed(0)
    model = build_pose_model(ModelConfig(preset="tiny", image_size=[64, 48], attention=attention,
                                         knowledge_token=True)).eval()
    images = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        ours = model.backbone(images, extra_tokens=model.knowledge_token)
        ref = _reference_backbone(model.backbone, images, model.knowledge_token)
        without = model.backbone(images)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert (ours - without).abs().max() > 1e-3  # the visual tokens attend to it
    assert set(model.state_dict()) - set(build_pose_model(ModelConfig(preset="tiny")).state_dict()) == {"knowledge_token"}


# ------------------------------------------------------------ real runs --
def _config(tmp: Path, data: Path, name: str, **model) -> Path:
    model = {"preset": "tiny", "embed_dim": 64, "num_heads": 4, "image_size": [128, 96], "head": "classic",
             "head_channels": 16, "drop_path": 0.1, **model}
    path = tmp / f"{name}.yaml"
    path.write_text(json.dumps({
        "model": model, "data": {"kind": "synthetic", "root": str(data), "synthetic_train": 48, "synthetic_val": 8,
                                 "num_workers": 0},
        "train": {"batch_size": 8, "max_steps": 4, "eval_every": -1, "log_every": 1, "output_dir": str(tmp / name)},
        "eval": {"flip_test": False}, "parallel": {"backend": "none"}}))
    return path


def _run(command, config, *sets, nproc=1, check=True):
    launcher = {"train": "launch/train.py", "distill-token": "launch/distill_token.py"}[command]
    args = [launcher, "--config", str(config)]
    for s in sets:
        args += ["--set", s]
    if nproc > 1:
        cmd = [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(free_port()), *args]
    else:
        cmd = [sys.executable, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, f"{command} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc


def _run_here(command, config, *sets):
    """`command` (train, distill-token) in this process, one rank, no process group (parallel.backend=none):
    the same Trainer classes as the launchers' (vitpose_scale.cli), without a launch each."""
    from vitpose_scale.config import load_config
    from vitpose_scale.engine.distill import TokenTrainer
    from vitpose_scale.engine.distributed import DistInfo
    from vitpose_scale.engine.trainer import Trainer

    cfg = load_config(config, list(sets))
    assert cfg.parallel.backend == "none"
    trainer_class = {"train": Trainer, "distill-token": TokenTrainer}[command]
    trainer_class(cfg, DistInfo(0, 1, 0, torch.device("cpu"))).train()


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A trained tiny "large" teacher (BatchNorm in its head: running statistics that must not move)."""
    tmp = tmp_path_factory.mktemp("teacher")
    config = _config(tmp, tmp / "data", "teacher", depth=3)
    _run_here("train", config)
    return config, tmp / "teacher" / "final.pth"


def _initial_token(config: Path) -> torch.Tensor:
    """The token stage 1 starts from: the model's own draw at the run's seed."""
    from vitpose_scale.config import load_config

    cfg = load_config(config)
    model = build_pose_model(ModelConfig(**{**cfg.model.__dict__, "knowledge_token": True}))
    torch.manual_seed(cfg.train.seed)
    model.init_weights()
    return model.knowledge_token.detach()


def _check_stage1(out: Path, teacher_weights: Path, config: Path):
    before, after = _weights(teacher_weights), _weights(out / "final.pth")
    assert set(after) == set(before) | {"knowledge_token"}
    for key in before:  # weights, BatchNorm statistics, num_batches_tracked: untouched
        assert torch.equal(after[key], before[key]), key
    token = _weights(out / "knowledge_token.pth")["knowledge_token"]
    assert torch.equal(token, after["knowledge_token"]) and token.shape == (1, 1, 64)
    assert not torch.equal(token, _initial_token(config))  # it learned


@pytest.fixture(scope="module")
def stage1(teacher, tmp_path_factory):
    """Stage 1 in one process (this one): the run directory (final.pth, knowledge_token.pth)."""
    config, weights = teacher
    out = tmp_path_factory.mktemp("stage1") / "token"
    _run_here("distill-token", config, f"train.init_from={weights}", f"train.output_dir={out}")
    return out


def test_stage1_trains_the_token_alone(teacher, stage1):
    config, weights = teacher
    _check_stage1(stage1, weights, config)


@pytest.mark.slow  # 2-rank variant: stage 1 and stage 2 in one process (stage1, the test below) are the default
@pytest.mark.distributed
def test_stage1_and_stage2_with_output_distillation_under_zero3(teacher, tmp_path):
    config, weights = teacher
    zero3 = ["parallel.backend=deepspeed", "parallel.zero_stage=3", "parallel.zero3_persistence_threshold=0"]
    token_dir = tmp_path / "token"
    _run("distill-token", config, f"train.init_from={weights}", f"train.output_dir={token_dir}", *zero3, nproc=2)
    _check_stage1(token_dir, weights, config)
    token = token_dir / "knowledge_token.pth"
    student = tmp_path / "student"
    _run("train", config, "model.depth=1", f"distill.token={token}", f"distill.teacher_config={config}",
         f"distill.teacher_checkpoint={weights}", "distill.heatmap_weight=0.5", f"train.output_dir={student}",
         *zero3, nproc=2)
    final = _weights(student / "final.pth")
    assert torch.equal(final["knowledge_token"], _weights(token)["knowledge_token"])  # frozen all along
    setup = next(r for r in read_jsonl(student / "metrics.jsonl") if r["kind"] == "setup")
    own = sum(v.numel() for k, v in final.items() if "running" not in k and "num_batches" not in k)
    assert setup["params_full"] == own  # the teacher is not in the wrapped model: no optimizer state for it
    assert setup["teacher_params"] == sum(v.numel() for k, v in _weights(weights).items()
                                          if "running" not in k and "num_batches" not in k)


def test_stage2_token_is_frozen_and_output_distillation_adds_the_teacher_term(teacher, stage1, tmp_path):
    """One process (this one): the token never changes; the first step's loss is the pose loss plus
    heatmap_weight x MSE(student, teacher) -- runs from the same weights and batch at weights 0, 2 and
    4 differ by exactly w x the same positive MSE; the teacher is not in the trained model (no
    optimizer state for it)."""
    config, weights = teacher
    token = stage1 / "knowledge_token.pth"
    base = ["model.depth=1", f"distill.token={token}", "train.max_steps=1", "model.drop_path=0.0"]
    first = {}
    for w in (0, 2, 4):
        out = tmp_path / f"w{w}"
        teacher_sets = [f"distill.teacher_config={config}", f"distill.teacher_checkpoint={weights}",
                        f"distill.heatmap_weight={w}"] if w else []
        _run_here("train", config, *base, *teacher_sets, f"train.output_dir={out}")
        first[w] = next(r["loss"] for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train")
        final = _weights(out / "final.pth")
        assert torch.equal(final["knowledge_token"], _weights(token)["knowledge_token"])
        if w:
            setup = next(r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "setup")
            own = sum(v.numel() for k, v in final.items() if "running" not in k and "num_batches" not in k)
            assert setup["params_full"] == own
            assert setup["teacher_params"] == sum(v.numel() for k, v in _weights(weights).items()
                                                  if "running" not in k and "num_batches" not in k)
    mse = (first[2] - first[0]) / 2
    assert mse > 0
    assert first[4] - first[0] == pytest.approx(4 * mse, rel=1e-4)


def test_the_teacher_stays_frozen_in_eval_mode(teacher):
    from vitpose_scale.config import from_dict
    from vitpose_scale.engine.distill import Teacher

    config, weights = teacher
    cfg = from_dict({"distill": {"teacher_config": str(config), "teacher_checkpoint": str(weights),
                                 "heatmap_weight": 1.0},
                     "model": {"preset": "tiny", "image_size": [128, 96]}})
    t = Teacher(cfg, torch.device("cpu"), torch.float32)
    t.model.train(True)
    assert not t.model.training and not any(m.training for m in t.model.modules())
    assert not any(p.requires_grad for p in t.model.parameters())
    out = t.heatmaps(torch.zeros(2, 3, 128, 96))
    assert out.shape == (2, 17, 32, 24) and not out.requires_grad


def test_bad_teachers_are_refused_at_config_time(teacher, tmp_path):
    from vitpose_scale.config import ConfigError, load_config

    config, weights = teacher
    other = _config(tmp_path, tmp_path / "d2", "other", image_size=[256, 192])
    teacher_sets = [f"distill.teacher_checkpoint={weights}", "distill.heatmap_weight=1"]
    cases = [([f"distill.teacher_config={other}", *teacher_sets], "the teacher's input is [256, 192]"),
             ([f"distill.teacher_config={config}", *teacher_sets, "data.keypoint_set=aic"],
              "expected the same keypoint set"),
             (["distill.heatmap_weight=1"], "distill.teacher_config: required")]
    for sets, message in cases:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
            load_config(config, sets)
        assert "\n" not in str(err.value)


def test_a_token_of_another_width_and_a_token_run_without_teacher_exit_2_in_one_line(teacher, tmp_path):
    from vitpose_scale.models.interop import save_official

    config, _ = teacher
    token = tmp_path / "wide.pth"
    save_official({"knowledge_token": torch.zeros(1, 1, 128)}, token)
    for command, sets, message in [("train", [f"distill.token={token}"], "the token is 128 wide"),
                                   ("distill-token", [], "train.init_from: required by distill-token")]:
        proc = _run(command, config, f"train.output_dir={tmp_path / 'bad'}", *sets, check=False)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and message in proc.stderr and len(lines) == 1, (sets, proc.stderr[-2000:])


def test_plan_counts_the_teachers_weights_and_forward():
    """`vitpose-scale plan` of a distilled ViTPose-B: the ViTPose-L teacher's weights (whole on every
    rank), its transient block activations and one forward per micro-batch are added."""
    from vitpose_scale.config import load_config
    from vitpose_scale.plan import BYTES, GB, Hardware, Setting, evaluate, model_shape

    student = load_config(ROOT / "configs" / "vitpose_b_256x192.yaml")
    distilled = load_config(ROOT / "configs" / "vitpose_b_256x192.yaml", [
        "distill.teacher_config=configs/vitpose_l_256x192.yaml", "distill.teacher_checkpoint=L.pth",
        "distill.heatmap_weight=1"])
    shape, hw, setting = model_shape(student), Hardware(gpus=8), Setting(3, "none", "none", True, 64, 1)
    plain, with_teacher = (evaluate(c, shape, setting, hw, 149_813) for c in (student, distilled))
    large = build_pose_model(load_config(ROOT / "configs" / "vitpose_l_256x192.yaml").model, device="meta")
    b = BYTES[student.parallel.precision]
    extra = sum(p.numel() for p in large.parameters()) * b + 64 * 192 * (4 * 1024 + 4096) * b
    assert (with_teacher.allocated_gb - plain.allocated_gb) * GB == pytest.approx(extra, rel=1e-9)
    assert with_teacher.breakdown["teacher"] > 0
    assert with_teacher.step_s == pytest.approx(plain.step_s + with_teacher.breakdown["teacher"], rel=1e-12)


@pytest.mark.slow
def test_the_cpu_transfer_demonstration_runs_every_variant(tmp_path):
    """bench/distill_demo.py --smoke: teacher, token, and the four student variants, a few steps each."""
    proc = subprocess.run([sys.executable, "bench/distill_demo.py", "--smoke", "--work", str(tmp_path)], cwd=ROOT,
                          env=launcher_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for variant in ("baseline", "token", "heatmap", "token+heatmap"):
        assert f"{variant:>14}: AP" in proc.stdout


def test_a_student_with_the_token_exports_to_onnx_and_not_to_the_hf_layout(tmp_path):
    """The token is part of the student's function: ONNX keeps it (same heatmaps), the Hugging Face
    VitPose cannot hold it (one line, exit 2)."""
    import onnxruntime

    from vitpose_scale.cli import main as cli
    from vitpose_scale.config import from_dict
    from vitpose_scale.models.interop import export_official

    raw = {"model": {"preset": "tiny", "image_size": [64, 48], "knowledge_token": True}}
    cfg = from_dict(raw)
    torch.manual_seed(0)
    model = build_pose_model(cfg.model).eval()
    export_official(model, tmp_path / "student.pth")
    (tmp_path / "config.yaml").write_text(json.dumps(raw))
    assert cli(["export", "--checkpoint", str(tmp_path / "student.pth"), "--format", "hf", "--out",
                str(tmp_path / "hf")]) == 2
    assert cli(["export", "--checkpoint", str(tmp_path / "student.pth"), "--format", "onnx", "--out",
                str(tmp_path / "s.onnx")]) == 0
    images = torch.randn(2, 3, 64, 48)
    got = onnxruntime.InferenceSession(str(tmp_path / "s.onnx")).run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(images), rtol=1e-4, atol=1e-4)
