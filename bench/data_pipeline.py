"""Training input pipeline, samples per CPU-second on one core: ours against the official one, side by side.

    python bench/data_pipeline.py --rounds 7 --epochs 4 --out bench/data_pipeline_cpu.json

"official" is the mmpose 0.x TopDown training pipeline of ViTPose's COCO configs, written
out below from its algorithm (LoadImageFromFile, TopDownRandomFlip, TopDownHalfBodyTransform,
TopDownGetRandomScaleRotation, TopDownAffine(use_udp=True), ToTensor, NormalizeTensor,
TopDownGenerateTarget(encoding='UDP')). ViTPose's datasets shift 30 % of the training
boxes once, when the dataset is built (``_xywh2cs``), not per sample, so that step is not
part of the per-sample time. Our pipeline is ``TopDownCocoDataset.__getitem__``: with
``uint8_images`` (what training uses: normalisation runs on the device inside the step)
and with host normalisation, decoding only the window each crop reads (``data.window_decode``,
the default); ``ours_uint8_whole_decode`` decodes whole images; ``ours_uint8_group_by_image``
visits the people image by image (``data.group_by_image``: one decode per image);
``ours_uint8_prepared_images`` reads a copy of the images made by ``vitpose-scale
prepare-images`` (JPEGs rewritten losslessly with a restart marker per MCU, so only the
blocks a crop reads are decoded; ``official_prepared_images`` is the official pipeline on
that copy). JPEG decoding is included in every figure; the run checks that all our variants
give bit-identical crops and targets.

Each round times every variant once over the same samples, in a shuffled order, so drift
in machine load hits all alike; medians over the rounds. The clock is the process's
CPU time (everything runs on one thread), so the figures are the cost per core
even when other processes share the machine. The run also checks that both
pipelines give the same crops and targets for the same random draws.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import random as pyrandom
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ------------------------------------------------------ the official pipeline --
class GeneratorDraws:
    """``np.random``'s rand()/randn() interface over a Generator: feeds the official
    pipeline the very draws our pipeline makes for a sample (same order, same kinds)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def rand(self):
        return self.rng.random()

    def randn(self):
        return self.rng.standard_normal()


def official_warp_matrix(theta, size_input, size_dst, size_target):
    """get_warp_matrix (UDP): float32 matrix; size_input is 2 x centre, size_target the box in pixels."""
    theta = np.deg2rad(theta)
    matrix = np.zeros((2, 3), dtype=np.float32)
    scale_x = size_dst[0] / size_target[0]
    scale_y = size_dst[1] / size_target[1]
    matrix[0, 0] = math.cos(theta) * scale_x
    matrix[0, 1] = -math.sin(theta) * scale_x
    matrix[0, 2] = scale_x * (-0.5 * size_input[0] * math.cos(theta) + 0.5 * size_input[1] * math.sin(theta)
                              + 0.5 * size_target[0])
    matrix[1, 0] = math.sin(theta) * scale_y
    matrix[1, 1] = math.cos(theta) * scale_y
    matrix[1, 2] = scale_y * (-0.5 * size_input[0] * math.sin(theta) - 0.5 * size_input[1] * math.cos(theta)
                              + 0.5 * size_target[1])
    return matrix


