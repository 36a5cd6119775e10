"""MPII PCKh, the numbers of mmpose 0.x ``TopDownMpiiDataset.evaluate`` (the official ViTPose code).

The ground truth is ``mpii_gt_val.mat`` as distributed with mmpose 0.x (and HRNet): one column per
person of ``mpii_val.json``, in that file's order, with

* ``dataset_joints`` (1, 16) cell of joint names (``head``, ``lsho``, ``rsho``, ...),
* ``jnt_missing`` (16, N): 1 where the joint is not annotated,
* ``pos_gt_src`` (16, 2, N): joint positions, 1-based (MATLAB) pixels,
* ``headboxes_src`` (2, 2, N): head box corners [[x1, y1], [x2, y2]].

A joint is correct when its distance to the ground truth is at most ``threshold`` times
0.6 (``SC_BIAS``) times the head-box diagonal. Predictions are 0-based pixels (ours and mmpose's)
and get + 1 first; like mmpose's they are float32.

What the official code does, reproduced here:

* per joint: 100 * correct / annotated over the people where the joint is annotated (0/0 gives
  NaN, and a NaN joint outside pelvis/thorax makes the means NaN, as there);
* the groups are the mean of the left and right joint (Head: ``head`` alone);
* "Mean" (returned as ``PCKh``) averages the joints weighted by their annotated counts, leaving
  out *positions* 6 and 7 (pelvis and thorax) but keeping the upper neck (8), which no group
  shows; "Mean@0.1" (``PCKh@0.1``) is the same at threshold 0.1, from float32 per-joint values
  (the official ``pckAll`` table is float32).

``vitpose-scale pckh --gt mpii_gt_val.mat --results results.json [--out stats.json]``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitpose_scale.cli import InputError

SC_BIAS = 0.6
THRESHOLD = 0.5
NUM_JOINTS = 16
GT_FILE_NAME = "mpii_gt_val.mat"
# The official table: Head, the six left/right pairs, then the weighted means.
GROUPS = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle")
STAT_NAMES = GROUPS + ("PCKh", "PCKh@0.1")
# mmpose returns the means as PCKh / PCKh@0.1; its model-zoo tables (and HRNet's log) call them so:
TABLE_NAMES = GROUPS + ("Mean", "Mean@0.1")
# The names the official code looks up in dataset_joints, at their positions in mmpose's joint order
# (the predictions' order: the official code indexes predictions and ground truth alike).
JOINT_POSITIONS = {"rank": 0, "rkne": 1, "rhip": 2, "lhip": 3, "lkne": 4, "lank": 5, "head": 9,
                   "rwri": 10, "relb": 11, "rsho": 12, "lsho": 13, "lelb": 14, "lwri": 15}
GROUP_JOINTS = {"Head": ("head",), "Shoulder": ("lsho", "rsho"), "Elbow": ("lelb", "relb"),
                "Wrist": ("lwri", "rwri"), "Hip": ("lhip", "rhip"), "Knee": ("lkne", "rkne"),
                "Ankle": ("lank", "rank")}
LEFT_OUT = (6, 7)  # pelvis and thorax: the official masks these positions out of both means
# The official threshold table is np.arange(0, 0.5 + 0.01, 0.01); PCKh@0.1 is its row 10.
THRESHOLD_01 = float(np.arange(0, 0.5 + 0.01, 0.01)[10])
GT_KEYS = ("dataset_joints", "jnt_missing", "pos_gt_src", "headboxes_src")
EXPECTED_GT = (f"expected {GT_FILE_NAME} as distributed with mmpose 0.x ({', '.join(GT_KEYS)})")


class PCKhInputError(InputError):
    """A ground-truth .mat or a results file that cannot be scored (one line: the file and what was expected)."""


@dataclass(frozen=True)
class MpiiGroundTruth:
    """The arrays of ``mpii_gt_val.mat``, as loaded (dtypes kept: the official arithmetic follows them)."""

    path: str
    joint_names: tuple[str, ...]
    missing: np.ndarray  # (16, N)
    positions: np.ndarray  # (16, 2, N), 1-based
    headboxes: np.ndarray  # (2, 2, N)

    @property
    def num_people(self) -> int:
        return int(self.positions.shape[2])


def _cell_text(cell) -> str:
    value = np.asarray(cell).ravel()
    return str(value[0]) if value.size else ""


def load_gt(path: str | Path) -> MpiiGroundTruth:
    """Read ``mpii_gt_val.mat`` with ``scipy.io.loadmat`` (no code runs); PCKhInputError when it is not one."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise PCKhInputError(f"{path}: no such file; {EXPECTED_GT}")
    try:
        mat = loadmat(str(path))
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError, TypeError, MatReadError, ...
        raise PCKhInputError(f"{path}: not a MATLAB .mat file ({type(exc).__name__}: "
                             f"{' '.join(str(exc).split())}); {EXPECTED_GT}") from exc
    absent = [k for k in GT_KEYS if k not in mat]
    if absent:
        present = sorted(k for k in mat if not k.startswith("__"))
        raise PCKhInputError(f"{path}: no {', '.join(repr(k) for k in absent)} (variables: {present}); {EXPECTED_GT}")
    joints, missing = mat["dataset_joints"], mat["jnt_missing"]
    positions, headboxes = mat["pos_gt_src"], mat["headboxes_src"]
    # MATLAB drops a trailing singleton dimension: a file with one person stores 16x2 and 2x2.
    if positions.ndim == 2 and headboxes.ndim == 2 and missing.shape[-1:] == (1,):
        positions, headboxes = positions[..., None], headboxes[..., None]
    for name, arr in (("jnt_missing", missing), ("pos_gt_src", positions), ("headboxes_src", headboxes)):
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise PCKhInputError(f"{path}: {name} holds {arr.dtype} values; expected numbers ({EXPECTED_GT})")
    n = positions.shape[-1] if positions.ndim == 3 else -1
    shapes_ok = (positions.shape == (NUM_JOINTS, 2, n) and missing.shape == (NUM_JOINTS, n)
                 and headboxes.shape == (2, 2, n) and joints.size == NUM_JOINTS)
    if not shapes_ok:
        raise PCKhInputError(
            f"{path}: dataset_joints {joints.shape}, jnt_missing {missing.shape}, pos_gt_src {positions.shape}, "
            f"headboxes_src {headboxes.shape}; expected (1, 16), (16, N), (16, 2, N) and (2, 2, N) for N people")
    names = tuple(_cell_text(c) for c in joints.ravel())
    misplaced = [f"{k} at {names.index(k) if k in names else 'none'}" for k, i in JOINT_POSITIONS.items()
                 if k not in names or names.index(k) != i]
    if misplaced:
        raise PCKhInputError(f"{path}: dataset_joints {list(names)} has {', '.join(misplaced)}; expected "
                             f"mmpose's MPII order ({', '.join(f'{k} at {i}' for k, i in JOINT_POSITIONS.items())})")
    if not np.isin(missing, (0, 1)).all():
        raise PCKhInputError(f"{path}: jnt_missing holds values other than 0 and 1 "
                             f"({sorted(set(np.unique(missing).tolist()) - {0, 1})[:5]}); expected 0/1 flags")
    return MpiiGroundTruth(str(path), names, missing, positions, headboxes)


