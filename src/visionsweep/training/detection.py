"""The object-detection part of training (R-CNN family): images and targets, the reference's training
augmentations, batching of images of different sizes, and the loss and metrics of a batch.

Coordinates: records hold boxes as fractions of the image (x0, y0, x1, y1). The dataset turns them into
pixels of the decoded (upright) image, applies the augmentations there, then resizes the image with
torchvision's rule (shorter side to ``min_size``, longer side at most ``max_size``) and scales the boxes
by the exact per-axis ratio. Targets and predictions live in that resized "model frame"; predictions are
normalised by its width and height, which gives the same fractions as the original image.

Targets carry DATASET class indices (0-based, no background); ``DetectionOps`` adds the model's label
offset (1 for Faster R-CNN's background) on the way in and removes it from predictions on the way out.
Crowd objects are trained on as ordinary objects and are ignored by the evaluation (spec section 8.6).

Instance segmentation (``training/segmentation.py``) adds ``polygons`` to the target: per object a list
of (K, 2) float64 arrays of (x, y) pixel-corner coordinates (pixel column c spans [c, c + 1)). Every
geometric step below moves them with the boxes, so masks can be rasterised once, in the final frame.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, get_worker_info
from torchvision.transforms.functional import pil_to_tensor

from visionsweep.data.classification import IMAGENET_MEAN, IMAGENET_STD
from visionsweep.data.detection_labels import check_detection_data
from visionsweep.data.images import DECODE_ERRORS, load_record_rgb
from visionsweep.data.records import ImageRecord, LabeledData
from visionsweep.data.report import DataReport
from visionsweep.errors import TrainingError
from visionsweep.evaluation.detection import DetectionEvaluation
from visionsweep.models.detection import is_rcnn_detector, label_offset
from visionsweep.models.freezing import train_mode
from visionsweep.settings import Settings
from visionsweep.training.environment import make_loader
from visionsweep.training.loop import TaskOps

FailureSink = Callable[[list[tuple[int, str]], str], None]
# boxes (N, 4) float32 pixels, labels (N,) int64, iscrowd (N,) bool[, masks (N, H, W) uint8][, polygons: a list
# of N lists of (K, 2) float64 arrays, pixel-corner x, y]
Target = dict[str, Any]

# Probability of each augmentation decision (spec 3.7).
AUGMENT_PROBABILITY = 0.5
CROP_TRIALS = 50
CROP_MIN_AREA = 0.6  # of the image's area
CROP_ASPECT = (0.5, 2.0)  # open interval of crop height / width
EXPAND_RATIO = (1.0, 2.0)
# The canvas of "expand" is the ImageNet mean colour, i.e. zero after normalisation.
MEAN_COLOUR = tuple(round(255 * m) for m in IMAGENET_MEAN)


def prepare_image(image: Tensor, target: Target, *, min_size: int, max_size: int, augment: bool,
                  rng: np.random.Generator | None = None) -> tuple[Tensor, Target]:
    """Turn a decoded image into model input: optional augmentation, resize, normalisation.

    ``image`` is (3, H, W) uint8 RGB; ``target`` boxes are pixels of that image. Returns a (3, H', W')
    float32 tensor normalised with the ImageNet mean and std, and the target in the resized frame,
    keeping only objects whose box is still valid (x0 < x1, y0 < y1, inside the image) with their
    labels, crowd flags and masks in step.
    """
    if augment:
        if rng is None:
            raise ValueError("augmentation needs a random generator (rng)")
        image, target = random_augment(image, target, rng)
    image, target = resize_for_model(image.float().div_(255.0), target, min_size=min_size, max_size=max_size)
    mean = image.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = image.new_tensor(IMAGENET_STD)[:, None, None]
    return (image - mean) / std, target


def random_augment(image: Tensor, target: Target, rng: np.random.Generator) -> tuple[Tensor, Target]:
    """The reference's R-CNN training augmentation: with probability 0.5 either (half of the time each)
    a random crop around the boxes or an expansion onto a larger canvas; independently, with probability
    0.5, a horizontal flip. No photometric change. Invalid boxes are dropped at the end."""
    if rng.random() < AUGMENT_PROBABILITY:
        if rng.random() < AUGMENT_PROBABILITY:
            image, target = crop_around_boxes(image, target, rng)
        else:
            image, target = expand(image, target, rng)
    if rng.random() < AUGMENT_PROBABILITY:
        image, target = horizontal_flip(image, target)
    return image, keep_valid_objects(target, width=image.shape[-1], height=image.shape[-2])


def expand(image: Tensor, target: Target, rng: np.random.Generator) -> tuple[Tensor, Target]:
    """Paste the image at a random integer offset on a canvas ``r`` times its size, r ~ U(1, 2), filled
    with the mean colour; boxes and polygons shift with it, masks are zero-padded."""
    _, height, width = image.shape
    ratio = rng.uniform(*EXPAND_RATIO)
    new_height, new_width = int(height * ratio), int(width * ratio)
    top = int(rng.integers(0, new_height - height, endpoint=True))
    left = int(rng.integers(0, new_width - width, endpoint=True))
    canvas = image.new_empty((image.shape[0], new_height, new_width))
    canvas[:] = torch.tensor(MEAN_COLOUR, dtype=image.dtype)[:, None, None]
    canvas[:, top:top + height, left:left + width] = image
    target = dict(target, boxes=target["boxes"] + target["boxes"].new_tensor([left, top, left, top]))
    if "masks" in target:
        masks = target["masks"].new_zeros((len(target["masks"]), new_height, new_width))
        masks[:, top:top + height, left:left + width] = target["masks"]
        target["masks"] = masks
    if "polygons" in target:
        target["polygons"] = _move_polygons(target["polygons"], lambda p: p + (left, top))
    return canvas, target


def crop_around_boxes(image: Tensor, target: Target, rng: np.random.Generator) -> tuple[Tensor, Target]:
    """Crop to a random window that contains every box (the union rectangle, integer-truncated).

    Up to 50 candidate windows are drawn: left ~ U{0..x_min}, right ~ U{x_max..W}, top ~ U{0..y_min},
    bottom ~ U{y_max..H} (swapped into order when needed; without boxes the whole image bounds both).
    The first with area >= 0.6 of the image and 0.5 < height / width < 2 is taken; when none qualifies
    the image is left as it is. Boxes are shifted and clipped to the window (clipping only trims the
    fraction of a pixel lost to the truncation of the union rectangle); polygons are shifted only, the
    rasteriser cuts them at the frame.
    """
    _, height, width = image.shape
    boxes = target["boxes"]
    if len(boxes):
        x_min, y_min = int(boxes[:, 0].min()), int(boxes[:, 1].min())
        x_max, y_max = int(boxes[:, 2].max()), int(boxes[:, 3].max())
    else:
        x_min, y_min, x_max, y_max = width, height, 0, 0
    a = rng.integers(0, x_min, size=CROP_TRIALS, endpoint=True)
    b = rng.integers(x_max, width, size=CROP_TRIALS, endpoint=True)
    c = rng.integers(0, y_min, size=CROP_TRIALS, endpoint=True)
    d = rng.integers(y_max, height, size=CROP_TRIALS, endpoint=True)
    left, right = np.minimum(a, b), np.maximum(a, b)
    top, bottom = np.minimum(c, d), np.maximum(c, d)
    crop_width, crop_height = right - left, bottom - top
    good = ((crop_width * crop_height >= CROP_MIN_AREA * width * height)
            & (crop_height > CROP_ASPECT[0] * crop_width) & (crop_height < CROP_ASPECT[1] * crop_width))
    if not good.any():
        return image, target
    k = int(np.argmax(good))
    x0, y0, x1, y1 = int(left[k]), int(top[k]), int(right[k]), int(bottom[k])
    shifted = boxes - boxes.new_tensor([x0, y0, x0, y0])
    limit = boxes.new_tensor([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
    target = dict(target, boxes=torch.minimum(shifted.clamp(min=0), limit))
    if "masks" in target:
        target["masks"] = target["masks"][:, y0:y1, x0:x1]
    if "polygons" in target:
        target["polygons"] = _move_polygons(target["polygons"], lambda p: p - (x0, y0))
    return image[:, y0:y1, x0:x1], target


def horizontal_flip(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Mirror left-right: x0' = W - x1, x1' = W - x0."""
    width = image.shape[-1]
    boxes = target["boxes"]
    target = dict(target, boxes=torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1))
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    if "polygons" in target:
        target["polygons"] = _move_polygons(target["polygons"], lambda p: np.column_stack([width - p[:, 0], p[:, 1]]))
    return image.flip(-1), target


