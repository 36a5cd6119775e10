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
import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from vitpose_scale.config import Config
from vitpose_scale.engine import checkpoint as ckpt
from vitpose_scale.engine.distributed import DistInfo, all_reduce_max
from vitpose_scale.engine.metrics import MetricsLog, SavedActivationMeter
from vitpose_scale.engine.optim import lr_factor, set_lr
from vitpose_scale.engine.parallel import check_engine_config, deepspeed_config, micro_batch_size, wrap
from vitpose_scale.engine.trainer import PREEMPTED_EXIT_CODE, Trainer, _Preemption

FINAL_NAME = "final.pth"


def _zero3(cfg: Config) -> bool:
    return cfg.parallel.backend == "deepspeed" and cfg.parallel.zero_stage == 3


def build_mae_for_backend(cfg: Config, info: DistInfo):
    """Identical initial weights on every rank (same seed); under zero.Init when asked."""
    from vitpose_scale.models.mae import build_mae

    # init_weights() draws every parameter, so seeding right before it gives the same weights
    # with and without zero.Init (there rank 0 draws, DeepSpeed broadcasts).
    if _zero3(cfg) and cfg.parallel.zero_init:
        import deepspeed

        with deepspeed.zero.Init(config_dict_or_path=deepspeed_config(cfg, info.world_size)):
            model = build_mae(cfg)  # skips its own init: the parameters are partitioned already
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
            if info.is_main:
                torch.manual_seed(cfg.train.seed)
                model.init_weights()
    else:
        model = build_mae(cfg)
        torch.manual_seed(cfg.train.seed)
        model.init_weights()
    if _zero3(cfg):
        import deepspeed

        # The MAE reads backbone.pos_embed in its own forward, not in ViT.forward: ZeRO-3 must
        # be told to gather it there (it is under the persistence threshold only at small sizes).
        deepspeed.zero.register_external_parameter(model, model.backbone.pos_embed)
    return model


