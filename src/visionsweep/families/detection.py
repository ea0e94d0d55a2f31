"""What every detection family shares: the per-image prediction record, the element a training sample
is cut from, the data rules of a run, and the validation pass.

Frames: a family predicts in the frame of what it fed the model. ``ImageDetections.frame_size`` is the
(width, height) its boxes are in and ``original_size`` that of the image (or tile) as cut from the
file; the two are equal for a family that maps its boxes back to original pixels (YOLOv5), and differ
for one that predicts in its resized input (R-CNN). Normalising boxes by the frame size gives
fractions of the original either way.
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Protocol, Sequence

import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from visionsweep.data.detection_labels import check_detection_data
from visionsweep.data.records import ImageRecord, LabeledData, ObjectAnnotation
from visionsweep.data.report import DataReport
from visionsweep.distributed import SINGLE_PROCESS, Ranks
from visionsweep.evaluation.detection import DetectionEvaluation
from visionsweep.families.base import ModelFamily, RunLoaders
from visionsweep.families.loaders import make_loader
from visionsweep.geometry.tile_layout import Tile
from visionsweep.settings import Settings

# An image's objects: boxes (N, 4) float32 pixels x0, y0, x1, y1, labels (N,) int64 dataset class
# indices, iscrowd (N,) bool[, masks (N, H, W) uint8][, while an R-CNN input is transformed: polygons, per
# object a list of (K, 2) float64 arrays of pixel-corner x, y]
Target = dict[str, Any]


@dataclass(frozen=True)
class ImageDetections:
    """What a detector found in one image: ``predictions`` {boxes (K, 4) pixels of ``frame_size``, scores
    (K,), labels (K,) dataset class indices[, masks (K, 1, H, W) probabilities]}, best first; ``target``
    the labelled objects in the same frame; sizes as (width, height)."""

    index: int
    predictions: dict[str, Tensor]
    target: Target
    frame_size: tuple[int, int]
    original_size: tuple[int, int]


class Element(NamedTuple):
    """One training sample of a detection run: the record's position, the tile cut from its image
    (None for the whole image) and the objects in it (boxes as fractions of what is cut)."""

    index: int
    tile: Tile | None
    objects: tuple[ObjectAnnotation, ...]


def whole_images(records: Sequence[ImageRecord]) -> list[Element]:
    """One element per record: its whole image with all its objects."""
    return [Element(index, None, record.objects) for index, record in enumerate(records)]


def check_run_records(train: Sequence[ImageRecord], validation: Sequence[ImageRecord]) -> None:
    """Raise ``DataError`` when a training or validation record breaks the detection data rules."""
    for stage, records in (("training", train), ("validation", validation)):
        check_detection_data(LabeledData(list(records), DataReport(source=f"the {stage} data",
                                                                   records_read=len(records), kept=len(records))))


@dataclass(frozen=True)
class DetectedBatch:
    """The detections of a batch's readable images, in batch order, and (when asked for) the batch's
    validation loss summed over its images, on the scale of the training loss."""

    images: list[ImageDetections]
    loss_sum: float = 0.0


class ElementDataset(Protocol):
    """A detection family's dataset as tiling sees it: the records, and the item of a decoded image."""

    records: list[ImageRecord]

    def item(self, index: int, image: Image.Image, objects: Sequence[ObjectAnnotation]) -> Any:
        """The item of record ``index`` from a decoded RGB image (its whole image or a tile of it) holding
        ``objects`` (boxes as fractions of that image)."""

    def failed(self, index: int, error: str) -> Any:
        """The item of record ``index`` whose image could not be decoded."""


class DetectionFamily(ModelFamily[ImageDetections]):
    """A family of object detectors: subclasses train (``train_step``) and detect (``detect``,
    ``validation_loss_sum``); prediction records and the validation pass are shared."""

    settings: Settings
    classes: list[str]
    device: torch.device
    iou_type: str = "bbox"  # "segm" when the model predicts masks and is scored on them

    @abstractmethod
    def detect(self, model: nn.Module, batch: Any, stage: str, *, with_loss: bool = False) -> DetectedBatch:
        """The detections of a batch (model in eval mode); ``with_loss`` adds the validation loss."""

    @abstractmethod
    def validation_loss_sum(self, model: nn.Module, batch: Any) -> float:
        """The validation loss of a batch summed over its images, on the scale of the training loss."""

    def predict_batch(self, model: nn.Module, batch: Any, stage: str) -> list[ImageDetections]:
        return self.detect(model, batch, stage).images

    def new_evaluation(self) -> DetectionEvaluation:
        return DetectionEvaluation(self.classes, self.settings.validation_metric_type,
                                   iou_threshold=self.settings.validation_iou_threshold, iou_type=self.iou_type)

    @property
    def validation_loss(self) -> bool:
        return self.settings.log_validation_loss == "Enable"

    def evaluate(self, model: nn.Module, loader: Iterable) -> dict[str, Any]:
        """Scores predictions made with the model's own thresholds (as the reference) with
        ``DetectionEvaluation``; with ``log_validation_loss`` adds the mean validation loss as ``log_loss``."""
        evaluation = self.new_evaluation()
        primary = self.settings.primary_metric
        if not evaluation.enabled:
            # validation_metric_type none: no validation pass at all; every evaluated epoch counts as best.
            return {primary: 0.0}
        loss_sum, images = 0.0, 0
        for batch in loader:
            detected = self.detect(model, batch, "validation", with_loss=self.validation_loss)
            found = detected.images
            evaluation.add([f.predictions for f in found], [f.target for f in found],
                           image_sizes=[f.frame_size for f in found], original_sizes=[f.original_size for f in found])
            loss_sum += detected.loss_sum
            images += len(found)
        if self.ranks.is_distributed:  # every rank's share, in rank order, which is dataset order
            shares = self.ranks.gather({"evaluation": evaluation.state(), "loss_sum": loss_sum, "images": images})
            evaluation = self.new_evaluation()
            for share in shares:
                evaluation.merge_state(share["evaluation"])
            loss_sum, images = sum(s["loss_sum"] for s in shares), sum(s["images"] for s in shares)
        metrics = evaluation.compute()
        if self.validation_loss and images:
            metrics["log_loss"] = loss_sum / images
        return metrics


