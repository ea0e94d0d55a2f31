"""Classification prediction in the reference scoring format, and scoring against labels.

A prediction line is ``{"filename": ..., "probs": [p_0, ..., p_C-1], "labels": [all class names]}``:
``probs`` are softmax (multi-class) or sigmoid (multi-label) values aligned with ``labels``, which
is the model's full class list in index order (not the predicted classes). With ``model_explainability``
a line also carries ``visualizations`` and ``attributions`` (``inference.explanations``).
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError
from visionsweep.evaluation.classification import classification_metrics
from visionsweep.families.classification import ImageScores
from visionsweep.families.classification.dataset import ClassificationDataset
from visionsweep.inference.explanations import Explainer, check_explainable
from visionsweep.inference.inputs import known_class_records
from visionsweep.inference.model_folder import TrainedModel
from visionsweep.inference.prediction_files import (
    MatchedLine,
    keep_scored,
    match_prediction_lines,
    reject_line,
    scoring_summary,
)
from visionsweep.inference.predictor import Predictor
from visionsweep.tasks import Task


def predict_probabilities(trained: TrainedModel, records: Sequence[ImageRecord],
                          report: DataReport) -> tuple[list[ImageRecord], np.ndarray, np.ndarray]:
    """Probabilities (N, C) of every readable image, the records they belong to, and their targets.

    Images that fail to decode are left out and added to ``report``; with ``ignore_data_errors``
    false in the model's settings, the first one is an error.
    """
    scores: list[ImageScores] = list(Predictor(trained, records, report))
    if not scores:
        empty = np.zeros((0, len(trained.labels)), dtype=np.float32)
        return [], empty, (empty.copy() if trained.task.is_multilabel else np.zeros(0, dtype=np.int64))
    return ([records[s.index] for s in scores], np.stack([s.probabilities for s in scores]),
            np.stack([s.target for s in scores]))


def predict_lines(trained: TrainedModel, records: Sequence[ImageRecord], report: DataReport) -> Iterator[dict[str, Any]]:
    """One scoring-format line per readable image; with ``model_explainability`` each line also has the
    reference's ``visualizations`` and ``attributions`` (``inference.explanations``)."""
    explainer = None
    if trained.settings.model_explainability:
        check_explainable(trained.settings, onnx=trained.model is None)  # before any image is read
        assert trained.model is not None
        explainer = Explainer(trained.model, trained.settings, trained.labels, trained.device)
    kept, probabilities, _ = predict_probabilities(trained, records, report)
    for record, probs in zip(kept, probabilities):
        line = {"filename": record.image_url, "probs": [float(p) for p in probs], "labels": list(trained.labels)}
        if explainer is not None:
            line.update(explainer.fields(record, probs))
        yield line


def evaluate_model(trained: TrainedModel, records: Sequence[ImageRecord], report: DataReport) -> dict[str, Any]:
    """Metrics of the model on labelled records (records with classes it does not know are reported)."""
    scorable = known_class_records(records, trained.labels, report)
    if not scorable:
        raise DataError(f"no labelled image uses the model's classes ({', '.join(trained.labels)})")
    _, probabilities, targets = predict_probabilities(trained, scorable, report)
    if len(probabilities) == 0:
        raise DataError(f"no labelled image could be read.\n{report.summary()}")
    return classification_metrics(probabilities, targets, trained.labels, trained.task.is_multilabel)


def score_prediction_file(predictions: str | Path, records: Sequence[ImageRecord], task: Task, report: DataReport,
                          predictions_report: DataReport) -> dict[str, Any]:
    """Metrics of a predictions file (the scoring format) against labelled records, with no model.

    ``report`` is the labelled data's and ``predictions_report`` the file's; both add up
    (``prediction_files``). The class list is the ``labels`` list most lines give; a line with another,
    or whose ``probs`` are not one number per class, is malformed. A labelled image with a class not in
    that list is skipped (``bad label``), as a model would be scored unfairly on a class it cannot name.
    """
    matched = match_prediction_lines(predictions, records, report, predictions_report)
    labels = _common_labels(matched)
    if labels is None:
        raise DataError(f"{predictions}: no line that matches a labelled image has a 'labels' list of class "
                        "names (the model's full class list, in the order of 'probs')")
    usable = []
    for pair in matched:
        probs = pair.line.get("probs")
        if pair.line.get("labels") != labels:
            reject_line(pair, f"its 'labels' list differs from the one most lines give ({', '.join(labels)})",
                        report, predictions_report)
        elif not (isinstance(probs, list) and len(probs) == len(labels) and all(map(_is_finite_number, probs))):
            reject_line(pair, f"'probs' must hold {len(labels)} finite numbers, one per label",
                        report, predictions_report)
        else:
            usable.append(pair)
    known = known_class_records([pair.record for pair in usable], labels, report,
                                whose="the classes of the predictions' 'labels'")
    usable = keep_scored(usable, known, report, predictions_report)
    if not usable:
        raise DataError(f"no prediction of {predictions} can be scored.\n{scoring_summary(report, predictions_report)}")
    probabilities = np.array([pair.line["probs"] for pair in usable], dtype=np.float64)
    dataset = ClassificationDataset(known, labels, transform=None, multilabel=task.is_multilabel)
    targets = np.stack([dataset.target(i).numpy() for i in range(len(known))])
    return classification_metrics(probabilities, targets, labels, task.is_multilabel)


def _common_labels(matched: Sequence[MatchedLine]) -> list[str] | None:
    """The ``labels`` list most lines give (the first of equals), ignoring lists that are not class names."""
    counts = Counter(tuple(labels) for labels in (pair.line.get("labels") for pair in matched)
                     if isinstance(labels, list) and labels and all(isinstance(name, str) for name in labels))
    return list(counts.most_common(1)[0][0]) if counts else None


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
