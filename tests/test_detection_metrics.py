"""VOC-style and COCO detection metrics: hand-worked cases, the reference's unit values, and agreement with
a plain per-prediction loop and with pycocotools called directly."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detection_helpers import plain_iou, random_images
from visionsweep.distributed import decode_plain, encode_plain
from visionsweep.evaluation import voc as voc_module
from visionsweep.evaluation.coco import COCO_METRIC_NAMES, COCO_SUMMARY_LINES, CocoEvaluator
from visionsweep.evaluation.detection import DetectionEvaluation, evaluate_detections
from visionsweep.evaluation.detections import read_detections, read_ground_truth
from visionsweep.evaluation.voc import (
    FALSE_POSITIVE as FP,
    IGNORED as OTHER,
    TRUE_POSITIVE as TP,
    VocEvaluator,
    average_precision,
    class_metrics,
    match_images,
)

CLASSES = ["cat", "dog"]


def prediction(boxes, scores, labels=None):
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    return {"boxes": boxes, "scores": scores, "labels": [0] * len(boxes) if labels is None else labels}


def truth(boxes, labels=None, crowd=None):
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    out = {"boxes": boxes, "labels": [0] * len(boxes) if labels is None else labels}
    if crowd is not None:
        out["iscrowd"] = crowd
    return out


def voc(predictions, truths, threshold=0.5):
    evaluator = VocEvaluator(CLASSES, iou_threshold=threshold)
    evaluator.add(predictions, truths)
    return evaluator.compute()


def cat(metrics):
    return scalars(metrics["per_label_metrics"]["cat"])


def scalars(entry):
    """A class's precision, recall and AP (its curves per score threshold: test_detection_metric_curves.py)."""
    return {key: entry[key] for key in ("precision", "recall", "average_precision")}


def close(metrics, precision, recall, ap):
    return metrics == {"precision": pytest.approx(precision, abs=1e-6), "recall": pytest.approx(recall, abs=1e-6),
                       "average_precision": pytest.approx(ap, abs=1e-6)}


# --- hand-built cases ---------------------------------------------------------------------------------


def test_perfect_match():
    metrics = voc([prediction([[10, 10, 50, 50]], [0.9])], [truth([[10, 10, 50, 50]])])
    assert close(cat(metrics), 1, 1, 1)
    assert scalars(metrics["per_label_metrics"]["dog"]) == {"precision": -1, "recall": -1, "average_precision": -1}
    assert metrics["mean_average_precision"] == pytest.approx(1, abs=1e-6)  # dog is undefined: left out


def test_right_box_wrong_class():
    metrics = voc([prediction([[10, 10, 50, 50]], [0.9], labels=[1])], [truth([[10, 10, 50, 50]])])
    assert cat(metrics) == {"precision": -1, "recall": 0.0, "average_precision": 0.0}  # m=1, n=0
    assert scalars(metrics["per_label_metrics"]["dog"]) == {"precision": 0.0, "recall": -1,
                                                            "average_precision": -1}  # m=0, n=1
    assert (metrics["mean_average_precision"], metrics["precision"], metrics["recall"]) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("bottom, outcome", [(49, FP), (50, TP), (51, TP)])
def test_iou_just_under_at_and_over_the_threshold(bottom, outcome):
    # ground truth 100x100; the prediction covers its top `bottom` rows: IoU = bottom / 100
    outcomes = match_images([read_detections(prediction([[0, 0, 100, bottom]], [0.8]))],
                            [read_ground_truth(truth([[0, 0, 100, 100]]))], 0.5)
    assert outcomes[0].tolist() == [outcome]
    assert close(cat(voc([prediction([[0, 0, 100, bottom]], [0.8])], [truth([[0, 0, 100, 100]])])),
                 *((1, 1, 1) if outcome == TP else (0, 0, 0)))


def test_the_threshold_setting_moves_the_decision():
    box = prediction([[0, 0, 100, 40]], [0.8])  # IoU 0.4
    assert cat(voc([box], [truth([[0, 0, 100, 100]])], threshold=0.5))["average_precision"] == 0.0
    assert cat(voc([box], [truth([[0, 0, 100, 100]])], threshold=0.4))["average_precision"] == pytest.approx(1)