def on_cpu(predictions: dict[str, Tensor], label_offset: int = 0) -> dict[str, Tensor]:
    """A model's predictions of one image detached on the CPU, labels as dataset class indices."""
    found = {"boxes": predictions["boxes"].detach().float().cpu(),
             "scores": predictions["scores"].detach().float().cpu(),
             "labels": predictions["labels"].detach().cpu() - label_offset}
    if "masks" in predictions:
        found["masks"] = predictions["masks"].detach().float().cpu()
    return found


# Prediction may sort images (``evaluation_order``) within runs of this many batches: the predictions of a
# run wait for its end, to be given back in input order.
PREDICTION_WINDOW_BATCHES = 8


class ElementDetectionFamily(DetectionFamily):
    """A detection family whose samples are ``Element`` s: whole images, or tiles cut from them. Subclasses
    say how elements become datasets and batches (``training_dataset``, ``evaluation_dataset``,
    ``collate``, ``is_readable``, ``subset``); the loaders are shared, and ``visionsweep.families.tiling``
    uses the same methods to cut images into tiles for any such family."""

    @abstractmethod
    def training_dataset(self, records: Sequence[ImageRecord], elements: Sequence[Element]) -> Dataset:
        """The training samples: ``elements`` cut from ``records``, augmented as the settings say."""

    @abstractmethod
    def evaluation_dataset(self, records: Sequence[ImageRecord]) -> ElementDataset:
        """One unaugmented item per record, for validation and prediction."""

    @abstractmethod
    def collate(self, items: list[Any]) -> Any:
        """One batch of items; unreadable ones become its failures."""

    @abstractmethod
    def is_readable(self, item: Any) -> bool:
        """Whether ``item`` holds an image (not a decoding failure)."""

    @abstractmethod
    def subset(self, batch: Any, positions: Sequence[int]) -> Any:
        """The batch of the readable images at ``positions`` alone (failures kept)."""

    def evaluation_order(self, dataset: Dataset, window: int | None = None) -> list[int] | None:
        """The order in which validation and prediction go through ``dataset`` (None: as it is), e.g. images of
        one shape together. Prediction sorts only within each run of ``window`` positions (None: all)."""
        return None

    def training_loaders(self, train: Sequence[ImageRecord], validation: Sequence[ImageRecord]) -> RunLoaders:
        check_run_records(train, validation)
        s = self.settings
        validation_set = self.evaluation_dataset(validation)
        return RunLoaders(self.loader(self.training_dataset(train, whole_images(train)), s.training_batch_size,
                                      shuffle=True, seed=s.seed, ranks=self.ranks),
                          self.loader(validation_set, s.validation_batch_size, shuffle=False, seed=s.seed,
                                      ranks=self.ranks, order=self.evaluation_order(validation_set)))

    def prediction_loader(self, records: Sequence[ImageRecord]) -> DataLoader:
        dataset, batch_size = self.evaluation_dataset(records), self.settings.validation_batch_size
        return self.loader(dataset, batch_size, shuffle=False, seed=None,
                           order=self.evaluation_order(dataset, batch_size * PREDICTION_WINDOW_BATCHES))

    def predict(self, model: nn.Module, loader: Iterable, stage: str = "prediction") -> Iterator[ImageDetections]:
        """The predictions of ``prediction_loader`` 's batches in input order: each run of
        ``PREDICTION_WINDOW_BATCHES`` batches is held back until it ends and given back sorted."""
        window: list[ImageDetections] = []
        for position, batch in enumerate(loader, start=1):
            window.extend(self.predict_batch(model, batch, stage))
            if position % PREDICTION_WINDOW_BATCHES == 0:
                yield from sorted(window, key=lambda found: found.index)
                window = []
        yield from sorted(window, key=lambda found: found.index)

    def loader(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int | None,
               collate: Callable[[list[Any]], Any] | None = None, ranks: Ranks = SINGLE_PROCESS,
               order: Sequence[int] | None = None) -> DataLoader:
        """A loader of this run's workers and device over ``ranks`` ' share of ``dataset``, batching with
        ``collate`` (default: the family's), in ``order`` when given (see ``make_loader``)."""
        return make_loader(dataset, batch_size, shuffle=shuffle, num_workers=self.settings.num_workers,
                           collate_fn=collate or self.collate, device=self.device, seed=seed, ranks=ranks,
                           order=order)
