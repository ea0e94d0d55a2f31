"""``ModelSpec``: what visionsweep knows about one model name (the registry's entries, and the specs
``open_models`` derives for timm and Hugging Face names)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

from visionsweep.model_catalog import FAMILY_TASKS
from visionsweep.models.inputs import IMAGENET_MEAN, IMAGENET_STD
from visionsweep.models.weights import WeightsSource
from visionsweep.tasks import Task

Builder = Callable[..., nn.Module]
StateAdapter = Callable[[dict[str, Any], nn.Module], dict[str, Any]]
# One source for the model, or a function of the resolved settings (YOLOv5 has one file per model_size).
WeightsChoice = WeightsSource | Callable[[Mapping[str, Any]], WeightsSource | None] | None


@dataclass(frozen=True)
class ModelSpec:
    """What visionsweep knows about one model name.

    ``layer_groups`` are the ordered parameter-name prefixes that ``layers_to_freeze`` counts;
    ``head_prefixes`` name the class-dependent layers that pretrained weights never fill;
    ``adapt_pretrained`` reshapes a pretrained state dict to the built model (e.g. a ViT's
    position embedding for another input size). ``weights`` is one source, or a function choosing it
    from the settings (see ``weights_source``). ``gradcam_module`` names the module whose last child is
    the layer guided Grad-CAM explains (the last block of the backbone: ``gradcam_layer``); None for a
    model without one (a vision transformer), which guided Grad-CAM cannot explain.

    ``mean`` and ``std`` normalise the model's input; ``input_size`` and ``resize_size`` are the crop and
    resize defaults from the model's own config (None: the reference's, 224 and 256);
    ``fixed_input_size``: its position embedding is built for one size, so it trains at its validation
    crop size. ``architecture``: plain data a checkpoint keeps to build the model again (a Hugging Face
    model's config), None when the name alone builds it.
    """

    name: str
    family: str  # a family of ``model_catalog``: classification, rcnn, mask_rcnn or yolov5
    builder: Builder
    layer_groups: tuple[tuple[str, ...], ...]
    weights: WeightsChoice
    head_prefixes: tuple[str, ...] = ()
    adapt_pretrained: StateAdapter | None = None
    builder_args: tuple[str, ...] = field(default=())
    gradcam_module: str | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int | None = None
    resize_size: int | None = None
    fixed_input_size: bool = False
    architecture: dict[str, Any] | None = None

    @property
    def tasks(self) -> tuple[Task, ...]:
        return FAMILY_TASKS[self.family]

    def weights_source(self, settings: Mapping[str, Any]) -> WeightsSource | None:
        """The pretrained weights a model built with these settings starts from (None: none published)."""
        return self.weights(settings) if callable(self.weights) else self.weights