class OfficialTopDownTrain:
    """The official per-sample training pipeline on one record (center, scale/200, joints_3d, visible)."""

    def __init__(self, image_size_wh=(192, 256), heatmap_size_wh=(48, 64), flip_pairs=(), upper_body_ids=(),
                 flip_prob=0.5, num_joints_half_body=8, prob_half_body=0.3, rot_factor=40, scale_factor=0.5,
                 rot_prob=0.6, sigma=2):
        self.image_size = np.array(image_size_wh)
        self.heatmap_size = np.array(heatmap_size_wh)
        self.flip_pairs, self.upper_body_ids = list(flip_pairs), list(upper_body_ids)
        self.flip_prob, self.num_joints_half_body, self.prob_half_body = flip_prob, num_joints_half_body, prob_half_body
        self.rot_factor, self.scale_factor, self.rot_prob, self.sigma = rot_factor, scale_factor, rot_prob, sigma

    # LoadImageFromFile(color_type='color', channel_order='rgb'): mmcv.imfrombytes with the cv2 backend.
    @staticmethod
    def load(path):
        img = cv2.imdecode(np.frombuffer(Path(path).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)

    def flip(self, r, random):
        if random.rand() <= self.flip_prob:
            img = r["img"][:, ::-1, :]
            joints, vis = r["joints_3d"].copy(), r["joints_3d_visible"].copy()
            for left, right in self.flip_pairs:
                joints[left, :], joints[right, :] = r["joints_3d"][right, :], r["joints_3d"][left, :]
                vis[left, :], vis[right, :] = r["joints_3d_visible"][right, :], r["joints_3d_visible"][left, :]
            joints[:, 0] = img.shape[1] - 1 - joints[:, 0]
            r.update(img=img, joints_3d=joints * vis, joints_3d_visible=vis)
            r["center"][0] = img.shape[1] - r["center"][0] - 1
        return r

    def half_body(self, r, random):
        joints, vis = r["joints_3d"], r["joints_3d_visible"]
        if np.sum(vis[:, 0]) > self.num_joints_half_body and random.rand() < self.prob_half_body:
            upper = [joints[j] for j in range(len(joints)) if vis[j][0] > 0 and j in self.upper_body_ids]
            lower = [joints[j] for j in range(len(joints)) if vis[j][0] > 0 and j not in self.upper_body_ids]
            if random.randn() < 0.5 and len(upper) > 2:
                selected = upper
            elif len(lower) > 2:
                selected = lower
            else:
                selected = upper
            if len(selected) < 2:
                return r
            selected = np.array(selected, dtype=np.float32)
            center = selected.mean(axis=0)[:2]
            left_top, right_bottom = np.amin(selected, axis=0), np.amax(selected, axis=0)
            w, h = right_bottom[0] - left_top[0], right_bottom[1] - left_top[1]
            aspect_ratio = self.image_size[0] / self.image_size[1]
            if w > aspect_ratio * h:
                h = w * 1.0 / aspect_ratio
            elif w < aspect_ratio * h:
                w = h * aspect_ratio
            r["center"] = center
            r["scale"] = np.array([w / 200.0, h / 200.0], dtype=np.float32) * 1.5
        return r

    def scale_rotation(self, r, random):
        sf, rf = self.scale_factor, self.rot_factor
        r["scale"] = r["scale"] * np.clip(random.randn() * sf + 1, 1 - sf, 1 + sf)
        r_factor = np.clip(random.randn() * rf, -rf * 2, rf * 2)
        r["rotation"] = r_factor if random.rand() <= self.rot_prob else 0
        return r

    def affine_udp(self, r):
        trans = official_warp_matrix(r["rotation"], r["center"] * 2.0, self.image_size - 1.0, r["scale"] * 200.0)
        r["img"] = cv2.warpAffine(r["img"], trans, (int(self.image_size[0]), int(self.image_size[1])),
                                  flags=cv2.INTER_LINEAR)
        joints = r["joints_3d"][:, 0:2].copy()
        r["joints_3d"][:, 0:2] = np.dot(np.concatenate((joints, joints[:, 0:1] * 0 + 1), axis=1), trans.T)
        return r

    def udp_target(self, r):
        joints, vis = r["joints_3d"], r["joints_3d_visible"]
        k = len(joints)
        weight = np.ones((k, 1), dtype=np.float32)
        weight[:, 0] = vis[:, 0]
        target = np.zeros((k, self.heatmap_size[1], self.heatmap_size[0]), dtype=np.float32)
        tmp_size = self.sigma * 3
        size = 2 * tmp_size + 1
        x = np.arange(0, size, 1, np.float32)
        y = x[:, None]
        for j in range(k):
            stride = (self.image_size - 1.0) / (self.heatmap_size - 1.0)
            mu_x = int(joints[j][0] / stride[0] + 0.5)
            mu_y = int(joints[j][1] / stride[1] + 0.5)
            ul = [int(mu_x - tmp_size), int(mu_y - tmp_size)]
            br = [int(mu_x + tmp_size + 1), int(mu_y + tmp_size + 1)]
            if ul[0] >= self.heatmap_size[0] or ul[1] >= self.heatmap_size[1] or br[0] < 0 or br[1] < 0:
                weight[j] = 0
                continue
            x0 = y0 = size // 2
            x0 += joints[j][0] / stride[0] - mu_x
            y0 += joints[j][1] / stride[1] - mu_y
            g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * self.sigma ** 2))
            g_x = max(0, -ul[0]), min(br[0], self.heatmap_size[0]) - ul[0]
            g_y = max(0, -ul[1]), min(br[1], self.heatmap_size[1]) - ul[1]
            img_x = max(0, ul[0]), min(br[0], self.heatmap_size[0])
            img_y = max(0, ul[1]), min(br[1], self.heatmap_size[1])
            if weight[j] > 0.5:
                target[j][img_y[0]:img_y[1], img_x[0]:img_x[1]] = g[g_y[0]:g_y[1], g_x[0]:g_x[1]]
        r.update(target=target, target_weight=weight)
        return r

    def __call__(self, record: dict, random=np.random, img=None) -> dict:
        """``img``: the decoded image, to time the pipeline without LoadImageFromFile."""
        r = {key: (v.copy() if isinstance(v, np.ndarray) else v) for key, v in record.items()}
        r["img"] = self.load(r["image_file"]) if img is None else img
        r = self.flip(r, random)
        r = self.half_body(r, random)
        r = self.scale_rotation(r, random)
        r = self.affine_udp(r)
        r["img"] = TF.normalize(TF.to_tensor(r["img"]), mean=MEAN, std=STD)  # ToTensor, NormalizeTensor
        return self.udp_target(r)


