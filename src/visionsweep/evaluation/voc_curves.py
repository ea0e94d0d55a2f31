"""Metrics the VOC evaluator derives from its ranked predictions (spec sections 5.5, 5.7, 5.8):
precision and recall per score threshold, the per-step counts of the image-level binary classifier,
and confusion matrices per score threshold.

These functions take plain arrays (scores in visit order, cumulative precision and recall, matched
classes), so they know nothing of matching; ``visionsweep.evaluation.voc`` calls them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

UNDEFINED = -1.0
# Section 5.5: 0.00, 0.01, ..., 0.99; section 5.8: 0.0, 0.1, ..., 0.9. Rounded so that keys are exact.
SCORE_THRESHOLDS: tuple[float, ...] = tuple(round(i / 100, 2) for i in range(100))
MATRIX_THRESHOLDS: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(10))
# Key of the one matrix reported when no prediction matched any object.
NO_MATCH_KEY = -1.0


def per_score_threshold(scores: np.ndarray, precision: np.ndarray,
                        recall: np.ndarray) -> tuple[dict[float, float], dict[float, float]]:
    """({threshold: precision}, {threshold: recall}) from a ranked curve.

    ``scores`` are in visit order (non-increasing) and ``precision``/``recall`` the cumulative values at
    each point. For a threshold t the point is the last one whose score is >= t (all predictions scoring
    at least t); with none, precision is -1 and recall 0.
    """
    counts = np.searchsorted(-np.asarray(scores, np.float64), -np.asarray(SCORE_THRESHOLDS), side="right")
    last = np.maximum(counts - 1, 0)
    found = counts > 0
    p = np.where(found, precision[last], UNDEFINED) if len(scores) else np.full(len(counts), UNDEFINED)
    r = np.where(found, recall[last], 0.0) if len(scores) else np.zeros(len(counts))
    return dict(zip(SCORE_THRESHOLDS, p.tolist())), dict(zip(SCORE_THRESHOLDS, r.tolist()))


def constant_per_score_threshold(precision: float, recall: float) -> tuple[dict[float, float], dict[float, float]]:
    """The same precision and recall at every threshold (the undefined cases of the section 5.4 table)."""
    return dict.fromkeys(SCORE_THRESHOLDS, precision), dict.fromkeys(SCORE_THRESHOLDS, recall)


def image_level_counts(image_ids: np.ndarray, is_true: np.ndarray,
                       is_false: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sizes of the TP image set and the FP image set after each prediction, in visit order (section 5.7).

    A true positive moves its image into the TP set (out of the FP set); a false positive adds its image
    to the FP set unless the image is already TP; anything else (a prediction on a crowd object) changes
    nothing. So an image counts as TP from its first true positive on, and as FP from its first false
    positive until its first true positive (never, when that came first).
    """
    n = len(image_ids)
    steps = np.arange(n)
    first_tp_images, first_tp_steps = _first_steps(image_ids, steps, is_true)
    first_fp_images, first_fp_steps = _first_steps(image_ids, steps, is_false)
    _, in_tp, in_fp = np.intersect1d(first_tp_images, first_fp_images, assume_unique=True, return_indices=True)
    left_fp = np.maximum(first_tp_steps[in_tp], first_fp_steps[in_fp])  # the step the image leaves the FP set
    true_images = np.cumsum(np.bincount(first_tp_steps, minlength=n))
    false_images = np.cumsum(np.bincount(first_fp_steps, minlength=n)) - np.cumsum(np.bincount(left_fp, minlength=n))
    return true_images, false_images


def confusion_matrices(objects: Sequence[int], gt_classes: np.ndarray, predicted_classes: np.ndarray,
                       scores: np.ndarray) -> dict[float, list[list[int]]]:
    """{score threshold: C x (C + 1) matrix} from class-free matches (section 5.8).

    ``objects`` is the number of non-crowd objects per class; match k paired an object of class
    ``gt_classes[k]`` with a prediction of class ``predicted_classes[k]`` scoring ``scores[k]``. Rows
    are ground-truth classes, columns predicted classes and a last "missed" column; at threshold t every
    match scoring >= t moves one object of its row from "missed" to its predicted class. Thresholds
    0.0 ... 0.9; with no match at all, one matrix keyed -1.0 (every object missed).
    """
    classes = len(objects)
    initial = np.zeros((classes, classes + 1), np.int64)
    initial[:, classes] = objects
    if len(scores) == 0:
        return {NO_MATCH_KEY: initial.tolist()}
    cells = np.asarray(gt_classes, np.int64) * (classes + 1) + np.asarray(predicted_classes, np.int64)
    matrices = {}
    for threshold in MATRIX_THRESHOLDS:
        counts = np.bincount(cells[scores >= threshold], minlength=classes * (classes + 1))
        matrix = initial + counts.reshape(classes, classes + 1)
        matrix[:, classes] -= counts.reshape(classes, classes + 1).sum(axis=1)
        matrices[threshold] = matrix.tolist()
    return matrices


def _first_steps(image_ids: np.ndarray, steps: np.ndarray, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The images among the selected predictions and, for each, the step of its first selected prediction."""
    images, first = np.unique(image_ids[selected], return_index=True)
    return images, steps[selected][first]
