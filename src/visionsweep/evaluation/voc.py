"""VOC-style detection metrics: greedy matching of predictions to objects, precision, recall and AP.

VOC semantics (spec section 5.3-5.6): per image and class, predictions are visited by descending score
(on equal scores the later one first); each takes the single ground-truth object of its class with the
highest IoU (the first on ties). IoU >= threshold with a crowd object: ignored (counted in n, neither
TP nor FP); with an object not yet taken: true positive; otherwise false positive, with no fallback to
the second-best object. Crowd IoU is intersection over the prediction's area. Per class, AP is the
all-point interpolated area under the precision/recall curve; precision and recall are those after
all predictions. -1 marks an undefined value (no ground truth and/or no prediction of a class).

``compute`` also gives precision and recall per score threshold (per class and pooled over classes,
section 5.5) and, for boxes only, the image-level binary classifier metrics (5.7) and confusion matrices
per score threshold (5.8), whose matching ignores classes; ``visionsweep.evaluation.voc_curves`` holds
their arithmetic.

The inputs are those of ``visionsweep.evaluation.detections``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from visionsweep.evaluation.detections import (
    Detections, GroundTruth, IouBlock, IouType, box_iou_block, mask_iou_block, pad_arrays, read_detections,
    read_ground_truth,
)
from visionsweep.evaluation.voc_curves import (
    UNDEFINED, confusion_matrices, constant_per_score_threshold, image_level_counts, per_score_threshold,
)

# Outcome of one prediction.
FALSE_POSITIVE, TRUE_POSITIVE, IGNORED = 0, 1, 2
# The reference divides by (count + 1e-9) so that an empty denominator gives 0 instead of an error.
_EPSILON = 1e-9
# Largest padded IoU block (images x predictions x objects) matched at once; bounds memory to ~16 MB.
_BLOCK_ELEMENTS = 1 << 21

_IOU_BLOCKS: dict[str, tuple[IouBlock, str]] = {"bbox": (box_iou_block, "boxes"), "segm": (mask_iou_block, "masks")}
CURVE_KEYS = ("precisions_per_score_threshold", "recalls_per_score_threshold")


class VocEvaluator:
    """Incremental VOC-style evaluator: ``add`` batches of images, ``compute`` once at the end.

    ``add`` matches each image at once and keeps per prediction only its class, score, outcome, image
    number and, for boxes, the class of the object it takes when classes are ignored (-1: none; the
    confusion matrices' matches), and per class the number of non-crowd objects, so memory grows with
    the predictions, not the images. Evaluators of several processes combine with ``merge``.
    ``iou_type`` "segm" matches on masks instead of boxes (and has no image-level metrics and no
    confusion matrices, as the reference).
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
        self._matched_classes: list[np.ndarray] = []

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
        outcomes, matched = match_outcomes_and_classes(detections, truths, self.iou_threshold, self.iou_type,
                                                       ignoring_class=self.iou_type == "bbox")
        for number, (detection, outcome, match) in enumerate(zip(detections, outcomes, matched)):
            if len(outcome):
                self._labels.append(detection.labels)
                self._scores.append(detection.scores)
                self._outcomes.append(outcome)
                self._image_ids.append(np.full(len(outcome), self.images + number, np.int64))
                self._matched_classes.append(match)
        self.images += len(detections)

    def merge(self, other: VocEvaluator) -> None:
        """Add the images of another evaluator (another process's share); its image numbers follow ours."""
        if (other.class_names, other.iou_threshold, other.iou_type) != (self.class_names, self.iou_threshold,
                                                                        self.iou_type):
            raise ValueError("cannot merge evaluators with different classes, IoU thresholds or IoU types")
        self.merge_state(other.state())

    def state(self) -> dict[str, Any]:
        """What ``add`` kept, as plain data and arrays (``merge_state`` adds it to another evaluator): one array
        per field, not one per image, so that another process's share stays small to exchange.
        ``matched_classes`` lines up with ``labels`` and ``scores``: with them it holds the (object class,
        predicted class, score) matches of the confusion matrices."""
        labels, scores, outcomes, image_ids, matched = self._arrays()
        return {"images": self.images, "images_with_objects": self.images_with_objects, "objects": self._objects,
                "labels": labels, "scores": scores, "outcomes": outcomes, "image_ids": image_ids,
                "matched_classes": matched}

    def merge_state(self, state: Mapping[str, Any]) -> None:
        """Add the images of another process's evaluator of the same classes (its ``state()``) after ours."""
        self._labels.append(state["labels"])
        self._scores.append(state["scores"])
        self._outcomes.append(state["outcomes"])
        self._image_ids.append(state["image_ids"] + self.images)
        self._matched_classes.append(state["matched_classes"])
        self._objects = self._objects + state["objects"]
        self.images += state["images"]
        self.images_with_objects += state["images_with_objects"]

    def compute(self) -> dict[str, Any]:
        """The metrics dict; values are not rounded, -1 marks an undefined value.

        * ``mean_average_precision`` (the primary metric), ``precision``, ``recall``: means over the
          classes where each is defined (-1 when none is);
        * ``per_label_metrics`` {class name: {precision, recall, average_precision,
          precisions_per_score_threshold, recalls_per_score_threshold}};
        * ``precisions_per_score_threshold``, ``recalls_per_score_threshold``: {threshold: value} for
          thresholds 0.00, 0.01, ..., 0.99, over all classes' predictions ranked together (not a mean);
        * boxes only: ``image_level_binary_classifier_metrics`` {precision, recall, average_precision}
          (an image is a true positive once any of its predictions is) and
          ``confusion_matrices_per_score_threshold`` {threshold 0.0 ... 0.9: C x (C + 1) list of lists}
          (rows: ground-truth classes; columns: the class names followed by "missed"; a single matrix
          keyed -1.0 when no prediction matched an object).
        """
        labels, scores, outcomes, image_ids, matched = self._arrays()
        # Per class, visit order: descending score, and on equal scores the prediction added later first.
        order = np.lexsort((-np.arange(len(labels)), -scores, labels))
        bounds = np.searchsorted(labels[order], np.arange(len(self.class_names) + 1))
        ordered, ordered_scores = outcomes[order], scores[order]
        per_label = {}
        for i, name in enumerate(self.class_names):
            part, objects = slice(bounds[i], bounds[i + 1]), int(self._objects[i])
            per_label[name] = {**class_metrics(ordered[part], objects),
                               **threshold_curves(ordered_scores[part], ordered[part], objects)}
        pooled = np.lexsort((-np.arange(len(labels)), -scores))  # all classes ranked together
        metrics = {
            "mean_average_precision": _mean_defined([m["average_precision"] for m in per_label.values()]),
            "precision": _mean_defined([m["precision"] for m in per_label.values()]),
            "recall": _mean_defined([m["recall"] for m in per_label.values()]),
            "per_label_metrics": per_label,
            **threshold_curves(scores[pooled], outcomes[pooled], int(self._objects.sum())),
        }
        if self.iou_type == "bbox":
            metrics["image_level_binary_classifier_metrics"] = image_level_metrics(
                image_ids[pooled], outcomes[pooled], self.images_with_objects)
            found = matched >= 0
            metrics["confusion_matrices_per_score_threshold"] = confusion_matrices(
                self._objects.tolist(), matched[found], labels[found], scores[found])
        return metrics

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64),
                np.concatenate(self._scores) if self._scores else np.zeros(0),
                np.concatenate(self._outcomes) if self._outcomes else np.zeros(0, np.int8),
                np.concatenate(self._image_ids) if self._image_ids else np.zeros(0, np.int64),
                np.concatenate(self._matched_classes) if self._matched_classes else np.zeros(0, np.int32))

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
    return match_outcomes_and_classes(detections, truths, iou_threshold, iou_type)[0]


