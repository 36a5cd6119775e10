"""The one place that wraps the model for distribution: DeepSpeed ZeRO 0-3 or torch FSDP2/DDP.

All four wrappers (DeepSpeed, FSDP2, DDP, one process) give the trainer the same small interface,
so the training loop never branches on the backend or the model size.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from vitpose_scale.config import Config, ConfigError
from vitpose_scale.engine.distributed import DistInfo
from vitpose_scale.engine.optim import build_optimizer

BUCKET_ALIGNMENT = 64
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_engine_config(cfg: Config, info: DistInfo, bf16_supported: bool | None = None) -> None:
    """Stop before any work when the config cannot run on this world/hardware."""
    p = cfg.parallel
    per_step = info.world_size * p.grad_accum
    if cfg.train.batch_size % per_step:
        raise ConfigError(
            f"train.batch_size: {cfg.train.batch_size} is not divisible by world_size x parallel.grad_accum "
            f"= {info.world_size} x {p.grad_accum}: expected a multiple of {per_step}")
    if p.precision == "bf16":
        if bf16_supported is None:
            # Native bf16 only (sm_80+): a T4 emulates it, slowly, and would pass the default check.
            bf16_supported = (torch.cuda.is_bf16_supported(including_emulation=False)
                              if info.device.type == "cuda" else True)
        if not bf16_supported:
            raise ConfigError(f"parallel.precision: bf16 is not supported on this device "
                              f"({torch.cuda.get_device_name() if info.device.type == 'cuda' else info.device}): "
                              f"expected fp16 or fp32")
    if p.precision == "fp16" and info.device.type == "cpu":
        raise ConfigError("parallel.precision: fp16 needs a GPU (CPU kernels lack fp16 loss scaling support): "
                          "expected bf16 or fp32 on CPU")


def micro_batch_size(cfg: Config, world_size: int) -> int:
    return cfg.train.batch_size // (world_size * cfg.parallel.grad_accum)


def deepspeed_config(cfg: Config, world_size: int, num_params: int | None = None) -> dict:
    p = cfg.parallel
    # Communication buckets: DeepSpeed's default (5e8 elements, 2 GB in fp32 per rank)
    # is larger than most models here; never allocate more than the model itself.
    bucket = min(p.bucket_size, num_params) if num_params else p.bucket_size
    # ZeRO asserts the all-gather bucket is a multiple of its NCCL alignment (2 elements in
    # 16-bit, 4 in fp32); a cap at an odd parameter count would trip it: round up to 64.
    bucket = -(-bucket // BUCKET_ALIGNMENT) * BUCKET_ALIGNMENT
    zero = {"stage": p.zero_stage, "reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    if p.zero_stage == 3:
        zero.update(stage3_param_persistence_threshold=p.zero3_persistence_threshold,
                    stage3_prefetch_bucket_size=bucket, stage3_gather_16bit_weights_on_model_save=False)
    # ZeRO-Offload (optimizer states and the fp32 master on the host, the step on its CPUs) and
    # ZeRO-Infinity (the same, or the ZeRO-3 parameters, on an NVMe drive).
    if p.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": p.offload_optimizer, "pin_memory": True,
                                     **({"nvme_path": p.nvme_path} if p.offload_optimizer == "nvme" else {})}
    if p.offload_params != "none":
        zero["offload_param"] = {"device": p.offload_params, "pin_memory": True,
                                 **({"nvme_path": p.nvme_path} if p.offload_params == "nvme" else {})}
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size(cfg, world_size),
        "gradient_accumulation_steps": p.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": p.precision == "bf16"},
        "fp16": {"enabled": p.precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10 ** 12,
        "wall_clock_breakdown": False,
    }


# Settings a user's DeepSpeed JSON may not change: they come from the toolkit's config
# (batch sizes from train.batch_size and parallel.grad_accum, precision, ZeRO stage).
FIXED_DEEPSPEED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                        "bf16.enabled", "fp16.enabled", "zero_optimization.stage")


# Sections a user's DeepSpeed JSON may not hold, with the toolkit keys to use instead. The trainer
# builds the optimizer (layer-decay AdamW, or DeepSpeedCPUAdam for offload) and the learning-rate
# schedule itself and passes the optimizer to deepspeed.initialize, which then ignores the JSON's
# optimizer and scheduler (the logged learning rate would not be the one used), and an
# offload_optimizer section without DeepSpeedCPUAdam fails inside DeepSpeed.
OWNED_DEEPSPEED_SECTIONS = {
    "optimizer": "optim.lr, optim.betas, optim.weight_decay, optim.layer_decay (the trainer's AdamW)",
    "scheduler": "optim.schedule, optim.warmup_iters, optim.warmup_ratio, optim.step_epochs, optim.step_gamma",
    "zero_optimization.offload_optimizer": "parallel.offload_optimizer (and parallel.nvme_path)",
    "zero_optimization.offload_param": "parallel.offload_params (and parallel.nvme_path)",
    "zero_optimization.cpu_offload": "parallel.offload_optimizer",  # DeepSpeed's older spelling
    "zero_optimization.cpu_offload_param": "parallel.offload_params",  # likewise
}


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def merge_user_deepspeed_config(generated: dict, path: str, cfg: Config, world_size: int) -> tuple[dict, list[str]]:
    """The generated DeepSpeed config with a user's JSON merged over it, and the keys it changed.

    Refused (ConfigError) where the JSON contradicts the toolkit's config (`train_batch_size`
    is checked against train.batch_size: DeepSpeed derives it otherwise) or holds a section the
    toolkit owns (OWNED_DEEPSPEED_SECTIONS: optimizer, scheduler, offload)."""
    import copy
    import json

    try:
        user = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"parallel.deepspeed_config: {path!r} is not a readable JSON file ({exc})") from None
    if not isinstance(user, dict):
        raise ConfigError(f"parallel.deepspeed_config: {path!r} holds {type(user).__name__}, expected an object")
    for section, toolkit_keys in OWNED_DEEPSPEED_SECTIONS.items():
        parent, _, name = section.rpartition(".")
        holder = user.get(parent) if parent else user
        if isinstance(holder, dict) and name in holder:
            raise ConfigError(f"parallel.deepspeed_config: {path} sets {section}, which the toolkit sets itself "
                              f"(DeepSpeed would ignore it or fail): remove it and use {toolkit_keys} instead")
    flat_user, flat_gen = _flatten(user), _flatten(generated)
    flat_gen["train_batch_size"] = cfg.train.batch_size
    for key in FIXED_DEEPSPEED_KEYS:
        if key in flat_user and flat_user[key] != flat_gen.get(key):
            raise ConfigError(f"parallel.deepspeed_config: {path} sets {key}={flat_user[key]!r} but the config "
                              f"gives {flat_gen.get(key)!r}: set it in the toolkit's config instead "
                              f"(train.batch_size, parallel.grad_accum, parallel.precision, parallel.zero_stage)")
    merged = copy.deepcopy(generated)

    def merge(into: dict, over: dict) -> None:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    merge(merged, {k: v for k, v in user.items() if k != "train_batch_size"})
    changed = sorted(k for k, v in flat_user.items() if k != "train_batch_size" and flat_gen.get(k, object()) != v)
    return merged, changed


def _offload_optimizer(model: nn.Module, cfg: Config):
    """DeepSpeedCPUAdam over the same layer-decay groups: ZeRO-Offload steps on the host's CPUs.

    Its kernel's bias correction is float32 and scales every update by up to ~7e-6 against
    torch AdamW's (steps 2-10); the kernel is handed the exact correction instead
    (optim.host_adam_arguments), so one step equals torch AdamW's to float32 rounding. The type
    stays DeepSpeedCPUAdam (ZeRO checks it by `type(...) ==`): only its op is wrapped."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    from vitpose_scale.engine.optim import ExactBiasCorrection, param_groups

    groups = param_groups(model, cfg)
    for g in groups:
        g.pop("names")
    optimizer = DeepSpeedCPUAdam(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                 weight_decay=cfg.optim.weight_decay, adamw_mode=True)
    optimizer.ds_opt_adam = ExactBiasCorrection(optimizer.ds_opt_adam)
    return optimizer



