"""Tiling in R-CNN-family training, validation and prediction (spec section 4).

* Training: the full images and the tiles that hold objects are independent samples, shuffled
  together; a tile is cut from the decoded image, then goes through the usual augmentation and resize
  (so it is effectively enlarged to the model's input size).
* Validation and prediction: one dataset item per image, holding the full image and its tiles (at
  validation the tiles that hold objects, as the reference; at prediction every tile). The image is
  decoded once per item and the tiles are sliced from it, and a batch of N images carries all their
  tiles, so the tiles of an image go through the model together. ``TiledDetectionOps.predict`` runs
  the model on images of similar size together (tiles with tiles, full images with full images: a batch
  is padded to its largest image), then merges each image's tile predictions into its own
  (``visionsweep.inference.tiling``) and hands on plain ``DetectionBatch`` es of full images. Everything
  downstream (validation metrics against the full-image ground truth, prediction lines, evaluation of a
  trained model) therefore sees one merged prediction per image.

Indices: items and batches carry RECORD positions (an image's tiles share its position), so that the
failure reports of an unreadable image name its record, once.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.functional import pil_to_tensor

from visionsweep.data.images import load_rgb, probe_image
from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.data.tiling import Tile, Tiling, all_tiles, tiles_with_objects
from visionsweep.inference.tiling import TilePredictions, merge_tile_predictions
from visionsweep.models.detection import label_offset
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

log = logging.getLogger("visionsweep")

FailureSink = Callable[[list[tuple[int, str]], str], None]
# Errors of a file that cannot be decoded (as DetectionDataset).
_DECODE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)
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
    prepared image and target."""

    tile: Tile | None
    item: DetectionItem


class TiledBatch(NamedTuple):
    """A batch of images with their tiles: ``batch`` holds every readable element (each image directly
    followed by its tiles) and ``tiles[i]`` says which tile element i is (None for a full image)."""

    batch: DetectionBatch
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
            image = pil_to_tensor(load_rgb(self.records[index].image_path))
        except _DECODE_ERRORS as error:
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
            image = pil_to_tensor(load_rgb(record.image_path))
        except _DECODE_ERRORS as error:
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
        super().__init__(**options)
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
    starts = [i for i, tile in enumerate(tiles) if tile is None]
    if not starts or starts[0] != 0:
        raise RuntimeError("a tile arrived without its full image; an image and its tiles must share a batch")
    ends = starts[1:] + [len(tiles)]
    merged = []
    for start, end in zip(starts, ends):
        if bool((batch.indices[start:end] != batch.indices[start]).any()):
            raise RuntimeError("tiles of different images were grouped together; keep each image before its tiles")
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

    ``training_batch_size`` counts samples (images and tiles alike), ``validation_batch_size`` images
    (each with its tiles). Training-set metrics are off with tiling, as in the reference; the validation
    loss, when on, is measured on the full images.
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
    val_loader = make_loader(val_set, settings.validation_batch_size, shuffle=False, collate_fn=collate_tile_groups,
                             **options)
    ops = TiledDetectionOps(tiling=tiling, classes=classes, label_offset=label_offset(settings.model_name),
                            device=device, metric_type=settings.validation_metric_type,
                            iou_threshold=settings.validation_iou_threshold,
                            validation_loss=settings.log_validation_loss == "Enable", track_training_metrics=False,
                            on_failures=on_failures, primary_metric=settings.primary_metric)
    return train_loader, val_loader, ops


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
    return None if isinstance(probe, str) else probe
