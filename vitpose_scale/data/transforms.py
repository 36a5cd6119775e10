"""Top-down training/eval transforms with UDP (unbiased data processing).

Conventions
-----------
* ``center`` is the box centre in image pixels (x, y); ``scale`` is the box size
  in pixels (w, h) *after* padding (mmpose stores the same thing divided by
  200; we keep pixels so nothing needs the magic constant).
* UDP (Huang et al., CVPR 2020) measures sizes in *pixel intervals*: an image
  of W pixels spans W - 1 units, so the crop maps the box onto [0, W_in - 1] and
  the heatmap grid onto [0, W_in - 1] with stride (W_in - 1) / (W_hm - 1).
  With that convention flipping, cropping and resizing commute exactly, which is
  why the flip test needs no half-pixel heatmap shift.
* All randomness comes from a ``numpy.random.Generator`` made by
  :func:`sample_rng` from (seed, epoch, index, stream), so a sample is identical
  whichever rank or worker loads it; each training set has its own stream.
* Crops leave the data pipeline as uint8 (4x less to copy to the device);
  :func:`normalize_batch` turns them into the network input where they are used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from vitpose_scale.keypoints import KeypointSpec, get_spec

if TYPE_CHECKING:  # annotation only: the config module stays free of data imports
    from vitpose_scale.config import DataConfig

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def sample_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator for one sample: a pure function of (seed, epoch, index, stream).

    ``stream`` tells training sets apart (0: the main set, i: ``data.extra_train[i - 1]``),
    so sample i of one set does not repeat the flip, rotation and scale of sample i of another.
    Stream 0 keeps the three-number key of earlier versions.
    """
    key = [int(seed), int(epoch), int(index)] + ([int(stream)] if stream else [])
    return np.random.default_rng(key)


