"""Random detection images and a plain IoU, shared by the VOC tests that cross-check the evaluator
against plain loops."""
from __future__ import annotations

import numpy as np


def random_images(rng, count, classes=3, max_objects=6, max_predictions=12, size=200, *, same_class=0.8,
                  score_levels=5):
    """Predictions jittered around the objects plus random ones (``same_class`` of them keep their object's
    class), scores on a grid of ``score_levels`` steps up to 1 (to make ties)."""
    predictions, truths = [], []
    for _ in range(count):
        m = rng.integers(0, max_objects + 1)
        xy = rng.uniform(0, size * 0.7, (m, 2))
        gt_boxes = np.hstack([xy, xy + rng.uniform(5, size * 0.3, (m, 2))])
        gt = {"boxes": gt_boxes, "labels": rng.integers(0, classes, m).tolist(),
              "iscrowd": (rng.random(m) < 0.15).astype(int).tolist()}
        n = rng.integers(0, max_predictions + 1)
        source = rng.integers(0, max(m, 1), n)
        boxes = gt_boxes[source] + rng.normal(0, 6, (n, 4)) if m else rng.uniform(0, size, (n, 4))
        boxes = np.hstack([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:]) + 1])
        labels = np.where(rng.random(n) < same_class, np.asarray(gt["labels"])[source] if m else 0,
                          rng.integers(0, classes, n))
        scores = rng.integers(1, score_levels + 1, n) / score_levels
        predictions.append({"boxes": boxes, "labels": labels.tolist(), "scores": scores.tolist()})
        truths.append(gt)
    return predictions, truths


def plain_iou(a, b, crowd):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    union = area_a if crowd else area_a + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0
