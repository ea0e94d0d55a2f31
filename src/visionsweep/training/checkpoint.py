"""Checkpoint files: what a trained model needs to predict again, and incremental training from one.

A checkpoint is a ``torch.save`` dict with ``task``, ``model_name``, ``labels`` (class names in
index order), ``settings`` (the run's resolved settings), ``model_state``, ``epoch``, ``score`` and
``metrics`` of that epoch; periodic checkpoints add ``optimizer_state`` and ``lr_scheduler_state``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionsweep.errors import CheckpointError
from visionsweep.models.weights import load_matching

FORMAT = "visionsweep-checkpoint/1"
BEST_MODEL_FILE = "model.pt"


def save_checkpoint(path: Path, *, model: nn.Module, task: str, model_name: str, labels: list[str],
                    settings: dict[str, Any], epoch: int, score: float | None, metrics: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, schedule: Any = None) -> Path:
    """Write a checkpoint atomically (a killed run never leaves a half-written file behind)."""
    content = {
        "format": FORMAT, "task": task, "model_name": model_name, "labels": list(labels),
        "number_of_classes": len(labels), "settings": settings, "epoch": epoch, "score": score,
        "metrics": metrics, "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if optimizer is not None:
        content["optimizer_state"] = optimizer.state_dict()
    if schedule is not None:
        content["lr_scheduler_state"] = schedule.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(content, partial)
    partial.replace(path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable checkpoint: {error}") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a visionsweep checkpoint (no {FORMAT!r} format marker)")
    return content


def incremental_checkpoint_path(checkpoint_run_id: str | None, checkpoint_filename: str | None) -> Path | None:
    """The file named by the incremental-training settings, or None when neither is set.

    ``checkpoint_run_id`` is an earlier run folder (its best model is used); ``checkpoint_filename``
    is a checkpoint file, relative to that run folder when both are given.
    """
    if checkpoint_run_id is None and checkpoint_filename is None:
        return None
    if checkpoint_run_id is None:
        return Path(checkpoint_filename)
    run = Path(checkpoint_run_id)
    if not run.is_dir():
        raise CheckpointError(f"checkpoint_run_id: run folder {run} does not exist")
    if checkpoint_filename is not None:
        return run / checkpoint_filename
    return run / "model" / BEST_MODEL_FILE


def load_for_incremental_training(model: nn.Module, model_name: str, path: Path) -> list[str]:
    """Start ``model`` from a checkpoint's weights: same model_name required, parameters matched by
    name and shape (so a head for another number of classes is left fresh). Optimizer and
    schedule start anew, as in the reference."""
    content = load_checkpoint(path)
    if content["model_name"] != model_name:
        raise CheckpointError(f"{path} holds a {content['model_name']} model, but this run trains {model_name}; "
                              "use a checkpoint of the same model_name")
    loaded = load_matching(model, content["model_state"])
    if not loaded:
        raise CheckpointError(f"{path} shares no parameter (by name and shape) with this {model_name}")
    return loaded
