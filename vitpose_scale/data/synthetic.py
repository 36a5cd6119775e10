"""Synthetic COCO-layout person keypoint data: clean "mannequin" people on clutter.

Each person is a 2D articulated figure (torso polygon, thick limb strokes with
ball joints, hands, feet, an elliptic head with ears) in a sampled pose: torso
lean, arm abduction/raise and elbow bend, hip/knee angles, foreshortening,
body proportions and width. Several people (0-4) per image over textured
clutter (smooth colour fields, noise, shapes, limb-like sticks), with random
occluders on top.

Left/right must stay learnable *under flip augmentation*: mirroring swaps the
labels, so a colour-coded left side would be labelled "left" and "right" equally
often after flipping and teach nothing. What survives a mirror is the facing
direction, so people face the camera (face with eyes and nose, hair cap: the
person's left is on the image right) or, 15 % of them, away from it (all-hair
head, no face, face joints unlabelled: the person's left is on the image left).

Visibility follows COCO: v = 2 visible, v = 1 inside the image but covered by
another person or an occluder, v = 0 outside the image (or a face point on a
person seen from behind); v = 0 joints are written as (0, 0, 0).
``area`` is the person's visible drawn pixel count (COCO: segmentation area).

Deterministic: image i of a split is drawn from ``default_rng([seed, split, i])``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np

from vitpose_scale.keypoints import KeypointSpec, get_spec

FORMAT_VERSION = 1
META_FILE = "synthetic_meta.json"
_SHIFT = 4  # cv2 sub-pixel drawing: coordinates in 1/16 pixel
_ONE = 1 << _SHIFT


def _p(pt) -> tuple[int, int]:
    return int(round(pt[0] * _ONE)), int(round(pt[1] * _ONE))


class _Canvas:
    """Draws into the image (anti-aliased) and into the current person's mask at once."""

    def __init__(self, img: np.ndarray):
        self.img = img
        self.mask = np.zeros(img.shape[:2], dtype=np.uint8)

    def line(self, a, b, color, thick):
        import cv2  # here, not at the top: `make-synthetic --help` stays light
        t = max(1, int(round(thick)))
        cv2.line(self.img, _p(a), _p(b), color, t, cv2.LINE_AA, _SHIFT)
        cv2.line(self.mask, _p(a), _p(b), 1, t, cv2.LINE_8, _SHIFT)

    def circle(self, c, r, color):
        import cv2
        r = max(1, int(round(r * _ONE)))
        cv2.circle(self.img, _p(c), r, color, -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(self.mask, _p(c), r, 1, -1, cv2.LINE_8, _SHIFT)

    def ellipse(self, c, axes, angle_deg, color):
        import cv2
        ax = (max(1, int(round(axes[0] * _ONE))), max(1, int(round(axes[1] * _ONE))))
        cv2.ellipse(self.img, _p(c), ax, angle_deg, 0, 360, color, -1, cv2.LINE_AA, _SHIFT)
        cv2.ellipse(self.mask, _p(c), ax, angle_deg, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)

    def poly(self, pts, color):
        import cv2
        arr = np.round(np.asarray(pts) * _ONE).astype(np.int32)[None]
        cv2.fillPoly(self.img, arr, color, cv2.LINE_AA, _SHIFT)
        cv2.fillPoly(self.mask, arr, 1, cv2.LINE_8, _SHIFT)


def _rot(v, theta):
    c, s = math.cos(theta), math.sin(theta)
    return np.array([v[0] * c - v[1] * s, v[0] * s + v[1] * c])


def _color(rng, lo=0, hi=255):
    return tuple(int(x) for x in rng.integers(lo, hi + 1, size=3))


def _shade(color, f):
    return tuple(int(min(255, max(0, c * f))) for c in color)


# Skin tones, BGR (OpenCV order).
_SKIN = [(160, 189, 224), (120, 154, 198), (80, 112, 160), (55, 75, 110), (180, 205, 235), (95, 130, 180)]


# ------------------------------------------------------------ pose model --
def _sample_person(rng: np.random.Generator) -> dict:
    """Keypoints and drawing geometry of one person in body units (height ~1, y down, hip centre at 0)."""
    prop = lambda v: v * rng.uniform(0.9, 1.1)  # noqa: E731  per-segment proportion jitter
    torso, neck_len, r_head = prop(0.30), prop(0.045), prop(0.065)
    sh_w, hip_w = prop(0.115), prop(0.075)
    ua, fa, th, sh = prop(0.17), prop(0.15), prop(0.24), prop(0.23)
    front = rng.random() >= 0.15
    lr = 1.0 if front else -1.0  # +1: the person's left is on the image right (facing the camera)

    lean = math.radians(np.clip(rng.normal(0, 8), -25, 25))
    up = np.array([math.sin(lean), -math.cos(lean)])
    perp = np.array([math.cos(lean), math.sin(lean)])  # towards image right
    neck = up * torso
    head_ang = lean + math.radians(np.clip(rng.normal(0, 10), -30, 30))
    head = neck + _rot(np.array([0.0, -(neck_len + r_head)]), head_ang)

    kp = np.zeros((17, 2))
    feet = {}
    # Face/ears in the head frame (units of the head radius); x * lr puts the left ones on the correct side.
    face = {0: (0.0, 0.2), 1: (0.38, -0.12), 2: (-0.38, -0.12), 3: (1.0, 0.05), 4: (-1.0, 0.05)}
    for j, (x, y) in face.items():
        kp[j] = head + _rot(np.array([x * lr, y]) * r_head, head_ang)

    def foreshorten():
        return rng.uniform(0.7, 1.0) if rng.random() < 0.3 else 1.0

    for side_name, s in (("left", lr), ("right", -lr)):
        j_sh, j_el, j_wr = (5, 7, 9) if side_name == "left" else (6, 8, 10)
        j_hip, j_kn, j_an = (11, 13, 15) if side_name == "left" else (12, 14, 16)
        shoulder = neck + perp * sh_w * s
        u = rng.random()  # arm: hanging / abducted / raised
        alpha = rng.normal(12, 10) if u < 0.5 else (rng.uniform(20, 110) if u < 0.8 else rng.uniform(110, 175))
        d = _rot(np.array([s * math.sin(math.radians(alpha)), math.cos(math.radians(alpha))]), lean)
        elbow = shoulder + d * ua * foreshorten()
        beta = min(abs(rng.normal(0, 55)), 150) * (1 if rng.random() < 0.5 else -1)
        wrist = elbow + _rot(d, math.radians(beta)) * fa * foreshorten()
        kp[j_sh], kp[j_el], kp[j_wr] = shoulder, elbow, wrist

        hip = perp * hip_w * s
        u = rng.random()  # leg: standing / stepping / kicking-sitting
        gamma = rng.normal(4, 5) if u < 0.6 else (rng.uniform(-15, 45) if u < 0.85 else rng.uniform(30, 100))
        d = np.array([s * math.sin(math.radians(gamma)), math.cos(math.radians(gamma))])
        knee = hip + d * th * foreshorten()
        delta = rng.normal(0, 10) if rng.random() < 0.7 else rng.uniform(-100, 100)
        ankle = knee + _rot(d, math.radians(delta)) * sh * foreshorten()
        kp[j_hip], kp[j_kn], kp[j_an] = hip, knee, ankle
        feet[j_an] = ankle + np.array([s * 0.06, 0.02])  # feet point outwards and slightly down

    # Points of other keypoint sets (AIC, CrowdPose, MPII), computed without random draws so the
    # figures, and with them every set generated before, stay the same.
    extra = {"head_top": head + _rot(np.array([0.0, -r_head]), head_ang), "neck": neck,
             "upper_neck": head + _rot(np.array([0.0, r_head]), head_ang), "pelvis": np.zeros(2)}
    extra["top_head"], extra["thorax"] = extra["head_top"], neck
    return dict(kp=kp, front=front, head=head, head_ang=head_ang, r_head=r_head, neck=neck,
                neck_top=neck + up * 0.03, feet=feet, extra=extra)


def _draw_person(cv: _Canvas, person: dict, to_img, scale: float, aspect: float, rot_rad: float,
                 rng) -> None:
    """Render one person; ``to_img`` maps body units to image pixels, ``scale`` px per unit."""
    kp = to_img(person["kp"])
    skin = _shade(_SKIN[rng.integers(len(_SKIN))], rng.uniform(0.9, 1.1))
    shirt, pants, hair = _color(rng, 20, 235), _color(rng, 20, 200), _color(rng, 0, 90)
    shoes = _color(rng, 0, 70)
    joint_tone = rng.uniform(0.72, 0.85)  # ball joints slightly darker: mannequin style
    w = scale * math.sqrt(aspect)
    t_ua, t_fa, t_th, t_sh = (v * w * rng.uniform(0.85, 1.15) for v in (0.055, 0.045, 0.075, 0.06))

    def limb(a, b, c, t, col):  # a-b-c chain with the middle joint as a ball
        cv.line(kp[a], kp[b], col, t)
        cv.line(kp[b], kp[c], col, t * 0.85)
        cv.circle(kp[b], t * 0.55, _shade(col, joint_tone))

    neck, neck_top, head = to_img(np.array([person["neck"], person["neck_top"], person["head"]]))
    # Legs and feet.
    for hip, knee, ankle in ((11, 13, 15), (12, 14, 16)):
        limb(hip, knee, ankle, t_th, pants)
        cv.line(kp[ankle], to_img(person["feet"][ankle][None])[0], shoes, t_sh * 0.8)
    # Torso: a quad slightly outside the shoulder and hip joints, then the neck.
    sh_l, sh_r, hp_l, hp_r = kp[5], kp[6], kp[11], kp[12]
    out_sh, out_hp = (sh_l - sh_r) * 0.12, (hp_l - hp_r) * 0.18
    up_px = neck_top - neck
    cv.poly([sh_l + out_sh + up_px, sh_r - out_sh + up_px, hp_r - out_hp, hp_l + out_hp], shirt)
    cv.line(neck, head, skin, t_fa)
    # Head: ears, skull, then a hair cap (front) or all hair (back) and the face.
    r = person["r_head"] * scale
    ang = math.degrees(person["head_ang"] + rot_rad)

    def head_pt(x, y):  # a point in the head frame (units of the head radius) -> image
        local = person["head"] + _rot(np.array([x, y]) * person["r_head"], person["head_ang"])
        return to_img(local[None])[0]

    for j in (3, 4):
        cv.ellipse(kp[j], (0.28 * r * aspect, 0.38 * r), ang, _shade(skin, 0.85))
    if person["front"]:
        cv.ellipse(head, (0.92 * r * aspect, 1.1 * r), ang, skin)
        cv.ellipse(head_pt(0.0, -0.55), (0.9 * r * aspect, 0.55 * r), ang, hair)
        for j in (1, 2):
            cv.circle(kp[j], max(1.0, 0.14 * r), (30, 30, 30))
        cv.circle(kp[0], max(1.0, 0.13 * r), _shade(skin, 0.7))
        cv.line(head_pt(-0.25, 0.55), head_pt(0.25, 0.55), (120, 40, 40), max(1.0, 0.1 * r))
    else:
        cv.ellipse(head, (0.95 * r * aspect, 1.1 * r), ang, hair)
    # Arms on top of the torso, hands at the wrists (slightly beyond, along the forearm).
    for sh_, el, wr in ((5, 7, 9), (6, 8, 10)):
        limb(sh_, el, wr, t_ua, shirt)
        cv.line(kp[el], kp[wr], skin, t_fa)  # bare forearm over the sleeve's lower half
        cv.circle(kp[el], t_ua * 0.5, _shade(shirt, joint_tone))
        d = kp[wr] - kp[el]
        d = d / (np.linalg.norm(d) + 1e-6)
        cv.circle(kp[wr] + d * t_fa * 0.6, t_fa * 0.75, _shade(skin, 0.95))


# ------------------------------------------------------------ scene --
def _background(rng, h: int, w: int) -> np.ndarray:
    import cv2
    gh, gw = rng.integers(2, 7, size=2)
    img = cv2.resize(rng.integers(0, 256, size=(gh, gw, 3)).astype(np.float32), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.6:  # mid-frequency texture
        mid = rng.normal(0, rng.uniform(5, 30), size=(h // 8, w // 8, 3)).astype(np.float32)
        img += cv2.resize(mid, (w, h), interpolation=cv2.INTER_LINEAR)
    img += rng.normal(0, rng.uniform(0, 12), size=(h, w, 1)).astype(np.float32)
    a = rng.uniform(0.35, 0.9)  # desaturate towards a grey level: photos are rarely pure rainbow
    img = img * a + rng.uniform(40, 215) * (1 - a)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(4, 22))):
        kind = rng.random()
        col = _color(rng)
        p = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        if kind < 0.25:
            q = (p[0] + rng.uniform(-0.3, 0.3) * w, p[1] + rng.uniform(-0.3, 0.3) * h)
            cv2.rectangle(img, _p(p), _p(q), col, -1 if rng.random() < 0.6 else 2, cv2.LINE_AA, _SHIFT)
        elif kind < 0.45:
            cv2.circle(img, _p(p), int(rng.uniform(3, 0.12 * w) * _ONE), col, -1, cv2.LINE_AA, _SHIFT)
        elif kind < 0.6:
            ax = (int(rng.uniform(3, 0.15 * w) * _ONE), int(rng.uniform(3, 0.15 * h) * _ONE))
            cv2.ellipse(img, _p(p), ax, float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA, _SHIFT)
        elif kind < 0.85:
            q = (p[0] + rng.uniform(-0.5, 0.5) * w, p[1] + rng.uniform(-0.5, 0.5) * h)
            cv2.line(img, _p(p), _p(q), col, int(rng.integers(1, 5)), cv2.LINE_AA, _SHIFT)
        else:  # limb-like distractor: a thick bent stick, so "thick stroke" alone is not a person
            t = int(rng.uniform(0.02, 0.05) * h) + 1
            q = (p[0] + rng.uniform(-0.15, 0.15) * w, p[1] + rng.uniform(-0.15, 0.15) * h)
            r = (q[0] + rng.uniform(-0.15, 0.15) * w, q[1] + rng.uniform(-0.15, 0.15) * h)
            cv2.line(img, _p(p), _p(q), col, t, cv2.LINE_AA, _SHIFT)
            cv2.line(img, _p(q), _p(r), col, t, cv2.LINE_AA, _SHIFT)
    return img


def _num_people(rng) -> int:
    return int(rng.choice(5, p=[0.08, 0.44, 0.26, 0.13, 0.09]))


def synthetic_points(spec: KeypointSpec) -> list[str | int]:
    """Where each joint of ``spec`` is on the drawn figure: a COCO body index or an extra point's name."""
    body = get_spec("coco").names
    extra = ("head_top", "top_head", "neck", "upper_neck", "thorax", "pelvis")
    missing = [n for n in spec.names if n not in body and n not in extra]
    if missing:
        raise ValueError(f"keypoint set {spec.name!r}: the synthetic figure has no {missing}; it draws people "
                         f"with the joints {list(body) + list(extra)}")
    return [body.index(n) if n in body else n for n in spec.names]


def render_image(rng: np.random.Generator, size_range=(256, 320), keypoints: KeypointSpec | str = "coco"):
    """One image and its people: (img BGR uint8, list of (keypoints (K, 3), bbox xywh, area)) with the
    joints of the keypoint set ``keypoints`` (its joints must be points of the drawn figure)."""
    import cv2
    points = synthetic_points(get_spec(keypoints))
    sizes = np.arange(size_range[0], size_range[1] + 1, 32)
    h, w = int(rng.choice(sizes)), int(rng.choice(sizes))
    img = _background(rng, h, w)
    cv = _Canvas(img)
    owner = np.full((h, w), -1, dtype=np.int16)  # who is on top at each pixel (-2: occluder)
    n = _num_people(rng)
    people = []
    lo, hi = (0.5, 0.9) if n == 1 else (0.4, 0.75)
    slots = rng.permutation(n)  # spread people over horizontal slots, they may still overlap
    for i in range(n):
        person = _sample_person(rng)
        scale = rng.uniform(lo, hi) * h  # pixels per body unit (~ standing height)
        aspect = rng.uniform(0.8, 1.25)
        g = math.radians(rng.normal(0, 5) if rng.random() < 0.88 else rng.uniform(-60, 60))
        rot = np.array([[math.cos(g), -math.sin(g)], [math.sin(g), math.cos(g)]])
        lin = rot @ np.diag([aspect * scale, scale])
        kp0 = person["kp"] @ lin.T
        ext = np.vstack([kp0, (person["head"] + np.array([0, -person["r_head"]])) @ lin.T,
                         np.array(list(person["feet"].values())) @ lin.T])
        lo_xy, hi_xy = ext.min(0) - 0.05 * scale, ext.max(0) + 0.05 * scale
        span = hi_xy - lo_xy
        slack = 0.25 * span if rng.random() < 0.15 else np.zeros(2)  # sometimes cut by the border
        cx_lo = w * slots[i] / max(n, 1)
        tx_min, tx_max = -lo_xy[0] - slack[0], w - hi_xy[0] + slack[0]
        ty_min, ty_max = -lo_xy[1] - slack[1], h - hi_xy[1] + slack[1]
        tx_pref = cx_lo + rng.uniform(0, w / max(n, 1)) - (lo_xy[0] + hi_xy[0]) / 2
        tx = float(np.clip(tx_pref, min(tx_min, tx_max), max(tx_min, tx_max)))
        ty = float(rng.uniform(min(ty_min, ty_max), max(ty_min, ty_max)))
        t = np.array([tx, ty])

        def to_img(pts, lin=lin, t=t):
            return np.asarray(pts) @ lin.T + t

        cv.mask[:] = 0
        _draw_person(cv, person, to_img, scale, aspect, g, rng)
        full = cv.mask.astype(bool)
        owner[full] = i
        extra = {name: to_img(pt[None])[0] for name, pt in person["extra"].items()}
        people.append(dict(kp=to_img(person["kp"]), full=full, front=person["front"], extra=extra))
    # Occluders over some people (their joints underneath become v = 1).
    for p in people:
        if rng.random() < 0.3 and p["full"].any():
            ys, xs = np.nonzero(p["full"])
            x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
            ow, oh = rng.uniform(0.25, 0.7) * (x1 - x0 + 1), rng.uniform(0.15, 0.4) * (y1 - y0 + 1)
            cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            occ = np.zeros((h, w), dtype=np.uint8)
            col = _color(rng)
            if rng.random() < 0.5:
                pts = [(cx - ow / 2, cy - oh / 2), (cx + ow / 2, cy + oh / 2)]
                cv2.rectangle(img, _p(pts[0]), _p(pts[1]), col, -1, cv2.LINE_AA, _SHIFT)
                cv2.rectangle(occ, _p(pts[0]), _p(pts[1]), 1, -1, cv2.LINE_8, _SHIFT)
            else:
                ax = (int(ow / 2 * _ONE), int(oh / 2 * _ONE))
                ang = float(rng.uniform(0, 180))
                cv2.ellipse(img, _p((cx, cy)), ax, ang, 0, 360, col, -1, cv2.LINE_AA, _SHIFT)
                cv2.ellipse(occ, _p((cx, cy)), ax, ang, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)
            owner[occ.astype(bool)] = -2
    if rng.random() < 0.3:
        img[:] = cv2.GaussianBlur(img, (3, 3), 0)
    anns = []
    for i, p in enumerate(people):
        if not p["full"].any():
            continue  # entirely outside the image
        kps = np.zeros((len(points), 3))
        for j, point in enumerate(points):
            x, y = p["kp"][point] if isinstance(point, int) else p["extra"][point]
            # Nose and eyes are not seen from the back.
            if not (0 <= x < w and 0 <= y < h) or (not p["front"] and isinstance(point, int) and point <= 2):
                continue
            kps[j] = (x, y, 2 if owner[int(y), int(x)] == i else 1)
        ys, xs = np.nonzero(p["full"])
        bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        area = float(max(1, (owner == i).sum()))
        anns.append((kps, bbox, area))
    return img, anns


# ------------------------------------------------------------ writer --
def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # readers never see a half-written file, even with concurrent writers


def _meta(num_train, num_val, seed, image_size, keypoints: str = "coco") -> dict:
    meta = {"version": FORMAT_VERSION, "num_train": int(num_train), "num_val": int(num_val),
            "seed": int(seed), "image_size": [int(image_size[0]), int(image_size[1])]}
    return meta if keypoints == "coco" else {**meta, "keypoint_set": keypoints}  # COCO sets: as before


def synthetic_is_complete(root, num_train: int, num_val: int, seed: int = 0, image_size=(256, 320),
                          keypoints: str = "coco") -> bool:
    """True when ``root`` holds a finished set generated with exactly these settings."""
    meta = Path(root) / META_FILE
    try:
        return json.loads(meta.read_text()) == _meta(num_train, num_val, seed, image_size, keypoints)
    except (OSError, ValueError):
        return False


def generate_split(root: Path, split: str, count: int, seed: int, image_size, progress: bool = True,
                   keypoints: str = "coco") -> dict:
    import cv2
    from tqdm import tqdm

    split_id = {"train": 0, "val": 1}[split]
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(count), desc=f"synthetic {split}", disable=not progress, dynamic_ncols=True):
        rng = np.random.default_rng([int(seed), split_id, i])
        img, people = render_image(rng, image_size, keypoints)
        image_id = i + 1
        name = f"{image_id:08d}.jpg"
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok, "JPEG encoding failed"
        _write_atomic(root / split / name, buf.tobytes())
        images.append({"id": image_id, "file_name": name, "width": img.shape[1], "height": img.shape[0]})
        for kps, bbox, area in people:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                "keypoints": [round(float(v), 2) for v in kps.reshape(-1)],
                "num_keypoints": int((kps[:, 2] > 0).sum()), "bbox": [round(v, 2) for v in bbox],
                "area": area, "iscrowd": 0,
            })
    return {"info": {"description": f"vitpose_scale synthetic people ({split}), seed {seed}"},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [get_spec(keypoints).coco_category()]}


