"""Everything a run checks and reads before it builds a model: shared by ``train`` and
``validate-data``, so that what validate-data accepts is exactly what a run accepts."""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from visionsweep.data.loading import TrainingData, load_training_data
from visionsweep.data.tiling import Tiling
from visionsweep.errors import CheckpointError, SettingsError, WeightsUnavailableError
from visionsweep.models import explanation_problem, get_model_spec, input_size_problem
from visionsweep.models.freezing import layers_to_freeze_problem
from visionsweep.models.weight_store import missing_files_problem
from visionsweep.settings import Settings, resolve_settings
from visionsweep.tasks import Task, parse_task
from visionsweep.checkpoint import incremental_checkpoint_path
from visionsweep.devices import device_problem, select_device, visible_gpu_count

log = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """A run's checked inputs: ``settings`` resolved (the seed drawn when it was unset), the
    ``device`` to train on and the ``data`` read, checked and split."""

    settings: Settings
    device: torch.device
    data: TrainingData


def prepare_run(task: Task | str, data: str | Path, validation_data: str | Path | None = None, *,
                settings: Settings | Mapping[str, Any] | None = None, label_column: str = "label",
                decode_images: bool = False, check_weights: bool = True) -> PreparedRun:
    """Resolve and check every setting, then read, check and split the data.

    Problems the schema cannot see, because they need the model registry, this machine or the
    file system (``run_settings_problems``), are reported together in one ``SettingsError`` before
    any image is read. The settings' notes are logged as warnings. A missing
    incremental-training checkpoint raises ``CheckpointError``. Data problems raise ``DataError``
    (see ``load_training_data``); with tiling, images too small for the grid are bad records.
    ``decode_images`` decodes every image in full instead of checking headers (validate-data's default).
    ``check_weights``: then find (or download) the pretrained files the model needs, before it is built;
    ``WeightsUnavailableError`` names those missing (``weight_store.missing_files_problem``).
    """
    task = parse_task(task)
    if not isinstance(settings, Settings):
        settings = resolve_settings(task, settings)
    seed = settings.seed if settings.seed is not None else secrets.randbelow(2**31)
    settings = settings.model_copy(update={"seed": seed})  # notes travel with the copy
    for note in settings.notes:  # shown by validate-data as by train (whose train.log keeps them)
        log.warning("setting note: %s", note)
    device = _check_run_settings(settings)
    loaded = load_training_data(task, data, validation_data, validation_size=settings.validation_size, seed=seed,
                                ignore_data_errors=settings.ignore_data_errors, label_column=label_column,
                                max_image_pixels=settings.max_image_pixels, decode_images=decode_images,
                                tiling=Tiling.from_settings(settings))
    missing = missing_files_problem([settings]) if check_weights else None
    if missing is not None:
        raise WeightsUnavailableError(missing)
    return PreparedRun(settings, device, loaded)


def run_settings_problems(settings: Settings, *, gpus: int | None, check_files: bool = True) -> list[str]:
    """The problems of ``settings`` that the schema cannot see, because they need the model registry,
    the machine or the file system: a ``model_name`` without a builder, ``layers_to_freeze`` beyond
    the model's layer groups, crop sizes a model of one input size cannot take, an ``xai_algorithm`` the model does not support (with
    ``model_explainability``), a ``device`` that a process seeing ``gpus`` CUDA GPUs cannot use (None
    leaves the device unchecked), a ``pretrained_weights`` file that does not exist (unless not
    ``check_files``). Each problem starts with the key it is about (``layers_to_freeze: ...``).

    The one place that decides these, for a run (``prepare_run``) and for every value the trials
    of a sweep can draw (``visionsweep.sweep.trial_checks``).
    """
    problems: list[str] = []
    try:
        spec = get_model_spec(settings.model_name)
    except SettingsError as error:
        problems.extend(error.problems)
    except WeightsUnavailableError:
        pass  # a Hugging Face model whose config is missing: missing_files_problem says it with the rest
    else:
        problem = layers_to_freeze_problem(spec.name, spec.layer_groups, settings.layers_to_freeze)
        if problem is not None:
            problems.append(problem)
        problem = input_size_problem(spec, settings.model_dump())
        if problem is not None:
            problems.append(problem)
        if settings.task.is_classification and settings.model_explainability:  # predictions the run's settings explain
            problem = explanation_problem(spec.name, settings.xai_algorithm)
            if problem is not None:
                problems.append(problem)
    if check_files and settings.pretrained and settings.pretrained_weights is not None \
            and not Path(settings.pretrained_weights).is_file():
        problems.append(f"pretrained_weights: file {settings.pretrained_weights} does not exist")
    if gpus is not None:
        problem = device_problem(settings.device, gpus)
        if problem is not None:
            problems.append(problem)
    return problems


def _check_run_settings(settings: Settings) -> torch.device:
    """The device to train on, after checking the settings that the schema cannot check."""
    problems = run_settings_problems(settings, gpus=visible_gpu_count())
    if problems:
        raise SettingsError(problems)
    checkpoint = incremental_checkpoint_path(settings.checkpoint_run_id, settings.checkpoint_filename)
    if checkpoint is not None and not checkpoint.is_file():
        raise CheckpointError(f"the incremental-training checkpoint {checkpoint} does not exist; check "
                              "checkpoint_run_id and checkpoint_filename")
    return select_device(settings.device)
