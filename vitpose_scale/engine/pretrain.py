"""MAE pretraining on the pose trainer's engine (docs/reference.md §4).

The same pieces as pose training: ``check_engine_config`` and ``wrap``
(DeepSpeed ZeRO 0-3 / FSDP2 / DDP), the rank-sharded resumable train loader,
atomic step checkpoints with RNG states and exact mid-epoch resume, the JSONL
metrics, the NaN guard and SIGTERM/SIGUSR1 preemption. :class:`MAEPretrainer`
subclasses :class:`~vitpose_scale.engine.trainer.Trainer` to reuse its
resume/checkpoint/logging methods; only the set-up (dataset, model, optimizer
groups) and the loop body (the model returns its own loss, no evaluation) differ.

There is no validation loss; at every checkpoint rank 0 writes
``<output_dir>/reconstructions/step_<N>.png``: a few fixed training crops (epoch 0's
augmentation), each as masked input (masked patches grey), reconstruction (the visible
patches pasted back, as the MAE paper shows them) and original. Every rank runs that
forward (ZeRO-3 / FSDP gather the weights in it), with a fixed mask seed on a forked RNG:
the same masks at every step, and the training's random stream (exact resume) untouched.

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
import sys
from pathlib import Path

import numpy as np
import torch

from vitpose_scale.config import Config, ConfigError, check_run_paths
from vitpose_scale.engine.parallel import build_model_for_backend
from vitpose_scale.engine.trainer import Trainer

FINAL_NAME = "final.pth"
RECONSTRUCTION_IMAGES = 4  # rows of the reconstruction picture
FILL_RGB = (128, 128, 128)  # the masked patches of the "masked input" panel
PANEL_LABELS = ("masked input", "reconstruction", "original")


def _to_uint8(chw: torch.Tensor) -> np.ndarray:
    """An ImageNet-normalised (3, H, W) image -> (H, W, 3) uint8 RGB (the inverse of normalize_image)."""
    from vitpose_scale.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    x = chw.detach().float().cpu().numpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def reconstruction_panels(images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch: int,
                          norm_pix_loss: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: (masked input, reconstruction, original), (H, W, 3) uint8 RGB.

    ``images`` (B, 3, H, W) ImageNet-normalised, ``pred`` (B, L, p*p*3) and ``mask`` (B, L; 1 = masked)
    as the MAE returns them. With ``norm_pix_loss`` the prediction is in per-patch normalised units:
    each patch gets its target's mean and std back (the loss's own statistics). The reconstruction
    shows the prediction on the masked patches and the input on the visible ones."""
    from vitpose_scale.models.mae import patchify, unpatchify

    images, pred, mask = images.float().cpu(), pred.float().cpu(), mask.float().cpu()
    grid = (images.shape[2] // patch, images.shape[3] // patch)
    if norm_pix_loss:
        target = patchify(images, patch)
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1.0e-6) ** 0.5 + mean
    recon = unpatchify(pred, patch, grid)
    hidden = unpatchify(mask[..., None].expand(-1, -1, patch * patch * 3), patch, grid)  # 1 on masked pixels
    pasted = images * (1 - hidden) + recon * hidden
    out = []
    for n in range(images.shape[0]):
        original = _to_uint8(images[n])
        masked = original.copy()
        masked[hidden[n, 0].numpy() > 0.5] = FILL_RGB
        out.append((masked, _to_uint8(pasted[n]), original))
    return out


class MAEPretrainer(Trainer):
    """The pose trainer with MAE's data, model, flat lr and self-supervised loss; no evaluation."""

    desc = "mae"
    _recon_images: torch.Tensor | None = None  # the fixed crops of the reconstruction picture

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

    def save(self) -> Path:
        """The checkpoint, then the reconstruction picture of its weights (the pretrainer's evaluation)."""
        path = super().save()
        self.draw_reconstructions()
        return path

    def _fixed_images(self) -> torch.Tensor:
        """RECONSTRUCTION_IMAGES crops spread over the training set, with epoch 0's augmentation: the same
        images at every step and after a resume."""
        if self._recon_images is None:
            ds = self.train_set
            index = np.unique(np.linspace(0, len(ds) - 1, min(RECONSTRUCTION_IMAGES, len(ds))).round().astype(int))
            epoch = getattr(ds, "epoch", None)
            if epoch is not None:
                ds.set_epoch(0)
            try:
                self._recon_images = torch.stack([ds[int(i)]["img"] for i in index])
            finally:
                if epoch is not None:  # the loader reads this dataset: its epoch as it was
                    ds.set_epoch(epoch)
        return self._recon_images

    @torch.no_grad()
    def reconstruct(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, pred, mask) of the fixed crops; every rank must call (ZeRO-3 gathers in the forward)."""
        images = self._fixed_images()
        device = self.info.device
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        self.wrapper.train(False)
        try:
            with torch.random.fork_rng(devices=cuda):  # fixed masks; training's RNG stream left as it was
                torch.default_generator.manual_seed(self.cfg.train.seed)
                if cuda:
                    torch.cuda.manual_seed(self.cfg.train.seed)
                _loss, pred, mask = self.wrapper.forward(images)
        finally:
            self.wrapper.train(True)
        return images, pred, mask

    def draw_reconstructions(self) -> Path | None:
        """``<output_dir>/reconstructions/step_<N>.png`` (rank 0), also shown to the trackers."""
        images, pred, mask = self.reconstruct()
        if not self.info.is_main:
            return None
        import cv2

        from vitpose_scale.visualize import image_rows

        rows = reconstruction_panels(images, pred, mask, self.cfg.model.patch_size, self.cfg.mae.norm_pix_loss)
        h, w = rows[0][0].shape[:2]
        title = f"{self.out.name}: step {self.step}, {self.cfg.mae.mask_ratio:.0%} of the patches masked"
        picture = image_rows(rows, PANEL_LABELS, title, scale=max(1, 256 // max(h, w)))
        path = self.out / "reconstructions" / f"step_{self.step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), picture):  # a picture is not worth stopping the training for
            print(f"warning: could not write {path}", file=sys.stderr, flush=True)
            return None
        self.log.image("mae/reconstructions", cv2.cvtColor(picture, cv2.COLOR_BGR2RGB), self.step)
        return path

    def final_meta(self) -> dict:
        m = self.cfg.model
        return {"step": self.step, "kind": "mae", "image_size": list(m.image_size), "patch_size": m.patch_size,
                "patch_padding": 0, "preset": m.preset,
                "loss": self.history[-1]["loss"] if self.history else None}


__all__ = ["MAEPretrainer", "FINAL_NAME", "reconstruction_panels"]
