"""The YOLOv5 family: its loss, moving average of the weights, and detection in original pixels.

Data: training elements go through ``YoloTrainTransform`` (mosaic when ``apply_mosaic_for_yolo``, the
reference's random affine and horizontal flip when ``apply_automl_train_augmentations``) into S x S squares;
validation and prediction resize each image (longer side to ``img_size``) and run it centred in its own
frame, the smallest multiple of 32 that holds it (``dataset``), images sorted by aspect ratio. Batches are
uint8 (B, 3, H, W) images and YOLO targets (n, 6) rows (image index, class, cx, cy, w, h) normalised to each
image's frame; the network gets ``images / 255``. What shapes training beyond the settings is the family's
``YoloRecipe`` (``recipe``).

The loss of a batch is YOLO's (box + objectness + class) x batch size, as in the reference, so its
100-per-batch divergence check and its learning rate apply unchanged. With ``multi_scale`` each training
batch is resized to a side drawn by ``multi_scale_size`` (a multiple of 32 in [S/2, 3S/2]) from a
generator seeded with the run's seed.

Weights: the family keeps an exponential moving average of the weights (``ModelEMA``, the reference's
decay 0.9999 with a 2000-update warm-up), updated after every optimizer step. The loop evaluates, keeps
as the best epoch, saves and finally loads the AVERAGED weights (``weights_to_keep``). The reference
saves the average but validates the raw weights, so its best epoch is chosen on a model it never saves;
here the metrics always describe the saved model.

Detection keeps ``box_score_thresh`` and ``nms_iou_thresh`` as at prediction (as the reference) and
happens in original image pixels: predictions are un-letterboxed, ground truth comes from the records
(with crowd flags), and both sizes of each image are the original (width, height). The validation loss
(``log_validation_loss``) is on the training loss's scale (the per-image loss x ``training_batch_size``),
so the two can be compared.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from visionsweep.data.records import ImageRecord
from visionsweep.devices import generator_from_state, generator_state
from visionsweep.distributed import SINGLE_PROCESS, Ranks, unwrap
from visionsweep.evaluation.detection import DetectionEvaluation
from visionsweep.families.base import FailureSink, WarmupStart
from visionsweep.families.detection import (
    DetectedBatch,
    Element,
    ElementDetectionFamily,
    ImageDetections,
    Target,
    on_cpu,
)
from visionsweep.families.loaders import aspect_ratio_order
from visionsweep.exporting.graph import ExportOptions, OnnxGraph
from visionsweep.exporting.runtime import OnnxSession, check_fixed_settings
from visionsweep.families.yolo.onnx import OnnxYolo, yolo_graph
from visionsweep.families.yolo.dataset import YoloBatch, YoloElementDataset, YoloItem, collate_yolo
from visionsweep.families.yolo.pipeline import AffineParams, YoloTrainTransform, multi_scale_size, resize_batch
from visionsweep.families.yolo.recipe import DEFAULT_RECIPE, YoloRecipe
from visionsweep.geometry.yolo_boxes import postprocess
from visionsweep.models.freezing import train_mode
from visionsweep.models.yolo import ModelEMA, YoloLoss, fused_for_inference
from visionsweep.settings import Settings


class YoloFamily(ElementDetectionFamily):
    """YOLOv5 of every ``model_size``. Its loss is a sum over the batch (the per-part means times the batch
    size, as YOLOv5 defines it)."""

    loss_reduction = "sum"

    def __init__(self, settings: Settings, classes: Sequence[str], device: torch.device, on_failures: FailureSink,
                 ranks: Ranks = SINGLE_PROCESS, recipe: YoloRecipe = DEFAULT_RECIPE):
        self.settings = settings
        self.recipe = recipe
        self.classes = list(classes)
        self.device = device
        self.on_failures = on_failures
        self.ranks = ranks
        self.track_training_metrics = (settings.log_training_metrics == "Enable"
                                       and settings.validation_metric_type != "none")
        self.ema: ModelEMA | None = None
        self._resumed_ema: dict[str, Any] | None = None  # a resumed run's average, until the network is known
        self._training_set: YoloElementDataset | None = None
        self._loss: YoloLoss | None = None
        self._rng = np.random.default_rng(settings.seed)
        self._parts: dict[str, Tensor] = {}
        self._part_images = 0
        self._train_evaluation: DetectionEvaluation | None = None

    # --- data --------------------------------------------------------------------------------------------

    def training_dataset(self, records: Sequence[ImageRecord], elements: Sequence[Element]) -> YoloElementDataset:
        s = self.settings
        affine = AffineParams(degrees=s.degrees, translate=s.translate, scale=s.scale, shear=s.shear)
        transform = YoloTrainTransform(s.img_size, mosaic=s.apply_mosaic_for_yolo,
                                       augment=s.apply_automl_train_augmentations, affine=affine,
                                       hsv_gains=self.recipe.hsv_gains)
        self._training_set = YoloElementDataset(records, self.classes, s.img_size, transform, elements)
        return self._training_set

    def evaluation_dataset(self, records: Sequence[ImageRecord]) -> YoloElementDataset:
        return YoloElementDataset(records, self.classes, self.settings.img_size)

    def evaluation_order(self, dataset: YoloElementDataset, window: int | None = None) -> list[int]:
        """By aspect ratio, so that a batch mostly holds one frame (see ``dataset``)."""
        return aspect_ratio_order(dataset.element_sizes(), window)

    def collate(self, items: list[YoloItem]) -> YoloBatch:
        return collate_yolo(items)

    def is_readable(self, item: YoloItem) -> bool:
        return item.image is not None

    def subset(self, batch: YoloBatch, positions: Sequence[int]) -> YoloBatch:
        return batch.subset(positions)

    # --- training ----------------------------------------------------------------------------------------

    def train_step(self, model: nn.Module, batch: YoloBatch) -> tuple[Tensor, int] | None:
        if batch.failures:
            self.on_failures(batch.failures, "training")
        if not len(batch.images):
            return None
        network = unwrap(model)  # the forward pass goes through the DDP wrapper, everything else to the network
        self._average(network)
        images = self._to_input(batch.images)
        if self.settings.multi_scale:
            images = resize_batch(images, multi_scale_size(self.settings.img_size, self._rng))
        loss, parts = self._loss_of(network)(model(images), batch.targets.to(self.device, non_blocking=True))
        count = len(images)
        for name, value in parts.items():
            self._parts[name] = self._parts.get(name, 0.0) + value * count
        self._part_images += count
        if self.track_training_metrics:
            self._track_training_batch(network, images, batch.targets)
        return loss, count

    def warmup_start(self) -> WarmupStart:
        return WarmupStart(bias_lr=self.recipe.warmup_bias_lr, momentum=self.recipe.warmup_momentum)

    def start_epoch(self, epoch: int) -> None:
        epochs = self.settings.number_of_epochs
        # At most the second half of a run (as measured: 15 of 30), so a short run still starts on mosaics.
        if self._training_set is not None and epoch > epochs - min(self.recipe.close_mosaic_epochs, epochs // 2):
            self._training_set.close_mosaic()

    def after_optimizer_step(self, model: nn.Module) -> None:
        if self.ema is not None:
            self.ema.update(unwrap(model))

    def weights_to_keep(self, model: nn.Module) -> nn.Module:
        if self.ema is None and self._resumed_ema is not None:
            self._average(unwrap(model))
        return self.ema.module if self.ema is not None else unwrap(model)

    def training_state(self) -> dict[str, Any]:
        """The moving average, the multi_scale generator and the augmentation generator of the training set
        (in this process; loader workers keep their own)."""
        average = self.ema.state_dict() if self.ema is not None else self._resumed_ema
        augmentation = self._training_set.generator_state() if self._training_set is not None else None
        return {"ema": average, "multi_scale_rng": generator_state(self._rng), "augmentation_rng": augmentation}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.ema, self._resumed_ema = None, state["ema"]
        self._rng = generator_from_state(state["multi_scale_rng"])
        if self._training_set is not None:
            self._training_set.restore_generator_state(state["augmentation_rng"])

    def _average(self, network: nn.Module) -> ModelEMA:
        """The moving average, started on first use: from the weights training starts from, or from the
        average an interrupted run saved."""
        if self.ema is None:
            self.ema = ModelEMA(network, ramp=self.recipe.ema_ramp)
            if self._resumed_ema is not None:
                self.ema.load_state_dict(self._resumed_ema)
                self._resumed_ema = None
        return self.ema

    def training_metrics(self) -> dict[str, float]:
        metrics = {}
        if self._part_images:
            metrics = {f"train_{name}_loss": float(value) / self._part_images for name, value in self._parts.items()}
        self._parts, self._part_images = {}, 0
        if self._train_evaluation is not None:
            primary = self.settings.primary_metric
            metrics[f"{primary}_train"] = self._train_evaluation.compute()[primary]
            self._train_evaluation = None
        return metrics

    # --- detection ---------------------------------------------------------------------------------------

    def detect(self, model: nn.Module, batch: YoloBatch, stage: str, *, with_loss: bool = False) -> DetectedBatch:
        """Each image's detections (on the CPU, original pixels), best first, in batch order; the loader's
        dataset must be an evaluation dataset (resized items). Each frame of the batch is its own forward pass."""
        if batch.failures:
            self.on_failures(batch.failures, stage)
        images: list[ImageDetections | None] = [None] * len(batch.images)
        loss_sum = 0.0
        for positions, part in batch.by_frame():  # each image in its own frame, whatever else is in the batch
            decoded, raw = model(self._to_input(part.images))
            found = postprocess(decoded, score_thresh=self.settings.box_score_thresh,
                                iou_thresh=self.settings.nms_iou_thresh, letterbox=part.infos)
            for position, index, d, target, info in zip(positions, part.indices.tolist(), found, part.ground_truth,
                                                         part.infos):
                images[position] = ImageDetections(index, on_cpu(d._asdict()), target, info.original_size,
                                                   info.original_size)
            if with_loss:
                loss_sum += self._loss_sum(model, raw, part)
        return DetectedBatch(images, loss_sum)

    def validation_loss_sum(self, model: nn.Module, batch: YoloBatch) -> float:
        loss_sum = 0.0
        for _, part in batch.by_frame():
            _, raw = model(self._to_input(part.images))
            loss_sum += self._loss_sum(model, raw, part)
        return loss_sum

    def inference_model(self, model: nn.Module) -> nn.Module:
        return fused_for_inference(model)

    # --- export ------------------------------------------------------------------------------------------

    def onnx_graph(self, model: nn.Module, options: ExportOptions) -> OnnxGraph:
        return yolo_graph(model, self.settings, options)

    def onnx_model(self, session: OnnxSession) -> nn.Module:
        check_fixed_settings(session, self.settings, ["img_size"])
        return OnnxYolo(session, self.settings.img_size)

    # --- helpers -----------------------------------------------------------------------------------------

    def _loss_sum(self, model: nn.Module, raw: list[Tensor], batch: YoloBatch) -> float:
        # YOLO's batch loss is the mean x the batch size, a sum over images already.
        loss, _ = self._loss_of(model)(raw, batch.targets.to(self.device, non_blocking=True))
        return float(loss.detach().float()) * self.settings.training_batch_size

    def _loss_of(self, model: nn.Module) -> YoloLoss:
        # Built on first use from whichever network comes first; the anchors and class count it reads
        # are the same in the trained model and its average.
        if self._loss is None:
            s, recipe = self.settings, self.recipe
            obj = s.obj * (s.img_size / 640) ** 2 if recipe.obj_gain_per_pixel else s.obj
            self._loss = YoloLoss(model, giou=s.giou, obj=obj, cls=s.cls, cls_pw=s.cls_pw, obj_pw=s.obj_pw,
                                  anchor_t=s.anchor_t, fl_gamma=s.fl_gamma, balance=recipe.level_balance,
                                  label_smoothing=recipe.label_smoothing)
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
        found = postprocess(decoded, score_thresh=self.settings.box_score_thresh,
                            iou_thresh=self.settings.nms_iou_thresh)
        height, width = images.shape[-2:]
        truth = yolo_targets_to_pixels(targets.cpu(), len(images), width, height)
        self._train_evaluation.add([on_cpu(d._asdict()) for d in found], truth,
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