def test_two_predictions_for_one_box():
    # the higher score takes the box; the second is a false positive after all recall is reached
    metrics = voc([prediction([[0, 0, 100, 100], [2, 2, 100, 100]], [0.6, 0.9])], [truth([[0, 0, 100, 100]])])
    assert close(cat(metrics), 0.5, 1, 1)
    outcomes = match_images([read_detections(prediction([[0, 0, 100, 100], [2, 2, 100, 100]], [0.6, 0.9]))],
                            [read_ground_truth(truth([[0, 0, 100, 100]]))], 0.5)
    assert outcomes[0].tolist() == [FP, TP]


def test_crowd_box_ignores_the_predictions_inside_it():
    # [10,10,30,30] has IoU 0.04 with the crowd box, but crowd IoU is intersection / prediction area = 1
    predictions = [prediction([[10, 10, 30, 30], [200, 200, 300, 300]], [0.9, 0.8])]
    truths = [truth([[0, 0, 100, 100], [200, 200, 300, 300]], crowd=[1, 0])]
    outcomes = match_images([read_detections(predictions[0])], [read_ground_truth(truths[0])], 0.5)
    assert outcomes[0].tolist() == [OTHER, TP]
    # m = 1 non-crowd object; the ignored prediction still counts in n but is neither TP nor FP
    assert close(cat(voc(predictions, truths)), 1, 1, 1)
    # as a normal object it counts: m = 2, visit order FP, TP -> one step of recall 0.5 at precision 0.5
    without_crowd_flag = [truth([[0, 0, 100, 100], [200, 200, 300, 300]], crowd=[0, 0])]
    assert close(cat(voc(predictions, without_crowd_flag)), 0.5, 0.5, 0.25)


def test_a_class_with_only_crowd_objects_reports_precision_zero():
    metrics = voc([prediction([[0, 0, 10, 10]], [0.9])], [truth([[0, 0, 10, 10]], crowd=[True])])
    assert cat(metrics) == {"precision": 0.0, "recall": -1, "average_precision": -1}
    assert metrics["mean_average_precision"] == -1  # no class has a defined AP


def test_empty_predictions():
    metrics = voc([prediction([], [])], [truth([[0, 0, 10, 10], [20, 20, 30, 30]])])
    assert cat(metrics) == {"precision": -1, "recall": 0.0, "average_precision": 0.0}
    assert (metrics["mean_average_precision"], metrics["precision"], metrics["recall"]) == (0.0, -1, 0.0)


def test_empty_ground_truth():
    metrics = voc([prediction([[0, 0, 10, 10]], [0.5])], [truth([])])
    assert cat(metrics) == {"precision": 0.0, "recall": -1, "average_precision": -1}
    assert metrics["mean_average_precision"] == -1


def test_nothing_at_all():
    metrics = voc([prediction([], [])], [truth([])])
    assert metrics["mean_average_precision"] == -1 and metrics["precision"] == -1 and metrics["recall"] == -1


def test_no_fallback_to_the_second_best_object():
    # spec 5.3: the second prediction's best object is A (IoU 0.59 vs 0.52), already taken, so it is a FP
    predictions = [prediction([[100, 100, 200, 200], [135, 100, 210, 200]], [0.75, 0.75])]
    truths = [truth([[100, 100, 200, 200], [150, 100, 250, 200]])]
    assert close(cat(voc(predictions, truths)), 0.5, 0.5, 0.5)


def test_equal_scores_visit_the_later_prediction_first():
    # spec 5.3: both score 1, the later one takes the object
    outcomes = match_images([read_detections(prediction([[25, 25, 75, 75], [20, 20, 80, 80]], [1, 1]))],
                            [read_ground_truth(truth([[20, 20, 80, 80]]))], 0.5)
    assert outcomes[0].tolist() == [FP, TP]
    outcomes = match_images([read_detections(prediction([[25, 25, 75, 75], [90, 90, 110, 110]], [1.0, 0.1]))],
                            [read_ground_truth(truth([[20, 20, 80, 80]]))], 0.5)
    assert outcomes[0].tolist() == [TP, FP]


