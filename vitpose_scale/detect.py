"""Person detectors for top-down pose: person boxes (x, y, w, h, score) per image.

Two maintained detector libraries, each loaded through its own weight loading:
- transformers object detection (RT-DETR, as in the Hugging Face VitPose guide; any
  AutoModelForObjectDetection with an AutoImageProcessor): a save_pretrained directory or a hub id
  already in the Hugging Face cache;
- torchvision detection models, ``torchvision:NAME``: a state-dict file, or torchvision's default
  COCO weights (its torch hub cache).
Both go through the same filtering: person class, score threshold, clipping to the image,
class-agnostic NMS, at most ``max_people`` boxes.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitpose_scale.cli import InputError, one_line

if TYPE_CHECKING:
    import torch

TORCHVISION_PREFIX = "torchvision:"


@dataclass
class DetectorOptions:
    score_thr: float = 0.5  # person boxes with a lower score are dropped
    nms_iou: float = 0.7  # of two person boxes overlapping more than this, the lower-scored goes
    batch_size: int = 4  # images per forward pass
    max_people: int = 100  # boxes kept per image, best first

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_thr <= 1.0:
            raise InputError(f"detector score threshold {self.score_thr}: expected a value in [0, 1]")
        if not 0.0 < self.nms_iou <= 1.0:
            raise InputError(f"detector NMS IoU {self.nms_iou}: expected a value in (0, 1]")
        if self.batch_size < 1 or self.max_people < 1:
            raise InputError(f"detector batch size {self.batch_size} / max people {self.max_people}: expected >= 1")


class PersonDetector:
    """Callable on BGR uint8 images; subclasses wrap one library's model.

    Images are grouped by their input tensor shape inside each batch of ``batch_size``: a box then
    never depends on its batch mates (padding images of other sizes changes conv features near the
    border), and frames of one video, all one size, still run together.
    """

    name: str

    def __init__(self, name: str, options: DetectorOptions, device: torch.device) -> None:
        self.name, self.device = name, device
        self.options = options  # read at each call: may be replaced between calls

    def __repr__(self) -> str:
        return f"PersonDetector({self.name}, {self.options})"

    def __call__(self, images_bgr: list[np.ndarray]) -> list[np.ndarray]:
        """Per image an (N, 5) float64 array x, y, w, h, score (COCO bbox in image pixels), best first."""
        import torch

        images_bgr = list(images_bgr)
        for i, image in enumerate(images_bgr):
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                    and image.shape[2] == 3 and image.shape[0] > 0 and image.shape[1] > 0):
                desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
                raise InputError(f"detector input {i}: expected a BGR uint8 image (H, W, 3), got {desc}")
        results: list[np.ndarray] = [np.zeros((0, 5)) for _ in images_bgr]
        step = self.options.batch_size
        with torch.no_grad():
            for start in range(0, len(images_bgr), step):
                groups: dict[Any, list[tuple[int, Any]]] = {}
                for i in range(start, min(start + step, len(images_bgr))):
                    rgb = np.ascontiguousarray(images_bgr[i][..., ::-1])  # OpenCV BGR -> the models' RGB
                    key, item = self._prepare(rgb)
                    groups.setdefault(key, []).append((i, item))
                for members in groups.values():
                    index = [i for i, _ in members]
                    sizes = [images_bgr[i].shape[:2] for i in index]
                    for i, (boxes, scores) in zip(index, self._detect([item for _, item in members], sizes)):
                        results[i] = self._finish(boxes, scores, *images_bgr[i].shape[:2])
        return results

    def _prepare(self, image_rgb: np.ndarray) -> tuple[Any, Any]:
        """(grouping key: the input's shape, model input of one image)."""
        raise NotImplementedError

    def _detect(self, items: list, sizes: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Person boxes (x1, y1, x2, y2 in image pixels) and scores of each image of one group."""
        raise NotImplementedError

    def _finish(self, boxes: torch.Tensor, scores: torch.Tensor, height: int, width: int) -> np.ndarray:
        """Threshold, clip, NMS, cap; x1y1x2y2 -> x, y, w, h, score."""
        import torch
        from torchvision.ops import nms

        boxes, scores = boxes.detach().float().cpu().reshape(-1, 4), scores.detach().float().cpu().reshape(-1)
        keep = scores >= self.options.score_thr
        boxes, scores = boxes[keep], scores[keep]
        # Library boxes may reach past the border (RT-DETR's cx, cy, w, h are not clipped).
        boxes = torch.stack([boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                             boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)], dim=1)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores = boxes[keep], scores[keep]
        order = nms(boxes, scores, self.options.nms_iou)[: self.options.max_people]  # sorted by score, desc
        boxes, scores = boxes[order].double().numpy(), scores[order].double().numpy()
        return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2], scores[:, None]], axis=1).reshape(-1, 5)


class _TransformersDetector(PersonDetector):
    def __init__(self, name, options, device, model, processor, person_ids: list[int]) -> None:
        super().__init__(name, options, device)
        self.model, self.processor, self.person_ids = model, processor, person_ids

    def _prepare(self, image_rgb):
        inputs = self.processor(images=[image_rgb], return_tensors="pt", input_data_format="channels_last")
        inputs = dict(inputs)
        return tuple((k, tuple(v.shape)) for k, v in sorted(inputs.items())), inputs

    def _detect(self, items, sizes):
        import torch

        batch = {k: torch.cat([item[k] for item in items]).to(self.device) for k in items[0]}
        outputs = self.model(**batch)
        found = self.processor.post_process_object_detection(
            outputs, threshold=self.options.score_thr, target_sizes=torch.tensor(sizes, device=self.device))
        person = torch.tensor(self.person_ids)
        result = []
        for r in found:
            labels = r["labels"].cpu()
            is_person = torch.isin(labels, person)
            result.append((r["boxes"].cpu()[is_person], r["scores"].cpu()[is_person]))
        return result


class _TorchvisionDetector(PersonDetector):
    def __init__(self, name, options, device, model, person_label: int) -> None:
        super().__init__(name, options, device)
        self.model, self.person_label = model, person_label
        # The model's own score floor (0.05 for Faster R-CNN) would hide boxes asked for with a lower
        # threshold: each call lowers it to options.score_thr (never raises it: the floor also bounds
        # the model's per-class NMS work).
        self._floors = [(holder, holder.score_thresh) for holder in (model, getattr(model, "roi_heads", None))
                        if holder is not None and isinstance(getattr(holder, "score_thresh", None), float)]

    def _prepare(self, image_rgb):
        import torch

        # uint8 until on the device (a quarter of the bytes to move); see _detect.
        tensor = torch.from_numpy(image_rgb).permute(2, 0, 1)
        return tuple(tensor.shape), tensor

    def _detect(self, items, sizes):
        for holder, floor in self._floors:
            holder.score_thresh = min(floor, self.options.score_thr)
        # The model normalizes and resizes itself (GeneralizedRCNNTransform): it takes RGB in [0, 1].
        outputs = self.model([t.to(self.device).float().div_(255) for t in items])
        result = []
        for out in outputs:
            is_person = out["labels"] == self.person_label
            result.append((out["boxes"][is_person].cpu(), out["scores"][is_person].cpu()))
        return result


def load_detector(spec: str, checkpoint: str | None = None, options: DetectorOptions | None = None,
                  device: str | torch.device = "cpu") -> PersonDetector:
    """A person detector from ``spec``: a transformers object-detection directory, a hub id in the
    Hugging Face cache, or ``torchvision:NAME`` (weights from ``checkpoint``, else torchvision's
    default COCO weights from the torch hub cache)."""
    import torch

    options = options or DetectorOptions()
    device = torch.device(device)
    spec = str(spec)
    if spec.startswith(TORCHVISION_PREFIX):
        detector = _load_torchvision(spec[len(TORCHVISION_PREFIX):], checkpoint, options, device)
    else:
        if checkpoint is not None:
            raise InputError(f"--detector-checkpoint {checkpoint}: only torchvision:NAME detectors take a state-dict "
                             f"file; the transformers detector {spec} loads the weights in its directory")
        detector = _load_transformers(spec, options, device)
    return detector


def _looks_like_path(spec: str) -> bool:
    """Hub ids are NAME or ORG/NAME; anything else (absolute, ./, ~, deeper) is meant as a path."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or "\\" in spec or Path(spec).exists()


def _load_transformers(spec: str, options: DetectorOptions, device) -> PersonDetector:
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForObjectDetection
    from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES

    expected = "a transformers object-detection directory (save_pretrained layout: config.json, weights, " \
               "preprocessor_config.json), e.g. RT-DETR"
    if _looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise InputError(f"detector {spec} does not exist: expected {expected} or torchvision:NAME")
        if not path.is_dir():
            raise InputError(f"detector {spec} is a file: expected {expected}")
        if not (path / "config.json").is_file():
            raise InputError(f"detector {spec} has no config.json: expected {expected}")
        source, local_only, where = str(path), False, spec
        try:
            config = AutoConfig.from_pretrained(source)
        except Exception as exc:  # garbage JSON, an unknown model_type: the library raises several kinds
            raise InputError(f"detector {spec}/config.json is not a transformers config ({one_line(exc)}): "
                             f"expected {expected}") from None
    else:
        # A hub id: only the local cache is looked at (offline lookups otherwise retry for ~20 s).
        source, local_only, where = spec, True, f"hub id {spec}"
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=True)
        except Exception as exc:
            from huggingface_hub.constants import HF_HUB_CACHE

            # OSError: not in the cache (its text speaks of connecting, which was not tried).
            why = f"looked in {HF_HUB_CACHE}" if isinstance(exc, OSError) else one_line(exc)
            raise InputError(f"detector {spec}: not a local directory, and not a Hugging Face hub id in the local "
                             f"cache ({why}); pass a local directory via --detector") from None

    if config.model_type not in MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES:
        raise InputError(f"detector {where} holds a {config.model_type!r} model, not an object detector: expected "
                         f"{expected} (or torchvision:NAME)")
    labels = getattr(config, "id2label", None) or {}
    person_ids = [int(i) for i, label in labels.items() if str(label).strip().lower() == "person"]
    if not person_ids:
        shown = ", ".join(str(v) for v in list(labels.values())[:8])
        raise InputError(f"detector {where}: its config.json id2label has no 'person' label ({shown}"
                         f"{', ...' if len(labels) > 8 else ''}): expected a detector trained on people (e.g. COCO)")
    try:
        processor = AutoImageProcessor.from_pretrained(source, local_files_only=local_only)
    except Exception as exc:
        raise InputError(f"detector {where}: no usable image processor (preprocessor_config.json): "
                         f"{one_line(exc)}") from None
    import transformers

    # transformers draws a progress bar and a load report per model: one command, one line of its own
    bar = transformers.utils.logging.is_progress_bar_enabled()
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        model, info = AutoModelForObjectDetection.from_pretrained(source, local_files_only=local_only,
                                                                  output_loading_info=True)
    except Exception as exc:  # no weights file, weights of another shape
        raise InputError(f"detector {where}: its weights cannot be loaded into the {config.model_type} model of "
                         f"its config.json ({one_line(exc)})") from None
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
        if bar:
            transformers.utils.logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or []) + sorted(info.get("mismatched_keys") or [])
    if missing:
        # transformers would start these from random values: a detector that finds nothing useful.
        raise InputError(f"detector {where}: its weights file lacks {len(missing)} tensors of the "
                         f"{config.model_type} model in its config.json (e.g. {missing[0]}): expected the weights "
                         f"saved with that config")
    model = model.to(device).eval()
    return _TransformersDetector(f"{config.model_type} ({spec})", options, device, model, processor, person_ids)


