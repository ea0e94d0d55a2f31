"""The R-CNN family's datasets and batches: records to normalised images and targets in the model frame.

Targets carry DATASET class indices (0-based, no background); the family adds the model's label offset
(1 for Faster R-CNN's background) on the way in and removes it from predictions on the way out. Crowd
objects are trained on as ordinary objects and are ignored by the evaluation (spec section 8.6).

A dataset serves ``Element`` s: whole images, or (with tiling) tiles cut from them; each element is
decoded from its record's file, cut to its tile, then augmented (when training), resized and
normalised (``transforms.prepare_image``).

Instance segmentation (``SegmentationDataset``) adds a mask per object, rasterised from the records'
polygons. The reference rasterises every polygon at the image's full resolution and then crops, pads,
flips and resizes those masks with the image (spec 3.9), so a large photo with many objects holds
objects x width x height bytes before it is shrunk. Here the polygons travel through the augmentations
instead (they are moved exactly like the boxes) and are rasterised once, in the final model frame, so a
mask costs the frame's size (at most ``min_size`` x ``max_size``) whatever the photo's resolution; the
bench (bench/segmentation_masks.md) measures the difference. Segments of one object combine by XOR, as
in the reference (an inner segment is a hole).

Memory guard: torchvision's mask loss copies every target mask of an image to float32, so an image
with very many objects still costs objects x frame x 5 bytes. When objects x frame pixels would exceed
``MASK_PIXEL_BUDGET``, that image's frame is shrunk (image, boxes and polygons alike) by the square
root of the excess, as the reference does for its full-resolution masks (its limit: 5e8 pixels).
"""
from __future__ import annotations

import math
import os
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, get_worker_info
from torchvision.transforms.functional import pil_to_tensor

from visionsweep.data.images import DECODE_ERRORS, describe_decode_error, load_record_rgb
from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.devices import generator_from_state, generator_state
from visionsweep.families.detection import Element, Target, whole_images
from visionsweep.families.rcnn.transforms import prepare_image, random_augment
from visionsweep.geometry.masks import polygons_to_masks

# Largest objects x frame pixels of one image's masks: 250 MB of uint8 masks (and four times that in
# torchvision's float copy) before the frame is shrunk. At the default 600 x 1333 frame that is about
# 310 objects; COCO's busiest images hold under 100.
MASK_PIXEL_BUDGET = 250_000_000


class DetectionItem(NamedTuple):
    index: int  # the record's position in the dataset
    image: Tensor | None  # (3, H, W) normalised model input; None when the file could not be read
    target: Target | None  # in the model frame
    original_size: tuple[int, int] | None  # (width, height) of the decoded image (or tile)
    error: str | None


class DetectionBatch(NamedTuple):
    images: list[Tensor]  # (3, H_i, W_i) each; the model pads them to one size
    targets: list[Target]
    indices: Tensor  # (N,) record positions of the readable images
    image_sizes: list[tuple[int, int]]  # (width, height) of each model frame
    original_sizes: list[tuple[int, int]]  # (width, height) of each original image
    failures: list[tuple[int, str]]  # (record position, error) of the images that could not be read

    def subset(self, positions: Sequence[int]) -> DetectionBatch:
        """The images at ``positions`` alone (the failures stay)."""
        return DetectionBatch(images=[self.images[i] for i in positions], targets=[self.targets[i] for i in positions],
                              indices=self.indices[list(positions)],
                              image_sizes=[self.image_sizes[i] for i in positions],
                              original_sizes=[self.original_sizes[i] for i in positions], failures=self.failures)


def objects_target(objects: Sequence[ObjectAnnotation], class_index: dict[str, int], width: int,
                   height: int) -> Target:
    """Objects in pixels of a (width x height) image, with dataset class indices."""
    boxes = torch.tensor([o.box for o in objects], dtype=torch.float32).reshape(-1, 4)
    boxes *= torch.tensor([width, height, width, height], dtype=torch.float32)
    return {
        "boxes": boxes,
        "labels": torch.tensor([class_index[o.label] for o in objects], dtype=torch.int64),
        "iscrowd": torch.tensor([o.is_crowd for o in objects], dtype=torch.bool),
    }


