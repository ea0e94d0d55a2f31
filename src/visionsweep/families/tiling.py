"""Tiling for small objects, as one wrapper over any detection family (spec section 4).

* Training: the whole images and the tiles that hold objects are independent samples, shuffled
  together (``training_elements``); each goes through the family's own training pipeline (so a tile is
  effectively enlarged to the model's input size, and YOLOv5 draws mosaic partners from tiles too).
* Validation and prediction: one dataset item per image, holding the whole image and its tiles (at
  validation the tiles that hold objects, as the reference; at prediction every tile). The image is
  decoded once per item and the tiles are cut from it, and a batch of N images carries all their
  tiles, so the tiles of an image go through the model together. The tiles' detections are merged into
  their image's (``visionsweep.geometry.tile_merge``), so everything downstream (validation metrics
  against the whole image's ground truth, prediction lines, evaluation of a trained model) sees one
  merged prediction per image. The validation loss, when on, is that of the whole images.

Indices: items and batches carry RECORD positions (an image's tiles share its position), so that the
failure report of an unreadable image names its record, once. Training-set metrics are off with
tiling, as in the reference.
"""
from __future__ import annotations

import logging
from typing import Any, NamedTuple, Sequence

from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from visionsweep.data.images import DECODE_ERRORS, ImageProblem, describe_decode_error, load_record_rgb, probe_image
from visionsweep.data.records import ImageRecord
from visionsweep.data.tiling import Tiling, all_tiles, tiles_with_objects
from visionsweep.distributed import SINGLE_PROCESS, Ranks
from visionsweep.exporting.graph import ExportOptions, OnnxGraph
from visionsweep.exporting.runtime import OnnxSession
from visionsweep.families.base import RunLoaders, WarmupStart
from visionsweep.families.detection import (
    DetectedBatch,
    DetectionFamily,
    Element,
    ElementDataset,
    ElementDetectionFamily,
    ImageDetections,
    check_run_records,
)
from visionsweep.geometry.tile_layout import Tile
from visionsweep.geometry.tile_merge import TilePredictions, merge_tile_predictions

log = logging.getLogger("visionsweep")


def training_elements(records: Sequence[ImageRecord], tiling: Tiling) -> list[Element]:
    """Every whole image, each followed by its tiles that hold objects (spec 4.3); an image without
    objects, or whose size cannot be read, gets no tiles."""
    elements = []
    for index, record in enumerate(records):
        elements.append(Element(index, None, record.objects))
        size = _image_size(record)
        if size is not None:
            elements.extend(Element(index, tile, objects)
                            for tile, objects in tiles_with_objects(record.objects, tiling, *size))
    return elements


class TiledItem(NamedTuple):
    """One element of a validation or prediction item: its tile (None for the whole image) and the
    family's item for it."""

    tile: Tile | None
    item: Any


class TiledBatch(NamedTuple):
    """A batch of images with their tiles: ``batch`` (the family's) holds every readable element, each
    image directly followed by its tiles, and ``tiles[i]`` says which tile element i is (None for a
    whole image)."""

    batch: Any
    tiles: list[Tile | None]


class TileGroups(Dataset):
    """One item per image of ``items`` (a family's evaluation dataset): the whole image followed by its
    tiles, every tile (``every_tile``, for prediction) or those that hold objects (for validation)."""

    def __init__(self, items: ElementDataset, tiling: Tiling, *, every_tile: bool):
        self.items = items
        self.tiling = tiling
        self.every_tile = every_tile

    def __len__(self) -> int:
        return len(self.items.records)

    def __getitem__(self, index: int) -> list[TiledItem]:
        record = self.items.records[index]
        try:
            image = load_record_rgb(record)
        except DECODE_ERRORS as error:
            return [TiledItem(None, self.items.failed(index, describe_decode_error(error)))]
        choose = all_tiles if self.every_tile else tiles_with_objects
        tiles = [(tile, objects) for tile, objects in choose(record.objects, self.tiling, *image.size)
                 if tile.width >= 1 and tile.height >= 1]  # an image narrower than its grid has empty tiles
        return [TiledItem(None, self.items.item(index, image, record.objects)),
                *(TiledItem(tile, self.items.item(index, image.crop(tile.pixels()), objects))
                  for tile, objects in tiles)]