# ------------------------------------------------------------ geometry --
def get_warp_matrix(theta_deg: float, center_xy, output_size_wh, scale_wh) -> np.ndarray:
    """UDP affine (2x3) taking image pixels to crop pixels.

    The box of size ``scale_wh`` (pixels) centred on ``center_xy`` lands on the
    crop of ``output_size_wh`` pixels with its centre at ((W-1)/2, (H-1)/2) and
    its extent on W - 1 by H - 1 units (the UDP pixel-interval measure), after
    a rotation by ``theta_deg`` about the centre:
    ``dst = diag((W-1)/s_w, (H-1)/s_h) @ R(theta) @ (src - center) + (size-1)/2``.
    """
    theta = math.radians(float(theta_deg))
    cx, cy = float(center_xy[0]), float(center_xy[1])
    box_w, box_h = float(scale_wh[0]), float(scale_wh[1])
    sx = (float(output_size_wh[0]) - 1.0) / box_w
    sy = (float(output_size_wh[1]) - 1.0) / box_h
    cos, sin = math.cos(theta), math.sin(theta)
    # Same terms in the same order as the reference, so the float32-rounded matrix is bit-equal.
    return np.array([
        [cos * sx, -sin * sx, sx * (-cx * cos + cy * sin + 0.5 * box_w)],
        [sin * sy, cos * sy, sy * (-cx * sin - cy * cos + 0.5 * box_h)],
    ], dtype=np.float64)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix."""
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 affine doing ``inner`` first, then ``outer``."""
    a = np.vstack([outer, [0.0, 0.0, 1.0]])
    b = np.vstack([inner, [0.0, 0.0, 1.0]])
    return (a @ b)[:2]


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to points of shape (..., 2)."""
    pts = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def warp_image(img: np.ndarray, matrix: np.ndarray, output_size_wh) -> np.ndarray:
    """Crop with cv2.warpAffine (bilinear, zero border), as the reference does."""
    return cv2.warpAffine(img, np.asarray(matrix, dtype=np.float64),
                          (int(output_size_wh[0]), int(output_size_wh[1])),
                          flags=cv2.INTER_LINEAR)


def crop_box(img: np.ndarray, center, size_wh, image_size_hw) -> np.ndarray:
    """The box (centre, size in pixels) warped onto the network input with the UDP affine, no rotation."""
    out_wh = (image_size_hw[1], image_size_hw[0])
    return warp_image(img, get_warp_matrix(0.0, center, out_wh, size_wh), out_wh)


def box_to_center_scale(box_xywh, aspect_ratio: float, padding: float = 1.25):
    """(x, y, w, h) -> centre and padded size (pixels) with width/height = aspect_ratio."""
    x, y, w, h = (float(v) for v in box_xywh[:4])
    center = np.array([x + 0.5 * w, y + 0.5 * h], dtype=np.float32)
    # Grow the short side so the crop is not distorted when resized.
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w, h], dtype=np.float32) * padding
    return center, scale


def flip_matrix(img_width: int) -> np.ndarray:
    """Horizontal mirror of an image of ``img_width`` pixels: x -> W - 1 - x."""
    return np.array([[-1.0, 0.0, img_width - 1.0], [0.0, 1.0, 0.0]])


def flip_joints(joints: np.ndarray, img_width: int, flip_pairs) -> np.ndarray:
    """Mirror (K, >=2) joints in an image of ``img_width`` and swap left/right rows."""
    out = np.array(joints, dtype=np.float32, copy=True)
    out[:, 0] = img_width - 1 - out[:, 0]
    for a, b in flip_pairs:
        out[[a, b]] = out[[b, a]]
    return out


def half_body_center_scale(joints: np.ndarray, visible: np.ndarray, upper_ids, aspect_ratio: float,
                           rng: np.random.Generator, padding: float = 1.5):
    """Box around the upper or lower body's visible joints (reference: padding 1.5).

    Returns (center, scale) or None when fewer than two joints are usable.
    """
    k = len(joints)
    upper_set = set(upper_ids)
    upper = [j for j in range(k) if visible[j] > 0 and j in upper_set]
    lower = [j for j in range(k) if visible[j] > 0 and j not in upper_set]
    # One draw decides the half, as in the reference: it takes the upper body when a
    # *standard normal* draw is < 0.5 (np.random.randn() < 0.5, probability 0.691), not
    # a fair coin; we keep that bias so the recipe's augmentation statistics match.
    if rng.standard_normal() < 0.5 and len(upper) > 2:
        sel = upper
    else:
        sel = lower if len(lower) > 2 else upper
    if len(sel) < 2:
        return None
    pts = joints[sel, :2].astype(np.float32)
    center = pts.mean(axis=0)
    lt, rb = pts.min(axis=0), pts.max(axis=0)
    w, h = float(rb[0] - lt[0]), float(rb[1] - lt[1])
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center.astype(np.float32), np.array([w, h], dtype=np.float32) * padding


def random_scale_rotation(rng: np.random.Generator, scale_factor: float, rot_factor: float,
                          rot_prob: float):
    """Scale multiplier clip(N(1, sf), 1-sf, 1+sf) and rotation clip(N(0, rf), +-2rf) w.p. rot_prob."""
    s = float(np.clip(rng.standard_normal() * scale_factor + 1.0, 1.0 - scale_factor, 1.0 + scale_factor))
    r_draw = float(np.clip(rng.standard_normal() * rot_factor, -2.0 * rot_factor, 2.0 * rot_factor))
    r = r_draw if rng.random() <= rot_prob else 0.0  # both draws always made: fixed RNG stream layout
    return s, r


def normalize_image(img_rgb: np.ndarray) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW with ImageNet mean/std (host side: inference, MAE crops).

    Same operations in the same order as the reference's ToTensor + NormalizeTensor
    (x / 255, then (x - mean) / std, in float32), so the values are bit-identical.
    """
    x = img_rgb.astype(np.float32) / np.float32(255.0)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def normalize_batch(images, device=None):
    """Network input from a batch of crops: uint8 (..., 3, H, W) -> float32, ImageNet-normalised.

    The training and validation sets ship uint8 crops; this runs where the model is
    (``device``), so the host neither normalises nor copies 4-byte pixels. Bit-identical
    to :func:`normalize_image` and to torchvision's to_tensor + normalize. Floating-point
    input is taken as already normalised (inference crops, MAE images) and only moved.
    """
    import torch

    images = images.to(device, non_blocking=True) if device is not None else images
    if images.is_floating_point():
        return images
    if images.dtype != torch.uint8:
        raise TypeError(f"normalize_batch: got {images.dtype} images, expected uint8 crops or "
                        f"already-normalised floating-point input")
    mean = torch.as_tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    return (images.float() / 255.0 - mean) / std