def official_records(dataset) -> list[dict]:
    """Our dataset's records in the official layout (scale in units of 200 px, 0/1 visibility)."""
    out = []
    for rec in dataset.records:
        vis = np.zeros((len(rec["joints"]), 3), dtype=np.float32)
        vis[:, :2] = np.minimum(1, rec["joints"][:, 2:3])
        joints = np.zeros((len(rec["joints"]), 3), dtype=np.float32)
        joints[:, :2] = rec["joints"][:, :2]
        out.append({"image_file": str(dataset.img_dir / rec["file_name"]), "center": rec["center"].copy(),
                    "scale": (rec["scale"] / np.float32(200.0)).astype(np.float32), "rotation": 0,
                    "joints_3d": joints, "joints_3d_visible": vis})
    return out


def build(coco_root: Path, ann: str = "test_coco.json", images: str = "."):
    from vitpose_scale.config import DataConfig
    from vitpose_scale.data.coco import TopDownCocoDataset
    from vitpose_scale.keypoints import get_spec

    coco = get_spec("coco")

    cfg = DataConfig()
    kw = dict(root=coco_root, ann_file=ann, img_dir=images, data_cfg=cfg, image_size=(256, 192),
              train=True, seed=0)
    ours_uint8 = TopDownCocoDataset(**kw, uint8_images=True)
    ours_host = TopDownCocoDataset(**kw, uint8_images=False)
    official = OfficialTopDownTrain(flip_pairs=coco.flip_pairs, upper_body_ids=coco.upper_body_ids,
                                    flip_prob=cfg.flip_prob, num_joints_half_body=cfg.half_body_min_joints,
                                    prob_half_body=cfg.half_body_prob, rot_factor=cfg.rot_factor,
                                    scale_factor=cfg.scale_factor, rot_prob=cfg.rot_prob, sigma=cfg.sigma)
    return ours_uint8, ours_host, official, official_records(ours_uint8)


