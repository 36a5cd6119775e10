"""Keypoint sets: the one description of a skeleton that data, evaluation, drawing and export read.

A :class:`KeypointSpec` holds the joint names, flip pairs, upper/lower-body joints (half-body
augmentation), joint weights, OKS sigmas, the skeleton and colours for drawing, named parts
(COCO-WholeBody: body, foot, face, hands) and how the official code evaluates the set.

The shipped sets (``sets/<name>.json``) are transcribed from the mmpose 0.x dataset-info files of
the official ViTPose repository by ``scripts/import_keypoint_sets.py``;
``tests/test_keypoint_sets.py`` compares every field with those files. Add a set by dropping a
JSON of the same shape next to them, or at run time with :func:`register`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SETS_DIR = Path(__file__).resolve().parent / "sets"


class KeypointSetError(ValueError):
    """A keypoint-set name that does not exist, or a spec that contradicts itself."""


@dataclass(frozen=True)
class KeypointSpec:
    name: str
    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    upper_body_ids: tuple[int, ...]
    lower_body_ids: tuple[int, ...]
    joint_weights: tuple[float, ...]
    sigmas: tuple[float, ...]  # OKS sigmas; empty for sets scored only by PCKh
    skeleton: tuple[tuple[int, int], ...]  # 0-based joint index pairs
    keypoint_colors: tuple[tuple[int, int, int], ...]  # RGB
    link_colors: tuple[tuple[int, int, int], ...]
    # name -> (start, stop) joint range; COCO-WholeBody: body, foot, face, lefthand, righthand
    parts: dict = field(default_factory=dict)
    # how the official code scores the set: metric "oks" (+ use_area, mode) or "pckh"
    evaluation: dict = field(default_factory=lambda: {"metric": "oks", "use_area": True, "mode": "keypoints",
                                                      "reference": "xtcocotools"})
    source: str = ""  # where the values come from

    def __post_init__(self):
        k = len(self.names)
        checks = [
            (len(set(self.names)) == k, "joint names repeat"),
            (all(0 <= a < k and 0 <= b < k and a != b for a, b in self.flip_pairs), "a flip pair is out of range"),
            (all(0 <= a < k and 0 <= b < k for a, b in self.skeleton), "a skeleton link is out of range"),
            (len(self.joint_weights) == k, f"{len(self.joint_weights)} joint weights"),
            (len(self.sigmas) in (0, k), f"{len(self.sigmas)} sigmas"),
            (len(self.keypoint_colors) == k, f"{len(self.keypoint_colors)} keypoint colours"),
            (len(self.link_colors) == len(self.skeleton), "link colours and skeleton differ in length"),
            (all(0 <= a < b <= k for a, b in self.parts.values()), "a part range is out of range"),
            (self.evaluation.get("metric") in ("oks", "pckh"), f"evaluation metric {self.evaluation.get('metric')!r}"),
            (self.evaluation.get("metric") != "oks" or len(self.sigmas) == k, "an OKS set needs one sigma a joint"),
        ]
        bad = [what for ok, what in checks if not ok]
        if bad:
            raise KeypointSetError(f"keypoint set {self.name!r} ({k} joints): " + "; ".join(bad))

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def sigma_array(self) -> np.ndarray:
        return np.asarray(self.sigmas, dtype=np.float64)

    @property
    def flip_index(self) -> list[int]:
        """The joint each joint becomes in the mirrored image."""
        index = list(range(self.num_keypoints))
        for a, b in self.flip_pairs:
            index[a], index[b] = b, a
        return index

    def coco_skeleton(self) -> list[list[int]]:
        """The skeleton 1-based, as COCO annotation files write it."""
        return [[a + 1, b + 1] for a, b in self.skeleton]

    def coco_category(self, cat_id: int = 1, name: str = "person") -> dict:
        """A COCO ``categories`` entry for this set."""
        return {"id": cat_id, "name": name, "supercategory": name, "keypoints": list(self.names),
                "skeleton": self.coco_skeleton()}

    @classmethod
    def from_dict(cls, d: dict) -> "KeypointSpec":
        return cls(name=d["name"], names=tuple(d["names"]),
                   flip_pairs=tuple(tuple(p) for p in d["flip_pairs"]),
                   upper_body_ids=tuple(d["upper_body_ids"]), lower_body_ids=tuple(d["lower_body_ids"]),
                   joint_weights=tuple(float(w) for w in d["joint_weights"]),
                   sigmas=tuple(float(s) for s in d["sigmas"]),
                   skeleton=tuple(tuple(p) for p in d["skeleton"]),
                   keypoint_colors=tuple(tuple(c) for c in d["keypoint_colors"]),
                   link_colors=tuple(tuple(c) for c in d["link_colors"]),
                   parts={k: tuple(v) for k, v in d.get("parts", {}).items()},
                   evaluation=dict(d.get("evaluation", cls.__dataclass_fields__["evaluation"].default_factory())),
                   source=d.get("source", ""))


_REGISTRY: dict[str, KeypointSpec] = {}


def register(spec: KeypointSpec) -> KeypointSpec:
    """Make ``spec`` available to :func:`get_spec` (and so to ``data.keypoint_set``) under its name."""
    _REGISTRY[spec.name] = spec
    return spec


def available() -> list[str]:
    return sorted(set(_REGISTRY) | {p.stem for p in SETS_DIR.glob("*.json")})


def get_spec(name: str) -> KeypointSpec:
    """The keypoint set called ``name``; :class:`KeypointSetError` naming the choices otherwise."""
    if isinstance(name, KeypointSpec):
        return name
    if name not in _REGISTRY:
        path = SETS_DIR / f"{name}.json"
        if not isinstance(name, str) or not name.isidentifier() or not path.is_file():
            raise KeypointSetError(f"keypoint set {name!r} does not exist; expected one of {available()}")
        _REGISTRY[name] = KeypointSpec.from_dict(json.loads(path.read_text()))
    return _REGISTRY[name]


def spec_for_count(num_keypoints: int, preferred: str = "coco") -> KeypointSpec | None:
    """The preferred set when it has ``num_keypoints`` joints, else the only shipped set that has; None if unsure."""
    spec = get_spec(preferred)
    if spec.num_keypoints == num_keypoints:
        return spec
    matches = [s for s in (get_spec(n) for n in available()) if s.num_keypoints == num_keypoints]
    return matches[0] if len(matches) == 1 else None


__all__ = ["KeypointSpec", "KeypointSetError", "get_spec", "register", "available", "spec_for_count"]