def test_predictions_of_several_images_are_ranked_together():
    # image 1: TP at 0.9; image 2: FP at 0.95 and an unfound object -> ranked FP, TP: P 0.5, R 0.5, AP 0.25
    metrics = voc([prediction([[0, 0, 10, 10]], [0.9]), prediction([[50, 50, 60, 60]], [0.95])],
                  [truth([[0, 0, 10, 10]]), truth([[0, 0, 10, 10]])])
    assert close(cat(metrics), 0.5, 0.5, 0.25)


def test_equal_scores_across_images_rank_the_later_image_first():
    # image 1: TP at 0.5; image 2 (no objects): FP at 0.5 -> visit order FP, TP: AP 0.5 (1.0 the other way round)
    metrics = voc([prediction([[0, 0, 10, 10]], [0.5]), prediction([[0, 0, 10, 10]], [0.5])],
                  [truth([[0, 0, 10, 10]]), truth([])])
    assert close(cat(metrics), 0.5, 1, 0.5)


def test_the_reference_unit_values_of_class_metrics_and_average_precision():
    # m=4, (FP 0.4, TP 0.2, TP 0.8, OTHER 0.6) in visit order TP, OTHER, FP, TP
    assert close(class_metrics(np.array([TP, OTHER, FP, TP]), 4), 2 / 3, 0.5, 0.25 + 0.25 * 2 / 3)
    assert close(class_metrics(np.array([TP, FP]), 1), 0.5, 1, 1)
    assert close(class_metrics(np.array([TP, TP]), 2), 1, 1, 1)
    assert close(class_metrics(np.array([OTHER, OTHER]), 2), 0, 0, 0)
    curve = np.array([(0.1, 0.8), (0.35, 0.9), (0.4, 0.5), (0.55, 0.6), (0.8, 0.65)])
    assert average_precision(curve[:, 0], curve[:, 1]) == pytest.approx(0.6075)
    curve = np.array([(0.1, 0.8), (0.4, 0.5), (0.4, 0.9), (0.55, 0.6), (0.8, 0.65)])
    assert average_precision(curve[:, 0], curve[:, 1]) == pytest.approx(0.62)
    steps = np.linspace(0, 1, 100)
    assert average_precision(steps, 1 - steps) == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="must not decrease"):
        average_precision(np.array([0.5, 0.4]), np.array([1.0, 1.0]))


def test_inputs_are_torchvision_tensors_too():
    metrics = voc([{"boxes": torch.tensor([[10.0, 10, 50, 50]]), "labels": torch.tensor([1]),
                    "scores": torch.tensor([0.7])}],
                  [{"boxes": torch.tensor([[10.0, 10, 50, 50]]), "labels": torch.tensor([1]),
                    "iscrowd": torch.tensor([0])}])
    assert metrics["per_label_metrics"]["dog"]["average_precision"] == pytest.approx(1)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="class index 2 is outside the 2 class names"):
        voc([prediction([[0, 0, 1, 1]], [0.5], labels=[2])], [truth([])])
    with pytest.raises(ValueError, match="'scores' has 1 values for 2 boxes"):
        voc([prediction([[0, 0, 1, 1], [0, 0, 2, 2]], [0.5])], [truth([])])
    with pytest.raises(ValueError, match="1 prediction entries for 2 ground-truth"):
        voc([prediction([], [])], [truth([]), truth([])])
    with pytest.raises(ValueError, match=r"class indices \[0, 3\] do not all index the 2 class names"):
        CocoEvaluator(CLASSES).add([prediction([[0, 0, 1, 1], [0, 0, 2, 2]], [0.5, 0.4], labels=[0, 3])], [truth([])])


# --- the vectorised matcher against a plain loop --------------------------------------------------------


