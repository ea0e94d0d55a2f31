"""Scoring images held in memory with the reference's online response: what the scoring endpoint and
the MLflow model answer for each image.

Each image gets, in request order, either its response (classification ``{"probs": [...], "labels":
[...]}``, with ``visualizations`` and ``attributions`` when ``model_explainability`` asks for them,
detection ``{"boxes": [...]}``, the boxes of segmentation with ``polygon``) or an
``ImageError`` saying why it could not be scored. The images go through exactly the batch prediction
path (``visionsweep.predict``): written to a private temporary folder, checked (header, pixel limit),
then read, framed and predicted by the model's family, one batch for all of them.
"""
from __future__ import annotations

import json
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from visionsweep.data.jsonl import check_images
from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.errors import SettingsError
from visionsweep.families.selection import family_for
from visionsweep.inference import classification, detection
from visionsweep.inference.explanations import check_explainable
from visionsweep.inference.model_folder import TrainedModel
from visionsweep.settings import resolve_settings
from visionsweep.settings.schema import EXPLANATION_SETTINGS

# Settings a request may change: how detections are filtered, tiled and traced, and whether and how a
# classification is explained (the reference's model_explainability and xai_parameters), never the model.
REQUEST_SETTINGS = ("box_score_thresh", "nms_iou_thresh", "box_detections_per_img", "tile_grid_size",
                    "tile_overlap_ratio", "tile_predictions_nms_thresh", "max_number_of_polygon_points",
                    "mask_pixel_score_threshold", *EXPLANATION_SETTINGS)
# Models with a request's settings kept for reuse: a few, as any number of different values may come in.
_KEPT_VARIANTS = 32


@dataclass(frozen=True)
class ImageError:
    """An image of a request that could not be scored: ``reason`` (a data report reason such as
    ``unreadable image`` or ``image too large``) and what exactly was wrong."""

    reason: str
    detail: str


class Scorer:
    """Scores images in memory with ``trained`` (torch or ONNX Runtime, ``api.load_model``).

    ``batch_size`` images go through the network at once (the server's ``--max-batch-size``); data
    loading happens in the calling thread (no worker processes per request). An image that fails to
    decode is that image's ``ImageError``, whatever the model's ``ignore_data_errors``: the images of
    one call may come from different requests. Safe to call from several threads.
    """

    def __init__(self, trained: TrainedModel, *, batch_size: int | None = None):
        fixed: dict[str, Any] = {"num_workers": 0, "ignore_data_errors": True}
        if trained.task.predicts_masks:
            fixed["export_as_image"] = False  # a request's answer is its response, never files here
        if batch_size is not None:
            fixed["validation_batch_size"] = batch_size
        self.trained = self._with_settings(trained, fixed)
        if trained.model is not None:
            # The network as prediction runs it (YOLOv5 with BatchNorm folded), made once, not per call.
            family = family_for(self.trained.settings, trained.labels, trained.device, _no_failures)
            self.trained = replace(self.trained, model=family.inference_model(trained.model).eval())
        self._variants: OrderedDict[str, TrainedModel] = OrderedDict()
        self._variants_lock = threading.Lock()

    @property
    def task(self):
        return self.trained.task

    def check_settings(self, overrides: Mapping[str, Any] | None) -> TrainedModel:
        """The model with a request's settings applied; ``SettingsError`` names each one that is not a
        request setting (``REQUEST_SETTINGS``) or not valid for this model (explainability of a detector,
        or with the onnxruntime runtime, or by a method the model does not support)."""
        if not overrides:
            return self.trained
        key = settings_key(overrides)
        with self._variants_lock:
            if key in self._variants:
                self._variants.move_to_end(key)
                return self._variants[key]
        unknown = sorted(set(overrides) - set(REQUEST_SETTINGS))
        if unknown:
            raise SettingsError([f"{name}: cannot change per request; a request may set "
                                 f"{', '.join(REQUEST_SETTINGS)}" for name in unknown], context="request")
        variant = self._with_settings(self.trained, overrides)
        with self._variants_lock:
            self._variants[key] = variant
            if len(self._variants) > _KEPT_VARIANTS:
                self._variants.popitem(last=False)
        return variant

    def score(self, images: Sequence[bytes], overrides: Mapping[str, Any] | None = None
              ) -> list[dict[str, Any] | ImageError]:
        """One response (or ``ImageError``) per image, in order, from one prediction over all of them."""
        trained = self.check_settings(overrides)
        with tempfile.TemporaryDirectory(prefix="visionsweep-score-") as folder:
            candidates = []
            for position, content in enumerate(images):
                path = Path(folder) / f"image {position}"  # the name a problem detail gives it
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
        settings = resolve_settings(trained.task, {**stored, **values})
        check_explainable(settings, onnx=trained.model is None)
        return replace(trained, settings=settings)


def _no_failures(failures: Any, stage: str) -> None:
    """The failure sink of a family that only prepares the network: it reads no data."""


def settings_key(overrides: Mapping[str, Any] | None) -> str:
    """One text per distinct set of request settings: requests with equal keys can share a forward."""
    return json.dumps(dict(overrides or {}), sort_keys=True, default=str)


def _without_paths(detail: str, folder: str) -> str:
    """A problem's detail without the temporary folder's path (the client never saw it)."""
    return detail.replace(f"{folder}/", "").replace(folder, "")

