"""Detection and segmentation evaluation: VOC-style metrics, and the one front door for a validation pass.

Inputs, per image, in the frame the model predicted in (pixels; any frame works for VOC since IoU is
unchanged by scaling each axis):

* predictions: ``{"boxes": (N, 4) x0, y0, x1, y1, "labels": (N,) class indices, "scores": (N,)}``, the
  dict a torchvision detector returns (tensors or numpy arrays), optionally ``"masks"``;
* ground truth: ``{"boxes": (M, 4), "labels": (M,), "iscrowd": (M,)}`` (``is_crowd`` is accepted too),
  optionally ``"masks"``.

Class indices point into ``class_names``; callers map a model's background index away first (a Faster
R-CNN label ``k`` is ``class_names[k - 1]``). Masks are binary (N, H, W) arrays (soft masks are cut at
0.5; (N, 1, H, W) is accepted) or lists of COCO RLE dicts, used only when ``iou_type="segm"``.

VOC semantics (spec section 5.3-5.6): per image and class, predictions are visited by descending score
(on equal scores the later one first); each takes the single ground-truth object of its class with the
highest IoU (the first on ties). IoU >= threshold with a crowd object: ignored (counted in n, neither
TP nor FP); with an object not yet taken: true positive; otherwise false positive, with no fallback to
the second-best object. Crowd IoU is intersection over the prediction's area. Per class, AP is the
all-point interpolated area under the precision/recall curve; precision and recall are those after
all predictions. -1 marks an undefined value (no ground truth and/or no prediction of a class).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

IouType = Literal["bbox", "segm"]
MetricType = Literal["voc", "coco", "coco_voc", "none"]
METRIC_TYPES: tuple[str, ...] = ("voc", "coco", "coco_voc", "none")

UNDEFINED = -1.0
# Outcome of one prediction.
FALSE_POSITIVE, TRUE_POSITIVE, IGNORED = 0, 1, 2
# The reference divides by (count + 1e-9) so that an empty denominator gives 0 instead of an error.
_EPSILON = 1e-9
# Largest padded IoU block (images x predictions x objects) matched at once; bounds memory to ~16 MB.
_BLOCK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class Detections:
    """Predictions of one image: ``boxes`` (N, 4) float pixels x0, y0, x1, y1; ``labels`` (N,) int class
    indices; ``scores`` (N,) float; ``masks`` a list of N COCO RLE dicts, or None."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: list[dict] | None = None


@dataclass(frozen=True)
class GroundTruth:
    """Labelled objects of one image: ``boxes`` (M, 4), ``labels`` (M,), ``is_crowd`` (M,) bool, ``masks``
    a list of M COCO RLE dicts, or None."""

    boxes: np.ndarray
    labels: np.ndarray
    is_crowd: np.ndarray
    masks: list[dict] | None = None


def read_detections(value: Detections | Mapping[str, Any], *, with_masks: bool = False) -> Detections:
    """Predictions of one image from a torchvision-style dict (tensors, arrays or lists) or ``Detections``."""
    if isinstance(value, Detections):
        if with_masks and value.masks is None:
            raise ValueError("segm evaluation needs predicted masks; this image's predictions have none")
        return value
    boxes = _boxes(value.get("boxes"))
    labels = _array(value.get("labels"), np.int64, len(boxes), "labels")
    scores = _array(value.get("scores"), np.float64, len(boxes), "scores")
    masks = _masks(value.get("masks"), len(boxes), "predicted") if with_masks else None
    return Detections(boxes, labels, scores, masks)


