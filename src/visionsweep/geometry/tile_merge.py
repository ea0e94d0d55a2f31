"""Merging the predictions of an image's tiles with those of the full image (spec section 4.6).

Frames: a detector predicts in the frame of what it was fed (the "model frame": the full image or the
tile after the model's resize). ``tile_boxes_to_image`` takes boxes of a tile's model frame into the
full image's model frame; ``merge_tile_predictions`` then removes the duplicates that tiles produce
where they overlap each other or the full image.

Duplicate removal is the reference's: greedy, class-aware and across sources only. Boxes are visited by
descending score (ties keep input order); a box not yet marked marks as duplicates all later boxes of
the same label from a DIFFERENT source (another tile, or the full image) whose IoU with it is strictly
greater than ``nms_threshold``. Boxes of the same tile, or both of the full image, never suppress each
other: each source already went through the model's own NMS. The merged result is neither capped at
``box_detections_per_img`` nor thresholded again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from visionsweep.geometry.tile_layout import Tile

FULL_IMAGE_SOURCE = 0  # the source number of full-image boxes; tile k (0-based) is source k + 1


@dataclass(frozen=True)
class TilePredictions:
    """What the model found in one tile: ``predictions`` {boxes (K, 4) pixels of the tile's model frame,
    scores (K,), labels (K,)}; ``frame_size`` (width, height) of the tile as fed to the model."""

    tile: Tile
    predictions: Mapping[str, Tensor]
    frame_size: tuple[int, int]


def tile_boxes_to_image(boxes: Tensor, tile: Tile, *, tile_frame: tuple[int, int], image_frame: tuple[int, int],
                        image_size: tuple[int, int]) -> Tensor:
    """Boxes (K, 4) x0, y0, x1, y1 in pixels of a tile's model frame to pixels of the full image's frame.

    ``tile_frame`` and ``image_frame`` are the (width, height) of the tile and of the full image as
    fed to the model, ``image_size`` the (width, height) of the original image, in which ``tile`` is
    given. The box is scaled back to original tile pixels, moved by the tile's corner, and scaled into
    the image's frame. Example: a 600 x 400 image fed at 900 x 600 and its tile (0, 0, 300, 200) fed at
    900 x 600: the tile box (0, 0, 100, 100) becomes (0, 0, 50, 50); for a tile at x0 = 300,
    (450, 0, 500, 50).
    """
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    # float64 inside: scaling down and up again in float32 leaves errors of a few 1e-6 pixels.
    work = boxes.to(torch.float64)
    to_tile = work.new_tensor([tile.width / tile_frame[0], tile.height / tile_frame[1]] * 2)
    corner = work.new_tensor([tile.x0, tile.y0] * 2)
    to_image = work.new_tensor([image_frame[0] / image_size[0], image_frame[1] / image_size[1]] * 2)
    return ((work * to_tile + corner) * to_image).to(dtype)


def duplicate_flags(boxes: Tensor, scores: Tensor, labels: Tensor, sources: Tensor, nms_threshold: float) -> Tensor:
    """Which boxes are duplicates of a better box of the same label from another source.

    ``boxes`` (K, 4) x0, y0, x1, y1 in one frame, ``scores`` (K,), ``labels`` (K,) and ``sources`` (K,)
    ints (the region each box came from). Returns (K,) bool, true for the boxes to drop (see the module
    docstring for the rule).
    """
    count = len(scores)
    flags = torch.zeros(count, dtype=torch.bool)
    if count < 2:
        return flags
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, labels, sources = boxes[order].float(), labels[order], sources[order]
    # candidate[i, j]: box j (visited after i) would be marked by box i, if box i is itself kept.
    candidate = ((box_iou(boxes, boxes) > nms_threshold)
                 & (labels[:, None] == labels[None, :])
                 & (sources[:, None] != sources[None, :])).triu(diagonal=1)
    marked = torch.zeros(count, dtype=torch.bool)
    # Only boxes that can mark something need a visit; they are few (boxes near tile borders).
    for row in torch.nonzero(candidate.any(dim=1)).flatten().tolist():
        if not marked[row]:
            marked |= candidate[row]
    flags[order] = marked
    return flags


def merge_tile_predictions(image_predictions: Mapping[str, Tensor], tiles: Sequence[TilePredictions], *,
                           frame_size: tuple[int, int], original_size: tuple[int, int],
                           nms_threshold: float) -> dict[str, Tensor]:
    """The predictions of one image from its full-image predictions and those of its tiles.

    ``image_predictions`` {boxes (N, 4) pixels of the image's model frame, scores, labels};
    ``frame_size`` that frame's (width, height), ``original_size`` the original image's. Tile boxes are
    mapped into the image's frame (``tile_boxes_to_image``), duplicates across sources removed
    (``duplicate_flags``), and the survivors returned as {boxes, scores, labels} by descending score
    (ties keep the order full image first, then tiles in the given order).
    """
    boxes = [image_predictions["boxes"].float().reshape(-1, 4)]
    scores = [image_predictions["scores"].float().reshape(-1)]
    labels = [image_predictions["labels"].reshape(-1)]
    for part in tiles:
        boxes.append(tile_boxes_to_image(part.predictions["boxes"].float().reshape(-1, 4), part.tile,
                                         tile_frame=part.frame_size, image_frame=frame_size,
                                         image_size=original_size))
        scores.append(part.predictions["scores"].float().reshape(-1))
        labels.append(part.predictions["labels"].reshape(-1))
    sources = torch.cat([torch.full((len(s),), number, dtype=torch.int64) for number, s in enumerate(scores)])
    all_boxes, all_scores, all_labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels).to(torch.int64)
    keep = ~duplicate_flags(all_boxes, all_scores, all_labels, sources, nms_threshold)
    kept = torch.nonzero(keep).flatten()
    kept = kept[torch.argsort(all_scores[kept], descending=True, stable=True)]
    return {"boxes": all_boxes[kept], "scores": all_scores[kept], "labels": all_labels[kept]}
