"""The training loop: the same code for a tiny model on 2 CPU ranks and a 1 B model on many GPUs.

step -> log -> evaluate -> checkpoint, with exact resume (RNG states and data
position), preemption handling (SIGTERM/SIGUSR1 -> checkpoint -> exit 143 for
requeue) and a NaN/inf guard that stops without touching the last good checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from vitpose_scale.config import Config, ConfigError, check_run_paths
from vitpose_scale.engine import checkpoint as ckpt
from vitpose_scale.engine import run_dir
from vitpose_scale.engine.resume_check import check_resume_config
from vitpose_scale.engine.watchdog import StepWatchdog
from vitpose_scale.engine.distributed import (DistInfo, LauncherWatch, all_reduce_max, average_buffers,
                                              broadcast_object, main_rank_first)
from vitpose_scale.engine.metrics import (MetricsLog, SavedActivationMeter, drop_records_after, held_tensor_bytes,
                                          peak_memory_mb, training_tflops)
from vitpose_scale.engine.optim import lr_factor, set_lr
from vitpose_scale.engine.parallel import (build_model_for_backend, check_engine_config, micro_batch_size,
                                           whole_parameters_for_loading, wrap)

PREEMPTED_EXIT_CODE = 143


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf."""


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """MSE with target weight (mean over joints and pixels), computed in fp32."""
    w = weight.unsqueeze(-1)  # (B, K, 1, 1)
    return ((pred.float() - target) * w).pow(2).mean()


class _Preemption:
    """Sets a flag on SIGTERM/SIGUSR1, or when the launcher that started this rank is gone;
    the loop checkpoints and exits 143 at the next step.

    The launcher watch covers what launchers do not forward: the deepspeed runner dies of a
    SIGTERM or SIGUSR1 sent to it alone (its child launch.py and the ranks would train on),
    and torchrun dies of SIGUSR1 unless started with --signals-to-handle.
    """

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. under some test runners)
                pass
        self._watch = LauncherWatch(on_exit=self._launcher_gone)

    def _handler(self, signum, _frame):
        self.requested = True

    def _launcher_gone(self, pid: int) -> None:
        print(f"launcher process {pid} exited: checkpointing and stopping as on SIGTERM", file=sys.stderr,
              flush=True)
        self.requested = True


def _injected_fault(rank: int) -> tuple[int, str] | None:
    """Test hook: VITPOSE_SCALE_FAULT="rank=R,step=S[,kind=K]" makes rank R fail at step S:
    kind `raise` (default) raises at its start (one rank's failure must end every rank promptly),
    `nan_weights` writes a NaN into this rank's share of the weights after its update (the
    checkpoint guard must find it whichever rank holds it)."""
    spec = os.environ.get("VITPOSE_SCALE_FAULT")
    if not spec:
        return None
    fields = dict(item.split("=", 1) for item in spec.split(","))
    return (int(fields["step"]), fields.get("kind", "raise")) if int(fields["rank"]) == rank else None