def read_ground_truth(value: GroundTruth | Mapping[str, Any], *, with_masks: bool = False) -> GroundTruth:
    """Ground truth of one image from a dict with boxes, labels and iscrowd (or is_crowd), or ``GroundTruth``."""
    if isinstance(value, GroundTruth):
        if with_masks and value.masks is None:
            raise ValueError("segm evaluation needs ground-truth masks; this image has none")
        return value
    boxes = _boxes(value.get("boxes"))
    labels = _array(value.get("labels"), np.int64, len(boxes), "labels")
    crowd = value.get("iscrowd", value.get("is_crowd"))
    is_crowd = np.zeros(len(boxes), bool) if crowd is None else _array(crowd, bool, len(boxes), "iscrowd")
    masks = _masks(value.get("masks"), len(boxes), "ground-truth") if with_masks else None
    return GroundTruth(boxes, labels, is_crowd, masks)


def box_iou_block(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray], crowd: Sequence[np.ndarray],
                  shape: tuple[int, int]) -> np.ndarray:
    """IoU of every prediction with every object of the same image, for a block of images.

    ``predicted[i]`` (P_i, 4) and ``truth[i]`` (G_i, 4) are x0, y0, x1, y1 boxes; ``crowd[i]`` (G_i,) marks
    crowd objects, whose "IoU" is intersection over the prediction's area (as pycocotools). Returns
    (B, P, G) with ``shape`` = (P, G) >= every (P_i, G_i); padding cells are -1. Boxes of zero area
    give IoU 0. torchvision's box_iou has no crowd rule and no batching, hence this version.
    """
    p = _pad(predicted, shape[0], 4)
    g = _pad(truth, shape[1], 4)
    is_crowd = _pad([c.astype(bool) for c in crowd], shape[1], None, fill=False)
    width = np.minimum(p[:, :, None, 2], g[:, None, :, 2]) - np.maximum(p[:, :, None, 0], g[:, None, :, 0])
    height = np.minimum(p[:, :, None, 3], g[:, None, :, 3]) - np.maximum(p[:, :, None, 1], g[:, None, :, 1])
    intersection = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_p = ((p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1]))[:, :, None]
    area_g = ((g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1]))[:, None, :]
    union = np.where(is_crowd[:, None, :], area_p, area_p + area_g - intersection)
    iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
    return _mark_padding(iou, [len(b) for b in predicted], [len(b) for b in truth])


def mask_iou_block(predicted: Sequence[list[dict]], truth: Sequence[list[dict]], crowd: Sequence[np.ndarray],
                   shape: tuple[int, int]) -> np.ndarray:
    """Mask IoU (pycocotools, on RLEs) with the same contract as ``box_iou_block``."""
    iou = np.zeros((len(predicted), *shape))
    for i, (p, g, c) in enumerate(zip(predicted, truth, crowd)):
        if p and g:
            iou[i, :len(p), :len(g)] = np.asarray(mask_utils.iou(p, g, [int(v) for v in c])).reshape(len(p), len(g))
    return _mark_padding(iou, [len(p) for p in predicted], [len(g) for g in truth])


IouBlock = Callable[[Sequence[Any], Sequence[Any], Sequence[np.ndarray], tuple[int, int]], np.ndarray]
_IOU_BLOCKS: dict[str, tuple[IouBlock, str]] = {"bbox": (box_iou_block, "boxes"), "segm": (mask_iou_block, "masks")}


