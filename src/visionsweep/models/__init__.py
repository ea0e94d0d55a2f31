"""Models: one registry from ``model_name`` to a builder, and ``create_model``, the one door to it."""
from __future__ import annotations

from typing import Any

from torch import nn

from visionsweep.models import classification  # noqa: F401  (registers the classification models)
from visionsweep.models import detection  # noqa: F401  (registers the R-CNN detectors)
from visionsweep.models.yolo import registration  # noqa: F401  (registers yolov5)
from visionsweep.models.registry import (
    ModelSpec, build_model, explanation_problem, get_model_spec, gradcam_layer, input_size_problem, is_model, list_models,
    register_model,
)
from visionsweep.tasks import Task, parse_task

__all__ = ["ModelSpec", "build_model", "create_model", "explanation_problem", "get_model_spec", "gradcam_layer",
           "input_size_problem", "is_model", "list_models", "register_model"]


def create_model(model_name: str, num_classes: int, *, task: Task | str | None = None, **settings: Any) -> nn.Module:
    """Return the network a run with these settings would train, before its first step.

    ``settings`` are hyperparameters by name (``pretrained``, ``pretrained_weights``,
    ``layers_to_freeze``, ``valid_crop_size``, ``min_size`` ...), validated like a run's. ``task``
    defaults to the first task the model serves.
    """
    from visionsweep.settings import resolve_settings

    spec = get_model_spec(model_name)
    task = parse_task(task) if task is not None else spec.tasks[0]
    resolved = resolve_settings(task, {"model_name": model_name, **settings})
    return build_model(spec, num_classes, resolved.model_dump(), pretrained=resolved.pretrained,
                       pretrained_weights=resolved.pretrained_weights, layers_to_freeze=resolved.layers_to_freeze)
