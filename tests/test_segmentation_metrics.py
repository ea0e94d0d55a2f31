"""Mask AP: COCO segm numbers of the shared evaluator equal pycocotools on the same polygons, and the
VOC-style evaluator matches on mask IoU (the reference's segmentation cases, spec 5.9)."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from visionsweep.evaluation.coco import COCO_METRIC_NAMES
from visionsweep.evaluation.detection import DetectionEvaluation, evaluate_detections
from visionsweep.geometry.masks import polygons_to_masks

CLASSES = ["cat", "dog", "fox"]


def _random_polygon(rng, width, height):
    """A star-shaped polygon (K, 2) of 5-12 points around a random centre, any size from tiny to large."""
    count = int(rng.integers(5, 13))
    radius = float(np.exp(rng.uniform(np.log(3), np.log(min(width, height) / 2.2))))
    centre = rng.uniform([radius, radius], [width - radius, height - radius])
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    radii = radius * rng.uniform(0.4, 1.0, count)
    return centre + np.column_stack([np.cos(angles), np.sin(angles)]) * radii[:, None]


def _random_image(rng, width, height):
    truth = [(_random_polygon(rng, width, height), int(rng.integers(3)), bool(rng.random() < 0.1))
             for _ in range(int(rng.integers(0, 6)))]
    predictions = []
    for points, label, _ in truth:
        if rng.random() < 0.8:  # a found object: the true shape, jittered
            jitter = rng.normal(0, rng.choice([0.5, 2.0, 6.0]), points.shape)
            predictions.append((np.clip(points + jitter, 0, [width, height]), label if rng.random() < 0.9 else
                                int(rng.integers(3)), float(rng.random())))
    for _ in range(int(rng.integers(0, 3))):  # spurious detections
        predictions.append((_random_polygon(rng, width, height), int(rng.integers(3)), float(rng.random())))
    return truth, predictions


def _box(points):
    return [*points.min(axis=0), *points.max(axis=0)]


def _pycocotools(images):
    """The twelve numbers from pycocotools alone: ground truth as pixel polygons in a COCO document (its own
    polygon-to-mask path), results as RLEs, COCOeval segm."""
    document = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in
                                                                enumerate(CLASSES)]}
    results = []
    for image_id, (width, height, truth, predictions) in enumerate(images, start=1):
        document["images"].append({"id": image_id, "width": width, "height": height})
        for points, label, crowd in truth:
            rle = mask_utils.frPyObjects([points.ravel().tolist()], height, width)[0]
            x0, y0, x1, y1 = _box(points)
            document["annotations"].append({
                "id": len(document["annotations"]) + 1, "image_id": image_id, "category_id": label + 1,
                "segmentation": [points.ravel().tolist()], "area": float(mask_utils.area(rle)),
                "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": int(crowd)})
        for points, label, score in predictions:
            rle = mask_utils.frPyObjects([points.ravel().tolist()], height, width)[0]
            results.append({"image_id": image_id, "category_id": label + 1, "score": score, "segmentation": rle})
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO()
        ground.dataset = document
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(results), "segm")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats.tolist()


def _ours(images, metric_type="coco", batch=7):
    """The same images through the front door, with masks rasterised by visionsweep, in batches."""
    evaluation = DetectionEvaluation(CLASSES, metric_type, iou_type="segm")
    for start in range(0, len(images), batch):
        predictions, truths, sizes = [], [], []
        for width, height, truth, found in images[start:start + batch]:
            truths.append({"boxes": np.array([_box(p) for p, _, _ in truth]).reshape(-1, 4),
                           "labels": [label for _, label, _ in truth], "iscrowd": [c for _, _, c in truth],
                           "masks": polygons_to_masks([[p] for p, _, _ in truth], height, width)})
            predictions.append({"boxes": np.array([_box(p) for p, _, _ in found]).reshape(-1, 4),
                                "labels": [label for _, label, _ in found], "scores": [s for _, _, s in found],
                                "masks": polygons_to_masks([[p] for p, _, _ in found], height, width)})
            sizes.append((width, height))
        evaluation.add(predictions, truths, image_sizes=sizes, original_sizes=sizes)
    return evaluation.compute()


def test_mask_ap_equals_pycocotools_segm_on_the_same_polygons():
    rng = np.random.default_rng(7)
    images = []
    for _ in range(40):
        width, height = int(rng.integers(120, 400)), int(rng.integers(120, 400))
        images.append((width, height, *_random_image(rng, width, height)))
    ours = _ours(images)["coco_metrics"]
    expected = _pycocotools(images)
    assert [ours[name] for name in COCO_METRIC_NAMES] == pytest.approx(expected, abs=1e-12)
    # a meaningful comparison: neither perfect nor empty, every size range present
    assert 0.05 < ours["AP"] < 0.9 and min(ours["AP_small"], ours["AP_medium"], ours["AP_large"]) > 0
    assert _ours(images, metric_type="coco_voc")["mean_average_precision"] > 0  # VOC on the same masks


def _square(x0, y0, x1, y1):
    return [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)]


def _voc(truth, predictions, iou_threshold=0.5, size=(300, 300)):
    """VOC mAP of one image; objects as (segments, label), predictions as (segments, label, score); boxes
    are deliberately the whole image so that only masks can tell objects apart."""
    width, height = size
    whole = [[0, 0, width, height]]
    truth_dict = {"boxes": whole * len(truth), "labels": [label for _, label in truth],
                  "masks": polygons_to_masks([segments for segments, _ in truth], height, width)}
    found = {"boxes": whole * len(predictions), "labels": [label for _, label, _ in predictions],
             "scores": [score for *_, score in predictions],
             "masks": polygons_to_masks([segments for segments, *_ in predictions], height, width)}
    segm = evaluate_detections([found], [truth_dict], ["thing"], iou_threshold=iou_threshold, iou_type="segm")
    bbox = evaluate_detections([found], [truth_dict], ["thing"], iou_threshold=iou_threshold)
    return segm["mean_average_precision"], bbox["mean_average_precision"]


def test_diagonal_triangles_with_a_small_overlap():
    # Upper-left and lower-left halves of a 200 x 200 square: IoU 1/3 on masks, 1 on boxes.
    upper = [np.array([[0.0, 0.0], [200.0, 0.0], [0.0, 200.0]])]
    lower = [np.array([[0.0, 0.0], [200.0, 200.0], [0.0, 200.0]])]
    assert _voc([(upper, 0)], [(lower, 0, 0.9)], iou_threshold=0.1)[0] == pytest.approx(1.0)
    assert _voc([(upper, 0)], [(lower, 0, 0.9)], iou_threshold=0.5) == (0.0, pytest.approx(1.0))


def test_two_square_objects_that_do_not_overlap():
    truth = _square(0, 0, 50, 50) + _square(100, 100, 150, 150)
    guess = _square(100, 0, 150, 50) + _square(0, 100, 50, 150)
    assert _voc([(truth, 0)], [(guess, 0, 0.8)], iou_threshold=0.1)[0] == 0.0
    assert _voc([(truth, 0)], [(truth, 0, 0.8)], iou_threshold=0.9)[0] == pytest.approx(1.0)


def test_rectangles_as_polygons_behave_like_the_box_cases():
    # spec 5.3: objects A and B, predictions on A and on [135, 100, 210, 200] at equal scores: the second's
    # best object is A (IoU 0.59 against 0.52) and there is no fallback to B, so one true positive.
    truth = [(_square(100, 100, 200, 200), 0), (_square(150, 100, 250, 200), 0)]
    predictions = [(_square(100, 100, 200, 200), 0, 0.75), (_square(135, 100, 210, 200), 0, 0.75)]
    assert _voc(truth, predictions)[0] == pytest.approx(0.5)
    # a crowd object ignores a prediction inside it: neither a true nor a false positive
    evaluation = DetectionEvaluation(["thing"], "voc", iou_type="segm")
    masks = polygons_to_masks([_square(20, 20, 80, 80), _square(30, 30, 60, 60)], 100, 100)
    evaluation.add([{"boxes": [[30, 30, 60, 60]], "labels": [0], "scores": [0.9], "masks": masks[1:]}],
                   [{"boxes": [[20, 20, 80, 80]], "labels": [0], "iscrowd": [True], "masks": masks[:1]}])
    metrics = evaluation.compute()
    thing = metrics["per_label_metrics"]["thing"]
    assert (thing["precision"], thing["recall"], thing["average_precision"]) == (0.0, -1.0, -1.0)