# ------------------------------------------------------------ targets --
def udp_heatmap_targets(joints_xy: np.ndarray, visible: np.ndarray, image_size_hw, heatmap_size_hw,
                        sigma: float = 2.0):
    """UDP Gaussian targets, the reference's integer window arithmetic vectorised.

    ``joints_xy`` (K, 2) are in *input-crop* pixels; ``mu = joint / feat_stride`` with
    ``feat_stride = (input - 1) / (heatmap - 1)``. As in the reference, the window
    starts at ``ul = int(int(mu + 0.5) - 3 sigma)`` and ends before
    ``br = int(int(mu + 0.5) + 3 sigma + 1)``, where ``int`` truncates toward zero (so
    a joint just left of or above the heatmap rounds *up*, not down), and the Gaussian
    ``exp(-(x - c)^2 / 2 sigma^2)`` is centred at ``c = ul + size // 2 + mu - int(mu + 0.5)``
    with ``size = 2 * 3 sigma + 1`` (``c == mu`` for whole-number 3 sigma). Weight is 0
    for unlabelled joints (v == 0) and for joints whose window misses the heatmap.
    Returns target (K, h, w) float32 and target_weight (K, 1) float32.
    """
    in_h, in_w = image_size_hw
    hm_h, hm_w = heatmap_size_hw
    k = len(joints_xy)
    stride = np.array([(in_w - 1.0) / (hm_w - 1.0), (in_h - 1.0) / (hm_h - 1.0)])
    mu = np.asarray(joints_xy, dtype=np.float64)[:, :2] / stride  # sub-pixel heatmap coords
    tmp_size = sigma * 3
    size = 2 * tmp_size + 1
    mu_int = np.trunc(mu + 0.5)  # the reference's int(): toward zero
    ul = np.trunc(mu_int - tmp_size)
    br = np.trunc(mu_int + tmp_size + 1)
    end = np.minimum(br, ul + math.ceil(size))  # the reference slices a Gaussian patch of ceil(size)
    center = ul + size // 2 + (mu - mu_int)
    weight = (np.asarray(visible).reshape(k) > 0).astype(np.float32)
    outside = (ul[:, 0] >= hm_w) | (ul[:, 1] >= hm_h) | (br[:, 0] < 0) | (br[:, 1] < 0)
    weight[outside] = 0.0
    # Separable Gaussian, masked to the window [ul, end): two small exps, one float32 outer product.
    xs = np.arange(hm_w, dtype=np.float64)
    ys = np.arange(hm_h, dtype=np.float64)
    gx = np.exp((-0.5 / sigma ** 2) * (xs - center[:, :1]) ** 2)
    gx[(xs < ul[:, :1]) | (xs >= end[:, :1])] = 0.0
    gy = np.exp((-0.5 / sigma ** 2) * (ys - center[:, 1:]) ** 2)
    gy[(ys < ul[:, 1:]) | (ys >= end[:, 1:])] = 0.0
    gy *= weight[:, None]
    target = gy.astype(np.float32)[:, :, None] * gx.astype(np.float32)[:, None, :]
    return target, weight[:, None]


# ------------------------------------------------------------ pipeline --
def udp_crop_matrix(rotation: float, center, output_size_wh, scale_wh) -> np.ndarray:
    """:func:`get_warp_matrix` rounded to float32, as the reference stores it.

    cv2.warpAffine samples at 1/32 pixel, so the last bits of the matrix can move a
    pixel by one grey level; with the reference's rounding the unflipped crops are
    bit-identical to its TopDownAffine(use_udp=True).
    """
    return get_warp_matrix(rotation, center, output_size_wh, scale_wh).astype(np.float32).astype(np.float64)


