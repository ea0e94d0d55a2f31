"""The VOC evaluator's precision/recall per score threshold (spec 5.5), image-level binary classifier
metrics (5.7) and confusion matrices per score threshold (5.8): the spec's test values, plain-loop
versions of the rules on random images, merging, masks, and the metrics `visionsweep evaluate` writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from detection_helpers import plain_iou, random_images
from visionsweep.cli import main
from visionsweep.distributed import decode_plain, encode_plain
from visionsweep.evaluation.classification import scalar_metrics
from visionsweep.evaluation.detection import evaluate_detections
from visionsweep.evaluation.detections import read_detections, read_ground_truth
from visionsweep.evaluation.voc import FALSE_POSITIVE, TRUE_POSITIVE, VocEvaluator, average_precision, match_images
from visionsweep.evaluation.voc_curves import MATRIX_THRESHOLDS, SCORE_THRESHOLDS, confusion_matrices

PRECISIONS, RECALLS = "precisions_per_score_threshold", "recalls_per_score_threshold"
IMAGE_LEVEL, MATRICES = "image_level_binary_classifier_metrics", "confusion_matrices_per_score_threshold"


def prediction(boxes, scores, labels=None):
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    return {"boxes": boxes, "scores": scores, "labels": [0] * len(boxes) if labels is None else labels}


def truth(boxes, labels=None, crowd=None):
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    return {"boxes": boxes, "labels": [0] * len(boxes) if labels is None else labels,
            "iscrowd": [0] * len(boxes) if crowd is None else crowd}


def voc(predictions, truths, classes=("a", "b")):
    evaluator = VocEvaluator(list(classes))
    evaluator.add(predictions, truths)
    return evaluator.compute()


def steps(*points):
    """{threshold: value} for a curve given as (highest threshold, value) steps, lowest first; above the
    last step the value is the final argument's. steps((0.4, 0.5), (0.9, 1.0), -1) -> 0.5 up to 0.4, ..."""
    *bounded, beyond = points
    curve = {}
    for t in SCORE_THRESHOLDS:
        curve[t] = next((value for bound, value in bounded if t <= bound), beyond)
    return pytest.approx(curve, abs=1e-6)


BOX, OTHER_BOX, FAR_BOX = [10, 10, 50, 50], [60, 60, 90, 90], [200, 200, 240, 240]


# --- 5.5 precision and recall per score threshold ------------------------------------------------------


def test_thresholds_are_the_hundred_exact_keys():
    metrics = voc([prediction([BOX], [0.75])], [truth([BOX])])
    assert list(metrics[PRECISIONS]) == [i / 100 for i in range(100)]
    assert 0.07 in metrics[PRECISIONS] and 0.29 in metrics[RECALLS] and 1.0 not in metrics[PRECISIONS]


def test_a_single_perfect_prediction_at_0_75():
    # spec 5.5: precision 1 and recall 1 for t <= 0.75, precision -1 and recall 0 above
    metrics = voc([prediction([BOX], [0.75])], [truth([BOX])])
    for curves in (metrics, metrics["per_label_metrics"]["a"]):
        assert curves[PRECISIONS] == steps((0.75, 1.0), -1.0)
        assert curves[RECALLS] == steps((0.75, 1.0), 0.0)


def test_a_curve_steps_down_the_ranked_predictions():
    # m = 3; visit order TP 0.9, FP 0.6, TP 0.3
    metrics = voc([prediction([BOX, FAR_BOX, OTHER_BOX], [0.9, 0.6, 0.3])],
                  [truth([BOX, OTHER_BOX, [300, 300, 320, 320]])])
    a = metrics["per_label_metrics"]["a"]
    assert a[PRECISIONS] == steps((0.3, 2 / 3), (0.6, 0.5), (0.9, 1.0), -1.0)
    assert a[RECALLS] == steps((0.3, 2 / 3), (0.6, 1 / 3), (0.9, 1 / 3), 0.0)


def test_a_prediction_on_a_crowd_object_counts_in_neither_but_makes_a_point():
    # crowd: OTHER at 0.8 (neither TP nor FP), then TP at 0.5 on the one non-crowd object
    metrics = voc([prediction([[12, 12, 30, 30], OTHER_BOX], [0.8, 0.5])], [truth([BOX, OTHER_BOX], crowd=[1, 0])])
    a = metrics["per_label_metrics"]["a"]
    assert a[PRECISIONS] == steps((0.5, 1.0), (0.8, 0.0), -1.0)  # 0 / (0 + 0 + 1e-9) after the crowd hit
    assert a[RECALLS] == steps((0.5, 1.0), 0.0)