def generate_synthetic_coco(root, num_train: int, num_val: int, seed: int = 0, image_size=(256, 320),
                            progress: bool = True, keypoints: str = "coco") -> Path:
    """Write ``root/annotations/person_keypoints_{train,val}.json`` and ``root/{train,val}/*.jpg``.

    ``keypoints``: the keypoint set annotated (coco, aic, crowdpose or mpii: the joints the drawn
    figure has); the pictures are the same for every set.

    ``image_size`` is the (min, max) side length; sides are drawn from multiples
    of 32 in that range. Returns the root path.
    """
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        data = generate_split(root, split, count, seed, image_size, progress, keypoints)
        _write_atomic(root / "annotations" / f"person_keypoints_{split}.json", json.dumps(data).encode())
    _write_atomic(root / META_FILE, json.dumps(_meta(num_train, num_val, seed, image_size, keypoints)).encode())
    return root


def main(argv: list[str] | None = None) -> int:
    """CLI: ``vitpose-scale make-synthetic --out DIR --train N --val M [--seed S]``."""
    ap = argparse.ArgumentParser(prog="vitpose-scale make-synthetic",
                                 description="Generate a synthetic COCO-layout person keypoint data set.")
    ap.add_argument("--out", required=True, help="output root (annotations/, train/, val/)")
    ap.add_argument("--train", type=int, default=1000, help="training images")
    ap.add_argument("--val", type=int, default=200, help="validation images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-size", type=int, default=256, help="smallest image side")
    ap.add_argument("--max-size", type=int, default=320, help="largest image side")
    ap.add_argument("--keypoint-set", default="coco", help="joints to annotate: coco, aic, crowdpose or mpii")
    args = ap.parse_args(argv)
    if args.train < 0 or args.val < 0:
        ap.error("--train and --val must be >= 0")
    if not 32 <= args.min_size <= args.max_size:
        ap.error("expected 32 <= --min-size <= --max-size")
    root = generate_synthetic_coco(args.out, args.train, args.val, args.seed, (args.min_size, args.max_size),
                                   keypoints=get_spec(args.keypoint_set).name)
    print(f"wrote {args.train} train and {args.val} val images to {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