def pckh(predictions, gt: MpiiGroundTruth) -> dict[str, float]:
    """PCKh@0.5 by group, ``PCKh`` (the official Mean) and ``PCKh@0.1``, in percent.

    ``predictions``: (N, 16, 2 or 3) 0-based pixel positions, one person per ground-truth column,
    in the ground truth's order (a third column, the score, is ignored).
    """
    preds = np.asarray(predictions, dtype=np.float32)  # mmpose's preds are float32
    if preds.ndim != 3 or preds.shape[1:2] != (NUM_JOINTS,) or preds.shape[2] not in (2, 3):
        raise PCKhInputError(f"predictions of shape {preds.shape}; expected (N, {NUM_JOINTS}, 2 or 3)")
    if preds.shape[0] != gt.num_people:
        raise PCKhInputError(f"{preds.shape[0]} predictions for the {gt.num_people} people of {gt.path}; "
                             f"expected one per person, in mpii_val.json's order")
    pos_pred = np.transpose(preds[..., :2] + 1.0, [1, 2, 0])  # 1-based, (16, 2, N); float32 + 1.0 stays float32
    visible = 1 - gt.missing
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero head box or an empty joint: as there
        dist = np.linalg.norm(pos_pred - gt.positions, axis=1)  # (16, N)
        head = np.linalg.norm(gt.headboxes[1, :, :] - gt.headboxes[0, :, :], axis=0)
        head *= SC_BIAS
        norm = head * np.ones((len(dist), 1), dtype=np.float32)
        scaled = dist / norm
        scaled = scaled * visible
        count = np.sum(visible, axis=1)

        def per_joint(threshold: float) -> np.ndarray:
            return 100.0 * np.sum((scaled <= threshold) * visible, axis=1) / count

        at05 = per_joint(THRESHOLD)
        at01 = per_joint(THRESHOLD_01).astype(np.float32)  # a row of the official float32 table
        used = np.ones(NUM_JOINTS, dtype=bool)
        used[list(LEFT_OUT)] = False
        total = np.float64(np.sum(count[used]))
        # Left-out positions count as 0 in the sums, in place, as the official masked sums fill them.
        ratio = np.zeros(NUM_JOINTS)
        ratio[used] = count[used] / total if total != 0 else np.nan

        def weighted(values: np.ndarray) -> float:
            terms = np.zeros(NUM_JOINTS)
            terms[used] = values[used] * ratio[used]
            return float(np.sum(terms))

        stats = {}
        for group, names in GROUP_JOINTS.items():
            idx = [JOINT_POSITIONS[n] for n in names]
            stats[group] = float(at05[idx[0]]) if len(idx) == 1 else float(0.5 * (at05[idx[0]] + at05[idx[1]]))
        stats["PCKh"] = weighted(at05)
        stats["PCKh@0.1"] = weighted(at01)
    return stats


