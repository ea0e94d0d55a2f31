"""A trained model's family, set up to predict on records: the one way inference runs a model."""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from visionsweep.data.failures import UnreadableImages
from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.families.base import ModelFamily
from visionsweep.families.selection import family_for
from visionsweep.inference.model_folder import TrainedModel


class Predictor:
    """Predictions of ``trained`` on ``records``, one record per readable image, in input order.

    Images that fail to decode are skipped into ``report`` (they were counted as kept); with
    ``ignore_data_errors`` false in the model's settings the first one is an error. ``family`` is the
    model's family (``families.selection``), tiling included; it runs the torch network, or the exported
    graph through its ONNX Runtime stand-in.
    """

    def __init__(self, trained: TrainedModel, records: Sequence[ImageRecord], report: DataReport):
        self.records = list(records)
        failures = UnreadableImages({"prediction": self.records}, report,
                                    ignore_data_errors=trained.settings.ignore_data_errors, kept=True)
        self.family: ModelFamily = family_for(trained.settings, trained.labels, trained.device, failures)
        self.model = (self.family.onnx_model(trained.onnx) if trained.onnx is not None
                      else self.family.inference_model(trained.model).eval())

    def __iter__(self) -> Iterator[Any]:
        loader = self.family.prediction_loader(self.records)
        with torch.no_grad():
            yield from self.family.predict(self.model, loader)
