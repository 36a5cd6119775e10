"""Heatmap decoding: argmax, sub-pixel refinement, UDP inverse transform, flip test.

Three methods (``eval.decode``):

* ``udp_dark`` (default): the official ViTPose test path, mmpose 0.x
  ``keypoints_from_heatmaps(use_udp=True, target_type='GaussianHeatmap',
  post_process='default')`` -> ``post_dark_udp``: blur every map with
  ``cv2.GaussianBlur`` (kernel 11 <=> sigma 2, reflected border), clip to
  [0.001, 50], take the log, and move the integer argmax by one unbounded
  Newton step ``-(H + eps I)^-1 g``, with one-pixel finite differences on the
  edge-padded log map (so peaks on the border are refined too).
* ``dark``: our earlier variant of DARK (Zhang et al., CVPR 2020): blur with
  zero padding and restore the peak, two-pixel differences, refine only at
  negative-definite maxima away from the border, step bounded to one pixel.
* ``argmax``: the integer argmax, no refinement.

``udp_dark`` equals the reference to float32 rounding except in two places
where the reference reads the wrong memory: a map whose maximum is <= 0
(the reference refines from the -1 placeholder with its neighbours' values;
here it stays -1, score <= 0), and batches with more than 2^24 padded
heatmap pixels (its float32 flat index rounds; here indices are integers).
"""
from __future__ import annotations

import cv2
import numpy as np

from ..data.transforms import get_warp_matrix, invert_affine