_ENTRY_FORMS = (f"expected {{'keypoints': [{3 * NUM_JOINTS} numbers], ...}} or a list of {NUM_JOINTS} "
                f"[x, y] points")


def _entry_points(entry, i: int, path: str) -> np.ndarray:
    """One result as (K, 2 or 3): a dict with COCO-style flat ``keypoints``, or a list of [x, y(, score)]."""
    where = f"{path}: result {i}"
    if isinstance(entry, dict):
        if "keypoints" not in entry:
            raise PCKhInputError(f"{where} has no 'keypoints' (keys {sorted(entry)[:8]}); {_ENTRY_FORMS}")
        flat = entry["keypoints"]
        if not isinstance(flat, list) or len(flat) % 3:
            size = len(flat) if isinstance(flat, list) else type(flat).__name__
            raise PCKhInputError(f"{where}: 'keypoints' is {size} values; expected {3 * NUM_JOINTS} "
                                 f"(x, y, score for each of the {NUM_JOINTS} MPII joints)")
        points = flat
        k = len(flat) // 3
    elif isinstance(entry, list) and all(isinstance(p, list) and len(p) in (2, 3) for p in entry) \
            and len({len(p) for p in entry}) <= 1:
        points, k = entry, len(entry)
    else:
        raise PCKhInputError(f"{where} is {type(entry).__name__} {str(entry)[:60]!r}; {_ENTRY_FORMS}")
    if k != NUM_JOINTS:
        raise PCKhInputError(f"{where} has {k} keypoints; expected {NUM_JOINTS} (the MPII joints)")
    try:
        arr = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise PCKhInputError(f"{where}: keypoints that are not numbers; expected {NUM_JOINTS} x, y(, score) "
                             f"numbers") from None
    return arr.reshape(NUM_JOINTS, -1)


def _points_at_once(entries: list) -> np.ndarray | None:
    """(N, 16, 2) in one conversion when every entry is a dict of 48 keypoint numbers (our
    evaluation's results, the usual case); None otherwise (then each entry is checked and named)."""
    try:
        arr = np.array([e["keypoints"] for e in entries], dtype=np.float64)
    except (TypeError, KeyError, ValueError, IndexError):
        return None
    if arr.ndim != 2 or arr.shape[1] != 3 * NUM_JOINTS:
        return None
    return arr.reshape(len(entries), NUM_JOINTS, 3)[:, :, :2]


def read_predictions(path: str | Path, num_people: int | None = None) -> np.ndarray:
    """(N, 16, 2) predictions from a results JSON: our evaluation's list of dicts (48 ``keypoints``
    floats each), or a list of per-person [[x, y(, score)] * 16]; one entry per person, in
    ``mpii_val.json``'s order."""
    path = Path(path)
    import msgspec

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PCKhInputError(f"{path}: cannot be read ({exc.strerror or exc}); expected a results JSON list") from None
    try:
        data = msgspec.json.decode(raw)  # a fast parser: most of the time is reading the file
    except msgspec.DecodeError as exc:
        raise PCKhInputError(f"{path}: not JSON ({exc}); expected a results JSON list") from None
    if not isinstance(data, list):
        raise PCKhInputError(f"{path}: a JSON {type(data).__name__}; expected a list with one result per person")
    if num_people is not None and len(data) != num_people:
        raise PCKhInputError(f"{path}: {len(data)} results; expected {num_people}, one per person of the "
                             f"ground truth, in mpii_val.json's order")
    fast = _points_at_once(data)
    if fast is not None:
        return fast
    results = [_entry_points(entry, i, str(path))[:, :2] for i, entry in enumerate(data)]
    return np.stack(results) if results else np.zeros((0, NUM_JOINTS, 2))