def _extra(dataset_index: torch.Tensor | None, device) -> tuple:
    """The model's optional second input (each sample's dataset: ViTPose+/++), on the device."""
    return () if dataset_index is None else (dataset_index.to(device),)

class DeepSpeedWrapper:
    kind = "deepspeed"

    def __init__(self, model: nn.Module, cfg: Config, info: DistInfo, resume_world_size: int | None = None):
        import deepspeed

        # A checkpoint written at another world size loads through DeepSpeed's universal format.
        self.load_universal = resume_world_size is not None and resume_world_size != info.world_size
        self.cfg, self.info = cfg, info
        num_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        ds_cfg = deepspeed_config(cfg, info.world_size, num_params)
        if self.load_universal:
            # The universal loader restores the optimizer's parameters only: train.freeze's would keep
            # their fresh initial values (train.init_from is not applied on resume).
            if cfg.train.freeze:
                raise ConfigError(f"train.freeze: resuming at another world size (checkpoint of {resume_world_size} "
                                  f"ranks, now {info.world_size}) would not restore the frozen parameters: resume "
                                  f"with {resume_world_size} ranks, or start a new run from the checkpoint "
                                  f"(train.init_from)")
            ds_cfg["checkpoint"] = {"load_universal": True}
        if cfg.parallel.zero_stage == 3:
            # Parameters a model reads outside its submodules' forwards (the MAE adds the
            # backbone's pos_embed itself): ZeRO-3 must gather them for the model's forward.
            for param in getattr(model, "parameters_used_in_own_forward", lambda: [])():
                deepspeed.zero.register_external_parameter(model, param)
        if cfg.parallel.deepspeed_config:
            ds_cfg, changed = merge_user_deepspeed_config(ds_cfg, cfg.parallel.deepspeed_config, cfg, info.world_size)
            if info.is_main:
                print(f"parallel.deepspeed_config {cfg.parallel.deepspeed_config} changed: "
                      f"{', '.join(changed) or 'nothing'}", flush=True)
        offload = cfg.parallel.offload_optimizer != "none"
        optimizer = _offload_optimizer(model, cfg) if offload else build_optimizer(model, cfg)
        # DeepSpeed would set_device(LOCAL_RANK): wrong where Slurm binds one GPU per task (the
        # visible device is cuda:0); device_rank makes it use the device init_distributed chose.
        args = None
        if info.device.type == "cuda":
            from types import SimpleNamespace

            args = SimpleNamespace(device_rank=info.device.index)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(args=args, model=model, optimizer=optimizer,
                                                                 config=ds_cfg)
        self.module = self.engine.module
        self.dtype = DTYPES[cfg.parallel.precision]
        self._grad_norm = None

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def forward(self, images: torch.Tensor, dataset_index: torch.Tensor | None = None) -> torch.Tensor:
        return self.engine(images.to(self.info.device, self.dtype), *_extra(dataset_index, self.info.device))

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> float | None:
        """Call after every micro-batch; DeepSpeed steps on the accumulation boundary."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if boundary:
            norm = self.engine.get_global_grad_norm()
            return float(norm) if norm is not None else None
        return None

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    @contextlib.contextmanager
    def full_parameters(self):
        """All parameters whole on every rank (ZeRO-3 gathers them)."""
        if self.cfg.parallel.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
                yield self.module
        else:
            yield self.module

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Whole weights as plain CPU tensors (ZeRO-3 gathers them; every rank must call)."""
        with self.full_parameters() as module:
            return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory.parent), tag=directory.name, save_latest=False)

    def _universal(self, directory: Path) -> Path:
        """Convert to DeepSpeed's universal format (ZeRO states at another world size) into a fresh
        private directory, every time: a conversion is never reused, so a stale one (of an older
        step_N written over since), a partial one (an interrupted conversion) or a planted one
        can never be loaded. Its pickles are scanned like the checkpoint's own."""
        import subprocess
        import sys
        import tempfile

        from vitpose_scale.engine.checkpoint import UnsafeCheckpointError, ensure_safe_pickles
        from vitpose_scale.engine.distributed import broadcast_object

        target = None  # rank 0's outcome, shared so that every rank stops the same way
        if self.info.is_main:
            target = Path(tempfile.mkdtemp(prefix=f".universal-{directory.name}-", dir=directory.parent))
            workers = str(max(1, min(8, (os.cpu_count() or 2) // 2)))
            print(f"converting {directory} to DeepSpeed's universal checkpoint for a new world size "
                  f"({workers} workers)", flush=True)
            proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                                   str(directory), "--output_folder", str(target / "u"), "--num_extract_workers",
                                   workers, "--num_merge_workers", workers, "--no_strict"],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                shutil.rmtree(target, ignore_errors=True)
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                target = RuntimeError(f"converting {directory} for a new world size failed: {tail[0]}")
            else:
                try:
                    ensure_safe_pickles(target / "u")
                except UnsafeCheckpointError as exc:
                    shutil.rmtree(target, ignore_errors=True)
                    target = exc
        target = broadcast_object(target)
        if isinstance(target, Exception):
            raise target
        return target / "u"

    def load(self, directory: Path) -> None:
        converted = self._universal(directory) if self.load_universal else None
        try:
            self._load(converted or directory)
        finally:
            if converted is not None:
                if torch.distributed.is_initialized():
                    torch.distributed.barrier()
                if self.info.is_main:
                    shutil.rmtree(converted.parent, ignore_errors=True)

    def _load(self, directory: Path) -> None:
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        path, _ = self.engine.load_checkpoint(str(directory.parent), tag=directory.name,
                                              load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint in {directory}")
        if self.load_universal:
            # ZeRO-3's universal loader copies group 0's hyperparameters onto every group,
            # which would give no-decay groups weight decay: put each group's own back.
            for group, own in zip(self.optimizer.param_groups, hyper):
                group.update(own)
            # It also stores one shared `step` tensor in every sub-group's Adam state; torch's
            # AdamW increments it in place, so it would advance once per group per step
            # (bias correction goes wrong from the second resumed step on). Unshare it.
            inner = self.optimizer.optimizer
            for state in inner.state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].clone()

    def local_param_numel(self) -> tuple[int, int]:
        """(elements this rank stores, elements of the full model)."""
        local = full = 0
        for p in self.module.parameters():
            if hasattr(p, "ds_tensor"):
                # Parameters under the persistence threshold stay whole on every rank.
                local += p.ds_numel if getattr(p, "ds_persist", False) else p.ds_tensor.numel()
                full += p.ds_numel
            else:
                local += p.numel()
                full += p.numel()
        return local, full


class _TorchWrapper:
    """What the torch backends share: layer-decay AdamW, autocast, accumulation, clipping."""

    kind = "none"

    def __init__(self, model: nn.Module, cfg: Config, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.dtype = DTYPES[cfg.parallel.precision]
        self.module = self.model = self._distribute(model.to(info.device))
        self.optimizer = build_optimizer(self.module, cfg)
        self.micro = 0

    def _distribute(self, model: nn.Module) -> nn.Module:
        return model

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def _is_boundary(self) -> bool:
        """True when the coming backward ends an accumulation window."""
        return (self.micro + 1) % self.cfg.parallel.grad_accum == 0

    def forward(self, images: torch.Tensor, dataset_index: torch.Tensor | None = None) -> torch.Tensor:
        images = images.to(self.info.device)
        with torch.autocast(self.info.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.model(images, *_extra(dataset_index, self.info.device))

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.cfg.parallel.grad_accum).backward()

    def _clip(self) -> torch.Tensor:
        # max_norm inf measures without clipping (0 would zero every gradient); DeepSpeed treats 0 as off.
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        return torch.nn.utils.clip_grad_norm_(self.module.parameters(), clip)

    def step(self) -> float | None:
        self.micro += 1
        if self.micro % self.cfg.parallel.grad_accum:
            return None
        norm = self._clip()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Whole weights as plain CPU tensors (every rank must call; rank 0 writes them)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}

    # One file, written by rank 0: the model is whole on every rank.
    def save(self, directory: Path) -> None:
        if self.info.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict()},
                       directory / "model_and_optimizer.pt")

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "model_and_optimizer.pt", map_location=self.info.device, weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def local_param_numel(self) -> tuple[int, int]:
        local = full = 0
        for p in self.module.parameters():
            local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
            full += p.numel()
        return local, full


