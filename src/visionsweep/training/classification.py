"""The classification part of training: losses, class weights, batches to metrics."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from visionsweep.data.classification import (
    ClassificationBatch,
    ClassificationDataset,
    collate_classification,
    training_transform,
    validation_transform,
)
from visionsweep.data.records import ImageRecord
from visionsweep.errors import DataError
from visionsweep.evaluation.classification import classification_metrics
from visionsweep.settings import Settings
from visionsweep.training.environment import make_loader
from visionsweep.training.loop import TaskOps

FailureSink = Callable[[list[tuple[int, str]], str], None]


def class_frequencies(records: Sequence[ImageRecord], classes: Sequence[str]) -> np.ndarray:
    """Number of training images carrying each class, in class-index order."""
    index = {name: i for i, name in enumerate(classes)}
    frequency = np.zeros(len(classes), dtype=np.int64)
    for record in records:
        for name in set(record.labels):
            frequency[index[name]] += 1
    return frequency


def class_weights(frequency: np.ndarray, num_images: int, *, multilabel: bool, weighted_loss: int,
                  imbalance_rate_threshold: int) -> torch.Tensor | None:
    """Loss weights per class, or None when the loss stays unweighted.

    Multi-class weights are ``1 / freq``, multi-label ones (BCE ``pos_weight``) ``(N - freq) / freq``;
    ``weighted_loss`` 1 takes their square root, 2 uses them as they are; a class never seen in
    training gets weight 0. Weighting applies only when ``max(freq) // max(1, min(freq))`` exceeds
    ``imbalance_rate_threshold``.
    """
    if weighted_loss == 0:
        return None
    imbalance_rate = int(frequency.max()) // max(1, int(frequency.min()))
    if imbalance_rate <= imbalance_rate_threshold:
        return None
    with np.errstate(divide="ignore"):
        raw = (num_images - frequency) / frequency if multilabel else 1.0 / frequency
    raw = np.where(np.isfinite(raw), raw, 0.0)
    return torch.tensor(np.sqrt(raw) ** weighted_loss, dtype=torch.float32)


class ClassificationOps(TaskOps):
    """Loss and metrics of multi-class (cross-entropy, softmax) and multi-label (BCE, sigmoid) training."""

    def __init__(self, *, classes: Sequence[str], multilabel: bool, device: torch.device,
                 weights: torch.Tensor | None, primary_metric: str, track_training_metrics: bool,
                 on_failures: FailureSink):
        self.classes = list(classes)
        self.multilabel = multilabel
        self.device = device
        weights = weights.to(device) if weights is not None else None
        self.criterion = nn.BCEWithLogitsLoss(pos_weight=weights) if multilabel else nn.CrossEntropyLoss(weight=weights)
        self.primary_metric = primary_metric
        self.track_training_metrics = track_training_metrics
        self.on_failures = on_failures
        self._train_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def train_step(self, model: nn.Module, batch: ClassificationBatch) -> tuple[torch.Tensor, int] | None:
        if batch.failures:
            self.on_failures(batch.failures, "training")
        if len(batch.indices) == 0:
            return None
        images = batch.images.to(self.device, non_blocking=True)
        targets = batch.targets.to(self.device, non_blocking=True)
        logits = model(images)
        if self.track_training_metrics:
            self._train_outputs.append((self._probabilities(logits.detach()).cpu(), batch.targets))
        return self.criterion(logits, targets), len(batch.indices)

    def evaluate(self, model: nn.Module, loader: Iterable) -> dict[str, Any]:
        probabilities, targets = self.predict(model, loader, stage="validation")
        if len(probabilities) == 0:
            raise DataError("no validation image could be read, so no metric can be computed")
        return classification_metrics(probabilities, targets, self.classes, self.multilabel)

    def predict(self, model: nn.Module, loader: Iterable, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, C) and targets of every readable image the loader yields, in loader order;
        N is 0 when none could be read."""
        outputs, targets = [], []
        for batch in loader:
            if batch.failures:
                self.on_failures(batch.failures, stage)
            if len(batch.indices) == 0:
                continue
            logits = model(batch.images.to(self.device, non_blocking=True))
            outputs.append(self._probabilities(logits.float()).cpu())
            targets.append(batch.targets)
        if not outputs:
            empty = np.zeros((0, len(self.classes)), dtype=np.float32)
            return empty, (empty.copy() if self.multilabel else np.zeros(0, dtype=np.int64))
        return torch.cat(outputs).numpy(), torch.cat(targets).numpy()

    def training_metrics(self) -> dict[str, float]:
        if not self._train_outputs:
            return {}
        probabilities = torch.cat([p for p, _ in self._train_outputs]).numpy()
        targets = torch.cat([t for _, t in self._train_outputs]).numpy()
        self._train_outputs.clear()
        metrics = classification_metrics(probabilities, targets, self.classes, self.multilabel)
        return {f"{self.primary_metric}_train": metrics[self.primary_metric]}

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)


def classification_pipeline(settings: Settings, train_records: Sequence[ImageRecord],
                            val_records: Sequence[ImageRecord], classes: Sequence[str], device: torch.device,
                            on_failures: FailureSink) -> tuple[Any, Any, ClassificationOps]:
    """Data loaders and task ops of a classification run."""
    multilabel = settings.task.is_multilabel
    train_transform = training_transform(settings.train_crop_size, augment=settings.apply_automl_train_augmentations,
                                         resize_ratio=settings.valid_resize_size / settings.valid_crop_size)
    valid_transform = validation_transform(settings.valid_resize_size, settings.valid_crop_size)
    train_set = ClassificationDataset(train_records, classes, train_transform, multilabel)
    val_set = ClassificationDataset(val_records, classes, valid_transform, multilabel)
    loader_options = dict(num_workers=settings.num_workers, collate_fn=collate_classification, device=device,
                          seed=settings.seed)
    train_loader = make_loader(train_set, settings.training_batch_size, shuffle=True, **loader_options)
    val_loader = make_loader(val_set, settings.validation_batch_size, shuffle=False, **loader_options)
    weights = class_weights(class_frequencies(train_records, classes), len(train_records), multilabel=multilabel,
                            weighted_loss=settings.weighted_loss,
                            imbalance_rate_threshold=settings.imbalance_rate_threshold)
    ops = ClassificationOps(classes=classes, multilabel=multilabel, device=device, weights=weights,
                            primary_metric=settings.primary_metric,
                            track_training_metrics=settings.log_training_metrics == "Enable", on_failures=on_failures)
    return train_loader, val_loader, ops
