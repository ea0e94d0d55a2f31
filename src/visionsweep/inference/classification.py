"""Classification prediction in the reference scoring format, and scoring against labels.

A prediction line is ``{"filename": ..., "probs": [p_0, ..., p_C-1], "labels": [all class names]}``:
``probs`` are softmax (multi-class) or sigmoid (multi-label) values aligned with ``labels``, which
is the model's full class list in index order (not the predicted classes).
"""
from __future__ import annotations

import json
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
from visionsweep.inference.model_folder import TrainedModel
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
            report.skip(records[index].location, reasons.UNREADABLE_IMAGE, error, records[index].image_url)
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
    scorable = known_label_records(records, trained.labels, report)
    if not scorable:
        raise DataError(f"no labelled image uses the model's classes ({', '.join(trained.labels)})")
    _, probabilities, targets = predict_probabilities(trained, scorable, report)
    return classification_metrics(probabilities, targets, trained.labels, trained.task.is_multilabel)


def known_label_records(records: Sequence[ImageRecord], labels: Sequence[str],
                        report: DataReport) -> list[ImageRecord]:
    """Records whose classes the model knows; the others are reported, since they cannot be scored."""
    known = set(labels)
    kept = []
    for record in records:
        unknown = sorted(set(record.labels) - known)
        if unknown:
            report.skip(record.location, reasons.BAD_LABEL,
                        f"class {', '.join(unknown)} is not one of the model's classes ({', '.join(labels)})",
                        record.image_url)
        else:
            kept.append(record)
    return kept


def score_prediction_file(predictions: str | Path, records: Sequence[ImageRecord], task: Task,
                          report: DataReport) -> dict[str, Any]:
    """Metrics of a predictions file (scoring format) against labelled records, with no model.

    Predictions are matched to records by ``filename`` == ``image_url`` as listed, or by the same
    resolved path. Unmatched records and predictions are reported.
    """
    by_name = _read_predictions(Path(predictions), report)
    if not by_name:
        raise DataError(f"{predictions} holds no usable prediction line")
    labels = next(iter(by_name.values()))[1]
    rows, matched_records = [], []
    for record in records:
        entry = by_name.pop(record.image_url, None) or by_name.pop(str(record.image_path), None)
        if entry is None:
            report.skip(record.location, "no prediction", "no line of the predictions file has this filename",
                        record.image_url)
            continue
        probs, entry_labels = entry
        if entry_labels != labels:
            raise DataError(f"{predictions}: the labels list differs between lines ({entry_labels} vs {labels})")
        rows.append(probs)
        matched_records.append(record)
    for name in by_name:
        report.skip(str(predictions), "no label", "the predictions file names an image the data does not have", name)
    scorable = known_label_records(matched_records, labels, report)
    keep = {id(r) for r in scorable}
    probabilities = np.array([row for row, r in zip(rows, matched_records) if id(r) in keep], dtype=np.float64)
    if len(scorable) == 0:
        raise DataError(f"no prediction of {predictions} matches a labelled image.\n{report.summary()}")
    dataset = ClassificationDataset(scorable, labels, transform=None, multilabel=task.is_multilabel)
    targets = np.stack([dataset.target(i).numpy() for i in range(len(scorable))])
    return classification_metrics(probabilities, targets, labels, task.is_multilabel)


def _read_predictions(path: Path, report: DataReport) -> dict[str, tuple[list[float], list[str]]]:
    if not path.is_file():
        raise DataError(f"predictions file {path} does not exist")
    entries = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            location = f"{path.name}:{number}"
            try:
                item = json.loads(line)
                name, probs, labels = item["filename"], item["probs"], item["labels"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                report.skip(location, reasons.MALFORMED_LINE, f"needs filename, probs and labels ({error})")
                continue
            if len(probs) != len(labels):
                report.skip(location, reasons.MALFORMED_LINE, f"{len(probs)} probs for {len(labels)} labels", name)
                continue
            entries[name] = ([float(p) for p in probs], [str(label) for label in labels])
    return entries
