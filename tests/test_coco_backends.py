"""The COCO backends: faster-coco-eval (the default) and pycocotools (the fallback) give the same twelve
numbers on real ground truth, and the default falls back with one warning when faster-coco-eval is broken."""
from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from visionsweep.data.detection_formats.voc import import_voc
from visionsweep.data.detection_formats.yolo import import_yolo
from visionsweep.evaluation import coco as coco_module
from visionsweep.evaluation.coco import COCO_METRIC_NAMES, CocoEvaluator, default_coco_backend
from visionsweep.evaluation.detection import DetectionEvaluation, evaluate_detections
from visionsweep.geometry.masks import pixel_segments, polygons_to_rles
from visionsweep.tasks import Task

COCO80 = [f"class{i}" for i in range(80)]


def _jittered_predictions(records, classes, rng, *, with_polygons=False):
    """Predictions made from real ground truth, deterministically: 85% of the objects found again with a
    jittered box (or polygon), 10% of those under another class, 0-4 background detections per image,
    scores rounded to 0.01 so that ties occur. Returns (predictions, truths, sizes) in pixels."""
    index = {name: i for i, name in enumerate(classes)}
    predictions, truths, sizes = [], [], []
    for record in records:
        width, height = record.width, record.height
        scale = np.array([width, height] * 2, dtype=np.float64)
        boxes = np.array([o.box for o in record.objects], dtype=np.float64).reshape(-1, 4) * scale
        labels = np.array([index[o.label] for o in record.objects], dtype=np.int64)
        truth = {"boxes": boxes, "labels": labels, "iscrowd": np.zeros(len(labels), bool)}
        found_boxes, found_labels, found_polygons = [], [], []
        for box, label, obj in zip(boxes, labels, record.objects):
            if rng.random() > 0.85:
                continue  # missed
            w, h = box[2] - box[0], box[3] - box[1]
            shift = rng.normal(0, 0.08, 2) * (w, h)
            stretch = np.exp(rng.normal(0, 0.1, 2))
            centre = (box[:2] + box[2:]) / 2
            half = np.array([w, h]) / 2 * stretch
            found_boxes.append(np.concatenate([centre + shift - half, centre + shift + half]))
            found_labels.append(int(rng.integers(0, len(classes))) if rng.random() < 0.1 else int(label))
            if with_polygons:
                segments = pixel_segments(obj.polygons, width, height)
                found_polygons.append([centre + shift + (s - centre) * stretch + rng.normal(0, 1.0, s.shape)
                                       for s in segments])
        for _ in range(int(rng.integers(0, 5))):  # background detections
            x0, y0 = rng.uniform(0, width - 20), rng.uniform(0, height - 20)
            w, h = rng.uniform(8, min(200, width - x0)), rng.uniform(8, min(200, height - y0))
            found_boxes.append(np.array([x0, y0, x0 + w, y0 + h]))
            found_labels.append(int(rng.integers(0, len(classes))))
            if with_polygons:
                found_polygons.append([np.array([[x0, y0], [x0 + w, y0 + h * 0.3], [x0 + w * 0.4, y0 + h]])])
        prediction = {"boxes": np.array(found_boxes, dtype=np.float64).reshape(-1, 4),
                      "labels": np.array(found_labels, dtype=np.int64),
                      "scores": np.round(rng.uniform(0.05, 1.0, len(found_labels)), 2)}
        if with_polygons:
            truth["masks"] = polygons_to_rles([pixel_segments(o.polygons, width, height) for o in record.objects],
                                              height, width)
            prediction["masks"] = polygons_to_rles(found_polygons, height, width)
        predictions.append(prediction)
        truths.append(truth)
        sizes.append((width, height))
    return predictions, truths, sizes


def _both_backends(predictions, truths, sizes, classes, iou_type):
    numbers = {}
    for backend in ("pycocotools", "faster-coco-eval"):
        evaluator = CocoEvaluator(classes, iou_type=iou_type, backend=backend)
        half = len(predictions) // 2  # two batches, as a validation loop adds them
        evaluator.add(predictions[:half], truths[:half], image_sizes=sizes[:half], original_sizes=sizes[:half])
        evaluator.add(predictions[half:], truths[half:], image_sizes=sizes[half:], original_sizes=sizes[half:])
        numbers[backend] = evaluator.compute()
    return numbers["pycocotools"], numbers["faster-coco-eval"]


