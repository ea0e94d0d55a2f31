"""The R-CNN family: Faster R-CNN and RetinaNet (boxes) and Mask R-CNN (boxes and masks).

The loss is the plain sum of the model's loss dict. Validation predicts with the model's own thresholds
(as the reference); with ``log_validation_loss`` it also runs the model in training mode on the same
batch (without gradients; the trunk's batch norm is frozen, so nothing in the model changes).
``MaskRcnnFamily`` is the instance-segmentation variant: targets carry masks to the model, predictions
keep the model's soft masks (K, 1, H, W), and the evaluation matches on masks (cut at 0.5, spec 5.9).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from visionsweep.data.records import ImageRecord
from visionsweep.distributed import SINGLE_PROCESS, Ranks, unwrap
from visionsweep.errors import TrainingError
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
from visionsweep.families.rcnn.onnx import OnnxRcnn, rcnn_graph
from visionsweep.families.rcnn.dataset import (
    DetectionBatch,
    DetectionDataset,
    DetectionItem,
    SegmentationDataset,
    collate_detection,
)
from visionsweep.models.detection import label_offset, with_prediction_limits
from visionsweep.models.freezing import train_mode
from visionsweep.settings import Settings

# torchvision's R-CNN transform pads a batch to a multiple of this.
_SIZE_DIVISIBLE = 32


class RcnnFamily(ElementDetectionFamily):
    """Faster R-CNN and RetinaNet: ``DetectionDataset`` inputs, the model's summed loss dict."""

    dataset_type: type[DetectionDataset] = DetectionDataset

    def __init__(self, settings: Settings, classes: Sequence[str], device: torch.device, on_failures: FailureSink,
                 ranks: Ranks = SINGLE_PROCESS):
        self.settings = settings
        self.classes = list(classes)
        self.device = device
        self.on_failures = on_failures
        self.ranks = ranks
        self.label_offset = label_offset(settings.model_name)
        self.track_training_metrics = (settings.log_training_metrics == "Enable"
                                       and settings.validation_metric_type != "none")
        self._train_evaluation: DetectionEvaluation | None = None
        self._training_set: DetectionDataset | None = None

    # --- data --------------------------------------------------------------------------------------------

    def training_dataset(self, records: Sequence[ImageRecord], elements: Sequence[Element]) -> DetectionDataset:
        self._training_set = self._dataset(records, augment=self.settings.apply_automl_train_augmentations,
                                           elements=elements)
        return self._training_set

    def evaluation_dataset(self, records: Sequence[ImageRecord]) -> DetectionDataset:
        return self._dataset(records, augment=False)

    def collate(self, items: list[DetectionItem]) -> DetectionBatch:
        return collate_detection(items)

    def is_readable(self, item: DetectionItem) -> bool:
        return item.error is None

    def subset(self, batch: DetectionBatch, positions: Sequence[int]) -> DetectionBatch:
        return batch.subset(positions)

    def training_state(self) -> dict[str, Any]:
        """The augmentation generator of the training set in this process (loader workers keep their own)."""
        return {"augmentation_rng": self._training_set.generator_state() if self._training_set is not None else None}

    def load_training_state(self, state: dict[str, Any]) -> None:
        if self._training_set is not None:
            self._training_set.restore_generator_state(state["augmentation_rng"])

    def _dataset(self, records: Sequence[ImageRecord], *, augment: bool,
                 elements: Sequence[Element] | None = None) -> DetectionDataset:
        return self.dataset_type(records, self.classes, min_size=self.settings.min_size,
                                 max_size=self.settings.max_size, augment=augment, elements=elements)

    # --- training ----------------------------------------------------------------------------------------

    def train_step(self, model: nn.Module, batch: DetectionBatch) -> tuple[Tensor, int] | None:
        if batch.failures:
            self.on_failures(batch.failures, "training")
        if not batch.images:
            return None
        images, targets = self._to_device(batch)
        losses = _forward(model, images, targets)
        if self.track_training_metrics:
            self._track_training_batch(unwrap(model), images, batch)
        return sum(losses.values()), len(images)

    def training_metrics(self) -> dict[str, float]:
        if self._train_evaluation is None:
            return {}
        metrics = self._train_evaluation.compute()
        self._train_evaluation = None
        primary = self.settings.primary_metric
        return {f"{primary}_train": metrics[primary]}

    # --- detection ---------------------------------------------------------------------------------------

    def detect(self, model: nn.Module, batch: DetectionBatch, stage: str, *, with_loss: bool = False) -> DetectedBatch:
        """Predictions in the model frame of each image. Only images that pad to the same size run
        together, so that an image's predictions never depend on the others in its batch (torchvision pads
        a batch to its largest image, which moves anchors and features near the border): the same as
        predicting it alone, or with the exported graph. Small tiles are not padded to a whole image's size
        either."""
        if batch.failures:
            self.on_failures(batch.failures, stage)
        if not batch.images:
            return DetectedBatch([])
        images = [image.to(self.device, non_blocking=True) for image in batch.images]
        outputs = _forward_by_size(model, images)
        found = [ImageDetections(index, on_cpu(output, self.label_offset), target, frame, original)
                 for index, output, target, frame, original in zip(batch.indices.tolist(), outputs, batch.targets,
                                                                     batch.image_sizes, batch.original_sizes)]
        return DetectedBatch(found, self.validation_loss_sum(model, batch) if with_loss else 0.0)

    def validation_loss_sum(self, model: nn.Module, batch: DetectionBatch) -> float:
        images, targets = self._to_device(batch)
        train_mode(model)
        try:
            return float(sum(_forward(model, images, targets).values())) * len(images)
        finally:
            model.eval()

    def inference_model(self, model: nn.Module) -> nn.Module:
        """``model`` with the prediction's ``box_score_thresh``, ``nms_iou_thresh`` and ``box_detections_per_img``,
        which may differ from those it was built with (a scoring request's own, ``serving.scoring``)."""
        return with_prediction_limits(model, box_score_thresh=self.settings.box_score_thresh,
                                      nms_iou_thresh=self.settings.nms_iou_thresh,
                                      box_detections_per_img=self.settings.box_detections_per_img)

    # --- export ------------------------------------------------------------------------------------------

    def onnx_graph(self, model: nn.Module, options: ExportOptions) -> OnnxGraph:
        return rcnn_graph(model, self.settings, self.label_offset, options)

    def onnx_model(self, session: OnnxSession) -> nn.Module:
        check_fixed_settings(session, self.settings, ["nms_iou_thresh", "box_detections_per_img"],
                             at_least=["box_score_thresh"])
        return OnnxRcnn(session, self.label_offset, self.settings.box_score_thresh)

    # --- helpers -----------------------------------------------------------------------------------------

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
        self._train_evaluation.add([on_cpu(o, self.label_offset) for o in outputs], batch.targets,
                                   image_sizes=batch.image_sizes, original_sizes=batch.original_sizes)

    def _to_device(self, batch: DetectionBatch) -> tuple[list[Tensor], list[Target]]:
        images = [image.to(self.device, non_blocking=True) for image in batch.images]
        targets = [self._target_to_device(t) for t in batch.targets]
        return images, targets

    def _target_to_device(self, target: Target) -> Target:
        return {"boxes": target["boxes"].to(self.device, non_blocking=True),
                "labels": (target["labels"] + self.label_offset).to(self.device, non_blocking=True)}


