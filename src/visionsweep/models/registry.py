"""One registry from ``model_name`` to its family, builder, layer groups and pretrained weights.

A builder is a function decorated with ``register_model``. Its keyword arguments are named like
the settings they take (``valid_crop_size``, ``min_size`` ...), so ``create_model`` can hand each
builder exactly the settings it asks for and nothing else. The name and its family come from the
catalog (``visionsweep.model_catalog``); a name can be registered once. Names beyond the catalog (timm and
Hugging Face classifiers) get their spec from ``visionsweep.models.open_models`` on first use.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from torch import nn

from visionsweep.errors import SettingsError
from visionsweep.settings.schema import XAI_ALGORITHMS
from visionsweep.model_catalog import MODEL_FAMILIES, fixed_input_size_problem, open_model_source
from visionsweep.models.freezing import freeze_layer_groups
from visionsweep.models.open_models import open_model_spec
from visionsweep.models.spec import Builder, ModelSpec, StateAdapter, WeightsChoice
from visionsweep.models.weights import find_weights, load_pretrained
from visionsweep.tasks import Task

_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    layer_groups: tuple[tuple[str, ...], ...],
    weights: WeightsChoice = None,
    head_prefixes: tuple[str, ...] = (),
    adapt_pretrained: StateAdapter | None = None,
    gradcam_module: str | None = None,
    fixed_input_size: bool = False,
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
                                    adapt_pretrained, tuple(parameters[1:]), gradcam_module,
                                    fixed_input_size=fixed_input_size)
        return builder

    return decorate


def list_models(task: Task | str | None = None) -> list[str]:
    """The catalog's registered model names, for one task or all."""
    if task is None:
        return sorted(_REGISTRY)
    task = Task(task)
    return sorted(name for name, spec in _REGISTRY.items() if task in spec.tasks)


def is_model(name: str) -> bool:
    return name in _REGISTRY or open_model_source(name) is not None


def get_model_spec(name: str, architecture: dict[str, Any] | None = None) -> ModelSpec:
    """The spec of ``name``: the catalog's, or one derived from a timm or Hugging Face model's config.

    ``architecture``: what a checkpoint kept to build the model (``ModelSpec.architecture``); given, it
    is used instead of reading the model's config from the cache or the hub, and remembered for later
    lookups of the same name in this process (``open_models.open_model_spec``).
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if open_model_source(name) is None:
        raise SettingsError([f"model_name: {name!r} has no builder; available: {', '.join(list_models())}"])
    return open_model_spec(name, architecture)


GUIDED_GRADCAM = "guided_gradcam"  # the explanation method that needs a model's Grad-CAM layer


def gradcam_layer(spec: ModelSpec, model: nn.Module) -> nn.Module | None:
    """The layer of ``model`` (built from ``spec``) that guided Grad-CAM explains: the last child of the
    module ``spec.gradcam_module`` names (``layer4``'s last block, ``features``' last layer); None when
    the model has none."""
    if spec.gradcam_module is None:
        return None
    module = model.get_submodule(spec.gradcam_module)
    children = list(module.children())
    return children[-1] if children else module


def explanation_problem(model_name: str, algorithm: str) -> str | None:
    """Why explanation method ``algorithm`` cannot explain ``model_name`` (a ``xai_algorithm: ...`` line
    naming the methods that can), or None when it can. Only guided Grad-CAM needs something of the
    model: a convolutional layer (``gradcam_module``)."""
    if algorithm != GUIDED_GRADCAM or get_model_spec(model_name).gradcam_module is not None:
        return None

    others = [name for name in XAI_ALGORITHMS if name != GUIDED_GRADCAM]
    kind = "a vision transformer" if open_model_source(model_name) is None else \
        "a transformer, or a Hugging Face model, whose layers visionsweep does not know"
    return (f"xai_algorithm: {algorithm} does not support {model_name}: Grad-CAM takes the gradient at a "
            f"convolutional layer, and {model_name} has none ({kind}); the methods that support "
            f"{model_name} are {', '.join(others[:-1])} and {others[-1]}")


def input_size_problem(spec: ModelSpec, settings: Mapping[str, Any]) -> str | None:
    """Why ``spec``'s model cannot train at these crop sizes, or None (``fixed_input_size_problem``: the
    schema asks it for the catalog's ViTs, this for timm models of one input size too)."""
    problem = fixed_input_size_problem(spec.name, settings.get("train_crop_size"), settings.get("valid_crop_size"))
    return f"train_crop_size: {problem}" if spec.fixed_input_size and problem is not None else None


def build_model(
    spec: ModelSpec,
    num_classes: int,
    settings: Mapping[str, Any],
    *,
    pretrained: bool,
    pretrained_weights: str | None,
    layers_to_freeze: int | None,
) -> nn.Module:
    """Build, load pretrained weights, then freeze: the order a run uses. A model whose layer groups are
    unknown (a Hugging Face model) refuses ``layers_to_freeze`` above 0.

    ``settings`` supplies the builder's keyword arguments by name (a resolved ``Settings`` dump).
    """
    if num_classes < 1:
        raise SettingsError([f"num_classes: got {num_classes}; a model needs at least one class"])
    problem = input_size_problem(spec, settings)
    if problem is not None:
        raise SettingsError([problem])
    source = spec.weights_source(settings)
    # Found (or downloaded) before the model is built: a missing file stops the run before any work.
    weights_file = find_weights(spec.name, source, pretrained_weights) if pretrained else None
    model = spec.builder(num_classes, **{key: settings[key] for key in spec.builder_args if key in settings})
    if weights_file is not None:
        load_pretrained(model, spec.name, weights_file, source, pretrained_weights,
                        skip_prefixes=spec.head_prefixes, adapt=spec.adapt_pretrained)
    if layers_to_freeze is not None:  # 0 makes every parameter trainable, undoing a builder's default freezing
        freeze_layer_groups(model, spec.name, spec.layer_groups, layers_to_freeze)
    return model