class VocEvaluator:
    """Incremental VOC-style evaluator: ``add`` batches of images, ``compute`` once at the end.

    ``add`` matches each image at once and keeps per prediction only its class, score, outcome and image
    number (and per class the number of non-crowd objects), so memory grows with the predictions, not
    the images. Evaluators of several processes combine with ``merge``. ``iou_type`` "segm" matches on
    masks instead of boxes.
    """

    def __init__(self, class_names: Sequence[str], *, iou_threshold: float = 0.5, iou_type: IouType = "bbox"):
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if iou_type not in _IOU_BLOCKS:
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        self.class_names = list(class_names)
        self.iou_threshold = float(iou_threshold)
        self.iou_type = iou_type
        self.images = 0
        self.images_with_objects = 0
        self._objects = np.zeros(len(self.class_names), np.int64)
        self._labels: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._outcomes: list[np.ndarray] = []
        self._image_ids: list[np.ndarray] = []

    def add(self, predictions: Sequence[Detections | Mapping[str, Any]],
            ground_truth: Sequence[GroundTruth | Mapping[str, Any]]) -> None:
        """Score one batch: ``predictions[i]`` and ``ground_truth[i]`` belong to the same image."""
        if len(predictions) != len(ground_truth):
            raise ValueError(f"{len(predictions)} prediction entries for {len(ground_truth)} ground-truth entries; "
                             "pass one of each per image")
        with_masks = self.iou_type == "segm"
        detections = [read_detections(p, with_masks=with_masks) for p in predictions]
        truths = [read_ground_truth(t, with_masks=with_masks) for t in ground_truth]
        for item in (*detections, *truths):
            self._check_labels(item.labels)
        for truth in truths:
            self._objects += np.bincount(truth.labels[~truth.is_crowd], minlength=len(self.class_names))
        self.images_with_objects += sum(1 for t in truths if (~t.is_crowd).any())
        outcomes = match_images(detections, truths, self.iou_threshold, self.iou_type)
        for number, (detection, outcome) in enumerate(zip(detections, outcomes)):
            if len(outcome):
                self._labels.append(detection.labels)
                self._scores.append(detection.scores)
                self._outcomes.append(outcome)
                self._image_ids.append(np.full(len(outcome), self.images + number, np.int64))
        self.images += len(detections)

    def merge(self, other: VocEvaluator) -> None:
        """Add the images of another evaluator (another process's share); its image numbers follow ours."""
        if (other.class_names, other.iou_threshold, other.iou_type) != (self.class_names, self.iou_threshold,
                                                                        self.iou_type):
            raise ValueError("cannot merge evaluators with different classes, IoU thresholds or IoU types")
        labels, scores, outcomes, image_ids = other._arrays()
        self._labels.append(labels)
        self._scores.append(scores)
        self._outcomes.append(outcomes)
        self._image_ids.append(image_ids + self.images)
        self._objects += other._objects
        self.images += other.images
        self.images_with_objects += other.images_with_objects

    def compute(self) -> dict[str, Any]:
        """``mean_average_precision`` (the primary metric), ``precision``, ``recall`` (means over the classes
        where each is defined, -1 when none is), and ``per_label_metrics`` {class name: {precision, recall,
        average_precision}}. Values are not rounded."""
        labels, scores, outcomes, _ = self._arrays()
        # Per class, visit order: descending score, and on equal scores the prediction added later first.
        order = np.lexsort((-np.arange(len(labels)), -scores, labels))
        bounds = np.searchsorted(labels[order], np.arange(len(self.class_names) + 1))
        ordered = outcomes[order]
        per_label = {name: class_metrics(ordered[bounds[i]:bounds[i + 1]], int(self._objects[i]))
                     for i, name in enumerate(self.class_names)}
        return {
            "mean_average_precision": _mean_defined([m["average_precision"] for m in per_label.values()]),
            "precision": _mean_defined([m["precision"] for m in per_label.values()]),
            "recall": _mean_defined([m["recall"] for m in per_label.values()]),
            "per_label_metrics": per_label,
        }

    def __getstate__(self) -> dict[str, Any]:
        # One array per field instead of one per image keeps the pickle small for gathering across processes.
        labels, scores, outcomes, image_ids = self._arrays()
        state = dict(self.__dict__)
        state.update(_labels=[labels], _scores=[scores], _outcomes=[outcomes], _image_ids=[image_ids])
        return state

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64),
                np.concatenate(self._scores) if self._scores else np.zeros(0),
                np.concatenate(self._outcomes) if self._outcomes else np.zeros(0, np.int8),
                np.concatenate(self._image_ids) if self._image_ids else np.zeros(0, np.int64))

    def _check_labels(self, labels: np.ndarray) -> None:
        bad = labels[(labels < 0) | (labels >= len(self.class_names))]
        if len(bad):
            raise ValueError(f"class index {int(bad[0])} is outside the {len(self.class_names)} class names; labels "
                             "must index class_names (map a background index away first)")