def keep_valid_objects(target: Target, *, width: int, height: int) -> Target:
    """Keep the objects whose box satisfies 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height; every
    per-object field (labels, crowd flags, masks, polygons) is filtered in step."""
    x0, y0, x1, y1 = target["boxes"].unbind(1)
    keep = (x0 < x1) & (y0 < y1) & (x0 >= 0) & (y0 >= 0) & (x1 <= width) & (y1 <= height)
    if bool(keep.all()):
        return target
    flags = keep.tolist()
    return {key: [v for v, k in zip(value, flags) if k] if isinstance(value, list) else value[keep]
            for key, value in target.items()}


def resize_for_model(image: Tensor, target: Target, *, min_size: int, max_size: int) -> tuple[Tensor, Target]:
    """torchvision's detection resize: scale = min(min_size / shorter side, max_size / longer side),
    bilinear, output size floor(size x scale); boxes and polygons scaled by the exact ratios new / old
    per axis and masks resized with nearest neighbour. ``image`` is (3, H, W) float."""
    height, width = image.shape[-2:]
    scale = min(min_size / min(height, width), max_size / max(height, width))
    resized = F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                            align_corners=False)[0]
    new_height, new_width = resized.shape[-2:]
    ratios = target["boxes"].new_tensor([new_width / width, new_height / height] * 2)
    target = dict(target, boxes=target["boxes"] * ratios)
    if "masks" in target and len(target["masks"]):
        target["masks"] = F.interpolate(target["masks"][:, None].float(), size=(new_height, new_width))[:, 0].byte()
    if "polygons" in target:
        factors = (new_width / width, new_height / height)
        target["polygons"] = _move_polygons(target["polygons"], lambda p: p * factors)
    return resized, target