class MaskRcnnFamily(RcnnFamily):
    """Mask R-CNN: ``SegmentationDataset`` inputs (targets with masks), scored on masks."""

    dataset_type = SegmentationDataset
    iou_type = "segm"

    def _target_to_device(self, target: Target) -> Target:
        return {**super()._target_to_device(target), "masks": target["masks"].to(self.device, non_blocking=True)}


def _forward(model: nn.Module, images: list[Tensor], targets: list[Target]) -> dict[str, Tensor]:
    try:
        return model(images, targets)
    except AssertionError as error:  # torchvision's internal checks, typically tripped by extreme aspect ratios
        raise TrainingError(f"the detector rejected a batch ({error}); this usually comes from images with an "
                            "extreme aspect ratio: use squarer images or the default min_size / max_size") from None


def _forward_by_size(model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
    """The model's eval-mode outputs for ``images``, in order, running images that pad to the same size
    together."""
    groups: dict[tuple[int, int], list[int]] = {}
    for position, image in enumerate(images):
        key = tuple(-(-side // _SIZE_DIVISIBLE) for side in image.shape[-2:])
        groups.setdefault(key, []).append(position)
    outputs: list[dict[str, Tensor] | None] = [None] * len(images)
    for positions in groups.values():
        for position, output in zip(positions, model([images[p] for p in positions])):
            outputs[position] = output
    return outputs
