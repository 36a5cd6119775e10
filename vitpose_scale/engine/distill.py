"""Knowledge transfer from a larger ViTPose (the paper's "transferability"; docs/distillation.md).

* Knowledge token, stage 1 (`vitpose-scale distill-token`, :class:`TokenTrainer`): a randomly
  initialised token is appended to the visual tokens of the frozen teacher and trained alone on
  the pose loss; every other tensor of the teacher (BatchNorm statistics included) stays bitwise
  as loaded. The token goes to `<output_dir>/knowledge_token.pth`.
* Knowledge token, stage 2 (`distill.token`): the student appends that token, frozen, to its own
  visual tokens while it trains as usual.
* Output distillation (`distill.heatmap_weight`): the teacher's heatmaps as a second target; the
  teacher runs whole on every rank, in eval mode, without gradients, outside the optimizer.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from vitpose_scale.config import Config, ConfigError
from vitpose_scale.engine.parallel import build_model_for_backend, whole_parameters_for_loading
from vitpose_scale.engine.trainer import Trainer

TOKEN_FILE = "knowledge_token.pth"
TOKEN_KEY = "knowledge_token"


class TokenTrainer(Trainer):
    """Stage 1: the teacher (`train.init_from`, required) frozen in eval mode, one token learning."""

    desc = "token"

    def check_paths(self) -> None:
        if not self.cfg.train.init_from:
            raise ConfigError("train.init_from: required by distill-token (the trained teacher whose knowledge the "
                              "token learns); e.g. --set train.init_from=runs/teacher/best.pth")
        super().check_paths()

    def build_model(self, fresh: bool):
        from vitpose_scale.models.weights import read_state
        from vitpose_scale.models.interop import CheckpointError, adapt_state_dict, load_state_dict_strict
        from vitpose_scale.models.pose import build_pose_model

        cfg = dataclasses.replace(self.cfg, model=dataclasses.replace(self.cfg.model, knowledge_token=True))
        model = build_model_for_backend(cfg, self.info, lambda c: build_pose_model(c.model))
        if fresh:
            path = self.cfg.train.init_from
            with whole_parameters_for_loading(model, cfg):
                try:
                    state, meta = read_state(path)
                    state = adapt_state_dict(state, model, tuple(meta["pos_embed_grid"]) if meta.get("pos_embed_grid")
                                             else None)
                    state[TOKEN_KEY] = model.knowledge_token.detach().clone()  # the token keeps its random start
                    load_state_dict_strict(model, state, f"train.init_from={path}")
                except CheckpointError as exc:
                    raise CheckpointError(f"train.init_from={path}: {exc}") from None
        for name, param in model.named_parameters():
            param.requires_grad = name == TOKEN_KEY
        model.frozen = True
        return model

    def final_meta(self) -> dict:
        return {"step": self.step, "kind": "knowledge_token"}

    def train(self) -> dict:
        result = super().train()
        if result.get("finished"):
            self.write_token(self.out / TOKEN_FILE)
        return result

    def write_token(self, path: Path) -> None:
        """The token alone (every rank gathers, rank 0 writes), with what a student must match."""
        import torch.distributed as dist

        from vitpose_scale.models.interop import save_official

        token = self.wrapper.full_state_dict()[TOKEN_KEY]
        if self.info.is_main:
            m = self.cfg.model.resolved()
            save_official({TOKEN_KEY: token}, path, {
                "kind": "knowledge_token", "width": int(token.shape[-1]), "step": self.step,
                "teacher": str(self.cfg.train.init_from), "teacher_preset": m.preset,
                "keypoint_set": self.cfg.data.keypoint_set, "image_size": list(m.image_size)})
            print(f"knowledge token ({token.shape[-1]} wide) written to {path}: give it to the student as "
                  f"distill.token={path}", flush=True)
        if dist.is_initialized():
            dist.barrier()


def read_token(path: str | Path, width: int) -> torch.Tensor:
    """A stage-1 token file's (1, 1, width) token; a file of another width or kind is a config error
    (one line, exit 2): the token must be as wide as the student's tokens."""
    from vitpose_scale.models.interop import CheckpointError, extract_state_dict, safe_load

    raw = safe_load(path)
    state = extract_state_dict(raw, str(path))
    token = state.get(TOKEN_KEY)
    if token is None or token.dim() != 3 or token.shape[:2] != (1, 1):
        raise CheckpointError(f"distill.token={path}: no {TOKEN_KEY} of shape (1, 1, width) in it: expected the "
                              f"{TOKEN_FILE} that `vitpose-scale distill-token` writes")
    if token.shape[-1] != width:
        raise ConfigError(f"distill.token={path}: the token is {token.shape[-1]} wide (learned with a "
                          f"{token.shape[-1]}-wide teacher), the student's tokens are {width}: expected a token "
                          f"learned with a teacher of the student's width")
    return token.float()


def install_token(model: nn.Module, cfg: Config) -> None:
    """Stage 2: the student's knowledge token = distill.token's, frozen (never in the optimizer)."""
    token = read_token(cfg.distill.token, model.backbone.embed_dim)
    with whole_parameters_for_loading(model, cfg), torch.no_grad():
        model.knowledge_token.copy_(token)
    model.knowledge_token.requires_grad = False


class Teacher:
    """Output distillation's teacher: its config's model with its checkpoint, whole on this rank,
    eval mode, no gradients, the student's precision; not wrapped by any backend (no optimizer
    state, no gradient buckets)."""

    def __init__(self, cfg: Config, device: torch.device, dtype: torch.dtype):
        from vitpose_scale.config import load_config
        from vitpose_scale.models.weights import load_weights
        from vitpose_scale.models.pose import build_pose_model

        teacher_cfg = load_config(cfg.distill.teacher_config)
        self.model = build_pose_model(teacher_cfg.model)
        load_weights(self.model, cfg.distill.teacher_checkpoint)
        for p in self.model.parameters():
            p.requires_grad = False
        self.model.frozen = True
        self.model = self.model.to(device).eval()
        self.device, self.dtype = device, dtype
        self.params = sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.model(images).float()


def heatmap_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between the student's and the teacher's heatmaps (every joint and pixel), fp32."""
    return (student.float() - teacher.float()).pow(2).mean()


__all__ = ["TokenTrainer", "Teacher", "install_token", "read_token", "heatmap_distillation_loss", "TOKEN_FILE"]