def record_target(record: ImageRecord, class_index: dict[str, int], width: int, height: int) -> Target:
    """The objects of a record in pixels of its (width x height) image, with dataset class indices."""
    boxes = torch.tensor([o.box for o in record.objects], dtype=torch.float32).reshape(-1, 4)
    boxes *= torch.tensor([width, height, width, height], dtype=torch.float32)
    return {
        "boxes": boxes,
        "labels": torch.tensor([class_index[o.label] for o in record.objects], dtype=torch.int64),
        "iscrowd": torch.tensor([o.is_crowd for o in record.objects], dtype=torch.bool),
    }


class DetectionItem(NamedTuple):
    index: int  # position in the dataset
    image: Tensor | None  # (3, H, W) normalised model input; None when the file could not be read
    target: Target | None  # in the model frame
    original_size: tuple[int, int] | None  # (width, height) of the decoded image
    error: str | None


class DetectionBatch(NamedTuple):
    images: list[Tensor]  # (3, H_i, W_i) each; the model pads them to one size
    targets: list[Target]
    indices: Tensor  # (N,) dataset positions of the readable images
    image_sizes: list[tuple[int, int]]  # (width, height) of each model frame
    original_sizes: list[tuple[int, int]]  # (width, height) of each original image
    failures: list[tuple[int, str]]  # (dataset index, error) of the images that could not be read


class DetectionDataset(Dataset):
    """Records to model inputs and targets. ``classes`` fixes each class's index; ``augment`` turns on the
    training augmentations. Unreadable images come back as items with an error, not as exceptions."""

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str], *, min_size: int, max_size: int,
                 augment: bool):
        self.records = list(records)
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.min_size, self.max_size, self.augment = min_size, max_size, augment
        self._rng: np.random.Generator | None = None
        self._rng_pid: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> DetectionItem:
        record = self.records[index]
        try:
            image = pil_to_tensor(load_record_rgb(record))
        except DECODE_ERRORS as error:
            return DetectionItem(index, None, None, None, f"{type(error).__name__}: {error}")
        height, width = image.shape[-2:]
        target = record_target(record, self.class_index, width, height)
        image, target = self.prepare(image, target, record)
        return DetectionItem(index, image, target, (width, height), None)

    def prepare(self, image: Tensor, target: Target, record: ImageRecord) -> tuple[Tensor, Target]:
        """Augment (when training), resize and normalise one decoded image and its target; the
        segmentation dataset extends this with masks."""
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


