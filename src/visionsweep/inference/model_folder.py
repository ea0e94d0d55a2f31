"""Loading a trained model back from a run folder, a model folder or a checkpoint file."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from visionsweep.errors import CheckpointError
from visionsweep.models import build_model, get_model_spec
from visionsweep.settings import Settings, resolve_settings
from visionsweep.tasks import Task
from visionsweep.checkpoint import BEST_MODEL_FILE, load_checkpoint
from visionsweep.devices import select_device

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """A network in eval mode with what it needs to predict: its task, classes and settings."""

    task: Task
    model_name: str
    labels: list[str]
    settings: Settings
    model: nn.Module
    device: torch.device
    checkpoint: Path


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
                       device: str | torch.device | None = None) -> TrainedModel:
    """Rebuild the trained network. ``overrides`` replace inference settings of the training run
    (``valid_resize_size``, ``box_score_thresh``, ``validation_batch_size`` ...); they are validated
    like any settings. A ViT asked for another crop size gets its position embedding resampled."""
    checkpoint = find_checkpoint(path)
    content = load_checkpoint(checkpoint)
    task = Task(content["task"])
    stored = {k: v for k, v in content["settings"].items() if k != "task"}
    # The trained weights replace any starting point: a run's pretrained_weights is not read again.
    settings = resolve_settings(task, {**stored, **dict(overrides or {}), "pretrained": False,
                                       "pretrained_weights": None})
    for note in settings.notes:
        log.warning("setting note: %s", note)
    spec = get_model_spec(content["model_name"])
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
                        settings=settings, model=model, device=device, checkpoint=checkpoint)
