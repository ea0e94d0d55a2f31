"""YOLOv5 training through the shared loop: its data loaders, and ``YoloOps`` (loss, EMA, validation).

Data: the training set goes through ``YoloTrainTransform`` (mosaic when ``apply_mosaic_for_yolo``, the
reference's random affine and horizontal flip when ``apply_automl_train_augmentations``), validation and
prediction through the letterbox alone (longer side to ``img_size``, never enlarged by the padding step).
Batches are uint8 (B, 3, S, S) images and YOLO targets (n, 6) rows (image index, class, cx, cy, w, h)
normalised to S; ``YoloOps`` feeds the network ``images / 255``.

Weights: ``YoloOps`` keeps an exponential moving average of the weights (``ModelEMA``, the reference's
decay 0.9999 with a 2000-update warm-up), updated after every optimizer step. The loop evaluates, keeps as
the best epoch, saves and finally loads the AVERAGED weights (``weights_to_keep``). The reference saves
the average but validates the raw weights, so its best epoch is chosen on a model it never saves; here
the metrics always describe the saved model.

Evaluation happens in original image pixels: predictions are un-letterboxed, ground truth comes from the
records (with crowd flags), and both sizes given to the evaluator are the original (width, height).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from visionsweep.data.detection_labels import check_detection_data
from visionsweep.data.images import DECODE_ERRORS
from visionsweep.data.records import ImageRecord, LabeledData
from visionsweep.data.report import DataReport
from visionsweep.data.tiling import Tiling
from visionsweep.data.yolo_pipeline import (
    AffineParams,
    LetterboxInfo,
    YoloDataset,
    YoloSample,
    YoloTrainTransform,
    letterbox_for_inference,
    load_sample,
    multi_scale_size,
    resize_batch,
    to_yolo_labels,
    yolo_collate,
)
from visionsweep.evaluation.detection import DetectionEvaluation
from visionsweep.geometry.yolo_boxes import postprocess
from visionsweep.models.freezing import train_mode
from visionsweep.models.yolo import ModelEMA, YoloLoss
from visionsweep.settings import Settings
from visionsweep.training.environment import make_loader
from visionsweep.training.loop import TaskOps

FailureSink = Callable[[list[tuple[int, str]], str], None]
Target = dict[str, Tensor]  # boxes (N, 4) float32 pixels x0, y0, x1, y1; labels (N,) int64; iscrowd (N,) bool


class YoloItem(NamedTuple):
    index: int  # position in the dataset
    image: Tensor | None  # uint8 (3, S, S); None when the image could not be read
    labels: Tensor | None  # (n, 6) rows (0, class, cx, cy, w, h) normalised to S
    info: LetterboxInfo | None  # how to undo the letterbox (validation and prediction only)
    target: Target | None  # the record's objects in original pixels (validation and prediction only)
    failures: list[tuple[int, str]]  # (dataset index, error) of images that could not be read


class YoloBatch(NamedTuple):
    images: Tensor  # uint8 (B, 3, S, S) of the readable images
    targets: Tensor  # (n, 6) rows (image index in the batch, class, cx, cy, w, h) normalised to S
    infos: list[LetterboxInfo | None]
    ground_truth: list[Target | None]  # per image, original pixels
    indices: Tensor  # (B,) dataset positions
    failures: list[tuple[int, str]]


class ReportingYoloDataset(YoloDataset):
    """``YoloDataset`` whose items say where they come from and what failed instead of raising.

    Without a transform (validation, prediction) an item also carries its ``LetterboxInfo`` and its
    objects in original pixels with crowd flags. When a mosaic partner cannot be read it is reported in
    ``failures`` and replaced by the item's own image.
    """

    def __getitem__(self, index: int) -> YoloItem:
        record = self.records[index]
        try:
            sample = load_sample(record, self.class_index)
        except DECODE_ERRORS as error:
            return YoloItem(index, None, None, None, None, [(index, _describe(error))])
        if self.transform is None:
            letterboxed, info = letterbox_for_inference(sample, self.img_size)
            target = {"boxes": torch.from_numpy(sample.boxes), "labels": torch.from_numpy(sample.classes),
                      "iscrowd": torch.tensor([o.is_crowd for o in record.objects], dtype=torch.bool)}
            return YoloItem(index, _chw(letterboxed), to_yolo_labels(letterboxed), info, target, [])
        rng = self._generator()
        group, failures = [sample], []
        for other in rng.integers(0, len(self.records), size=self.transform.samples_needed - 1).tolist():
            try:
                group.append(load_sample(self.records[other], self.class_index))
            except DECODE_ERRORS as error:
                failures.append((other, _describe(error)))
                group.append(sample)
        augmented = self.transform(group, rng)
        return YoloItem(index, _chw(augmented), to_yolo_labels(augmented), None, None, failures)


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


class YoloOps(TaskOps):
    """Loss, weight averaging and metrics of YOLOv5 training.

    ``make_loss(model)`` builds the ``YoloLoss`` with the run's gains; the loss of a batch is YOLO's
    (box + objectness + class) x batch size, as in the reference, so its 100-per-batch divergence check
    and its learning rate apply unchanged. With ``multi_scale`` each training batch is resized to a side
    drawn by ``multi_scale_size`` (a multiple of 32 in [S/2, 3S/2]) from a generator seeded with
    ``seed``. Validation keeps ``score_thresh`` and ``nms_thresh`` as at prediction (as the reference),
    and with ``validation_loss`` adds ``log_loss``: the validation loss on the training loss's scale
    (the per-image loss x ``training_batch_size``), so the two can be compared.
    """

    def __init__(self, *, classes: Sequence[str], device: torch.device, img_size: int,
                 make_loss: Callable[[nn.Module], YoloLoss], multi_scale: bool, seed: int | None,
                 score_thresh: float, nms_thresh: float, metric_type: str, iou_threshold: float,
                 validation_loss: bool, training_batch_size: int, track_training_metrics: bool,
                 on_failures: FailureSink, primary_metric: str = "mean_average_precision"):
        self.classes = list(classes)
        self.device = device
        self.img_size = img_size
        self.make_loss = make_loss
        self.multi_scale = multi_scale
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.metric_type = metric_type
        self.iou_threshold = iou_threshold
        self.validation_loss = validation_loss
        self.training_batch_size = training_batch_size
        self.track_training_metrics = track_training_metrics and metric_type != "none"
        self.on_failures = on_failures
        self.primary_metric = primary_metric
        self.ema: ModelEMA | None = None
        self._loss: YoloLoss | None = None
        self._rng = np.random.default_rng(seed)
        self._parts: dict[str, Tensor] = {}
        self._part_images = 0
        self._train_evaluation: DetectionEvaluation | None = None

    # --- the loop's interface ------------------------------------------------------------------------

    def train_step(self, model: nn.Module, batch: YoloBatch) -> tuple[Tensor, int] | None:
        if batch.failures:
            self.on_failures(batch.failures, "training")
        if not len(batch.images):
            return None
        if self.ema is None:  # the first step: the average starts from the weights training starts from
            self.ema = ModelEMA(model)
        images = self._to_input(batch.images)
        if self.multi_scale:
            images = resize_batch(images, multi_scale_size(self.img_size, self._rng))
        loss, parts = self._loss_of(model)(model(images), batch.targets.to(self.device, non_blocking=True))
        count = len(images)
        for name, value in parts.items():
            self._parts[name] = self._parts.get(name, 0.0) + value * count
        self._part_images += count
        if self.track_training_metrics:
            self._track_training_batch(model, images, batch.targets)
        return loss, count

    def after_optimizer_step(self, model: nn.Module) -> None:
        if self.ema is not None:
            self.ema.update(model)

    def weights_to_keep(self, model: nn.Module) -> nn.Module:
        return self.ema.module if self.ema is not None else model

    def evaluate(self, model: nn.Module, loader: Iterable) -> dict[str, Any]:
        evaluation = self.new_evaluation()
        if not evaluation.enabled:
            # validation_metric_type none: no validation pass at all; every evaluated epoch counts as best.
            return {self.primary_metric: 0.0}
        loss_sum = torch.zeros((), device=self.device)
        images = 0
        for batch, predictions, raw in self._detect(model, loader, stage="validation"):
            sizes = [info.original_size for info in batch.infos]
            evaluation.add(predictions, batch.ground_truth, image_sizes=sizes, original_sizes=sizes)
            if self.validation_loss:
                loss, _ = self._loss_of(model)(raw, batch.targets.to(self.device, non_blocking=True))
                loss_sum += loss.detach().float()  # the batch's mean loss x its size: a sum over images
            images += len(batch.images)
        metrics = evaluation.compute()
        if self.validation_loss and images:
            metrics["log_loss"] = loss_sum.item() / images * self.training_batch_size
        return metrics

    def training_metrics(self) -> dict[str, float]:
        metrics = {}
        if self._part_images:
            metrics = {f"train_{name}_loss": float(value) / self._part_images for name, value in self._parts.items()}
        self._parts, self._part_images = {}, 0
        if self._train_evaluation is not None:
            computed = self._train_evaluation.compute()
            metrics[f"{self.primary_metric}_train"] = computed[self.primary_metric]
            self._train_evaluation = None
        return metrics

    # --- prediction ------------------------------------------------------------------------------------

    def predict(self, model: nn.Module, loader: Iterable, stage: str) -> Iterator[tuple[YoloBatch, list[Target]]]:
        """Per batch of readable images: the batch and each image's detections (on the CPU) as
        ``{"boxes": (K, 4) original pixels, "scores": (K,), "labels": (K,) class indices}``, best first.
        The model must be in eval mode; the loader's dataset must have no transform (letterboxed items)."""
        for batch, predictions, _ in self._detect(model, loader, stage):
            yield batch, predictions

    def new_evaluation(self) -> DetectionEvaluation:
        return DetectionEvaluation(self.classes, self.metric_type, iou_threshold=self.iou_threshold)

    # --- helpers ---------------------------------------------------------------------------------------

    def _detect(self, model: nn.Module, loader: Iterable, stage: str
                ) -> Iterator[tuple[YoloBatch, list[Target], list[Tensor]]]:
        for batch in loader:
            found = self._detect_batch(model, batch, stage)
            if found is not None:
                yield batch, *found

    def _detect_batch(self, model: nn.Module, batch: YoloBatch, stage: str
                      ) -> tuple[list[Target], list[Tensor]] | None:
        """Each image's detections (on the CPU, original pixels) and the raw maps; None for a batch with no
        readable image. Unreadable images go to ``on_failures``."""
        if batch.failures:
            self.on_failures(batch.failures, stage)
        if not len(batch.images):
            return None
        decoded, raw = model(self._to_input(batch.images))
        found = postprocess(decoded, score_thresh=self.score_thresh, iou_thresh=self.nms_thresh,
                            letterbox=batch.infos)
        return [_on_cpu(d.boxes, d.scores, d.labels) for d in found], raw

    def _loss_of(self, model: nn.Module) -> YoloLoss:
        # Built on first use from whichever network comes first; the anchors and class count it reads
        # are the same in the trained model and its average.
        if self._loss is None:
            self._loss = self.make_loss(model)
        return self._loss

    def _to_input(self, images: Tensor) -> Tensor:
        return images.to(self.device, non_blocking=True).float().div_(255.0)

    def _track_training_batch(self, model: nn.Module, images: Tensor, targets: Tensor) -> None:
        # As the reference: the eval-mode model (not the average) on the same augmented batch, scored in
        # the frame of the network input.
        if self._train_evaluation is None:
            self._train_evaluation = self.new_evaluation()
        model.eval()
        try:
            with torch.no_grad():
                decoded, _ = model(images)
        finally:
            train_mode(model)
        found = postprocess(decoded, score_thresh=self.score_thresh, iou_thresh=self.nms_thresh)
        height, width = images.shape[-2:]
        truth = yolo_targets_to_pixels(targets.cpu(), len(images), width, height)
        self._train_evaluation.add([_on_cpu(d.boxes, d.scores, d.labels) for d in found], truth,
                                   image_sizes=[(width, height)] * len(images),
                                   original_sizes=[(width, height)] * len(images))


