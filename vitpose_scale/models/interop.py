"""Checkpoint interop: official ViTPose (mmcv) files and Hugging Face `VitPoseForPoseEstimation`.

Our module names equal the official keys, so the official format is our
state_dict inside `{'meta', 'state_dict'}`. Files are loaded with
`torch.load(weights_only=True)`: no pickled code is ever executed.
"""
from __future__ import annotations

import functools
import math
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitpose_scale.config import ModelConfig
from vitpose_scale.errors import CheckpointError  # noqa: F401 - raised here, imported from here by callers
from vitpose_scale.models.vit import resize_pos_embed




def safe_load(path: str | Path, allowed: list | tuple = ()) -> dict:
    """Load a torch file without executing pickled code (tensors, dicts, lists, numbers, strings,
    and the `allowed` classes only: DeepSpeed's few in its model-states files)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory: expected a file (.pth, .safetensors)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return {"state_dict": load_file(str(path)), "meta": _safetensors_meta(path)}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} cannot be read ({_first_line(exc)}): "
                                  f"damaged, truncated or not a safetensors file") from exc
    try:
        with warnings.catch_warnings():  # a plain pickle.dump file: a stderr line about its protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            with torch.serialization.safe_globals(list(allowed)):
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is several lines, with advice to load unsafely; keep the refused global.
        refused = str(exc).split("WeightsUnpickler error:")[-1]
        raise CheckpointError(f"checkpoint {path} could not be loaded safely: it holds pickled objects that "
                              f"weights_only=True refuses ({_first_line(refused)})") from exc
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({_first_line(exc)}): "
                              f"damaged, truncated or not a torch file") from exc


def _safetensors_meta(path: Path) -> dict:
    """The JSON values of a .safetensors header's metadata (our exports store pos_embed_grid there)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        raw = f.metadata() or {}
    meta = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except ValueError:  # plain strings ("format": "pt")
            meta[key] = value
    return meta


def _first_line(message) -> str:
    """The first sentence of a library's (often multi-line) message."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()] or [""]
    return lines[0].split(". ")[0].rstrip(".")


def extract_state_dict(obj: Any, path: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The tensor dict of an mmcv file, one of ours, or a bare state_dict; a DataParallel/DDP
    `module.` prefix on every key is stripped (as the official loader does)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if key in obj and isinstance(obj[key], dict):
                return strip_wrapper_prefix(obj[key])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return strip_wrapper_prefix(obj)
    raise CheckpointError(f"{path}: no state_dict found (expected an mmcv file {{'meta', 'state_dict'}} "
                          f"or a mapping of parameter names to tensors)")


def strip_wrapper_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Keys saved from a DataParallel/DDP-wrapped model all start with `module.`: drop it."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def pos_embed_grid_from_meta(raw: Any, path: str = "<checkpoint>") -> tuple[int, int] | None:
    """The [rows, cols] of the pos_embed grid that our exports store in meta, or None when absent."""
    meta = raw.get("meta") if isinstance(raw, dict) else None
    grid = meta.get("pos_embed_grid") if isinstance(meta, dict) else None
    if grid is None:
        return None
    if not (isinstance(grid, (list, tuple)) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)):
        raise CheckpointError(f"{path}: meta.pos_embed_grid is {grid!r}, expected [rows, cols] of positive ints")
    return int(grid[0]), int(grid[1])


def _grid_of(num_tokens: int, hint: tuple[int, int] | None) -> tuple[int, int]:
    if hint and hint[0] * hint[1] == num_tokens:
        return tuple(hint)
    side = int(math.isqrt(num_tokens))
    if side * side == num_tokens:  # MAE / ImageNet pretraining: 14x14
        return side, side
    k = int(math.isqrt(num_tokens // 12))
    if 12 * k * k == num_tokens:  # ViTPose's 4:3 person crops: 16x12 at 256x192, 36x27 at 576x432
        return 4 * k, 3 * k
    raise CheckpointError(f"pos_embed has {num_tokens} grid tokens, neither square nor 4:3; set model.pretrain_grid "
                          f"to the checkpoint's [rows, cols]")


def adapt_state_dict(state: dict[str, torch.Tensor], model: nn.Module,
                     source_grid: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Resize what differs only by input size: pos_embed (bicubic) and the patch-embed kernel.

    `source_grid` is the checkpoint's pos_embed grid (from its meta); without it the grid is
    read from the token count, taking the model's own grid (model.pretrain_grid when set)
    when the count fits it. The table is resized whenever the grids differ, also at equal
    token counts (a 12x16 landscape table going into a 16x12 model).
    """
    own = model.state_dict()
    state = dict(state)
    key = "backbone.pos_embed"
    if key in state and key in own:
        tokens = state[key].shape[1] - 1
        if source_grid is not None and source_grid[0] * source_grid[1] != tokens:
            raise CheckpointError(f"the checkpoint's pos_embed grid {list(source_grid)} does not match its "
                                  f"{tokens} pos_embed tokens")
        new = tuple(model.backbone.grid)
        old = tuple(source_grid) if source_grid is not None else _grid_of(tokens, new)
        state[key] = resize_pos_embed(state[key], old, new)
    key = "backbone.patch_embed.proj.weight"
    if key in state and key in own and state[key].shape[-2:] != own[key].shape[-2:]:
        # MAE with another patch size (e.g. 14 -> 16): resample the kernel.
        w = state[key].float()
        w = nn.functional.interpolate(w, size=own[key].shape[-2:], mode="bicubic", align_corners=False)
        state[key] = (w * (w.new_tensor(state[key].shape[-1] ** 2) / own[key].shape[-1] ** 2)).to(state[key].dtype)
    return state


