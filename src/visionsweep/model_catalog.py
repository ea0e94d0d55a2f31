"""The model names visionsweep knows, each with its family: the registry's index, readable without
importing torch (settings are checked in a fraction of a second; building a model takes seconds).

A name is registered once here, with its family, and once with its builder (``register_model``, which
refuses a name missing here or registered twice). A family decides the tasks its models serve. The
names are Azure's, except the two ``_v2`` models, which are beyond the reference (see docs/models.md).

Beyond the catalog, any timm model (``timm/<name>``, or a bare name of timm's registry) and any Hugging
Face image-classification checkpoint (``<org>/<name>``) is a classification model (``open_model_source``;
``visionsweep.models.open_models`` builds them).
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

TIMM, HUGGING_FACE = "timm", "huggingface"  # the two sources of classification models beyond the catalog
TIMM_PREFIX = "timm/"
OPEN_MODELS_HINT = ("any timm model name (timm/<name>, or a bare name; 'visionsweep models --search WORD' "
                    "lists them) or Hugging Face image-classification checkpoint (<org>/<name>)")


def model_names(task: Task) -> tuple[str, ...]:
    """The catalog's model names that serve ``task``, in catalog order."""
    return tuple(name for name, family in MODEL_FAMILIES.items() if task in FAMILY_TASKS[family])


def open_model_source(model_name: str) -> str | None:
    """``TIMM`` or ``HUGGING_FACE`` for a classification model beyond the catalog, None otherwise.

    ``timm/<name>`` is timm's, another ``<org>/<name>`` a Hugging Face checkpoint, and a bare name
    outside the catalog is timm's when timm's registry has it (only then is timm imported).
    """
    if model_name in MODEL_FAMILIES or not model_name.strip() or model_name != model_name.strip():
        return None
    if model_name.startswith(TIMM_PREFIX):
        return TIMM
    if "/" in model_name:
        org, _, name = model_name.partition("/")
        return HUGGING_FACE if org and name and "/" not in name else None
    import timm

    return TIMM if timm.is_model(model_name) else None


def model_name_problem(task: Task, model_name: str) -> str | None:
    """Why ``model_name`` cannot serve ``task`` (a ``model_name: ...`` line), or None when it can."""
    if model_name in model_names(task):
        return None
    if task in FAMILY_TASKS[CLASSIFICATION] and open_model_source(model_name) is not None:
        return None
    if model_name in MODEL_FAMILIES:
        return (f"model_name: {model_name} is a {MODEL_FAMILIES[model_name]} model, which does not serve {task}; "
                f"allowed for {task}: {', '.join(model_names(task))}")
    allowed = ", ".join(model_names(task))
    if task in FAMILY_TASKS[CLASSIFICATION]:
        allowed += f", or {OPEN_MODELS_HINT}"
    return f"model_name: got {model_name!r}; allowed for {task}: {allowed}"


def family_of(model_name: str) -> str:
    """The family of a known model name; ``SettingsError`` for an unknown one."""
    if model_name in MODEL_FAMILIES:
        return MODEL_FAMILIES[model_name]
    if open_model_source(model_name) is not None:
        return CLASSIFICATION
    raise SettingsError([f"model_name: {model_name!r} is not a known model; known: "
                         f"{', '.join(MODEL_FAMILIES)}, or {OPEN_MODELS_HINT}"])


def fixed_input_size_problem(model_name: str, train_crop_size: int | None, valid_crop_size: int | None) -> str | None:
    """Why a model of one input size cannot train at these crops (the schema asks it for
    ``FIXED_INPUT_SIZE_MODELS``, the registry for timm models of one size), or None."""
    if train_crop_size is None or valid_crop_size is None or train_crop_size == valid_crop_size:
        return None
    return (f"{model_name} needs train_crop_size == valid_crop_size (got {train_crop_size} and {valid_crop_size}): "
            "the position embedding is built for one input size")


def models_of(*families: str) -> frozenset[str]:
    """The model names of these families."""
    return frozenset(name for name, family in MODEL_FAMILIES.items() if family in families)