def match_outcomes_and_classes(detections: Sequence[Detections], truths: Sequence[GroundTruth], iou_threshold: float,
                               iou_type: IouType = "bbox", *,
                               ignoring_class: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``match_images``'s outcomes and, per prediction, the class of the object it takes when every
    object and prediction of an image are matched as one class (the same greedy rule on the same IoU;
    spec 5.8), or -1: none taken, a crowd object, or ``ignoring_class`` false (all -1, nothing matched)."""
    iou_block, field = _IOU_BLOCKS[iou_type]
    outcomes: list[np.ndarray] = [np.zeros(0, np.int8)] * len(detections)
    matched: list[np.ndarray] = [np.zeros(0, np.int32)] * len(detections)
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
        predicted_labels = pad_arrays([x.labels for x in d], shape[0], None, fill=-1)
        scores = pad_arrays([x.scores for x in d], shape[0], None, fill=-np.inf)
        object_labels = pad_arrays([x.labels for x in t], shape[1], None, fill=-2)
        is_crowd = pad_arrays([x.is_crowd for x in t], shape[1], None, fill=False)
        block_outcomes, _ = _greedy_outcomes(iou, predicted_labels, scores, object_labels, is_crowd, iou_threshold)
        block_matched = np.full(block_outcomes.shape, -1, np.int32)
        if ignoring_class:  # one class for all: padded predictions (-1) and objects (-2) still never pair
            _, taken = _greedy_outcomes(iou, np.minimum(predicted_labels, 0), scores, np.minimum(object_labels, 0),
                                        is_crowd, iou_threshold)
            taken_labels = np.take_along_axis(object_labels, np.maximum(taken, 0), axis=1)
            block_matched = np.where(taken >= 0, taken_labels, -1).astype(np.int32)
        for row, image in enumerate(block):
            outcomes[image] = block_outcomes[row, :len(d[row].labels)]
            matched[image] = block_matched[row, :len(d[row].labels)]
    return outcomes, matched


def class_metrics(outcomes: np.ndarray, objects: int) -> dict[str, float]:
    """Precision, recall and all-point AP of one class from its prediction outcomes in visit order.

    ``objects`` is the number of non-crowd ground-truth objects of the class (m), ``len(outcomes)`` the
    number of predictions (n). Undefined values are -1: AP and recall when m = 0, precision when n = 0.
    """
    undefined = _undefined_metrics(objects, len(outcomes))
    if undefined is not None:
        return undefined
    return _last_point_and_ap(*precision_recall_curve(outcomes, objects))


def precision_recall_curve(outcomes: np.ndarray, objects: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (precision, recall) after each prediction, in visit order; ``objects`` > 0. A prediction
    on a crowd object counts as neither TP nor FP but still makes a point."""
    true_positives = np.cumsum(outcomes == TRUE_POSITIVE)
    false_positives = np.cumsum(outcomes == FALSE_POSITIVE)
    return true_positives / (true_positives + false_positives + _EPSILON), true_positives / objects


def threshold_curves(scores: np.ndarray, outcomes: np.ndarray, objects: int) -> dict[str, dict[float, float]]:
    """``precisions_per_score_threshold`` and ``recalls_per_score_threshold`` (spec 5.5) of predictions in
    visit order (one class, or all classes ranked together) with ``objects`` non-crowd objects. Without
    objects or predictions, the constants of the spec 5.4 table (as ``class_metrics``'s precision and
    recall)."""
    n = len(outcomes)
    if objects == 0:
        curves = constant_per_score_threshold(0.0 if n else UNDEFINED, UNDEFINED)
    elif n == 0:
        curves = constant_per_score_threshold(UNDEFINED, 0.0)
    else:
        curves = per_score_threshold(scores, *precision_recall_curve(outcomes, objects))
    return dict(zip(CURVE_KEYS, curves))


def image_level_metrics(image_ids: np.ndarray, outcomes: np.ndarray, images_with_objects: int) -> dict[str, float]:
    """Precision, recall and AP of the detector read as a binary image classifier (spec 5.7): predictions
    of all classes in visit order; an image is a true positive once one of its predictions is, a false
    positive while it has only false positives. m = images with a non-crowd object, n = predictions."""
    undefined = _undefined_metrics(images_with_objects, len(outcomes))
    if undefined is not None:
        return undefined
    true_images, false_images = image_level_counts(image_ids, outcomes == TRUE_POSITIVE, outcomes == FALSE_POSITIVE)
    precision = true_images / (true_images + false_images + _EPSILON)
    return _last_point_and_ap(precision, true_images / images_with_objects)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP: the point (0, 1) is put in front, each precision is raised to the best
    precision at any later point, and the area is the sum of precision x recall step."""
    recall = np.concatenate([[0.0], recall])
    precision = np.concatenate([[1.0], precision])
    if np.any(np.diff(recall) < 0):
        raise ValueError("recall must not decrease along the curve")
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * envelope[1:]))


# --- helpers ------------------------------------------------------------------------------------------


def _undefined_metrics(objects: int, predictions: int) -> dict[str, float] | None:
    """The spec 5.4 table's values when there are no objects (m = 0) or no predictions (n = 0), else None."""
    if objects == 0:
        return {"precision": 0.0 if predictions else UNDEFINED, "recall": UNDEFINED, "average_precision": UNDEFINED}
    if predictions == 0:
        return {"precision": UNDEFINED, "recall": 0.0, "average_precision": 0.0}
    return None


def _last_point_and_ap(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    return {"precision": float(precision[-1]), "recall": float(recall[-1]),
            "average_precision": average_precision(recall, precision)}


def _greedy_outcomes(iou: np.ndarray, predicted_labels: np.ndarray, scores: np.ndarray, object_labels: np.ndarray,
                     is_crowd: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes (B, P) from a padded IoU block, and the object each true positive takes (B, P; -1 for the
    others); padded predictions come out as FALSE_POSITIVE (ignored)."""
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
    taken = np.full(iou.shape[:2], -1, np.int64)
    taken[image[visit[first]], prediction[visit[first]]] = target[visit[first]]
    return outcomes, taken


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


def _mean_defined(values: list[float]) -> float:
    defined = [v for v in values if v != UNDEFINED]
    if not defined:
        return UNDEFINED
    return float(sum(defined) / (len(defined) + _EPSILON))

