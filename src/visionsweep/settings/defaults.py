"""Reference defaults that depend on the task and the model, resolved in one place."""
from __future__ import annotations

import os
from typing import Any, Mapping

from visionsweep.tasks import Task

# Batch sizes and learning rates of the ViT variants: the largest batches that fit 12 GiB, per the
# reference table. Multi-class and multi-label learning rates differ.
_VIT = {
    "vits16r224": {"batch": 128, "lr": 0.0125, "lr_multilabel": 0.025},
    "vitb16r224": {"batch": 48, "lr": 0.0125, "lr_multilabel": 0.025},
    "vitl16r224": {"batch": 10, "lr": 0.001, "lr_multilabel": 0.002},
}


def task_model_defaults(task: Task, model_name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults for ``task`` and ``model_name``; ``given`` is consulted only where one key's
    default follows another's value (a ViT trains at its validation crop size)."""
    defaults: dict[str, Any] = {"primary_metric": task.primary_metric, "grad_clip_type": "value"}
    if task.is_classification:
        vit = _VIT.get(model_name)
        batch = vit["batch"] if vit else 78
        if vit:
            lr = vit["lr_multilabel"] if task.is_multilabel else vit["lr"]
        else:
            lr = 0.035 if task.is_multilabel else 0.01
        defaults.update(
            number_of_epochs=15, training_batch_size=batch, validation_batch_size=batch, learning_rate=lr,
            num_workers=_workers(8))
        if vit:
            defaults["grad_clip_type"] = "norm"
            defaults["train_crop_size"] = given.get("valid_crop_size", 224)
        defaults.update(_open_model_inputs(model_name, given))
    elif model_name == "yolov5":
        # The public documentation's values, which win over the vendor code's 12 and 0.0075.
        defaults.update(number_of_epochs=30, training_batch_size=16, validation_batch_size=16, learning_rate=0.01,
                        box_score_thresh=0.1, num_workers=_workers(8))
    else:  # R-CNN family, detection and segmentation alike
        defaults.update(number_of_epochs=15, training_batch_size=2, validation_batch_size=1, learning_rate=0.005,
                        num_workers=_workers(4))
    return defaults


_INPUT_KEYS = ("valid_crop_size", "valid_resize_size", "train_crop_size")


def _open_model_inputs(model_name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """A timm or Hugging Face model's crop and resize sizes, from its own config, for those not given.

    Nothing is looked up when all are given (a trained model's settings) or the name is the catalog's.
    A config that cannot be read leaves the reference defaults here: building the model reports it.
    """
    from visionsweep.model_catalog import open_model_source

    if all(key in given for key in _INPUT_KEYS) or open_model_source(model_name) is None:
        return {}
    from visionsweep.errors import WeightsUnavailableError
    from visionsweep.models.open_models import open_model_spec

    try:
        spec = open_model_spec(model_name)
    except WeightsUnavailableError:
        return {}
    crop = given.get("valid_crop_size", spec.input_size)
    return {"valid_crop_size": spec.input_size, "valid_resize_size": max(spec.resize_size, crop),
            "train_crop_size": crop if spec.fixed_input_size else spec.input_size}


def cpu_count() -> int:
    """The CPUs of this machine: the cap of the default ``num_workers``, and the count above which a
    ``num_workers`` given gets a note (``resolve_settings``)."""
    return os.cpu_count() or 1


def _workers(reference_default: int) -> int:
    """The reference's worker count, capped at this machine's CPU count (more workers only add memory)."""
    return min(reference_default, cpu_count())
