"""One training run, from settings and data to a run folder with the best model.

Run folder layout (docs/training.md; ``run_folder`` decides what may be replaced)::

    RUN_DIR/settings.json        resolved settings (seed included) and notes on ignored keys
    RUN_DIR/data_report.json     kept and skipped records of every data source, with reasons
    RUN_DIR/train.jsonl          the training records used (and validation.jsonl)
    RUN_DIR/metrics.jsonl        one line per epoch
    RUN_DIR/train.log            (train-R.log: the log of rank R of a distributed run)
    RUN_DIR/checkpoints/         last.pt after every epoch (what resuming the run needs: the network's weights,
                                 optimizer, schedule, early stopping, the family's state, the random generators;
                                 ``visionsweep.training.resume``), epoch_N.pt every checkpoint_frequency epochs
    RUN_DIR/report.html          the run report (learning curves, metrics, validation images), with report_data/*.csv
    RUN_DIR/model/               model.pt (best epoch), labels.json, settings.json, metrics.json, model.onnx
                                 (the best epoch exported, unless export_onnx is false), mlflow-model/
                                 (an MLflow pyfunc model, when save_mlflow and MLflow is installed)

Epochs are numbered from 1 in everything written here, as the training loop numbers them.

A distributed run (``visionsweep.distributed``) is the same function in every process: each reads and
checks the inputs, trains on its share of the data and validates on its share; rank 0 alone writes the
run folder, logs to the console and calls ``epoch_callback``.

A resumed run (``train(resume=True)``) continues the run in its folder after the last epoch ``last.pt``
holds, on the run's own records and settings; it appends to metrics.jsonl and train.log.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from visionsweep.checkpoint import (
    BEST_MODEL_FILE,
    incremental_checkpoint_path,
    load_for_incremental_training,
    save_checkpoint,
)
from visionsweep.console import console_progress
from visionsweep.data.failures import UnreadableImages
from visionsweep.data.jsonl import write_jsonl
from visionsweep.data.loading import TrainingData
from visionsweep.data.report import DataReport
from visionsweep.devices import seed_everything
from visionsweep.distributed import (
    DISTRIBUTED_SEED,
    Ranks,
    launched_world_size,
    process_device,
    ranks_from_environment,
    start_process_group,
    stop_process_group,
)
from visionsweep.errors import RunFolderError, SettingsError, VisionSweepError
from visionsweep.evaluation.classification import scalar_metrics
from visionsweep.exporting.mlflow_model import MLFLOW_MODEL_DIR, MlflowMissingError, write_mlflow_model
from visionsweep.exporting.onnx_file import ONNX_FILE, export_onnx
from visionsweep.families.base import ModelFamily, RunLoaders
from visionsweep.families.selection import family_for
from visionsweep.models import build_model, get_model_spec
from visionsweep.settings import Settings, resolve_settings
from visionsweep.tasks import Task, parse_task
from visionsweep.training.loop import EpochReport, LoopConfig, LoopState, fit
from visionsweep.training.optim import build_optimizer
from visionsweep.training.preflight import prepare_run
from visionsweep.training.resume import (
    ResumePoint,
    best_weights,
    last_checkpoint_path,
    restore_random_generators,
    restore_training,
    resume_point,
    training_state,
)
from visionsweep.training.run_folder import check_run_folder, clear_run_folder
from visionsweep.training.schedulers import Schedule
from visionsweep.utils import json_ready, write_json

log = logging.getLogger("visionsweep")

EpochCallback = Callable[[EpochReport], bool | None]

@dataclass
class TrainResult:
    run_dir: Path
    model_dir: Path
    status: str  # "completed", "early_stopped" or "cancelled"
    primary_metric: str
    best_score: float | None
    best_epoch: int | None
    epochs_run: int
    settings: Settings


def train(
    task: Task | str | None = None,
    data: str | Path | None = None,
    validation_data: str | Path | None = None,
    *,
    settings: Settings | Mapping[str, Any] | None = None,
    output: str | Path | None = None,
    epoch_callback: EpochCallback | None = None,
    progress: bool = True,
    label_column: str = "label",
    overwrite: bool = False,
    resume: bool = False,
) -> TrainResult:
    """Train one model and write its run folder.

    ``data`` and ``validation_data`` are JSONL files or MLTable folders; without validation data,
    ``validation_size`` of the training images are held out. ``settings`` are hyperparameters by
    name. ``epoch_callback(report)`` runs after each epoch (``report.epoch`` counts from 1); returning
    True cancels the run, which then still ends with its best model folder written. ``label_column`` is the JSONL key holding
    the labels (an Azure job's ``target_column_name``).

    ``progress`` (the default) shows the run on stderr while it trains: the lines ``visionsweep train``
    prints (data reports, "training ...", one line per epoch, "finished ...") and, on a terminal, a bar
    per epoch. ``progress=False`` shows neither. The lines are records of the "visionsweep" logger: when
    the application has configured logging (a handler on that logger or the root logger), they go to
    its handlers alone, whatever ``progress`` says; otherwise a handler on stderr is added for the call
    and removed when it ends (``visionsweep.console``). The run's ``train.log`` has them either way.

    Settings, data, device, model and weights are all checked before anything is written, so a
    mistake in any of them leaves no run folder behind. An ``output`` folder that holds an earlier
    run is refused unless ``overwrite``, which replaces that run's files (``run_folder.RUN_FILES``).

    ``resume`` continues the interrupted run in the folder ``output`` after the last epoch its
    ``checkpoints/last.pt`` holds (``visionsweep.training.resume``), on the run's own records and
    settings: ``data`` and ``validation_data`` are not given, ``task`` need not be, and ``settings`` may
    change only training_batch_size, grad_accumulation_step, num_workers and number_of_epochs (which may
    only grow). A folder without ``last.pt``, or whose run has finished, is refused.
    """
    point: ResumePoint | None = None
    if resume:
        _check_resume_arguments(data, validation_data, output, overwrite)
        point = resume_point(output, settings, task)
        task, settings, run_dir = point.task, point.settings, point.run_dir
        data, validation_data, label_column = point.train_file, point.validation_file, "label"
    elif task is None or data is None:
        raise TypeError("train() needs task and data, unless resume=True continues the run in output")
    else:
        task = parse_task(task)
        if not isinstance(settings, Settings):
            settings = resolve_settings(task, settings)
    settings = _distributed_settings(settings, launched_world_size())
    if point is None:
        run_dir = Path(output) if output is not None else _default_run_dir(settings)
        check_run_folder(run_dir, overwrite=overwrite)
    # The console shows rank 0's lines only (the rank is known from the launcher's environment already).
    with console_progress(progress and ranks_from_environment("cpu").is_main), _RunLog() as run_log:
        # Every setting and the data are checked before the run folder exists: a user's mistake leaves
        # no half-made run behind, and validate-data runs the very same checks.
        prepared = prepare_run(task, data, validation_data, settings=settings, label_column=label_column)
        settings, data_ = prepared.settings, prepared.data
        ranks = ranks_from_environment(prepared.device.type)
        device = process_device(prepared.device, ranks)
        if not ranks.is_main:
            run_log.file_only()
        seed_everything(settings.seed, settings.deterministic)
        for report in data_.reports:
            log.info("%s", report.summary())
        runtime = UnreadableImages({"training": data_.train, "validation": data_.validation},
                                   DataReport(source="images that failed to decode during the run"),
                                   ignore_data_errors=settings.ignore_data_errors, kept=False)
        joined = start_process_group(ranks)
        try:
            training = _prepare(settings, data_, device, runtime, progress and ranks.is_main, ranks)
            if ranks.is_main and point is None:
                clear_run_folder(run_dir)
            ranks.barrier()  # the other ranks write their logs into the folder rank 0 has just made
            run_log.start_file(run_dir / _log_name(ranks), append=point is not None)
            # Every rank restores the state rank 0 saved (one machine shares the run folder).
            resumed = _resume(training, point, data_.classes) if point is not None else None
            if not ranks.is_main:
                return _fit(training, task, settings, data_, run_dir, device, None, ranks, resumed)
            earlier_report = _write_run_inputs(run_dir, task, settings, data_, runtime, resumed=point is not None)
            try:
                result = _fit(training, task, settings, data_, run_dir, device, epoch_callback, ranks, resumed)
            finally:
                _write_data_report(run_dir, data_, runtime, earlier_report)
            if settings.write_report:  # last: it shows the data report with the images that failed in the run
                _write_report(run_dir)
            return result
        finally:
            if joined:
                stop_process_group()


def _write_run_inputs(run_dir: Path, task: Task, settings: Settings, data: TrainingData, runtime: UnreadableImages,
                      *, resumed: bool) -> dict[str, Any] | None:
    """settings.json, the records (a resumed run keeps those it started with) and data_report.json, which is
    written again at the end: a run killed on the way keeps the report of its data sources. Returns the
    data report of the run a resumed one continues."""
    earlier_report = _read_data_report(run_dir) if resumed else None
    write_json(run_dir / "settings.json", {**settings.to_dict(), "notes": settings.notes})
    if not resumed:
        write_jsonl(data.train, run_dir / "train.jsonl", task)
        write_jsonl(data.validation, run_dir / "validation.jsonl", task)
    _write_data_report(run_dir, data, runtime, earlier_report)
    return earlier_report


def _check_resume_arguments(data: Any, validation_data: Any, output: Any, overwrite: bool) -> None:
    """What ``train(resume=True)`` is not given: a resumed run has its folder, records and files already."""
    if output is None:
        raise RunFolderError("resume continues the run in a folder: give that folder as output")
    if data is not None or validation_data is not None:
        raise RunFolderError(f"a resumed run trains on its own records ({Path(output) / 'train.jsonl'} and "
                             "validation.jsonl); leave data and validation_data out")
    if overwrite:
        raise RunFolderError("overwrite replaces the run in the output folder and resume continues it; give one")


def _distributed_settings(settings: Settings, world_size: int) -> Settings:
    """``settings`` for a run of ``world_size`` processes: the same seed in all (47 unless set, as the
    reference), and ``distributed`` false refused, as it asks for one process."""
    if world_size <= 1:
        return settings
    if not settings.distributed:
        raise SettingsError([f"distributed: false, but this run was started as {world_size} processes; set "
                             "distributed true, or start one process"])
    if settings.seed is None:
        settings = settings.model_copy(update={"seed": DISTRIBUTED_SEED})
    return settings


def _log_name(ranks: Ranks) -> str:
    return "train.log" if ranks.is_main else f"train-{ranks.rank}.log"


@dataclass
class _Training:
    """Everything ``fit`` needs, built (and so checked) before the run folder is written."""

    model: nn.Module
    family: ModelFamily
    loaders: RunLoaders
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    config: LoopConfig


def _prepare(settings: Settings, data: TrainingData, device: torch.device, runtime: UnreadableImages,
             progress: bool, ranks: Ranks) -> _Training:
    spec = get_model_spec(settings.model_name)
    model = build_model(spec, len(data.classes), settings.model_dump(), pretrained=settings.pretrained,
                        pretrained_weights=settings.pretrained_weights, layers_to_freeze=settings.layers_to_freeze)
    checkpoint = incremental_checkpoint_path(settings.checkpoint_run_id, settings.checkpoint_filename)
    if checkpoint is not None:
        loaded = load_for_incremental_training(model, settings.model_name, checkpoint)
        log.info("incremental training: %d tensors loaded from %s", len(loaded), checkpoint)
    model.to(device)
    family = family_for(settings, data.classes, device, runtime, ranks)
    loaders = family.training_loaders(data.train, data.validation)
    # Batches are per process, so N processes take N times the batch in each step: the learning rate grows
    # with it (the linear scaling rule, as the reference).
    learning_rate = settings.learning_rate * ranks.world_size
    if ranks.is_distributed:
        log.info("distributed over %d processes (%s): batch %d per process, %d per step with "
                 "grad_accumulation_step %d; learning rate %g x %d = %g", ranks.world_size, ranks.backend,
                 settings.training_batch_size, settings.training_batch_size * ranks.world_size
                 * settings.grad_accumulation_step, settings.grad_accumulation_step, settings.learning_rate,
                 ranks.world_size, learning_rate)
    optimizer = build_optimizer(model, settings.optimizer, learning_rate=learning_rate,
                                weight_decay=settings.weight_decay, momentum=settings.momentum,
                                nesterov=settings.nesterov, beta1=settings.beta1, beta2=settings.beta2,
                                amsgrad=settings.amsgrad)
    batches = len(loaders.train)
    steps_per_epoch = math.ceil(batches / max(1, min(settings.grad_accumulation_step, batches)))
    warmup = family.warmup_start()
    schedule = Schedule(optimizer, settings.lr_scheduler, steps_per_epoch=steps_per_epoch,
                        epochs=settings.number_of_epochs, warmup_epochs=settings.warmup_cosine_lr_warmup_epochs,
                        cycles=settings.warmup_cosine_lr_cycles, step_size=settings.step_lr_step_size,
                        gamma=settings.step_lr_gamma, warmup_bias_lr=warmup.bias_lr,
                        warmup_momentum=warmup.momentum)
    config = LoopConfig(
        number_of_epochs=settings.number_of_epochs, primary_metric=settings.primary_metric,
        grad_accumulation_step=settings.grad_accumulation_step, evaluation_frequency=settings.evaluation_frequency,
        early_stopping=settings.early_stopping, early_stopping_patience=settings.early_stopping_patience,
        early_stopping_delay=settings.early_stopping_delay, grad_clip_type=settings.grad_clip_type,
        mixed_precision=settings.mixed_precision, progress=progress)
    return _Training(model, family, loaders, optimizer, schedule, config)


@dataclass
class _Resumed:
    """Where a resumed run starts: the loop's state, and whether model/model.pt is behind the best epoch."""

    point: ResumePoint
    loop: LoopState
    best_model_behind: bool


def _resume(training: _Training, point: ResumePoint, classes: list[str]) -> _Resumed:
    """Put the network, optimizer, schedule and family back as ``last.pt`` has them; the loop's state."""
    restore_training(point, model=training.model, optimizer=training.optimizer, schedule=training.schedule,
                     family=training.family, classes=classes)
    best_state, behind = best_weights(point, lambda: training.family.weights_to_keep(training.model))
    state = point.state
    loop = LoopState(next_epoch=point.epoch + 1, early_stopping=state["early_stopping"],
                     grad_scaler=state["grad_scaler"], best_metrics=state["best_metrics"], best_state=best_state)
    stopping = state["early_stopping"]
    best = "no best epoch yet" if stopping["best_epoch"] is None else \
        f"best {_format(stopping['best_score'])} at epoch {stopping['best_epoch']}"
    log.info("resuming %s after epoch %d of %d (%s)", point.run_dir, point.epoch, point.settings.number_of_epochs,
             best)
    for key, (before, after) in point.changes.items():
        log.info("resumed with %s %s (the run had %s)", key, after, before)
    return _Resumed(point, loop, behind)


def _fit(training: _Training, task: Task, settings: Settings, data: TrainingData, run_dir: Path,
         device: torch.device, epoch_callback: EpochCallback | None, ranks: Ranks,
         resumed: _Resumed | None = None) -> TrainResult:
    """Train (from where ``resumed`` says, if given); rank 0 also writes the model folder."""
    recorder = _EpochRecorder(run_dir, task, settings, data.classes, training, epoch_callback,
                              resumed_after=resumed.point.epoch if resumed else None) if ranks.is_main else None
    if resumed is not None and resumed.best_model_behind and recorder is not None:
        # Killed between writing last.pt and model.pt at a best epoch: write model.pt of that epoch now.
        stopping = resumed.loop.early_stopping
        recorder.save_best(training.family.weights_to_keep(training.model), stopping["best_epoch"],
                           stopping["best_score"], scalar_metrics(resumed.loop.best_metrics))
    log.info("training %s on %s: %d training and %d validation images, %d classes", settings.model_name, device,
             len(data.train), len(data.validation), len(data.classes))
    if resumed is not None:  # last: building the model and loaders drew from the generators
        restore_random_generators(resumed.point, training.loaders.train)
    result = fit(training.model, training.family, training.loaders.train, training.loaders.validation,
                 training.optimizer, training.schedule, training.config, device=device, on_epoch_end=recorder,
                 start=resumed.loop if resumed else None)
    model_dir = run_dir / "model"
    if recorder is None:
        return TrainResult(run_dir=run_dir, model_dir=model_dir, status=result.status,
                           primary_metric=settings.primary_metric, best_score=result.best_score,
                           best_epoch=result.best_epoch, epochs_run=result.epochs_run, settings=settings)
    if result.best_epoch is None:  # every evaluation was NaN: keep the final weights, say so
        log.warning("no epoch produced a usable %s; the model folder holds the final weights", settings.primary_metric)
        recorder.save_best(training.model, result.epochs_run, None, {})
    write_json(model_dir / "labels.json", data.classes)
    write_json(model_dir / "settings.json", settings.to_dict())
    if settings.export_onnx:
        _export_onnx(training.model, settings, data.classes, model_dir / ONNX_FILE)
    if settings.save_mlflow:
        _save_mlflow_model(model_dir)
    write_json(model_dir / "metrics.json", {"epoch": result.best_epoch, "epochs_run": result.epochs_run,
                                            "epochs_count_from": 1, "metrics": result.best_metrics})
    log.info("finished (%s) after %d epochs; best %s %s at epoch %s", result.status, result.epochs_run,
             settings.primary_metric, _format(result.best_score), result.best_epoch)
    return TrainResult(run_dir=run_dir, model_dir=model_dir, status=result.status,
                       primary_metric=settings.primary_metric, best_score=result.best_score,
                       best_epoch=result.best_epoch, epochs_run=result.epochs_run, settings=settings)


def _write_report(run_dir: Path) -> None:
    from visionsweep.reports.run_report import write_run_report  # matplotlib: only for runs that write one

    try:
        path = write_run_report(run_dir)
    except Exception as error:  # noqa: BLE001 - a report is never worth the trained model
        log.warning("could not write the run report: %s: %s", type(error).__name__, error)
    else:
        log.info("report: %s", path)


def _export_onnx(model: nn.Module, settings: Settings, classes: list[str], path: Path) -> None:
    """Write the best model as ONNX; a failure is a warning, as the trained model itself is fine."""
    try:
        exported = export_onnx(model, settings, classes, path)
    except Exception as error:  # any failure of the exporter: the run has succeeded and keeps its model.pt
        log.warning("warning: %s was not written (%s: %s); the model folder is complete without it, and "
                    "'visionsweep export' can retry", path.name, type(error).__name__, error)
        return
    log.info("wrote %s (%.1f MB) in %.1f s", path, exported.size_bytes / 1e6, exported.seconds)


def _save_mlflow_model(model_dir: Path) -> None:
    """Write ``model_dir/mlflow-model``. MLflow not installed is a log line, any other failure a warning:
    either way the model folder is complete without it."""
    try:
        written = write_mlflow_model(model_dir)
    except MlflowMissingError as error:
        log.info("%s/ not written: %s (or set save_mlflow false)", MLFLOW_MODEL_DIR, error)
        return
    except Exception as error:  # any failure of MLflow: the run has succeeded and keeps its model.pt
        log.warning("warning: %s/ was not written (%s: %s); the model folder is complete without it, and "
                    "'visionsweep export --format mlflow' can retry", MLFLOW_MODEL_DIR, type(error).__name__, error)
        return
    log.info("wrote %s (%.1f MB) in %.1f s", written.path, written.size_bytes / 1e6, written.seconds)


class _EpochRecorder:
    """After each epoch: a metrics.jsonl line, last.pt, the best checkpoint, periodic checkpoints, the user
    callback, in this order. A run killed between two of them redoes the epoch after the one last.pt
    holds: its metrics line is dropped on resume, and a model.pt behind last.pt is written again."""

    def __init__(self, run_dir: Path, task: Task, settings: Settings, classes: list[str], training: _Training,
                 callback: EpochCallback | None, *, resumed_after: int | None = None):
        self.run_dir, self.task, self.settings, self.classes = run_dir, task, settings, classes
        self.training, self.callback = training, callback
        self.metrics_file = run_dir / "metrics.jsonl"
        if resumed_after is None:
            self.metrics_file.write_text("")
        else:
            _keep_metrics_up_to(self.metrics_file, resumed_after)

    def __call__(self, report: EpochReport, model: nn.Module) -> bool:
        line = {
            "epoch": report.epoch, "epochs_count_from": 1,
            "train_loss": report.train_loss, "learning_rate": report.learning_rate,
            "duration_s": round(report.duration_s, 3), "train_duration_s": round(report.train_duration_s, 3),
            "evaluated": report.evaluated,
            "primary_metric": self.settings.primary_metric, "primary_value": report.primary_value,
            "is_best": report.is_best, "best_epoch": report.best_epoch, "best_score": report.best_score,
            **report.training_metrics, "validation": scalar_metrics(report.metrics),
            # per class (detection and segmentation), the twelve COCO numbers and the VOC curves, image-level
            # metrics and confusion matrices (evaluation/voc.py), when computed
            **{key: report.metrics[key] for key in (
                "per_label_metrics", "coco_metrics", "precisions_per_score_threshold", "recalls_per_score_threshold",
                "image_level_binary_classifier_metrics", "confusion_matrices_per_score_threshold",
            ) if key in report.metrics},
        }
        with self.metrics_file.open("a") as out:
            out.write(json.dumps(json_ready(line)) + "\n")
        self._save_last(report)
        if report.is_best:
            self.save_best(model, report.epoch, report.primary_value, scalar_metrics(report.metrics))
        frequency = self.settings.checkpoint_frequency
        if frequency and (report.epoch - 1) % frequency == 0:  # epochs 1, 1 + N, 1 + 2N ... as the reference
            self._save(self.run_dir / "checkpoints" / f"epoch_{report.epoch}.pt", model, report.epoch,
                       report.primary_value, scalar_metrics(report.metrics), with_optimizer=True)
        best = "no best yet" if report.best_epoch is None else \
            f"best {_format(report.best_score)} at epoch {report.best_epoch}"
        log.info("epoch %d/%d: train loss %s, %s %s (%s), %.1f s", report.epoch, self.settings.number_of_epochs,
                 _format(report.train_loss), self.settings.primary_metric, _format(report.primary_value), best,
                 report.duration_s)
        return bool(self.callback(report)) if self.callback else False

    def save_best(self, model: nn.Module, epoch: int, score: float | None, metrics: dict[str, Any]) -> None:
        self._save(self.run_dir / "model" / BEST_MODEL_FILE, model, epoch, score, metrics, with_optimizer=False)

    def _save_last(self, report: EpochReport) -> None:
        """``checkpoints/last.pt``: the network's own weights (what the loop trains on, not the weights a
        family keeps), with everything else that resuming after this epoch needs."""
        state = training_state(report.loop_state, self.training.family, self.training.loaders.train)
        self._save(last_checkpoint_path(self.run_dir), self.training.model, report.epoch, report.primary_value,
                   scalar_metrics(report.metrics), with_optimizer=True, training_state=state)

    def _save(self, path: Path, model: nn.Module, epoch: int, score: float | None, metrics: dict[str, Any], *,
              with_optimizer: bool, training_state: dict[str, Any] | None = None) -> None:
        save_checkpoint(path, model=model, task=self.task.value, model_name=self.settings.model_name,
                        labels=self.classes, settings=self.settings.to_dict(), epoch=epoch, score=score,
                        metrics=json_ready(metrics), optimizer=self.training.optimizer if with_optimizer else None,
                        schedule=self.training.schedule if with_optimizer else None, training_state=training_state,
                        architecture=get_model_spec(self.settings.model_name).architecture)


def _keep_metrics_up_to(metrics_file: Path, epoch: int) -> None:
    """Keep the metrics lines of epochs up to ``epoch``; a later line (or a half-written one) is of an epoch
    that a resumed run trains again."""
    kept = []
    for line in metrics_file.read_text(encoding="utf-8").splitlines() if metrics_file.is_file() else []:
        try:
            if json.loads(line)["epoch"] <= epoch:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    metrics_file.write_text("".join(kept), encoding="utf-8")


def _write_data_report(run_dir: Path, data: TrainingData, runtime: UnreadableImages,
                       earlier: dict[str, Any] | None = None) -> None:
    """``data_report.json``. A resumed run (``earlier``, the report of the run it continues) reads the records
    the run wrote out, so the sources and the split stay those of the first start; the images that failed
    to decode are those of both."""
    failed = [str(p) for p in runtime.report.skipped]
    report = {
        "sources": [r.to_dict() for r in data.reports],
        "validation_split_from_training": data.split_from_training,
        "training_images": len(data.train),
        "validation_images": len(data.validation),
        "classes": data.classes,
        "failed_during_run": failed,
    }
    if earlier is not None:
        report["sources"] = earlier.get("sources", report["sources"])
        report["validation_split_from_training"] = earlier.get("validation_split_from_training")
        report["failed_during_run"] = list(dict.fromkeys([*earlier.get("failed_during_run", []), *failed]))
    write_json(run_dir / "data_report.json", report)


def _read_data_report(run_dir: Path) -> dict[str, Any] | None:
    """The run's earlier data report, or None when there is none that reads as one."""
    try:
        report = json.loads((run_dir / "data_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _default_run_dir(settings: Settings) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{settings.task.value}-{settings.model_name}-{stamp}"
    taken = 1
    while (candidate := base if taken == 1 else base.with_name(f"{base.name}-{taken}")).exists():
        taken += 1  # two runs started in the same second
    return candidate


class _RunLog:
    """The run's ``train.log``: what the run logs, from its first line on.

    The run folder is written only once every input is checked, but what is logged while checking
    (setting notes, data reports, weights loaded) belongs in the log too: it is held in memory and
    written out when ``start_file`` opens the log. When the run fails, the log ends with the error:
    a user error (``VisionSweepError``) or an interruption as one line, anything else (a bug) with
    its traceback. That line goes to the file only: the caller tells the user (the CLI prints
    ``error: ...``), so a user error never shows a traceback.
    """

    def __init__(self) -> None:
        self._held = _HeldRecords()
        self._file: logging.FileHandler | None = None
        self._propagate = log.propagate
        self._level = log.level

    def __enter__(self) -> "_RunLog":
        log.addHandler(self._held)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)
        return self

    def file_only(self) -> None:
        """Log to the run's file only, not the console: every rank but 0 of a distributed run (the console
        shows one process's lines)."""
        log.propagate = False

    def start_file(self, path: Path, *, append: bool = False) -> None:
        """Write the log to ``path`` from now on (after what was held); ``append`` keeps what it holds (a
        resumed run's log goes on after the interrupted run's)."""
        self._file = logging.FileHandler(path, mode="a" if append else "w", encoding="utf-8")
        self._file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for record in self._held.records:
            self._file.handle(record)
        log.removeHandler(self._held)
        log.addHandler(self._file)

    def __exit__(self, error_type: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        log.removeHandler(self._held)
        log.propagate = self._propagate
        log.setLevel(self._level)
        if self._file is None:
            return
        if error is not None:
            if isinstance(error, KeyboardInterrupt):
                message, exc_info = "run interrupted", None
            elif isinstance(error, VisionSweepError):
                message, exc_info = f"run failed: {error}", None
            else:
                message, exc_info = "run failed", (error_type, error, traceback)
            self._file.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), exc_info))
        log.removeHandler(self._file)
        self._file.close()


class _HeldRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _format(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
