"""Tiling in training, validation and prediction of the R-CNN family and YOLOv5 (spec section 4).

* Training: the full images and the tiles that hold objects are independent samples, shuffled
  together; a tile is cut from the decoded image, then goes through the usual augmentation and resize
  (so it is effectively enlarged to the model's input size).
* Validation and prediction: one dataset item per image, holding the full image and its tiles (at
  validation the tiles that hold objects, as the reference; at prediction every tile). The image is
  decoded once per item and the tiles are sliced from it, and a batch of N images carries all their
  tiles, so the tiles of an image go through the model together. ``TiledDetectionOps.predict`` runs
  the model on images of similar size together (tiles with tiles, full images with full images: a batch
  is padded to its largest image), then merges each image's tile predictions into its own
  (``visionsweep.geometry.tile_merge``) and hands on plain ``DetectionBatch`` es of full images. Everything
  downstream (validation metrics against the full-image ground truth, prediction lines, evaluation of a
  trained model) therefore sees one merged prediction per image.

YOLOv5 takes the same path with its own items: training elements go through the mosaic (whose three
partners are drawn from all elements, tiles included, as the reference), and validation / prediction
items letterbox the full image and each tile to ``img_size``; ``TiledYoloOps`` merges the predictions,
which YOLO gives in original pixels of each element, into the image's original pixels.

Indices: items and batches carry RECORD positions (an image's tiles share its position), so that the
failure reports of an unreadable image name its record, once.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms.functional import pil_to_tensor

from visionsweep.data.images import DECODE_ERRORS, ImageProblem, load_record_rgb, probe_image
from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.data.tiling import Tiling, all_tiles, tiles_with_objects
from visionsweep.geometry.tile_layout import Tile
from visionsweep.data.yolo_pipeline import YoloSample, YoloTrainTransform, letterbox_for_inference, to_yolo_labels
from visionsweep.geometry.tile_merge import TilePredictions, merge_tile_predictions
from visionsweep.settings import Settings
from visionsweep.training.detection import (
    DetectionBatch,
    DetectionDataset,
    DetectionItem,
    DetectionOps,
    collate_detection,
    prepare_image,
    record_target,
)
from visionsweep.training.environment import make_loader
from visionsweep.training.yolo import ReportingYoloDataset, YoloBatch, YoloItem, YoloOps, collate_yolo

log = logging.getLogger("visionsweep")

FailureSink = Callable[[list[tuple[int, str]], str], None]
# torchvision's R-CNN transform pads a batch to a multiple of this.
_SIZE_DIVISIBLE = 32


class TileElement(NamedTuple):
    """One training sample: the record's position, the tile (None for the full image) and the objects
    in it (boxes as fractions of the tile, or of the image for the full image)."""

    index: int
    tile: Tile | None
    objects: tuple[ObjectAnnotation, ...]


class TiledItem(NamedTuple):
    """One element of a validation or prediction item: its tile (None for the full image) and the
    prepared input (a ``DetectionItem``, or a ``YoloItem`` for YOLOv5)."""

    tile: Tile | None
    item: Any


class TiledBatch(NamedTuple):
    """A batch of images with their tiles: ``batch`` (a ``DetectionBatch`` or ``YoloBatch``) holds every
    readable element, each image directly followed by its tiles, and ``tiles[i]`` says which tile
    element i is (None for a full image)."""

    batch: Any
    tiles: list[Tile | None]


def training_elements(records: Sequence[ImageRecord], tiling: Tiling) -> list[TileElement]:
    """Every full image, each followed by its tiles that hold objects (spec 4.3); an image without
    objects, or whose size cannot be read, gets no tiles."""
    elements = []
    for index, record in enumerate(records):
        elements.append(TileElement(index, None, record.objects))
        size = _image_size(record)
        if size is not None:
            elements.extend(TileElement(index, tile, objects)
                            for tile, objects in tiles_with_objects(record.objects, tiling, *size))
    return elements


class TiledTrainingDataset(DetectionDataset):
    """Full images and their tiles that hold objects, one sample each (``training_elements``)."""

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str], tiling: Tiling, *, min_size: int,
                 max_size: int, augment: bool):
        super().__init__(records, classes, min_size=min_size, max_size=max_size, augment=augment)
        self.tiling = tiling
        self.elements = training_elements(self.records, tiling)

    def __len__(self) -> int:
        return len(self.elements)

    def __getitem__(self, position: int) -> DetectionItem:
        index, tile, objects = self.elements[position]
        try:
            image = pil_to_tensor(load_record_rgb(self.records[index]))
        except DECODE_ERRORS as error:
            return DetectionItem(index, None, None, None, f"{type(error).__name__}: {error}")
        return _prepare(self, index, image, tile, objects)


class TileGroupDataset(DetectionDataset):
    """One item per image: the full image followed by its tiles, every tile (``every_tile``, for
    prediction) or those that hold objects (for validation). No augmentation."""

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str], tiling: Tiling, *, min_size: int,
                 max_size: int, every_tile: bool):
        super().__init__(records, classes, min_size=min_size, max_size=max_size, augment=False)
        self.tiling = tiling
        self.every_tile = every_tile

    def __getitem__(self, index: int) -> list[TiledItem]:
        record = self.records[index]
        try:
            image = pil_to_tensor(load_record_rgb(record))
        except DECODE_ERRORS as error:
            return [TiledItem(None, DetectionItem(index, None, None, None, f"{type(error).__name__}: {error}"))]
        height, width = image.shape[-2:]
        choose = all_tiles if self.every_tile else tiles_with_objects
        tiles = [(tile, objects) for tile, objects in choose(record.objects, self.tiling, width, height)
                 if tile.width >= 1 and tile.height >= 1]  # an image narrower than its grid has empty tiles
        return [TiledItem(tile, _prepare(self, index, image, tile, objects))
                for tile, objects in [(None, record.objects), *tiles]]


def collate_tile_groups(groups: list[list[TiledItem]]) -> TiledBatch:
    """Flatten the items of several images into one batch, keeping each image before its tiles."""
    elements = [element for group in groups for element in group]
    return TiledBatch(collate_detection([e.item for e in elements]),
                      [e.tile for e in elements if e.item.error is None])


class TiledDetectionOps(DetectionOps):
    """``DetectionOps`` whose ``predict`` takes ``TiledBatch`` es and yields, per batch, the full images
    with predictions merged from their tiles (training steps are unchanged: tiles are ordinary samples)."""

    def __init__(self, *, tiling: Tiling, **options: Any):
        super().__init__(**{**options, "track_training_metrics": False})  # off with tiling, as the reference
        self.tiling = tiling

    def predict(self, model: nn.Module, loader: Iterable, stage: str) -> Iterator[tuple[DetectionBatch, list[dict]]]:
        for tiled in loader:
            batch = tiled.batch
            if batch.failures:
                self.on_failures(batch.failures, stage)
            if not batch.images:
                continue
            outputs = forward_by_size(model, [image.to(self.device, non_blocking=True) for image in batch.images])
            yield merge_batch(batch, tiled.tiles, [self._from_model(o) for o in outputs], self.tiling.nms_threshold)


def forward_by_size(model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """The model's eval-mode outputs for ``images``, in order, running images that pad to the same
    size together, so that small tiles are not padded up to the size of a full image."""
    groups: dict[tuple[int, int], list[int]] = {}
    for position, image in enumerate(images):
        key = tuple(-(-side // _SIZE_DIVISIBLE) for side in image.shape[-2:])
        groups.setdefault(key, []).append(position)
    outputs: list[dict[str, Tensor] | None] = [None] * len(images)
    for positions in groups.values():
        for position, output in zip(positions, model([images[p] for p in positions])):
            outputs[position] = output
    return outputs


def merge_batch(batch: DetectionBatch, tiles: Sequence[Tile | None], predictions: Sequence[dict[str, Tensor]],
                nms_threshold: float) -> tuple[DetectionBatch, list[dict[str, Tensor]]]:
    """Fold the tile elements of a batch into their images: a batch of the full images only (targets,
    frame and original sizes of the full images) and their merged predictions, in the model frame of
    each full image."""
    starts = _group_starts(tiles, batch.indices)
    ends = starts[1:] + [len(tiles)]
    merged = []
    for start, end in zip(starts, ends):
        parts = [TilePredictions(tiles[i], predictions[i], batch.image_sizes[i]) for i in range(start + 1, end)]
        merged.append(merge_tile_predictions(predictions[start], parts, frame_size=batch.image_sizes[start],
                                             original_size=batch.original_sizes[start],
                                             nms_threshold=nms_threshold))
    full = DetectionBatch(images=[batch.images[i] for i in starts], targets=[batch.targets[i] for i in starts],
                          indices=batch.indices[starts], image_sizes=[batch.image_sizes[i] for i in starts],
                          original_sizes=[batch.original_sizes[i] for i in starts], failures=batch.failures)
    return full, merged


def tiled_detection_pipeline(settings: Settings, train_records: Sequence[ImageRecord],
                             val_records: Sequence[ImageRecord], classes: Sequence[str], device: torch.device,
                             on_failures: FailureSink) -> tuple[Any, Any, TiledDetectionOps]:
    """Loaders and ops of an R-CNN-family run with ``tile_grid_size`` set (the data is already checked).

    ``training_batch_size`` counts samples (images and tiles alike); a validation batch holds
    ``Tiling.images_per_batch(validation_batch_size)`` images with their tiles. Training-set metrics are
    off with tiling, as in the reference; the validation loss, when on, is measured on the full images.
    """
    tiling = Tiling.from_settings(settings)
    if tiling is None:
        raise ValueError("tiled_detection_pipeline needs tile_grid_size to be set")
    size = dict(min_size=settings.min_size, max_size=settings.max_size)
    train_set = TiledTrainingDataset(train_records, classes, tiling, augment=settings.apply_automl_train_augmentations,
                                     **size)
    val_set = TileGroupDataset(val_records, classes, tiling, every_tile=False, **size)
    log.info("tiling %dx%d with overlap %s: %d training samples from %d images", *tiling.grid, tiling.overlap,
             len(train_set), len(train_records))
    if settings.log_training_metrics == "Enable":
        log.info("log_training_metrics is ignored with tiling (training metrics are off, as in the reference)")
    options = dict(num_workers=settings.num_workers, device=device, seed=settings.seed)
    train_loader = make_loader(train_set, settings.training_batch_size, shuffle=True, collate_fn=collate_detection,
                               **options)
    val_loader = make_loader(val_set, tiling.images_per_batch(settings.validation_batch_size), shuffle=False,
                             collate_fn=collate_tile_groups, **options)
    return train_loader, val_loader, TiledDetectionOps.from_settings(settings, classes, device, on_failures,
                                                                     tiling=tiling)


# --- YOLOv5 -------------------------------------------------------------------------------------------


class TiledYoloTrainingDataset(ReportingYoloDataset):
    """YOLOv5 training samples: full images and their tiles that hold objects (``training_elements``),
    each through ``transform``; mosaic partners are drawn from all elements, tiles included."""

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str], img_size: int,
                 transform: YoloTrainTransform, tiling: Tiling):
        super().__init__(records, classes, img_size, transform)
        self.tiling = tiling
        self.elements = training_elements(self.records, tiling)

    def __len__(self) -> int:
        return len(self.elements)

    def __getitem__(self, position: int) -> YoloItem:
        index = self.elements[position].index
        try:
            sample = self._element_sample(position)
        except DECODE_ERRORS as error:
            return YoloItem(index, None, None, None, None, [(index, _describe(error))])
        rng = self._generator()
        group, failures = [sample], []
        for other in rng.integers(0, len(self.elements), size=self.transform.samples_needed - 1).tolist():
            try:
                group.append(self._element_sample(other))
            except DECODE_ERRORS as error:  # as ReportingYoloDataset: reported, replaced by the sample itself
                failures.append((self.elements[other].index, _describe(error)))
                group.append(sample)
        augmented = self.transform(group, rng)
        return YoloItem(index, _chw(augmented.image), to_yolo_labels(augmented), None, None, failures)

    def _element_sample(self, position: int) -> YoloSample:
        index, tile, objects = self.elements[position]
        image = np.asarray(load_record_rgb(self.records[index]))
        return _yolo_sample(image, tile, objects, self.class_index)


class TiledYoloGroupDataset(ReportingYoloDataset):
    """One YOLOv5 item per image: the full image followed by its tiles (every tile, or those that hold
    objects), each letterboxed to ``img_size`` with its ``LetterboxInfo`` (original size = the tile's)
    and its objects in its own pixels."""

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str], img_size: int, tiling: Tiling, *,
                 every_tile: bool):
        super().__init__(records, classes, img_size)
        self.tiling = tiling
        self.every_tile = every_tile

    def __getitem__(self, index: int) -> list[TiledItem]:
        record = self.records[index]
        try:
            image = np.asarray(load_record_rgb(record))
        except DECODE_ERRORS as error:
            return [TiledItem(None, YoloItem(index, None, None, None, None, [(index, _describe(error))]))]
        height, width = image.shape[:2]
        choose = all_tiles if self.every_tile else tiles_with_objects
        tiles = [(tile, objects) for tile, objects in choose(record.objects, self.tiling, width, height)
                 if tile.width >= 1 and tile.height >= 1]
        items = []
        for tile, objects in [(None, record.objects), *tiles]:
            sample = _yolo_sample(image, tile, objects, self.class_index)
            letterboxed, info = letterbox_for_inference(sample, self.img_size)
            target = {"boxes": torch.from_numpy(sample.boxes), "labels": torch.from_numpy(sample.classes),
                      "iscrowd": torch.tensor([o.is_crowd for o in objects], dtype=torch.bool)}
            items.append(TiledItem(tile, YoloItem(index, _chw(letterboxed.image), to_yolo_labels(letterboxed), info,
                                                  target, [])))
        return items


def collate_yolo_tile_groups(groups: list[list[TiledItem]]) -> TiledBatch:
    """``collate_tile_groups`` for YOLOv5 items: one stacked ``YoloBatch`` of every element."""
    elements = [element for group in groups for element in group]
    return TiledBatch(collate_yolo([e.item for e in elements]), [e.tile for e in elements if e.item.image is not None])


class TiledYoloOps(YoloOps):
    """``YoloOps`` whose detection pass takes ``TiledBatch`` es: all elements of a batch go through the
    network at once (they share the letterboxed size), then each image's tile predictions are merged into
    its own. Evaluation and prediction then see full images only; the validation loss is that of the full
    images. Training steps are unchanged."""

    def __init__(self, *, tiling: Tiling, **options: Any):
        super().__init__(**{**options, "track_training_metrics": False})  # off with tiling, as the reference
        self.tiling = tiling

    def _detect(self, model: nn.Module, loader: Iterable, stage: str
                ) -> Iterator[tuple[YoloBatch, list[dict[str, Tensor]], list[Tensor]]]:
        for tiled in loader:
            found = self._detect_batch(model, tiled.batch, stage)
            if found is not None:
                yield merge_yolo_batch(tiled.batch, tiled.tiles, *found, self.tiling.nms_threshold)


def merge_yolo_batch(batch: YoloBatch, tiles: Sequence[Tile | None], predictions: Sequence[dict[str, Tensor]],
                     raw: list[Tensor], nms_threshold: float
                     ) -> tuple[YoloBatch, list[dict[str, Tensor]], list[Tensor]]:
    """Fold the tile elements of a YOLOv5 batch into their images: the batch of full images (targets
    renumbered), their merged predictions in original pixels, and the raw network maps of the full
    images (for the validation loss)."""
    starts = _group_starts(tiles, batch.indices)
    ends = starts[1:] + [len(tiles)]
    merged = []
    for start, end in zip(starts, ends):
        size = batch.infos[start].original_size
        parts = [TilePredictions(tiles[i], predictions[i], batch.infos[i].original_size) for i in range(start + 1, end)]
        merged.append(merge_tile_predictions(predictions[start], parts, frame_size=size, original_size=size,
                                             nms_threshold=nms_threshold))
    keep = torch.tensor(starts, dtype=torch.int64)
    renumber = torch.full((len(tiles),), -1, dtype=torch.int64)
    renumber[keep] = torch.arange(len(starts))
    owner = renumber[batch.targets[:, 0].long()]
    targets = batch.targets[owner >= 0].clone()
    targets[:, 0] = owner[owner >= 0].to(targets.dtype)
    full = YoloBatch(images=batch.images[keep], targets=targets, infos=[batch.infos[i] for i in starts],
                     ground_truth=[batch.ground_truth[i] for i in starts], indices=batch.indices[keep],
                     failures=batch.failures)
    return full, merged, [level[keep.to(level.device)] for level in raw]


# --- helpers ------------------------------------------------------------------------------------------


def _prepare(dataset: DetectionDataset, index: int, image: Tensor, tile: Tile | None,
             objects: tuple[ObjectAnnotation, ...]) -> DetectionItem:
    """Cut ``tile`` from the decoded (3, H, W) image (the whole image when None) and prepare it with the
    objects in it; the item's original size is the tile's."""
    if tile is not None:
        x0, y0, x1, y1 = tile.pixels()
        image = image[:, y0:y1, x0:x1]
    height, width = image.shape[-2:]
    record = replace(dataset.records[index], objects=objects)
    target = record_target(record, dataset.class_index, width, height)
    image, target = prepare_image(image, target, min_size=dataset.min_size, max_size=dataset.max_size,
                                  augment=dataset.augment, rng=dataset._generator() if dataset.augment else None)
    return DetectionItem(index, image, target, (width, height), None)


def _image_size(record: ImageRecord) -> tuple[int, int] | None:
    """(width, height) of the record's upright image: from the record when known, else from the file's
    header; None when it cannot be read (the full image then fails, and is reported, when loaded)."""
    if record.width and record.height:
        return record.width, record.height
    probe = probe_image(record.image_path)
    return None if isinstance(probe, ImageProblem) else probe


def _group_starts(tiles: Sequence[Tile | None], indices: Tensor) -> list[int]:
    """Positions of the full images in a batch whose elements are images each followed by its tiles."""
    starts = [i for i, tile in enumerate(tiles) if tile is None]
    if not starts or starts[0] != 0:
        raise RuntimeError("a tile arrived without its full image; an image and its tiles must share a batch")
    owners = torch.repeat_interleave(indices[starts], torch.tensor(np.diff(starts + [len(tiles)])))
    if not torch.equal(owners, indices):
        raise RuntimeError("tiles of different images were grouped together; keep each image before its tiles")
    return starts


def _yolo_sample(image: np.ndarray, tile: Tile | None, objects: Sequence[ObjectAnnotation],
                 class_index: dict[str, int]) -> YoloSample:
    """A (H, W, 3) image cut to ``tile`` (whole when None) with ``objects`` (fractions of the cut) as
    pixel boxes of it, for the YOLO pipeline (which slices tiles as [y0:y1, x0:x1] of the array)."""
    if tile is not None:
        x0, y0, x1, y1 = tile.pixels()
        image = np.ascontiguousarray(image[y0:y1, x0:x1])
    height, width = image.shape[:2]
    boxes = np.array([o.box for o in objects], dtype=np.float32).reshape(-1, 4)
    boxes *= np.array([width, height, width, height], dtype=np.float32)
    classes = np.array([class_index[o.label] for o in objects], dtype=np.int64)
    return YoloSample(image, boxes, classes)


def _chw(image: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"
