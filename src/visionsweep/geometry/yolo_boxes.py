"""YOLOv5 post-processing: score filtering, class-aware NMS and un-letterboxing to original pixels.

Unlike the reference, there is no per-batch time limit (the reference stops after 10 seconds and
silently returns nothing for the remaining images); every image gets its detections.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

import torch
from torchvision.ops import batched_nms, box_convert

MAX_DETECTIONS = 300


class Letterboxed(Protocol):
    """What un-letterboxing needs (``visionsweep.families.yolo.pipeline.LetterboxInfo`` has it):
    an original point (x, y) sits at (x * scale[0] + pad[0], y * scale[1] + pad[1]) in the input."""

    original_size: tuple[int, int]
    scale: tuple[float, float]
    pad: tuple[int, int]


class Detections(NamedTuple):
    """One image's detections, best first: ``boxes`` float (k, 4) pixel (x0, y0, x1, y1), ``scores``
    float (k,), ``labels`` int64 (k,) class indices into the class list (no background class)."""

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor


def postprocess(
    predictions: torch.Tensor,
    *,
    score_thresh: float = 0.1,
    iou_thresh: float = 0.5,
    max_detections: int = MAX_DETECTIONS,
    letterbox: Sequence[Letterboxed | None] | None = None,
) -> list[Detections]:
    """Turn the eval-mode model output into per-image detections.

    ``predictions`` is (B, N, 5 + nc): (cx, cy, w, h) in network-input pixels, objectness and class
    probabilities (``YoloV5`` in eval mode returns it first). A candidate is kept when its
    objectness and its score exceed ``score_thresh``; the score is objectness x probability of its
    best class (one class per box), except with one class, where it is the objectness alone
    (the single class's logit gets no loss in training, so it carries no information). Class-aware
    NMS at ``iou_thresh`` follows (all images of the batch in one call), then the best
    ``max_detections`` per image are kept. With ``letterbox`` (one entry per image) boxes are
    mapped back to original-image pixels and clipped to the original image; without it they stay
    in network-input pixels.
    """
    batch, _, channels = predictions.shape
    num_classes = channels - 5
    predictions = predictions.float()
    objectness = predictions[..., 4]
    if num_classes == 1:
        scores, labels = objectness, torch.zeros_like(objectness, dtype=torch.int64)
    else:
        scores, labels = (predictions[..., 5:] * objectness[..., None]).max(dim=-1)
    image, candidate = ((objectness > score_thresh) & (scores > score_thresh)).nonzero(as_tuple=True)
    boxes = box_convert(predictions[image, candidate, :4], "cxcywh", "xyxy")
    scores, labels = scores[image, candidate], labels[image, candidate]

    # One NMS for the whole batch: a group per (image, class) never suppresses another.
    keep = batched_nms(boxes, scores, image * num_classes + labels, iou_thresh)  # best first
    keep = keep[torch.sort(image[keep], stable=True).indices]  # grouped by image, still best first
    per_image = torch.bincount(image[keep], minlength=batch)
    starts = torch.cumsum(per_image, 0) - per_image
    rank = torch.arange(len(keep), device=keep.device) - starts[image[keep]]
    keep = keep[rank < max_detections]
    counts = torch.bincount(image[keep], minlength=batch).tolist()

    results = []
    for index, chunk in enumerate(torch.split(keep, counts)):
        chunk_boxes = boxes[chunk]
        if letterbox is not None and letterbox[index] is not None:
            chunk_boxes = unletterbox_boxes(chunk_boxes, letterbox[index])
        results.append(Detections(chunk_boxes, scores[chunk], labels[chunk]))
    return results


def unletterbox_boxes(boxes: torch.Tensor, info: Letterboxed) -> torch.Tensor:
    """Map (k, 4) pixel (x0, y0, x1, y1) boxes from the network input back to the original image:
    remove the padding, divide by the scale, clip to [0, width] x [0, height] of the original."""
    pad_x, pad_y = info.pad
    scale_x, scale_y = info.scale
    width, height = info.original_size
    offset = boxes.new_tensor([pad_x, pad_y, pad_x, pad_y])
    scale = boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])
    upper = boxes.new_tensor([width, height, width, height])
    return torch.minimum(((boxes - offset) / scale).clamp(min=0), upper)