def test_the_undefined_cases_of_a_class_follow_the_table():
    # spec 5.4: m=0, n=0 -> all -1 / all -1; m=0, n>0 -> all 0.0 / all -1; m>0, n=0 -> all -1 / all 0.0
    metrics = voc([prediction([FAR_BOX], [0.9], labels=[1])], [truth([BOX])], classes=("a", "b", "c"))
    per_label = metrics["per_label_metrics"]
    cases = {"c": (-1.0, -1.0), "b": (0.0, -1.0), "a": (-1.0, 0.0)}
    for name, (precision, recall) in cases.items():
        assert per_label[name][PRECISIONS] == dict.fromkeys(SCORE_THRESHOLDS, precision)
        assert per_label[name][RECALLS] == dict.fromkeys(SCORE_THRESHOLDS, recall)
    # pooled: one object, one false positive at 0.9
    assert metrics[PRECISIONS] == steps((0.9, 0.0), -1.0) and metrics[RECALLS] == dict.fromkeys(SCORE_THRESHOLDS, 0.0)
    nothing = voc([prediction([], [])], [truth([])])
    assert nothing[PRECISIONS] == dict.fromkeys(SCORE_THRESHOLDS, -1.0)
    assert nothing[RECALLS] == dict.fromkeys(SCORE_THRESHOLDS, -1.0)


def test_the_pooled_curve_is_not_the_mean_of_the_class_curves():
    # a: 2 objects, TP 0.9 and TP 0.8; b: 3 objects, FP 0.7. At t = 0.5 the class means are
    # P (1 + 0) / 2 = 0.5 and R (1 + 0) / 2 = 0.5; all predictions ranked together give P 2/3 and R 2/5.
    boxes_b = [[100, 100, 120, 120], [130, 130, 150, 150], [160, 160, 180, 180]]
    metrics = voc([prediction([BOX, OTHER_BOX, FAR_BOX], [0.9, 0.8, 0.7], labels=[0, 0, 1])],
                  [truth([BOX, OTHER_BOX, *boxes_b], labels=[0, 0, 1, 1, 1])])
    per_label = metrics["per_label_metrics"]
    means = [np.mean([per_label[c][key][0.5] for c in "ab"]) for key in (PRECISIONS, RECALLS)]
    assert means == pytest.approx([0.5, 0.5])
    assert metrics[PRECISIONS] == steps((0.7, 2 / 3), (0.9, 1.0), -1.0)
    assert metrics[RECALLS] == steps((0.8, 2 / 5), (0.9, 1 / 5), 0.0)