def yolo_targets_to_pixels(targets: Tensor, batch_size: int, width: int, height: int) -> list[Target]:
    """Split (n, 6) YOLO targets by image into per-image ``{"boxes", "labels", "iscrowd"}`` with boxes as
    pixel (x0, y0, x1, y1) of a ``width`` x ``height`` frame (crowd flags are not in YOLO targets: all false)."""
    scale = targets.new_tensor([width, height, width, height])
    boxes = torch.cat((targets[:, 2:4] - targets[:, 4:6] / 2, targets[:, 2:4] + targets[:, 4:6] / 2), 1) * scale
    image = targets[:, 0].long()
    return [{"boxes": boxes[image == i], "labels": targets[image == i, 1].long(),
             "iscrowd": torch.zeros(int((image == i).sum()), dtype=torch.bool)} for i in range(batch_size)]


def yolo_pipeline(settings: Settings, train_records: Sequence[ImageRecord], val_records: Sequence[ImageRecord],
                  classes: Sequence[str], device: torch.device, on_failures: FailureSink
                  ) -> tuple[Any, Any, YoloOps]:
    """Data loaders and task ops of a YOLOv5 object-detection run."""
    for stage, records in (("training", train_records), ("validation", val_records)):
        check_detection_data(LabeledData(list(records), DataReport(source=f"the {stage} data",
                                                                   records_read=len(records), kept=len(records))))
    affine = AffineParams(degrees=settings.degrees, translate=settings.translate, scale=settings.scale,
                          shear=settings.shear)
    transform = YoloTrainTransform(settings.img_size, mosaic=settings.apply_mosaic_for_yolo,
                                   augment=settings.apply_automl_train_augmentations, affine=affine)
    tiling = Tiling.from_settings(settings)
    if tiling is None:
        train_set = ReportingYoloDataset(train_records, classes, settings.img_size, transform)
        val_set = ReportingYoloDataset(val_records, classes, settings.img_size)
        val_collate, ops_type, val_batch_size = collate_yolo, YoloOps, settings.validation_batch_size
    else:  # full images and tiles, merged per image at validation (training/tiling.py)
        from visionsweep.training import tiling as tiled  # it builds on this module

        train_set = tiled.TiledYoloTrainingDataset(train_records, classes, settings.img_size, transform, tiling)
        val_set = tiled.TiledYoloGroupDataset(val_records, classes, settings.img_size, tiling, every_tile=False)
        val_collate, ops_type = tiled.collate_yolo_tile_groups, functools.partial(tiled.TiledYoloOps, tiling=tiling)
        val_batch_size = tiling.images_per_batch(settings.validation_batch_size)
    loader_options = dict(num_workers=settings.num_workers, device=device, seed=settings.seed)
    train_loader = make_loader(train_set, settings.training_batch_size, shuffle=True, collate_fn=collate_yolo,
                               **loader_options)
    val_loader = make_loader(val_set, val_batch_size, shuffle=False, collate_fn=val_collate, **loader_options)
    make_loss = functools.partial(YoloLoss, giou=settings.giou, obj=settings.obj, cls=settings.cls,
                                  cls_pw=settings.cls_pw, obj_pw=settings.obj_pw, anchor_t=settings.anchor_t,
                                  fl_gamma=settings.fl_gamma)
    ops = ops_type(classes=classes, device=device, img_size=settings.img_size, make_loss=make_loss,
                   multi_scale=settings.multi_scale, seed=settings.seed, score_thresh=settings.box_score_thresh,
                   nms_thresh=settings.nms_iou_thresh, metric_type=settings.validation_metric_type,
                   iou_threshold=settings.validation_iou_threshold,
                   validation_loss=settings.log_validation_loss == "Enable",
                   training_batch_size=settings.training_batch_size,
                   track_training_metrics=settings.log_training_metrics == "Enable", on_failures=on_failures,
                   primary_metric=settings.primary_metric)
    return train_loader, val_loader, ops


def _chw(sample: YoloSample) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1)))


def _on_cpu(boxes: Tensor, scores: Tensor, labels: Tensor) -> Target:
    return {"boxes": boxes.detach().float().cpu(), "scores": scores.detach().float().cpu(),
            "labels": labels.detach().cpu()}


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"
