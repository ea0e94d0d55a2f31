"""Classification prediction in the reference scoring format, and scoring against labels.

A prediction line is ``{"filename": ..., "probs": [p_0, ..., p_C-1], "labels": [all class names]}``:
``probs`` are softmax (multi-class) or sigmoid (multi-label) values aligned with ``labels``, which
is the model's full class list in index order (not the predicted classes).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from visionsweep.data import report as reasons
from visionsweep.data.classification import ClassificationDataset, collate_classification, validation_transform
from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError
from visionsweep.evaluation.classification import classification_metrics
from visionsweep.inference.inputs import known_class_records
from visionsweep.inference.model_folder import TrainedModel
from visionsweep.inference.prediction_files import match_prediction_lines
from visionsweep.tasks import Task
from visionsweep.training.classification import ClassificationOps
from visionsweep.training.environment import make_loader


def predict_probabilities(trained: TrainedModel, records: Sequence[ImageRecord],
                          report: DataReport) -> tuple[list[ImageRecord], np.ndarray, np.ndarray]:
    """Probabilities (N, C) of every readable image, the records they belong to, and their targets.

    Images that fail to decode are left out and added to ``report``; with ``ignore_data_errors``
    false in the model's settings, the first one is an error.
    """
    settings = trained.settings
    dataset = ClassificationDataset(records, trained.labels,
                                    validation_transform(settings.valid_resize_size, settings.valid_crop_size),
                                    trained.task.is_multilabel)
    loader = make_loader(dataset, settings.validation_batch_size, shuffle=False, num_workers=settings.num_workers,
                         collate_fn=collate_classification, device=trained.device, seed=None)
    failed: set[int] = set()

    def on_failures(failures: list[tuple[int, str]], stage: str) -> None:
        for index, error in failures:
            failed.add(index)
            report.skip_kept(records[index].location, reasons.UNREADABLE_IMAGE, error,
                             records[index].image_url)
            if not settings.ignore_data_errors:
                raise DataError(f"image {records[index].image_path} could not be read: {error}")

    ops = ClassificationOps(classes=trained.labels, multilabel=trained.task.is_multilabel, device=trained.device,
                            weights=None, primary_metric=settings.primary_metric, track_training_metrics=False,
                            on_failures=on_failures)
    with torch.no_grad():
        probabilities, targets = ops.predict(trained.model, loader, stage="prediction")
    kept = [r for i, r in enumerate(records) if i not in failed]
    return kept, probabilities, targets


def predict_lines(trained: TrainedModel, records: Sequence[ImageRecord], report: DataReport) -> Iterator[dict[str, Any]]:
    """One scoring-format line per readable image."""
    kept, probabilities, _ = predict_probabilities(trained, records, report)
    for record, probs in zip(kept, probabilities):
        yield {"filename": record.image_url, "probs": [float(p) for p in probs], "labels": list(trained.labels)}


def evaluate_model(trained: TrainedModel, records: Sequence[ImageRecord], report: DataReport) -> dict[str, Any]:
    """Metrics of the model on labelled records (records with classes it does not know are reported)."""
    scorable = known_class_records(records, trained.labels, report)
    if not scorable:
        raise DataError(f"no labelled image uses the model's classes ({', '.join(trained.labels)})")
    _, probabilities, targets = predict_probabilities(trained, scorable, report)
    if len(probabilities) == 0:
        raise DataError(f"no labelled image could be read.\n{report.summary()}")
    return classification_metrics(probabilities, targets, trained.labels, trained.task.is_multilabel)


def score_prediction_file(predictions: str | Path, records: Sequence[ImageRecord], task: Task,
                          report: DataReport) -> dict[str, Any]:
    """Metrics of a predictions file (the scoring format) against labelled records, with no model."""
    pairs = match_prediction_lines(predictions, records, report)
    labels = pairs[0][1].get("labels")
    if not isinstance(labels, list) or not labels:
        raise DataError(f"{predictions}: the first matched line has no 'labels' list")
    rows, scored = [], []
    for record, line in pairs:
        probs = line.get("probs")
        if line.get("labels") != labels:
            raise DataError(f"{predictions}: the labels list of {record.image_url} differs from the first line's")
        if not isinstance(probs, list) or len(probs) != len(labels):
            report.skip_kept(record.location, reasons.MALFORMED_LINE,
                             f"'probs' must hold {len(labels)} numbers", record.image_url)
            continue
        rows.append(probs)
        scored.append(record)
    known = {id(r) for r in known_class_records(scored, labels, report)}
    probabilities = np.array([row for row, r in zip(rows, scored) if id(r) in known], dtype=np.float64)
    kept = [r for r in scored if id(r) in known]
    if not kept:
        raise DataError(f"no prediction of {predictions} can be scored.\n{report.summary()}")
    dataset = ClassificationDataset(kept, labels, transform=None, multilabel=task.is_multilabel)
    targets = np.stack([dataset.target(i).numpy() for i in range(len(kept))])
    return classification_metrics(probabilities, targets, labels, task.is_multilabel)
