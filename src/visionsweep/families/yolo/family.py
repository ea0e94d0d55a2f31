"""The YOLOv5 family: its loss, moving average of the weights, and detection in original pixels.

Data: training elements go through ``YoloTrainTransform`` (mosaic when ``apply_mosaic_for_yolo``, the
reference's random affine and horizontal flip when ``apply_automl_train_augmentations``), validation and
prediction through the letterbox alone (longer side to ``img_size``, never enlarged by the padding step).
Batches are uint8 (B, 3, S, S) images and YOLO targets (n, 6) rows (image index, class, cx, cy, w, h)
normalised to S; the network gets ``images / 255``.

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
from visionsweep.families.base import FailureSink
from visionsweep.families.detection import (
    DetectedBatch,
    Element,
    ElementDetectionFamily,
    ImageDetections,
    Target,
    on_cpu,
)
from visionsweep.exporting.graph import ExportOptions, OnnxGraph
from visionsweep.exporting.runtime import OnnxSession, check_fixed_settings
from visionsweep.families.yolo.onnx import OnnxYolo, yolo_graph
from visionsweep.families.yolo.dataset import YoloBatch, YoloElementDataset, YoloItem, collate_yolo
from visionsweep.families.yolo.pipeline import AffineParams, YoloTrainTransform, multi_scale_size, resize_batch
from visionsweep.geometry.yolo_boxes import postprocess
from visionsweep.models.freezing import train_mode
from visionsweep.models.yolo import ModelEMA, YoloLoss, fused_for_inference
from visionsweep.settings import Settings


class YoloFamily(ElementDetectionFamily):
    """YOLOv5 of every ``model_size``. Its loss is a sum over the batch (the per-part means times the batch
    size, as YOLOv5 defines it)."""

    loss_reduction = "sum"

    def __init__(self, settings: Settings, classes: Sequence[str], device: torch.device, on_failures: FailureSink,
                 ranks: Ranks = SINGLE_PROCESS):
        self.settings = settings
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
                                       augment=s.apply_automl_train_augmentations, affine=affine)
        self._training_set = YoloElementDataset(records, self.classes, s.img_size, transform, elements)
        return self._training_set

    def evaluation_dataset(self, records: Sequence[ImageRecord]) -> YoloElementDataset:
        return YoloElementDataset(records, self.classes, self.settings.img_size)

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
            self.ema = ModelEMA(network)
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
        """Each image's detections (on the CPU, original pixels), best first; the loader's dataset must
        be an evaluation dataset (letterboxed items)."""
        if batch.failures:
            self.on_failures(batch.failures, stage)
        if not len(batch.images):
            return DetectedBatch([])
        decoded, raw = model(self._to_input(batch.images))
        found = postprocess(decoded, score_thresh=self.settings.box_score_thresh,
                            iou_thresh=self.settings.nms_iou_thresh, letterbox=batch.infos)
        images = [ImageDetections(index, on_cpu(d._asdict()), target, info.original_size, info.original_size)
                  for index, d, target, info in zip(batch.indices.tolist(), found, batch.ground_truth, batch.infos)]
        return DetectedBatch(images, self._loss_sum(model, raw, batch) if with_loss else 0.0)

    def validation_loss_sum(self, model: nn.Module, batch: YoloBatch) -> float:
        _, raw = model(self._to_input(batch.images))
        return self._loss_sum(model, raw, batch)

    def inference_model(self, model: nn.Module) -> nn.Module:
        return fused_for_inference(model)

    # --- export ------------------------------------------------------------------------------------------

    def onnx_graph(self, model: nn.Module, options: ExportOptions) -> OnnxGraph:
        return yolo_graph(model, self.settings, options)

    def onnx_model(self, session: OnnxSession) -> nn.Module:
        check_fixed_settings(session, self.settings, ["img_size"])
        return OnnxYolo(session)

    # --- helpers -----------------------------------------------------------------------------------------

    def _loss_sum(self, model: nn.Module, raw: list[Tensor], batch: YoloBatch) -> float:
        # YOLO's batch loss is the mean x the batch size, a sum over images already.
        loss, _ = self._loss_of(model)(raw, batch.targets.to(self.device, non_blocking=True))
        return float(loss.detach().float()) * self.settings.training_batch_size

    def _loss_of(self, model: nn.Module) -> YoloLoss:
        # Built on first use from whichever network comes first; the anchors and class count it reads
        # are the same in the trained model and its average.
        if self._loss is None:
            s = self.settings
            self._loss = YoloLoss(model, giou=s.giou, obj=s.obj, cls=s.cls, cls_pw=s.cls_pw, obj_pw=s.obj_pw,
                                  anchor_t=s.anchor_t, fl_gamma=s.fl_gamma)
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