class DetectionOps(TaskOps):
    """Loss and metrics of R-CNN-family training.

    The loss is the plain sum of the model's loss dict. Validation predicts with the model's own
    thresholds (as the reference) and scores with ``DetectionEvaluation``; with ``validation_loss`` it
    also runs the model in training mode on the same batch (without gradients; the trunk's batch norm is
    frozen, so nothing in the model changes) and reports the mean loss as ``log_loss``.

    With ``iou_type`` "segm" (Mask R-CNN) targets carry masks to the model, predictions keep the model's
    soft masks (K, 1, H, W), and the evaluation matches on masks (cut at 0.5, spec 5.9).
    """

    def __init__(self, *, classes: Sequence[str], label_offset: int, device: torch.device, metric_type: str,
                 iou_threshold: float, validation_loss: bool, track_training_metrics: bool,
                 on_failures: FailureSink, primary_metric: str = "mean_average_precision", iou_type: str = "bbox"):
        self.classes = list(classes)
        self.iou_type = iou_type
        self.label_offset = label_offset
        self.device = device
        self.metric_type = metric_type
        self.iou_threshold = iou_threshold
        self.validation_loss = validation_loss
        self.track_training_metrics = track_training_metrics and metric_type != "none"
        self.on_failures = on_failures
        self.primary_metric = primary_metric
        self._train_evaluation: DetectionEvaluation | None = None


    @classmethod
    def from_settings(cls, settings: Settings, classes: Sequence[str], device: torch.device,
                      on_failures: FailureSink, **options: Any) -> "DetectionOps":
        """The ops of a run with these settings; ``options`` add or override constructor arguments."""
        return cls(**{"classes": classes, "label_offset": label_offset(settings.model_name), "device": device,
                      "metric_type": settings.validation_metric_type,
                      "iou_threshold": settings.validation_iou_threshold,
                      "validation_loss": settings.log_validation_loss == "Enable",
                      "track_training_metrics": settings.log_training_metrics == "Enable",
                      "on_failures": on_failures, "primary_metric": settings.primary_metric, **options})
    def train_step(self, model: nn.Module, batch: DetectionBatch) -> tuple[Tensor, int] | None:
        if batch.failures:
            self.on_failures(batch.failures, "training")
        if not batch.images:
            return None
        images, targets = self._to_device(batch)
        losses = _forward(model, images, targets)
        if self.track_training_metrics:
            self._track_training_batch(model, images, batch)
        return sum(losses.values()), len(images)

    def evaluate(self, model: nn.Module, loader: Iterable) -> dict[str, Any]:
        evaluation = self.new_evaluation()
        if not evaluation.enabled:
            # validation_metric_type none: no validation pass at all; every evaluated epoch counts as best.
            return {self.primary_metric: 0.0}
        loss_sum, loss_images = 0.0, 0
        for batch, predictions in self.predict(model, loader, stage="validation"):
            evaluation.add(predictions, batch.targets, image_sizes=batch.image_sizes,
                           original_sizes=batch.original_sizes)
            if self.validation_loss:
                images, targets = self._to_device(batch)
                train_mode(model)
                try:
                    loss_sum += float(sum(_forward(model, images, targets).values())) * len(images)
                finally:
                    model.eval()
                loss_images += len(images)
        metrics = evaluation.compute()
        if self.validation_loss and loss_images:
            metrics["log_loss"] = loss_sum / loss_images
        return metrics

    def predict(self, model: nn.Module, loader: Iterable, stage: str) -> Iterator[tuple[DetectionBatch, list[dict]]]:
        """Per batch of readable images: the batch and its predictions (on the CPU) with DATASET class
        indices in ``labels``, boxes in the model frame. The model must be in eval mode."""
        for batch in loader:
            if batch.failures:
                self.on_failures(batch.failures, stage)
            if not batch.images:
                continue
            outputs = model([image.to(self.device, non_blocking=True) for image in batch.images])
            yield batch, [self._from_model(output) for output in outputs]

    def new_evaluation(self) -> DetectionEvaluation:
        return DetectionEvaluation(self.classes, self.metric_type, iou_threshold=self.iou_threshold,
                                   iou_type=self.iou_type)

    def training_metrics(self) -> dict[str, float]:
        if self._train_evaluation is None:
            return {}
        metrics = self._train_evaluation.compute()
        self._train_evaluation = None
        return {f"{self.primary_metric}_train": metrics[self.primary_metric]}

    def _track_training_batch(self, model: nn.Module, images: list[Tensor], batch: DetectionBatch) -> None:
        # As the reference: the eval-mode model on the same augmented batch.
        if self._train_evaluation is None:
            self._train_evaluation = self.new_evaluation()
        model.eval()
        try:
            with torch.no_grad():
                outputs = model(images)
        finally:
            train_mode(model)
        self._train_evaluation.add([self._from_model(o) for o in outputs], batch.targets,
                                   image_sizes=batch.image_sizes, original_sizes=batch.original_sizes)

    def _to_device(self, batch: DetectionBatch) -> tuple[list[Tensor], list[Target]]:
        images = [image.to(self.device, non_blocking=True) for image in batch.images]
        targets = [{"boxes": t["boxes"].to(self.device, non_blocking=True),
                    "labels": (t["labels"] + self.label_offset).to(self.device, non_blocking=True)}
                   for t in batch.targets]
        if self.iou_type == "segm":
            for target, source in zip(targets, batch.targets):
                target["masks"] = source["masks"].to(self.device, non_blocking=True)
        return images, targets

    def _from_model(self, output: dict[str, Tensor]) -> dict[str, Tensor]:
        found = {"boxes": output["boxes"].detach().float().cpu(), "scores": output["scores"].detach().float().cpu(),
                 "labels": output["labels"].detach().cpu() - self.label_offset}
        if "masks" in output:
            found["masks"] = output["masks"].detach().float().cpu()
        return found


