"""Classification metrics against hand-computed values and scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from visionsweep.evaluation.classification import classification_metrics

CLASSES = ["a", "b", "c"]
PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]])
TARGETS = np.array([0, 1, 2, 1])  # the last image is a 'b' predicted as 'a'


def test_multiclass_by_hand():
    m = classification_metrics(PROBS, TARGETS, CLASSES, multilabel=False)
    assert m["accuracy"] == 0.75
    # precision a = 1/2, b = 1/1, c = 1/1; recall a = 1, b = 1/2, c = 1
    assert m["precision_score_classwise"] == {"a": 0.5, "b": 1.0, "c": 1.0}
    assert m["recall_score_classwise"] == {"a": 1.0, "b": 0.5, "c": 1.0}
    assert m["precision_score_macro"] == pytest.approx(2.5 / 3)
    assert m["precision_score_weighted"] == pytest.approx((0.5 * 1 + 1.0 * 2 + 1.0 * 1) / 4)
    assert m["f1_score_micro"] == 0.75
    assert m["confusion_matrix"] == {"class_labels": CLASSES, "matrix": [[1, 0, 0], [1, 1, 0], [0, 0, 1]]}
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.7, 0.8, 0.4, 0.3])))
    assert m["classification_report"]["b"]["support"] == 2
    assert m["classification_report"]["macro avg"]["precision"] == m["precision_score_macro"]
    assert "iou" not in m and "precision_score_binary" not in m


def test_multiclass_auc_and_average_precision_match_sklearn():
    m = classification_metrics(PROBS, TARGETS, CLASSES, multilabel=False)
    onehot = np.eye(3)[TARGETS]
    for average in ("macro", "micro", "weighted"):
        assert m[f"AUC_{average}"] == pytest.approx(skm.roc_auc_score(onehot, PROBS, average=average))
        assert m[f"average_precision_score_{average}"] == pytest.approx(
            skm.average_precision_score(onehot, PROBS, average=average))


def test_binary_metrics_use_the_second_class():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])
    targets = np.array([0, 1, 0, 1])
    m = classification_metrics(probs, targets, ["neg", "pos"], multilabel=False)
    assert m["precision_score_binary"] == 0.5 and m["recall_score_binary"] == 0.5
    assert m["AUC_binary"] == pytest.approx(skm.roc_auc_score(targets, probs[:, 1]))


def test_multilabel_by_hand():
    targets = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    probs = np.array([[0.9, 0.6, 0.7], [0.2, 0.8, 0.1], [0.1, 0.2, 0.5], [0.6, 0.4, 0.2]])
    # predictions (> 0.5, so 0.5 itself is negative): {a, b, c}, {b}, {}, {a}
    m = classification_metrics(probs, targets, CLASSES, multilabel=True)
    assert m["iou"] == pytest.approx((2 / 3 + 1 + 0 + 1 / 2) / 4)  # Jaccard per image, averaged
    assert m["accuracy"] == 0.25  # exact set matches: image 2 only
    # per class: a {1,4} vs {1,4}; b {2,4} vs {1,2}; c {1,3} vs {1}
    assert m["iou_classwise"] == pytest.approx({"a": 1.0, "b": 1 / 3, "c": 1 / 2})
    assert m["iou_macro"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert m["iou_micro"] == pytest.approx(skm.jaccard_score(targets, probs > 0.5, average="micro"))
    assert m["classification_report"]["a"]["iou"] == 1.0
    assert "confusion_matrix" not in m


def test_a_class_absent_from_validation_has_no_auc_and_does_not_break_the_averages():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    targets = np.array([0, 1, 0])  # class c never appears
    m = classification_metrics(probs, targets, CLASSES, multilabel=False)
    assert np.isnan(m["AUC_classwise"]["c"])
    assert m["AUC_macro"] == pytest.approx(np.mean([m["AUC_classwise"]["a"], m["AUC_classwise"]["b"]]))
    assert m["accuracy"] == 1.0
