"""YOLOv5 prediction in the reference scoring format, and scoring against labels.

Each image is read upright, its longer side resized to ``img_size`` and letterboxed to a square (never
enlarged by the padding step); the network's decoded boxes go through the score filter (objectness and
objectness x class probability above ``box_score_thresh``), class-aware NMS at ``nms_iou_thresh``, at
most 300 boxes per image, then back to original pixels (padding removed, scale undone, clipped to the
image). Lines are the R-CNN family's (``visionsweep.inference.detection``): fractions of the original
width and height, best box first. ``img_size``, ``box_score_thresh`` and ``nms_iou_thresh`` can be
overridden at prediction time (``box_detections_per_img`` does not apply to YOLOv5).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Iterator, Sequence

import torch

from visionsweep.data import report as reasons
from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.data.tiling import Tiling
from visionsweep.errors import DataError
from visionsweep.evaluation.detection import evaluate_detections
from visionsweep.inference.detection import ImageDetections, prediction_line
from visionsweep.inference.detection import score_prediction_file  # noqa: F401  (the task's file scoring)
from visionsweep.inference.inputs import known_class_records
from visionsweep.inference.model_folder import TrainedModel
from visionsweep.models.yolo import YoloLoss, fused_for_inference
from visionsweep.training.environment import make_loader
from visionsweep.training.tiling import TiledYoloGroupDataset, TiledYoloOps, collate_yolo_tile_groups
from visionsweep.training.yolo import ReportingYoloDataset, YoloOps, collate_yolo


def detect(trained: TrainedModel, records: Sequence[ImageRecord], report: DataReport) -> Iterator[ImageDetections]:
    """Run the detector over ``records`` in order; boxes in original pixels, so both sizes of each result
    are the original (width, height). Images that fail to decode are skipped into ``report``; with
    ``ignore_data_errors`` false in the model's settings the first one is an error."""
    settings = trained.settings
    tiling = Tiling.from_settings(settings)
    if tiling is None:
        dataset = ReportingYoloDataset(records, trained.labels, settings.img_size)
        collate, ops_type, batch_size = collate_yolo, YoloOps, settings.validation_batch_size
    else:  # each image with every tile; predictions come back merged, one per image (training/tiling.py)
        dataset = TiledYoloGroupDataset(records, trained.labels, settings.img_size, tiling, every_tile=True)
        collate, ops_type = collate_yolo_tile_groups, partial(TiledYoloOps, tiling=tiling)
        batch_size = tiling.images_per_batch(settings.validation_batch_size)
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=settings.num_workers, collate_fn=collate,
                         device=trained.device, seed=None)

    def on_failures(failures: list[tuple[int, str]], stage: str) -> None:
        for index, error in failures:
            report.skip_kept(records[index].location, reasons.UNREADABLE_IMAGE, error,
                             records[index].image_url)
            if not settings.ignore_data_errors:
                raise DataError(f"image {records[index].image_path} could not be read: {error}")

    ops = ops_type(classes=trained.labels, device=trained.device, img_size=settings.img_size, make_loss=YoloLoss,
                   multi_scale=False, seed=None, score_thresh=settings.box_score_thresh,
                   nms_thresh=settings.nms_iou_thresh, metric_type="none",
                   iou_threshold=settings.validation_iou_threshold, validation_loss=False,
                   training_batch_size=settings.training_batch_size, track_training_metrics=False,
                   on_failures=on_failures)
    model = fused_for_inference(trained.model)
    with torch.no_grad():
        for batch, predictions in ops.predict(model, loader, stage="prediction"):
            for position, index in enumerate(batch.indices.tolist()):
                size = batch.infos[position].original_size
                yield ImageDetections(records[index], predictions[position], batch.ground_truth[position], size, size)


def predict_lines(trained: TrainedModel, records: Sequence[ImageRecord],
                  report: DataReport) -> Iterator[dict[str, Any]]:
    """One scoring-format line per readable image, in input order."""
    for found in detect(trained, records, report):
        yield prediction_line(found.record.image_url, found.predictions, trained.labels, found.frame_size)


def evaluate_model(trained: TrainedModel, records: Sequence[ImageRecord], report: DataReport) -> dict[str, Any]:
    """Metrics of the detector on labelled records with the model's ``validation_metric_type`` (VOC when
    it is ``none``) and ``validation_iou_threshold``, in original pixels. Images with a class the model
    does not know are reported and left out."""
    scorable = known_class_records(records, trained.labels, report)
    if not scorable:
        raise DataError(f"no labelled image uses only the model's classes ({', '.join(trained.labels)})")
    found = list(detect(trained, scorable, report))
    if not found:
        raise DataError(f"no labelled image could be read.\n{report.summary()}")
    metric_type = trained.settings.validation_metric_type
    sizes = [f.original_size for f in found]
    return evaluate_detections([f.predictions for f in found], [f.target for f in found], trained.labels,
                               metric_type="voc" if metric_type == "none" else metric_type,
                               iou_threshold=trained.settings.validation_iou_threshold,
                               image_sizes=sizes, original_sizes=sizes)