class PlainWrapper(_TorchWrapper):
    """One process, no distribution (backend `none` at world size 1)."""

    kind = "none"


class DDPWrapper(_TorchWrapper):
    """DistributedDataParallel; gradients are all-reduced only on the last micro-batch of a step."""

    kind = "ddp"

    def _distribute(self, model: nn.Module) -> nn.Module:
        self.ddp = nn.parallel.DistributedDataParallel(model)
        return model

    def forward(self, images: torch.Tensor, dataset_index: torch.Tensor | None = None) -> torch.Tensor:
        # DDP decides in forward whether the coming backward all-reduces.
        sync = contextlib.nullcontext() if self._is_boundary() else self.ddp.no_sync()
        with sync:
            images = images.to(self.info.device)
            with torch.autocast(self.info.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                return self.ddp(images, *_extra(dataset_index, self.info.device))

    def train(self, mode: bool = True) -> None:
        self.ddp.train(mode)


class FSDPWrapper(_TorchWrapper):
    """torch FSDP2 (`fully_shard` per block, then the root); sharded checkpoints through
    torch.distributed.checkpoint (each rank writes its shards; loadable at any world size)."""

    kind = "fsdp"

    def _distribute(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=self.dtype, reduce_dtype=torch.float32)
        for unit in model.backbone.shard_units():
            fully_shard(unit, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model

    def forward(self, images: torch.Tensor, dataset_index: torch.Tensor | None = None) -> torch.Tensor:
        # Gradients are reduce-scattered only at the end of an accumulation window.
        self.module.set_requires_gradient_sync(self._is_boundary())
        return self.model(images.to(self.info.device, self.dtype), *_extra(dataset_index, self.info.device))

    def _clip(self) -> torch.Tensor:
        norm = super()._clip()
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Whole weights as plain CPU tensors on rank 0 (gathered from the shards; the state dict
        of an FSDP2 module holds DTensors even while unsharded)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save(self, directory: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.module, self.optimizer)
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(directory))

    def load(self, directory: Path) -> None:
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        from vitpose_scale.engine.checkpoint import dcp_load, ensure_safe_dcp_metadata

        ensure_safe_dcp_metadata(directory)
        model_sd, optim_sd = get_state_dict(self.module, self.optimizer)  # also creates the Adam states
        state = {"model": model_sd, "optimizer": optim_sd}
        dcp_load(state, directory)
        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])