class TiledDetection(DetectionFamily):
    """``family`` with every image also seen as tiles: training on whole images and tiles, validation
    and prediction on both, merged per image. Its batches are ``TiledBatch`` es of the family's own."""

    def __init__(self, family: ElementDetectionFamily, tiling: Tiling):
        self.family = family
        self.tiling = tiling
        self.settings, self.classes, self.device = family.settings, family.classes, family.device
        self.ranks = family.ranks
        self.iou_type = family.iou_type
        family.track_training_metrics = False  # off with tiling, as the reference

    def training_loaders(self, train: Sequence[ImageRecord], validation: Sequence[ImageRecord]) -> RunLoaders:
        check_run_records(train, validation)
        s = self.settings
        train_set = self.family.training_dataset(train, training_elements(train, self.tiling))
        log.info("tiling %dx%d with overlap %s: %d training samples from %d images", *self.tiling.grid,
                 self.tiling.overlap, len(train_set), len(train))
        if s.log_training_metrics == "Enable":
            log.info("log_training_metrics is ignored with tiling (training metrics are off, as in the reference)")
        return RunLoaders(self.family.loader(train_set, s.training_batch_size, shuffle=True, seed=s.seed,
                                             ranks=self.ranks),
                          self._groups_loader(validation, every_tile=False, seed=s.seed, ranks=self.ranks))

    def prediction_loader(self, records: Sequence[ImageRecord]) -> DataLoader:
        return self._groups_loader(records, every_tile=True, seed=None)

    def _groups_loader(self, records: Sequence[ImageRecord], *, every_tile: bool, seed: int | None,
                       ranks: Ranks = SINGLE_PROCESS) -> DataLoader:
        # A batch holds about validation_batch_size model inputs, as the reference counts tiles in batches.
        # An image and its tiles are one item, so they go to the same rank.
        groups = TileGroups(self.family.evaluation_dataset(records), self.tiling, every_tile=every_tile)
        return self.family.loader(groups, self.tiling.images_per_batch(self.settings.validation_batch_size),
                                  shuffle=False, seed=seed, collate=self.collate, ranks=ranks)

    def collate(self, groups: list[list[TiledItem]]) -> TiledBatch:
        """Flatten the items of several images into one batch, keeping each image before its tiles."""
        elements = [element for group in groups for element in group]
        return TiledBatch(self.family.collate([e.item for e in elements]),
                          [e.tile for e in elements if self.family.is_readable(e.item)])

    # --- the wrapped family's steps and hooks -----------------------------------------------------------

    def train_step(self, model: nn.Module, batch: Any) -> tuple[Tensor, int] | None:
        return self.family.train_step(model, batch)

    def validation_loss_sum(self, model: nn.Module, batch: Any) -> float:
        return self.family.validation_loss_sum(model, batch)

    def training_metrics(self) -> dict[str, float]:
        return self.family.training_metrics()

    def warmup_start(self) -> WarmupStart:
        return self.family.warmup_start()

    def start_epoch(self, epoch: int) -> None:
        self.family.start_epoch(epoch)

    def after_optimizer_step(self, model: nn.Module) -> None:
        self.family.after_optimizer_step(model)

    def training_state(self) -> dict[str, Any]:
        return self.family.training_state()

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.family.load_training_state(state)

    def weights_to_keep(self, model: nn.Module) -> nn.Module:
        return self.family.weights_to_keep(model)

    def inference_model(self, model: nn.Module) -> nn.Module:
        return self.family.inference_model(model)

    # Tiles are cut and merged outside the graph, so the exported graph is the family's own.
    def onnx_graph(self, model: nn.Module, options: ExportOptions) -> OnnxGraph:
        return self.family.onnx_graph(model, options)

    def onnx_model(self, session: OnnxSession) -> nn.Module:
        return self.family.onnx_model(session)

    # --- detection ---------------------------------------------------------------------------------------

    def detect(self, model: nn.Module, batch: TiledBatch, stage: str, *, with_loss: bool = False) -> DetectedBatch:
        """The whole images of a ``TiledBatch`` with the detections of their tiles merged into theirs."""
        elements = self.family.detect(model, batch.batch, stage).images
        if not elements:
            return DetectedBatch([])
        starts = _group_starts(batch.tiles, [found.index for found in elements])
        ends = starts[1:] + [len(batch.tiles)]
        merged = [self._merge(elements[start], [(batch.tiles[i], elements[i]) for i in range(start + 1, end)])
                  for start, end in zip(starts, ends)]
        loss_sum = 0.0
        if with_loss:
            loss_sum = self.validation_loss_sum(model, self.family.subset(batch.batch, starts))
        return DetectedBatch(merged, loss_sum)

    def _merge(self, whole: ImageDetections, tiles: list[tuple[Tile, ImageDetections]]) -> ImageDetections:
        parts = [TilePredictions(tile, found.predictions, found.frame_size) for tile, found in tiles]
        predictions = merge_tile_predictions(whole.predictions, parts, frame_size=whole.frame_size,
                                             original_size=whole.original_size,
                                             nms_threshold=self.tiling.nms_threshold)
        return ImageDetections(whole.index, predictions, whole.target, whole.frame_size, whole.original_size)


def _image_size(record: ImageRecord) -> tuple[int, int] | None:
    """(width, height) of the record's upright image: from the record when known, else from the file's
    header; None when it cannot be read (the whole image then fails, and is reported, when loaded)."""
    if record.width and record.height:
        return record.width, record.height
    probe = probe_image(record.image_path)
    return None if isinstance(probe, ImageProblem) else probe


def _group_starts(tiles: Sequence[Tile | None], indices: Sequence[int]) -> list[int]:
    """Positions of the whole images in a batch whose elements are images each followed by its tiles."""
    starts = [i for i, tile in enumerate(tiles) if tile is None]
    if not starts or starts[0] != 0:
        raise RuntimeError("a tile arrived without its whole image; an image and its tiles must share a batch")
    owners = [indices[start] for start, end in zip(starts, starts[1:] + [len(tiles)]) for _ in range(start, end)]
    if owners != list(indices):
        raise RuntimeError("tiles of different images were grouped together; keep each image before its tiles")
    return starts