def match_images(detections: Sequence[Detections], truths: Sequence[GroundTruth], iou_threshold: float,
                 iou_type: IouType = "bbox") -> list[np.ndarray]:
    """The outcome (FALSE_POSITIVE, TRUE_POSITIVE or IGNORED) of every prediction of every image.

    Images are matched in blocks: one padded (images, predictions, objects) IoU array per block, then
    the greedy rule resolved for the whole block with sorting instead of a loop over predictions. This
    is exact because a prediction only ever looks at its single best object: a taken object makes it a
    false positive and never sends it elsewhere, so an object goes to the first prediction, in visit
    order, whose best object it is.
    """
    iou_block, field = _IOU_BLOCKS[iou_type]
    outcomes: list[np.ndarray] = [np.zeros(0, np.int8)] * len(detections)
    # Blocks of similar prediction counts waste little padding.
    order = sorted(range(len(detections)), key=lambda i: (len(detections[i].labels), len(truths[i].labels)))
    for block in _blocks(order, detections, truths):
        d = [detections[i] for i in block]
        t = [truths[i] for i in block]
        shape = (max(len(x.labels) for x in d), max(max(len(x.labels) for x in t), 1))
        if shape[0] == 0:
            continue
        iou = iou_block([getattr(x, field) for x in d], [getattr(x, field) for x in t],
                        [x.is_crowd for x in t], shape)
        block_outcomes = _greedy_outcomes(
            iou,
            _pad([x.labels for x in d], shape[0], None, fill=-1),
            _pad([x.scores for x in d], shape[0], None, fill=-np.inf),
            _pad([x.labels for x in t], shape[1], None, fill=-2),
            _pad([x.is_crowd for x in t], shape[1], None, fill=False),
            iou_threshold,
        )
        for row, image in enumerate(block):
            outcomes[image] = block_outcomes[row, :len(d[row].labels)]
    return outcomes