CHECKPOINT_FORMATS = ("official", "backbone", "mae", "hf")
_HF_MARKERS = ("backbone.embeddings.", "backbone.encoder.layer.")
_MAE_MARKERS = ("mask_token", "decoder_embed.", "decoder_blocks.", "decoder_pred.")


def detect_checkpoint_format(state: dict[str, torch.Tensor], source: str = "<checkpoint>") -> str:
    """Which layout a state_dict has, from its keys alone.

    "hf": Hugging Face VitPose (backbone.embeddings.*, backbone.encoder.layer.*);
    "mae": an MAE with its decoder (mask_token, decoder_*; ours or the official MAE's);
    "official": a whole ViTPose (backbone.* and keypoint_head.*: the official mmcv layout, ours), also
    the multi-task ViTPose+ (associate_keypoint_heads.K.*) and ViTPose++ (mlp.experts.K.* as well);
    "backbone": a ViT encoder alone (pos_embed and blocks.*, bare or under backbone./encoder.: timm, MAE releases).
    """
    keys = list(state)
    if any(k.startswith(_HF_MARKERS) for k in keys):
        return "hf"
    if any(k.startswith(_MAE_MARKERS) for k in keys):
        return "mae"
    if "backbone.pos_embed" in state and any(k.startswith("keypoint_head.") for k in keys):
        return "official"
    bare = {k.removeprefix("backbone.").removeprefix("encoder.") for k in keys}
    if "pos_embed" in bare and any(k.startswith("blocks.") for k in bare):
        return "backbone"
    shown = ", ".join(sorted(keys)[:6]) + (" ..." if len(keys) > 6 else "")
    raise CheckpointError(
        f"{source}: unknown checkpoint layout (keys: {shown or 'none'}): expected a ViTPose model (backbone.*, "
        f"keypoint_head.*), an MAE (mask_token, decoder_*), a ViT backbone (pos_embed, blocks.*) or a Hugging Face "
        f"VitPose (backbone.embeddings.*)")


_EXPERT_WEIGHT = re.compile(r"backbone\.blocks\.(\d+)\.mlp\.experts\.(\d+)\.weight")
_ASSOCIATE_HEAD = re.compile(r"associate_keypoint_heads\.(\d+)\.")


def expert_layout(state: dict[str, torch.Tensor]) -> tuple[int, int | None]:
    """(experts per block, features each expert gives) of a ViTPose++ state dict; (0, None) when its
    feed-forwards are plain."""
    count, part = 0, None
    for key, value in state.items():
        m = _EXPERT_WEIGHT.fullmatch(key)
        if m:
            count = max(count, int(m[2]) + 1)
            part = int(value.shape[0])
    return count, part


def head_prefix(index: int) -> str:
    """The key prefix of dataset `index`'s head (official TopDownMoE names)."""
    return "keypoint_head." if index == 0 else f"associate_keypoint_heads.{index - 1}."


def head_joint_counts(state: dict[str, torch.Tensor]) -> list[int | None]:
    """The joint count of each keypoint head of a state dict, in dataset order (None: head without
    final_layer); [] without keypoint_head.*."""
    associates = {int(m[1]) for m in map(_ASSOCIATE_HEAD.match, state) if m}
    if not associates and not any(k.startswith("keypoint_head.") for k in state):
        return []
    counts = []
    for i in range(1 + (max(associates) + 1 if associates else 0)):
        weight = state.get(head_prefix(i) + "final_layer.weight")
        counts.append(None if weight is None else int(weight.shape[0]))
    return counts


