"""The hyperparameter schema: every key, its type, its allowed range and where it applies.

Ranges follow the public Azure documentation (the vendor code checks far less). Defaults here are
the ones that do not depend on task or model; those that do are filled in by
``visionsweep.settings.defaults.task_model_defaults`` before validation.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from visionsweep.model_catalog import FIXED_INPUT_SIZE_MODELS, MASK_RCNN, RCNN, YOLOV5, fixed_input_size_problem, models_of
from visionsweep.tasks import Task

RCNN_MODELS = models_of(RCNN, MASK_RCNN)
YOLO_MODELS = models_of(YOLOV5)

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
UnitFloat = Annotated[float, Field(ge=0.0, le=1.0)]

# Upper bounds of the size and count settings; docs/security.md ("Size and count limits of settings")
# gives the reason for each. All lie far above every reference default and documented example: past
# them a run cannot fit in memory, forks more processes than any machine has cores, or the value is a
# typo that would otherwise surface hours later as an out-of-memory kill with no message.
MAX_IMAGE_SIDE = 4096  # pixels of an input side: 3 x 4096 x 4096 float32 is 192 MiB per image
MAX_BATCH_SIZE = 1024
MAX_ACCUMULATION_STEPS = 1024
MAX_EPOCHS = 10_000  # also bounds every setting counted in epochs or evaluations
MAX_WORKERS = 64
MAX_DETECTIONS_PER_IMAGE = 10_000
MAX_POLYGON_POINTS = 10_000
MAX_TILES_PER_SIDE = 16  # a grid of c x r tiles costs about 1 + c r model passes per image
MAX_SEED = 2**32 - 1  # NumPy's seed range: a larger seed would be folded onto a smaller one

ImageSide = Annotated[int, Field(gt=0, le=MAX_IMAGE_SIDE)]
BatchSize = Annotated[int, Field(gt=0, le=MAX_BATCH_SIZE)]
Epochs = Annotated[int, Field(gt=0, le=MAX_EPOCHS)]
EpochsOrZero = Annotated[int, Field(ge=0, le=MAX_EPOCHS)]

# Explanation methods and integrated gradients' integrals (explaining/ runs them).
XAI_ALGORITHMS: tuple[str, ...] = ("xrai", "integrated_gradients", "guided_backprop", "guided_gradcam")
APPROXIMATION_METHODS: tuple[str, ...] = ("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid",
                                          "gausslegendre")
MAX_STEPS = 1000  # integrated gradients and XRAI run the network about n_steps times per image


class Settings(BaseModel):
    """Resolved settings of one training run. Build it with ``resolve_settings``, not directly."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
    _notes: list[str] = PrivateAttr(default_factory=list)

    task: Task
    model_name: str = Field(description="Model architecture; see docs/models.md for the names per task.")

    # --- training loop (all tasks) -------------------------------------------------------------
    number_of_epochs: Epochs = Field(description="Training epochs.")
    training_batch_size: BatchSize = Field(description="Images per training batch.")
    validation_batch_size: BatchSize = Field(description="Images per validation and prediction batch.")
    grad_accumulation_step: Annotated[int, Field(gt=0, le=MAX_ACCUMULATION_STEPS)] = Field(
        1, description="Batches whose gradients are summed before one optimizer step.")
    early_stopping: bool = Field(True, description="Stop when the primary metric stops improving.")
    early_stopping_patience: Epochs = Field(
        5, description="Evaluations without improvement (after the first early_stopping_delay epochs) before stopping.")
    early_stopping_delay: EpochsOrZero = Field(
        5, description="Number of first epochs whose evaluations do not count towards patience.")
    learning_rate: float = Field(gt=0.0, le=1.0, description="Initial (peak) learning rate.")
    lr_scheduler: Literal["warmup_cosine", "step"] = Field(
        "warmup_cosine", description="warmup_cosine: linear warmup then cosine, per step; step: StepLR per epoch.")
    step_lr_gamma: UnitFloat = Field(0.5, description="step scheduler: factor applied every step_lr_step_size epochs.")
    step_lr_step_size: Epochs = Field(5, description="step scheduler: epochs between decays.")
    warmup_cosine_lr_cycles: UnitFloat = Field(
        0.45, description="warmup_cosine: cosine cycles over the post-warmup steps (0.5 decays to zero).")
    warmup_cosine_lr_warmup_epochs: EpochsOrZero = Field(2, description="warmup_cosine: epochs of linear warmup.")
    optimizer: Literal["sgd", "adam", "adamw"] = Field("sgd", description="Optimizer.")
    momentum: UnitFloat = Field(0.9, description="sgd momentum.")
    weight_decay: UnitFloat = Field(1e-4, description="Weight decay (not applied to norm layers and biases).")
    nesterov: bool = Field(True, description="sgd: Nesterov momentum (needs momentum > 0).")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="adam/adamw first-moment decay.")
    beta2: float = Field(0.999, ge=0.0, lt=1.0, description="adam/adamw second-moment decay.")
    amsgrad: bool = Field(False, description="adam/adamw: use the AMSGrad variant.")
    evaluation_frequency: Epochs = Field(
        1, description="Validate every N epochs: epochs 1, 1 + N, 1 + 2N ..., and always the last.")
    checkpoint_frequency: Optional[Epochs] = Field(
        None, description="Also keep a checkpoint at epochs 1, 1 + N, 1 + 2N ...; unset keeps only the best epoch's.")
    checkpoint_run_id: Optional[str] = Field(
        None, description="Incremental training: an earlier run folder whose best checkpoint to start from.")
    checkpoint_filename: Optional[str] = Field(
        None, description="Incremental training: a checkpoint file (relative to checkpoint_run_id when both given).")
    layers_to_freeze: Optional[NonNegativeInt] = Field(
        None, description="Freeze this many leading layer groups of the backbone (docs/models.md lists them).")
    grad_clip_type: Literal["value", "norm"] = Field(
        description="value: clip each gradient to +/-5; norm: clip the total L2 norm to 1.")
    validation_size: float = Field(
        0.2, gt=0.0, lt=1.0, description="Fraction of the training data held out when no validation data is given.")
    seed: Optional[Annotated[int, Field(ge=0, le=MAX_SEED)]] = Field(
        None, description="Random seed; unset draws one (47 in a distributed run, so that every process has the "
                          "same), which is recorded in the run's settings.json.")
    distributed: bool = Field(
        True, description="Train on every GPU of the machine, one process each (PyTorch DDP), when it has more than "
                          "one; false trains on one. See docs/distributed.md.")
    deterministic: bool = Field(False, description="Ask PyTorch for deterministic algorithms (slower on GPU).")
    num_workers: Annotated[int, Field(ge=0, le=MAX_WORKERS)] = Field(
        description="Data loader worker processes. The default is capped at the CPU count; a larger value given "
                    "is used as given, with a note.")
    ignore_data_errors: bool = Field(
        True, description="Skip bad images and records (each reported); false makes the first one an error.")
    primary_metric: str = Field(description="Metric that picks the best epoch and drives early stopping.")
    log_training_metrics: Literal["Enable", "Disable"] = Field(
        "Disable", description="Enable: also compute the primary metric on the training data each epoch.")
    log_validation_loss: Literal["Enable", "Disable"] = Field(
        "Enable", description="Detection: compute the validation loss each epoch.")
    enable_onnx_normalization: bool = Field(
        False, description="ONNX export: take 0-255 RGB input and normalise inside the graph.")
    export_onnx: bool = Field(
        True, description="After training, write model.onnx beside model.pt in the model folder (a failed export "
                          "is a warning, never a failed run).")
    save_mlflow: bool = Field(
        True, description="After training, write mlflow-model/ (an MLflow pyfunc model) in the model folder; a "
                          "sweep writes it into best_model/ only. Needs pip install 'visionsweep[mlflow]' (without "
                          "it, a log line); a failure is a warning, never a failed run.")
    write_report: bool = Field(
        True, description="After training, write report.html in the run folder (learning curves, per-class metrics, "
                          "confusion matrix, precision/recall curves, validation images worst first; docs/reports.md). "
                          "A failure is a warning, never a failed run.")
    apply_automl_train_augmentations: bool = Field(True, description="Use the built-in training augmentations.")
    pretrained: bool = Field(True, description="Start from pretrained weights; false trains from scratch.")
    pretrained_weights: Optional[str] = Field(
        None, description="A weights file to start from instead of the cache or a download (needs pretrained true).")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N.")
    mixed_precision: bool = Field(True, description="Use automatic mixed precision on CUDA (no effect on CPU).")

    # --- images (all tasks) ----------------------------------------------------------------------
    # The default is PIL's own limit (visionsweep.data.images.DEFAULT_MAX_IMAGE_PIXELS, not imported so
    # that reading settings does not load the image stack); the cap is a gigapixel, 3 GB decoded as RGB.
    max_image_pixels: int = Field(
        89_478_485, ge=1, le=1_000_000_000,
        description="Images with more pixels (width x height) are refused before decoding: possible "
                    "decompression bombs (docs/security.md).")

    # --- classification ------------------------------------------------------------------------
    weighted_loss: Literal[0, 1, 2] = Field(0, description="0 none, 1 sqrt(class weights), 2 class weights.")
    imbalance_rate_threshold: NonNegativeInt = Field(
        2, description="weighted_loss applies only when max/min class frequency exceeds this.")
    valid_resize_size: ImageSide = Field(256, description="Validation: shorter side resized to this.")
    valid_crop_size: ImageSide = Field(224, description="Validation: centre crop fed to the network.")
    train_crop_size: ImageSide = Field(224, description="Training: random-resized-crop output size.")

    # --- detection and segmentation (R-CNN family) -----------------------------------------------
    min_size: ImageSide = Field(600, description="Shorter side of the image fed to the model.")
    max_size: ImageSide = Field(1333, description="Longest side cap of the image fed to the model.")
    box_score_thresh: UnitFloat = Field(0.3, description="Detections scoring below this are dropped.")
    nms_iou_thresh: UnitFloat = Field(0.5, description="IoU of non-maximum suppression.")
    box_detections_per_img: Annotated[int, Field(gt=0, le=MAX_DETECTIONS_PER_IMAGE)] = Field(
        100, description="Maximum detections per image.")
    validation_metric_type: Literal["none", "coco", "voc", "coco_voc"] = Field(
        "voc", description="Detection metrics computed at validation.")
    validation_iou_threshold: float = Field(
        0.5, ge=0.1, le=1.0, description="IoU at which VOC-style metrics count a match.")

    # --- tiling (object detection) ---------------------------------------------------------------
    tile_grid_size: Optional[tuple[int, int]] = Field(
        None, description="Tiles across and down, e.g. 3x2; unset turns tiling off.")
    tile_overlap_ratio: float = Field(0.25, ge=0.0, lt=1.0, description="Overlap of neighbouring tiles.")
    tile_predictions_nms_thresh: UnitFloat = Field(0.25, description="IoU of the NMS that merges tile predictions.")

    # --- YOLOv5 ----------------------------------------------------------------------------------
    img_size: ImageSide = Field(640, description="The longer side images are resized to; a multiple of 32.")
    model_size: Literal["small", "medium", "large", "xlarge", "extra_large"] = Field(
        "medium", description="YOLOv5 depth and width.")
    multi_scale: bool = Field(False, description="Vary the training image size by +/-50% in steps of 32.")
    apply_mosaic_for_yolo: bool = Field(True, description="Mosaic augmentation for YOLOv5 training.")
    giou: float = Field(0.05, ge=0.0, description="Box (GIoU) loss gain.")
    cls: float = Field(0.58, ge=0.0, description="Class loss gain (scaled by classes/80).")
    cls_pw: float = Field(1.0, gt=0.0, description="Positive weight of the class BCE.")
    obj: float = Field(1.0, ge=0.0, description="Objectness loss gain.")
    obj_pw: float = Field(1.0, gt=0.0, description="Positive weight of the objectness BCE.")
    anchor_t: float = Field(4.0, gt=1.0, description="Anchor-to-target size ratio limit for assignment.")
    fl_gamma: float = Field(0.0, ge=0.0, description="Focal loss gamma (0 is plain BCE).")
    degrees: float = Field(0.0, ge=0.0, le=180.0, description="Affine rotation range (+/- degrees).")
    translate: float = Field(0.0, ge=0.0, lt=1.0, description="Affine translation range (+/- fraction).")
    scale: float = Field(0.5, ge=0.0, lt=1.0, description="Affine scale range: factor in [1-scale, 1+scale].")
    shear: float = Field(0.0, ge=0.0, lt=90.0, description="Affine shear range (+/- degrees).")

    # --- instance segmentation inference ---------------------------------------------------------
    mask_pixel_score_threshold: UnitFloat = Field(0.5, description="Mask pixels above this are foreground.")
    max_number_of_polygon_points: Annotated[int, Field(ge=3, le=MAX_POLYGON_POINTS)] = Field(
        100, description="Most (x, y) points per output polygon.")
    export_as_image: bool = Field(False, description="Also write each predicted mask as an image file.")
    image_type: Literal["jpg", "png", "bmp"] = Field("jpg", description="File type of exported mask images.")

    # --- explainability (classification prediction; docs/explainability.md) --------------------------
    model_explainability: bool = Field(
        False, description="Prediction: also explain each image's predicted class (multi-label: each class above "
                           "confidence_score_threshold_multilabel) with xai_algorithm; needs the torch runtime.")
    xai_algorithm: Literal[XAI_ALGORITHMS] = Field(  # type: ignore[valid-type]
        "xrai", description="Explanation method; guided_gradcam needs a convolutional model (not the ViTs).")
    visualizations: bool = Field(
        True, description="Explanations: return the 2 x 2 figure as a base64 PNG (visualizations).")
    attributions: bool = Field(
        False, description="Explanations: return the attribution array, 3 x crop x crop (attributions).")
    confidence_score_threshold_multilabel: UnitFloat = Field(
        0.5, description="Explanations of a multi-label model: every class whose probability is above this.")
    n_steps: Annotated[int, Field(ge=2, le=MAX_STEPS)] = Field(
        50, description="Explanations: integrated_gradients' and xrai's steps (network passes per image).")
    approximation_method: Literal[APPROXIMATION_METHODS] = Field(  # type: ignore[valid-type]
        "riemann_middle", description="Explanations: integrated_gradients' approximation of the integral.")
    xrai_fast: bool = Field(True, description="Explanations: xrai's fast variant.")

    @field_validator("tile_grid_size", mode="before")
    @classmethod
    def _parse_tile_grid(cls, value: Any) -> Any:
        return parse_tile_grid_size(value)

    @field_validator("tile_grid_size")
    @classmethod
    def _tile_counts_in_range(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and min(value) < 1:
            raise ValueError("each number must be at least 1 (COLUMNSxROWS, e.g. 3x2)")
        if value is not None and max(value) > MAX_TILES_PER_SIDE:
            raise ValueError(f"each number must be at most {MAX_TILES_PER_SIDE} (COLUMNSxROWS, e.g. 3x2): a grid "
                             "of c x r tiles costs about 1 + c r model passes per image")
        return value

    @field_validator("device")
    @classmethod
    def _device_name(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("use auto, cpu, cuda or cuda:N (N the index of a GPU, e.g. cuda:0)")
        return value

    @field_validator("image_type", mode="before")
    @classmethod
    def _lower_image_type(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("tile_overlap_ratio", mode="before")
    @classmethod
    def _overlap_is_float(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be a number in [0, 1), not a boolean")
        return value

    @field_validator("n_steps", mode="before")
    @classmethod
    def _steps_are_a_count(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"must be a whole number from 2 to {MAX_STEPS}, not a boolean")
        return value

    @property
    def notes(self) -> list[str]:
        """Given keys that were accepted but have no effect here (Azure-only, or for another model)."""
        return self._notes

    def applicable_keys(self) -> list[str]:
        """The keys that mean something for this task and model, in schema order."""
        return [name for name in type(self).model_fields if applies(name, self.task, self.model_name)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values of the applicable keys (what a run writes to settings.json)."""
        return self.model_dump(mode="json", include=set(self.applicable_keys()))


def parse_tile_grid_size(value: Any) -> Any:
    """Accept ``(3, 2)``, ``[3, 2]``, ``"3x2"``, ``"3X2"`` and ``"(3, 2)"``; leave anything else to validation."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if re.search(r"[xX]", text):
        parts = [p for p in re.split(r"[\sxX]+", text) if p]
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"{value!r} is not of the form COLUMNSxROWS, e.g. '3x2'")
        return (int(parts[0]), int(parts[1]))
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ValueError(f"{value!r} is not a grid; write it as '3x2' or (3, 2)") from None
    if isinstance(parsed, float) or (isinstance(parsed, (tuple, list)) and any(isinstance(v, float) for v in parsed)):
        raise ValueError(f"{value!r}: tile counts must be whole numbers")
    return parsed


def combination_problems(s: Settings) -> list[str]:
    """Rules that involve several keys. Each problem names the keys involved."""
    problems = []
    if s.task.is_classification:
        if s.valid_crop_size > s.valid_resize_size:
            problems.append(
                f"valid_crop_size ({s.valid_crop_size}) is larger than valid_resize_size ({s.valid_resize_size}); "
                "the centre crop must fit inside the resized image")
        if s.model_name in FIXED_INPUT_SIZE_MODELS:
            problem = fixed_input_size_problem(s.model_name, s.train_crop_size, s.valid_crop_size)
            if problem is not None:
                problems.append(problem)
    if not s.pretrained and s.pretrained_weights is not None:
        # Two instructions that cannot both be followed; which one was meant cannot be told.
        problems.append(f"pretrained_weights: got {s.pretrained_weights!r} but pretrained is false, which trains "
                        "from scratch; remove pretrained_weights, or set pretrained=true to start from the file")
    if s.optimizer == "sgd" and s.nesterov and s.momentum == 0:
        problems.append("nesterov=true needs momentum > 0 with optimizer sgd; set nesterov=false or raise momentum")
    if s.model_name in RCNN_MODELS:
        if s.max_size < s.min_size:
            problems.append(f"max_size ({s.max_size}) is smaller than min_size ({s.min_size})")
    if s.model_name in YOLO_MODELS and s.img_size % 32:
        up = -(-s.img_size // 32) * 32
        problems.append(f"img_size must be a multiple of 32 (the largest YOLOv5 stride); got {s.img_size}, try {up}")
    if s.tile_grid_size is not None:
        if s.task is not Task.OBJECT_DETECTION:
            problems.append(f"tile_grid_size: tiling is only supported for image_object_detection, not {s.task}")
        elif tuple(s.tile_grid_size) == (1, 1):
            problems.append("tile_grid_size (1, 1) is one tile, the whole image; unset it to turn tiling off")
    return problems


# --- where each key applies ---------------------------------------------------------------------

CLASSIFICATION_TASKS = frozenset({Task.CLASSIFICATION, Task.MULTILABEL})
DETECTION_TASKS = frozenset({Task.OBJECT_DETECTION, Task.INSTANCE_SEGMENTATION})
@dataclass(frozen=True)
class Scope:
    """The tasks (and, optionally, models) for which a key means something."""

    tasks: frozenset[Task]
    models: frozenset[str] | None = None
    models_label: str = ""
    # What the keys are for, said when one is given for a task outside the scope ("explainability is ...").
    purpose: str = ""

    def covers(self, task: Task, model_name: str | None) -> bool:
        if task not in self.tasks:
            return False
        return self.models is None or model_name is None or model_name in self.models

    def describe(self) -> str:
        if self.tasks == frozenset(Task) and not self.models_label:
            return "all tasks"
        text = " and ".join(sorted(t.value for t in self.tasks))
        return f"{text} with {self.models_label}" if self.models_label else text


_ALL = Scope(frozenset(Task))
_CLS = Scope(CLASSIFICATION_TASKS)
_RCNN = Scope(DETECTION_TASKS, RCNN_MODELS, "the R-CNN family (fasterrcnn_*, retinanet_*, maskrcnn_*)")
_DETECTORS = Scope(DETECTION_TASKS)
_YOLO = Scope(frozenset({Task.OBJECT_DETECTION}), YOLO_MODELS, "model_name yolov5")
_TILING = Scope(frozenset({Task.OBJECT_DETECTION}))
_SEGMENTATION = Scope(frozenset({Task.INSTANCE_SEGMENTATION}))
_EXPLAINABILITY = Scope(CLASSIFICATION_TASKS, purpose="explainability is for classification models only; a detector's "
                                                      "boxes are not explained")
EXPLANATION_SETTINGS = ("model_explainability", "xai_algorithm", "visualizations", "attributions",
                        "confidence_score_threshold_multilabel", "n_steps", "approximation_method", "xrai_fast")

_SCOPES: dict[str, Scope] = {
    **{k: _CLS for k in ("weighted_loss", "imbalance_rate_threshold", "valid_resize_size", "valid_crop_size",
                         "train_crop_size")},
    **{k: _RCNN for k in ("min_size", "max_size", "box_detections_per_img")},
    **{k: _DETECTORS for k in ("box_score_thresh", "nms_iou_thresh", "validation_metric_type",
                               "validation_iou_threshold", "log_validation_loss")},
    **{k: _TILING for k in ("tile_grid_size", "tile_overlap_ratio", "tile_predictions_nms_thresh")},
    **{k: _YOLO for k in ("img_size", "model_size", "multi_scale", "apply_mosaic_for_yolo", "giou", "cls", "cls_pw",
                          "obj", "obj_pw", "anchor_t", "fl_gamma", "degrees", "translate", "scale", "shear")},
    **{k: _SEGMENTATION for k in ("mask_pixel_score_threshold", "max_number_of_polygon_points", "export_as_image",
                                  "image_type")},
    **{k: _EXPLAINABILITY for k in EXPLANATION_SETTINGS},
}


def scope_of(key: str) -> Scope:
    return _SCOPES.get(key, _ALL)


def applies(key: str, task: Task, model_name: str | None) -> bool:
    return scope_of(key).covers(task, model_name)