def class_metrics(outcomes: np.ndarray, objects: int) -> dict[str, float]:
    """Precision, recall and all-point AP of one class from its prediction outcomes in visit order.

    ``objects`` is the number of non-crowd ground-truth objects of the class (m), ``len(outcomes)`` the
    number of predictions (n). Undefined values are -1: AP and recall when m = 0, precision when n = 0.
    """
    n = len(outcomes)
    if objects == 0:
        return {"precision": 0.0 if n else UNDEFINED, "recall": UNDEFINED, "average_precision": UNDEFINED}
    if n == 0:
        return {"precision": UNDEFINED, "recall": 0.0, "average_precision": 0.0}
    true_positives = np.cumsum(outcomes == TRUE_POSITIVE)
    false_positives = np.cumsum(outcomes == FALSE_POSITIVE)
    precision = true_positives / (true_positives + false_positives + _EPSILON)
    recall = true_positives / objects
    return {"precision": float(precision[-1]), "recall": float(recall[-1]),
            "average_precision": average_precision(recall, precision)}


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP: the point (0, 1) is put in front, each precision is raised to the best
    precision at any later point, and the area is the sum of precision x recall step."""
    recall = np.concatenate([[0.0], recall])
    precision = np.concatenate([[1.0], precision])
    if np.any(np.diff(recall) < 0):
        raise ValueError("recall must not decrease along the curve")
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * envelope[1:]))


class DetectionEvaluation:
    """One validation pass for any metric type: ``add`` each batch, ``compute`` at the end.

    ``metric_type`` "voc" (VOC mAP is the primary metric), "coco" (COCO AP at IoU 0.50 is), "coco_voc"
    (both computed, VOC primary) or "none" (``enabled`` is false and ``compute`` returns {}; the training
    loop can skip the pass). ``add`` takes the frame sizes of the images and their original sizes, both
    (width, height), so that COCO's small/medium/large ranges use original pixels; VOC ignores them.
    ``coco_backend`` is "pycocotools" or "faster-coco-eval" (same numbers, faster; see coco.py).
    """

    def __init__(self, class_names: Sequence[str], metric_type: MetricType = "voc", *, iou_threshold: float = 0.5,
                 iou_type: IouType = "bbox", coco_backend: str = "pycocotools"):
        if metric_type not in METRIC_TYPES:
            raise ValueError(f"validation_metric_type must be one of {', '.join(METRIC_TYPES)}, got {metric_type!r}")
        self.metric_type = metric_type
        self.voc = VocEvaluator(class_names, iou_threshold=iou_threshold, iou_type=iou_type) \
            if metric_type in ("voc", "coco_voc") else None
        if metric_type in ("coco", "coco_voc"):
            from visionsweep.evaluation.coco import CocoEvaluator  # coco.py reads inputs with this module's readers
            self.coco = CocoEvaluator(class_names, iou_type=iou_type, backend=coco_backend)
        else:
            self.coco = None

    @property
    def enabled(self) -> bool:
        return self.metric_type != "none"

    def add(self, predictions: Sequence[Detections | Mapping[str, Any]],
            ground_truth: Sequence[GroundTruth | Mapping[str, Any]], *,
            image_sizes: Sequence[tuple[int, int]] | None = None,
            original_sizes: Sequence[tuple[int, int]] | None = None) -> None:
        if self.voc is not None:
            self.voc.add(predictions, ground_truth)
        if self.coco is not None:
            self.coco.add(predictions, ground_truth, image_sizes=image_sizes, original_sizes=original_sizes)

    def merge(self, other: DetectionEvaluation) -> None:
        if other.metric_type != self.metric_type:
            raise ValueError("cannot merge evaluations of different metric types")
        if self.voc is not None:
            self.voc.merge(other.voc)
        if self.coco is not None:
            self.coco.merge(other.coco)

    def compute(self) -> dict[str, Any]:
        """The metrics dict: VOC keys (see ``VocEvaluator.compute``) and/or ``coco_metrics`` (twelve named
        COCO numbers); ``mean_average_precision`` is always the primary score when any metric ran."""
        metrics: dict[str, Any] = {}
        if self.coco is not None:
            coco = self.coco.compute()
            metrics["mean_average_precision"] = coco["AP50"]
            metrics["coco_metrics"] = coco
        if self.voc is not None:
            metrics.update(self.voc.compute())
        return metrics


def evaluate_detections(
    predictions: Sequence[Detections | Mapping[str, Any]],
    ground_truth: Sequence[GroundTruth | Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    metric_type: MetricType = "voc",
    iou_threshold: float = 0.5,
    iou_type: IouType = "bbox",
    image_sizes: Sequence[tuple[int, int]] | None = None,
    original_sizes: Sequence[tuple[int, int]] | None = None,
    coco_backend: str = "pycocotools",
) -> dict[str, Any]:
    """Evaluate all images at once (e.g. a predictions file against labels); see ``DetectionEvaluation``."""
    evaluation = DetectionEvaluation(class_names, metric_type, iou_threshold=iou_threshold, iou_type=iou_type,
                                     coco_backend=coco_backend)
    evaluation.add(predictions, ground_truth, image_sizes=image_sizes, original_sizes=original_sizes)
    return evaluation.compute()


# --- helpers ------------------------------------------------------------------------------------------


def _greedy_outcomes(iou: np.ndarray, predicted_labels: np.ndarray, scores: np.ndarray, object_labels: np.ndarray,
                     is_crowd: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Outcomes (B, P) from a padded IoU block; padded predictions come out as FALSE_POSITIVE (ignored)."""
    same_class = predicted_labels[:, :, None] == object_labels[:, None, :]
    iou = np.where(same_class, iou, -1.0)
    best = iou.argmax(axis=2)  # the first object on ties
    best_iou = np.take_along_axis(iou, best[:, :, None], axis=2)[:, :, 0]
    hit = best_iou >= iou_threshold
    crowd_hit = hit & np.take_along_axis(is_crowd, best, axis=1)
    image, prediction = np.nonzero(hit & ~crowd_hit)
    target = best[image, prediction]
    # Per (image, object): the candidates in visit order, i.e. descending score, later prediction first.
    visit = np.lexsort((-prediction, -scores[image, prediction], target, image))
    key = (image * iou.shape[2] + target)[visit]
    first = np.ones(len(visit), bool)
    first[1:] = key[1:] != key[:-1]
    outcomes = np.full(iou.shape[:2], FALSE_POSITIVE, np.int8)
    outcomes[crowd_hit] = IGNORED
    outcomes[image[visit[first]], prediction[visit[first]]] = TRUE_POSITIVE
    return outcomes