def results_array(results: list[dict], num_people: int, where: str = "results") -> np.ndarray:
    """(N, 16, 2) predictions from in-memory result dicts (``scoring.postprocess``'s, dataset order)."""
    if len(results) != num_people:
        raise PCKhInputError(f"{where}: {len(results)} results; expected {num_people}, one per person of the "
                             f"ground truth, in mpii_val.json's order")
    fast = _points_at_once(results)
    if fast is not None:
        return fast
    points = [_entry_points(entry, i, where)[:, :2] for i, entry in enumerate(results)]
    return np.stack(points) if points else np.zeros((0, NUM_JOINTS, 2))


def gt_file_for(ann_file: str | Path) -> Path:
    """Where mmpose looks for the ground truth: ``mpii_gt_val.mat`` in the annotation file's folder."""
    ann_file = Path(ann_file)
    mat = ann_file.parent / GT_FILE_NAME
    if not mat.is_file():
        raise PCKhInputError(f"{mat}: no such file; PCKh reads {GT_FILE_NAME} from the folder of the val "
                             f"annotations {ann_file.name} (as mmpose does); expected it there, from mmpose 0.x's "
                             f"MPII annotations")
    return mat


def score_dataset(ann_file, results: list[dict], dataset=None) -> dict[str, float]:
    """Stats of the evaluation's ``results`` (``scoring.postprocess``'s: one per person, dataset order)
    for the val set read from ``ann_file``: the ground truth is ``mpii_gt_val.mat`` in its folder,
    where mmpose reads it. With ``dataset``, its length must be the .mat's person count."""
    if not isinstance(ann_file, (str, Path)):
        raise PCKhInputError(f"PCKh ground truth {type(ann_file).__name__}; expected the path of the val "
                             f"annotation file, next to which {GT_FILE_NAME} lies")
    truth = load_gt(gt_file_for(ann_file))
    if dataset is not None and len(dataset) != truth.num_people:
        raise PCKhInputError(f"{truth.path}: {truth.num_people} people, but the val set "
                             f"{getattr(dataset, 'ann_file', ann_file)} has {len(dataset)}; expected the "
                             f"{GT_FILE_NAME} that belongs to that annotation file")
    return pckh(results_array(results, truth.num_people), truth)


def score_results(gt, results, verbose: bool = False) -> dict[str, float]:
    """Stats of ``results`` (a results JSON path or the list of entries) against ``gt``: the .mat,
    or the val annotation file next to which it lies. ``verbose``: print the table."""
    gt = Path(gt)
    truth = load_gt(gt if gt.suffix.lower() == ".mat" else gt_file_for(gt))
    if isinstance(results, (str, Path)):
        preds = read_predictions(results, truth.num_people)
    else:
        preds = results_array(list(results), truth.num_people)
    stats = pckh(preds, truth)
    if verbose:
        print("\n".join(table_lines(stats)))
    return stats


def table_lines(stats: dict[str, float]) -> list[str]:
    """The official table (HRNet's / mmpose's model-zoo columns), percent with 3 decimals."""
    names = " | ".join(TABLE_NAMES)
    values = " | ".join(f"{stats[k]:.3f}" for k in STAT_NAMES)
    return [f"| {names} |", "|" + "---|" * len(TABLE_NAMES), f"| {values} |"]


def main(argv: list[str] | None = None) -> int:
    """``vitpose-scale pckh``: exit 0, or 2 with one line for a bad input."""
    from vitpose_scale.cli import run_reporting_errors

    parser = argparse.ArgumentParser(
        prog="vitpose-scale pckh",
        description="MPII PCKh of a results file (the numbers of mmpose 0.x TopDownMpiiDataset.evaluate)")
    parser.add_argument("--gt", required=True, help=f"{GT_FILE_NAME} (mmpose 0.x's MPII annotations)")
    parser.add_argument("--results", required=True,
                        help="results JSON: one entry per person of mpii_val.json, in its order")
    parser.add_argument("--out", default=None, help="write the stats as a JSON object here")
    args = parser.parse_args(argv)
    return run_reporting_errors(_run, args)


def _run(args) -> int:
    out = Path(args.out) if args.out else None
    if out is not None:  # before the work, not after it
        if out.is_dir():
            raise PCKhInputError(f"--out {out} is a directory; expected a file path for the stats JSON")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PCKhInputError(f"--out {out} cannot be written: {exc.strerror or exc}") from None
        if not os.access(out if out.exists() else out.parent, os.W_OK):
            raise PCKhInputError(f"--out {out} cannot be written: no write permission")
    gt = load_gt(args.gt)
    stats = pckh(read_predictions(args.results, gt.num_people), gt)
    for line in table_lines(stats):
        print(line)
    if out is not None:
        try:
            out.write_text(json.dumps({k: (v if math.isfinite(v) else None) for k, v in stats.items()}, indent=2))
        except OSError as exc:
            raise PCKhInputError(f"--out {out} cannot be written: {exc.strerror or exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
