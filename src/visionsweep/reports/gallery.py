"""The run report's gallery: validation images with ground truth and predictions drawn, worst first.

Each image gets a score in [0, 1] saying how well the model did on it, and the gallery shows the
lowest first:

* multi-class: the probability the model gave the true class;
* multi-label: 1 - the mean absolute difference between the 0/1 truth and the probabilities;
* detection and segmentation: F1 of the image's boxes at the run's ``validation_iou_threshold``,
  counting predictions scored at least ``score_threshold`` (matched as VOC matches them; crowd objects
  neither count nor are missed). An image with no object and no prediction scores 1.

Pictures are drawn on the original image, shrunk to a thumbnail: ground truth in green, predictions
in orange with their label and score (instance segmentation: polygons too).
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from visionsweep.data.images import load_record_rgb
from visionsweep.data.records import ImageRecord
from visionsweep.evaluation.classification import MULTILABEL_THRESHOLD
from visionsweep.evaluation.detections import Detections, GroundTruth
from visionsweep.evaluation.voc import FALSE_POSITIVE, TRUE_POSITIVE, match_images

THUMBNAIL_SIDE = 320
TRUTH_COLOUR = (0, 170, 0)
PREDICTION_COLOUR = (255, 120, 0)


@dataclass(frozen=True)
class ScoredImage:
    """One validation image, its prediction line (the scoring format) and how well the model did."""

    record: ImageRecord
    line: dict[str, Any]
    score: float
    summary: str  # e.g. "true red, predicted blue (0.73)" or "2 found, 1 wrong, 1 missed"


@dataclass(frozen=True)
class GalleryImage:
    filename: str
    score: float
    summary: str
    data_uri: str


def score_classification(record: ImageRecord, line: dict[str, Any], multilabel: bool) -> ScoredImage:
    labels, probabilities = line["labels"], np.asarray(line["probs"], dtype=float)
    if multilabel:
        truth = np.array([label in record.labels for label in labels], dtype=float)
        score = 1.0 - float(np.abs(truth - probabilities).mean()) if len(labels) else 1.0
        predicted = [f"{label} ({p:.2f})" for label, p in zip(labels, probabilities) if p > MULTILABEL_THRESHOLD]
        summary = f"true {', '.join(record.labels) or 'none'}; predicted {', '.join(predicted) or 'none'}"
        return ScoredImage(record, line, score, summary)
    true_label = record.labels[0]
    score = float(probabilities[labels.index(true_label)]) if true_label in labels else 0.0
    best = int(probabilities.argmax())
    return ScoredImage(record, line, score, f"true {true_label}; predicted {labels[best]} ({probabilities[best]:.2f})")


def score_detection(record: ImageRecord, line: dict[str, Any], classes: Sequence[str], iou_threshold: float,
                    score_threshold: float) -> ScoredImage:
    index = {name: i for i, name in enumerate(classes)}
    shown = [b for b in line["boxes"] if b["score"] >= score_threshold and b["label"] in index]
    predicted = Detections(
        np.array([[b["box"][k] for k in ("topX", "topY", "bottomX", "bottomY")] for b in shown]).reshape(-1, 4),
        np.array([index[b["label"]] for b in shown], dtype=np.int64), np.array([b["score"] for b in shown]))
    known = [o for o in record.objects if o.label in index]
    truth = GroundTruth(np.array([o.box for o in known], dtype=float).reshape(-1, 4),
                        np.array([index[o.label] for o in known], dtype=np.int64),
                        np.array([o.is_crowd for o in known], dtype=bool))
    outcomes = match_images([predicted], [truth], iou_threshold)[0]
    found = int((outcomes == TRUE_POSITIVE).sum())
    wrong = int((outcomes == FALSE_POSITIVE).sum())
    missed = int((~truth.is_crowd).sum()) - found
    errors = wrong + missed
    score = 1.0 if found + errors == 0 else 2 * found / (2 * found + errors)
    return ScoredImage(record, line, score, f"{found} found, {wrong} wrong, {missed} missed "
                                            f"(predictions >= {score_threshold:g})")


def gallery(images: Sequence[ScoredImage], size: int, score_threshold: float) -> list[GalleryImage]:
    """The ``size`` worst images, drawn (equal scores: in validation order)."""
    worst = sorted(range(len(images)), key=lambda i: (images[i].score, i))[:size]
    return [GalleryImage(images[i].record.image_url, images[i].score, images[i].summary,
                         _drawn(images[i], score_threshold)) for i in worst]


def _drawn(image: ScoredImage, score_threshold: float) -> str:
    picture = load_record_rgb(image.record)
    picture.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    if image.record.objects or "boxes" in image.line:
        _draw_objects(picture, image, score_threshold)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _draw_objects(picture: Image.Image, image: ScoredImage, score_threshold: float) -> None:
    width, height = picture.size
    pen = ImageDraw.Draw(picture)

    def pixels(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return x0 * width, y0 * height, x1 * width, y1 * height

    def outline(flat: Sequence[float], colour: tuple[int, int, int]) -> None:
        points = [(flat[i] * width, flat[i + 1] * height) for i in range(0, len(flat) - 1, 2)]
        if len(points) >= 2:
            pen.line([*points, points[0]], fill=colour, width=1)

    for obj in image.record.objects:
        pen.rectangle(pixels(*obj.box), outline=TRUTH_COLOUR, width=2)
        for polygon in obj.polygons:
            outline(polygon, TRUTH_COLOUR)
    for box in image.line.get("boxes", []):
        if box["score"] < score_threshold:
            continue
        corners = pixels(*(box["box"][k] for k in ("topX", "topY", "bottomX", "bottomY")))
        pen.rectangle(corners, outline=PREDICTION_COLOUR, width=2)
        for polygon in box.get("polygon", []):
            outline(polygon, PREDICTION_COLOUR)
        pen.text((corners[0] + 2, corners[1] + 1), f"{box['label']} {box['score']:.2f}", fill=PREDICTION_COLOUR)
