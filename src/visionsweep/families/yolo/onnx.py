"""YOLOv5 as an ONNX graph and its ONNX Runtime stand-in.

Input ``input``: (N, 3, H, W) float RGB in 0..1 (0..255 with ``enable_onnx_normalization``), H and W
multiples of 32: each image resized so that its longer side is S = ``img_size`` and centred in grey
padding, to S x S or (as visionsweep predicts) to the smallest multiple of 32 that holds it.

Output, as the reference (spec 2.13): ``output`` (N, A, 5 + classes), A = 3 x (H W / 64 + H W / 256 +
H W / 1024) anchors, every anchor's box as (cx, cy, w, h) in input pixels, its objectness and its class
probabilities, before any filtering. With the
``nms`` export option the graph also does what ``geometry.yolo_boxes.postprocess`` does (the score
filter at ``box_score_thresh``, class-aware NMS at ``nms_iou_thresh``, the best 300 per image) and
gives the detections of the R-CNN graphs instead: ``boxes`` (K, 4) x0, y0, x1, y1 input pixels,
``labels`` (K,), ``scores`` (K,) and ``batch_index`` (K,), grouped by image and best first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_convert

from visionsweep.errors import ExportError
from visionsweep.exporting.batching import BATCH_INDEX
from visionsweep.exporting.graph import ExportOptions, InGraphNormalization, OnnxGraph
from visionsweep.exporting.runtime import OnnxSession
from visionsweep.families.yolo.pipeline import PAD_VALUE
from visionsweep.geometry.yolo_boxes import MAX_DETECTIONS
from visionsweep.settings import Settings

INPUT, OUTPUT = "input", "output"
DETECTIONS = {"boxes": "(K, 4) x0, y0, x1, y1 in input pixels", "labels": "(K,) class indices into labels",
              "scores": "(K,)", BATCH_INDEX: "(K,) the image of each detection"}


class _Decoded(nn.Module):
    """The eval-mode network's decoded boxes alone (it also returns the raw maps, for the loss)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)[0]


class _WithNms(nn.Module):
    """``_Decoded`` followed by ``postprocess`` 's filter, NMS and cap, written with operations that
    trace into ONNX (no per-image Python loop, no bincount)."""

    def __init__(self, model: nn.Module, score_thresh: float, iou_thresh: float):
        super().__init__()
        self.decoded = _Decoded(model)
        self.score_thresh, self.iou_thresh = score_thresh, iou_thresh

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        predictions = self.decoded(images)
        num_classes = predictions.shape[-1] - 5
        objectness = predictions[..., 4]
        if num_classes == 1:
            scores, labels = objectness, torch.zeros_like(objectness, dtype=torch.int64)
        else:
            scores, labels = (predictions[..., 5:] * objectness[..., None]).max(dim=-1)
        image, candidate = ((objectness > self.score_thresh) & (scores > self.score_thresh)).nonzero(as_tuple=True)
        boxes = box_convert(predictions[image, candidate, :4], "cxcywh", "xyxy")
        scores, labels = scores[image, candidate], labels[image, candidate]
        keep = batched_nms(boxes, scores, image * num_classes + labels, self.iou_thresh)
        # Group by image, best first within each (scores are in (0, 1], so image * 2 - score orders both).
        keep = keep[torch.argsort(image[keep] * 2 - scores[keep])]
        image = image[keep]
        per_image = (image[:, None] == torch.arange(images.shape[0], device=image.device)[None, :]).sum(0)
        rank = torch.arange(image.shape[0], device=image.device) - (torch.cumsum(per_image, 0) - per_image)[image]
        keep, image = keep[rank < MAX_DETECTIONS], image[rank < MAX_DETECTIONS]
        return boxes[keep], labels[keep], scores[keep], image


def yolo_graph(model: nn.Module, settings: Settings, options: ExportOptions) -> OnnxGraph:
    size = settings.img_size
    if options.nms:
        module, outputs = _WithNms(model, settings.box_score_thresh, settings.nms_iou_thresh), DETECTIONS
        dynamic = {name: {0: "detections"} for name in outputs}
    else:
        module, outputs = _Decoded(model), {OUTPUT: "(N, A, 5 + classes) cx, cy, w, h in input pixels, "
                                                    "objectness, class probabilities"}
        dynamic = {OUTPUT: {1: "anchors"}}
    dynamic[INPUT] = {2: "height", 3: "width"}
    if settings.enable_onnx_normalization:
        module = InGraphNormalization(module, None, None)
    return OnnxGraph(module, torch.rand(options.batch or 1, 3, size, size), INPUT, outputs,
                     normalized_in_graph=settings.enable_onnx_normalization, nms_in_graph=options.nms,
                     dynamic=dynamic)


class OnnxYolo(nn.Module):
    """Runs the exported graph where the family runs its torch YOLOv5: (decoded, no raw maps).

    Graphs take any height and width; a file exported before that holds ``img_size`` x ``img_size`` fixed,
    and gets each batch padded with grey on the right and below, which moves no image and so no box."""

    def __init__(self, session: OnnxSession, img_size: int):
        super().__init__()
        if session.metadata.nms_in_graph:
            raise ExportError(f"{session.path} was exported with NMS in the graph; visionsweep predicts with the "
                              "graph's raw 'output' (export again without --nms), or run this file yourself "
                              "(docs/deployment.md)")
        self.session = session
        height, width = session.session.get_inputs()[0].shape[2:]
        self.fixed_size = img_size if isinstance(height, int) and isinstance(width, int) else None

    def forward(self, images: Tensor) -> tuple[Tensor, None]:
        if self.fixed_size is not None:
            height, width = images.shape[-2:]
            images = F.pad(images, (0, self.fixed_size - width, 0, self.fixed_size - height),
                           value=PAD_VALUE / 255.0)
        return self.session.run(images)[OUTPUT], None