class DetectionDataset(Dataset):
    """Elements (whole images unless ``elements`` says otherwise) to model inputs and targets.
    ``classes`` fixes each class's index; ``augment`` turns on the training augmentations. Unreadable
    images come back as items with an error, not as exceptions."""

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str], *, min_size: int, max_size: int,
                 augment: bool, elements: Sequence[Element] | None = None):
        self.records = list(records)
        self.elements = list(elements) if elements is not None else whole_images(self.records)
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.min_size, self.max_size, self.augment = min_size, max_size, augment
        self._rng: np.random.Generator | None = None
        self._rng_pid: int | None = None

    def __len__(self) -> int:
        return len(self.elements)

    def __getitem__(self, position: int) -> DetectionItem:
        index, tile, objects = self.elements[position]
        try:
            image = load_record_rgb(self.records[index])
        except DECODE_ERRORS as error:
            return self.failed(index, describe_decode_error(error))
        if tile is not None:
            image = image.crop(tile.pixels())
        return self.item(index, image, objects)

    def item(self, index: int, image: Image.Image, objects: Sequence[ObjectAnnotation]) -> DetectionItem:
        """The item of a decoded image (or tile) holding ``objects``."""
        pixels = pil_to_tensor(image)
        height, width = pixels.shape[-2:]
        prepared, target = self.prepare(pixels, objects_target(objects, self.class_index, width, height), objects)
        return DetectionItem(index, prepared, target, (width, height), None)

    def failed(self, index: int, error: str) -> DetectionItem:
        return DetectionItem(index, None, None, None, error)

    def prepare(self, image: Tensor, target: Target, objects: Sequence[ObjectAnnotation]) -> tuple[Tensor, Target]:
        """Augment (when training), resize and normalise one decoded image and its target."""
        return prepare_image(image, target, min_size=self.min_size, max_size=self.max_size, augment=self.augment,
                             rng=self._generator() if self.augment else None)

    def _generator(self) -> np.random.Generator:
        # One generator per process: a loader worker seeds it from its own torch seed (distinct per
        # worker and run), the main process from the global torch seed that the run's seed set.
        if self._rng is None or self._rng_pid != os.getpid():
            worker = get_worker_info()
            self._rng = np.random.default_rng(worker.seed if worker is not None else torch.initial_seed())
            self._rng_pid = os.getpid()
        return self._rng

    def generator_state(self) -> dict[str, Any] | None:
        """This process's augmentation generator as plain data (None before its first draw here): it runs on
        across epochs, so a resumed run restores it (``restore_generator_state``)."""
        if self._rng is None or self._rng_pid != os.getpid():
            return None
        return {"state": generator_state(self._rng)}

    def restore_generator_state(self, state: dict[str, Any] | None) -> None:
        self._rng = None if state is None else generator_from_state(state["state"])
        self._rng_pid = None if state is None else os.getpid()


class SegmentationDataset(DetectionDataset):
    """``DetectionDataset`` whose targets also hold ``masks`` (N, H, W) uint8 in the model frame (1 inside
    the object), rasterised from the objects' polygons after augmentation and resize.
    ``mask_pixel_budget`` bounds N x H x W per image (see the module docstring)."""

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str], *, min_size: int, max_size: int,
                 augment: bool, elements: Sequence[Element] | None = None,
                 mask_pixel_budget: int = MASK_PIXEL_BUDGET):
        super().__init__(records, classes, min_size=min_size, max_size=max_size, augment=augment, elements=elements)
        self.mask_pixel_budget = mask_pixel_budget

    def prepare(self, image: Tensor, target: Target, objects: Sequence[ObjectAnnotation]) -> tuple[Tensor, Target]:
        height, width = image.shape[-2:]
        target["polygons"] = objects_polygons(objects, width, height)
        if self.augment:
            image, target = random_augment(image, target, self._generator())
        min_size, max_size = mask_frame_limits(len(target["boxes"]), image.shape[-2], image.shape[-1],
                                               self.min_size, self.max_size, self.mask_pixel_budget)
        image, target = prepare_image(image, target, min_size=min_size, max_size=max_size, augment=False)
        polygons = target.pop("polygons")
        target["masks"] = torch.from_numpy(polygons_to_masks(polygons, image.shape[-2], image.shape[-1]))
        return image, target


def objects_polygons(objects: Sequence[ObjectAnnotation], width: int, height: int) -> list[list[np.ndarray]]:
    """The polygons of objects in pixel-corner coordinates of their (width x height) image: per object a
    list of (K, 2) float64 (x, y) arrays, one per segment."""
    scale = np.array([width, height], dtype=np.float64)
    return [[np.asarray(segment, dtype=np.float64).reshape(-1, 2) * scale for segment in obj.polygons]
            for obj in objects]


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


def collate_detection(items: list[DetectionItem]) -> DetectionBatch:
    """Keep images of different sizes as a list (the model pads them); unreadable ones become failures."""
    good = [item for item in items if item.error is None]
    return DetectionBatch(
        images=[item.image for item in good],
        targets=[item.target for item in good],
        indices=torch.tensor([item.index for item in good], dtype=torch.int64),
        image_sizes=[(item.image.shape[-1], item.image.shape[-2]) for item in good],
        original_sizes=[item.original_size for item in good],
        failures=[(item.index, item.error) for item in items if item.error is not None],
    )
