"""A classifier as an ONNX graph (the reference's contract, spec 6.4) and its ONNX Runtime stand-in.

Input ``input1``: (N, 3, crop, crop) float RGB, resized and centre-cropped as at validation
(``valid_resize_size``, ``valid_crop_size``) and normalised with the model's mean and std, or with
``enable_onnx_normalization`` in 0..255 (the graph normalises). Output ``output1``: (N, classes) raw
logits (softmax or sigmoid are the caller's).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from visionsweep.errors import SettingsError
from visionsweep.exporting.graph import ExportOptions, InGraphNormalization, OnnxGraph
from visionsweep.exporting.runtime import OnnxSession
from visionsweep.settings import Settings

INPUT, OUTPUT = "input1", "output1"


def classifier_graph(model: nn.Module, settings: Settings, options: ExportOptions, *, mean: Sequence[float],
                     std: Sequence[float]) -> OnnxGraph:
    if options.nms:
        raise SettingsError(["nms: a classifier has no boxes to suppress; export without --nms"], context="export")
    crop = settings.valid_crop_size
    if settings.enable_onnx_normalization:
        model = InGraphNormalization(model, mean, std)
    return OnnxGraph(model, torch.rand(options.batch or 1, 3, crop, crop), INPUT, {OUTPUT: "raw logits (N, classes)"},
                     mean=tuple(mean), std=tuple(std), normalized_in_graph=settings.enable_onnx_normalization)


class OnnxClassifier(nn.Module):
    """Runs the exported graph where the family runs its torch classifier: images in, logits out."""

    def __init__(self, session: OnnxSession):
        super().__init__()
        self.session = session

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.session.run(images)[OUTPUT]
