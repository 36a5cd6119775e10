"""Drawing helpers: skeletons (with box scores) on images, title bands, exact image grids (MAE
reconstructions), a titled grid of predictions with their boxes, training curves.

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
                   boxes=None, thickness: int | None = None, box_scores: bool = True) -> np.ndarray:
    """Draw each person's limbs and joints on a copy of ``image_bgr``.

    ``keypoints``: the keypoint set, whose skeleton and colours are drawn.

    ``people``: (K, 3) arrays [x, y, score] in image pixels; a joint (and every
    limb touching it) is drawn only when its score is >= ``score_thr`` and the
    coordinates are finite. ``boxes``: optional (x, y, w, h[, score]) per person; with
    ``box_scores`` a box's score (5th column) is written at its top-left corner.
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
            if box_scores and len(box) >= 5 and np.isfinite(float(box[4])):
                _label(img, f"{float(box[4]):.2f}", (x, y), thickness)
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


def _label(img: np.ndarray, text: str, corner, thickness: int) -> None:
    """White text on a black patch just inside ``corner`` (x, y): readable on any background."""
    scale = 0.35 * max(1, thickness)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    h, w = img.shape[:2]
    x0 = int(np.clip(round(corner[0]), 0, max(0, w - tw - 2)))
    y0 = int(np.clip(round(corner[1]), 0, max(0, h - th - base - 2)))
    cv2.rectangle(img, (x0, y0), (x0 + tw + 2, y0 + th + base + 2), (0, 0, 0), -1)
    cv2.putText(img, text, (x0 + 1, y0 + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def add_title(image_bgr: np.ndarray, text: str, band: int | None = None) -> np.ndarray:
    """``image_bgr`` below a white band holding ``text`` in black; the width is kept (the text is
    shrunk to fit), the height grows by the band (default: 1/12 of the width, 20 to 60 pixels)."""
    img = np.ascontiguousarray(image_bgr)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    band = band or int(np.clip(w // 12, 20, 60))
    top = np.full((band, w, 3), 255, dtype=img.dtype)
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, 1.0, 1)
    scale = min((band * 0.6) / max(th + base, 1), (w - 8) / max(tw, 1))  # fits the band's height and width
    (tw, th), base = cv2.getTextSize(text, font, scale, 1)
    org = (max(4, (w - tw) // 2), (band + th - base) // 2 + base // 2)
    cv2.putText(top, text, org, font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([top, img], axis=0)


def image_rows(rows, labels=None, title: str | None = None, scale: int = 1, gap: int = 4) -> np.ndarray:
    """One BGR picture of equal-sized (H, W, 3) uint8 RGB panels, ``rows`` of them, on white.

    Exact pixels (no resampling but an integer ``scale``, nearest): panel (r, c) lies at
    x = gap + c * (W*scale + gap), y = top + gap + r * (H*scale + gap), where ``top`` is the
    height of the header (``title`` band above the ``labels`` band), i.e. the picture's height
    minus len(rows) * (H*scale + gap) + gap."""
    rows = [[np.asarray(p) for p in row] for row in rows]
    h, w = rows[0][0].shape[:2]
    ph, pw = h * scale, w * scale
    cols = max(len(row) for row in rows)
    grid = np.full((gap + len(rows) * (ph + gap), gap + cols * (pw + gap), 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            big = np.repeat(np.repeat(panel, scale, axis=0), scale, axis=1)
            y, x = gap + r * (ph + gap), gap + c * (pw + gap)
            grid[y:y + ph, x:x + pw] = big[..., ::-1]  # RGB -> BGR
    if labels:
        band = np.full((22, grid.shape[1], 3), 255, dtype=np.uint8)
        for c, text in enumerate(labels):
            scale_t = min(0.5, (pw - 4) / max(cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)[0][0], 1))
            (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale_t, 1)
            cv2.putText(band, text, (gap + c * (pw + gap) + max(0, (pw - tw) // 2), 16), cv2.FONT_HERSHEY_SIMPLEX,
                        scale_t, (0, 0, 0), 1, cv2.LINE_AA)
        grid = np.concatenate([band, grid], axis=0)
    return add_title(grid, title) if title else grid


def _people_by_image(results) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in results:
        out.setdefault(int(r["image_id"]), []).append(r)
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


def record_boxes(records, padding: float = 1.0) -> dict[int, np.ndarray]:
    """image id -> (n, 5) [x, y, w, h, box score] from a pose dataset's records (centre, scale, bbox_score).

    ``scale`` is the crop: the box grown to the input's aspect ratio, times ``padding``
    (data.bbox_padding); dividing it out gives the person box at the input's aspect."""
    out: dict[int, list] = {}
    for rec in records:
        (cx, cy), (w, h) = rec["center"], np.asarray(rec["scale"], dtype=np.float64) / padding
        out.setdefault(int(rec["image_id"]), []).append([cx - w / 2, cy - h / 2, w, h,
                                                         float(rec.get("bbox_score", 1.0))])
    return {i: np.asarray(b, dtype=np.float64) for i, b in out.items()}


def _match_box(kp: np.ndarray, candidates: np.ndarray) -> np.ndarray | None:
    """The candidate box holding most of the person's joints (ties: the nearest centre): a top-down
    result comes from one box, and its joints lie around that box's person."""
    if candidates is None or len(candidates) == 0:
        return None
    pts = kp[np.isfinite(kp).all(axis=1) & (kp[:, 2] > 0), :2]
    if len(pts) == 0:
        return None
    x, y, w, h = (candidates[:, i][:, None] for i in range(4))
    inside = ((pts[None, :, 0] >= x) & (pts[None, :, 0] <= x + w) & (pts[None, :, 1] >= y)
              & (pts[None, :, 1] <= y + h)).sum(axis=1)
    centre = candidates[:, :2] + candidates[:, 2:4] / 2
    dist = np.hypot(*(centre - pts.mean(axis=0)).T)
    return candidates[np.lexsort((dist, -inside))[0]]


def _person_boxes(people: list[dict], candidates) -> np.ndarray | None:
    """(n, 5) [x, y, w, h, result score] per result: its own ``bbox`` or the matched candidate's box."""
    rows = []
    for r in people:
        box = r.get("bbox")
        if box is None:
            kp = np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3)
            box = _match_box(kp, candidates)
        if box is None:
            rows.append([np.nan] * 5)  # no box known: nothing drawn for this person
        else:
            rows.append([float(v) for v in box[:4]] + [float(r.get("score", np.nan))])
    out = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    return out[np.isfinite(out[:, :4]).all(axis=1)]


def save_predictions_figure(image_paths, results, coco_gt_images, out_png, max_images: int = 4,
                            score_thr: float = 0.3, person_score_thr: float = 0.0,
                            keypoints: KeypointSpec | str = "coco", title: str | None = None,
                            boxes: dict | None = None) -> Path:
    """One PNG grid with the predicted skeletons of up to ``max_images`` images.

    ``results``: COCO keypoint results (image_id, keypoints, score[, bbox]).
    ``coco_gt_images``: image id -> file name (a dict, or the GT ``images`` list).
    ``image_paths``: the image directory or a list of image files.
    People whose result score is below ``person_score_thr`` are left out.
    ``title``: the figure's title (the model, checkpoint and AP: `checkpoints_title`).
    Each person's box is drawn with the result's score: the result's own ``bbox``, else the box of
    ``boxes`` (image id -> (n, 4|5) x, y, w, h: `record_boxes`) that holds most of its joints.
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
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.5 * rows + (0.4 if title else 0)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (image_id, path) in zip(axes.ravel(), chosen):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"could not read image {path}")
        people = by_image[image_id]
        kps = [np.asarray(r["keypoints"], dtype=np.float64).reshape(-1, 3) for r in people]
        person_boxes = _person_boxes(people, (boxes or {}).get(image_id))
        drawn = draw_skeletons(img, kps, keypoints, score_thr=score_thr, boxes=person_boxes)
        ax.imshow(cv2.cvtColor(drawn, cv2.COLOR_BGR2RGB))
        n = len(people)
        ax.set_title(f"{path.name}: {n} {'person' if n == 1 else 'people'}", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save_figure(fig, out_png)


def model_name(model_cfg) -> str:
    """'ViTPose-B' from a ModelConfig (or its dict); ViTPose+ (experts) and multi-head models say so."""
    get = model_cfg.get if isinstance(model_cfg, dict) else lambda k, d=None: getattr(model_cfg, k, d)
    plus = "+" if (get("num_experts") or 1) > 1 else ""
    return f"ViTPose{plus}-{get('preset')}"


def _short_path(path) -> str:
    """The checkpoint's file with its folder (runs/X/best.pth -> X/best.pth): names it in a title."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def checkpoints_title(checkpoints, models=None, stats: dict | None = None, metric: str = "AP",
                      weights=None) -> str:
    """'ViTPose-B X/best.pth: AP 0.734', or for an ensemble 'ensemble of 2: ViTPose-B X/best.pth (w 0.7)
    + ViTPose-L Y/best.pth: AP 0.750'; without ground truth 'no AP (no ground truth)'.
    ``models``: one ModelConfig (or name) per checkpoint, or None."""
    checkpoints = [str(c) for c in checkpoints]
    models = list(models) if models is not None else [None] * len(checkpoints)
    names = []
    for i, (ckpt, model) in enumerate(zip(checkpoints, models)):
        label = model if isinstance(model, str) or model is None else model_name(model)
        weight = f" (w {weights[i]:g})" if weights and len(checkpoints) > 1 else ""
        names.append(" ".join(part for part in (label, _short_path(ckpt)) if part) + weight)
    value = (stats or {}).get(metric)
    score = f"{metric} {value:.3f}" if isinstance(value, (int, float)) else f"no {metric} (no ground truth)"
    if len(names) == 1:
        return f"{names[0]}: {score}"
    return f"ensemble of {len(names)}: {' + '.join(names)}: {score}"


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


def is_mae_run(run_dir) -> bool:
    """An MAE pretraining run: its reconstructions folder, or a checkpoint whose meta says kind 'mae'."""
    import json

    run_dir = Path(run_dir)
    if (run_dir / "reconstructions").is_dir():
        return True
    for meta in sorted((run_dir / "checkpoints").glob("step_*/meta.json"))[-1:]:
        try:
            return json.loads(meta.read_text()).get("kind") == "mae"
        except (OSError, ValueError):
            return False
    return False


def run_title(run_dir, config_name: str | None = None) -> str:
    """'<config>: ViTPose-<preset> (<width>-d, <depth> blocks, HxW), <N> ranks <backend>, <steps> steps' from
    the run directory's config.yaml and the setup record of its metrics.jsonl."""
    from vitpose_scale.config import PRESETS
    from vitpose_scale.jsonl import read_jsonl

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    parts = [config_name or run_dir.name]
    m = cfg.get("model") or {}
    if m:
        preset = PRESETS.get(m.get("preset"), {})
        width, depth = m.get("embed_dim") or preset.get("embed_dim"), m.get("depth") or preset.get("depth")
        size = "x".join(str(v) for v in m.get("image_size", []))
        name = f"MAE ViT-{m.get('preset')}" if is_mae_run(run_dir) else f"ViTPose-{m.get('preset')}"
        parts.append(f"{name} ({width}-d, {depth} blocks, {size})")
    metrics = run_dir / "metrics.jsonl"
    setup = next((r for r in read_jsonl(metrics) if r.get("kind") == "setup"), {}) if metrics.is_file() else {}
    p = cfg.get("parallel") or {}
    backend = p.get("backend", "")
    if backend == "deepspeed":
        backend = f"DeepSpeed ZeRO-{p.get('zero_stage')}"
    elif backend == "none":  # one process, nothing distributed: "1 rank" says it all
        backend = ""
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


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key``, sorted by step; non-numbers and non-finite values left out."""
    pts = sorted((float(r["step"]), float(r[key])) for r in rows
                 if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
                 and math.isfinite(float(r[key])))
    return [p[0] for p in pts], [p[1] for p in pts]


def _score_keys(rows: list[dict]) -> list[str]:
    """The evaluation curves to draw: every dataset's 'NAME/AP' (or 'NAME/PCKh') of a multi-task run,
    else 'AP', else 'PCKh' (MPII)."""
    keys = dict.fromkeys(k for r in rows for k in r if isinstance(k, str) and k.count("/") == 1
                         and k.split("/")[1] in ("AP", "PCKh"))
    if keys:
        return list(keys)
    return [k for k in ("AP", "PCKh") if any(k in r for r in rows)][:1]


def plot_training_curves(metrics_jsonl_path, out_png, title: str | None = None, eval_set: str | None = None) -> Path:
    """Loss vs step (left axis), AP vs step (right axis; one curve per dataset of a multi-task run)
    and, below, the learning rate, from a metrics JSONL file. An MAE run has loss and lr only.

    The title names the run (default: `run_title` of the file's directory) and the AP axis its
    evaluation set (default: `eval_set_name`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitpose_scale.jsonl import read_jsonl

    rows = [r for r in read_jsonl(metrics_jsonl_path) if isinstance(r, dict) and "step" in r]
    loss_x, loss_y = _series(rows, "loss")
    scores = {k: _series(rows, k) for k in _score_keys(rows)}
    scores = {k: v for k, v in scores.items() if v[0]}
    lr_x, lr_y = _series([r for r in rows if r.get("kind", "train") == "train"], "lr")
    if not loss_x and not scores:
        raise ValueError(f"{metrics_jsonl_path}: no lines with 'step' and 'loss' or 'AP'")

    if lr_x:
        fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5))
    handles = []
    if loss_x:
        handles += ax.plot(loss_x, loss_y, color="tab:blue", lw=1.2, label="loss")
        ax.set_ylabel("loss", color="tab:blue")
        if min(loss_y) > 0 and max(loss_y) / min(loss_y) > 100:
            ax.set_yscale("log")  # heatmap MSE falls by orders of magnitude early on
    ax.grid(alpha=0.3)
    if scores:
        ax2 = ax.twinx() if loss_x else ax
        colors = ["tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink"]
        for (key, (xs, ys)), color in zip(scores.items(), colors * len(scores)):
            handles += ax2.plot(xs, ys, color=color, marker="o", ms=4, lw=1.2, label=key)
            best = int(np.argmax(ys))
            ax2.annotate(f"{ys[best]:.3f}", (xs[best], ys[best]), textcoords="offset points",
                         xytext=(0, 6), ha="center", fontsize=8, color=color)
        metric = next(iter(scores)).split("/")[-1]
        eval_set = eval_set or (eval_set_name(Path(metrics_jsonl_path).parent) if len(scores) == 1 else None)
        ax2.set_ylabel(f"{metric} ({eval_set})" if eval_set else metric, color="tab:red")
        ax2.margins(y=0.12)  # room for the best-score labels
    ax.legend(handles=handles, loc="upper center", fontsize=8)
    ax.set_title(title or run_title(Path(metrics_jsonl_path).parent), fontsize=10)
    if lr_x:
        ax_lr.plot(lr_x, lr_y, color="tab:gray", lw=1.2)
        ax_lr.set_ylabel("lr")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax_lr.grid(alpha=0.3)
        ax_lr.set_xlabel("step")
    else:
        ax.set_xlabel("step")
    return _save_figure(fig, out_png)