@dataclass
class TopDownTransform:
    """Load-time pipeline: (flip) -> (half body) -> (scale, rotation) -> UDP crop -> targets.

    Mirrors the reference order (RandomFlip, HalfBodyTransform,
    GetRandomScaleRotation, Affine(use_udp), GenerateTarget(UDP)); normalisation
    (ToTensor + NormalizeTensor) happens on the batch, see :func:`normalize_batch`.
    The flip is folded into the crop's affine, so the image is resampled once.
    Augmentation settings (probabilities, factors, sigma) come from ``cfg``, a
    :class:`vitpose_scale.config.DataConfig`: the config is their only home.
    """

    image_size: tuple  # (H, W) of the network input
    cfg: DataConfig  # augmentation and target settings
    train: bool = True
    keypoints: KeypointSpec = field(default_factory=lambda: get_spec("coco"))  # flip pairs, upper body

    @property
    def flip_pairs(self) -> tuple:
        return self.keypoints.flip_pairs

    @property
    def upper_body_ids(self) -> tuple:
        return self.keypoints.upper_body_ids

    @property
    def heatmap_size(self) -> tuple:
        return self.image_size[0] // 4, self.image_size[1] // 4

    @property
    def aspect_ratio(self) -> float:
        return self.image_size[1] / self.image_size[0]

    def __call__(self, img_rgb: np.ndarray, joints: np.ndarray, center, scale,
                 rng: np.random.Generator | None = None) -> dict:
        """``joints`` (K, 3) as (x, y, v) in image pixels; returns numpy arrays, ``img`` uint8 (3, H, W)."""
        return self.apply(img_rgb, self.plan(img_rgb.shape[:2], joints, center, scale, rng))

    def plan(self, image_hw, joints: np.ndarray, center, scale, rng: np.random.Generator | None = None) -> dict:
        """Every random draw and the crop geometry of one sample, from the image size alone.

        Deciding the geometry before the image is decoded lets the loader decode only the
        window the crop reads (:meth:`source_window`).
        """
        cfg = self.cfg
        joints = np.array(joints, dtype=np.float32, copy=True)
        center = np.array(center, dtype=np.float32, copy=True)
        scale = np.array(scale, dtype=np.float32, copy=True)
        pre = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # image -> (maybe flipped) image
        rotation, flipped = 0.0, False
        if self.train:
            if rng is None:
                raise ValueError("a training transform needs its sample's generator: pass rng=sample_rng(...)")
            img_w = int(image_hw[1])
            if rng.random() < cfg.flip_prob:
                flipped = True
                pre = flip_matrix(img_w)
                joints = flip_joints(joints, img_w, self.flip_pairs)
                center[0] = img_w - 1 - center[0]
            vis = joints[:, 2] > 0
            if vis.sum() > cfg.half_body_min_joints and rng.random() < cfg.half_body_prob:
                hb = half_body_center_scale(joints, joints[:, 2], self.upper_body_ids, self.aspect_ratio, rng)
                if hb is not None:
                    center, scale = hb
            s, rotation = random_scale_rotation(rng, cfg.scale_factor, cfg.rot_factor, cfg.rot_prob)
            scale = scale * s
        in_h, in_w = self.image_size
        crop = udp_crop_matrix(rotation, center, (in_w, in_h), scale)
        return {"crop": crop, "matrix": compose_affine(crop, pre), "joints": joints, "center": center,
                "scale": scale, "rotation": rotation, "flipped": flipped}

    def source_window(self, geometry: dict, image_hw) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), half-open and clipped: every image pixel the crop's bilinear warp can read.

        The crop rectangle mapped back into the image is a parallelogram; its bounding box
        plus two pixels (the second bilinear tap and cv2's 1/32-pixel rounding) holds every tap.
        """
        in_h, in_w = self.image_size
        corners = np.array([[0.0, 0.0], [in_w - 1.0, 0.0], [0.0, in_h - 1.0], [in_w - 1.0, in_h - 1.0]])
        inverse = cv2.invertAffineTransform(geometry["matrix"])
        src = transform_points(corners, inverse)
        lo = np.floor(src.min(axis=0)) - 2
        hi = np.floor(src.max(axis=0)) + 3
        h, w = int(image_hw[0]), int(image_hw[1])
        x0, y0 = int(np.clip(lo[0], 0, w)), int(np.clip(lo[1], 0, h))
        x1, y1 = int(np.clip(hi[0], 0, w)), int(np.clip(hi[1], 0, h))
        return x0, y0, max(x0, x1), max(y0, y1)

    def apply(self, img_rgb: np.ndarray, geometry: dict) -> dict:
        """Warp and targets for a :meth:`plan`: reads ``img_rgb`` only inside :meth:`source_window`."""
        joints, crop = geometry["joints"], geometry["crop"]
        in_h, in_w = self.image_size
        img = warp_image(img_rgb, geometry["matrix"], (in_w, in_h))
        joints_crop = transform_points(joints[:, :2], crop).astype(np.float32)
        target, target_weight = udp_heatmap_targets(joints_crop, joints[:, 2], self.image_size,
                                                    self.heatmap_size, self.cfg.sigma)
        return {
            "img": np.ascontiguousarray(img.transpose(2, 0, 1)),
            "target": target,
            "target_weight": target_weight,
            "joints": np.concatenate([joints_crop, joints[:, 2:3]], axis=1),
            "center": geometry["center"].astype(np.float32),
            "scale": geometry["scale"].astype(np.float32),
            "rotation": float(geometry["rotation"]),
            "flipped": geometry["flipped"],
        }
