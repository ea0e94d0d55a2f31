"""The contract every model family meets, and what the training loop and inference rely on.

A family (classification, R-CNN, YOLOv5) knows how its models see data: how records become batches,
what one training step and a validation pass compute, and how a batch becomes one prediction record
per image. Everything else (epochs, optimiser steps, schedules, early stopping, checkpoints, sweeps,
prediction files) is family-agnostic and talks to a family only through ``ModelFamily``.

A family object is made for one run or one loaded model (``visionsweep.families.selection``); it
holds that run's settings, classes, device and failure sink, and the ``ranks`` of the processes that
train the run together (``visionsweep.distributed``): its training loader gives each process its share,
its validation pass gathers every share, so that every process computes the metrics of the whole set.
Export is part of the contract too: only the family knows its network's input layout and what its
outputs mean (``onnx_graph``), and how to run an exported graph where it would run its torch model
(``onnx_model``).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterable, Iterator, Sequence, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from visionsweep.data.records import ImageRecord
from visionsweep.distributed import SINGLE_PROCESS, Ranks
from visionsweep.errors import ExportError

if TYPE_CHECKING:  # the export modules load onnx and onnxruntime, which training never needs
    from visionsweep.exporting.graph import ExportOptions, OnnxGraph
    from visionsweep.exporting.runtime import OnnxSession

# Called with (dataset index, error) pairs of the images of a batch that could not be decoded, and the
# stage ("training", "validation" or "prediction"); ``visionsweep.data.failures.UnreadableImages`` is one.
FailureSink = Callable[[list[tuple[int, str]], str], None]

Prediction = TypeVar("Prediction")


@dataclass(frozen=True)
class RunLoaders:
    """The two loaders of a training run."""

    train: DataLoader
    validation: DataLoader


@dataclass(frozen=True)
class WarmupStart:
    """Where a family's warm-up starts, besides every learning rate at 0 (``training.schedulers.Schedule``):
    ``bias_lr`` the biases' learning rate, ``momentum`` the momentum; None leaves it as the settings say."""

    bias_lr: float | None = None
    momentum: float | None = None


class ModelFamily(ABC, Generic[Prediction]):
    """How one family of models is fed, trained, validated and asked for predictions.

    Subclasses implement the abstract methods; the hooks after them have defaults that suit most
    models. ``Prediction`` is the family's per-image prediction record (``ImageScores`` for
    classifiers, ``ImageDetections`` for detectors); it carries the image's dataset index.

    ``loss_reduction`` says what ``train_step`` 's loss is over the batch's images: "mean" or "sum" (the
    loop scales a summed loss by the number of processes, since DDP averages their gradients, so that N
    processes with batch b take the step one process takes with batch N x b).
    """

    ranks: Ranks = SINGLE_PROCESS
    loss_reduction: str = "mean"

    @abstractmethod
    def training_loaders(self, train: Sequence[ImageRecord], validation: Sequence[ImageRecord]) -> RunLoaders:
        """The shuffled training loader and the validation loader of a run."""

    @abstractmethod
    def prediction_loader(self, records: Sequence[ImageRecord]) -> DataLoader:
        """A loader over ``records`` in order, for prediction and evaluation of a trained model."""

    @abstractmethod
    def train_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, int] | None:
        """The loss of one batch (see ``loss_reduction``) and its number of images; None skips a batch with no
        usable image. ``model`` may be wrapped for distributed training: call it, but read its attributes from
        ``visionsweep.distributed.unwrap(model)``."""

    @abstractmethod
    def evaluate(self, model: nn.Module, loader: Iterable) -> dict[str, Any]:
        """Metrics of a full validation pass (the model is already in eval mode, gradients off); with several
        ranks, ``loader`` holds this process's share and the metrics are those of every share together."""

    @abstractmethod
    def predict_batch(self, model: nn.Module, batch: Any, stage: str) -> list[Prediction]:
        """One prediction record per readable image of ``batch``, in batch order (the model is in eval
        mode). Unreadable images go to the failure sink with ``stage``."""

    def onnx_graph(self, model: nn.Module, options: ExportOptions) -> OnnxGraph:
        """What to export of ``model`` (the inference model, in eval mode on the CPU): the module to
        trace, an example input, the input's and outputs' names and layout. Every family of the catalog
        has one; a new family trains and predicts without it, and its export is an error."""
        raise ExportError(f"{type(self).__name__} models cannot be exported to ONNX yet")

    def onnx_model(self, session: OnnxSession) -> nn.Module:
        """A stand-in for the inference model that runs ``session`` (an exported file), taking and giving
        what the torch model does, so that ``predict_batch`` runs either. Raises ``SettingsError`` when a
        setting differs from one the graph holds fixed."""
        raise ExportError(f"{type(self).__name__} models cannot run from an ONNX file yet")

    def training_metrics(self) -> dict[str, float]:
        """Metrics gathered on the training batches of the epoch just finished (may be empty)."""
        return {}

    def warmup_start(self) -> WarmupStart:
        """Where the learning-rate warm-up starts the biases' learning rate and the momentum."""
        return WarmupStart()

    def start_epoch(self, epoch: int) -> None:
        """Called before each training epoch (counted from 1), e.g. to change the augmentation late in a run."""

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Called after every optimizer step (e.g. to update an exponential moving average)."""

    def training_state(self) -> dict[str, Any]:
        """What the family carries from one epoch to the next (a moving average of the weights, its own random
        generators), as tensors and plain data: saved after every epoch in ``checkpoints/last.pt``, so that a
        resumed run continues as the interrupted one would have (``load_training_state``)."""
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Continue from ``training_state()`` of an interrupted run; called after ``training_loaders`` and
        before the first training step."""

    def weights_to_keep(self, model: nn.Module) -> nn.Module:
        """The network that is evaluated, kept as the best epoch and saved: ``model`` itself, or for
        example its moving average."""
        return model

    def inference_model(self, model: nn.Module) -> nn.Module:
        """The network to predict with: ``model``, or an equivalent faster one (fused layers)."""
        return model

    def predict(self, model: nn.Module, loader: Iterable, stage: str = "prediction") -> Iterator[Prediction]:
        """The prediction records of every readable image ``loader`` yields, in order."""
        for batch in loader:
            yield from self.predict_batch(model, batch, stage)
