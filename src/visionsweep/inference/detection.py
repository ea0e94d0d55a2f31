"""Object-detection and instance-segmentation prediction in the reference scoring format, and scoring
against labels.

A prediction line (spec 6.1)::

    {"filename": "images/1.jpg",
     "boxes": [{"box": {"topX": 0.12, "topY": 0.30, "bottomX": 0.45, "bottomY": 0.77}, "label": "can", "score": 0.93}]}

Instance segmentation adds ``"polygon": [[x1, y1, x2, y2, ...], ...]`` to each box: the object's mask
(probabilities above ``mask_pixel_score_threshold``) traced into segments of at most
``max_number_of_polygon_points`` points, normalised like the boxes (``geometry/masks.py``). With
``export_as_image`` each mask is also written as an image (``inference/mask_images.py`` names the files).

Coordinates are fractions of the image width and height (the frame a family predicts in, normalised by
its own size, which equals normalising the original image's pixels). Boxes come sorted by descending
score, each scoring above ``box_score_thresh``; that, ``nms_iou_thresh`` and the R-CNN family's
``box_detections_per_img`` can be overridden at prediction time. YOLOv5 reads each image upright,
resizes its longer side to ``img_size`` (overridable too) and letterboxes it to a square; its boxes go
through the score filter (objectness and objectness x class probability above ``box_score_thresh``),
class-aware NMS and a cap of 300 boxes, then back to original pixels. Images that cannot be read get no
line (they are reported).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError
from visionsweep.evaluation.detection import DetectionEvaluation, evaluate_detections
from visionsweep.geometry.masks import mask_polygons, pixel_segments, polygons_to_rles
from visionsweep.inference.inputs import known_class_records
from visionsweep.inference.mask_images import export_mask_images
from visionsweep.inference.model_folder import TrainedModel
from visionsweep.inference.prediction_files import match_prediction_lines, reject_line, scoring_summary
from visionsweep.inference.predictor import Predictor
from visionsweep.tasks import Task

BOX_KEYS = ("topX", "topY", "bottomX", "bottomY")


def predict_lines(trained: TrainedModel, records: Sequence[ImageRecord], report: DataReport, *,
                  mask_dir: str | Path | None = None) -> Iterator[dict[str, Any]]:
    """One scoring-format line per readable image, in input order.

    For instance segmentation every box also gets its ``polygon``, and with ``export_as_image`` each
    mask is written under ``mask_dir`` (default: ``masks`` in the current folder) as
    ``<root>/<label>/<root>_<i>_label_<label>_conf_<score>.<image_type>`` (``mask_images.mask_image_path``),
    at the original image's width x height (the reference writes the model frame's).
    """
    settings = trained.settings
    for found in Predictor(trained, records, report):
        image_url = records[found.index].image_url
        line = prediction_line(image_url, found.predictions, trained.labels, found.frame_size)
        if "masks" in found.predictions:
            masks = (found.predictions["masks"][:, 0] > settings.mask_pixel_score_threshold).numpy()
            polygons = mask_polygons(masks, max_points=settings.max_number_of_polygon_points,
                                     frame_size=found.frame_size)
            for item, polygon in zip(line["boxes"], polygons):
                item["polygon"] = polygon
            if settings.export_as_image:  # at the original image's size, cut after resizing the soft masks
                export_mask_images(Path("masks") if mask_dir is None else Path(mask_dir), image_url,
                                   found.predictions["masks"].numpy(), [item["label"] for item in line["boxes"]],
                                   [item["score"] for item in line["boxes"]], settings.image_type,
                                   threshold=settings.mask_pixel_score_threshold, size=found.original_size)
        yield line


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
    reported and left out. A segmentation model is scored on masks (its probabilities cut at
    ``mask_pixel_score_threshold``, 0.5 by default as at validation)."""
    scorable = known_class_records(records, trained.labels, report)
    if not scorable:
        raise DataError(f"no labelled image uses only the model's classes ({', '.join(trained.labels)})")
    settings = trained.settings
    predictor = Predictor(trained, scorable, report)
    evaluation = DetectionEvaluation(trained.labels,
                                     "voc" if settings.validation_metric_type == "none"
                                     else settings.validation_metric_type,
                                     iou_threshold=settings.validation_iou_threshold,
                                     iou_type=predictor.family.iou_type)
    images = 0
    # Image by image: the evaluators keep outcomes (VOC) or RLE masks (COCO), never soft masks.
    for found in predictor:
        predictions = found.predictions
        if "masks" in predictions:
            predictions = dict(predictions, masks=predictions["masks"][:, 0] > settings.mask_pixel_score_threshold)
        evaluation.add([predictions], [found.target], image_sizes=[found.frame_size],
                       original_sizes=[found.original_size])
        images += 1
    if not images:
        raise DataError(f"no labelled image could be read.\n{report.summary()}")
    return evaluation.compute()


