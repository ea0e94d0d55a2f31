"""The YOLOv5 family's datasets and batches.

Training items go through ``YoloTrainTransform`` (mosaic partners are drawn from all elements, tiles
included when tiling, as the reference); evaluation items are letterboxed to ``img_size`` and carry their
``LetterboxInfo`` and their objects in original pixels with crowd flags. Items say where they come from
and what failed instead of raising: an unreadable mosaic partner is reported in ``failures`` and
replaced by the item's own image.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from visionsweep.data.images import DECODE_ERRORS, describe_decode_error, load_record_rgb
from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.families.detection import Element, Target, whole_images
from visionsweep.families.yolo.pipeline import (
    LetterboxInfo,
    YoloDataset,
    YoloSample,
    YoloTrainTransform,
    letterbox_for_inference,
    to_yolo_labels,
    yolo_collate,
)


class YoloItem(NamedTuple):
    index: int  # the record's position in the dataset
    image: Tensor | None  # uint8 (3, S, S); None when the image could not be read
    labels: Tensor | None  # (n, 6) rows (0, class, cx, cy, w, h) normalised to S
    info: LetterboxInfo | None  # how to undo the letterbox (evaluation items only)
    target: Target | None  # the objects in original pixels (evaluation items only)
    failures: list[tuple[int, str]]  # (record position, error) of images that could not be read


class YoloBatch(NamedTuple):
    images: Tensor  # uint8 (B, 3, S, S) of the readable images
    targets: Tensor  # (n, 6) rows (image index in the batch, class, cx, cy, w, h) normalised to S
    infos: list[LetterboxInfo | None]
    ground_truth: list[Target | None]  # per image, original pixels
    indices: Tensor  # (B,) record positions
    failures: list[tuple[int, str]]

    def subset(self, positions: Sequence[int]) -> YoloBatch:
        """The images at ``positions`` alone, their targets renumbered (the failures stay)."""
        keep = torch.tensor(list(positions), dtype=torch.int64)
        renumber = torch.full((len(self.images),), -1, dtype=torch.int64)
        renumber[keep] = torch.arange(len(keep))
        owner = renumber[self.targets[:, 0].long()]
        targets = self.targets[owner >= 0].clone()
        targets[:, 0] = owner[owner >= 0].to(targets.dtype)
        return YoloBatch(images=self.images[keep], targets=targets, infos=[self.infos[i] for i in positions],
                         ground_truth=[self.ground_truth[i] for i in positions], indices=self.indices[keep],
                         failures=self.failures)


class YoloElementDataset(YoloDataset):
    """Elements (whole images unless ``elements`` says otherwise) as YOLO items: through ``transform``
    when training, letterboxed (``item``) without one."""

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str], img_size: int,
                 transform: YoloTrainTransform | None = None, elements: Sequence[Element] | None = None):
        super().__init__(records, classes, img_size, transform)
        self.elements = list(elements) if elements is not None else whole_images(self.records)

    def __len__(self) -> int:
        return len(self.elements)

    def __getitem__(self, position: int) -> YoloItem:
        index, _, objects = self.elements[position]
        try:
            image = self._element_image(position)
        except DECODE_ERRORS as error:
            return self.failed(index, describe_decode_error(error))
        if self.transform is None:
            return self.item(index, image, objects)
        sample = _sample(np.asarray(image), objects, self.class_index)
        rng = self._generator()
        group, failures = [sample], []
        for other in rng.integers(0, len(self.elements), size=self.transform.samples_needed - 1).tolist():
            try:
                group.append(_sample(np.asarray(self._element_image(other)), self.elements[other].objects,
                                     self.class_index))
            except DECODE_ERRORS as error:
                failures.append((self.elements[other].index, describe_decode_error(error)))
                group.append(sample)
        augmented = self.transform(group, rng)
        return YoloItem(index, _chw(augmented.image), to_yolo_labels(augmented), None, None, failures)

    def item(self, index: int, image: Image.Image, objects: Sequence[ObjectAnnotation]) -> YoloItem:
        """The letterboxed evaluation item of a decoded image (or tile) holding ``objects``."""
        sample = _sample(np.asarray(image), objects, self.class_index)
        letterboxed, info = letterbox_for_inference(sample, self.img_size)
        target = {"boxes": torch.from_numpy(sample.boxes), "labels": torch.from_numpy(sample.classes),
                  "iscrowd": torch.tensor([o.is_crowd for o in objects], dtype=torch.bool)}
        return YoloItem(index, _chw(letterboxed.image), to_yolo_labels(letterboxed), info, target, [])

    def failed(self, index: int, error: str) -> YoloItem:
        return YoloItem(index, None, None, None, None, [(index, error)])

    def _element_image(self, position: int) -> Image.Image:
        index, tile, _ = self.elements[position]
        image = load_record_rgb(self.records[index])
        return image if tile is None else image.crop(tile.pixels())


def collate_yolo(items: Sequence[YoloItem]) -> YoloBatch:
    """Stack the readable items (``yolo_collate``) and gather every failure of the batch."""
    good = [item for item in items if item.image is not None]
    failures = [failure for item in items for failure in item.failures]
    if good:
        images, targets, infos = yolo_collate([(item.image, item.labels, item.info) for item in good])
    else:
        images, targets, infos = torch.zeros((0, 3, 0, 0), dtype=torch.uint8), torch.zeros((0, 6)), []
    return YoloBatch(images, targets, infos, [item.target for item in good],
                     torch.tensor([item.index for item in good], dtype=torch.int64), failures)


def _sample(image: np.ndarray, objects: Sequence[ObjectAnnotation], class_index: dict[str, int]) -> YoloSample:
    """A (H, W, 3) image with ``objects`` (fractions of it) as pixel boxes, for the YOLO pipeline."""
    height, width = image.shape[:2]
    boxes = np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4)
    boxes *= np.array([width, height, width, height], dtype=np.float32)
    classes = np.array([class_index[o.label] for o in objects], dtype=np.int64)
    return YoloSample(image, boxes, classes)


def _chw(image: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
