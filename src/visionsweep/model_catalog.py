"""The model names visionsweep knows, each with its family: the registry's index, readable without
importing torch (settings are checked in a fraction of a second; building a model takes seconds).

A name is registered once here, with its family, and once with its builder (``register_model``, which
refuses a name missing here or registered twice). A family decides the tasks its models serve. The
names are Azure's, except the two ``_v2`` models, which are beyond the reference (see docs/models.md).
"""
from __future__ import annotations

from visionsweep.errors import SettingsError
from visionsweep.tasks import Task

CLASSIFICATION = "classification"
RCNN = "rcnn"            # Faster R-CNN and RetinaNet: boxes
MASK_RCNN = "mask_rcnn"  # the R-CNN family's instance-segmentation variant: boxes and masks
YOLOV5 = "yolov5"

FAMILY_TASKS: dict[str, tuple[Task, ...]] = {
    CLASSIFICATION: (Task.CLASSIFICATION, Task.MULTILABEL),
    RCNN: (Task.OBJECT_DETECTION,),
    MASK_RCNN: (Task.INSTANCE_SEGMENTATION,),
    YOLOV5: (Task.OBJECT_DETECTION,),
}

# name -> family, in the order the how-to guide lists them (the order of `visionsweep models`).
MODEL_FAMILIES: dict[str, str] = {
    **{name: CLASSIFICATION for name in (
        "mobilenetv2", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
        "resnest50", "resnest101", "seresnext", "vits16r224", "vitb16r224", "vitl16r224")},
    YOLOV5: YOLOV5,
    **{f"fasterrcnn_resnet{depth}_fpn": RCNN for depth in (18, 34, 50, 101, 152)},
    "retinanet_resnet50_fpn": RCNN,
    "fasterrcnn_resnet50_fpn_v2": RCNN,  # beyond the reference: torchvision's v2 weights (docs/models.md)
    **{f"maskrcnn_resnet{depth}_fpn": MASK_RCNN for depth in (18, 34, 50, 101, 152)},
    "maskrcnn_resnet50_fpn_v2": MASK_RCNN,  # beyond the reference, as above
}

# Vision transformers: the position embedding is built for one input size.
FIXED_INPUT_SIZE_MODELS = frozenset({"vits16r224", "vitb16r224", "vitl16r224"})


def model_names(task: Task) -> tuple[str, ...]:
    """The model names that serve ``task``, in catalog order."""
    return tuple(name for name, family in MODEL_FAMILIES.items() if task in FAMILY_TASKS[family])


def family_of(model_name: str) -> str:
    """The family of a known model name; ``SettingsError`` for an unknown one."""
    try:
        return MODEL_FAMILIES[model_name]
    except KeyError:
        raise SettingsError([f"model_name: {model_name!r} is not a known model; known: "
                             f"{', '.join(MODEL_FAMILIES)}"]) from None


def models_of(*families: str) -> frozenset[str]:
    """The model names of these families."""
    return frozenset(name for name, family in MODEL_FAMILIES.items() if family in families)