def dataset_count(state: dict[str, torch.Tensor]) -> int:
    """How many dataset indices a ViTPose(+/++) state dict serves (heads or experts, whichever is more)."""
    return max(expert_layout(state)[0], len(head_joint_counts(state)), 1)


def _multitask_mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str,
                        keypoint_sets: list[str] | None) -> str | None:
    """One line naming the key, when a checkpoint and a model differ in their ViTPose+/++ structure
    (experts, number of heads, a head's joints); None otherwise. Checked before the generic lists,
    which would bury the cause under hundreds of keys."""
    theirs, part = expert_layout(state)
    ours, own_part = expert_layout(own)
    fc2 = next((k for k in sorted(state) if k.endswith(".mlp.fc2.weight")), None)
    if theirs and not ours:
        key = "backbone.blocks.0.mlp.experts.0.weight"
        if fc2 in own and state[fc2].shape == own[fc2].shape:
            # tools/model_split.py widens fc2 but leaves the experts in (its removal test never matches)
            return (f"{source}: {key} is unexpected: the checkpoint's fc2 is already full width next to {theirs} "
                    f"experts per block (a file of the official tools/model_split.py, which leaves them in): split "
                    f"the original ViTPose++ file with `vitpose-scale split`, or drop its mlp.experts.* keys")
        return (f"{source}: {key} is unexpected: the checkpoint has mixture-of-experts feed-forwards (ViTPose++): "
                f"set model.backbone=vit_moe model.num_experts={theirs} model.part_features={part} (or "
                f"`vitpose-scale split` it for one dataset)")
    if ours and not theirs and fc2 is not None:
        return (f"{source}: backbone.blocks.0.mlp.experts.0.weight is missing: the checkpoint has plain "
                f"feed-forwards (ViTPose / ViTPose+, no mlp.experts.*) but the model has {ours} experts per block: "
                f"set model.backbone=vit model.num_experts=1")
    if ours and theirs and ours != theirs:
        key = f"backbone.blocks.0.mlp.experts.{min(ours, theirs)}.weight"
        return (f"{source}: {key} is {'unexpected' if theirs > ours else 'missing'}: the checkpoint has {theirs} "
                f"experts per block, the model {ours}: set model.num_experts={theirs} (one per dataset, data.tasks)")
    if ours and theirs and part != own_part:
        return (f"{source}: backbone.blocks.0.mlp.experts.0.weight: the checkpoint's experts give {part} features, "
                f"the model's {own_part}: set model.part_features={part}")
    have, want = head_joint_counts(state), head_joint_counts(own)
    if not have or not want or len(have) == len(want) == 1:
        return None  # a single-head model keeps the generic report (shape mismatches list)
    if len(have) != len(want):
        key = head_prefix(min(len(have), len(want))) + "*"
        return (f"{source}: {key} is {'unexpected' if len(have) > len(want) else 'missing'}: the checkpoint has "
                f"{len(have)} keypoint heads (joints {have}), the model {len(want)} (joints {want}): set data.tasks "
                f"to the checkpoint's datasets in order, or model.head_keypoints={have}")
    for i, (a, b) in enumerate(zip(have, want)):
        if a is not None and b is not None and a != b:
            known = keypoint_sets[i] if keypoint_sets and i < len(keypoint_sets) else None
            what = f" (keypoint set {known!r})" if known else ""
            return (f"{source}: {head_prefix(i)}final_layer.weight: the checkpoint's head for dataset {i} has {a} "
                    f"joints, the model's has {b}{what}: expected data.tasks in the checkpoint's dataset order "
                    f"(heads: {have})")
    return None


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "<checkpoint>",
                           prefixes: tuple[str, ...] | None = None, keypoint_sets: list[str] | None = None) -> None:
    """Load every key or fail: one line for a ViTPose+/++ structure mismatch (experts, heads, a head's
    joints; `keypoint_sets` names each dataset's set for it), one line for tensors of other shapes (the
    first in the model's order, with both shapes), else the lists of missing and unexpected keys."""
    own = model.state_dict()
    if prefixes:
        own = {k: v for k, v in own.items() if k.startswith(prefixes)}
    targeted = _multitask_mismatch(own, {k: v for k, v in state.items() if not prefixes or k.startswith(prefixes)},
                                   source, keypoint_sets)
    if targeted:
        raise CheckpointError(targeted)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    # The model's order: the first tensor names the cause (pos_embed / patch_embed: the width; blocks: the
    # MLP or heads; final_layer: the joints), where sorted names would start anywhere.
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if mismatched:
        key = mismatched[0]
        also = [f"{len(mismatched)} tensors differ in shape"] if len(mismatched) > 1 else []
        also += [f"{len(missing)} missing"] * bool(missing) + [f"{len(unexpected)} unexpected"] * bool(unexpected)
        raise CheckpointError(
            f"{source}: {key}: checkpoint {tuple(state[key].shape)} vs model {tuple(own[key].shape)}"
            f"{' (' + ', '.join(also) + ')' if also else ''}: the model section of the config does not match the "
            f"weights: use the run's config (config.yaml next to the checkpoint) or pass --config with the model the "
            f"weights were trained with")
    if missing or unexpected:
        parts = [f"{source} does not match the model:"]
        if missing:
            parts.append(f"  missing keys ({len(missing)}): {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
        if unexpected:
            parts.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}"
                         f"{' ...' if len(unexpected) > 20 else ''}")
        raise CheckpointError("\n".join(parts))
    model.load_state_dict(state, strict=not prefixes)