def _blocks(order: list[int], detections: Sequence[Detections], truths: Sequence[GroundTruth]) -> list[list[int]]:
    blocks: list[list[int]] = []
    current: list[int] = []
    most_p = most_g = 0
    for i in order:
        p, g = max(most_p, len(detections[i].labels)), max(most_g, len(truths[i].labels), 1)
        if current and (len(current) + 1) * p * g > _BLOCK_ELEMENTS:
            blocks.append(current)
            current, p, g = [], len(detections[i].labels), max(len(truths[i].labels), 1)
        current.append(i)
        most_p, most_g = p, g
    if current:
        blocks.append(current)
    return blocks


def _pad(arrays: Sequence[np.ndarray], length: int, width: int | None, fill: Any = 0.0) -> np.ndarray:
    """Stack variable-length arrays into (B, length[, width]), filling the tail with ``fill``."""
    dtype = np.result_type(*[a.dtype for a in arrays]) if arrays else np.float64
    shape = (len(arrays), length) if width is None else (len(arrays), length, width)
    out = np.full(shape, fill, dtype=dtype if width is None else np.float64)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return out


def _mark_padding(iou: np.ndarray, predicted: list[int], truth: list[int]) -> np.ndarray:
    p_index = np.arange(iou.shape[1])[None, :, None]
    g_index = np.arange(iou.shape[2])[None, None, :]
    real = (p_index < np.asarray(predicted)[:, None, None]) & (g_index < np.asarray(truth)[:, None, None])
    return np.where(real, iou, -1.0)


def _mean_defined(values: list[float]) -> float:
    defined = [v for v in values if v != UNDEFINED]
    if not defined:
        return UNDEFINED
    return float(sum(defined) / (len(defined) + _EPSILON))


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly on the GPU
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _boxes(value: Any) -> np.ndarray:
    if value is None:
        return np.zeros((0, 4))
    boxes = _to_numpy(value).astype(np.float64, copy=False)
    if boxes.size == 0:
        return np.zeros((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as x0, y0, x1, y1 pixels, got {boxes.shape}")
    return boxes


def _array(value: Any, dtype: Any, length: int, name: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"'{name}' is missing; predictions need boxes, labels and scores, ground truth boxes and "
                         "labels")
    array = _to_numpy(value).reshape(-1).astype(dtype, copy=False)
    if len(array) != length:
        raise ValueError(f"'{name}' has {len(array)} values for {length} boxes")
    return array


def _masks(value: Any, length: int, kind: str) -> list[dict]:
    if value is None:
        raise ValueError(f"segm evaluation needs {kind} masks, and this image has none")
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        rles = value
    else:
        masks = _to_numpy(value)
        if masks.ndim == 4:  # torchvision Mask R-CNN: (N, 1, H, W) soft masks
            masks = masks[:, 0]
        if masks.ndim != 3:
            raise ValueError(f"{kind} masks must be (N, H, W) arrays or lists of RLE dicts, got shape {masks.shape}")
        binary = masks > 0.5 if masks.dtype.kind == "f" else masks.astype(bool)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8))) if len(binary) else []
    if len(rles) != length:
        raise ValueError(f"{len(rles)} {kind} masks for {length} boxes")
    return list(rles)
