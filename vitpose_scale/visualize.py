"""Drawing helpers: skeletons on images, a grid of predictions, training curves.

matplotlib is imported inside the functions (Agg backend) so importing this
module stays cheap and never needs a display.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from vitpose_scale.keypoints import KeypointSpec, get_spec


def draw_skeletons(image_bgr: np.ndarray, people, keypoints: KeypointSpec | str = "coco", score_thr: float = 0.3,
                   boxes=None, thickness: int | None = None) -> np.ndarray:
    """Draw each person's limbs and joints on a copy of ``image_bgr``.

    ``keypoints``: the keypoint set, whose skeleton and colours are drawn.

    ``people``: (K, 3) arrays [x, y, score] in image pixels; a joint (and every
    limb touching it) is drawn only when its score is >= ``score_thr`` and the
    coordinates are finite. ``boxes``: optional (x, y, w, h[, score]) per person.
    Drawing uses sub-pixel precision (shift 4) and antialiasing.
    """
    spec = get_spec(keypoints)
    bgr = [tuple(int(v) for v in c[::-1]) for c in spec.link_colors]  # the sets' colours are RGB
    joint_bgr = [tuple(int(v) for v in c[::-1]) for c in spec.keypoint_colors]
    img = np.ascontiguousarray(image_bgr).copy()
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    if thickness is None:  # scale with the image so lines stay visible on large photos
        thickness = max(1, int(round(max(h, w) / 250)))
    radius = thickness + 1
    shift = 4  # cv2 fixed-point: coordinates * 16 keep sub-pixel accuracy
    mult = 1 << shift

    def pt(x, y):
        return int(round(x * mult)), int(round(y * mult))

    if boxes is not None:
        for box in boxes:
            x, y, bw, bh = (float(v) for v in box[:4])
            cv2.rectangle(img, pt(x, y), pt(x + bw, y + bh), (255, 255, 255), max(1, thickness // 2),
                          cv2.LINE_AA, shift)
    for person in people:
        kp = np.asarray(person, dtype=np.float64).reshape(-1, 3)
        ok = np.isfinite(kp).all(axis=1) & (kp[:, 2] >= score_thr)
        if len(kp) != spec.num_keypoints:
            raise ValueError(f"a person with {len(kp)} keypoints; the keypoint set {spec.name!r} has "
                             f"{spec.num_keypoints}")
        for (a, b), color in zip(spec.skeleton, bgr):
            if ok[a] and ok[b]:
                cv2.line(img, pt(*kp[a, :2]), pt(*kp[b, :2]), color, thickness, cv2.LINE_AA, shift)
        for j in np.nonzero(ok)[0]:
            cv2.circle(img, pt(*kp[j, :2]), radius * mult, joint_bgr[j], -1, cv2.LINE_AA, shift)
    return img


def _people_by_image(results) -> dict[int, list[np.ndarray]]:
    out: dict[int, list[np.ndarray]] = {}
    for r in results:
        kp = np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3)
        out.setdefault(int(r["image_id"]), []).append(kp)
    return out


def _resolve_image(image_paths, file_name: str) -> Path | None:
    """``image_paths``: an image directory, or a list of files matched by base name."""
    if isinstance(image_paths, (str, Path)):
        p = Path(image_paths) / file_name
        return p if p.is_file() else None
    for p in image_paths:
        if Path(p).name == Path(file_name).name:
            return Path(p)
    return None


def save_predictions_figure(image_paths, results, coco_gt_images, out_png, max_images: int = 4,
                            score_thr: float = 0.3, person_score_thr: float = 0.0,
                            keypoints: KeypointSpec | str = "coco") -> Path:
    """One PNG grid with the predicted skeletons of up to ``max_images`` images.

    ``results``: COCO keypoint results (image_id, keypoints, score).
    ``coco_gt_images``: image id -> file name (a dict, or the GT ``images`` list).
    ``image_paths``: the image directory or a list of image files.
    People whose result score is below ``person_score_thr`` are left out.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(coco_gt_images, dict):  # accept the GT json's "images" list as well
        coco_gt_images = {int(im["id"]): im["file_name"] for im in coco_gt_images}
    kept = [r for r in results if float(r.get("score", 1.0)) >= person_score_thr]
    by_image = _people_by_image(kept)
    chosen = []
    for image_id in sorted(by_image):
        name = coco_gt_images.get(image_id)
        path = _resolve_image(image_paths, name) if name else None
        if path is not None:
            chosen.append((image_id, path))
        if len(chosen) >= max_images:
            break
    if not chosen:
        raise ValueError(f"none of the {len(by_image)} result images could be found in {image_paths!r}")

    cols = min(2, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image_id, path) in zip(axes.ravel(), chosen):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"could not read image {path}")
        drawn = draw_skeletons(img, by_image[image_id], keypoints, score_thr=score_thr)
        ax.imshow(cv2.cvtColor(drawn, cv2.COLOR_BGR2RGB))
        n = len(by_image[image_id])
        ax.set_title(f"{path.name}: {n} {'person' if n == 1 else 'people'}", fontsize=10)
    return _save_figure(fig, out_png)


