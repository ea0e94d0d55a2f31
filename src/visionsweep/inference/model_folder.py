"""Loading a trained model back from a run folder, a model folder, a checkpoint file or an exported
ONNX file, for the torch runtime or ONNX Runtime."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from visionsweep.errors import CheckpointError, ExportError, SettingsError
from visionsweep.exporting.metadata import OnnxMetadata
from visionsweep.exporting.onnx_file import ONNX_FILE
from visionsweep.exporting.runtime import OnnxSession
from visionsweep.models import build_model, get_model_spec
from visionsweep.settings import Settings, resolve_settings
from visionsweep.tasks import Task
from visionsweep.checkpoint import BEST_MODEL_FILE, load_checkpoint
from visionsweep.devices import select_device

log = logging.getLogger(__name__)

TORCH, ONNXRUNTIME = "torch", "onnxruntime"
RUNTIMES = (TORCH, ONNXRUNTIME)


@dataclass
class TrainedModel:
    """A trained network with what it needs to predict: its task, classes and settings. ``model`` is the
    torch network in eval mode, or ``onnx`` the exported graph for ONNX Runtime (then ``model`` is None)."""

    task: Task
    model_name: str
    labels: list[str]
    settings: Settings
    model: nn.Module | None
    device: torch.device
    source: Path
    onnx: OnnxSession | None = None


def find_checkpoint(path: str | Path) -> Path:
    """Accept a run folder (``RUN/model/model.pt``), a model folder (``model.pt``) or the file itself
    (``visionsweep.api`` turns a sweep's run folder into its best trial's model folder first)."""
    path = Path(path)
    for candidate in (path, path / BEST_MODEL_FILE, path / "model" / BEST_MODEL_FILE):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"no trained model at {path}: expected a run folder, a model folder holding "
                          f"{BEST_MODEL_FILE}, a checkpoint file, or a sweep's run folder")


def load_trained_model(path: str | Path, *, overrides: Mapping[str, Any] | None = None,
                       device: str | torch.device | None = None, runtime: str | None = None) -> TrainedModel:
    """The trained model at ``path`` for ``runtime``: ``torch`` (the default for a model folder) rebuilds
    the network from the checkpoint; ``onnxruntime`` (the default for an ``.onnx`` file) runs the model
    folder's ``model.onnx``, or the file given.

    ``overrides`` replace inference settings of the training run (``valid_resize_size``,
    ``box_score_thresh``, ``validation_batch_size`` ...); they are validated like any settings. A ViT
    asked for another crop size gets its position embedding resampled; an ONNX graph refuses the
    settings it holds fixed (``ModelFamily.onnx_model``).
    """
    path = Path(path)
    is_onnx_file = path.suffix.lower() == ".onnx" and path.is_file()
    runtime = runtime or (ONNXRUNTIME if is_onnx_file else TORCH)
    if runtime not in RUNTIMES:
        raise SettingsError([f"runtime: got {runtime!r}; use {' or '.join(RUNTIMES)}"])
    if is_onnx_file:
        if runtime != ONNXRUNTIME:
            raise SettingsError([f"runtime: {path} is an ONNX file, which runs with onnxruntime, not {runtime}"])
        return load_onnx_model(path, overrides=overrides, device=device)
    trained = _load_checkpoint(find_checkpoint(path), overrides, device)
    if runtime == TORCH:
        return trained
    exported = trained.source.parent / ONNX_FILE
    if not exported.is_file():
        raise ExportError(f"no {ONNX_FILE} beside {trained.source}: export it with 'visionsweep export "
                          f"{trained.source.parent}' (training writes it unless export_onnx is false)")
    onnx_model = load_onnx_model(exported, overrides=overrides, device=trained.device)
    _check_same_model(onnx_model, trained)
    return onnx_model


def load_onnx_model(path: str | Path, *, overrides: Mapping[str, Any] | None = None,
                    device: str | torch.device | None = None) -> TrainedModel:
    """An exported file for ONNX Runtime, its task, classes and settings read from its metadata."""
    path = Path(path)
    metadata = OnnxMetadata.of_file(path)
    if metadata.input_shape[0] is not None:
        raise ExportError(f"{path} takes batches of exactly {metadata.input_shape[0]} images; visionsweep predicts "
                          "with files of any batch size: export one without --batch")
    try:
        task = Task(metadata.task)
    except ValueError:
        raise ExportError(f"{path}: its metadata names task {metadata.task!r}, which this visionsweep does not "
                          "know") from None
    if metadata.model_architecture is not None:  # builds the family's inputs where the model's config is not cached
        get_model_spec(metadata.model_name, metadata.model_architecture)
    stored = {k: v for k, v in metadata.settings.items() if k != "task"}
    settings = resolve_settings(task, {**stored, **dict(overrides or {}), "pretrained": False,
                                       "pretrained_weights": None})
    if settings.model_name != metadata.model_name:
        raise ExportError(f"{path}: its metadata names model {metadata.model_name!r} but its settings "
                          f"{settings.model_name!r}; export the model folder again")
    device = select_device(settings.device) if device is None else torch.device(device)
    return TrainedModel(task=task, model_name=metadata.model_name, labels=list(metadata.labels), settings=settings,
                        model=None, device=device, source=path, onnx=OnnxSession(path, device))


def _check_same_model(exported: TrainedModel, trained: TrainedModel) -> None:
    """The model folder's ONNX file must be the export of its checkpoint (not of an earlier run)."""
    differences = [f"{what}: {theirs!r} in the ONNX file, {ours!r} in the checkpoint"
                   for what, theirs, ours in (("task", exported.task.value, trained.task.value),
                                              ("model", exported.model_name, trained.model_name),
                                              ("labels", exported.labels, trained.labels)) if theirs != ours]
    if differences:
        raise ExportError(f"{exported.source} does not match {trained.source} ({'; '.join(differences)}); "
                          f"export it again with 'visionsweep export {trained.source.parent}'")


def _load_checkpoint(checkpoint: Path, overrides: Mapping[str, Any] | None,
                     device: str | torch.device | None) -> TrainedModel:
    content = load_checkpoint(checkpoint)
    task = Task(content["task"])
    stored = {k: v for k, v in content["settings"].items() if k != "task"}
    # The trained weights replace any starting point: a run's pretrained_weights is not read again.
    settings = resolve_settings(task, {**stored, **dict(overrides or {}), "pretrained": False,
                                       "pretrained_weights": None})
    for note in settings.notes:
        log.warning("setting note: %s", note)
    spec = get_model_spec(content["model_name"], content.get("model_architecture"))
    model = build_model(spec, len(content["labels"]), settings.model_dump(), pretrained=False,
                        pretrained_weights=None, layers_to_freeze=None)
    state = content["model_state"]
    if spec.adapt_pretrained is not None:
        state = spec.adapt_pretrained(state, model)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{checkpoint} does not fit a {content['model_name']} built with these settings: "
                              f"{error}") from None
    device = select_device(settings.device) if device is None else torch.device(device)
    model.to(device).eval()
    return TrainedModel(task=task, model_name=content["model_name"], labels=list(content["labels"]),
                        settings=settings, model=model, device=device, source=checkpoint)
