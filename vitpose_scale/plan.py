"""`vitpose-scale plan`: the scale arithmetic of a config before anything is launched (REFERENCE §6).

Model states under ZeRO-3 with mixed-precision Adam: 16 bytes per parameter
(2 bf16 weights + 2 bf16 gradients + 4 fp32 master + 8 Adam moments) divided
over the ranks (ZeRO-0 keeps all 16 on every rank, ZeRO-1 shards the 12 of the
optimizer, ZeRO-2 also the gradients). Activations: with per-block
checkpointing each block keeps its input (tokens x width) plus, during the
backward of one block, that block's own activations; without it every block
keeps them all. Compute: training is about 3x the forward FLOPs.
"""
from __future__ import annotations

import argparse
import sys

from vitpose_scale.config import Config

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def model_state_bytes_per_rank(params: int, zero_stage: int, world: int, precision: str) -> float:
    w = BYTES[precision]
    weights, grads = w * params, w * params
    optimizer = (12 if precision != "fp32" else 8) * params  # fp32 master (mixed precision) + Adam moments
    if zero_stage >= 1:
        optimizer /= world
    if zero_stage >= 2:
        grads /= world
    if zero_stage >= 3:
        weights /= world
    return weights + grads + optimizer


def block_activation_bytes(micro_batch: int, tokens: int, dim: int, hidden: int, heads: int, precision: str,
                           fused_attention: bool) -> float:
    """Tensors one pre-norm block saves for backward: norms, qkv, attention output, proj, MLP in/hidden/GELU."""
    b = BYTES[precision]
    per_token = (2 * dim + 3 * dim + dim + dim + 2 * hidden + dim) * b
    attention = 0 if fused_attention else 2 * heads * tokens * tokens * b  # scores + softmax
    return micro_batch * (tokens * per_token + attention)


def plan(cfg: Config, world: int, samples_per_epoch: int, peak_tflops: float, mfu: float) -> dict:
    from vitpose_scale.models.pose import build_pose_model, count_parameters, forward_flops_per_image

    m = cfg.model.resolved()
    model = build_pose_model(cfg.model, device="meta")
    params = count_parameters(model)
    hp, wp = cfg.model.grid
    tokens, hidden = hp * wp, int(round(m.embed_dim * m.mlp_ratio))
    micro = cfg.train.batch_size // (world * cfg.parallel.grad_accum)
    precision = cfg.parallel.precision
    block = block_activation_bytes(micro, tokens, m.embed_dim, hidden, m.num_heads, precision,
                                   fused_attention=m.attention != "plain")
    if m.activation_checkpointing:
        activations = m.depth * micro * tokens * m.embed_dim * BYTES[precision] + block
    else:
        activations = m.depth * block
    flops_img = forward_flops_per_image(cfg.model)
    epoch_flops = 3 * flops_img * samples_per_epoch
    hours = cfg.train.epochs * epoch_flops / (world * peak_tflops * 1e12 * mfu) / 3600
    return {"params": params, "tokens": tokens, "micro_batch_per_rank": micro,
            "model_states_gb_per_rank": model_state_bytes_per_rank(params, cfg.parallel.zero_stage, world,
                                                                   precision) / 1e9,
            "activations_gb_per_rank": activations / 1e9, "forward_tflop_per_image": flops_img / 1e12,
            "training_flop_per_epoch": epoch_flops, "hours": hours}


def main(argv: list[str] | None = None) -> int:
    from vitpose_scale.cli import add_config_args, load_config_or_report

    parser = argparse.ArgumentParser(prog="vitpose-scale plan", description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--gpus", type=int, required=True, help="total ranks (nodes x GPUs per node)")
    parser.add_argument("--samples-per-epoch", type=int, default=149_813,
                        help="training instances per epoch (default: COCO train2017 people with keypoints)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    args = parser.parse_args(argv)
    cfg = load_config_or_report(args)
    if cfg is None:
        return 2
    if cfg.train.batch_size % (args.gpus * cfg.parallel.grad_accum):
        print(f"train.batch_size {cfg.train.batch_size} does not divide over {args.gpus} ranks x "
              f"{cfg.parallel.grad_accum} accumulation steps", file=sys.stderr)
        return 2
    p = plan(cfg, args.gpus, args.samples_per_epoch, cfg.train.peak_tflops, args.mfu)
    m = cfg.model.resolved()
    print(f"{m.preset} preset ({m.embed_dim} wide, {m.depth} deep) at {cfg.model.image_size[0]}x"
          f"{cfg.model.image_size[1]}: {p['params'] / 1e9:.3f} B parameters, {p['tokens']} tokens")
    print(f"ranks {args.gpus}, micro-batch {p['micro_batch_per_rank']} per rank, ZeRO-{cfg.parallel.zero_stage}, "
          f"{cfg.parallel.precision}, checkpointing {'on' if m.activation_checkpointing else 'off'}, "
          f"attention {m.attention}")
    print(f"model states per rank     {p['model_states_gb_per_rank']:8.2f} GB")
    print(f"activations per rank      {p['activations_gb_per_rank']:8.2f} GB (estimate)")
    print(f"forward per image         {p['forward_tflop_per_image']:8.3f} TFLOP")
    print(f"training per epoch        {p['training_flop_per_epoch']:8.2e} FLOP ({args.samples_per_epoch} samples)")
    print(f"{cfg.train.epochs} epochs at {args.mfu:.0%} MFU of {cfg.train.peak_tflops:g} TFLOP/s: "
          f"{p['hours']:.1f} hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
