"""Object-detection prediction in the reference scoring format, and scoring against labels.

A prediction line (spec 6.1)::

    {"filename": "images/1.jpg",
     "boxes": [{"box": {"topX": 0.12, "topY": 0.30, "bottomX": 0.45, "bottomY": 0.77}, "label": "can", "score": 0.93}]}

Coordinates are fractions of the image width and height (the model's frame, normalised by its own size,
which equals normalising the original image's pixels). Boxes come sorted by descending score, at most
``box_detections_per_img`` of them, each scoring above ``box_score_thresh``; both, and ``nms_iou_thresh``,
can be overridden at prediction time. Images that cannot be read get no line (they are reported).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from visionsweep.data import report as reasons
from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.data.tiling import Tiling
from visionsweep.errors import DataError
from visionsweep.evaluation.detection import evaluate_detections
from visionsweep.inference.model_folder import TrainedModel
from visionsweep.inference.prediction_files import match_prediction_lines
from visionsweep.models.detection import label_offset
from visionsweep.tasks import Task
from visionsweep.training.detection import DetectionDataset, DetectionOps, Target, collate_detection
from visionsweep.training.environment import make_loader
from visionsweep.training.tiling import TileGroupDataset, TiledDetectionOps, collate_tile_groups

BOX_KEYS = ("topX", "topY", "bottomX", "bottomY")


@dataclass(frozen=True)
class ImageDetections:
    """What the model found in one image: ``predictions`` boxes (K, 4) pixels of the model frame,
    ``labels`` (K,) dataset class indices, ``scores`` (K,); ``target`` the labelled objects in the same
    frame; sizes as (width, height)."""

    record: ImageRecord
    predictions: dict[str, torch.Tensor]
    target: Target
    frame_size: tuple[int, int]
    original_size: tuple[int, int]


def detect(trained: TrainedModel, records: Sequence[ImageRecord], report: DataReport) -> Iterator[ImageDetections]:
    """Run the detector over ``records`` in order. Images that fail to decode are skipped into ``report``;
    with ``ignore_data_errors`` false in the model's settings the first one is an error."""
    settings = trained.settings
    size = dict(min_size=settings.min_size, max_size=settings.max_size)
    tiling = Tiling.from_settings(settings)
    if tiling is None:
        dataset = DetectionDataset(records, trained.labels, augment=False, **size)
        collate, ops_type = collate_detection, DetectionOps
    else:  # each image with every tile; predictions come back merged, one per image (training/tiling.py)
        dataset = TileGroupDataset(records, trained.labels, tiling, every_tile=True, **size)
        collate, ops_type = collate_tile_groups, partial(TiledDetectionOps, tiling=tiling)
    loader = make_loader(dataset, settings.validation_batch_size, shuffle=False, num_workers=settings.num_workers,
                         collate_fn=collate, device=trained.device, seed=None)

    def on_failures(failures: list[tuple[int, str]], stage: str) -> None:
        for index, error in failures:
            report.skip(records[index].location, reasons.UNREADABLE_IMAGE, error, records[index].image_url)
            if not settings.ignore_data_errors:
                raise DataError(f"image {records[index].image_path} could not be read: {error}")

    ops = ops_type(classes=trained.labels, label_offset=label_offset(trained.model_name), device=trained.device,
                   metric_type="none", iou_threshold=settings.validation_iou_threshold, validation_loss=False,
                   track_training_metrics=False, on_failures=on_failures)
    trained.model.eval()
    with torch.no_grad():
        for batch, predictions in ops.predict(trained.model, loader, stage="prediction"):
            for position, index in enumerate(batch.indices.tolist()):
                yield ImageDetections(records[index], predictions[position], batch.targets[position],
                                      batch.image_sizes[position], batch.original_sizes[position])


def predict_lines(trained: TrainedModel, records: Sequence[ImageRecord],
                  report: DataReport) -> Iterator[dict[str, Any]]:
    """One scoring-format line per readable image, in input order."""
    for found in detect(trained, records, report):
        yield prediction_line(found.record.image_url, found.predictions, trained.labels, found.frame_size)


def prediction_line(filename: str, predictions: dict[str, torch.Tensor], labels: Sequence[str],
                    frame_size: tuple[int, int]) -> dict[str, Any]:
    """The scoring-format line of one image from pixel boxes in a (width, height) frame."""
    width, height = frame_size
    boxes = (predictions["boxes"].double() / torch.tensor([width, height, width, height], dtype=torch.float64))
    return {"filename": filename, "boxes": [
        {"box": dict(zip(BOX_KEYS, box)), "label": labels[label], "score": score}
        for box, label, score in zip(boxes.tolist(), predictions["labels"].tolist(), predictions["scores"].tolist())
    ]}