def get_max_preds(heatmaps: np.ndarray):
    """Integer argmax (N, K, 2) as (x, y) and the peak value (N, K, 1); -1 where the peak <= 0."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    idx = flat.argmax(axis=2)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2).astype(np.float32)
    preds = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    preds = np.where(maxvals > 0.0, preds, -1.0).astype(np.float32)
    return preds, maxvals


def _gaussian_blur(heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """Blur each map (zero padded), then restore its original peak value."""
    n, k, h, w = heatmaps.shape
    border = (kernel - 1) // 2
    maps = heatmaps.reshape(n * k, h, w).astype(np.float64)
    out = np.empty_like(maps)
    padded = np.zeros((h + 2 * border, w + 2 * border), dtype=np.float64)
    for i in range(n * k):
        peak = maps[i].max()
        padded[:] = 0.0
        padded[border:border + h, border:border + w] = maps[i]
        blurred = cv2.GaussianBlur(padded, (kernel, kernel), 0)[border:border + h, border:border + w]
        bmax = blurred.max()
        out[i] = blurred * (peak / bmax) if bmax != 0 else blurred
    return out.reshape(n, k, h, w)


DECODE_METHODS = ("udp_dark", "dark", "argmax")


def udp_dark_refine(heatmaps: np.ndarray, preds: np.ndarray, kernel: int = 11) -> np.ndarray:
    """The official ``post_dark_udp`` refinement of integer argmax positions ``preds`` (N, K, 2).

    float32 throughout, with the reference's order of operations, so the result
    matches it to the last bits; the 2x2 solve is in float64 as there.
    """
    maps = np.array(heatmaps, dtype=np.float32, order="C", copy=True)  # C order: the reshape below is a view
    n, k, h, w = maps.shape
    for one in maps.reshape(n * k, h, w):
        one[...] = cv2.GaussianBlur(one, (kernel, kernel), 0)
    np.clip(maps, 0.001, 50.0, out=maps)
    np.log(maps, out=maps)
    logs = np.pad(maps, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    preds = np.asarray(preds, dtype=np.float32)
    found = preds[..., 0] >= 0  # -1: the map's maximum was <= 0
    x = np.where(found, preds[..., 0], 0).astype(np.int64) + 1  # in the padded map
    y = np.where(found, preds[..., 1], 0).astype(np.int64) + 1
    ni, ki = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")

    def at(dx, dy):
        return logs[ni, ki, y + dy, x + dx]

    centre, right, left, down, up = at(0, 0), at(1, 0), at(-1, 0), at(0, 1), at(0, -1)
    gx = 0.5 * (right - left)
    gy = 0.5 * (down - up)
    hxx = right - 2 * centre + left
    hyy = down - 2 * centre + up
    hxy = 0.5 * (at(1, 1) - right - down + centre + centre - left - up + at(-1, -1))
    # (H + eps I)^-1 g in closed form; eps (float32's) keeps a flat map's step at 0.
    eps = float(np.finfo(np.float32).eps)
    a, b, d = hxx.astype(np.float64) + eps, hxy.astype(np.float64), hyy.astype(np.float64) + eps
    det = a * d - b * b
    ok = found & (det != 0)  # det == 0: the reference's inverse fails; keep the argmax
    safe = np.where(ok, det, 1.0)
    step_x = np.where(ok, (d * gx - b * gy) / safe, 0.0)
    step_y = np.where(ok, (a * gy - b * gx) / safe, 0.0)
    out = preds.astype(np.float64)
    out[..., 0] -= step_x
    out[..., 1] -= step_y
    return out.astype(np.float32)


def dark_refine(heatmaps: np.ndarray, preds: np.ndarray, kernel: int = 11) -> np.ndarray:
    """Our bounded DARK Taylor refinement of integer argmax positions ``preds`` (N, K, 2)."""
    n, k, h, w = heatmaps.shape
    logs = np.log(np.maximum(_gaussian_blur(heatmaps, kernel), 1e-10)).reshape(n * k, h, w)
    coords = preds.reshape(n * k, 2).astype(np.float64).copy()
    px = coords[:, 0].astype(np.int64)
    py = coords[:, 1].astype(np.int64)
    # Second differences use +-2 pixels: refine only away from the border.
    ok = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
    i = np.nonzero(ok)[0]
    if len(i):
        x, y = px[i], py[i]

        def at(dy, dx):
            return logs[i, y + dy, x + dx]

        dx = 0.5 * (at(0, 1) - at(0, -1))
        dy = 0.5 * (at(1, 0) - at(-1, 0))
        dxx = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
        dyy = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
        dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
        det = dxx * dyy - dxy ** 2
        # A Newton step only moves toward a maximum where the Hessian is negative definite;
        # on flat or saddle-shaped maps (untrained models, occluded joints) it can jump far
        # away, so those keep the argmax, and the step is bounded to one heatmap pixel.
        good = (dxx < 0) & (det > 0)
        safe = np.where(good, det, 1.0)
        # offset = -H^-1 g with the closed-form 2x2 inverse.
        off_x = np.clip(-(dyy * dx - dxy * dy) / safe, -1.0, 1.0)
        off_y = np.clip(-(-dxy * dx + dxx * dy) / safe, -1.0, 1.0)
        coords[i, 0] += np.where(good, off_x, 0.0)
        coords[i, 1] += np.where(good, off_y, 0.0)
    return coords.reshape(n, k, 2).astype(np.float32)


def heatmap_to_image(coords: np.ndarray, center, scale, rotation, image_size_hw, heatmap_size_hw,
                     use_udp: bool = True) -> np.ndarray:
    """Map (K, 2) heatmap coordinates of one crop back to original-image pixels."""
    in_h, in_w = image_size_hw
    hm_h, hm_w = heatmap_size_hw
    coords = np.asarray(coords, dtype=np.float64)
    if use_udp:
        stride = np.array([(in_w - 1.0) / (hm_w - 1.0), (in_h - 1.0) / (hm_h - 1.0)])
        crop_xy = coords * stride
        inv = invert_affine(get_warp_matrix(rotation, center, (in_w, in_h), scale))
        return crop_xy @ inv[:, :2].T + inv[:, 2]
    # Classic (biased) mapping: pixel counts instead of pixel intervals; no rotation.
    if rotation:
        raise ValueError("non-UDP decoding supports rotation 0 only")
    scale = np.asarray(scale, dtype=np.float64)
    center = np.asarray(center, dtype=np.float64)
    return coords * (scale / np.array([hm_w, hm_h])) + center - 0.5 * scale


def decode_heatmaps(heatmaps: np.ndarray, centers, scales, rotations=None, image_size=(256, 192),
                    use_udp: bool = True, method: str = "udp_dark", kernel: int = 11):
    """Heatmaps (N, K, h, w) -> keypoints (N, K, 2) in original-image pixels and maxvals (N, K, 1).

    ``centers``/``scales`` (N, 2) are the crop boxes in pixels (padded size),
    ``rotations`` (N,) degrees (None: 0), ``image_size`` the network input (H, W),
    ``method`` one of :data:`DECODE_METHODS`, ``kernel`` the blur size of the
    refinements. ``use_udp`` False: the classic (biased) pixel mapping, for comparisons with
    non-UDP code only (our models are trained on UDP crops).
    """
    if method not in DECODE_METHODS:
        raise ValueError(f"decode method {method!r}: expected one of {list(DECODE_METHODS)}")
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    n, k, h, w = heatmaps.shape
    preds, maxvals = get_max_preds(heatmaps)
    if method == "udp_dark":
        preds = udp_dark_refine(heatmaps, preds, kernel)
    elif method == "dark":
        preds = dark_refine(heatmaps, preds, kernel)
    centers = np.asarray(centers, dtype=np.float64).reshape(n, 2)
    scales = np.asarray(scales, dtype=np.float64).reshape(n, 2)
    rotations = np.zeros(n) if rotations is None else np.asarray(rotations, dtype=np.float64).reshape(n)
    out = np.empty((n, k, 2), dtype=np.float32)
    for i in range(n):
        out[i] = heatmap_to_image(preds[i], centers[i], scales[i], rotations[i], image_size, (h, w), use_udp)
    return out, maxvals


def flip_heatmaps(heatmaps, flip_pairs):
    """Heatmaps of a mirrored input -> heatmaps in the unmirrored frame.

    Flip along the width and swap left/right channels. With UDP the mirror axis
    is the same ((W-1)/2) for the crop and the heatmap, so no shift is needed.
    Works on numpy arrays and torch tensors of shape (N, K, h, w).
    """
    order = list(range(heatmaps.shape[1]))
    for a, b in flip_pairs:
        order[a], order[b] = b, a
    if isinstance(heatmaps, np.ndarray):
        return np.ascontiguousarray(heatmaps[:, order, :, ::-1])
    return heatmaps[:, order].flip(-1)


def average_flip(heatmaps, heatmaps_flipped_back):
    """Mean of the plain and the (already flipped back) mirrored prediction."""
    return (heatmaps + heatmaps_flipped_back) * 0.5