def _save_figure(fig, out_png) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _run_config(run_dir: Path) -> dict:
    import yaml

    path = Path(run_dir) / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def run_title(run_dir, config_name: str | None = None) -> str:
    """'<config>: ViTPose-<preset> (<width>-d, <depth> blocks, HxW), <N> ranks <backend>, <steps> steps' from
    the run directory's config.yaml and the setup record of its metrics.jsonl."""
    from vitpose_scale.config import PRESETS
    from vitpose_scale.engine.metrics import read_jsonl

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    parts = [config_name or run_dir.name]
    m = cfg.get("model") or {}
    if m:
        preset = PRESETS.get(m.get("preset"), {})
        width, depth = m.get("embed_dim") or preset.get("embed_dim"), m.get("depth") or preset.get("depth")
        size = "x".join(str(v) for v in m.get("image_size", []))
        parts.append(f"ViTPose-{m.get('preset')} ({width}-d, {depth} blocks, {size})")
    metrics = run_dir / "metrics.jsonl"
    setup = next((r for r in read_jsonl(metrics) if r.get("kind") == "setup"), {}) if metrics.is_file() else {}
    p = cfg.get("parallel") or {}
    backend = p.get("backend", "")
    if backend == "deepspeed":
        backend = f"DeepSpeed ZeRO-{p.get('zero_stage')}"
    if setup.get("world_size"):
        n = setup["world_size"]
        parts.append(f"{n} rank{'s' if n != 1 else ''} {backend}".strip())
    if setup.get("total_steps"):
        parts.append(f"{setup['total_steps']} steps")
    head, rest = parts[0], parts[1:]
    return f"{head}: {', '.join(rest)}" if rest else head


def eval_set_name(run_dir) -> str | None:
    """The evaluation set of a run, from its config.yaml: 'synthetic val, 100 images' or the COCO annotation file."""
    d = _run_config(Path(run_dir)).get("data") or {}
    if not d:
        return None
    if d.get("kind") == "synthetic":
        return f"synthetic val, {d.get('synthetic_val')} images"
    return Path(d.get("val_ann", "")).name + (", detected boxes" if d.get("det_file") else ", GT boxes")


def plot_training_curves(metrics_jsonl_path, out_png, title: str | None = None, eval_set: str | None = None) -> Path:
    """Loss vs step (left axis) and AP vs step (right axis) from a metrics JSONL file.

    The title names the run (default: `run_title` of the file's directory) and the AP axis its
    evaluation set (default: `eval_set_name`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitpose_scale.engine.metrics import read_jsonl

    rows = [r for r in read_jsonl(metrics_jsonl_path) if isinstance(r, dict) and "step" in r]

    def series(key):
        pts = sorted((float(r["step"]), float(r[key])) for r in rows
                     if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key])))
        return [p[0] for p in pts], [p[1] for p in pts]

    loss_x, loss_y = series("loss")
    ap_x, ap_y = series("AP")
    if not loss_x and not ap_x:
        raise ValueError(f"{metrics_jsonl_path}: no lines with 'step' and 'loss' or 'AP'")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    handles = []
    if loss_x:
        handles += ax.plot(loss_x, loss_y, color="tab:blue", lw=1.2, label="loss")
        ax.set_ylabel("loss", color="tab:blue")
        if min(loss_y) > 0 and max(loss_y) / min(loss_y) > 100:
            ax.set_yscale("log")  # heatmap MSE falls by orders of magnitude early on
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ap_x:
        ax2 = ax.twinx() if loss_x else ax
        handles += ax2.plot(ap_x, ap_y, color="tab:red", marker="o", ms=4, lw=1.2, label="AP")
        eval_set = eval_set or eval_set_name(Path(metrics_jsonl_path).parent)
        ax2.set_ylabel(f"AP ({eval_set})" if eval_set else "AP", color="tab:red")
        ax2.margins(y=0.12)  # room for the best-AP label
        best = int(np.argmax(ap_y))
        ax2.annotate(f"{ap_y[best]:.3f}", (ap_x[best], ap_y[best]), textcoords="offset points",
                     xytext=(0, 6), ha="center", fontsize=8, color="tab:red")
    ax.legend(handles=handles, loc="upper center", fontsize=8)
    ax.set_title(title or run_title(Path(metrics_jsonl_path).parent), fontsize=10)
    return _save_figure(fig, out_png)