def evaluate_model(trained: TrainedModel, records: Sequence[ImageRecord], report: DataReport) -> dict[str, Any]:
    """Metrics of the detector on labelled records, with the model's ``validation_metric_type`` (VOC when
    it is ``none``) and ``validation_iou_threshold``. Images with a class the model does not know are
    reported and left out."""
    scorable = known_class_records(records, trained.labels, report)
    if not scorable:
        raise DataError(f"no labelled image uses only the model's classes ({', '.join(trained.labels)})")
    predictions, targets, frames, originals = [], [], [], []
    for found in detect(trained, scorable, report):
        predictions.append(found.predictions)
        targets.append(found.target)
        frames.append(found.frame_size)
        originals.append(found.original_size)
    if not predictions:
        raise DataError(f"no labelled image could be read.\n{report.summary()}")
    metric_type = trained.settings.validation_metric_type
    return evaluate_detections(predictions, targets, trained.labels,
                               metric_type="voc" if metric_type == "none" else metric_type,
                               iou_threshold=trained.settings.validation_iou_threshold,
                               image_sizes=frames, original_sizes=originals)


def known_class_records(records: Sequence[ImageRecord], labels: Sequence[str],
                        report: DataReport) -> list[ImageRecord]:
    """Records whose objects all have classes the model knows; the others are reported (an object the
    model cannot name would count against it unfairly)."""
    known = set(labels)
    kept = []
    for record in records:
        unknown = sorted(set(record.class_names()) - known)
        if unknown:
            report.skip(record.location, reasons.BAD_LABEL,
                        f"class {', '.join(unknown)} is not one of the model's classes ({', '.join(labels)})",
                        record.image_url)
        else:
            kept.append(record)
    return kept


def score_prediction_file(predictions: str | Path, records: Sequence[ImageRecord], task: Task, report: DataReport,
                          *, metric_type: str = "voc", iou_threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of a predictions file (the scoring format) against labelled records, with no model.

    Lines pair with records by filename (``match_prediction_lines``). Normalised boxes on both sides are
    scaled by the image's own size. The classes are the union of the labelled and the predicted ones, so
    a class only the predictions name has an undefined AP (-1) and does not enter the mean. A line whose
    ``boxes`` are malformed leaves its image out (reported).
    """
    pairs = match_prediction_lines(predictions, records, report)
    parsed: list[tuple[ImageRecord, tuple[np.ndarray, list[str], np.ndarray]]] = []
    for record, line in pairs:
        try:
            parsed.append((record, _read_boxes(line)))
        except ValueError as error:
            report.skip(record.location, reasons.MALFORMED_LINE, f"{predictions}: {error}", record.image_url)
    if not parsed:
        raise DataError(f"no prediction of {predictions} can be scored.\n{report.summary()}")
    classes = sorted({name for record, _ in parsed for name in record.class_names()}
                     | {name for _, (_, names, _) in parsed for name in names})
    index = {name: i for i, name in enumerate(classes)}
    found, truth, sizes = [], [], []
    for record, (boxes, names, scores) in parsed:
        scale = np.array([record.width, record.height] * 2, dtype=np.float64)
        found.append({"boxes": boxes * scale, "labels": np.array([index[n] for n in names], dtype=np.int64),
                      "scores": scores})
        truth.append({"boxes": np.array([o.box for o in record.objects], dtype=np.float64).reshape(-1, 4) * scale,
                      "labels": np.array([index[o.label] for o in record.objects], dtype=np.int64),
                      "iscrowd": np.array([o.is_crowd for o in record.objects], dtype=bool)})
        sizes.append((record.width, record.height))
    return evaluate_detections(found, truth, classes, metric_type=metric_type, iou_threshold=iou_threshold,
                               image_sizes=sizes, original_sizes=sizes)


def _read_boxes(line: dict[str, Any]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Normalised (K, 4) boxes, class names and scores of one prediction line; ValueError says what is wrong."""
    items = line.get("boxes")
    if not isinstance(items, list):
        raise ValueError("a detection line needs a 'boxes' list (empty when nothing was found)")
    boxes, names, scores = [], [], []
    for number, item in enumerate(items, start=1):
        where = f"box {number}"
        if not isinstance(item, dict) or not isinstance(item.get("box"), dict):
            raise ValueError(f"{where} must be an object with 'box', 'label' and 'score'")
        try:
            box = [float(item["box"][key]) for key in BOX_KEYS]
            score = float(item["score"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where} needs numbers for {', '.join(BOX_KEYS)} and 'score'") from None
        label = item.get("label")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
            raise ValueError(f"{where} needs a class name in 'label'")
        if not all(math.isfinite(v) for v in (*box, score)):
            raise ValueError(f"{where} has a value that is not a finite number")
        boxes.append(box)
        names.append(str(label).strip())
        scores.append(score)
    return np.array(boxes, dtype=np.float64).reshape(-1, 4), names, np.array(scores, dtype=np.float64)
