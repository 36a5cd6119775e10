"""`vitpose-scale plan`: which training settings fit a GPU budget, and how fast they run (docs/full_scale.md).

For the model and resolution of a config and a number of GPUs of a given memory,
every combination of ZeRO stage (0-3), optimizer offload (ZeRO 1-3), parameter
offload (ZeRO-3), activation checkpointing and micro-batch (gradient
accumulation makes up the config's global batch) is costed:

memory per rank, split the way the trainer accounts it (metrics.jsonl):
  model states    what DeepSpeed holds between steps (DeepSpeed 0.19 layouts,
                  checked against `held_tensor_bytes` on 2 CPU ranks):
                    ZeRO-0  fp32: 4P weights + 8P Adam;  bf16: 2P + 4P fp32 master + 8P Adam
                    ZeRO-1/2  bP flat weights + (4 master + 8 Adam) P/w
                    ZeRO-3  (b + 4 + 8 + b) P/w partitions of weights, master, Adam, gradients
                            + b x persistent small params (whole on every rank) + b x one reduce bucket
                  (P parameters, w ranks, b bytes of the compute dtype; in fp32 DeepSpeed
                  keeps a separate fp32 "master" copy too; with train.freeze the master copy,
                  Adam and the gradients cover the trainable parameters only). Offload moves the
                  master copy, Adam and its fp32 gradient partition (optimizer), or the weight
                  partitions (params), to host memory.
  activations     bytes autograd saves for backward in one micro-batch (what
                  SavedActivationMeter counts), op by op: see `saved_activation_bytes`.
  working set     gradients during backward, one block's activations again (its
                  recomputation under checkpointing, and its gradients), comm buckets
                  (ZeRO-0: the flattened copy of every gradient DeepSpeed all-reduces, the
                  bytes torch DDP's buckets hold; ZeRO-1/2: the reduce bucket; ZeRO-3: the
                  gathered layer and the prefetch bucket).
  allocated       model states + activations + working set: what torch.cuda.max_memory_allocated
                  reports (checked against the official ViTPose-B log: docs/full_scale.md).
  allowance       CONTEXT_GB for the CUDA context, cuBLAS/NCCL workspaces, plus
                  FRAGMENTATION of everything else for the caching allocator.

step time = compute + communication + offload traffic, not overlapped (an upper bound):
  compute         forward FLOPs (models/pose.py) x images x (3, or 4 with checkpointing:
                  the recomputed forward) / (peak x MFU), where the peak is the GPU's dense
                  peak for the precision (GPUS; fp32 at the TF32 peak only with --tf32) and the
                  MFU reaches the calibrated value (MFU) for large micro-batches:
                  mfu x T / (T + MFU_HALF_TOKENS) with T tokens per micro-batch
  communication   ring collectives at the per-GPU bus bandwidth (NVLink inside a node,
                  the network across nodes): ZeRO-0/1 all-reduce gradients once per step,
                  ZeRO-2 reduce-scatters every micro-batch and all-gathers weights after
                  the step, ZeRO-3 all-gathers weights in forward and backward and
                  reduce-scatters gradients every micro-batch
  offload         gradients down and weights up over PCIe once per step, the CPU Adam
                  step; parameter offload fetches every weight partition over PCIe twice
                  per micro-batch
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from vitpose_scale.config import Config

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
FP32, ADAM = 4, 8  # fp32 master copy; Adam's two fp32 moments
GB = 1e9
CONTEXT_GB = 1.5  # CUDA context + cuBLAS workspace + NCCL buffers per process
FRAGMENTATION = 0.10  # caching-allocator slack on top of what tensors hold
MFU_HALF_TOKENS = 1024  # tokens per micro-batch at which the GPU reaches half the assumed MFU
# Model FLOPs utilisation at large micro-batches, calibrated on the official ViTPose-B log
# (github.com/ViTAE-Transformer/ViTPose logs/vitpose-b.log.json: 8 x A100-40GB, fp32 with TF32,
# 64 images per GPU, 0.192 s per step): 3 x 34.2 GFLOP x 64 images in 0.188 s of compute (the
# step less the modelled all-reduce) is 22 % of the 156 TFLOP/s TF32 peak, 24 % before the
# T / (T + MFU_HALF_TOKENS) factor (0.92 at 12288 tokens). One point: tests/test_plan.py checks it.
MFU = 0.24
DS_ALLREDUCE_ELEMENTS = 500_000_000  # DeepSpeed's ZeRO-0 all-reduce flattens up to this many gradients at once


@dataclass(frozen=True)
class GPU:
    """Memory (GB, as sold) and dense peaks (TFLOP/s, no sparsity) from the vendors' datasheets."""
    name: str
    mem_gb: float
    fp32: float
    tf32: float
    bf16: float
    fp16: float

    def peak(self, precision: str, tf32: bool = False) -> float:
        if precision == "fp32":
            return self.tf32 if tf32 else self.fp32
        return getattr(self, precision)


