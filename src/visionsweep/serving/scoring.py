"""Scoring images held in memory with the reference's online response: what the scoring endpoint and
the MLflow model answer for each image.

Each image gets, in request order, either its response (classification ``{"probs": [...], "labels":
[...]}``, detection ``{"boxes": [...]}``, the boxes of segmentation with ``polygon``) or an
``ImageError`` saying why it could not be scored. The images go through exactly the batch prediction
path (``visionsweep.predict``): written to a private temporary folder, checked (header, pixel limit),
then read, framed and predicted by the model's family, one batch for all of them.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from visionsweep.data.jsonl import check_images
from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.errors import SettingsError
from visionsweep.inference import classification, detection
from visionsweep.inference.model_folder import TrainedModel
from visionsweep.settings import resolve_settings

# Settings a request may change: how detections are filtered, tiled and traced, never the model.
REQUEST_SETTINGS = ("box_score_thresh", "nms_iou_thresh", "box_detections_per_img", "tile_grid_size",
                    "tile_overlap_ratio", "tile_predictions_nms_thresh", "max_number_of_polygon_points",
                    "mask_pixel_score_threshold")


@dataclass(frozen=True)
class ImageError:
    """An image of a request that could not be scored: ``reason`` (a data report reason such as
    ``unreadable image`` or ``image too large``) and what exactly was wrong."""

    reason: str
    detail: str


class Scorer:
    """Scores images in memory with ``trained`` (torch or ONNX Runtime, ``api.load_model``).

    ``batch_size`` images go through the network at once (the server's ``--max-batch-size``); data
    loading happens in the calling thread (no worker processes per request).
    """

    def __init__(self, trained: TrainedModel, *, batch_size: int | None = None):
        fixed: dict[str, Any] = {"num_workers": 0}
        if trained.task.predicts_masks:
            fixed["export_as_image"] = False  # a request's answer is its response, never files here
        if batch_size is not None:
            fixed["validation_batch_size"] = batch_size
        self.trained = self._with_settings(trained, fixed)
        self._variants: dict[tuple[tuple[str, Any], ...], TrainedModel] = {}

    @property
    def task(self):
        return self.trained.task

    def check_settings(self, overrides: Mapping[str, Any] | None) -> TrainedModel:
        """The model with a request's settings applied; ``SettingsError`` names each one that is not a
        request setting (``REQUEST_SETTINGS``) or not valid for this model."""
        if not overrides:
            return self.trained
        key = tuple(sorted(overrides.items(), key=lambda item: item[0]))
        if key not in self._variants:
            unknown = sorted(set(overrides) - set(REQUEST_SETTINGS))
            if unknown:
                raise SettingsError([f"{name}: cannot change per request; a request may set "
                                     f"{', '.join(REQUEST_SETTINGS)}" for name in unknown], context="request")
            self._variants[key] = self._with_settings(self.trained, overrides)
        return self._variants[key]

    def score(self, images: Sequence[bytes], overrides: Mapping[str, Any] | None = None
              ) -> list[dict[str, Any] | ImageError]:
        """One response (or ``ImageError``) per image, in order, from one prediction over all of them."""
        trained = self.check_settings(overrides)
        with tempfile.TemporaryDirectory(prefix="visionsweep-score-") as folder:
            candidates = []
            for position, content in enumerate(images):
                path = Path(folder) / str(position)
                path.write_bytes(content)
                candidates.append(ImageRecord(image_path=path, image_url=str(position), location=f"image {position}"))
            report = DataReport(source="request", records_read=len(candidates))
            records = check_images(candidates, report, max_pixels=trained.settings.max_image_pixels)
            report.kept = len(records)
            answers: dict[int, dict[str, Any] | ImageError] = {}
            if records:
                module = classification if trained.task.is_classification else detection
                for line in module.predict_lines(trained, records, report):
                    answers[int(line.pop("filename"))] = line
        for problem in report.skipped:
            answers[int(problem.image_url)] = ImageError(problem.reason, _without_paths(problem.detail, folder))
        return [answers[position] for position in range(len(images))]

    @staticmethod
    def _with_settings(trained: TrainedModel, values: Mapping[str, Any]) -> TrainedModel:
        stored = {k: v for k, v in trained.settings.to_dict().items() if k != "task"}
        return replace(trained, settings=resolve_settings(trained.task, {**stored, **values}))


def _without_paths(detail: str, folder: str) -> str:
    """A problem's detail without the temporary folder's path (the client never saw it)."""
    return detail.replace(f"{folder}/", "").replace(folder, "")

