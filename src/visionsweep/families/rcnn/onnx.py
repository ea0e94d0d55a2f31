"""Faster R-CNN, RetinaNet and Mask R-CNN as ONNX graphs of any batch size, and their ONNX Runtime
stand-in.

Input ``input``: (N, 3, H, W) float RGB, resized as at validation (shorter side to ``min_size``, longer
side at most ``max_size``) and normalised with the ImageNet mean and std, or with
``enable_onnx_normalization`` in 0..255 (the graph normalises); the images of one batch share H and W.

Outputs, in the reference's names and order (spec 2.13): ``boxes`` (K, 4) x0, y0, x1, y1 in input
pixels, ``labels`` (K,) class indices into the labels (no background class), ``scores`` (K,) -
RetinaNet gives ``boxes``, ``scores``, ``labels`` - and Mask R-CNN adds ``masks`` (K, 1, H, W)
probabilities. Beyond the reference any batch size runs: the graph loops over the images
(``exporting.batching``), the rows of all images come grouped by image, each best first, and
``batch_index`` (K,) says whose each row is. The model's ``box_score_thresh``, ``nms_iou_thresh`` and
``box_detections_per_img`` are part of the graph.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN, RetinaNet

from visionsweep.exporting.graph import ExportOptions, InGraphNormalization, OnnxGraph
from visionsweep.exporting.runtime import OnnxSession
from visionsweep.models.inputs import IMAGENET_MEAN, IMAGENET_STD
from visionsweep.settings import Settings

INPUT = "input"
_WHAT = {"boxes": "(K, 4) x0, y0, x1, y1 in input pixels", "labels": "(K,) class indices into labels",
         "scores": "(K,)", "masks": "(K, 1, H, W) mask probabilities in the input frame"}


class _OneImage(nn.Module):
    """The eval-mode detector on one image, its outputs as a tuple in the reference's order."""

    def __init__(self, model: nn.Module, label_offset: int):
        super().__init__()
        self.model, self.label_offset = model, label_offset
        self.names = output_names(model)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        found = self.model([image])[0]
        found["labels"] = found["labels"] - self.label_offset
        return tuple(found[name] for name in self.names)


def output_names(model: nn.Module) -> list[str]:
    if isinstance(model, RetinaNet):
        return ["boxes", "scores", "labels"]
    return ["boxes", "labels", "scores"] + (["masks"] if isinstance(model, MaskRCNN) else [])


def rcnn_graph(model: nn.Module, settings: Settings, label_offset: int, options: ExportOptions) -> OnnxGraph:
    module: nn.Module = _OneImage(model, label_offset)
    if settings.enable_onnx_normalization:
        module = InGraphNormalization(module, IMAGENET_MEAN, IMAGENET_STD)
    names = output_names(model)
    dynamic = {INPUT: {1: "height", 2: "width"}, **{name: {0: "detections"} for name in names}}
    if "masks" in names:
        dynamic["masks"] = {0: "detections", 2: "height", 3: "width"}
    size = settings.min_size
    return OnnxGraph(module, torch.rand(options.batch or 1, 3, size, size), INPUT, {n: _WHAT[n] for n in names},
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, normalized_in_graph=settings.enable_onnx_normalization,
                     per_image=True, nms_in_graph=True, dynamic=dynamic)


class OnnxRcnn(nn.Module):
    """Runs the exported graph where the family runs its torch detector: a list of images in, a list of
    prediction dicts (model labels, as torchvision gives them) out. Detections at or below
    ``score_thresh`` are dropped, so that a threshold above the graph's own can be asked for."""

    def __init__(self, session: OnnxSession, label_offset: int, score_thresh: float):
        super().__init__()
        self.session, self.label_offset, self.score_thresh = session, label_offset, score_thresh

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        results = []
        for image in images:  # one at a time: the images of an R-CNN batch differ in size
            found = self.session.run(image[None])
            found.pop("batch_index")
            found["labels"] = found["labels"] + self.label_offset
            keep = found["scores"] > self.score_thresh
            results.append({name: value[keep] for name, value in found.items()})
        return results
