"""MAE pretraining: masking, the loss against a loop reference, learning, data, and the
2-rank DeepSpeed run whose exported encoder initialises a pose model."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitpose_scale.config import load_config
from vitpose_scale.models.mae import build_mae, patchify, unpatchify
from launch_env import free_port, launcher_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL = ["mae.decoder_dim=32", "mae.decoder_depth=1", "mae.decoder_heads=4", "model.activation_checkpointing=false"]


def _cfg(*sets):
    return load_config(ROOT / "configs" / "mae_demo.yaml", [*SMALL, *sets])


def test_encoder_sees_only_the_visible_quarter_and_masks_differ_per_sample():
    torch.manual_seed(0)
    model = build_mae(_cfg())
    n = model.grid[0] * model.grid[1]  # 8 x 6 = 48 patches at 128x96
    keep = round(n * (1 - 0.75))
    seen = []
    model.backbone.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    images = torch.randn(4, 3, 128, 96)
    torch.manual_seed(1)
    loss, pred, mask = model(images)
    assert seen == [torch.Size([4, keep, model.backbone.embed_dim])]
    assert pred.shape == (4, n, 16 * 16 * 3) and mask.shape == (4, n)
    assert (mask.sum(1) == n - keep).all() and set(mask.unique().tolist()) == {0.0, 1.0}
    assert len({tuple(m.tolist()) for m in mask}) == 4  # every sample its own mask
    # The encoder really ignores the masked patches: change only their pixels, same latent.
    torch.manual_seed(2)
    latent, mask, _ = model.encode(images)
    pix = mask.reshape(4, 1, 8, 1, 6, 1).expand(4, 3, 8, 16, 6, 16).reshape(images.shape).bool()
    changed = torch.where(pix, torch.randn_like(images) * 5, images)
    torch.manual_seed(2)
    latent2, mask2, _ = model.encode(changed)
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(latent, latent2, rtol=0, atol=1e-6)


def test_loss_equals_a_loop_reference_of_the_normalised_masked_mse():
    torch.manual_seed(0)
    model = build_mae(_cfg())
    images = torch.randn(3, 3, 128, 96)
    loss, pred, mask = model(images)
    p, (gh, gw) = 16, model.grid
    # patchify = unfold's (channel, row, col) patch vectors reordered to (row, col, channel)
    unfolded = F.unfold(images, p, stride=p).transpose(1, 2).reshape(3, gh * gw, 3, p, p)
    assert torch.equal(patchify(images, p), unfolded.permute(0, 1, 3, 4, 2).reshape(3, gh * gw, -1))
    assert torch.equal(unpatchify(patchify(images, p), p, (gh, gw)), images)
    total, count = 0.0, 0
    for b in range(3):
        for idx in range(gh * gw):
            if mask[b, idx] == 0:
                continue
            i, j = divmod(idx, gw)
            target = images[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p].permute(1, 2, 0).reshape(-1).double()
            target = (target - target.mean()) / (target.var(unbiased=True) + 1e-6).sqrt()
            total += ((pred[b, idx].double() - target) ** 2).mean().item()
            count += 1
    assert count == 3 * (gh * gw - round(gh * gw * 0.25))
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_optimizer_steps_on_a_fixed_batch_reduce_the_loss_and_groups_follow_the_recipe():
    from vitpose_scale.engine.optim import build_optimizer, param_groups

    cfg = _cfg("optim.lr=5e-3", "optim.layer_decay=1.0")
    torch.manual_seed(0)
    model = build_mae(cfg)
    groups = param_groups(model, cfg)
    names = {n: g for g in groups for n in g["names"]}
    assert "backbone.pos_embed" not in names and "decoder_pos_embed" not in names  # fixed sine-cosine
    assert all(g["lr_scale"] == 1.0 for g in groups)
    assert names["backbone.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    assert names["decoder_blocks.0.norm1.weight"]["weight_decay"] == 0.0
    assert names["decoder_pred.bias"]["weight_decay"] == 0.0
    opt = build_optimizer(model, cfg)
    assert opt.defaults["betas"] == (0.9, 0.95)
    # Smooth images: a patch is predictable from its visible neighbours (white noise is not).
    images = F.interpolate(torch.randn(8, 3, 8, 6), size=(128, 96), mode="bilinear", align_corners=False)
    losses = []
    for _ in range(40):
        torch.manual_seed(5)  # the same masks every step: only the weights change
        loss, _, _ = model(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


def test_person_crops_take_every_non_crowd_person_and_are_deterministic(coco_sample):
    from vitpose_scale.data.pretrain import ImageFolderDataset, PersonCropDataset

    cfg = load_config(ROOT / "configs" / "mae_demo.yaml", [
        "data.kind=coco", f"data.root={coco_sample}", "data.train_ann=test_coco.json", "data.train_images=.",
        "data.extra_train=[]"])
    ds = PersonCropDataset(cfg)
    anns = json.loads((coco_sample / "test_coco.json").read_text())["annotations"]
    assert len(ds) == sum(1 for a in anns if not a.get("iscrowd", 0))  # people without keypoints too
    ds.set_epoch(3)
    a = ds[1]
    assert a["img"].shape == (3, 128, 96) and a["index"] == 1
    assert torch.equal(a["img"], ds[1]["img"])
    ds.set_epoch(4)
    assert not torch.equal(a["img"], ds[1]["img"])
    folder = ImageFolderDataset(coco_sample, (64, 48))
    assert len(folder) == 4 and folder[0]["img"].shape == (3, 64, 48)
    # The crop depends on (seed, epoch, index) only: a fresh dataset (a resumed run) draws the same one.
    assert torch.equal(folder[2]["img"], ImageFolderDataset(coco_sample, (64, 48))[2]["img"])
    assert not torch.equal(folder[2]["img"], ImageFolderDataset(coco_sample, (64, 48), seed=1)[2]["img"])


@pytest.mark.distributed
def test_deepspeed_two_ranks_resume_exactly_and_the_export_initialises_a_pose_model(tmp_path):
    from vitpose_scale.engine.distributed import DistInfo
    from vitpose_scale.jsonl import read_jsonl
    from vitpose_scale.engine.trainer import _init_weights_from
    from vitpose_scale.models.pose import build_pose_model

    data, out = tmp_path / "synthetic", tmp_path / "run"  # rank 0 generates the synthetic people
    sets = [f"data.root={data}", "data.synthetic_train=24", "data.synthetic_val=4", "data.extra_train=[]",
            f"train.output_dir={out}", "train.batch_size=8", "train.max_steps=4", "train.save_every=2",
            "train.log_every=1", "optim.warmup_iters=2", "parallel.zero3_persistence_threshold=0",
            "mae.decoder_depth=1"]
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           "launch/pretrain_mae.py", "--config", "configs/mae_demo.yaml"]
    for s in sets:
        cmd += ["--set", s]

    def run():
        proc = subprocess.run(cmd, cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return proc

    run()
    first_records = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    first = {r["step"]: r["loss"] for r in first_records}
    assert sorted(first) == [1, 2, 3, 4]
    setup = next(r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "setup")
    assert all(abs(n - setup["params_full"] / 2) < 1000 for n in setup["params_local_per_rank"])  # ZeRO-3 shards
    # Throw away step 4: the rerun resumes at step 2 and must redo steps 3 and 4 bit for bit.
    import shutil

    shutil.rmtree(out / "checkpoints" / "step_00000004")
    proc = run()
    assert "at step 2" in proc.stdout
    # metrics.jsonl holds every step once: the replayed steps' records replace the first run's.
    again = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    assert {r["step"]: r["loss"] for r in again} == first
    assert all(r["time"] > first_records[-1]["time"] for r in again[2:])  # written by the rerun

    saved = torch.load(out / "final.pth", weights_only=True)
    state = saved["state_dict"]
    assert saved["meta"]["kind"] == "mae" and "mask_token" in state and "decoder_pred.weight" in state
    # at the MAE demo's input size: equal grids, so the pos_embed transfers unchanged
    pose_cfg = load_config(ROOT / "configs" / "demo.yaml", [f"train.init_from={out / 'final.pth'}",
                                                            "model.image_size=[128,96]"])
    pose = build_pose_model(pose_cfg.model)
    fresh_last_norm = pose.backbone.last_norm.weight.clone()
    _init_weights_from(pose, pose_cfg, DistInfo(0, 1, 0, torch.device("cpu")))
    own = pose.state_dict()
    blocks = [k for k in state if k.startswith("backbone.blocks.")]
    assert len(blocks) == 4 * 12
    for key in blocks + ["backbone.patch_embed.proj.weight", "backbone.pos_embed"]:
        assert torch.equal(own[key], state[key]), key
    assert torch.equal(pose.backbone.last_norm.weight, fresh_last_norm)  # MAE's final norm is not transferred
    assert np.isfinite(first[4])


def test_a_landscape_mae_transfers_with_its_own_grid(tmp_path):
    """A 6x8 (landscape) MAE has as many tokens as the 8x6 pose grid: the exported grid, not the count,
    decides, so the table is resized (bicubic, official) rather than copied row-major into the wrong shape."""
    import dataclasses

    from vitpose_scale.models.interop import export_official
    from vitpose_scale.models.mae_transfer import load_init_weights
    from vitpose_scale.models.pose import build_pose_model

    cfg = _cfg("model.image_size=[96,128]")
    torch.manual_seed(0)
    mae = build_mae(cfg)
    with torch.no_grad():
        mae.backbone.pos_embed.normal_()  # not the sine-cosine table: any transposition shows
    assert mae.grid == (6, 8)
    export_official(mae, tmp_path / "final.pth", meta={"kind": "mae"})  # what the pretrainer writes
    raw = torch.load(tmp_path / "final.pth", weights_only=True)
    assert raw["meta"]["pos_embed_grid"] == [6, 8]

    table = mae.backbone.pos_embed.detach()
    grid = table[:, 1:].reshape(1, 6, 8, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(8, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    expected = torch.cat([table[:, :1], grid.reshape(1, 48, -1)], dim=1)
    pose_cfg = dataclasses.replace(cfg.model, image_size=[128, 96])
    pose = build_pose_model(pose_cfg)
    assert pose.backbone.grid == (8, 6)
    assert load_init_weights(pose, tmp_path / "final.pth").startswith("MAE checkpoint: backbone only")
    torch.testing.assert_close(pose.backbone.pos_embed.detach(), expected, rtol=0, atol=1e-6)

    # A file without the grid: model.pretrain_grid names it; the table is kept as it is and the
    # forward pass resizes it to the 8x6 grid of the images, giving the same features.
    del raw["meta"]["pos_embed_grid"]
    torch.save(raw, tmp_path / "no_grid.pth")
    kept = build_pose_model(dataclasses.replace(pose_cfg, pretrain_grid=[6, 8]))
    load_init_weights(kept, tmp_path / "no_grid.pth")
    assert torch.equal(kept.backbone.pos_embed, mae.backbone.pos_embed)
    kept.backbone.last_norm.load_state_dict(pose.backbone.last_norm.state_dict())
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(kept.backbone(x), pose.backbone(x), rtol=0, atol=1e-5)
