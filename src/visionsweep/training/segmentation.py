"""The instance-segmentation part of training (Mask R-CNN): object masks rasterised from the records'
polygons, and the run's loaders and ops.

Everything else is the detection pipeline of ``training/detection.py``: the same augmentations, resize,
normalisation, batching and losses. What differs is the target: each object also gets a mask. The
reference rasterises every polygon at the image's full resolution and then crops, pads, flips and
resizes those masks with the image (spec 3.9), so a large photo with many objects holds objects x
width x height bytes before it is shrunk. Here the polygons travel through the augmentations instead
(they are moved exactly like the boxes) and are rasterised once, in the final model frame, so a mask
costs the frame's size (at most ``min_size`` x ``max_size``) whatever the photo's resolution; the
bench (bench/segmentation_masks.md) measures the difference. Segments of one object combine by XOR, as
in the reference (an inner segment is a hole).

Memory guard: torchvision's mask loss copies every target mask of an image to float32, so an image
with very many objects still costs objects x frame x 5 bytes. When objects x frame pixels would exceed
``MASK_PIXEL_BUDGET``, that image's frame is shrunk (image, boxes and polygons alike) by the square
root of the excess, as the reference does for its full-resolution masks (its limit: 5e8 pixels).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from visionsweep.data.records import ImageRecord
from visionsweep.geometry.masks import polygons_to_masks
from visionsweep.settings import Settings
from visionsweep.tasks import SEGMENTATION_MODELS
from visionsweep.training.detection import (
    DetectionDataset,
    DetectionOps,
    FailureSink,
    Target,
    check_run_records,
    prepare_image,
    random_augment,
    run_loaders,
)

# Largest objects x frame pixels of one image's masks: 250 MB of uint8 masks (and four times that in
# torchvision's float copy) before the frame is shrunk. At the default 600 x 1333 frame that is about
# 310 objects; COCO's busiest images hold under 100.
MASK_PIXEL_BUDGET = 250_000_000


class SegmentationDataset(DetectionDataset):
    """Records to model inputs and targets with ``masks`` (N, H, W) uint8 in the model frame (1 inside
    the object), rasterised from the records' polygons after augmentation and resize. ``mask_pixel_budget``
    bounds N x H x W per image (see the module docstring). Otherwise as ``DetectionDataset``."""

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str], *, min_size: int, max_size: int,
                 augment: bool, mask_pixel_budget: int = MASK_PIXEL_BUDGET):
        super().__init__(records, classes, min_size=min_size, max_size=max_size, augment=augment)
        self.mask_pixel_budget = mask_pixel_budget

    def prepare(self, image: Tensor, target: Target, record: ImageRecord) -> tuple[Tensor, Target]:
        height, width = image.shape[-2:]
        target["polygons"] = record_polygons(record, width, height)
        if self.augment:
            image, target = random_augment(image, target, self._generator())
        min_size, max_size = mask_frame_limits(len(target["boxes"]), image.shape[-2], image.shape[-1],
                                               self.min_size, self.max_size, self.mask_pixel_budget)
        image, target = prepare_image(image, target, min_size=min_size, max_size=max_size, augment=False)
        polygons = target.pop("polygons")
        target["masks"] = torch.from_numpy(polygons_to_masks(polygons, image.shape[-2], image.shape[-1]))
        return image, target


def record_polygons(record: ImageRecord, width: int, height: int) -> list[list[np.ndarray]]:
    """The polygons of a record's objects in pixel-corner coordinates of its (width x height) image: per
    object a list of (K, 2) float64 (x, y) arrays, one per segment."""
    scale = np.array([width, height], dtype=np.float64)
    return [[np.asarray(segment, dtype=np.float64).reshape(-1, 2) * scale for segment in obj.polygons]
            for obj in record.objects]


def mask_frame_limits(objects: int, height: int, width: int, min_size: float, max_size: float,
                      budget: int = MASK_PIXEL_BUDGET) -> tuple[float, float]:
    """The (min_size, max_size) to resize a (height x width) image with so that ``objects`` masks of the
    resulting frame hold at most ``budget`` pixels: the given sizes when they fit, else both shrunk by
    the same factor (the frame keeps its aspect ratio)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    pixels = objects * math.floor(height * scale) * math.floor(width * scale)
    if pixels <= budget:
        return min_size, max_size
    shrink = math.sqrt(budget / pixels)
    return min_size * shrink, max_size * shrink


def segmentation_pipeline(settings: Settings, train_records: Sequence[ImageRecord],
                          val_records: Sequence[ImageRecord], classes: Sequence[str], device: torch.device,
                          on_failures: FailureSink) -> tuple[Any, Any, DetectionOps]:
    """Data loaders and task ops of a Mask R-CNN instance-segmentation run: validation scores masks
    (``iou_type`` "segm": VOC-style with mask IoU and/or COCO ``segm``, per ``validation_metric_type``)."""
    if settings.model_name not in SEGMENTATION_MODELS:
        raise NotImplementedError(f"{settings.model_name} is not an instance-segmentation model; use one of "
                                  f"{', '.join(SEGMENTATION_MODELS)}")
    check_run_records(train_records, val_records)
    size = dict(min_size=settings.min_size, max_size=settings.max_size)
    train_set = SegmentationDataset(train_records, classes, augment=settings.apply_automl_train_augmentations,
                                    **size)
    val_set = SegmentationDataset(val_records, classes, augment=False, **size)
    return (*run_loaders(settings, train_set, val_set, device),
            DetectionOps.from_settings(settings, classes, device, on_failures, iou_type="segm"))