# NVIDIA datasheets: A100 Tensor Core GPU (SXM), H100 Tensor Core GPU (SXM5), H200 Tensor Core GPU
# (SXM), A10 Tensor Core GPU, L40S GPU. The bf16/fp16 and TF32 figures are the dense ones (half of
# the "with sparsity" numbers the datasheets print first). docs/full_scale.md lists them.
GPUS = {
    "a100-40gb": GPU("A100-40GB", 40, fp32=19.5, tf32=156, bf16=312, fp16=312),
    "a100-80gb": GPU("A100-80GB", 80, fp32=19.5, tf32=156, bf16=312, fp16=312),
    "h100": GPU("H100 SXM", 80, fp32=67, tf32=494.7, bf16=989.4, fp16=989.4),
    "h200": GPU("H200 SXM", 141, fp32=67, tf32=494.7, bf16=989.4, fp16=989.4),
    "a10": GPU("A10", 24, fp32=31.2, tf32=62.5, bf16=125, fp16=125),
    "l40s": GPU("L40S", 48, fp32=91.6, tf32=183, bf16=362, fp16=362),
}
DEFAULT_GPU = "h100"
LAYER_NORM_STATS = 4  # mean and rstd per token, fp32 on GPUs
# People with keypoints per epoch of the training sets the presets use (annotation file name -> count).
KNOWN_TRAIN_SETS = {
    "person_keypoints_train2017.json": 149_813,  # COCO train2017 instances with num_keypoints > 0
    "aic_train.json": 378_352,  # AI Challenger train, converted to the COCO layout (docs/datasets.md)
}


# ------------------------------------------------------------------ shape --
@dataclass(frozen=True)
class ModelShape:
    """What the memory and FLOP formulas need, read off the model built on the meta device."""
    params: int
    param_sizes: tuple[int, ...]  # numel of every parameter (ZeRO-3 partitions each one)
    block_linear_weights: tuple[int, ...]  # numel of each Linear weight inside the blocks
    outer_conv_weights: tuple[int, ...]  # numel of the patch embedding's and the head's kernels
    buffer_bytes: int  # BatchNorm running statistics: whole on every rank
    depth: int
    dim: int
    hidden: int
    heads: int
    grid: tuple[int, int]
    image_size: tuple[int, int]
    heatmap: tuple[int, int]
    keypoints: int
    head: str
    head_channels: int
    num_deconv: int
    patch_stride: int
    attention: str
    drop_path_layers: int  # blocks with a DropPath (rate > 0)
    part_features: int  # ViTPose++ experts' output width (0: plain feed-forward)
    forward_flops: float  # per image
    # Where the parameters are (ViTPose+/++ print them): the backbone with its experts, the experts
    # alone, each head in dataset order; params = backbone_params + sum(head_params).
    backbone_params: int = 0
    expert_params: int = 0
    head_params: tuple[int, ...] = ()
    # model.attention_window: window (rows, cols) in tokens (None: full attention), whether the grid is
    # rolled (a shift on some axis), pooled tokens appended to every window's keys
    window: tuple[int, int] | None = None
    window_shift: bool = False
    pooled_tokens: int = 0
    # train.freeze: numel of every parameter left trainable (None: all are); frozen ones get no
    # gradients, fp32 master copies or Adam states
    trainable_sizes: tuple[int, ...] | None = None

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def trainable_param_sizes(self) -> tuple[int, ...]:
        return self.param_sizes if self.trainable_sizes is None else self.trainable_sizes

    @property
    def trainable_params(self) -> int:
        return sum(self.trainable_param_sizes)