def save_official(state: dict[str, torch.Tensor], path: str | Path, meta: dict | None = None) -> None:
    """Write the mmcv layout `{'meta': ..., 'state_dict': ...}` (fp32 CPU tensors) atomically."""
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
             for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"meta": dict(meta or {}), "state_dict": state}, tmp)
    tmp.replace(path)


def export_official(model: nn.Module, path: str | Path, meta: dict | None = None) -> None:
    """A model's weights in the official layout, with its pos_embed grid in the meta."""
    meta = dict(meta or {})
    if hasattr(model, "backbone"):
        meta.setdefault("pos_embed_grid", list(model.backbone.grid))
    save_official(model.state_dict(), path, meta)


# ------------------------------------------------------ Hugging Face layout --
# (ours, theirs) key prefixes; {i} stands for a block index. One table serves both directions.
_HF_NAMES = [
    ("backbone.pos_embed", "backbone.embeddings.position_embeddings"),
    ("backbone.patch_embed.proj.", "backbone.embeddings.patch_embeddings.projection."),
    ("backbone.blocks.{i}.norm1.", "backbone.encoder.layer.{i}.layernorm_before."),
    ("backbone.blocks.{i}.norm2.", "backbone.encoder.layer.{i}.layernorm_after."),
    ("backbone.blocks.{i}.attn.proj.", "backbone.encoder.layer.{i}.attention.output.dense."),
    ("backbone.blocks.{i}.mlp.", "backbone.encoder.layer.{i}.mlp."),
    ("backbone.last_norm.", "backbone.layernorm."),
    ("keypoint_head.deconv_layers.0.", "head.deconv1."),
    ("keypoint_head.deconv_layers.1.", "head.batchnorm1."),
    ("keypoint_head.deconv_layers.3.", "head.deconv2."),
    ("keypoint_head.deconv_layers.4.", "head.batchnorm2."),
    ("keypoint_head.final_layer.", "head.conv."),
]


def _prefix_rule(src: str, dst: str) -> tuple[re.Pattern, str]:
    return re.compile("^" + re.escape(src).replace(r"\{i\}", r"(\d+)")), dst.replace("{i}", r"\1")


@functools.cache
def _hf_rules(to_hf: bool) -> list[tuple[re.Pattern, str]]:
    """The renaming rules ours -> theirs (to_hf) or back, compiled once on first use."""
    return [_prefix_rule(ours, theirs) if to_hf else _prefix_rule(theirs, ours) for ours, theirs in _HF_NAMES]