def build_model_for_backend(cfg: Config, info: DistInfo, builder) -> nn.Module:
    """`builder(cfg)` with identical initial weights on every rank (same seed), under zero.Init if asked.

    The model's `init_weights()` must draw every parameter, so seeding right before it gives
    the same weights with and without zero.Init.
    """
    if uses_zero_init(cfg):
        import deepspeed

        from vitpose_scale.models.init import deferred_init

        # Parameters are partitioned as they are created: the weights are drawn below, gathered.
        with deepspeed.zero.Init(config_dict_or_path=deepspeed_config(cfg, info.world_size)), deferred_init():
            model = builder(cfg)
        # Rank 0 draws every weight with the parameters gathered; DeepSpeed broadcasts its values.
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
            if info.is_main:
                torch.manual_seed(cfg.train.seed)
                model.init_weights()
        return model
    model = builder(cfg)
    torch.manual_seed(cfg.train.seed)  # the same draws as the zero.Init path
    model.init_weights()
    return model


def uses_zero_init(cfg: Config) -> bool:
    return cfg.parallel.backend == "deepspeed" and cfg.parallel.zero_stage == 3 and cfg.parallel.zero_init


@contextlib.contextmanager
def whole_parameters_for_loading(model: nn.Module, cfg: Config):
    """Parameters whole while a checkpoint is copied in before wrapping (zero.Init partitions them)."""
    if uses_zero_init(cfg):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
            yield
    else:
        yield


def wrap(model: nn.Module, cfg: Config, info: DistInfo, resume_world_size: int | None = None):
    """The backend's wrapper; `resume_world_size`: ranks that wrote the checkpoint about to be loaded."""
    if cfg.parallel.backend == "deepspeed":
        return DeepSpeedWrapper(model, cfg, info, resume_world_size=resume_world_size)
    if cfg.parallel.backend == "fsdp":
        return FSDPWrapper(model, cfg, info)
    return DDPWrapper(model, cfg, info) if info.world_size > 1 else PlainWrapper(model, cfg, info)