def _plain_outcomes(pred, gt, threshold):
    """The reference rule written as a loop: per class, visit by score (later first on ties), best object only."""
    outcomes = np.zeros(len(pred["scores"]), np.int8)
    for c in set(np.asarray(pred["labels"]).tolist()):
        p_idx = [i for i, label in enumerate(pred["labels"]) if label == c]
        g_idx = [j for j, label in enumerate(gt["labels"]) if label == c]
        taken = set()
        order = sorted(p_idx, key=lambda i: (-pred["scores"][i], -i))
        for i in order:
            best, best_iou = None, -1.0
            for j in g_idx:
                iou = plain_iou(pred["boxes"][i], gt["boxes"][j], gt["iscrowd"][j])
                if iou > best_iou:
                    best, best_iou = j, iou
            if best is None or best_iou < threshold:
                outcomes[i] = FP
            elif gt["iscrowd"][best]:
                outcomes[i] = OTHER
            elif best in taken:
                outcomes[i] = FP
            else:
                taken.add(best)
                outcomes[i] = TP
    return outcomes


@pytest.mark.parametrize("block_elements", [1 << 21, 50])
def test_vectorised_matching_equals_the_plain_loop(monkeypatch, block_elements):
    monkeypatch.setattr(voc_module, "_BLOCK_ELEMENTS", block_elements)  # 50 forces many small blocks
    rng = np.random.default_rng(0)
    predictions, truths = random_images(rng, 300)
    for threshold in (0.3, 0.5, 0.7):
        outcomes = match_images([read_detections(p) for p in predictions], [read_ground_truth(t) for t in truths],
                                threshold)
        expected = [_plain_outcomes(p, t, threshold) for p, t in zip(predictions, truths)]
        assert all(np.array_equal(a, b) for a, b in zip(outcomes, expected))
    counts = np.bincount(np.concatenate(outcomes), minlength=3)
    assert counts[TP] > 100 and counts[FP] > 100 and counts[OTHER] > 5  # every branch is exercised


def test_batches_and_merged_evaluators_give_the_same_numbers_as_one_pass():
    rng = np.random.default_rng(1)
    predictions, truths = random_images(rng, 120)
    whole = VocEvaluator(["a", "b", "c"])
    whole.add(predictions, truths)
    first, second = VocEvaluator(["a", "b", "c"]), VocEvaluator(["a", "b", "c"])
    for start in range(0, 60, 7):
        first.add(predictions[start:min(start + 7, 60)], truths[start:min(start + 7, 60)])
    second.add(predictions[60:], truths[60:])
    first.merge_state(decode_plain(encode_plain(second.state())))  # as gathered from another process
    assert first.compute() == whole.compute()
    assert first.images == 120


def test_ten_thousand_one_box_images_exchange_small():
    evaluator = VocEvaluator(["a"])
    one = [prediction([[0, 0, 10, 10]], [0.5])]
    for _ in range(100):
        evaluator.add(one * 100, [truth([[0, 0, 10, 10]])] * 100)
    assert evaluator.images == 10_000
    assert len(encode_plain(evaluator.state())) < 500_000


# --- masks --------------------------------------------------------------------------------------------


def _mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_segm_matches_on_masks_not_boxes():
    # Two L-shaped objects with the same bounding box: boxes overlap fully, masks not at all.
    a = _mask(40, 40, 0, 0, 40, 10) | _mask(40, 40, 0, 0, 10, 40)
    b = _mask(40, 40, 10, 30, 40, 40) | _mask(40, 40, 30, 10, 40, 40)
    box = [[0, 0, 40, 40]]
    pred = {"boxes": box, "labels": [0], "scores": [0.9], "masks": a[None].astype(float) * 0.9}
    for iou_type, expected in (("bbox", 1.0), ("segm", 0.0)):
        evaluator = VocEvaluator(["thing"], iou_type=iou_type)
        evaluator.add([pred], [{"boxes": box, "labels": [0], "masks": b[None]}])
        assert evaluator.compute()["mean_average_precision"] == pytest.approx(expected, abs=1e-6)
    evaluator = VocEvaluator(["thing"], iou_type="segm")
    evaluator.add([pred], [{"boxes": box, "labels": [0], "masks": a[None]}])
    assert evaluator.compute()["mean_average_precision"] == pytest.approx(1, abs=1e-6)