_QKV = re.compile(r"backbone\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)")
_HF_QKV = re.compile(r"backbone\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, repl in rules:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return None


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        m = _QKV.fullmatch(key)
        if m:
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"backbone.encoder.layer.{m[1]}.attention.attention.{name}.{m[2]}"] = part.clone()
            continue
        new = _rename(key, _hf_rules(to_hf=True))
        if new is None:
            raise CheckpointError(f"no Hugging Face name for key {key}")
        out[new] = value
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _HF_QKV.fullmatch(key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        new = _rename(key, _hf_rules(to_hf=False))
        if new is None:
            raise CheckpointError(f"unknown Hugging Face VitPose key {key}")
        out[new] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise CheckpointError(f"layer {layer} {kind}: query/key/value incomplete ({sorted(parts)})")
        out[f"backbone.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def hf_config(cfg: ModelConfig):
    """A transformers `VitPoseConfig` with the same shape as `cfg` (built locally, no hub access)."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig

    m = cfg.resolved()
    if m.patch_stride != m.patch_size:
        raise CheckpointError("the Hugging Face VitPose layout has no overlapping-patch variant (patch_stride 8)")
    # Transformers sizes the MLP as hidden_size * mlp_ratio with an integer ratio (intermediate_size
    # is ignored), so only integer ratios map; the G preset's 6144 / 1408 does not.
    if not float(m.mlp_ratio).is_integer():
        raise CheckpointError(f"the Hugging Face VitPose layout takes an integer mlp_ratio (MLP width = hidden "
                              f"size x ratio); this model has {m.mlp_ratio:g} (MLP width "
                              f"{int(round(m.embed_dim * m.mlp_ratio))})")
    # ViTPose++ (vitpose-plus on the hub): the same experts; the caller passes dataset_index
    experts = dict(num_experts=m.num_experts, part_features=m.part_features) \
        if m.backbone == "vit_moe" and m.num_experts > 1 else {}
    backbone = VitPoseBackboneConfig(
        hidden_size=m.embed_dim, num_hidden_layers=m.depth, num_attention_heads=m.num_heads,
        mlp_ratio=int(m.mlp_ratio), image_size=list(m.image_size),
        patch_size=[m.patch_size, m.patch_size], qkv_bias=m.qkv_bias, layer_norm_eps=1e-6,
        out_indices=[m.depth], num_labels=m.num_keypoints, **experts)
    return VitPoseConfig(backbone_config=backbone, use_simple_decoder=m.head == "simple", num_labels=m.num_keypoints,
                         scale_factor=4)


def hf_image_processor(cfg: ModelConfig):
    """The transformers `VitPoseImageProcessor` that feeds this model as we do: crops of the model's
    input size (its default, 256x192, would break every other size) normalised with our training's
    ImageNet mean/std (`data.transforms.normalize_image`)."""
    from transformers import VitPoseImageProcessor

    from vitpose_scale.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    height, width = cfg.resolved().image_size
    # Rounded back to the decimals the constants were written with, not float32's 0.48500001...
    return VitPoseImageProcessor(size={"height": int(height), "width": int(width)},
                                 image_mean=[round(float(v), 6) for v in IMAGENET_MEAN],
                                 image_std=[round(float(v), 6) for v in IMAGENET_STD],
                                 do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_affine_transform=True)


def _hf_vitpose_config(path: str | Path):
    """The transformers `VitPoseConfig` of a Hugging Face directory (every default filled in: config.json
    stores only what differs from them)."""
    from transformers import VitPoseConfig

    path = Path(path)
    try:
        return VitPoseConfig.from_pretrained(str(path))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path / 'config.json'}: not a Hugging Face VitPose config "
                              f"({_first_line(exc)})") from exc


def model_config_from_hf(path: str | Path) -> ModelConfig:
    """The model section of a Hugging Face VitPose directory (the inverse of `hf_config`): what its
    config.json says, so the directory needs no --config. Raises CheckpointError for a VitPose that
    our model cannot compute (another MLP activation, layer-norm epsilon, patch shape or upsampling)."""
    hf = _hf_vitpose_config(path)
    b = hf.backbone_config
    source = Path(path) / "config.json"
    patch = list(b.patch_size) if isinstance(b.patch_size, (list, tuple)) else [b.patch_size] * 2
    checks = [(b.hidden_act == "gelu", f"hidden_act {b.hidden_act!r}", "gelu"),
              (math.isclose(b.layer_norm_eps, 1e-6), f"layer_norm_eps {b.layer_norm_eps}", "1e-06"),
              (patch[0] == patch[1], f"patch_size {patch}", "square patches"),
              (hf.scale_factor == 4, f"scale_factor {hf.scale_factor}", "4 (heatmaps at 1/4 of the input)"),
              (list(b.out_indices or [b.num_hidden_layers]) == [b.num_hidden_layers],
               f"out_indices {b.out_indices}", f"the last layer, [{b.num_hidden_layers}]")]
    for ok, got, want in checks:
        if not ok:
            raise CheckpointError(f"{source}: {got}: this toolkit's ViTPose computes another model: expected {want}")
    experts = b.num_experts > 1
    return ModelConfig(
        backbone="vit_moe" if experts else "vit", num_experts=b.num_experts if experts else 1,
        part_features=b.part_features if experts else None, embed_dim=b.hidden_size, depth=b.num_hidden_layers,
        num_heads=b.num_attention_heads, mlp_ratio=float(b.mlp_ratio), drop_path=0.0,
        image_size=[int(v) for v in b.image_size], patch_size=patch[0], patch_stride=patch[0], patch_padding=2,
        qkv_bias=bool(b.qkv_bias), head="simple" if hf.use_simple_decoder else "classic",
        head_channels=int(getattr(hf, "head_channels", HF_CLASSIC_CHANNELS)),  # `export_hf` notes a narrower one
        num_keypoints=hf.num_labels,
        # one head next to experts: the model still needs to know it serves one dataset
        head_keypoints=[hf.num_labels] if experts else None)


def hf_keypoint_set(path: str | Path) -> str | None:
    """The keypoint set of a Hugging Face VitPose directory: the shipped set whose joint names are its
    id2label (`export_hf` writes them); for unnamed labels (transformers' LABEL_i) the one set with
    that joint count (`spec_for_count`, COCO first); None when neither decides."""
    from vitpose_scale.keypoints import available, get_spec, spec_for_count

    hf = _hf_vitpose_config(path)
    labels = dict(hf.id2label or {})
    names = tuple(str(labels.get(i, labels.get(str(i), ""))) for i in range(hf.num_labels))
    for name in ["coco"] + [n for n in available() if n != "coco"]:
        if tuple(get_spec(name).names) == names:
            return name
    if not all(re.fullmatch(r"(LABEL_\d+)?", n) for n in names):
        return None  # named joints of another set: their count alone would pick the wrong one
    spec = spec_for_count(hf.num_labels)
    return spec.name if spec is not None else None


# transformers' VitPoseClassicDecoder hard-codes its width (deconv1/deconv2/batchnorm 256 channels).
HF_CLASSIC_CHANNELS = 256
# Our classic head's tensors (two deconvolutions, stride 16) and the dimensions that count its channels.
_CLASSIC_HEAD_DIMS = {"keypoint_head.deconv_layers.0.weight": (1,), "keypoint_head.deconv_layers.3.weight": (0, 1),
                      "keypoint_head.final_layer.weight": (1,),
                      **{f"keypoint_head.deconv_layers.{i}.{name}": (0,) for i in (1, 4)
                         for name in ("weight", "bias", "running_mean", "running_var")}}


def widen_classic_head(state: dict[str, torch.Tensor], width: int = HF_CLASSIC_CHANNELS) -> dict[str, torch.Tensor]:
    """A classic head of fewer channels as an exactly equal one of `width`: the added channels have
    BatchNorm scale and shift 0, so they are 0 after it (and the ReLU) whatever comes in, and every
    weight that reads them is 0. How a narrow head fits transformers' fixed 256 channels."""
    out = dict(state)
    for key, dims in _CLASSIC_HEAD_DIMS.items():
        value = state[key]
        for dim in dims:
            pad = list(value.shape)
            pad[dim] = width - value.shape[dim]
            fill = torch.ones if key.endswith("running_var") else torch.zeros  # variance 1: no 0/0 in the padding
            value = torch.cat([value, fill(pad, dtype=value.dtype)], dim=dim)
        out[key] = value
    return out


def narrow_classic_head(state: dict[str, torch.Tensor], channels: int, source: str) -> dict[str, torch.Tensor]:
    """The inverse of `widen_classic_head`: the first `channels` channels, after checking that the rest
    are the inert padding (BatchNorm scale and shift 0); CheckpointError otherwise."""
    for i in (1, 4):
        for name in ("weight", "bias"):
            key = f"keypoint_head.deconv_layers.{i}.{name}"
            if state[key][channels:].abs().max() > 0:
                raise CheckpointError(f"{source}: {key}: channels {channels}.. are not the zero padding of a "
                                      f"{channels}-channel head (changed after export?): remove head_channels from "
                                      f"config.json to load it as a {state[key].shape[0]}-channel head")
    out = dict(state)
    for key, dims in _CLASSIC_HEAD_DIMS.items():
        index = [slice(None)] * state[key].dim()
        for dim in dims:
            index[dim] = slice(0, channels)
        out[key] = state[key][tuple(index)].contiguous()
    return out
