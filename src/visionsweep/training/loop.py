"""The training loop shared by every task.

The model-specific part is a ``ModelFamily`` (``visionsweep.families.base``): how one batch turns into
a loss, and how a validation pass turns into metrics. The loop owns everything else: epochs, gradient accumulation,
clipping, mixed precision on CUDA, the learning-rate schedule, evaluation frequency, early
stopping, tracking the best epoch, and calling ``on_epoch_end`` (which writes metrics and
checkpoints, and can stop the run).

Epochs are numbered from 1 (``EpochReport.epoch``, ``FitResult.best_epoch``), the way a person
counts them in logs and metrics files. The reference states its rules over 0-based indices; they
are kept, translated: epoch ``n`` is evaluated when ``(n - 1) % evaluation_frequency == 0`` (so the
first epoch always is) or when it is the last.

Resuming (``start``): the loop continues an interrupted run at its next epoch with the same early-stopping
state, best epoch and loss scale (``LoopState``); restoring the weights, optimizer, schedule, family and
random generators is the caller's part (``visionsweep.training.run``).

Distributed (``family.ranks``): the network is wrapped in ``DistributedDataParallel``, which averages
the gradients of the processes at every optimizer step (gradient-accumulation steps in between skip
the exchange). Every process validates its share and the family gathers the metrics of all, so every
process takes the same best-epoch and early-stopping decisions; a cancel asked for by one stops all.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from visionsweep.distributed import Ranks
from visionsweep.errors import TrainingError
from visionsweep.families.base import ModelFamily
from visionsweep.families.loaders import start_epoch
from visionsweep.models.freezing import train_mode
from visionsweep.training.early_stopping import EarlyStopping
from visionsweep.training.schedulers import Schedule


@dataclass(frozen=True)
class LoopConfig:
    number_of_epochs: int
    primary_metric: str
    grad_accumulation_step: int = 1
    evaluation_frequency: int = 1
    early_stopping: bool = True
    early_stopping_patience: int = 5
    early_stopping_delay: int = 5
    grad_clip_type: str = "value"
    max_loss: float = 100.0  # a batch loss above this means training diverged
    mixed_precision: bool = True
    progress: bool = True


@dataclass
class LoopState:
    """What the loop carries from one epoch to the next beyond the model, optimizer and schedule: handed
    out with every ``EpochReport`` (``best_state`` left out: the caller saves the best weights itself), and
    handed back to ``fit(start=...)`` to continue a run."""

    next_epoch: int  # counted from 1
    early_stopping: dict[str, Any]  # EarlyStopping.state()
    grad_scaler: dict[str, Any] = field(default_factory=dict)  # GradScaler.state_dict(); empty without AMP
    best_metrics: dict[str, Any] = field(default_factory=dict)  # every validation metric of the best epoch
    best_state: dict[str, torch.Tensor] | None = None  # the kept weights of the best epoch (CPU tensors)


@dataclass
class EpochReport:
    """What one epoch produced; handed to ``on_epoch_end``."""

    epoch: int  # counted from 1
    train_loss: float
    learning_rate: float
    duration_s: float  # the whole epoch, validation included
    evaluated: bool
    metrics: dict[str, Any] = field(default_factory=dict)  # validation metrics, empty when not evaluated
    training_metrics: dict[str, float] = field(default_factory=dict)
    primary_value: float | None = None
    is_best: bool = False
    best_epoch: int | None = None  # counted from 1
    best_score: float | None = None
    stop_early: bool = False
    train_duration_s: float = 0.0  # the training passes of the epoch alone
    loop_state: LoopState | None = None  # where the loop stands after this epoch, to resume from


@dataclass
class FitResult:
    status: str  # "completed", "early_stopped" or "cancelled"
    epochs_run: int
    best_epoch: int | None  # counted from 1
    best_score: float | None
    best_metrics: dict[str, Any]


def fit(
    model: nn.Module,
    family: ModelFamily,
    train_loader: Any,
    val_loader: Any,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    config: LoopConfig,
    *,
    device: torch.device,
    on_epoch_end: Callable[[EpochReport, nn.Module], bool] | None = None,
    start: LoopState | None = None,
) -> FitResult:
    """Train ``model`` and leave the weights of the best epoch in it.

    ``on_epoch_end(report, model)`` runs after every epoch with the weights ``family`` keeps (see
    ``ModelFamily.weights_to_keep``); returning True cancels the run (it still ends with the best
    weights loaded). The best epoch's weights are kept in memory so that the
    model handed back, and everything exported from it, is the best epoch rather than the last.
    With several ranks, ``model`` is each process's copy of the network (not wrapped). ``start`` continues
    an interrupted run (see ``LoopState``) whose model, optimizer and schedule the caller has restored.
    """
    ranks = family.ranks
    trained = _parallel(model, ranks, device)
    use_amp = config.mixed_precision and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    stopper = EarlyStopping(patience=config.early_stopping_patience, delay=config.early_stopping_delay,
                            enabled=config.early_stopping)
    accumulation = max(1, min(config.grad_accumulation_step, len(train_loader)))
    start = start or LoopState(next_epoch=1, early_stopping=stopper.state())  # a new run: from the beginning
    stopper.load_state(start.early_stopping)
    if start.grad_scaler and scaler.is_enabled():  # a run saved without AMP (on the CPU) starts a fresh scale
        scaler.load_state_dict(start.grad_scaler)
    best_state, best_metrics = start.best_state, start.best_metrics
    # A run killed after deciding to stop early, before it wrote its model folder, trains no further.
    status = "early_stopped" if stopper.should_stop else "completed"
    last_epoch = start.next_epoch - 1 if stopper.should_stop else config.number_of_epochs
    epoch = start.next_epoch - 1
    for epoch in range(start.next_epoch, last_epoch + 1):
        started = time.perf_counter()
        start_epoch(train_loader, epoch)
        family.start_epoch(epoch)
        train_loss = _train_epoch(trained, family, train_loader, optimizer, schedule, scaler, accumulation, config,
                                  epoch, use_amp)
        report = EpochReport(epoch=epoch, train_loss=train_loss, learning_rate=schedule.learning_rate,
                             duration_s=0.0, evaluated=False, training_metrics=family.training_metrics(),
                             train_duration_s=time.perf_counter() - started)
        schedule.after_epoch()
        last = epoch == config.number_of_epochs
        kept = family.weights_to_keep(model)
        if (epoch - 1) % config.evaluation_frequency == 0 or last:
            kept.eval()
            with torch.no_grad(), torch.autocast(device.type, enabled=use_amp):
                report.metrics = family.evaluate(kept, val_loader)
            report.evaluated = True
            report.primary_value = float(report.metrics[config.primary_metric])
            report.is_best = stopper.update(epoch, report.primary_value)
            if report.is_best:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in kept.state_dict().items()}
                best_metrics = report.metrics
        report.best_epoch = stopper.best_epoch
        report.best_score = stopper.best_score if stopper.best_epoch is not None else None
        report.stop_early = stopper.should_stop
        report.loop_state = LoopState(next_epoch=epoch + 1, early_stopping=stopper.state(),
                                      grad_scaler=scaler.state_dict(), best_metrics=best_metrics)
        report.duration_s = time.perf_counter() - started
        cancelled = ranks.any(bool(on_epoch_end(report, kept)) if on_epoch_end else False)
        if cancelled:
            status = "cancelled"
            break
        if report.stop_early:
            status = "early_stopped"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(status=status, epochs_run=epoch, best_epoch=stopper.best_epoch,
                     best_score=stopper.best_score if stopper.best_epoch is not None else None,
                     best_metrics=best_metrics)


def _parallel(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """``model`` wrapped for distributed training when there are several ranks (itself otherwise)."""
    if not ranks.is_distributed:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _batch_step(family: ModelFamily, model: nn.Module, batch: Any, usable: Any
                ) -> tuple[tuple[torch.Tensor, int] | None, float]:
    """The family's training step on ``batch`` and the weight of its loss (None: skip the batch).

    Every process of a distributed run must take part in each gradient exchange, so one whose batch has no
    usable image runs ``usable`` (its last batch that had one) again with weight 0, adding nothing."""
    step = family.train_step(model, batch)
    if step is not None or not family.ranks.is_distributed:
        return step, 1.0
    if usable is None:
        raise TrainingError(f"no image of the first training batch of rank {family.ranks.rank} could be read, so it "
                            "cannot take part in distributed training; fix or remove the unreadable images (see the "
                            "data report)")
    return family.train_step(model, usable), 0.0


def _train_epoch(model, family, loader, optimizer, schedule, scaler, accumulation, config, epoch, use_amp) -> float:
    """One pass over this process's share of the training data; the mean training loss of every process."""
    ranks = family.ranks
    # DDP averages gradients over the processes: a loss summed over the batch is scaled back up.
    loss_scale = ranks.world_size if family.loss_reduction == "sum" else 1
    train_mode(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    device = next(iter(parameters)).device
    # Losses stay on the device and are read back every _CHECK_EVERY batches: reading one per batch
    # would stall a GPU between forward and backward.
    loss_sum = torch.zeros((), device=device)
    worst = torch.zeros((), device=device)
    images_seen = 0
    # The bar is updated by hand rather than wrapped around the loader: wrapping it with tqdm.auto
    # halved GPU throughput in bench/classification_throughput.py. disable=None: off when not a terminal.
    bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{config.number_of_epochs}", leave=False,
               disable=None if config.progress else True, mininterval=1.0)
    optimizer.zero_grad(set_to_none=True)
    last = len(loader) - 1
    usable = None  # the last batch with a usable image, to stand in for one without (``_batch_step``)
    for index, batch in enumerate(loader):
        stepping = (index + 1) % accumulation == 0 or index == last
        # Between optimizer steps the processes need not exchange gradients: they add up locally.
        exchange = contextlib.nullcontext() if stepping or not ranks.is_distributed else model.no_sync()
        with exchange:
            with torch.autocast("cuda", enabled=use_amp):
                step, weight = _batch_step(family, model, batch, usable)
            if step is not None and weight:
                usable = batch
            if step is not None:
                loss, images = step
                if weight:
                    detached = loss.detach().float()
                    loss_sum += detached * images
                    worst = torch.maximum(worst, torch.nan_to_num(detached, nan=math.inf))
                    images_seen += images
                scaler.scale(loss * (weight * loss_scale / accumulation)).backward()
        if stepping:
            scaler.unscale_(optimizer)
            if config.grad_clip_type == "norm":
                torch.nn.utils.clip_grad_norm_(parameters, max_norm=1.0)
            else:
                torch.nn.utils.clip_grad_value_(parameters, clip_value=5.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            schedule.after_optimizer_step()
            family.after_optimizer_step(model)
        if images_seen and (index % _CHECK_EVERY == _CHECK_EVERY - 1 or index == last):
            highest = worst.item()
            if not math.isfinite(highest) or highest > config.max_loss:
                raise TrainingError(
                    f"the training loss is exploding ({highest:.4g} in epoch {epoch}, by batch {index + 1} of "
                    f"{len(loader)}); reduce learning_rate (for example to a tenth of its value)")
            bar.set_postfix(loss=f"{loss_sum.item() / images_seen:.4f}", lr=f"{schedule.learning_rate:.2e}",
                            refresh=False)
        bar.update()
    bar.close()
    shares = ranks.gather({"loss_sum": loss_sum.item(), "images": images_seen})
    loss_total, images_total = sum(s["loss_sum"] for s in shares), sum(s["images"] for s in shares)
    return loss_total / images_total if images_total else float("nan")


_CHECK_EVERY = 20
