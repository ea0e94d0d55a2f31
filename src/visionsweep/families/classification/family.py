"""The classification family: multi-class (cross-entropy, softmax) and multi-label (BCE, sigmoid)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from visionsweep.data.records import ImageRecord
from visionsweep.distributed import SINGLE_PROCESS, Ranks
from visionsweep.errors import DataError
from visionsweep.evaluation.classification import classification_metrics
from visionsweep.families.base import FailureSink, ModelFamily, RunLoaders
from visionsweep.families.classification.dataset import (
    ClassificationBatch,
    ClassificationDataset,
    collate_classification,
)
from visionsweep.exporting.graph import ExportOptions, OnnxGraph
from visionsweep.exporting.runtime import OnnxSession, check_fixed_settings
from visionsweep.families.classification.onnx import OnnxClassifier, classifier_graph
from visionsweep.families.classification.transforms import training_transform, validation_transform
from visionsweep.families.loaders import make_loader
from visionsweep.models import get_model_spec
from visionsweep.settings import Settings


@dataclass(frozen=True)
class ImageScores:
    """A classifier's prediction for one image: ``probabilities`` (C,) softmax or sigmoid values in class
    order, and the image's ``target`` (class index, -1 when unlabelled, or (C,) multi-hot)."""

    index: int
    probabilities: np.ndarray
    target: np.ndarray


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


class ClassificationFamily(ModelFamily[ImageScores]):
    """Classifiers of every backbone: images framed by ``training_transform`` / ``validation_transform``
    and normalised as the model expects (``ModelSpec.mean``, ``std``), one logit per class. The loss is
    weighted by ``class_weights`` of the training records."""

    def __init__(self, settings: Settings, classes: Sequence[str], device: torch.device, on_failures: FailureSink,
                 ranks: Ranks = SINGLE_PROCESS):
        self.settings = settings
        self.classes = list(classes)
        self.multilabel = settings.task.is_multilabel
        self.device = device
        self.on_failures = on_failures
        self.ranks = ranks
        self.track_training_metrics = settings.log_training_metrics == "Enable"
        self.criterion = self._criterion(None)
        spec = get_model_spec(settings.model_name)
        self.normalization = {"mean": spec.mean, "std": spec.std}
        self._train_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    # --- data --------------------------------------------------------------------------------------------

    def training_loaders(self, train: Sequence[ImageRecord], validation: Sequence[ImageRecord]) -> RunLoaders:
        s = self.settings
        transform = training_transform(s.train_crop_size, augment=s.apply_automl_train_augmentations,
                                       resize_ratio=s.valid_resize_size / s.valid_crop_size, **self.normalization)
        train_set = ClassificationDataset(train, self.classes, transform, self.multilabel)
        self.criterion = self._criterion(class_weights(
            class_frequencies(train, self.classes), len(train), multilabel=self.multilabel,
            weighted_loss=s.weighted_loss, imbalance_rate_threshold=s.imbalance_rate_threshold))
        validation_set = self._evaluation_dataset(validation)
        return RunLoaders(self._loader(train_set, s.training_batch_size, shuffle=True, seed=s.seed, ranks=self.ranks),
                          self._loader(validation_set, s.validation_batch_size, shuffle=False, seed=s.seed,
                                       ranks=self.ranks))

    def prediction_loader(self, records: Sequence[ImageRecord]) -> DataLoader:
        return self._loader(self._evaluation_dataset(records), self.settings.validation_batch_size, shuffle=False,
                            seed=None)

    # --- training and validation -------------------------------------------------------------------------

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
        scores = self._gathered(list(self.predict(model, loader, stage="validation")))
        if not scores:
            raise DataError("no validation image could be read, so no metric can be computed")
        return self.metrics(scores)

    def metrics(self, scores: Sequence[ImageScores]) -> dict[str, Any]:
        """The classification metrics of these predictions against their targets."""
        return classification_metrics(np.stack([s.probabilities for s in scores]),
                                      np.stack([s.target for s in scores]), self.classes, self.multilabel)

    def training_metrics(self) -> dict[str, float]:
        if not self._train_outputs:
            return {}
        probabilities = torch.cat([p for p, _ in self._train_outputs]).numpy()
        targets = torch.cat([t for _, t in self._train_outputs]).numpy()
        self._train_outputs.clear()
        metrics = classification_metrics(probabilities, targets, self.classes, self.multilabel)
        primary = self.settings.primary_metric
        return {f"{primary}_train": metrics[primary]}

    # --- prediction --------------------------------------------------------------------------------------

    def predict_batch(self, model: nn.Module, batch: ClassificationBatch, stage: str) -> list[ImageScores]:
        if batch.failures:
            self.on_failures(batch.failures, stage)
        if len(batch.indices) == 0:
            return []
        logits = model(batch.images.to(self.device, non_blocking=True))
        probabilities = self._probabilities(logits.float()).cpu().numpy()
        targets = batch.targets.numpy()
        return [ImageScores(index, probabilities[i], targets[i]) for i, index in enumerate(batch.indices.tolist())]

    # --- export ------------------------------------------------------------------------------------------

    def onnx_graph(self, model: nn.Module, options: ExportOptions) -> OnnxGraph:
        return classifier_graph(model, self.settings, options, **self.normalization)

    def onnx_model(self, session: OnnxSession) -> nn.Module:
        check_fixed_settings(session, self.settings, ["valid_crop_size"])
        return OnnxClassifier(session)

    # --- helpers -----------------------------------------------------------------------------------------

    def _gathered(self, scores: list[ImageScores]) -> list[ImageScores]:
        """Every rank's validation scores, in rank order (which is dataset order: ``ContiguousShard``)."""
        if not self.ranks.is_distributed:
            return scores
        classes = len(self.classes)
        share = {"index": np.array([s.index for s in scores], np.int64),
                 "probabilities": np.stack([s.probabilities for s in scores]) if scores
                 else np.zeros((0, classes), np.float32),
                 "target": np.stack([s.target for s in scores]) if scores
                 else np.zeros((0, classes) if self.multilabel else (0,), np.float32 if self.multilabel else np.int64)}
        return [ImageScores(int(index), probabilities, target) for part in self.ranks.gather(share)
                for index, probabilities, target in zip(part["index"], part["probabilities"], part["target"])]

    def _evaluation_dataset(self, records: Sequence[ImageRecord]) -> ClassificationDataset:
        s = self.settings
        transform = validation_transform(s.valid_resize_size, s.valid_crop_size, **self.normalization)
        return ClassificationDataset(records, self.classes, transform, self.multilabel)

    def _criterion(self, weights: torch.Tensor | None) -> nn.Module:
        weights = weights.to(self.device) if weights is not None else None
        return nn.BCEWithLogitsLoss(pos_weight=weights) if self.multilabel else nn.CrossEntropyLoss(weight=weights)

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)

    def _loader(self, dataset: ClassificationDataset, batch_size: int, *, shuffle: bool, seed: int | None,
                ranks: Ranks = SINGLE_PROCESS) -> DataLoader:
        return make_loader(dataset, batch_size, shuffle=shuffle, num_workers=self.settings.num_workers,
                           collate_fn=collate_classification, device=self.device, seed=seed, ranks=ranks)