def _poison_first_weight(module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            t = getattr(p, "ds_tensor", p.data)
            t = t.to_local() if hasattr(t, "to_local") else t
            if t.numel():
                t.view(-1)[0] = float("nan")
                return


def _init_weights_from(model, cfg: Config, info: DistInfo) -> None:
    """train.init_from: any layout (ViTPose, Hugging Face file or directory, safetensors, MAE or bare
    ViT backbone, a training checkpoint), detected from its keys. Only checkpoint problems are
    reported as such; any other exception is a bug and propagates as it is."""
    from vitpose_scale.models.weights import read_state
    from vitpose_scale.models.interop import CheckpointError
    from vitpose_scale.models.mae_transfer import init_weights_from_state

    path = cfg.train.init_from
    try:
        state, meta = read_state(path)
        grid = tuple(meta["pos_embed_grid"]) if meta.get("pos_embed_grid") else None
        source = init_weights_from_state(model, state, str(path), grid)
    except CheckpointError as exc:
        raise CheckpointError(f"train.init_from={path}: {exc}") from None
    if info.is_main:
        print(f"initialised from {path} ({source})", flush=True)


class Trainer:
    """Pose training. Subclasses (MAE pretraining) override the hooks: `build_datasets`,
    `build_model`, `optim_config`, `forward_loss`, `forward_flops`, `final_meta`.

    Never branches on the backend: everything backend-specific is behind `engine.parallel`.
    """

    desc = "train"

    def __init__(self, cfg: Config, info: DistInfo):
        check_engine_config(cfg, info)
        self.cfg, self.info = cfg, info
        self.out = Path(cfg.train.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.check_paths()
        # One run per directory, and every rank sees it: before anything is written there.
        self.lock = run_dir.claim(self.out, info.rank, info.world_size)
        # Which checkpoint, and can this config continue it: before config.yaml is rewritten (a
        # refused resume must not leave its config beside the checkpoints it could not load).
        resume_dir = self._find_resume()
        meta = ckpt.read_meta(resume_dir) if resume_dir else None
        if meta is not None:
            check_resume_config(meta, cfg, resume_dir)
        if info.is_main:
            cfg.save(self.out / "config.yaml")
        # rank 0 first: it may generate the synthetic set
        self.train_set, self.val_set, self.val_ann = main_rank_first(self.build_datasets)
        self.micro_bs = micro_batch_size(cfg, info.world_size)
        self.steps_per_epoch = (len(self.train_set) // info.world_size) // (self.micro_bs * cfg.parallel.grad_accum)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size: the training set of {len(self.train_set)} samples is smaller "
                              f"than one global batch ({cfg.train.batch_size})")
        total = cfg.train.epochs * self.steps_per_epoch
        # The schedule's length; train.stop_at pauses earlier without changing it.
        self.total_steps = min(total, cfg.train.max_steps) if cfg.train.max_steps else total

        model = self.build_model(fresh=resume_dir is None)
        torch.manual_seed(cfg.train.seed + 1000 * info.rank + 1)  # per-rank stochastic depth / mask draws
        self.wrapper = wrap(model, self.optim_config(), info,
                            resume_world_size=meta["world_size"] if meta else None)
        self.lr_scales = [g.get("lr_scale", 1.0) for g in self.wrapper.param_groups]
        self.teacher = None
        if cfg.distill.heatmap_weight > 0 and type(self).forward_loss is Trainer.forward_loss:
            from vitpose_scale.engine.distill import Teacher
            from vitpose_scale.engine.parallel import DTYPES

            self.teacher = Teacher(cfg, info.device, DTYPES[cfg.parallel.precision])
        self.flops_per_image = self.forward_flops()
        self.step, self.best_ap, self.activation_bytes, self._saved_step = 0, -1.0, 0, -1
        self.history: list[dict] = []
        if resume_dir is not None:
            loaded = ckpt.load_training_checkpoint(self.wrapper, resume_dir, info.rank)
            self.step, self.best_ap, self._saved_step = loaded["step"], loaded.get("best_ap", -1.0), loaded["step"]
            if info.is_main:
                drop_records_after(self.out / "metrics.jsonl", self.step)  # the steps about to be replayed
                print(f"resumed from {resume_dir} at step {self.step} "
                      f"(written by {meta['world_size']} ranks, now {info.world_size})", flush=True)
        from vitpose_scale.engine.tracking import build_loggers

        self.log = MetricsLog(self.out / "metrics.jsonl", info.is_main, build_loggers(cfg, self.out, info.is_main))
        self.preemption = _Preemption()
        self.watchdog = StepWatchdog(info.rank, info.world_size, cfg.train.stall_timeout_s)
        self._fault = _injected_fault(info.rank)
        self._log_setup()

    # -------------------------------------------------------------- hooks --
    def check_paths(self) -> None:
        check_run_paths(self.cfg)

    def build_datasets(self):
        """(train set, validation set or None, validation annotation file or None). Multi-task
        (data.tasks): the main dataset's validation set; `self.val_tasks` lists every task's."""
        from vitpose_scale.data.coco import build_datasets

        if not self.cfg.data.tasks:
            return build_datasets(self.cfg)
        from vitpose_scale.data.multitask import build_task_datasets

        train, self.val_tasks = build_task_datasets(self.cfg)
        return train, self.val_tasks[0][2], self.val_tasks[0][3]

    def build_model(self, fresh: bool):
        from vitpose_scale.models.pose import build_pose_model

        model = build_model_for_backend(self.cfg, self.info, lambda cfg: build_pose_model(cfg.model))
        if self.cfg.train.init_from and fresh:
            with whole_parameters_for_loading(model, self.cfg):
                _init_weights_from(model, self.cfg, self.info)
        if self.cfg.distill.token:  # stage 2 of the knowledge token: appended, frozen (also on resume)
            from vitpose_scale.engine.distill import install_token

            install_token(model, self.cfg)
        if self.cfg.train.freeze:  # before wrapping: frozen parameters get no optimizer state or gradients
            from vitpose_scale.models.freeze import apply_freeze

            frozen = apply_freeze(model, self.cfg.train.freeze)
            if self.info.is_main:
                print(f"train.freeze {self.cfg.train.freeze}: {frozen['frozen']:,} of {frozen['total']:,} parameters "
                      f"frozen", flush=True)
                if fresh and not self.cfg.train.init_from:
                    print("note: train.freeze without train.init_from: the frozen parts keep their random initial "
                          "weights", file=sys.stderr, flush=True)
        return model

    def optim_config(self) -> Config:
        return self.cfg

    def forward_loss(self, batch: dict) -> torch.Tensor:
        from vitpose_scale.data.transforms import normalize_batch

        # Training crops arrive as uint8: normalising on the device is free and copies 4x less.
        images = normalize_batch(batch["img"], self.info.device)
        if "dataset_index" in batch:  # ViTPose+/++: each sample's head and expert
            from vitpose_scale.data.multitask import multitask_loss

            index = batch["dataset_index"].to(self.info.device)
            pred = self.wrapper.forward(images, index)
            joints, weights = self._task_loss_terms(pred.device)
            return multitask_loss(pred, batch["target"].to(pred.device), batch["target_weight"].to(pred.device),
                                  index, joints, weights)
        pred = self.wrapper.forward(images)
        loss = heatmap_loss(pred, batch["target"].to(pred.device), batch["target_weight"].to(pred.device))
        if self.teacher is not None:  # output distillation: the teacher's heatmaps as a second target
            from vitpose_scale.engine.distill import heatmap_distillation_loss

            loss = loss + self.cfg.distill.heatmap_weight * heatmap_distillation_loss(pred, self.teacher.heatmaps(images))
        return loss

    def _task_loss_terms(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per dataset index: the head's joint count and the dataset's loss weight."""
        joints = [val.keypoints.num_keypoints for _, _, val, _ in self.val_tasks]
        weights = [float(t.get("loss_weight", 1.0)) for t in self.cfg.data.tasks]
        return (torch.tensor(joints, dtype=torch.float32, device=device),
                torch.tensor(weights, dtype=torch.float32, device=device))

    def forward_flops(self) -> float:
        from vitpose_scale.models.pose import forward_flops_per_image

        return forward_flops_per_image(self.cfg.model)

    def final_meta(self) -> dict:
        return {"step": self.step}

    def _log_setup(self) -> None:
        local, full = self.wrapper.local_param_numel()
        per_rank = [local]
        if dist.is_initialized() and self.info.world_size > 1:
            per_rank = [None] * self.info.world_size
            dist.all_gather_object(per_rank, local)
        self.log.write(step=self.step, kind="setup", world_size=self.info.world_size, params_full=full,
                       params_local_per_rank=per_rank, steps_per_epoch=self.steps_per_epoch,
                       total_steps=self.total_steps, forward_gflops_per_image=self.flops_per_image / 1e9,
                       **({"teacher_params": self.teacher.params} if self.teacher is not None else {}))

    # ------------------------------------------------------------ helpers --
    def _find_resume(self) -> Path | None:
        """The newest checkpoint that verifies against its recorded sizes and checksums. With
        train.resume=auto, damaged ones newer than it are renamed aside (they would otherwise
        count as the newest for keep_last), and finding checkpoints but none intact stops the
        run (exit 4) rather than silently starting again: auto_or_scratch allows that."""
        r = self.cfg.train.resume
        if r in (None, "", "none", "no", "false", "never"):
            return None
        auto = r in ("auto", "auto_or_scratch")
        if auto:  # rank 0's listing for every rank (a listing on NFS may lag)
            candidates = broadcast_object(ckpt.step_directories(self.ckpt_root))
        else:
            candidates = [Path(r)]
            if not ckpt.is_complete(candidates[0]):
                raise ckpt.CheckpointError(f"train.resume={r}: not a complete checkpoint directory (no meta.json)")
        damaged = []
        for directory in candidates:
            problems = (ckpt.verify_checkpoint(directory, self.info.rank, self.info.world_size)
                        if ckpt.is_complete(directory) else [f"no {ckpt.META} (incomplete or altered)"])
            if not problems:
                return directory
            message = f"checkpoint {directory} is damaged and was not loaded: " + "; ".join(problems)
            if not auto:
                raise ckpt.CheckpointError(message)
            damaged.append(f"{directory.name}: " + "; ".join(problems))
            if self.info.is_main:
                print(message + " (trying the previous one)", file=sys.stderr, flush=True)
                ckpt.set_aside(directory, problems[0])
            if dist.is_initialized():
                dist.barrier()
        # Set aside by this or an earlier start (a requeue after exit 4 must not start afresh either).
        aside = sorted(p.name for p in self.ckpt_root.glob("damaged-step_*")) if auto else []
        if (damaged or aside) and r != "auto_or_scratch":
            listed = " | ".join(damaged) if damaged else "set aside earlier: " + ", ".join(aside)
            raise ckpt.CheckpointError(
                f"no intact checkpoint in {self.ckpt_root} (the damaged ones are renamed to damaged-*); not "
                f"starting from scratch without being asked: set train.resume=auto_or_scratch (or never): {listed}")
        if (damaged or aside) and self.info.is_main:
            print("no intact checkpoint left: starting from scratch (train.resume=auto_or_scratch)",
                  file=sys.stderr, flush=True)
        return None

    def _meta(self) -> dict:
        return {"step": self.step, "epoch": self.step // self.steps_per_epoch, "world_size": self.info.world_size,
                "best_ap": self.best_ap, "samples_seen": self.step * self.cfg.train.batch_size,
                "backend": self.cfg.parallel.backend, "config": self.cfg.to_dict()}

    def _last_good_checkpoint(self) -> str:
        """The newest checkpoint that verifies (rank 0 checks, every rank gets the answer)."""
        found = "none written yet"
        if self.info.is_main:
            for directory in ckpt.complete_checkpoints(self.ckpt_root):
                if not ckpt.verify_checkpoint(directory):
                    found = str(directory)
                    break
        return broadcast_object(found)

    def _check_weights_finite(self) -> None:
        """Stop before a checkpoint holds NaN/inf weights: a finite but huge loss can still
        break every weight in the update (a resume would load them and stop again, for ever)."""
        bad = 0.0
        for p in self.wrapper.module.parameters():
            t = getattr(p, "ds_tensor", None)
            if t is not None:  # ZeRO-3: this rank's partition, without its padding (never initialised)
                group = getattr(p, "ds_process_group", None)
                start = t.numel() * (dist.get_rank(group) if dist.is_initialized() else 0)
                t = t.narrow(0, 0, max(0, min(t.numel(), p.ds_numel - start)))
            else:
                t = p.data
            t = t.to_local() if hasattr(t, "to_local") else t  # FSDP2 DTensor shard
            if t.numel() and not bool(torch.isfinite(t).all()):
                bad = 1.0
                break
        if all_reduce_max(bad, self.info.device):
            raise TrainingDiverged(f"the weights are NaN/inf after step {self.step}: no checkpoint written; the "
                                   f"last good checkpoint ({self._last_good_checkpoint()}) is left as it was")

    def save(self) -> Path:
        average_buffers(self.wrapper.module)
        self._check_weights_finite()
        self._saved_step = self.step
        return ckpt.save_training_checkpoint(self.wrapper, self.ckpt_root, self.step, self._meta(),
                                             self.info.rank, self.cfg.train.keep_last, self.info.world_size)

    def export_weights(self, path: Path, meta: dict) -> None:
        """Official-format fp32 file of the current weights (every rank gathers, rank 0 writes)."""
        from vitpose_scale.models.interop import save_official

        state = self.wrapper.full_state_dict()
        backbone = getattr(self.wrapper.module, "backbone", None)
        if self.info.is_main:
            grid = {"pos_embed_grid": list(backbone.grid)} if backbone is not None else {}
            save_official(state, path, {**grid, **meta})
        if dist.is_initialized():
            dist.barrier()

    # --------------------------------------------------------- evaluation --
    @torch.no_grad()
    def evaluate(self) -> dict:
        average_buffers(self.wrapper.module)
        self.wrapper.train(False)
        if not self.cfg.data.tasks:
            stats = self._evaluate_one(lambda images: self.wrapper.forward(images).float(), self.val_set,
                                       self.val_ann, "")
        else:  # every head on its own validation set with its own metric, in one distributed pass
            stats = {}
            for name, index, val_set, val_ann in self.val_tasks:
                k = val_set.keypoints.num_keypoints

                def forward(images, index=index, k=k):
                    tags = torch.full((images.shape[0],), index, dtype=torch.long)
                    return self.wrapper.forward(images, tags).float()[:, :k]

                task_stats = self._evaluate_one(forward, val_set, val_ann, f"{name}_")
                if task_stats is not None:
                    stats.update({f"{name}/{key}": v for key, v in task_stats.items()})
                    if index == 0:  # the main dataset's numbers keep their plain names (best checkpoint)
                        stats.update(task_stats)
        self.wrapper.train(True)
        return broadcast_object(stats)

    def _evaluate_one(self, forward, val_set, val_ann, tag: str) -> dict | None:
        from vitpose_scale.eval.runner import evaluate_model

        stats, results = evaluate_model(forward, val_set, val_ann, self.cfg, self.info.rank, self.info.world_size,
                                        progress=self.info.is_main)
        if self.info.is_main:
            (self.out / "eval").mkdir(parents=True, exist_ok=True)
            (self.out / "eval" / f"results_{tag}step{self.step:08d}.json").write_text(json.dumps(results))
            images = {i: im["file_name"] for i, im in val_set.images.items()}
            from vitpose_scale.visualize import record_boxes

            self.log.predictions_figure(results, val_set.img_dir, images, self.step,
                                        self.out / "eval" / f"predictions_{tag}step{self.step:08d}.png",
                                        val_set.keypoints, tag=f"eval/predictions{'/' + tag[:-1] if tag else ''}",
                                        stats=stats, boxes=record_boxes(val_set.records, self.cfg.data.bbox_padding))
        return stats

    def _should_eval(self, at_end: bool) -> bool:
        """Every train.eval_every steps (0: every epoch) and once at the end; -1: never."""
        every = self.cfg.train.eval_every
        if self.val_set is None or every < 0:
            return False
        return at_end or (self.step % (every or self.steps_per_epoch) == 0 and self.step < self.total_steps)

    def _eval_and_keep_best(self) -> None:
        t0 = time.time()
        metrics = self.evaluate()
        self.log.write(step=self.step, kind="eval", seconds=time.time() - t0, **metrics)
        from vitpose_scale.eval.scoring import primary

        key = primary(self.val_set.keypoints)  # AP, or PCKh for MPII
        if self.info.is_main:
            shown = [key] + [k for k in ("AP50", "AR", "PCKh@0.1") if k in metrics]
            print(f"step {self.step}: " + "  ".join(f"{k} {metrics[k]:.4f}" for k in shown), flush=True)
            for name, index, val_set, _ in getattr(self, "val_tasks", [])[1:]:
                task_key = f"{name}/{primary(val_set.keypoints)}"
                print(f"step {self.step}: {task_key} {metrics[task_key]:.4f}", flush=True)
        if metrics[key] > self.best_ap:
            self.best_ap = metrics[key]
            self.export_weights(self.out / "best.pth", {"step": self.step, key: self.best_ap})

    # --------------------------------------------------------------- loop --
    def _loader(self, epoch: int, start_batch: int):
        from vitpose_scale.data.loader import build_train_loader

        return build_train_loader(self.train_set, self.micro_bs, self.info.rank, self.info.world_size,
                                  self.cfg.train.seed, epoch, self.cfg.data.num_workers,
                                  start_index=start_batch * self.micro_bs,
                                  group_by_image=self.cfg.data.group_by_image)

    def _global_loss(self, loss: torch.Tensor) -> float:
        """Mean of the ranks' losses (equal batch sizes: the global batch's loss); stops on NaN/inf."""
        value = loss.detach().float().reshape(1)
        if dist.is_initialized() and self.info.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)  # a NaN or inf anywhere makes the sum non-finite on every rank
            value /= self.info.world_size
        value = value.item()
        if not math.isfinite(value):
            raise TrainingDiverged(f"loss is {value} at step {self.step + 1}: stopping; the last good "
                                   f"checkpoint ({self._last_good_checkpoint()}) is left as it was")
        return value

    def _optimizer_step(self, batches, measure_activations: bool) -> tuple[float, float | None]:
        """grad_accum micro-batches and one optimizer step: (global mean loss, grad norm)."""
        accum = self.cfg.parallel.grad_accum
        total, grad_norm = None, None
        for micro in range(accum):
            batch = next(batches)
            if measure_activations and micro == 0:  # a Python call per saved tensor: logged steps only
                with SavedActivationMeter(self.wrapper.module) as meter:
                    loss = self.forward_loss(batch)
                self.activation_bytes = meter.bytes
            else:
                loss = self.forward_loss(batch)
            total = loss.detach() if total is None else total + loss.detach()
            self.wrapper.backward(loss)
            grad_norm = self.wrapper.step()
        return self._global_loss(total / accum), grad_norm

    def train(self) -> dict:
        """Run to the end of the schedule, to train.stop_at (paused) or to a preemption signal."""
        from tqdm import tqdm

        cfg, info, spe = self.cfg, self.info, self.steps_per_epoch
        stop_at = min(cfg.train.stop_at or self.total_steps, self.total_steps)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.desc, disable=not info.is_main,
                   dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 10.0)
        self.wrapper.train(True)
        window_t, window_images, loss_sum, loss_n = time.time(), 0, 0.0, 0
        batches, outcome = None, "finished"
        save_every = cfg.train.save_every or spe
        while self.step < stop_at:
            epoch = self.step // spe
            if batches is None or self.step % spe == 0:
                batches = iter(self._loader(epoch, (self.step % spe) * cfg.parallel.grad_accum))
            set_lr(self.wrapper.optimizer, cfg.optim.lr, lr_factor(self.step, cfg, spe, self.total_steps),
                   self.lr_scales)
            if self._fault == (self.step + 1, "raise"):
                raise RuntimeError(f"injected fault (VITPOSE_SCALE_FAULT) at step {self.step + 1}")
            logged = (self.step + 1) % cfg.train.log_every == 0 or self.step + 1 == self.total_steps
            loss, grad_norm = self._optimizer_step(batches, measure_activations=logged)
            self.step += 1
            if self._fault == (self.step, "nan_weights"):
                _poison_first_weight(self.wrapper.module)
            self.watchdog.beat(self.step)
            window_images += cfg.train.batch_size
            loss_sum, loss_n = loss_sum + loss, loss_n + 1
            self.history.append({"step": self.step, "loss": loss})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3e}", epoch=epoch)
            if logged:
                self._log_train(window_t, window_images, loss_sum / loss_n, grad_norm, epoch)
                window_t, window_images, loss_sum, loss_n = time.time(), 0, 0.0, 0
            if self.step % save_every == 0 and self.step < self.total_steps:
                self.watchdog.pause()
                self.save()
            if self._should_eval(at_end=False):
                self.watchdog.pause()
                self._eval_and_keep_best()
            if all_reduce_max(float(self.preemption.requested), info.device):
                outcome = "preempted"
                break
        else:
            if self.step < self.total_steps:
                outcome = "paused"
        bar.close()
        self.watchdog.stop()
        if outcome != "finished":
            path = self.save() if self._saved_step != self.step else ckpt.step_dir(self.ckpt_root, self.step)
            if info.is_main and outcome == "preempted":
                print(f"preempted: checkpoint {path} written; exiting {PREEMPTED_EXIT_CODE} for requeue", flush=True)
            return {outcome: True, "step": self.step, "checkpoint": str(path)}
        if self._saved_step != self.step:
            self.save()
        if self._should_eval(at_end=True):
            self._eval_and_keep_best()
        self.export_weights(self.out / "final.pth", self.final_meta())
        return {"finished": True, "step": self.step, "best_ap": self.best_ap, "final": str(self.out / "final.pth")}

    def _log_train(self, t0: float, images: int, loss: float, grad_norm, epoch: int) -> None:
        elapsed = max(time.time() - t0, 1e-9)
        ips = images / elapsed
        tflops = training_tflops(self.flops_per_image, ips)
        # Peak memory (accelerator allocator, or RSS on CPU), and two exact accountings that do
        # not depend on the allocator: tensors held for model states (parameters, gradients,
        # optimizer states, ZeRO buffers) and activations saved for backward in one micro-batch.
        mem = {"peak": peak_memory_mb(self.info.device),
               "model_states": held_tensor_bytes(self.wrapper.module, self.wrapper.optimizer) / 2 ** 20,
               "activations": self.activation_bytes / 2 ** 20}
        mems = [mem]
        if dist.is_initialized() and self.info.world_size > 1:
            mems = [None] * self.info.world_size
            dist.all_gather_object(mems, mem)
        lr = self.wrapper.optimizer.param_groups[-1]["lr"]
        self.log.write(step=self.step, kind="train", epoch=epoch, loss=loss, lr=lr, grad_norm=grad_norm,
                       lr_group0=self.wrapper.optimizer.param_groups[0]["lr"],
                       images_per_s=ips, seconds_per_step=elapsed * self.cfg.train.batch_size / max(images, 1),
                       tflops=tflops, mfu=tflops / self.info.world_size / self.cfg.train.peak_tflops,
                       peak_mem_mb_per_rank=[m["peak"] for m in mems],
                       model_state_mb_per_rank=[m["model_states"] for m in mems],
                       activation_mb_per_rank=[m["activations"] for m in mems])


__all__ = ["Trainer", "heatmap_loss", "TrainingDiverged", "PREEMPTED_EXIT_CODE"]