class MAEPretrainer(Trainer):
    def __init__(self, cfg: Config, info: DistInfo):
        from vitpose_scale.data.pretrain import build_pretrain_dataset

        check_engine_config(cfg, info)
        self.cfg, self.info = cfg, info
        self.out = Path(cfg.train.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        if info.is_main:  # rank 0 first: it may generate the synthetic set
            cfg.save(self.out / "config.yaml")
            train_set = build_pretrain_dataset(cfg)
        if dist.is_initialized():
            dist.barrier()
        if not info.is_main:
            train_set = build_pretrain_dataset(cfg)
        self.train_set, self.val_set, self.val_ann = train_set, None, None
        self.micro_bs = micro_batch_size(cfg, info.world_size)
        self.steps_per_epoch = (len(train_set) // info.world_size) // (self.micro_bs * cfg.parallel.grad_accum)
        if self.steps_per_epoch == 0:
            raise ValueError(f"pretraining set of {len(train_set)} images is smaller than one global batch "
                             f"({cfg.train.batch_size})")
        total = cfg.train.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.train.max_steps) if cfg.train.max_steps else total

        resume_dir = self._find_resume()
        meta = json.loads((resume_dir / "meta.json").read_text()) if resume_dir else None
        load_universal = False
        if meta and meta["world_size"] != info.world_size and cfg.parallel.backend == "deepspeed":
            resume_dir = self._to_universal(resume_dir)
            load_universal = True

        model = build_mae_for_backend(cfg, info)
        torch.manual_seed(cfg.train.seed + 1000 * info.rank + 1)  # per-rank mask draws
        # No layer-wise lr decay in pretraining: the optimizer sees layer_decay = 1 (all scales 1).
        flat = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, layer_decay=1.0))
        self.wrapper = wrap(model, flat, info, load_universal=load_universal)
        self.lr_scales = [g.get("lr_scale", 1.0) for g in self.wrapper.param_groups]
        self.flops_per_image = self._forward_flops()
        self.log = MetricsLog(self.out / "metrics.jsonl", info.is_main)
        self.step, self.best_ap = 0, -1.0
        self.history: list[dict] = []
        self.activation_bytes = 0  # read by the inherited _log_train
        if resume_dir is not None:
            loaded = ckpt.load_training_checkpoint(self.wrapper, resume_dir, info.rank)
            self.step = loaded["step"]
            if info.is_main:
                print(f"resumed from {resume_dir} at step {self.step} "
                      f"(written by {meta['world_size']} ranks, now {info.world_size})", flush=True)
        self.preemption = _Preemption()
        self._log_setup()

    def _forward_flops(self) -> float:
        from vitpose_scale.models.mae import mae_forward_flops_per_image

        return mae_forward_flops_per_image(self.cfg)

    def _meta(self) -> dict:
        meta = super()._meta()
        meta["kind"] = "mae"
        return meta

    def train(self) -> dict:
        from tqdm import tqdm

        cfg, info = self.cfg, self.info
        accum = cfg.parallel.grad_accum
        bar = tqdm(total=self.total_steps, initial=self.step, desc="mae", disable=not info.is_main,
                   dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 10.0)
        self.wrapper.train(True)
        window_t, window_images, loss_sum, loss_n = time.time(), 0, 0.0, 0
        preempted = False
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch
            batches = iter(self._loader(epoch, (self.step % self.steps_per_epoch) * accum))
            for _ in range(self.steps_per_epoch - self.step % self.steps_per_epoch):
                set_lr(self.wrapper.optimizer, cfg.optim.lr,
                       lr_factor(self.step, cfg, self.steps_per_epoch, self.total_steps), self.lr_scales)
                step_loss = 0.0
                for _micro in range(accum):
                    batch = next(batches)
                    with SavedActivationMeter() as meter:  # saved-activation bytes, as the pose loop logs
                        loss, _pred, _mask = self.wrapper.forward(batch["img"])
                    self.activation_bytes = meter.bytes
                    step_loss += self._global_loss(loss) / accum  # stops on NaN/inf on every rank
                    self.wrapper.backward(loss)
                    grad_norm = self.wrapper.step()
                self.step += 1
                window_images += cfg.train.batch_size
                loss_sum, loss_n = loss_sum + step_loss, loss_n + 1
                self.history.append({"step": self.step, "loss": step_loss})
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", epoch=epoch)
                if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                    self._log_train(window_t, window_images, loss_sum / loss_n, grad_norm, epoch)
                    window_t, window_images, loss_sum, loss_n = time.time(), 0, 0.0, 0
                save_every = cfg.train.save_every or self.steps_per_epoch
                if self.step % save_every == 0 and self.step < self.total_steps:
                    self.save()
                if all_reduce_max(float(self.preemption.requested), info.device):
                    preempted = True
                    break
                if self.step >= self.total_steps:
                    break
            if preempted:
                break
        bar.close()
        path = self.save()
        if preempted:
            if info.is_main:
                print(f"preempted: checkpoint {path} written; exiting {PREEMPTED_EXIT_CODE} for requeue", flush=True)
            return {"preempted": True, "step": self.step}
        m = self.cfg.model
        self.export_weights(self.out / FINAL_NAME, {
            "step": self.step, "kind": "mae", "image_size": list(m.image_size), "patch_size": m.patch_size,
            "patch_padding": 0, "preset": m.preset, "loss": self.history[-1]["loss"] if self.history else None})
        return {"preempted": False, "step": self.step, "final": str(self.out / FINAL_NAME)}


def run_pretraining(cfg: Config, info: DistInfo) -> dict:
    trainer = MAEPretrainer(cfg, info)
    result = trainer.train()
    result["history"] = trainer.history
    return result


__all__ = ["MAEPretrainer", "run_pretraining", "build_mae_for_backend", "FINAL_NAME"]