# --- COCO ---------------------------------------------------------------------------------------------


def _pycocotools_directly(predictions, truths, classes, iou_type="bbox", scale=None):
    """The twelve numbers from pycocotools' own COCO/loadRes/COCOeval on the same input."""
    images, annotations, results = [], [], []
    for image_id, (p, t) in enumerate(zip(predictions, truths), start=1):
        sx, sy = scale[image_id - 1] if scale else (1.0, 1.0)
        images.append({"id": image_id, "width": 1000, "height": 1000})
        gt_boxes = np.asarray(t["boxes"], float).reshape(-1, 4) * [sx, sy, sx, sy]
        for k, (b, label) in enumerate(zip(gt_boxes, t["labels"])):
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                   "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1]),
                   "iscrowd": int(t.get("iscrowd", [0] * len(gt_boxes))[k])}
            if iou_type == "segm":
                ann["segmentation"] = t["rles"][k]
                ann["area"] = float(mask_utils.area(t["rles"][k]))
            annotations.append(ann)
        p_boxes = np.asarray(p["boxes"], float).reshape(-1, 4) * [sx, sy, sx, sy]
        for k, (b, label, score) in enumerate(zip(p_boxes, p["labels"], p["scores"])):
            result = {"image_id": image_id, "category_id": int(label) + 1, "score": float(score)}
            if iou_type == "segm":
                result["segmentation"] = p["rles"][k]
            else:
                result["bbox"] = [b[0], b[1], b[2] - b[0], b[3] - b[1]]
            results.append(result)
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO()
        ground.dataset = {"images": images, "annotations": annotations,
                          "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)]}
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(results), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def test_coco_numbers_equal_pycocotools_on_the_same_input():
    rng = np.random.default_rng(2)
    predictions, truths = random_images(rng, 60, size=400)
    evaluator = CocoEvaluator(["a", "b", "c"])
    evaluator.add(predictions[:25], truths[:25])
    evaluator.add(predictions[25:], truths[25:])
    ours = evaluator.compute()
    expected = _pycocotools_directly(predictions, truths, ["a", "b", "c"])
    assert list(ours) == list(COCO_METRIC_NAMES) == list(COCO_SUMMARY_LINES)
    assert [ours[name] for name in COCO_METRIC_NAMES] == pytest.approx(expected.tolist(), abs=1e-12)
    assert 0.05 < ours["AP"] < 0.95 and ours["AP_small"] != -1 and ours["AP_large"] != -1


def test_coco_size_ranges_use_original_pixels():
    # the model saw the image at twice its size: a 40x40 frame box is 20x20 (small) in the original image
    predictions, truths = [prediction([[10, 10, 50, 50]], [0.9])], [truth([[10, 10, 50, 50]])]
    in_frame = evaluate_detections(predictions, truths, ["cat"], metric_type="coco")["coco_metrics"]
    assert (in_frame["AP_small"], in_frame["AP_medium"]) == (-1, pytest.approx(1))
    original = evaluate_detections(predictions, truths, ["cat"], metric_type="coco", image_sizes=[(400, 200)],
                                   original_sizes=[(200, 100)])["coco_metrics"]
    assert (original["AP_small"], original["AP_medium"]) == (pytest.approx(1), -1)
    rng = np.random.default_rng(3)
    predictions, truths = random_images(rng, 30, size=300)
    scales = [(0.5, 0.5)] * 30
    evaluator = CocoEvaluator(["a", "b", "c"])
    evaluator.add(predictions, truths, image_sizes=[(600, 600)] * 30, original_sizes=[(300, 300)] * 30)
    expected = _pycocotools_directly(predictions, truths, ["a", "b", "c"], scale=scales)
    assert list(evaluator.compute().values()) == pytest.approx(expected.tolist(), abs=1e-12)


def test_coco_without_predictions_is_all_zeros():
    metrics = evaluate_detections([prediction([], [])], [truth([[0, 0, 5, 5]])], ["cat"], metric_type="coco")
    assert metrics["coco_metrics"] == {name: 0.0 for name in COCO_METRIC_NAMES}


def test_coco_segm_equals_pycocotools():
    masks = [_mask(60, 80, 5, 5, 40, 30), _mask(60, 80, 30, 20, 75, 55), _mask(60, 80, 0, 40, 20, 60)]
    guesses = [_mask(60, 80, 6, 5, 40, 32), _mask(60, 80, 35, 25, 70, 50), _mask(60, 80, 50, 0, 80, 15)]
    encode = lambda ms: [mask_utils.encode(np.asfortranarray(m)) for m in ms]  # noqa: E731
    boxes = [[0, 0, 1, 1]] * 3
    t = {"boxes": boxes, "labels": [0, 1, 0], "masks": np.stack(masks), "rles": encode(masks)}
    p = {"boxes": boxes, "labels": [0, 1, 0], "scores": [0.9, 0.7, 0.8], "masks": np.stack(guesses),
         "rles": encode(guesses)}
    evaluator = CocoEvaluator(["a", "b"], iou_type="segm")
    evaluator.add([p], [t])
    expected = _pycocotools_directly([p], [t], ["a", "b"], iou_type="segm")
    assert list(evaluator.compute().values()) == pytest.approx(expected.tolist(), abs=1e-12)
    assert expected[1] > 0.5  # AP50 is meaningful here, not a degenerate 0 or -1


def test_faster_coco_eval_backend_gives_the_same_numbers():
    rng = np.random.default_rng(4)
    predictions, truths = random_images(rng, 40, size=400)
    numbers = {}
    for backend in ("pycocotools", "faster-coco-eval"):
        evaluator = CocoEvaluator(["a", "b", "c"], backend=backend)
        evaluator.add(predictions, truths, image_sizes=[(400, 400)] * 40, original_sizes=[(300, 200)] * 40)
        numbers[backend] = list(evaluator.compute().values())
    assert numbers["faster-coco-eval"] == pytest.approx(numbers["pycocotools"], abs=1e-12)


def test_an_unknown_coco_backend_is_named():
    with pytest.raises(ValueError, match="unknown COCO backend 'detectron'; choose one of pycocotools, faster-coco-eval"):
        CocoEvaluator(CLASSES, backend="detectron")


# --- the front door -----------------------------------------------------------------------------------


def test_metric_types_of_the_front_door():
    predictions = [prediction([[0, 0, 100, 100], [300, 300, 400, 400]], [0.9, 0.8])]
    truths = [truth([[0, 0, 100, 100], [300, 300, 400, 390]])]
    as_voc = evaluate_detections(predictions, truths, CLASSES, metric_type="voc")
    assert set(as_voc) == {"mean_average_precision", "precision", "recall", "per_label_metrics",
                           "precisions_per_score_threshold", "recalls_per_score_threshold",
                           "image_level_binary_classifier_metrics", "confusion_matrices_per_score_threshold"}
    assert as_voc["mean_average_precision"] == pytest.approx(1, abs=1e-6)
    as_coco = evaluate_detections(predictions, truths, CLASSES, metric_type="coco")
    assert set(as_coco) == {"mean_average_precision", "coco_metrics"}
    assert as_coco["mean_average_precision"] == as_coco["coco_metrics"]["AP50"] == pytest.approx(1)
    assert as_coco["coco_metrics"]["AP75"] == pytest.approx(1) and as_coco["coco_metrics"]["AP"] < 1
    both = evaluate_detections(predictions, truths, CLASSES, metric_type="coco_voc", iou_threshold=0.95)
    assert both["mean_average_precision"] == pytest.approx(0.5, abs=1e-6)  # VOC at 0.95: one of two boxes
    assert both["coco_metrics"] == as_coco["coco_metrics"]
    none = DetectionEvaluation(CLASSES, "none")
    assert not none.enabled
    none.add(predictions, truths)
    assert none.compute() == {}
    with pytest.raises(ValueError, match="validation_metric_type must be one of voc, coco, coco_voc, none"):
        DetectionEvaluation(CLASSES, "map")
