"""MAE pretraining on the pose trainer's engine (REFERENCE §4).

The same pieces as pose training: ``check_engine_config`` and ``wrap``
(DeepSpeed ZeRO 0-3 / FSDP2 / DDP), the rank-sharded resumable train loader,
atomic step checkpoints with RNG states and exact mid-epoch resume, the JSONL
metrics, the NaN guard and SIGTERM/SIGUSR1 preemption. :class:`MAEPretrainer`
subclasses :class:`~vitpose_scale.engine.trainer.Trainer` to reuse its
resume/checkpoint/logging methods; only the set-up (dataset, model, optimizer
groups) and the loop body (the model returns its own loss, no evaluation) differ.

Optimizer: AdamW with ``cfg.optim`` as given (MAE: betas (0.9, 0.95), wd 0.05,
lr = 1.5e-4 x batch / 256, cosine with warmup from 0: set in the config, not
here) and no layer-wise decay (every group's lr scale is 1). The encoder's and
decoder's sine-cosine position tables are frozen and not in the optimizer.

At the end ``<output_dir>/final.pth`` holds ``{'meta', 'state_dict'}`` with the
whole MAE (``backbone.*``, ``mask_token``, ``decoder_*``) in fp32; give it to
``train.init_from`` of a pose config: ``models.mae_transfer`` keeps the
backbone and drops the rest.
"""
from __future__ import annotations

import dataclasses

import torch

from vitpose_scale.config import Config, ConfigError, check_run_paths
from vitpose_scale.engine.parallel import build_model_for_backend
from vitpose_scale.engine.trainer import Trainer

FINAL_NAME = "final.pth"


class MAEPretrainer(Trainer):
    """The pose trainer with MAE's data, model, flat lr and self-supervised loss; no evaluation."""

    desc = "mae"

    def build_datasets(self):
        from vitpose_scale.data.pretrain import build_pretrain_dataset

        return build_pretrain_dataset(self.cfg), None, None

    def check_paths(self) -> None:
        if self.cfg.train.freeze:  # the first hook the trainer calls: refused before any work
            raise ConfigError(f"train.freeze: got {self.cfg.train.freeze}, but MAE pretraining trains every "
                              f"parameter (partial finetuning is for pose training): expected []")
        # Person crops come from the training sets only; image folders are checked by their loader.
        check_run_paths(self.cfg, need_val=False) if self.cfg.mae.source == "person_crops" else \
            check_run_paths(dataclasses.replace(self.cfg, data=dataclasses.replace(self.cfg.data, kind="folder")))

    def build_model(self, fresh: bool):
        from vitpose_scale.models.mae import build_mae

        return build_model_for_backend(self.cfg, self.info, build_mae)

    def optim_config(self) -> Config:
        # No layer-wise lr decay in pretraining: every group's lr scale is 1.
        return dataclasses.replace(self.cfg, optim=dataclasses.replace(self.cfg.optim, layer_decay=1.0))

    def forward_loss(self, batch: dict) -> torch.Tensor:
        loss, _pred, _mask = self.wrapper.forward(batch["img"])
        return loss

    def forward_flops(self) -> float:
        from vitpose_scale.models.mae import mae_forward_flops_per_image

        return mae_forward_flops_per_image(self.cfg)

    def _meta(self) -> dict:
        return {**super()._meta(), "kind": "mae"}

    def final_meta(self) -> dict:
        m = self.cfg.model
        return {"step": self.step, "kind": "mae", "image_size": list(m.image_size), "patch_size": m.patch_size,
                "patch_padding": 0, "preset": m.preset,
                "loss": self.history[-1]["loss"] if self.history else None}


__all__ = ["MAEPretrainer", "FINAL_NAME"]
