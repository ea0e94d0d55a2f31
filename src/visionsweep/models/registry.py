"""One registry from ``model_name`` to its family, builder, layer groups and pretrained weights.

A builder is a function decorated with ``register_model``. Its keyword arguments are named like
the settings they take (``valid_crop_size``, ``min_size`` ...), so ``create_model`` can hand each
builder exactly the settings it asks for and nothing else. The name and its family come from the
catalog (``visionsweep.model_catalog``); a name can be registered once.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

from visionsweep.errors import SettingsError
from visionsweep.settings.schema import XAI_ALGORITHMS
from visionsweep.model_catalog import FAMILY_TASKS, MODEL_FAMILIES
from visionsweep.models.freezing import freeze_layer_groups
from visionsweep.models.weights import WeightsSource, load_pretrained
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

    @property
    def tasks(self) -> tuple[Task, ...]:
        return FAMILY_TASKS[self.family]

    def weights_source(self, settings: Mapping[str, Any]) -> WeightsSource | None:
        """The pretrained weights a model built with these settings starts from (None: none published)."""
        return self.weights(settings) if callable(self.weights) else self.weights


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    layer_groups: tuple[tuple[str, ...], ...],
    weights: WeightsChoice = None,
    head_prefixes: tuple[str, ...] = (),
    adapt_pretrained: StateAdapter | None = None,
    gradcam_module: str | None = None,
) -> Callable[[Builder], Builder]:
    """Register ``builder(num_classes, **settings_it_needs) -> nn.Module`` under ``name``, a name of the
    catalog; registering a name twice is an error (the second would silently replace the first).
    ``gradcam_module``: see ``ModelSpec``."""
    if name not in MODEL_FAMILIES:
        raise ValueError(f"register_model: {name!r} is not in the model catalog; add it with its family to "
                         "visionsweep/model_catalog.py")
    if name in _REGISTRY:
        raise ValueError(f"register_model: {name!r} is registered already")

    def decorate(builder: Builder) -> Builder:
        parameters = list(inspect.signature(builder).parameters)
        _REGISTRY[name] = ModelSpec(name, MODEL_FAMILIES[name], builder, layer_groups, weights, head_prefixes,
                                    adapt_pretrained, tuple(parameters[1:]), gradcam_module)
        return builder

    return decorate


def list_models(task: Task | str | None = None) -> list[str]:
    """Registered model names, for one task or all."""
    if task is None:
        return sorted(_REGISTRY)
    task = Task(task)
    return sorted(name for name, spec in _REGISTRY.items() if task in spec.tasks)


def is_model(name: str) -> bool:
    return name in _REGISTRY


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SettingsError([f"model_name: {name!r} has no builder; available: {', '.join(list_models())}"]) from None


GUIDED_GRADCAM = "guided_gradcam"  # the explanation method that needs a model's Grad-CAM layer


def gradcam_layer(spec: ModelSpec, model: nn.Module) -> nn.Module | None:
    """The layer of ``model`` (built from ``spec``) that guided Grad-CAM explains: the last child of the
    module ``spec.gradcam_module`` names (``layer4``'s last block, ``features``' last layer); None when
    the model has none."""
    if spec.gradcam_module is None:
        return None
    children = list(model.get_submodule(spec.gradcam_module).children())
    if not children:
        raise ValueError(f"{spec.name}: its gradcam_module {spec.gradcam_module!r} has no child module")
    return children[-1]


def explanation_problem(model_name: str, algorithm: str) -> str | None:
    """Why explanation method ``algorithm`` cannot explain ``model_name`` (a ``xai_algorithm: ...`` line
    naming the methods that can), or None when it can. Only guided Grad-CAM needs something of the
    model: a convolutional layer (``gradcam_module``)."""
    if algorithm != GUIDED_GRADCAM or get_model_spec(model_name).gradcam_module is not None:
        return None

    others = [name for name in XAI_ALGORITHMS if name != GUIDED_GRADCAM]
    return (f"xai_algorithm: {algorithm} does not support {model_name}: Grad-CAM takes the gradient at a "
            f"convolutional layer, and {model_name} has none (a vision transformer); the methods that support "
            f"{model_name} are {', '.join(others[:-1])} and {others[-1]}")


def build_model(
    spec: ModelSpec,
    num_classes: int,
    settings: Mapping[str, Any],
    *,
    pretrained: bool,
    pretrained_weights: str | None,
    layers_to_freeze: int | None,
) -> nn.Module:
    """Build, load pretrained weights, then freeze: the order a run uses.

    ``settings`` supplies the builder's keyword arguments by name (a resolved ``Settings`` dump).
    """
    if num_classes < 1:
        raise SettingsError([f"num_classes: got {num_classes}; a model needs at least one class"])
    model = spec.builder(num_classes, **{key: settings[key] for key in spec.builder_args if key in settings})
    if pretrained:
        load_pretrained(model, spec.name, spec.weights_source(settings), pretrained_weights,
                        skip_prefixes=spec.head_prefixes, adapt=spec.adapt_pretrained)
    if layers_to_freeze is not None:  # 0 makes every parameter trainable, undoing a builder's default freezing
        freeze_layer_groups(model, spec.name, spec.layer_groups, layers_to_freeze)
    return model
