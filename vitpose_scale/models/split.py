"""One dataset's plain ViTPose out of a multi-task ViTPose+ / ViTPose++ state dict.

What the official `tools/model_split.py` writes for dataset K: each block's `mlp.fc2` becomes
cat(fc2, experts.K) on the output dim (the shared features first, as MoEMlp concatenates them),
and dataset K's head becomes `keypoint_head`. Unlike that script, every `mlp.experts.*` and
`associate_keypoint_heads.*` key is dropped (its removal test, `'expert' in keys`, never matches,
and dataset 0's file keeps the associate heads), so the result loads strictly into a plain
single-head model.
"""
from __future__ import annotations

import re

import torch

from vitpose_scale.models.interop import CheckpointError, dataset_count, expert_layout, head_joint_counts, head_prefix

_FC2 = re.compile(r"(backbone\.blocks\.\d+\.mlp\.)fc2\.(weight|bias)")


def select_head(state: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """`state` with dataset `index`'s head as `keypoint_head.*` and no associate heads (the backbone,
    experts included, untouched): the one-head layout of a Hugging Face vitpose-plus model."""
    heads = head_joint_counts(state)
    _check_index(state, index)
    own = head_prefix(index) if len(heads) > 1 else "keypoint_head."  # one head: shared by every dataset
    out = {k: v for k, v in state.items()
           if not k.startswith(("keypoint_head.", "associate_keypoint_heads."))}
    out.update({"keypoint_head." + k[len(own):]: v for k, v in state.items() if k.startswith(own)})
    return out


def split_state_dict(state: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    """The plain ViTPose of dataset `index`: experts merged into fc2, that dataset's head only."""
    experts, _ = expert_layout(state)
    out = select_head(state, index)
    if not experts:
        return out  # ViTPose+: the backbone is shared as it is
    for key in list(out):
        m = _FC2.fullmatch(key)
        if m:
            expert = f"{m[1]}experts.{index}.{m[2]}"
            if expert not in state:
                raise CheckpointError(f"{expert} is missing: the checkpoint has experts but not this block's "
                                      f"expert for dataset {index}")
            out[key] = torch.cat([out[key], state[expert]], dim=0)
    return {k: v for k, v in out.items() if ".mlp.experts." not in k}


def _check_index(state: dict[str, torch.Tensor], index: int) -> None:
    count = dataset_count(state)
    if count < 2:
        raise CheckpointError("the checkpoint serves one dataset (no mlp.experts.*, no associate_keypoint_heads.*): "
                              "nothing to split")
    if not 0 <= index < count:
        raise ValueError(f"dataset index {index} outside [0, {count}): the checkpoint serves {count} datasets")
    experts, heads = expert_layout(state)[0], len(head_joint_counts(state))
    if experts and index >= experts or heads > 1 and index >= heads:
        raise CheckpointError(f"dataset {index}: the checkpoint has {experts} experts per block and {heads} heads: "
                              f"dataset {index} has no {'expert' if experts and index >= experts else 'head'}")


def resolve_dataset(text: str, names: list[str], count: int) -> int:
    """A --dataset value (a name of `names`, the config's datasets in order, or an index) -> the
    dataset index in [0, count); InputError (exit 2) otherwise."""
    from vitpose_scale.cli import InputError

    listed = ", ".join(f"{i}={n}" for i, n in enumerate(names)) or "no names: the config has no data.tasks"
    if text.strip().lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < count:
            raise InputError(f"--dataset {text}: outside the model's {count} datasets ({listed}): expected an "
                             f"index in [0, {count}) or a name")
        return index
    if text not in names:
        raise InputError(f"--dataset {text}: not a dataset of this model ({listed}): expected one of these names "
                         f"or an index in [0, {count})")
    return names.index(text)