def _mask(x0, y0, x1, y1):
    m = np.zeros((40, 40), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_segmentation_has_mask_curves_and_no_image_level_metrics_or_matrices():
    # thing: TP mask 0.8 and an FP mask 0.4 (same box as the object, disjoint mask); other: one object, missed
    box = [[0, 0, 40, 40]] * 2
    evaluator = VocEvaluator(["thing", "other"], iou_type="segm")
    evaluator.add([{"boxes": box, "labels": [0, 0], "scores": [0.8, 0.4],
                    "masks": np.stack([_mask(0, 0, 20, 20), _mask(20, 20, 40, 40)])}],
                  [{"boxes": box, "labels": [0, 1], "iscrowd": [0, 0],
                    "masks": np.stack([_mask(0, 0, 20, 20), _mask(0, 20, 20, 40)])}])
    metrics = evaluator.compute()
    thing, other = metrics["per_label_metrics"]["thing"], metrics["per_label_metrics"]["other"]
    assert thing[PRECISIONS] == steps((0.4, 0.5), (0.8, 1.0), -1.0)
    assert thing[RECALLS] == steps((0.8, 1.0), 0.0)
    assert other[PRECISIONS] == dict.fromkeys(SCORE_THRESHOLDS, -1.0)
    assert other[RECALLS] == dict.fromkeys(SCORE_THRESHOLDS, 0.0)
    assert metrics[PRECISIONS] == steps((0.4, 0.5), (0.8, 1.0), -1.0)
    assert metrics[RECALLS] == steps((0.8, 0.5), 0.0)
    assert IMAGE_LEVEL not in metrics and MATRICES not in metrics
    on_boxes = voc([{"boxes": box, "labels": [0, 0], "scores": [0.8, 0.4]}], [truth(box, labels=[0, 1])])
    assert IMAGE_LEVEL in on_boxes and MATRICES in on_boxes


# --- 5.7 image-level binary classifier metrics ---------------------------------------------------------


def image_level(predictions, truths, classes=("a", "b", "c")):
    metrics = voc(predictions, truths, classes)[IMAGE_LEVEL]
    assert set(metrics) == {"precision", "recall", "average_precision"}
    return [metrics[key] for key in ("average_precision", "precision", "recall")]


def test_image_level_two_images():
    # GT 2 boxes / 1 box; image 1 TP at 0.25, image 2 FP at 0.75 -> AP 0.25, P 0.5, R 0.5
    found = image_level([prediction([BOX], [0.25]), prediction([FAR_BOX], [0.75])],
                        [truth([BOX, OTHER_BOX]), truth([BOX])])
    assert found == pytest.approx([0.25, 0.5, 0.5])


def test_image_level_four_images():
    # TP 0.5 on image 1, FP 0.5 on a GT-less image, two images with GT but no predictions -> AP 1/6, P 0.5, R 1/3
    found = image_level([prediction([BOX], [0.5]), prediction([BOX], [0.5]), prediction([], []), prediction([], [])],
                        [truth([BOX]), truth([]), truth([BOX]), truth([BOX])])
    assert found == pytest.approx([1 / 6, 0.5, 1 / 3])


def test_image_level_hundred_images():
    # 90 empty, 8 FP at 0.66 on GT-less images, 1 GT without prediction, 1 TP at 0.33 -> AP 0.5/9, P 1/9, R 0.5
    predictions = [prediction([], [])] * 90 + [prediction([BOX], [0.66])] * 8 + [prediction([], []),
                                                                                   prediction([BOX], [0.33])]
    truths = [truth([])] * 98 + [truth([BOX]), truth([BOX])]
    assert image_level(predictions, truths) == pytest.approx([0.5 / 9, 1 / 9, 0.5])


def test_image_level_one_object_two_predictions_one_matching():
    for scores in ([0.9, 0.4], [0.4, 0.9]):  # the matching one first, then last
        assert image_level([prediction([BOX, FAR_BOX], scores)], [truth([BOX])]) == pytest.approx([1, 1, 1])


def test_image_level_class_mismatch_only():
    assert image_level([prediction([BOX], [0.9], labels=[1])], [truth([BOX])]) == [0.0, 0.0, 0.0]


def test_image_level_undefined_cases():
    no_objects = voc([prediction([BOX], [0.9])], [truth([])])[IMAGE_LEVEL]
    assert no_objects == {"precision": 0.0, "recall": -1.0, "average_precision": -1.0}
    no_predictions = voc([prediction([], [])], [truth([BOX])])[IMAGE_LEVEL]
    assert no_predictions == {"precision": -1.0, "recall": 0.0, "average_precision": 0.0}


def _images(rng, count):
    """Small images, more class swaps than the matching tests, scores 0.1 ... 1.0 (ties on the matrix thresholds)."""
    return random_images(rng, count, max_objects=5, max_predictions=8, same_class=0.7, score_levels=10)


def _plain_image_walk(predictions, truths):
    """Spec 5.7 as written: all predictions ranked (later first on ties), a TP set and an FP set of images."""
    outcomes = match_images([read_detections(p) for p in predictions], [read_ground_truth(t) for t in truths], 0.5)
    rows = []  # (score, number in input order, image, outcome)
    for image, (p, found) in enumerate(zip(predictions, outcomes)):
        rows += [(score, len(rows) + k, image, outcome) for k, (score, outcome) in enumerate(zip(p["scores"], found))]
    ranked = sorted(rows, key=lambda r: (-r[0], -r[1]))
    m = sum(1 for t in truths if any(not crowd for crowd in t["iscrowd"]))
    tp, fp, precision, recall = set(), set(), [], []
    for _, _, image, outcome in ranked:
        if outcome == TRUE_POSITIVE:
            tp.add(image)
            fp.discard(image)
        elif outcome == FALSE_POSITIVE and image not in tp:
            fp.add(image)
        precision.append(len(tp) / (len(tp) + len(fp) + 1e-9))
        recall.append(len(tp) / m)
    return [average_precision(np.array(recall), np.array(precision)), precision[-1], recall[-1]]


def test_image_level_metrics_equal_the_plain_walk():
    rng = np.random.default_rng(5)
    for count in (3, 20, 150):
        predictions, truths = _images(rng, count)
        assert image_level(predictions, truths) == pytest.approx(_plain_image_walk(predictions, truths), abs=1e-12)


# --- 5.8 confusion matrices ----------------------------------------------------------------------------


def matrices(prediction_, truth_):
    return voc([prediction_], [truth_], classes=("a", "b", "c"))[MATRICES]


def test_confusion_one_object_matched_by_its_class():
    found = matrices(prediction([BOX], [0.75], labels=[1]), truth([BOX], labels=[1]))
    assert list(found) == list(MATRIX_THRESHOLDS) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    for t in MATRIX_THRESHOLDS:
        matched = [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
        missed = [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
        assert found[t] == (matched if t <= 0.7 else missed)


def test_confusion_one_object_matched_by_another_class():
    found = matrices(prediction([BOX], [0.75], labels=[2]), truth([BOX], labels=[1]))
    assert found[0.7] == [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert found[0.8] == [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]


def test_confusion_no_overlap():
    found = matrices(prediction([FAR_BOX], [0.75], labels=[1]), truth([BOX], labels=[1]))
    assert found == {-1.0: [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]}


def test_confusion_seven_objects():
    boxes = [[20 * i, 0, 20 * i + 10, 10] for i in range(7)]
    found = matrices(prediction(boxes, [0.5] * 7, labels=[0, 1, 1, 1, 2, 1, 1]),
                     truth(boxes, labels=[0, 1, 1, 1, 0, 2, 2]))
    for t in MATRIX_THRESHOLDS:
        expected = [[1, 0, 1, 0], [0, 3, 0, 0], [0, 2, 0, 0]] if t <= 0.5 else [[0, 0, 0, 2], [0, 0, 0, 3],
                                                                                  [0, 0, 0, 2]]
        assert found[t] == expected


def test_confusion_unit_function():
    found = confusion_matrices([2, 2], np.array([1, 0, 1, 0]), np.array([1, 1, 0, 0]),
                               np.array([0.7999, 0.25, 0.31, 0.867345]))
    expected = {0.0: [[1, 1, 0], [1, 1, 0]], 0.1: [[1, 1, 0], [1, 1, 0]], 0.2: [[1, 1, 0], [1, 1, 0]],
                0.3: [[1, 0, 1], [1, 1, 0]], 0.4: [[1, 0, 1], [0, 1, 1]], 0.5: [[1, 0, 1], [0, 1, 1]],
                0.6: [[1, 0, 1], [0, 1, 1]], 0.7: [[1, 0, 1], [0, 1, 1]], 0.8: [[1, 0, 1], [0, 0, 2]],
                0.9: [[0, 0, 2], [0, 0, 2]]}
    assert found == expected
    assert confusion_matrices([], np.zeros(0), np.zeros(0), np.zeros(0)) == {-1.0: []}


def test_confusion_ignores_crowd_matches_and_does_not_fall_back():
    # a crowd object takes the prediction inside it: nothing recorded, and crowd objects are not counted
    assert matrices(prediction([[12, 12, 30, 30]], [0.9]), truth([BOX], crowd=[1])) == {
        -1.0: [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]}
    # spec 5.3's case: the second prediction's best object (A) is taken, so B stays missed
    found = matrices(prediction([[100, 100, 200, 200], [135, 100, 210, 200]], [0.75, 0.75], labels=[0, 1]),
                     truth([[100, 100, 200, 200], [150, 100, 250, 200]], labels=[0, 1]))
    assert found[0.0] == [[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]  # the later prediction (class b) took A


def _plain_matches(predictions, truths, threshold=0.5):
    """Spec 5.8's matching as a loop: every prediction of an image against every object, classes ignored."""
    matches = []
    for p, t in zip(predictions, truths):
        taken = set()
        for i in sorted(range(len(p["scores"])), key=lambda i: (-p["scores"][i], -i)):
            ious = [plain_iou(p["boxes"][i], g, crowd) for g, crowd in zip(t["boxes"], t["iscrowd"])]
            if not ious or max(ious) < threshold:
                continue
            best = int(np.argmax(ious))
            if not t["iscrowd"][best] and best not in taken:
                taken.add(best)
                matches.append((t["labels"][best], p["labels"][i], p["scores"][i]))
    return matches


def test_confusion_matrices_equal_a_plain_loop():
    rng = np.random.default_rng(6)
    predictions, truths = _images(rng, 200)
    found = voc(predictions, truths, classes=("a", "b", "c"))[MATRICES]
    objects = np.bincount([label for t in truths for label, crowd in zip(t["labels"], t["iscrowd"]) if not crowd],
                          minlength=3)
    matches = _plain_matches(predictions, truths)
    for t in MATRIX_THRESHOLDS:
        expected = np.zeros((3, 4), int)
        expected[:, 3] = objects
        for g, p, score in matches:
            if score >= t:
                expected[g, p] += 1
                expected[g, 3] -= 1
        assert found[t] == expected.tolist()
    assert found[0.0] != found[0.9] and any(g != p for g, p, _ in matches)  # matches across classes happen


# --- merging, and what is written ----------------------------------------------------------------------


def test_merged_states_give_the_curves_and_matrices_of_one_pass():
    rng = np.random.default_rng(7)
    predictions, truths = _images(rng, 90)
    whole = VocEvaluator(["a", "b", "c"])
    whole.add(predictions, truths)
    first, second = VocEvaluator(["a", "b", "c"]), VocEvaluator(["a", "b", "c"])
    first.add(predictions[:40], truths[:40])
    second.add(predictions[40:], truths[40:])
    before = first.compute()
    first.merge_state(decode_plain(encode_plain(second.state())))  # as gathered from another process
    merged, expected = first.compute(), whole.compute()
    for key in (PRECISIONS, RECALLS, IMAGE_LEVEL, MATRICES):
        assert merged[key] == expected[key]
        assert before[key] != expected[key]  # the second share's images do count
    assert merged["per_label_metrics"] == expected["per_label_metrics"]


def test_scalar_metrics_of_the_epoch_line_are_still_the_three_numbers():
    metrics = evaluate_detections([prediction([BOX], [0.9])], [truth([BOX])], ["a"])
    assert {PRECISIONS, RECALLS, IMAGE_LEVEL, MATRICES} <= set(metrics)
    assert scalar_metrics(metrics) == pytest.approx({"mean_average_precision": 1, "precision": 1, "recall": 1})


def test_evaluate_writes_the_new_metrics(tmp_path):
    # a.png: a can found as can at 0.9; b.png: a carton found as can at 0.4 (a false positive of class can)
    box = {"topX": 0.1, "topY": 0.1, "bottomX": 0.6, "bottomY": 0.6}
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 40)).save(tmp_path / name)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"image_url": n, "label": [{"label": label, **box}]}) + "\n"
                            for n, label in (("a.png", "can"), ("b.png", "carton"))))
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"filename": n, "boxes": [{"box": box, "label": "can", "score": s}]})
                                   + "\n" for n, s in (("a.png", 0.9), ("b.png", 0.4))))
    output = tmp_path / "evaluation.json"
    assert main(["evaluate", "--task", "image_object_detection", "--predictions", str(predictions),
                 "--data", str(data), "--output", str(output)]) == 0
    metrics = json.loads(output.read_text())["metrics"]
    assert len(metrics[PRECISIONS]) == len(metrics[RECALLS]) == 100
    assert (metrics[PRECISIONS]["0.4"], metrics[RECALLS]["0.4"]) == pytest.approx((0.5, 0.5))
    assert (metrics[PRECISIONS]["0.5"], metrics[RECALLS]["0.5"]) == pytest.approx((1.0, 0.5))
    assert (metrics[PRECISIONS]["0.91"], metrics[RECALLS]["0.91"]) == (-1.0, 0.0)
    assert metrics["per_label_metrics"]["can"][PRECISIONS]["0.4"] == pytest.approx(0.5)
    assert metrics["per_label_metrics"]["carton"][RECALLS]["0.0"] == 0.0
    # image level: a is a TP image, b an FP image; ranked TP then FP -> AP 0.5, P 0.5, R 0.5
    assert metrics[IMAGE_LEVEL] == pytest.approx({"precision": 0.5, "recall": 0.5, "average_precision": 0.5})
    # rows and columns: can, carton (then missed); the carton was matched by a can prediction at 0.4
    assert list(metrics[MATRICES]) == [str(t) for t in MATRIX_THRESHOLDS]
    assert metrics[MATRICES]["0.4"] == [[1, 0, 0], [1, 0, 0]]
    assert metrics[MATRICES]["0.5"] == metrics[MATRICES]["0.9"] == [[1, 0, 0], [0, 0, 1]]