def _load_torchvision(name: str, checkpoint: str | None, options: DetectorOptions, device) -> PersonDetector:
    import torchvision
    from torchvision.models import get_model, get_model_weights, list_models

    available = list_models(module=torchvision.models.detection)
    if name not in available:
        raise InputError(f"detector torchvision:{name}: not a torchvision detection model (expected one of "
                         f"{', '.join(available)})")
    weights = get_model_weights(name).DEFAULT
    categories = list(weights.meta["categories"])  # COCO's, with '__background__' as 0 (person: 1)
    model = get_model(name, weights=None, weights_backbone=None, num_classes=len(categories))
    if checkpoint is not None:
        state = _read_state_dict(Path(checkpoint))
        where = f"--detector-checkpoint {checkpoint}"
    else:
        try:
            state = weights.get_state_dict(progress=False, check_hash=True, map_location="cpu", weights_only=True)
        except Exception as exc:  # offline without a cached file, or a damaged cached file
            import torch

            raise InputError(f"detector torchvision:{name}: torchvision's default COCO weights ({weights.url}) could "
                             f"not be loaded from the torch hub cache ({torch.hub.get_dir()}/checkpoints) nor "
                             f"downloaded ({one_line(exc)}); pass --detector-checkpoint FILE") from None
        where = f"torchvision's cached weights for {name}"
    _check_fits(model, state, where, f"torchvision:{name} with {len(categories)} classes")
    model.load_state_dict(state)
    model = model.to(device).eval()
    return _TorchvisionDetector(f"torchvision:{name}", options, device, model, categories.index("person"))