def compare(ours_host, official, records, epochs) -> dict:
    """Same draws into both pipelines: how far apart are crops (grey levels), inputs and targets?"""
    worst_grey, worst_input, worst_target, differing, pixels, weights_equal = 0, 0.0, 0.0, 0, 0, True
    per_flip = {True: 0, False: 0}
    for epoch in range(epochs):
        ours_host.set_epoch(epoch)
        for i, rec in enumerate(records):
            ref = official(rec, GeneratorDraws(ours_host.augmentation_rng(i)))
            got = ours_host[i]
            grey = ((got["img"] - ref["img"]).abs() * torch.tensor(STD).view(3, 1, 1) * 255).round()
            flipped = ours_host.augmentation_rng(i).random() < ours_host.cfg.flip_prob  # the first draw
            per_flip[flipped] = max(per_flip[flipped], int(grey.max()))
            worst_grey = max(worst_grey, int(grey.max()))
            worst_input = max(worst_input, float((got["img"] - ref["img"]).abs().max()))
            differing += int((grey > 0).sum())
            pixels += grey.numel()
            worst_target = max(worst_target, float(np.abs(got["target"].numpy() - ref["target"]).max()))
            weights_equal &= bool(np.array_equal(got["target_weight"].numpy(), ref["target_weight"]))
    return {"samples": epochs * len(records), "max_crop_diff_grey_levels": worst_grey,
            "max_crop_diff_unflipped": per_flip[False], "max_crop_diff_flipped": per_flip[True],
            "fraction_of_crop_values_differing": differing / max(pixels, 1),
            "max_input_diff": worst_input, "max_target_diff": worst_target, "target_weights_equal": weights_equal}


def same_items(a, b, epochs) -> bool:
    """Do two datasets give bit-identical crops and targets, epoch by epoch?"""
    for epoch in range(epochs):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(len(a)):
            x, y = a[i], b[i]
            if not (torch.equal(x["img"], y["img"]) and torch.equal(x["target"], y["target"])):
                return False
    return True