def detection_pipeline(settings: Settings, train_records: Sequence[ImageRecord], val_records: Sequence[ImageRecord],
                       classes: Sequence[str], device: torch.device,
                       on_failures: FailureSink) -> tuple[Any, Any, DetectionOps]:
    """Data loaders and task ops of an R-CNN-family object-detection run."""
    if not is_rcnn_detector(settings.model_name):
        raise NotImplementedError(f"training {settings.model_name} is not wired into visionsweep train yet; "
                                  "the R-CNN family (fasterrcnn_*, retinanet_resnet50_fpn) is")
    check_run_records(train_records, val_records)
    if settings.tile_grid_size is not None:
        from visionsweep.training.tiling import tiled_detection_pipeline  # it builds on this module

        return tiled_detection_pipeline(settings, train_records, val_records, classes, device, on_failures)
    size = dict(min_size=settings.min_size, max_size=settings.max_size)
    train_set = DetectionDataset(train_records, classes, augment=settings.apply_automl_train_augmentations, **size)
    val_set = DetectionDataset(val_records, classes, augment=False, **size)
    return (*run_loaders(settings, train_set, val_set, device),
            DetectionOps.from_settings(settings, classes, device, on_failures))


def check_run_records(train_records: Sequence[ImageRecord], val_records: Sequence[ImageRecord]) -> None:
    """Raise ``DataError`` when a training or validation record breaks the detection data rules."""
    for stage, records in (("training", train_records), ("validation", val_records)):
        check_detection_data(LabeledData(list(records), DataReport(source=f"the {stage} data",
                                                                   records_read=len(records), kept=len(records))))


def run_loaders(settings: Settings, train_set: Dataset, val_set: Dataset, device: torch.device) -> tuple[Any, Any]:
    """The training (shuffled) and validation loaders of an R-CNN-family run."""
    options = dict(num_workers=settings.num_workers, collate_fn=collate_detection, device=device, seed=settings.seed)
    return (make_loader(train_set, settings.training_batch_size, shuffle=True, **options),
            make_loader(val_set, settings.validation_batch_size, shuffle=False, **options))


def _move_polygons(polygons: list[list[np.ndarray]],
                   move: Callable[[np.ndarray], np.ndarray]) -> list[list[np.ndarray]]:
    return [[move(segment) for segment in segments] for segments in polygons]


def _forward(model: nn.Module, images: list[Tensor], targets: list[Target]) -> dict[str, Tensor]:
    try:
        return model(images, targets)
    except AssertionError as error:  # torchvision's internal checks, typically tripped by extreme aspect ratios
        raise TrainingError(f"the detector rejected a batch ({error}); this usually comes from images with an "
                            "extreme aspect ratio: use squarer images or the default min_size / max_size") from None