def _read_state_dict(path: Path) -> Mapping[str, Any]:
    """A state dict from a .pth/.pt (plain, or torchvision's reference scripts' {"model": ...}) or a
    .safetensors file."""
    import torch

    if not path.is_file():
        raise InputError(f"--detector-checkpoint {path} does not exist: expected a state-dict file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"--detector-checkpoint {path}: cannot be read as a state dict ({one_line(exc)})") from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]
    if not (isinstance(state, Mapping) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise InputError(f"--detector-checkpoint {path}: expected a state dict (parameter name -> tensor), got "
                         f"{type(state).__name__}")
    return state


def _check_fits(model, state: Mapping[str, Any], where: str, what: str) -> None:
    """One line saying how ``state`` differs from ``model``'s tensors, before load_state_dict's long message."""
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of another shape (e.g. {k}: {tuple(state[k].shape)}, model "
                         f"{tuple(own[k].shape)})")
        raise InputError(f"{where}: not the weights of {what}: {'; '.join(parts)}")


def coco_detections(boxes_per_image: dict[int, np.ndarray]) -> list[dict]:
    """COCO detection results (the det_file format evaluation reads): one person entry per box."""
    results = []
    for image_id, boxes in boxes_per_image.items():
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.size == 0:
            continue
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise ValueError(f"image {image_id}: expected (N, 5) boxes x, y, w, h, score, got {boxes.shape}")
        for x, y, w, h, score in boxes.tolist():
            results.append({"image_id": int(image_id), "category_id": 1, "bbox": [x, y, w, h], "score": score})
    return results


def write_coco_detections(path: str | Path, boxes_per_image: dict[int, np.ndarray]) -> int:
    """Writes ``coco_detections`` as JSON (a data.det_file); the number of boxes written."""
    results = coco_detections(boxes_per_image)
    Path(path).write_text(json.dumps(results))
    return len(results)
