"""COCO evaluation through pycocotools: the twelve standard numbers, for boxes ("bbox") or masks ("segm").

Inputs are the per-image prediction and ground-truth dicts of ``visionsweep.evaluation.detections``. The
evaluator collects them incrementally and builds the pycocotools index once in ``compute``: image ids
are 1, 2, ... in the order added, category ids are class index + 1, annotation ids start at 1 (COCOeval
treats id 0 as "unmatched"). IoU thresholds 0.50:0.05:0.95, 101 recall points and maxDets 1/10/100 are
the pycocotools defaults.

Small (< 32^2), medium and large (> 96^2) are areas in ORIGINAL image pixels: give ``add`` the frame
size each image was predicted in and its original size, and boxes and areas are scaled back (the
reference measured areas in the resized frame, so a large object could count as small or the reverse).
Box IoU is unchanged by that scaling, so no number other than the size-range ones moves.

Two interchangeable backends compute the same twelve numbers (identical to 1e-12): "faster-coco-eval"
(the default: a C++ reimplementation, several times faster on thousands of images; bench/detection_eval.md)
and "pycocotools" (the reference implementation, kept as the fallback and the cross-check). Both are
declared dependencies. ``backend=None`` (the default) means faster-coco-eval when it imports, and
pycocotools, with one warning on the "visionsweep" logger, when it does not (a broken wheel on some
platform); an explicit ``backend="faster-coco-eval"`` that cannot be imported is an error.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visionsweep.evaluation.detections import Detections, GroundTruth, IouType, read_detections, read_ground_truth

log = logging.getLogger("visionsweep")

CocoBackend = Literal["pycocotools", "faster-coco-eval"]
COCO_BACKENDS: tuple[str, ...] = ("pycocotools", "faster-coco-eval")
DEFAULT_COCO_BACKEND: CocoBackend = "faster-coco-eval"  # what backend=None means when it can be imported

# The twelve numbers of COCOeval.stats, in order, with short names (as detectron2 and most papers use).
COCO_METRIC_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR_1", "AR_10", "AR_100", "AR_small", "AR_medium", "AR_large",
)
# The line pycocotools prints for each number (the reference logs its coco_metrics under these keys).
COCO_SUMMARY_LINES: dict[str, str] = {
    "AP": "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "AP50": "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]",
    "AP75": "Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ]",
    "AP_small": "Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "AP_medium": "Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "AP_large": "Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
    "AR_1": "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]",
    "AR_10": "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]",
    "AR_100": "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "AR_small": "Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "AR_medium": "Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "AR_large": "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
}


class CocoEvaluator:
    """Incremental COCO evaluator: ``add`` batches of images, ``compute`` the twelve numbers at the end.

    ``backend`` is "faster-coco-eval", "pycocotools" or None (the default: faster-coco-eval, falling back to
    pycocotools with one logged warning when it cannot be imported); ``self.backend`` is the one in use.
    """

    def __init__(self, class_names: Sequence[str], *, iou_type: IouType = "bbox",
                 backend: CocoBackend | None = None):
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        if backend is None:
            backend = default_coco_backend()
        _backend(backend)  # fail now, not at the end of the first validation pass
        self.class_names = list(class_names)
        self.iou_type = iou_type
        self.backend = backend
        self._images: list[tuple[Detections, GroundTruth, float, float, tuple[int, int] | None]] = []

    def add(self, predictions: Sequence[Detections | Mapping[str, Any]],
            ground_truth: Sequence[GroundTruth | Mapping[str, Any]], *,
            image_sizes: Sequence[tuple[int, int]] | None = None,
            original_sizes: Sequence[tuple[int, int]] | None = None) -> None:
        """Add one batch. ``image_sizes`` (the frame the boxes are in) and ``original_sizes``, both
        (width, height) per image, are needed together for size ranges in original pixels."""
        count = len(predictions)
        for name, sizes in (("ground_truth", ground_truth), ("image_sizes", image_sizes),
                            ("original_sizes", original_sizes)):
            if sizes is not None and len(sizes) != count:
                raise ValueError(f"{name} has {len(sizes)} entries for {count} images")
        if (image_sizes is None) != (original_sizes is None):
            raise ValueError("pass image_sizes and original_sizes together (or neither, when boxes are already "
                             "in original pixels)")
        with_masks = self.iou_type == "segm"
        for i in range(count):
            detections = read_detections(predictions[i], with_masks=with_masks)
            truth = read_ground_truth(ground_truth[i], with_masks=with_masks)
            for labels in (detections.labels, truth.labels):
                if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
                    raise ValueError(f"class indices {sorted(set(labels.tolist()))} do not all index the "
                                     f"{len(self.class_names)} class names (map a background index away first)")
            scale_x = scale_y = 1.0
            size = None
            if image_sizes is not None:
                (frame_w, frame_h), (original_w, original_h) = image_sizes[i], original_sizes[i]
                scale_x, scale_y = original_w / frame_w, original_h / frame_h
                size = (int(original_w), int(original_h))
            self._images.append((detections, truth, scale_x, scale_y, size))

    def merge(self, other: CocoEvaluator) -> None:
        """Add the images of another evaluator (another process's share) after ours."""
        if other.class_names != self.class_names or other.iou_type != self.iou_type:
            raise ValueError("cannot merge COCO evaluators with different classes or IoU types")
        self._images.extend(other._images)

    def state(self) -> list[dict[str, Any]]:
        """What ``add`` kept, image by image, as plain data and arrays (for ``merge_state``)."""
        return [{"detections": vars(detections), "truth": vars(truth), "scale": [scale_x, scale_y], "size": size}
                for detections, truth, scale_x, scale_y, size in self._images]

    def merge_state(self, state: Sequence[Mapping[str, Any]]) -> None:
        """Add the images of another process's evaluator of the same classes (its ``state()``) after ours."""
        for image in state:
            size = image["size"]
            self._images.append((Detections(**image["detections"]), GroundTruth(**image["truth"]), *image["scale"],
                                 None if size is None else tuple(size)))

    def compute(self) -> dict[str, float]:
        """The twelve COCO numbers keyed by ``COCO_METRIC_NAMES``; -1 where pycocotools finds no ground truth
        for a range. With no prediction at all every number is 0 (as the reference), without running COCOeval."""
        if not any(len(d.labels) for d, *_ in self._images):
            return {name: 0.0 for name in COCO_METRIC_NAMES}
        truth, detections = self.to_coco()
        evaluator_class = _backend(self.backend)[1]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and the summary
            evaluation = evaluator_class(truth, detections, self.iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        return {name: float(value) for name, value in zip(COCO_METRIC_NAMES, evaluation.stats)}

    def to_coco(self) -> tuple[COCO, COCO]:
        """The (ground truth, detections) indexes of everything added, of the backend's COCO class."""
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(self.class_names)]
        images, truths, results = [], [], []
        for image_id, (detections, truth, scale_x, scale_y, size) in enumerate(self._images, start=1):
            if size is None:
                extent = np.concatenate([truth.boxes, detections.boxes]) if len(truth.boxes) + len(detections.boxes) \
                    else np.ones((1, 4))
                size = (int(np.ceil(extent[:, 2].max())), int(np.ceil(extent[:, 3].max())))
            images.append({"id": image_id, "width": size[0], "height": size[1]})
            truths.extend(self._annotations(image_id, truth.boxes, truth.labels, truth.masks, scale_x, scale_y,
                                            is_crowd=truth.is_crowd))
            results.extend(self._annotations(image_id, detections.boxes, detections.labels, detections.masks,
                                             scale_x, scale_y, scores=detections.scores))
        for number, annotation in enumerate(truths, start=1):
            annotation["id"] = number
        for number, annotation in enumerate(results, start=1):
            annotation["id"] = number
        coco_class = _backend(self.backend)[0]
        return (_index(coco_class, {"images": images, "categories": categories, "annotations": truths}),
                _index(coco_class, {"images": images, "categories": categories, "annotations": results}))

    def _annotations(self, image_id: int, boxes: np.ndarray, labels: np.ndarray, masks: list[dict] | None,
                     scale_x: float, scale_y: float, *, is_crowd: np.ndarray | None = None,
                     scores: np.ndarray | None = None) -> list[dict[str, Any]]:
        xywh = np.column_stack([boxes[:, 0] * scale_x, boxes[:, 1] * scale_y,
                                (boxes[:, 2] - boxes[:, 0]) * scale_x, (boxes[:, 3] - boxes[:, 1]) * scale_y])
        if self.iou_type == "segm":
            areas = mask_utils.area(masks) * (scale_x * scale_y) if masks else np.zeros(0)
        else:
            areas = xywh[:, 2] * xywh[:, 3]
        out = []
        for i, (bbox, area, label) in enumerate(zip(xywh.tolist(), areas.tolist(), labels.tolist())):
            annotation = {"image_id": image_id, "category_id": label + 1, "bbox": bbox, "area": area,
                          "iscrowd": int(is_crowd[i]) if is_crowd is not None else 0}
            if scores is not None:
                annotation["score"] = float(scores[i])
            if self.iou_type == "segm":
                annotation["segmentation"] = masks[i]
            out.append(annotation)
        return out


def _index(coco_class: type, dataset: dict[str, Any]) -> Any:
    coco = coco_class()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@functools.cache
def default_coco_backend() -> CocoBackend:
    """The backend ``backend=None`` means: faster-coco-eval when it imports, else pycocotools (warned once)."""
    try:
        _faster_coco_eval()
    except ValueError as error:
        log.warning("%s; COCO metrics fall back to pycocotools (the same numbers, several times slower)",
                    str(error).split(";")[0])
        return "pycocotools"
    return DEFAULT_COCO_BACKEND


def _faster_coco_eval() -> tuple[type, type]:
    try:
        from faster_coco_eval import COCO as FastCOCO
        from faster_coco_eval import COCOeval_faster
    except (ImportError, OSError) as error:  # OSError: a compiled extension that will not load
        raise ValueError(f"the COCO backend 'faster-coco-eval' cannot be imported ({error}); reinstall it with "
                         f"pip install --force-reinstall faster-coco-eval, or use backend='pycocotools'") from None
    return FastCOCO, COCOeval_faster


def _backend(name: str) -> tuple[type, type]:
    """The (COCO, COCOeval) classes of a backend."""
    if name == "pycocotools":
        return COCO, COCOeval
    if name == "faster-coco-eval":
        return _faster_coco_eval()
    raise ValueError(f"unknown COCO backend {name!r}; choose one of {', '.join(COCO_BACKENDS)}")