def score_prediction_file(predictions: str | Path, records: Sequence[ImageRecord], task: Task, report: DataReport,
                          predictions_report: DataReport, *, metric_type: str = "voc",
                          iou_threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of a predictions file (the scoring format) against labelled records, with no model.

    Lines pair with records by filename (``match_prediction_lines``); ``report`` is the labelled data's
    and ``predictions_report`` the file's, and both add up. Normalised boxes on both sides are scaled by
    the image's own size. The classes are the union of the labelled and the predicted ones, so a class
    only the predictions name has an undefined AP (-1) and does not enter the mean. A line whose
    ``boxes`` are malformed is left out with its image (reported in both reports).

    For instance segmentation every box needs a ``polygon``; predicted and labelled polygons are
    rasterised at the image's own size (segments XOR-combined, one object at a time) and matched on
    mask IoU.
    """
    segmentation = task.predicts_masks
    parsed: list[tuple[ImageRecord, tuple[np.ndarray, list[str], np.ndarray], list[list[list[float]]]]] = []
    for pair in match_prediction_lines(predictions, records, report, predictions_report):
        try:
            parsed.append((pair.record, _read_boxes(pair.line), _read_polygons(pair.line) if segmentation else []))
        except ValueError as error:
            reject_line(pair, str(error), report, predictions_report)
    if not parsed:
        raise DataError(f"no prediction of {predictions} can be scored.\n{scoring_summary(report, predictions_report)}")
    classes = sorted({name for record, *_ in parsed for name in record.class_names()}
                     | {name for _, (_, names, _), _ in parsed for name in names})
    index = {name: i for i, name in enumerate(classes)}
    found, truth, sizes = [], [], []
    for record, (boxes, names, scores), polygons in parsed:
        width, height = record.width, record.height
        scale = np.array([width, height] * 2, dtype=np.float64)
        found.append({"boxes": boxes * scale, "labels": np.array([index[n] for n in names], dtype=np.int64),
                      "scores": scores})
        truth.append({"boxes": np.array([o.box for o in record.objects], dtype=np.float64).reshape(-1, 4) * scale,
                      "labels": np.array([index[o.label] for o in record.objects], dtype=np.int64),
                      "iscrowd": np.array([o.is_crowd for o in record.objects], dtype=bool)})
        if segmentation:
            found[-1]["masks"] = polygons_to_rles([pixel_segments(p, width, height) for p in polygons], height, width)
            truth[-1]["masks"] = polygons_to_rles([pixel_segments(o.polygons, width, height) for o in record.objects],
                                                  height, width)
        sizes.append((width, height))
    return evaluate_detections(found, truth, classes, metric_type=metric_type, iou_threshold=iou_threshold,
                               iou_type="segm" if segmentation else "bbox", image_sizes=sizes, original_sizes=sizes)


def _read_polygons(line: dict[str, Any]) -> list[list[list[float]]]:
    """The normalised polygon of every box of a segmentation line (flat [x1, y1, ...] segments); ValueError
    says what is wrong. Segments with fewer than 3 points enclose nothing and are left out."""
    polygons = []
    for number, item in enumerate(line.get("boxes") or [], start=1):
        value = item.get("polygon") if isinstance(item, dict) else None
        if not isinstance(value, list) or not all(isinstance(segment, list) for segment in value):
            raise ValueError(f"box {number} needs a 'polygon': a list of segments [x1, y1, x2, y2, ...] "
                             "(instance segmentation)")
        segments = []
        for segment in value:
            try:
                points = [float(v) for v in segment]
            except (TypeError, ValueError):
                raise ValueError(f"box {number} has a polygon value that is not a number") from None
            if len(points) % 2 or not all(math.isfinite(v) for v in points):
                raise ValueError(f"box {number} has a polygon segment with an odd number of values or a value "
                                 "that is not finite")
            if len(points) >= 6:
                segments.append(points)
        polygons.append(segments)
    return polygons


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