def normalisation_costs(rounds: int, crops: int = 64) -> dict:
    """Host milliseconds per 256x192 crop: the previous numpy normalisation, the reference's
    torchvision ToTensor + NormalizeTensor, ours on the host (torch), and what training does
    now (hand over the uint8 crop; the normalisation runs in the training step on the device)."""
    from vitpose_scale.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_batch

    hwc = np.random.default_rng(0).integers(0, 256, size=(crops, 256, 192, 3), dtype=np.uint8)
    chw = np.ascontiguousarray(hwc.transpose(0, 3, 1, 2))

    def numpy_previous():
        for x in hwc:
            y = (x.astype(np.float32) * (1.0 / 255.0) - IMAGENET_MEAN) / IMAGENET_STD
            np.ascontiguousarray(y.transpose(2, 0, 1))

    ways = {
        "numpy_previous": numpy_previous,
        "torchvision_official": lambda: [TF.normalize(TF.to_tensor(x), MEAN, STD) for x in hwc],
        "ours_host_torch": lambda: [normalize_batch(torch.from_numpy(x)) for x in chw],
        "ours_uint8_handover": lambda: [torch.from_numpy(x) for x in chw],
    }
    times = {k: [] for k in ways}
    for _ in range(rounds):
        for name, fn in ways.items():
            t0 = time.process_time()
            fn()
            times[name].append((time.process_time() - t0) * 1000 / crops)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=4, help="passes over the sample's people per timing")
    parser.add_argument("--data", default="data/coco_sample")
    parser.add_argument("--ann", default="test_coco.json", help="annotation file under --data")
    parser.add_argument("--images", default=".", help="image folder under --data")
    parser.add_argument("--out", default="bench/data_pipeline_cpu.json")
    args = parser.parse_args()
    cv2.setNumThreads(0)  # one core, as in a loader worker (loader._worker_init)
    torch.set_num_threads(1)
    from vitpose_scale.data.images import read_rgb
    from vitpose_scale.data.loader import TrainSampler
    from vitpose_scale.data.transforms import sample_rng

    ours_uint8, ours_host, official, records = build(Path(args.data), args.ann, args.images)

    decoded = {rec["image_file"]: official.load(rec["image_file"]) for rec in records}
    decoded_sizes = [f"{img.shape[1]}x{img.shape[0]}" for img in decoded.values()]

    def run_official(predecoded=False, recs=records):
        def go():  # the very draws ours makes, so both do the same augmentations
            for epoch in range(args.epochs):
                for i, rec in enumerate(recs):
                    official(rec, GeneratorDraws(sample_rng(0, epoch, i)),
                             img=decoded[rec["image_file"]] if predecoded else None)
        return go

    def run_ours(ds):
        def go():
            for epoch in range(args.epochs):
                ds.set_epoch(epoch)
                for i in range(len(ds)):
                    ds[i]
        return go

    def decode_only():  # one image alive at a time, like the pipelines (no page faults of a growing list)
        for _ in range(args.epochs):
            for rec in records:
                read_rgb(rec["image_file"])

    from vitpose_scale.data import jpeg_region

    def decode_entropy_only():
        """The floor of any window: a one-pixel window in the last row still entropy-decodes every
        block above it (Huffman decoding is sequential), but does no IDCT, upsampling or colour work."""
        for _ in range(args.epochs):
            for rec in records:
                h, w = decoded[rec["image_file"]].shape[:2]
                jpeg_region.decode_window(Path(rec["image_file"]).read_bytes(), (h, w), (0, h - 1, 1, h))

    # The same pipelines on images decoded beforehand: what is left when JPEG decoding is taken out.
    ours_predecoded = build(Path(args.data), args.ann, args.images)[0]
    ours_predecoded.read_image = lambda rec, window=None: decoded[str(ours_predecoded.img_dir / rec["file_name"])]
    # data.window_decode off: every image decoded whole, as before the partial decoder.
    ours_whole = build(Path(args.data), args.ann, args.images)[0]
    ours_whole.cfg = dataclasses.replace(ours_whole.cfg, window_decode=False)
    ours_whole.transform.cfg = ours_whole.cfg
    window_identical = same_items(ours_uint8, ours_whole, args.epochs)
    # data.group_by_image: the same samples, images shuffled as units (one decode per image).
    ours_grouped = build(Path(args.data), args.ann, args.images)[0]
    ours_grouped.cfg = dataclasses.replace(ours_grouped.cfg, group_by_image=True)
    ours_grouped.transform.cfg = ours_grouped.cfg
    grouped_sampler = TrainSampler(len(ours_grouped), seed=0, groups=ours_grouped.image_groups())
    grouped_identical = same_items(ours_uint8, ours_grouped, args.epochs)

    # vitpose-scale prepare-images: the same images, JPEGs with a restart marker per MCU.
    from vitpose_scale.data.prepare_images import prepare_folder

    prepared_dir = Path(tempfile.mkdtemp(prefix="vps_prepared_")) / "images"
    prep = prepare_folder(Path(args.data) / args.images, prepared_dir, progress=False)
    # the rewrite runs in worker processes: their CPU time, not this process's
    prepare_ms_per_jpeg = 1000 * prep["cpu_seconds"] / max(1, prep["rewritten"])
    ours_prepared = build(Path(args.data), args.ann, str(prepared_dir))[0]
    prepared_identical = same_items(ours_uint8, ours_prepared, args.epochs)
    prepared_records = official_records(ours_prepared)

    def run_grouped():
        for epoch in range(args.epochs):
            ours_grouped.set_epoch(epoch)
            grouped_sampler.set_epoch(epoch)
            for i in grouped_sampler:
                ours_grouped[i]
    variants = {"official": run_official(), "ours_uint8": run_ours(ours_uint8),
                "ours_uint8_whole_decode": run_ours(ours_whole), "ours_uint8_group_by_image": run_grouped,
                "ours_host_normalised": run_ours(ours_host),
                "ours_uint8_prepared_images": run_ours(ours_prepared),
                "official_prepared_images": run_official(recs=prepared_records),
                "official_predecoded": run_official(predecoded=True), "ours_uint8_predecoded": run_ours(ours_predecoded),
                "decode_only": decode_only, "decode_entropy_only": decode_entropy_only}
    n = args.epochs * len(records)
    for fn in variants.values():  # warm-up (imports, caches)
        fn()
    # CPU seconds of this (single-threaded) process: the cost per core, robust to other
    # processes sharing the machine; wall-clock seconds are recorded beside them.
    times: dict[str, list[float]] = {k: [] for k in variants}
    wall: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    for _ in range(args.rounds):
        pyrandom.shuffle(order)
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            variants[name]()
            times[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_s = {k: n / v for k, v in med.items()}
    report = {
        "command": f"python bench/data_pipeline.py --rounds {args.rounds} --epochs {args.epochs} --data {args.data} "
                   f"--ann {args.ann} --images {args.images} --out {args.out}",
        "cpu": platform.processor() or platform.machine(), "threads": 1, "samples_per_round": n,
        "images": f"{args.data}: {len({r['image_file'] for r in records})} images, {len(records)} people, "
                  f"sizes {sorted(set(decoded_sizes))}; 256x192 input; decode included",
        "timer": "process CPU time (one thread)", "samples_per_cpu_s_median": per_s,
        "cpu_seconds_per_round": times, "wall_seconds_per_round": wall,
        "ratio_ours_uint8_over_official": per_s["ours_uint8"] / per_s["official"],
        "ratio_ours_host_normalised_over_official": per_s["ours_host_normalised"] / per_s["official"],
        "ratio_ours_uint8_whole_decode_over_official": per_s["ours_uint8_whole_decode"] / per_s["official"],
        "window_decode_identical_to_whole_decode": window_identical,
        "ratio_ours_uint8_group_by_image_over_official": per_s["ours_uint8_group_by_image"] / per_s["official"],
        "group_by_image_items_identical": grouped_identical,
        "ratio_ours_uint8_prepared_images_over_official":
            per_s["ours_uint8_prepared_images"] / per_s["official"],
        "ratio_ours_uint8_prepared_images_over_official_prepared_images":
            per_s["ours_uint8_prepared_images"] / per_s["official_prepared_images"],
        "prepared_images_items_identical": prepared_identical,
        "prepared_images": {"jpegs_rewritten": prep["rewritten"], "bytes_before": prep["src_bytes"],
                            "bytes_after": prep["out_bytes"],
                            "growth_percent": 100 * (prep["out_bytes"] - prep["src_bytes"]) / max(1, prep["src_bytes"]),
                            "prepare_cpu_ms_per_jpeg_once": prepare_ms_per_jpeg},
        "ratio_without_decode_ours_uint8_over_official": per_s["ours_uint8_predecoded"] / per_s["official_predecoded"],
        "cpu_ms_per_sample_median": {k: 1000 / v for k, v in per_s.items()},
        "normalisation_ms_per_crop": normalisation_costs(args.rounds),
        "same_draws_comparison": compare(ours_host, official, records, epochs=args.epochs),
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    shutil.rmtree(prepared_dir.parent, ignore_errors=True)
    print(json.dumps({k: report[k] for k in ("cpu_ms_per_sample_median", "ratio_ours_uint8_over_official",
                                             "ratio_ours_host_normalised_over_official",
                                             "ratio_ours_uint8_whole_decode_over_official",
                                             "window_decode_identical_to_whole_decode",
                                             "ratio_ours_uint8_group_by_image_over_official",
                                             "group_by_image_items_identical",
                                             "ratio_ours_uint8_prepared_images_over_official",
                                             "ratio_ours_uint8_prepared_images_over_official_prepared_images",
                                             "prepared_images_items_identical", "prepared_images",
                                             "ratio_without_decode_ours_uint8_over_official",
                                             "normalisation_ms_per_crop")}, indent=1))
    print(json.dumps(report["same_draws_comparison"], indent=1))


if __name__ == "__main__":
    main()