def test_both_backends_agree_on_bccd_boxes(datasets):
    result = import_voc(datasets / "BCCD", image_set="test")
    assert len(result.records) == 72
    classes = sorted(result.report.class_counts)  # Platelets, RBC, WBC
    predictions, truths, sizes = _jittered_predictions(result.records, classes, np.random.default_rng(7))
    assert sum(len(t["labels"]) for t in truths) > 900 and sum(len(p["labels"]) for p in predictions) > 900
    slow, fast = _both_backends(predictions, truths, sizes, classes, "bbox")
    assert list(fast) == list(slow) == list(COCO_METRIC_NAMES)
    assert [fast[name] for name in COCO_METRIC_NAMES] == pytest.approx([slow[name] for name in COCO_METRIC_NAMES],
                                                                        abs=1e-12, rel=0)
    # a real case: every number is defined and none is degenerate
    assert 0.2 < fast["AP"] < fast["AP50"] < 0.95 and fast["AR_1"] < fast["AR_10"] <= fast["AR_100"]
    assert all(0 < fast[name] < 1 for name in COCO_METRIC_NAMES if name not in ("AP_small", "AR_small")), fast


def test_both_backends_agree_on_coco128_seg_masks(datasets):
    result = import_yolo(datasets / "coco128-seg", names=COCO80, task=Task.INSTANCE_SEGMENTATION)
    records = [r for r in result.records if r.objects][:40]
    predictions, truths, sizes = _jittered_predictions(records, COCO80, np.random.default_rng(11), with_polygons=True)
    slow, fast = _both_backends(predictions, truths, sizes, COCO80, "segm")
    assert [fast[name] for name in COCO_METRIC_NAMES] == pytest.approx([slow[name] for name in COCO_METRIC_NAMES],
                                                                        abs=1e-12, rel=0)
    assert 0.1 < fast["AP"] < fast["AP50"] < 1 and -1 not in (fast["AP_small"], fast["AP_medium"], fast["AP_large"])


def test_the_default_backend_is_faster_coco_eval():
    assert default_coco_backend() == "faster-coco-eval"
    assert CocoEvaluator(["a"]).backend == "faster-coco-eval"
    assert DetectionEvaluation(["a"], "coco").coco.backend == "faster-coco-eval"
    assert CocoEvaluator(["a"], backend="pycocotools").backend == "pycocotools"


@pytest.fixture
def broken_faster_coco_eval(monkeypatch):
    """faster_coco_eval as a platform with a broken wheel sees it: importing it fails."""
    for name in [m for m in sys.modules if m == "faster_coco_eval" or m.startswith("faster_coco_eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import raises ImportError
    default_coco_backend.cache_clear()
    yield
    default_coco_backend.cache_clear()


def test_without_faster_coco_eval_the_default_falls_back_with_one_warning(broken_faster_coco_eval, caplog):
    caplog.set_level(logging.WARNING, logger="visionsweep")
    assert CocoEvaluator(["a"]).backend == "pycocotools"
    metrics = evaluate_detections([{"boxes": [[0, 0, 10, 10]], "labels": [0], "scores": [0.9]}],
                                  [{"boxes": [[0, 0, 10, 10]], "labels": [0]}], ["a"], metric_type="coco")
    assert metrics["coco_metrics"]["AP50"] == pytest.approx(1)
    warnings = [r for r in caplog.records if r.name == "visionsweep" and "faster-coco-eval" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "fall back to pycocotools" in warnings[0].getMessage()
    # asking for it by name stays an error that says what to do
    with pytest.raises(ValueError, match="COCO backend 'faster-coco-eval' cannot be imported .*pip install "
                                         "--force-reinstall faster-coco-eval, or use backend='pycocotools'"):
        CocoEvaluator(["a"], backend="faster-coco-eval")
    assert coco_module.DEFAULT_COCO_BACKEND == "faster-coco-eval"
