"""The four tasks, their primary metrics and default models (the model names live in model_catalog.py).

The names and defaults follow the current Azure AutoML for Images how-to guide (see docs/models.md).
"""
from __future__ import annotations

from enum import Enum

from visionsweep.errors import SettingsError


class Task(str, Enum):
    CLASSIFICATION = "image_classification"
    MULTILABEL = "image_classification_multilabel"
    OBJECT_DETECTION = "image_object_detection"
    INSTANCE_SEGMENTATION = "image_instance_segmentation"

    @property
    def is_classification(self) -> bool:
        return self in (Task.CLASSIFICATION, Task.MULTILABEL)

    @property
    def is_multilabel(self) -> bool:
        return self is Task.MULTILABEL

    @property
    def predicts_masks(self) -> bool:
        """Whether a prediction of this task has a mask (a polygon) per object."""
        return self is Task.INSTANCE_SEGMENTATION

    @property
    def primary_metric(self) -> str:
        return _PRIMARY_METRIC[self]

    @property
    def default_model(self) -> str:
        return _DEFAULT_MODEL[self]

    @property
    def primary_metric_choices(self) -> tuple[str, ...]:
        """Metrics that may drive model selection: the task's scalar metrics, all higher-is-better."""
        return _PRIMARY_METRIC_CHOICES[self]

    def __str__(self) -> str:
        return self.value


# The current how-to guide marks these as defaults; the older hyperparameter table said
# seresnext and fasterrcnn_resnet50_fpn. The newer page wins (docs/models.md).
_DEFAULT_MODEL = {
    Task.CLASSIFICATION: "vitb16r224",
    Task.MULTILABEL: "vitb16r224",
    Task.OBJECT_DETECTION: "yolov5",
    Task.INSTANCE_SEGMENTATION: "maskrcnn_resnet50_fpn",
}
_PRIMARY_METRIC = {
    Task.CLASSIFICATION: "accuracy",
    Task.MULTILABEL: "iou",
    Task.OBJECT_DETECTION: "mean_average_precision",
    Task.INSTANCE_SEGMENTATION: "mean_average_precision",
}
_AVERAGED = tuple(
    f"{metric}_{average}"
    for metric in ("precision_score", "recall_score", "f1_score", "AUC", "average_precision_score")
    for average in ("macro", "micro", "weighted")
)
_PRIMARY_METRIC_CHOICES = {
    Task.CLASSIFICATION: ("accuracy", *_AVERAGED),
    Task.MULTILABEL: ("iou", "iou_macro", "iou_micro", "iou_weighted", "accuracy", *_AVERAGED),
    Task.OBJECT_DETECTION: ("mean_average_precision",),
    Task.INSTANCE_SEGMENTATION: ("mean_average_precision",),
}
# Older Azure runtime spellings, accepted so that vendor settings files load unchanged.
_TASK_ALIASES = {
    "image-classification": Task.CLASSIFICATION,
    "image-classification-multilabel": Task.MULTILABEL,
    "image-multi-labeling": Task.MULTILABEL,
    "image-object-detection": Task.OBJECT_DETECTION,
    "image-instance-segmentation": Task.INSTANCE_SEGMENTATION,
}


def parse_task(value: str | Task) -> Task:
    """Return the Task for a name such as ``image_classification`` (Azure's older dashed names work too)."""
    if isinstance(value, Task):
        return value
    text = str(value).strip()
    try:
        return Task(text)
    except ValueError:
        pass
    if text in _TASK_ALIASES:
        return _TASK_ALIASES[text]
    allowed = ", ".join(t.value for t in Task)
    raise SettingsError([f"task: got {value!r}; allowed: {allowed}"])
