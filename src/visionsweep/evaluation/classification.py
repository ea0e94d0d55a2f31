"""Classification metrics with the scikit-learn definitions of the reference.

Multi-class: predicted class = argmax of the probabilities. Multi-label: a class is predicted when
its probability is strictly greater than 0.5. AUC and average precision are one-vs-rest per class;
a class without both positive and negative validation images has no AUC (NaN) and is left out of
the macro and weighted averages instead of failing the whole metric. Multi-label with a single class
(each image has the class or not) is scored by the same definitions as with several.
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

MULTILABEL_THRESHOLD = 0.5
_AVERAGES = ("macro", "micro", "weighted")


def classification_metrics(
    probabilities: np.ndarray, targets: np.ndarray, class_names: Sequence[str], multilabel: bool
) -> dict[str, Any]:
    """All metrics of one validation pass.

    ``probabilities`` is (N, C); ``targets`` is (N,) class indices (multi-class) or (N, C) 0/1
    (multi-label). Scalars are floats (NaN when undefined); ``*_classwise`` are {class: value};
    ``confusion_matrix`` (multi-class only) and ``classification_report`` are nested structures.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = len(class_names)
    if multilabel:
        truth = np.asarray(targets).astype(int)
        predicted = (probabilities > MULTILABEL_THRESHOLD).astype(int)
    else:
        truth = np.eye(num_classes, dtype=int)[np.asarray(targets, dtype=int)]
        predicted = np.eye(num_classes, dtype=int)[probabilities.argmax(axis=1)]
    support = truth.sum(axis=0)
    # sklearn reads a one-column 0/1 matrix as binary targets (scoring label 0 as a class too) and then
    # refuses samplewise averages; with a zero column that ``labels`` leaves out it reads the matrix as
    # multi-label indicators, and every score is that of the one real column.
    labels = list(range(num_classes))
    indicator_truth, indicator_predicted = truth, predicted
    if num_classes == 1:
        indicator_truth, indicator_predicted = (np.hstack([m, np.zeros_like(m)]) for m in (truth, predicted))

    result: dict[str, Any] = {"accuracy": float(skm.accuracy_score(truth, predicted))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero_division and absent classes are handled explicitly
        for name, function in (("precision_score", skm.precision_score), ("recall_score", skm.recall_score),
                               ("f1_score", skm.f1_score)):
            for average in _AVERAGES:
                result[f"{name}_{average}"] = float(function(indicator_truth, indicator_predicted, labels=labels,
                                                             average=average, zero_division=0))
            result[f"{name}_classwise"] = _per_class(function(indicator_truth, indicator_predicted, labels=labels,
                                                              average=None, zero_division=0), class_names)
        for name, function in (("AUC", skm.roc_auc_score), ("average_precision_score", skm.average_precision_score)):
            per_class = np.array([_ranking_score(function, truth[:, c], probabilities[:, c])
                                  for c in range(num_classes)])
            result[f"{name}_macro"] = _nanmean(per_class)
            result[f"{name}_weighted"] = _nanmean(per_class, weights=support)
            result[f"{name}_micro"] = _ranking_score(function, truth.ravel(), probabilities.ravel())
            result[f"{name}_classwise"] = _per_class(per_class, class_names)
        if num_classes == 2 and not multilabel:  # the positive class is the second in sorted order
            result["precision_score_binary"] = float(skm.precision_score(truth[:, 1], predicted[:, 1], zero_division=0))
            result["recall_score_binary"] = float(skm.recall_score(truth[:, 1], predicted[:, 1], zero_division=0))
            result["f1_score_binary"] = float(skm.f1_score(truth[:, 1], predicted[:, 1], zero_division=0))
            result["AUC_binary"] = _ranking_score(skm.roc_auc_score, truth[:, 1], probabilities[:, 1])
            result["average_precision_score_binary"] = _ranking_score(
                skm.average_precision_score, truth[:, 1], probabilities[:, 1])
        result["log_loss"] = _log_loss(probabilities, truth, multilabel)
        if multilabel:
            result["iou"] = float(skm.jaccard_score(indicator_truth, indicator_predicted, labels=labels,
                                                    average="samples", zero_division=0))
            for average in _AVERAGES:
                result[f"iou_{average}"] = float(skm.jaccard_score(indicator_truth, indicator_predicted, labels=labels,
                                                                   average=average, zero_division=0))
            result["iou_classwise"] = _per_class(skm.jaccard_score(
                indicator_truth, indicator_predicted, labels=labels, average=None, zero_division=0), class_names)
        else:
            matrix = skm.confusion_matrix(truth.argmax(1), predicted.argmax(1), labels=range(num_classes))
            result["confusion_matrix"] = {"class_labels": list(class_names), "matrix": matrix.tolist()}
    result["classification_report"] = _report(result, class_names, support, multilabel)
    return result


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The single-number metrics of a metrics dict (what goes into metrics.jsonl each epoch)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _ranking_score(function, truth: np.ndarray, scores: np.ndarray) -> float:
    if truth.min() == truth.max():  # only one kind of label: the score is undefined
        return float("nan")
    return float(function(truth, scores))


def _nanmean(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    valid = ~np.isnan(values)
    if not valid.any():
        return float("nan")
    if weights is None:
        return float(values[valid].mean())
    w = np.asarray(weights, dtype=np.float64)[valid]
    return float((values[valid] * w).sum() / w.sum()) if w.sum() > 0 else float("nan")


def _log_loss(probabilities: np.ndarray, truth: np.ndarray, multilabel: bool) -> float:
    eps = 1e-15
    p = np.clip(probabilities, eps, 1 - eps)
    if multilabel:  # mean binary cross-entropy over all image x class entries
        return float(-(truth * np.log(p) + (1 - truth) * np.log(1 - p)).mean())
    return float(-np.log(p[truth.astype(bool)]).mean())


def _per_class(values: Sequence[float], class_names: Sequence[str]) -> dict[str, float]:
    return {name: float(v) for name, v in zip(class_names, values)}


def _report(result: dict[str, Any], class_names: Sequence[str], support: np.ndarray,
            multilabel: bool) -> dict[str, dict[str, float]]:
    """Per class and per average: precision, recall, f1-score, support, auc, average_precision (+ iou)."""
    columns = {"precision": "precision_score", "recall": "recall_score", "f1-score": "f1_score",
               "auc": "AUC", "average_precision": "average_precision_score"}
    if multilabel:
        columns["iou"] = "iou"
    report = {}
    for index, name in enumerate(class_names):
        row = {col: result[f"{key}_classwise"][name] for col, key in columns.items()}
        report[name] = {**row, "support": int(support[index])}
    for average in _AVERAGES:
        row = {col: result[f"{key}_{average}"] for col, key in columns.items()}
        report[f"{average} avg"] = {**row, "support": int(support.sum())}
    return report