def model_shape(cfg: Config) -> ModelShape:
    from torch import nn

    from vitpose_scale.models.attention import WindowSpec
    from vitpose_scale.models.pose import build_pose_model, forward_flops_per_image

    m = cfg.model.resolved()
    window = WindowSpec.parse(m.attention_window)
    model = build_pose_model(cfg.model, device="meta")
    trainable = None
    if cfg.train.freeze:
        from vitpose_scale.models.freeze import apply_freeze

        apply_freeze(model, cfg.train.freeze)
        trainable = tuple(p.numel() for p in model.parameters() if p.requires_grad)
    linear = tuple(mod.weight.numel() for unit in model.backbone.shard_units() for mod in unit.modules()
                   if isinstance(mod, nn.Linear))
    drop_paths = sum(1 for mod in model.backbone.modules() if type(mod).__name__ == "DropPath")
    convs = tuple(mod.weight.numel() for mod in model.modules() if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)))
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()),
        param_sizes=tuple(p.numel() for p in model.parameters()),
        block_linear_weights=linear,
        outer_conv_weights=convs,
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        depth=m.depth, dim=m.embed_dim, hidden=int(round(m.embed_dim * m.mlp_ratio)), heads=m.num_heads,
        grid=cfg.model.grid, image_size=tuple(cfg.model.image_size), heatmap=cfg.model.heatmap_size,
        keypoints=max(m.head_keypoints or [m.num_keypoints]), head=m.head, head_channels=m.head_channels,
        num_deconv=int(math.log2(m.patch_stride // 4)), patch_stride=m.patch_stride, attention=m.attention,
        drop_path_layers=drop_paths, forward_flops=forward_flops_per_image(cfg.model),
        part_features=(m.part_features or 0) if m.backbone == "vit_moe" else 0,
        backbone_params=sum(p.numel() for p in model.backbone.parameters()),
        expert_params=sum(p.numel() for n, p in model.backbone.named_parameters() if ".mlp.experts." in n),
        head_params=tuple(sum(p.numel() for p in head.parameters()) for head in model.heads),
        window=window.size if window else None, window_shift=bool(window and any(window.shifts(cfg.model.grid))),
        pooled_tokens=window.pooled_tokens(cfg.model.grid) if window else 0, trainable_sizes=trainable)


# --------------------------------------------------------------- settings --
@dataclass(frozen=True)
class Setting:
    zero_stage: int
    offload_optimizer: str  # none | cpu | nvme
    offload_params: str  # none | cpu | nvme
    checkpointing: bool
    micro_batch: int
    grad_accum: int

    def label(self) -> str:
        off = []
        if self.offload_optimizer != "none":
            off.append(f"opt->{self.offload_optimizer}")
        if self.offload_params != "none":
            off.append(f"params->{self.offload_params}")
        return (f"ZeRO-{self.zero_stage} {'+'.join(off) or 'no offload':<21} ckpt {'on ' if self.checkpointing else 'off'}"
                f" micro {self.micro_batch:>3} x accum {self.grad_accum:>3}")


@dataclass(frozen=True)
class Hardware:
    gpus: int
    gpu_mem_gb: float | None = None  # default: the GPU's
    gpus_per_node: int = 8
    gpu: str = DEFAULT_GPU  # a key of GPUS
    peak_tflops: float | None = None  # default: the GPU's dense peak for the run's precision
    tf32: bool = False  # fp32 matmuls on TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32)
    # torch 1.9's autograd (the official ViTPose logs): softmax kept its input as well as its
    # output for backward (pytorch/pytorch#49600, fixed since): heads x N more per token and block
    softmax_saves_input: bool = False
    mfu: float = MFU
    nvlink_gbps: float = 150.0  # per-GPU bus bandwidth of collectives inside a node (GB/s)
    network_gbps: float = 25.0  # per-GPU bus bandwidth across nodes (GB/s, 200 Gb/s per GPU)
    pcie_gbps: float = 20.0  # host <-> GPU per GPU (GB/s)
    cpu_adam_params_per_s: float = 1.0e9  # DeepSpeed CPU Adam throughput per rank
    nvme_gbps: float = 3.0  # NVMe read/write per GPU (GB/s)
    host_mem_gb: float = 1024.0  # per node, for offloaded states
    nvme: bool = False  # offer nvme offload targets

    def __post_init__(self):
        if self.gpu not in GPUS:
            raise ValueError(f"unknown GPU {self.gpu!r}: expected one of {', '.join(GPUS)} "
                             f"(or --gpu-mem and --peak-tflops)")
        if self.gpu_mem_gb is None:
            object.__setattr__(self, "gpu_mem_gb", GPUS[self.gpu].mem_gb)

    def peak(self, precision: str) -> float:
        """Dense TFLOP/s the compute time is costed at."""
        return self.peak_tflops or GPUS[self.gpu].peak(precision, self.tf32)

    def peak_kind(self, precision: str) -> str:
        return "tf32" if precision == "fp32" and self.tf32 else precision

    @property
    def bus_gbps(self) -> float:
        return self.nvlink_gbps if self.gpus <= self.gpus_per_node else self.network_gbps


def bucket_elements(cfg: Config, params: int, world: int) -> int:
    """The reduce/all-gather bucket the trainer configures (engine/parallel.deepspeed_config)."""
    from vitpose_scale.engine.parallel import deepspeed_config

    return deepspeed_config(cfg, world, params)["zero_optimization"]["reduce_bucket_size"]


# ----------------------------------------------------------------- memory --
def model_state_bytes(shape: ModelShape, setting: Setting, world: int, precision: str, bucket: int,
                      persistence_threshold: int) -> dict:
    """Bytes held between steps per rank, on the GPU and on the host (offload); DeepSpeed 0.19 layouts.
    Weights: every parameter; gradients, master copies and Adam states: the trainable ones only
    (train.freeze: `ModelShape.trainable_sizes`)."""
    b, P, stage = BYTES[precision], shape.params, setting.zero_stage
    T = shape.trainable_params
    part, tpart = P / world, T / world  # this rank's share of every parameter, of the trainable ones
    if stage == 0:
        weights = b * P
        master = 0 if precision == "fp32" else FP32 * T  # fp32: the weights are the master copy
        optimizer, grads = ADAM * T, 0
    elif stage in (1, 2):
        weights, master, optimizer, grads = b * P, FP32 * tpart, ADAM * tpart, 0
    else:
        part = sum(-(-n // world) for n in shape.param_sizes)  # each parameter padded to the world size
        tpart = sum(-(-n // world) for n in shape.trainable_param_sizes)
        persistent = sum(n for n in shape.param_sizes if n <= persistence_threshold)
        weights = b * (part + persistent)
        master, optimizer = FP32 * tpart, ADAM * tpart
        grads = b * (tpart + bucket)  # gradient partitions + the reduce bucket, both allocated up front
    gpu, host = weights + master + optimizer + grads + shape.buffer_bytes, 0.0
    if setting.offload_optimizer != "none":
        moved = master + optimizer + FP32 * tpart  # + the fp32 gradient partition the CPU Adam reads
        gpu -= master + optimizer
        host += moved
        if stage in (1, 2):  # staging buffers of the largest parameter (GPU and host), host gradient accumulators
            largest = max(shape.trainable_param_sizes)
            gpu += b * largest
            host += b * largest + b * tpart
    if setting.offload_params != "none":
        gpu -= b * part
        host += b * part
    return {"gpu": gpu, "host": host, "total": gpu + host}


def block_saved_bytes(shape: ModelShape, micro: int, precision: str, softmax_saves_input: bool = False,
                      shifted: bool | None = None) -> float:
    """Tensors one block saves for backward without checkpointing (per micro-batch).

    Per token: the block input and norm1 output (2C), the qkv output shared by q, k, v (3C),
    the attention output (C; the fused kernels lay it out so the head merge is a view, ours
    is a copy: one more C), the residual sum and norm2 output (2C), fc1 output and GELU
    output (2 x hidden), LayerNorm statistics; the fused kernels keep a row logsumexp per
    head, plain attention instead keeps q, k, v copies and the softmax matrix (heads x N),
    and under torch 1.9 (`softmax_saves_input`) the scores going into the softmax too.

    Window attention (model.attention_window; window L tokens, M pooled tokens, N / L windows): a query
    meets S = L + M keys, so plain attention keeps heads x S scores per token instead of heads x N;
    the per-window q, k, v copies replace the qkv views (same bytes); every backend's output is merged
    back from windows by a copy (one more C, as Triton's head merge); pooling keeps the pooled tokens
    (M x C, the qkv input) and the windows' extended keys and values (2 x C x M per window); a shift
    keeps its mask (plain: one bool (windows, L, S); sdpa: the per-image copy in the compute dtype),
    its rolled copies are not saved (a roll's backward needs nothing). Measured: tests/test_window_attention.py.
    `shifted`: this block's windows are the shifted ones (default: whenever the model shifts; the odd
    blocks do, `shifted_blocks`).
    """
    b, C, H, N = BYTES[precision], shape.dim, shape.hidden, shape.tokens
    per_token = b * (8 * C + 2 * H) + 2 * 2 * LAYER_NORM_STATS
    if shape.part_features:  # MoE: each expert's copy of its rows' hidden, its output, the concatenation
        per_token += b * (H + shape.part_features + C)
    keys = N
    if shape.window:
        window_tokens = shape.window[0] * shape.window[1]
        windows, keys = N // window_tokens, window_tokens + shape.pooled_tokens
    if shape.attention == "plain":
        per_token += b * shape.heads * keys * (2 if softmax_saves_input else 1)
    else:
        per_token += FP32 * shape.heads  # logsumexp
        if shape.attention == "triton" or shape.window:
            per_token += b * C  # output (B, H, N, D) contiguous: merging the heads (or windows) copies
    total = micro * N * per_token
    if shape.window:
        total += micro * b * C * shape.pooled_tokens * (1 + 2 * windows)
        if shape.window_shift if shifted is None else shifted:
            mask = windows * window_tokens * keys
            total += mask if shape.attention == "plain" else micro * mask * b
    return total


def shifted_blocks(shape: ModelShape) -> int:
    """Blocks attending in shifted windows: the odd ones (models/vit.py, Swin's alternation)."""
    return shape.depth // 2 if shape.window_shift else 0


def head_saved_bytes(shape: ModelShape, micro: int, precision: str) -> float:
    """The head and the loss: input features, per deconv stage the fp32 BatchNorm input
    (heads.Fp32BatchNorm2d upcasts) and the ReLU output, BN statistics; the simple head's
    ReLU and upsampled features; the fp32 loss product (pred - target) * weight."""
    b, C, N, ch = BYTES[precision], shape.dim, shape.tokens, shape.head_channels
    total = micro * N * C * b  # features entering the head
    if shape.head == "classic":
        hp, wp = shape.grid
        for i in range(1, shape.num_deconv + 1):
            elements = micro * ch * (hp << i) * (wp << i)
            total += elements * (FP32 + b)
            total += ch * FP32 * (4 if precision == "fp32" else 5)  # running/saved stats (+ fp32 weight copy)
    else:
        total += micro * N * C * b * (shape.patch_stride // 4) ** 2  # upsampled features, saved by the conv
    h, w = shape.heatmap
    return total + micro * shape.keypoints * (h * w + 1) * FP32


def saved_activation_bytes(shape: ModelShape, micro: int, precision: str, checkpointing: bool,
                           zero_stage: int = 0, persistence_threshold: int = 0,
                           softmax_saves_input: bool = False) -> float:
    """Bytes autograd keeps for backward in one micro-batch (the trainer's activation_mb_per_rank).

    Outside the blocks: the input images (saved by the patch convolution), the last norm's
    input, the head (`head_saved_bytes`). Blocks: with checkpointing only each block's input
    (tokens x width); without, `block_saved_bytes` each. Under ZeRO-3 without checkpointing the
    blocks' Linear layers keep the gathered weights until backward (autograd saves a transposed
    view of each, so releasing the parameter does not free it); and the convolutions outside the
    blocks (patch embedding, head) keep the kernel ZeRO-3 handed them, a buffer of its own even
    for parameters under the persistence threshold (measured: tests/test_plan.py).
    """
    b, N, C = BYTES[precision], shape.tokens, shape.dim
    H, W = shape.image_size
    total = micro * 3 * H * W * b + micro * N * (C * b + 2 * LAYER_NORM_STATS)
    if checkpointing:
        total += shape.depth * micro * N * C * b
    else:
        shifted = shifted_blocks(shape)
        total += (shape.depth - shifted) * block_saved_bytes(shape, micro, precision, softmax_saves_input, False)
        total += shifted * block_saved_bytes(shape, micro, precision, softmax_saves_input, True)
        total += 2 * shape.drop_path_layers * micro * FP32  # each block's DropPath mask (B, 1, 1), both branches
        if zero_stage == 3:
            total += b * sum(n for n in shape.block_linear_weights if n > persistence_threshold)
    if zero_stage == 3:
        total += b * sum(shape.outer_conv_weights)
    return total + head_saved_bytes(shape, micro, precision)


def working_bytes(shape: ModelShape, setting: Setting, world: int, precision: str, bucket: int,
                  softmax_saves_input: bool = False) -> float:
    """Transient memory at the backward peak: gradients not held between steps, one block's
    activations (recomputed under checkpointing) and their gradients, communication buckets.

    ZeRO-0: DeepSpeed all-reduces the gradients (fp32, or the fp32 accumulators of bf16; fp16 as
    they are) through one flattened copy of up to DS_ALLREDUCE_ELEMENTS, the bytes torch DDP keeps
    in its buckets for the whole run; ZeRO-1: through the reduce bucket."""
    b, P = BYTES[precision], shape.trainable_params  # gradients: of the trainable parameters only
    block = block_saved_bytes(shape, setting.micro_batch, precision, softmax_saves_input)
    work = block * (2 if setting.checkpointing else 1)
    if setting.zero_stage == 0:
        grads = b * P + (FP32 * P if precision != "fp32" else 0)  # + fp32 master gradients at the step
        grads += (b if precision == "fp16" else FP32) * min(P, DS_ALLREDUCE_ELEMENTS)  # the all-reduce buffer
    elif setting.zero_stage == 1:
        grads = b * P + FP32 * P / world + b * bucket
    elif setting.zero_stage == 2:
        grads = b * bucket + (b + FP32) * P / world
    else:
        grads = 2 * b * bucket  # gathered weights: the current layer and the prefetch bucket
    return work + grads


def peak_gpu_bytes(states_gpu: float, activations: float, working: float) -> float:
    return (states_gpu + activations + working) * (1 + FRAGMENTATION) + CONTEXT_GB * GB


# ------------------------------------------------------------------- time --
def step_seconds(shape: ModelShape, setting: Setting, hw: Hardware, precision: str) -> dict:
    b, P, w = BYTES[precision], shape.params, hw.gpus
    images = setting.micro_batch * setting.grad_accum
    tokens = setting.micro_batch * shape.tokens
    mfu = hw.mfu * tokens / (tokens + MFU_HALF_TOKENS)
    passes = 4 if setting.checkpointing else 3
    compute = passes * shape.forward_flops * images / (hw.peak(precision) * 1e12 * mfu)
    ring = (w - 1) / w * P * b / (hw.bus_gbps * GB) if w > 1 else 0.0  # one all-gather / reduce-scatter
    accum, stage = setting.grad_accum, setting.zero_stage
    comm = {0: 2 * ring, 1: 2 * ring, 2: accum * ring + ring, 3: accum * 3 * ring}[stage]
    offload = 0.0
    part = P / w
    if setting.offload_optimizer != "none":
        offload += 2 * part * b / (hw.pcie_gbps * GB) + part / hw.cpu_adam_params_per_s
        if setting.offload_optimizer == "nvme":
            offload += 2 * (FP32 + ADAM) * part / (hw.nvme_gbps * GB)  # read and write the states
    if setting.offload_params != "none":
        per_pass = part * b / ((hw.nvme_gbps if setting.offload_params == "nvme" else hw.pcie_gbps) * GB)
        offload += accum * 2 * per_pass
    total = compute + comm + offload
    return {"compute": compute, "comm": comm, "offload": offload, "total": total, "mfu": mfu}


@functools.cache
def _teacher_shape(config_path: str) -> ModelShape:
    from vitpose_scale.config import load_config

    return model_shape(load_config(config_path))


def teacher_shape(cfg: Config) -> ModelShape | None:
    """The output-distillation teacher's shape (distill.heatmap_weight > 0), else None."""
    if cfg.distill.heatmap_weight > 0 and cfg.distill.teacher_config:
        return _teacher_shape(str(cfg.distill.teacher_config))
    return None


# ------------------------------------------------------------------- plan --
@dataclass
class Candidate:
    setting: Setting
    states_gpu_gb: float
    host_gb: float
    activations_gb: float
    allocated_gb: float  # tensors at the peak: torch.cuda.max_memory_allocated's view
    peak_gb: float  # + the allowance (context, workspaces, fragmentation): what the GPU must have
    step_s: float
    breakdown: dict
    images_per_s: float
    hours: float

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self.setting), **{k: v for k, v in dataclasses.asdict(self).items()
                                                      if k != "setting"}}


def settings_for(global_batch: int, gpus: int, nvme: bool) -> list[Setting]:
    if global_batch % gpus:
        raise ValueError(f"train.batch_size {global_batch} does not divide over {gpus} GPUs: "
                         f"expected a multiple of {gpus}")
    per_gpu = global_batch // gpus
    micros = [m for m in range(1, per_gpu + 1) if per_gpu % m == 0]
    targets = ["none", "cpu"] + (["nvme"] if nvme else [])
    out = []
    for stage in (0, 1, 2, 3):
        for opt in targets if stage >= 1 else ["none"]:
            for params in (targets if stage == 3 and opt != "none" else ["none"]):
                for ckpt in (False, True):
                    for m in micros:
                        out.append(Setting(stage, opt, params, ckpt, m, per_gpu // m))
    return out


def evaluate(cfg: Config, shape: ModelShape, setting: Setting, hw: Hardware, samples_per_epoch: int) -> Candidate:
    precision, threshold = cfg.parallel.precision, cfg.parallel.zero3_persistence_threshold
    bucket = bucket_elements(cfg, shape.params, hw.gpus)
    states = model_state_bytes(shape, setting, hw.gpus, precision, bucket, threshold)
    acts = saved_activation_bytes(shape, setting.micro_batch, precision, setting.checkpointing,
                                  setting.zero_stage, threshold, hw.softmax_saves_input)
    work = working_bytes(shape, setting, hw.gpus, precision, bucket, hw.softmax_saves_input)
    t = step_seconds(shape, setting, hw, precision)
    teacher = teacher_shape(cfg)
    if teacher is not None:
        # Output distillation: the teacher whole on every rank (its weights) and, during its no-grad forward,
        # one block's transient activations; one teacher forward per micro-batch.
        b = BYTES[precision]
        work += teacher.params * b + setting.micro_batch * teacher.tokens * (4 * teacher.dim + teacher.hidden) * b
        images = setting.micro_batch * setting.grad_accum
        t = dict(t, teacher=teacher.forward_flops * images / (hw.peak(precision) * 1e12 * t["mfu"]))
        t["total"] += t["teacher"]
    allocated = states["gpu"] + acts + work
    peak = peak_gpu_bytes(states["gpu"], acts, work)
    global_batch = cfg.train.batch_size
    steps = cfg.train.epochs * math.ceil(samples_per_epoch / global_batch)
    return Candidate(setting, states["gpu"] / GB, states["host"] / GB, acts / GB, allocated / GB, peak / GB,
                     t["total"], t, global_batch / t["total"], steps * t["total"] / 3600)


def plan_settings(cfg: Config, hw: Hardware, samples_per_epoch: int, zero_stage: int | None = None,
                  micro_batch: int | None = None) -> tuple[list[Candidate], ModelShape]:
    """Every setting that fits, fastest first (ties: less GPU memory); optionally only one ZeRO
    stage or micro-batch."""
    shape = model_shape(cfg)
    fits = []
    for setting in settings_for(cfg.train.batch_size, hw.gpus, hw.nvme):
        if (zero_stage is not None and setting.zero_stage != zero_stage
                or micro_batch is not None and setting.micro_batch != micro_batch):
            continue
        c = evaluate(cfg, shape, setting, hw, samples_per_epoch)
        host_per_node = c.host_gb * min(hw.gpus, hw.gpus_per_node)
        if c.peak_gb <= hw.gpu_mem_gb and (setting.offload_optimizer != "cpu" and setting.offload_params != "cpu"
                                           or host_per_node <= hw.host_mem_gb):
            fits.append(c)
    fits.sort(key=lambda c: (round(c.step_s, 6), c.peak_gb))
    return fits, shape


def samples_per_epoch(cfg: Config) -> int:
    """People per epoch of the config's training sets: known sets by annotation file name,
    small annotation files counted (people with keypoints; MPII's list: every person), else an error
    asking for the number. Multi-task configs (data.tasks, concatenated or drawn by ratio: an epoch
    has as many draws as the sets have people): the sum over the datasets."""
    from vitpose_scale.config import task_configs

    multi = len(cfg.data.tasks) > 1
    total = 0
    for index, (name, task) in enumerate(task_configs(cfg)):
        where = f"data.tasks[{index}] ({name}): " if multi else ""
        d = task.data
        if d.kind == "synthetic":
            raise ValueError(f"{where}data.kind synthetic: pass --samples-per-epoch (people per epoch are generated)")
        # The main set is read by the keypoint set's reader (MPII: a list of people); extra_train is COCO-layout.
        sets = [(d.root, d.train_ann, d.keypoint_set == "mpii")]
        sets += [(e.get("root", d.root), e.get("ann", ""), False) for e in d.extra_train]
        for root, ann, people_list in sets:
            if Path(ann).name in KNOWN_TRAIN_SETS:
                total += KNOWN_TRAIN_SETS[Path(ann).name]
                continue
            path = Path(root) / ann
            if not path.is_file() or path.stat().st_size > 50_000_000:
                raise ValueError(f"{where}training set {path}: unknown size (known: {sorted(KNOWN_TRAIN_SETS)}): "
                                 f"pass --samples-per-epoch")
            data = json.loads(path.read_text())
            if people_list:
                total += len(data)
            else:
                total += sum(1 for a in data.get("annotations", []) if a.get("num_keypoints", 0) > 0)
    return total


def written_config(cfg: Config, setting: Setting, nvme_path: str | None = None) -> Config:
    """The config with the chosen setting, ready for `deepspeed launch/train.py --config`."""
    out = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, activation_checkpointing=setting.checkpointing),
        parallel=dataclasses.replace(cfg.parallel, backend="deepspeed", zero_stage=setting.zero_stage,
                                     offload_optimizer=setting.offload_optimizer,
                                     offload_params=setting.offload_params, grad_accum=setting.grad_accum,
                                     nvme_path=nvme_path or cfg.parallel.nvme_path))
    from vitpose_scale.config import validate

    return validate(out)


# -------------------------------------------------------------------- CLI --
ASSUMPTIONS = (
    "assumptions: MFU {mfu:.0%} of {peak:g} TFLOP/s ({gpu} {kind} dense peak) reached from large micro-batches"
    " (x T/(T+{half}) for T tokens per micro-batch), checkpointing adds one forward; collectives at {nv:g} GB/s per"
    " GPU in a node, {net:g} GB/s across nodes; PCIe {pcie:g} GB/s; CPU Adam {adam:.1e} params/s per rank; no overlap"
    " of compute, communication and offload (upper bound); memory: alloc = states + activations + working set"
    " (gradients, buckets, one block), GPU GB = alloc + {frag:.0%} fragmentation + {ctx:g} GB CUDA"
    " context/workspaces")


def format_table(cands: list[Candidate], limit: int | None) -> list[str]:
    lines = [f"  {'setting':<60} {'GPU GB':>7} {'alloc':>6} {'states':>7} {'acts':>6} {'host GB':>8} "
             f"{'step s':>8} {'img/s':>8} {'hours':>7}"]
    for i, c in enumerate(cands[:limit]):
        mark = "*" if i == 0 else " "
        lines.append(f"{mark} {c.setting.label():<60} {c.peak_gb:7.1f} {c.allocated_gb:6.1f} {c.states_gpu_gb:7.2f} "
                     f"{c.activations_gb:6.2f} {c.host_gb:8.1f} {c.step_s:8.3f} {c.images_per_s:8.0f} {c.hours:7.1f}")
    return lines


def hardware_from_args(args) -> Hardware:
    return Hardware(gpus=args.gpus, gpu_mem_gb=args.gpu_mem, gpus_per_node=args.gpus_per_node, gpu=args.gpu,
                    peak_tflops=args.peak_tflops, tf32=args.tf32, softmax_saves_input=args.softmax_saves_input,
                    mfu=args.mfu, nvlink_gbps=args.nvlink_gbps, network_gbps=args.network_gbps,
                    pcie_gbps=args.pcie_gbps, cpu_adam_params_per_s=args.cpu_adam, host_mem_gb=args.host_mem,
                    nvme=args.nvme_path is not None)


# docs/full_scale.md's "what fits where" table: presets x GPU budgets (`vitpose-scale plan --readme-table`).
README_CONFIGS = [("B", "configs/vitpose_b_256x192.yaml"), ("L", "configs/vitpose_l_256x192.yaml"),
                  ("H", "configs/vitpose_h_256x192.yaml"), ("G", "configs/vitpose_g_576x432.yaml")]
# (GPUs, a key of GPUS)
README_BUDGETS = [(1, "a10"), (8, "a100-40gb"), (8, "h100"), (64, "h100")]


def readme_table(args) -> list[str]:
    from vitpose_scale.config import load_config

    root = Path(__file__).resolve().parents[1]
    lines = ["| model | GPUs | fastest setting that fits | GPU GB (est.) | step s | images/s | hours, 210 epochs |",
             "|---|---|---|---|---|---|---|"]
    for name, path in README_CONFIGS:
        cfg = load_config(root / path)
        samples = samples_per_epoch(cfg)
        for gpus, gpu in README_BUDGETS:
            args.gpus, args.gpu = gpus, gpu
            hw = hardware_from_args(args)
            mem, kind = hw.gpu_mem_gb, GPUS[gpu].name
            fits, _ = plan_settings(cfg, hw, samples)
            size = f"{cfg.model.image_size[0]}x{cfg.model.image_size[1]}"
            if not fits:
                lines.append(f"| {name} {size} | {gpus} x {mem:g} GB {kind} | does not fit | - | - | - | - |")
                continue
            c, s = fits[0], fits[0].setting
            off = ", ".join(f"{k} offload {v}" for k, v in (("optimizer", s.offload_optimizer),
                                                             ("param", s.offload_params)) if v != "none")
            text = (f"ZeRO-{s.zero_stage}{', ' + off if off else ''}, checkpointing {'on' if s.checkpointing else 'off'},"
                    f" micro-batch {s.micro_batch} x {s.grad_accum} accumulation")
            lines.append(f"| {name} {size} | {gpus} x {mem:g} GB {kind} | {text} | {c.peak_gb:.1f} | {c.step_s:.2f} | "
                         f"{c.images_per_s:.0f} | {c.hours:.1f} |")
    return lines


def _window_text(shape: ModelShape) -> str:
    if not shape.window:
        return ""
    shift = ", shifted" if shape.window_shift else ""
    pooled = f", + {shape.pooled_tokens} pooled tokens" if shape.pooled_tokens else ""
    return f" in {shape.window[0]}x{shape.window[1]} windows{shift}{pooled}"


def build_parser() -> argparse.ArgumentParser:
    from vitpose_scale.cli import add_config_args

    parser = argparse.ArgumentParser(prog="vitpose-scale plan", description=__doc__.split("\n\n")[0],
                                     epilog="the memory and time model is in vitpose_scale/plan.py and docs/full_scale.md")
    add_config_args(parser)
    parser.set_defaults(config=None)
    for action in parser._actions:
        if action.dest == "config":
            action.required = False
    parser.add_argument("--gpus", type=int, default=None, help="total ranks (nodes x GPUs per node)")
    parser.add_argument("--gpu", default=DEFAULT_GPU, choices=sorted(GPUS),
                        help=f"GPU model: its memory and dense peak per precision (default {DEFAULT_GPU}; "
                             f"docs/full_scale.md lists them)")
    parser.add_argument("--gpu-mem", type=float, default=None, help="GB of memory per GPU (default: the --gpu's)")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--samples-per-epoch", type=int, default=None,
                        help="people per epoch (default: counted from the config's training sets)")
    parser.add_argument("--mfu", type=float, default=MFU,
                        help=f"model FLOPs utilisation at large micro-batches (default {MFU:g}, calibrated on the "
                             f"official ViTPose-B log)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense TFLOP/s per GPU (default: the --gpu's peak for parallel.precision)")
    parser.add_argument("--tf32", action="store_true",
                        help="fp32 matmuls on TF32 tensor cores, costed at the TF32 peak (the trainer leaves "
                             "torch's default: off)")
    parser.add_argument("--softmax-saves-input", action="store_true",
                        help="torch 1.9 autograd, as in the official logs: softmax keeps its input too "
                             "(plain attention)")
    parser.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=None,
                        help="list only this ZeRO stage")
    parser.add_argument("--micro-batch", type=int, default=None, help="list only this micro-batch")
    parser.add_argument("--nvlink-gbps", type=float, default=150.0, help="collective bandwidth per GPU in a node")
    parser.add_argument("--network-gbps", type=float, default=25.0, help="collective bandwidth per GPU across nodes")
    parser.add_argument("--pcie-gbps", type=float, default=20.0, help="host <-> GPU bandwidth per GPU")
    parser.add_argument("--cpu-adam", type=float, default=1.0e9, help="CPU Adam parameters per second per rank")
    parser.add_argument("--host-mem", type=float, default=1024.0, help="host GB per node for offloaded states")
    parser.add_argument("--nvme-path", default=None, help="also consider NVMe offload to this path")
    parser.add_argument("--top", type=int, default=None, help="print only the N fastest settings")
    parser.add_argument("--json", default=None, help="also write every fitting setting to this JSON file")
    parser.add_argument("--write", default=None, help="write the recommended setting as a config file")
    parser.add_argument("--readme-table", action="store_true",
                        help="print the docs/full_scale.md table: B/L/H/G on 1x24, 8x40, 8x80, 64x80 GB")
    return parser


def main(argv: list[str] | None = None) -> int:
    from vitpose_scale.cli import load_config_or_report

    args = build_parser().parse_args(argv)
    if args.readme_table:
        print("\n".join(readme_table(args)))
        return 0
    if args.config is None or args.gpus is None:
        print("plan: --config and --gpus are required (or --readme-table)", file=sys.stderr)
        return 2
    cfg = load_config_or_report(args)
    if cfg is None:
        return 2
    try:
        samples = args.samples_per_epoch or samples_per_epoch(cfg)
        hw = hardware_from_args(args)
        fits, shape = plan_settings(cfg, hw, samples, args.zero_stage, args.micro_batch)
    except ValueError as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return 2
    m = cfg.model.resolved()
    print(f"{m.preset} preset ({m.embed_dim} wide, {m.depth} deep, stride {m.patch_stride}) at "
          f"{cfg.model.image_size[0]}x{cfg.model.image_size[1]}: {shape.params / 1e9:.3f} B parameters, "
          f"{shape.tokens} tokens, {shape.forward_flops / 1e12:.3f} TFLOP forward per image")
    if len(shape.head_params) > 1 or shape.expert_params:  # ViTPose+/++: where the parameters are
        from vitpose_scale.config import task_names

        names = task_names(cfg) or [f"dataset {i}" for i in range(len(shape.head_params))]
        joints = m.head_keypoints or [m.num_keypoints]
        experts = m.num_experts if m.backbone == "vit_moe" else 1
        print(f"{len(names)} datasets ({', '.join(f'{n} {k}' for n, k in zip(names, joints))} joints), "
              f"{experts} expert{'s' if experts > 1 else ''} per block, {len(shape.head_params)} heads: "
              f"{shape.params:,} parameters = backbone {shape.backbone_params:,} (experts {shape.expert_params:,}) "
              f"+ heads {' + '.join(f'{n:,}' for n in shape.head_params)}")
    if cfg.train.freeze:
        print(f"train.freeze {cfg.train.freeze}: {shape.params - shape.trainable_params:,} of {shape.params:,} "
              f"parameters frozen: no gradients, fp32 master copies or Adam states for them (activations and step "
              f"time are costed as without freezing: upper bounds)")
    print(f"{hw.gpus} x {hw.gpu_mem_gb:g} GB {GPUS[hw.gpu].name} GPUs, {cfg.parallel.precision}"
          f"{' (TF32 matmuls)' if hw.tf32 and cfg.parallel.precision == 'fp32' else ''}, attention {m.attention}"
          f"{_window_text(shape)}"
          f"{' (torch 1.9 softmax)' if hw.softmax_saves_input else ''}, global batch "
          f"{cfg.train.batch_size}, {samples} samples per epoch, {cfg.train.epochs} epochs")
    precision = cfg.parallel.precision
    print(ASSUMPTIONS.format(mfu=hw.mfu, peak=hw.peak(precision), gpu="given" if hw.peak_tflops else GPUS[hw.gpu].name,
                             kind=hw.peak_kind(precision), half=MFU_HALF_TOKENS, nv=hw.nvlink_gbps,
                             net=hw.network_gbps, pcie=hw.pcie_gbps, adam=hw.cpu_adam_params_per_s, ctx=CONTEXT_GB,
                             frag=FRAGMENTATION))
    if not fits:  # the config cannot run on this hardware: an input error, not a failure of the planner
        only = [f"{flag} {v}" for flag, v in (("--zero-stage", args.zero_stage), ("--micro-batch", args.micro_batch))
                if v is not None]
        print(f"plan: nothing fits in {hw.gpu_mem_gb:g} GB per GPU{' with ' + ', '.join(only) if only else ''}",
              file=sys.stderr)
        return 2
    print(f"{len(fits)} settings fit, fastest first (* recommended; GB per rank: GPU peak estimate, tensors allocated "
          f"at the peak, model states and saved activations on the GPU, offloaded states on the host):")
    print("\n".join(format_table(fits, args.top)))
    if args.json:
        Path(args.json).write_text(json.dumps([c.to_dict() for c in fits], indent=1))
    if args.write:
        out = written_config(cfg, fits[0].setting, args.nvme_path)
        out.save(args.write)
        print(f"wrote {args.write}: deepspeed --num_gpus {min(hw.gpus, hw.gpus_per_node)} launch/train.py "
              f"--config {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
