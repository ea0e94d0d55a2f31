"""The four tasks, their primary metrics and the model names each accepts.

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
    def primary_metric(self) -> str:
        return _PRIMARY_METRIC[self]

    @property
    def default_model(self) -> str:
        return _DEFAULT_MODEL[self]

    @property
    def model_names(self) -> tuple[str, ...]:
        return _MODEL_NAMES[self]

    @property
    def primary_metric_choices(self) -> tuple[str, ...]:
        """Metrics that may drive model selection: the task's scalar metrics, all higher-is-better."""
        return _PRIMARY_METRIC_CHOICES[self]

    def __str__(self) -> str:
        return self.value


CLASSIFICATION_MODELS = (
    "mobilenetv2", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnest50", "resnest101", "seresnext", "vits16r224", "vitb16r224", "vitl16r224",
)
VIT_MODELS = ("vits16r224", "vitb16r224", "vitl16r224")
RCNN_DETECTION_MODELS = (
    "fasterrcnn_resnet18_fpn", "fasterrcnn_resnet34_fpn", "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet101_fpn", "fasterrcnn_resnet152_fpn", "retinanet_resnet50_fpn",
)
SEGMENTATION_MODELS = (
    "maskrcnn_resnet18_fpn", "maskrcnn_resnet34_fpn", "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet101_fpn", "maskrcnn_resnet152_fpn",
)
DETECTION_MODELS = ("yolov5", *RCNN_DETECTION_MODELS)

_MODEL_NAMES = {
    Task.CLASSIFICATION: CLASSIFICATION_MODELS,
    Task.MULTILABEL: CLASSIFICATION_MODELS,
    Task.OBJECT_DETECTION: DETECTION_MODELS,
    Task.INSTANCE_SEGMENTATION: SEGMENTATION_MODELS,
}
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
