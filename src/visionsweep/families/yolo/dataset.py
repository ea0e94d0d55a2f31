"""The YOLOv5 family's datasets and batches.

Training items go through ``YoloTrainTransform`` (mosaic partners are drawn from all elements, tiles
included when tiling, as the reference); evaluation items are resized (longer side ``img_size``) and carry
their ``LetterboxInfo`` and their objects in original pixels with crowd flags. Each evaluation image has
its own frame, the smallest multiple of 32 on each side that holds it (``batch_frame``: 160 x 128 for 4:3
landscape photos at ``img_size`` 160, not 160 x 160), and the network sees it centred in that frame
whatever else is in its batch: ``collate_yolo`` pads a batch to the largest frame in it, and
``YoloBatch.by_frame`` cuts it into one batch per frame again. Loaders sort images by aspect ratio
(``element_sizes``), so that a batch mostly holds one frame. Items say where they come from
and what failed instead of raising: an unreadable mosaic partner is reported in ``failures`` and
replaced by the item's own image.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from visionsweep.data.images import DECODE_ERRORS, describe_decode_error, load_record_rgb
from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.families.detection import Element, Target, whole_images
from visionsweep.families.yolo.pipeline import (
    PAD_VALUE,
    LetterboxInfo,
    YoloDataset,
    YoloSample,
    YoloTrainTransform,
    batch_frame,
    centred_padding,
    resize_for_inference,
    to_yolo_labels,
    yolo_collate,
)


class YoloItem(NamedTuple):
    index: int  # the record's position in the dataset
    image: Tensor | None  # uint8 (3, h, w), S x S when training; None when the image could not be read
    labels: Tensor | None  # (n, 6) rows (0, class, cx, cy, w, h) normalised to this image's w and h
    info: LetterboxInfo | None  # how to undo the resize (evaluation items only; the padding is the batch's)
    target: Target | None  # the objects in original pixels (evaluation items only)
    failures: list[tuple[int, str]]  # (record position, error) of images that could not be read


class YoloBatch(NamedTuple):
    images: Tensor  # uint8 (B, 3, H, W): each image centred in its frame, the frame centred in H x W, grey around
    targets: Tensor  # (n, 6) rows (image index in the batch, class, cx, cy, w, h) normalised to the image's frame
    infos: list[LetterboxInfo | None]  # with each image's padding in its frame
    ground_truth: list[Target | None]  # per image, original pixels
    indices: Tensor  # (B,) record positions
    failures: list[tuple[int, str]]
    frames: list[tuple[int, int]]  # (width, height) of each image's frame; all S x S when training

    def by_frame(self) -> Iterator[tuple[list[int], YoloBatch]]:
        """The batch as one batch per frame: (positions in this batch, its images cropped to that frame); nothing
        for a batch without a readable image."""
        if len(set(self.frames)) == 1:
            yield list(range(len(self.images))), self
            return
        height, width = self.images.shape[-2:]
        for frame in dict.fromkeys(self.frames):
            positions = [i for i, own in enumerate(self.frames) if own == frame]
            left, top = centred_padding(frame, (width, height))
            part = self.subset(positions)
            yield positions, part._replace(images=part.images[:, :, top:top + frame[1], left:left + frame[0]])

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
                         failures=self.failures, frames=[self.frames[i] for i in positions])


class YoloElementDataset(YoloDataset):
    """Elements (whole images unless ``elements`` says otherwise) as YOLO items: through ``transform``
    when training, resized (``item``) without one."""

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str], img_size: int,
                 transform: YoloTrainTransform | None = None, elements: Sequence[Element] | None = None):
        super().__init__(records, classes, img_size, transform)
        self.elements = list(elements) if elements is not None else whole_images(self.records)
        # In shared memory, so that loader workers (which hold copies of the dataset) see it change.
        self._mosaic_closed = torch.zeros(1, dtype=torch.bool).share_memory_()

    def close_mosaic(self) -> None:
        """From now on, train on single images (letterboxed, then augmented) instead of mosaics, in this
        process and in every loader worker."""
        self._mosaic_closed.fill_(True)

    @property
    def mosaic_closed(self) -> bool:
        return bool(self._mosaic_closed.item())

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
        transform = self.transform.without_mosaic() if self.mosaic_closed else self.transform
        sample = _sample(np.asarray(image), objects, self.class_index)
        rng = self._generator()
        group, failures = [sample], []
        for other in rng.integers(0, len(self.elements), size=transform.samples_needed - 1).tolist():
            try:
                group.append(_sample(np.asarray(self._element_image(other)), self.elements[other].objects,
                                     self.class_index))
            except DECODE_ERRORS as error:
                failures.append((self.elements[other].index, describe_decode_error(error)))
                group.append(sample)
        augmented = transform(group, rng)
        return YoloItem(index, _chw(augmented.image), to_yolo_labels(augmented), None, None, failures)

    def element_sizes(self) -> list[tuple[int, int] | None]:
        """Each element's (width, height) in pixels, from the records (None where a record's size was never
        checked), without reading an image: what batches are sorted by to be padded little."""
        sizes: list[tuple[int, int] | None] = []
        for index, tile, _ in self.elements:
            record = self.records[index]
            if tile is not None:
                x0, y0, x1, y1 = tile.pixels()
                sizes.append((x1 - x0, y1 - y0))
            else:
                sizes.append((record.width, record.height) if record.width and record.height else None)
        return sizes

    def item(self, index: int, image: Image.Image, objects: Sequence[ObjectAnnotation]) -> YoloItem:
        """The evaluation item of a decoded image (or tile) holding ``objects``: resized, padded later by
        ``collate_yolo``."""
        sample = _sample(np.asarray(image), objects, self.class_index)
        resized, info = resize_for_inference(sample, self.img_size)
        target = {"boxes": torch.from_numpy(sample.boxes), "labels": torch.from_numpy(sample.classes),
                  "iscrowd": torch.tensor([o.is_crowd for o in objects], dtype=torch.bool)}
        return YoloItem(index, _chw(resized.image), to_yolo_labels(resized), info, target, [])

    def failed(self, index: int, error: str) -> YoloItem:
        return YoloItem(index, None, None, None, None, [(index, error)])

    def _element_image(self, position: int) -> Image.Image:
        index, tile, _ = self.elements[position]
        image = load_record_rgb(self.records[index])
        return image if tile is None else image.crop(tile.pixels())


def collate_yolo(items: Sequence[YoloItem]) -> YoloBatch:
    """Centre each readable item in its frame and the frames in the largest one, stack them
    (``yolo_collate``) and gather every failure of the batch."""
    good = [item for item in items if item.image is not None]
    failures = [failure for item in items for failure in item.failures]
    frames = [batch_frame([_size(item)]) for item in good]
    if good:
        largest = (max(w for w, _ in frames), max(h for _, h in frames))
        good = [_framed(item, frame, largest) for item, frame in zip(good, frames)]
        images, targets, infos = yolo_collate([(item.image, item.labels, item.info) for item in good])
    else:
        images, targets, infos = torch.zeros((0, 3, 0, 0), dtype=torch.uint8), torch.zeros((0, 6)), []
    return YoloBatch(images, targets, infos, [item.target for item in good],
                     torch.tensor([item.index for item in good], dtype=torch.int64), failures, frames)


def _sample(image: np.ndarray, objects: Sequence[ObjectAnnotation], class_index: dict[str, int]) -> YoloSample:
    """A (H, W, 3) image with ``objects`` (fractions of it) as pixel boxes, for the YOLO pipeline."""
    height, width = image.shape[:2]
    boxes = np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4)
    boxes *= np.array([width, height, width, height], dtype=np.float32)
    classes = np.array([class_index[o.label] for o in objects], dtype=np.int64)
    return YoloSample(image, boxes, classes)


def _size(item: YoloItem) -> tuple[int, int]:
    return item.image.shape[2], item.image.shape[1]


def _framed(item: YoloItem, frame: tuple[int, int], largest: tuple[int, int]) -> YoloItem:
    """The item centred in its grey ``frame`` (labels normalised to it, ``info.pad`` set), the frame centred in
    ``largest`` (both (width, height))."""
    size = _size(item)
    if size == frame == largest:
        return item
    left, top = centred_padding(size, frame)
    labels = item.labels.clone()
    labels[:, 2:6] *= labels.new_tensor([size[0], size[1], size[0], size[1]])
    labels[:, 2:4] += labels.new_tensor([left, top])
    labels[:, 2:6] /= labels.new_tensor([frame[0], frame[1], frame[0], frame[1]])
    info = replace(item.info, pad=(left, top)) if item.info is not None else None
    frame_left, frame_top = centred_padding(frame, largest)
    left, top = left + frame_left, top + frame_top
    image = torch.full((3, largest[1], largest[0]), PAD_VALUE, dtype=torch.uint8)
    image[:, top:top + size[1], left:left + size[0]] = item.image
    return item._replace(image=image, labels=labels, info=info)


def _chw(image: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
