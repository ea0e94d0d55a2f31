"""Classification models beyond the catalog: any timm model and any Hugging Face image classifier.

Each name becomes a ``ModelSpec`` like the catalog's, derived from the model's own configuration:
its input size, resize ratio and normalisation (timm's pretrained config, the checkpoint's
``preprocessor_config.json``), its pretrained weights, its classifier head, and for timm its layer
groups (timm's ``group_matcher``) and Grad-CAM layer (its last feature stage). A Hugging Face model
needs its ``config.json`` to be built at all: it is read from the Hugging Face cache (or downloaded),
and a checkpoint keeps it (``ModelSpec.architecture``), so a trained model folder builds anywhere.
"""
from __future__ import annotations

import difflib
import inspect
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionsweep.errors import SettingsError, WeightsUnavailableError
from visionsweep.model_catalog import CLASSIFICATION, HUGGING_FACE, OPEN_MODELS_HINT, TIMM, TIMM_PREFIX, \
    open_model_source
from visionsweep.models.inputs import IMAGENET_MEAN, IMAGENET_STD
from visionsweep.models.spec import ModelSpec
from visionsweep.models.weights import WeightsSource, find_weights

log = logging.getLogger(__name__)

HF_CONFIG_FILE, HF_PREPROCESSOR_FILE, HF_WEIGHTS_FILE = "config.json", "preprocessor_config.json", "model.safetensors"
_MAX_CONFIG_BYTES = 4 * 2**20  # a model's config is kilobytes; refuse to parse anything near this


_SPECS: dict[str, ModelSpec] = {}  # resolved once per process: a spec reads configs and builds a probe


def open_model_spec(model_name: str, architecture: dict[str, Any] | None = None) -> ModelSpec:
    """The spec of a timm or Hugging Face model name (``model_catalog.open_model_source``).

    ``architecture``: a Hugging Face model's configuration as a checkpoint stored it (None: read it
    from the cache or the hub); given, it replaces the spec remembered for the name. ``SettingsError``
    for a name that is neither.
    """
    if architecture is None and model_name in _SPECS:
        return _SPECS[model_name]
    source = open_model_source(model_name)
    if source == TIMM:
        _SPECS[model_name] = timm_spec(model_name)
        return _SPECS[model_name]
    if source == HUGGING_FACE:
        _SPECS[model_name] = huggingface_spec(model_name, architecture)
        return _SPECS[model_name]
    raise SettingsError([f"model_name: {model_name!r} is not a known model; use a name of 'visionsweep models', "
                         f"or {OPEN_MODELS_HINT}{_timm_suggestion(model_name)}"])


def search_timm_models(word: str, *, limit: int = 200) -> list[str]:
    """timm's model names containing ``word`` (``visionsweep models --search``)."""
    import timm

    return timm.list_models(f"*{word.strip()}*")[:limit]


# --- timm ----------------------------------------------------------------------------------------------

def timm_spec(model_name: str) -> ModelSpec:
    import timm

    timm_name = model_name.removeprefix(TIMM_PREFIX)
    if not timm.is_model(timm_name):
        raise SettingsError([f"model_name: {model_name!r}: timm has no model {timm_name!r}"
                             f"{_timm_suggestion(timm_name)}"])
    config = timm.models.get_pretrained_cfg(timm_name)
    fixed_input_size = bool(getattr(config, "fixed_input_size", False))
    with torch.device("meta"):  # the structure without the memory or the time of initialising weights
        probe = timm.create_model(timm_name, num_classes=2)

    head = config.classifier if config is not None else probe.pretrained_cfg.get("classifier", "")
    head_prefixes = tuple(f"{name}." for name in ((head,) if isinstance(head, str) else head) if name)

    def build(num_classes: int, valid_crop_size: int = 224) -> nn.Module:
        size = {"img_size": valid_crop_size} if fixed_input_size else {}
        return timm.create_model(timm_name, num_classes=num_classes, **size)

    size = config.input_size[-1] if config is not None else 224
    crop_pct = getattr(config, "crop_pct", None) or 0.875
    return ModelSpec(
        name=model_name, family=CLASSIFICATION, builder=build, layer_groups=_timm_layer_groups(probe, head_prefixes),
        weights=_timm_weights(config), head_prefixes=head_prefixes, adapt_pretrained=resample_position_embedding,
        builder_args=("valid_crop_size",) if fixed_input_size else (),
        gradcam_module=None if fixed_input_size else _last_feature_stage(probe),
        mean=tuple(config.mean) if config is not None else IMAGENET_MEAN,
        std=tuple(config.std) if config is not None else IMAGENET_STD,
        input_size=size, resize_size=round(size / crop_pct), fixed_input_size=fixed_input_size)


def resample_position_embedding(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Resample a pretrained absolute position embedding to the patch grid of ``model`` (its crop size)."""
    pos_embed = getattr(model, "pos_embed", None)
    if "pos_embed" not in state or not isinstance(pos_embed, torch.Tensor) or state["pos_embed"].shape == pos_embed.shape:
        return state
    from timm.layers import resample_abs_pos_embed

    prefix_tokens = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    grid = list(model.patch_embed.grid_size)
    return {**state, "pos_embed": resample_abs_pos_embed(state["pos_embed"], new_size=grid,
                                                         num_prefix_tokens=prefix_tokens)}


def _timm_weights(config: Any) -> WeightsSource | None:
    if config is None:
        return None
    if getattr(config, "hf_hub_id", None):
        return WeightsSource(filename=getattr(config, "hf_hub_filename", None) or HF_WEIGHTS_FILE,
                             hf_repo=config.hf_hub_id)
    if getattr(config, "url", None):
        return WeightsSource(filename=config.url.rsplit("/", 1)[-1], url=config.url)
    return None


def _timm_layer_groups(model: nn.Module, head_prefixes: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """timm's coarse parameter groups (stem, then each stage or block), the head's group left out, each
    as the shortest name prefixes that belong to it alone. () when the model has no group matcher."""
    from timm.models import group_parameters

    try:
        groups = group_parameters(model, model.group_matcher(coarse=True))
    except (AttributeError, NotImplementedError):
        return ()
    names = [members for _, members in sorted(groups.items())]
    frozen = [group for group in names if not any(name.startswith(head_prefixes) for name in group)] \
        if head_prefixes else names[:-1]
    owners: dict[str, set[int]] = {}  # name prefix -> the groups (-1: not frozen) of the parameters under it
    grouped = {name: index for index, group in enumerate(frozen) for name in group}
    for name, _ in model.named_parameters():
        for prefix in _dotted_prefixes(name):
            owners.setdefault(prefix, set()).add(grouped.get(name, -1))
    return tuple(tuple(sorted({next(p for p in _dotted_prefixes(name) if owners[p] == {index}) for name in group}))
                 for index, group in enumerate(frozen))


def _dotted_prefixes(name: str) -> list[str]:
    """``a.b.c`` -> ``a.``, ``a.b.``, ``a.b.c`` (shortest first; the full name last)."""
    parts = name.split(".")
    return [".".join(parts[:i]) + "." for i in range(1, len(parts))] + [name]


def _last_feature_stage(model: nn.Module) -> str | None:
    """The module of a convolutional timm model's last feature stage (what guided Grad-CAM explains)."""
    info = getattr(model, "feature_info", None)
    module = info[-1].get("module") if info else None
    if not module:
        return None
    try:
        model.get_submodule(module)
    except AttributeError:
        return None
    return module


def _timm_suggestion(name: str) -> str:
    import timm

    close = difflib.get_close_matches(name.removeprefix(TIMM_PREFIX), timm.list_models(), n=3, cutoff=0.75)
    return f"; did you mean {', '.join(close)}?" if close else ""


# --- Hugging Face ----------------------------------------------------------------------------------------

def huggingface_files(repo: str) -> list[WeightsSource]:
    """The files of a Hugging Face checkpoint visionsweep reads: its config (always), its preprocessor
    config (when published) and its weights (for pretrained training)."""
    return [WeightsSource(filename=name, hf_repo=repo)
            for name in (HF_CONFIG_FILE, HF_PREPROCESSOR_FILE, HF_WEIGHTS_FILE)]


def huggingface_spec(repo: str, architecture: dict[str, Any] | None = None) -> ModelSpec:
    architecture = architecture or read_huggingface_architecture(repo)
    config, preprocessor = architecture["config"], architecture.get("preprocessor") or {}
    if not config.get("model_type"):
        raise SettingsError([f"model_name: {repo}'s {HF_CONFIG_FILE} names no model_type; it is not a "
                             "transformers model"])
    size = _hf_input_size(config, preprocessor)
    mean = tuple(preprocessor.get("image_mean") or IMAGENET_MEAN)
    std = tuple(preprocessor.get("image_std") or IMAGENET_STD)
    crop_pct = preprocessor.get("crop_pct") or 1.0

    def build(num_classes: int) -> nn.Module:
        return HuggingFaceClassifier(config, num_classes)

    return ModelSpec(
        name=repo, family=CLASSIFICATION, builder=build, layer_groups=(),
        weights=WeightsSource(filename=HF_WEIGHTS_FILE, hf_repo=repo), head_prefixes=("model.classifier.",),
        adapt_pretrained=_under_model, mean=mean, std=std, input_size=size, resize_size=round(size / crop_pct),
        architecture={"config": config, "preprocessor": preprocessor or None})


class HuggingFaceClassifier(nn.Module):
    """A transformers image classifier as visionsweep's models are: images (N, 3, H, W) in, logits out.
    Models that can interpolate their position embedding do, so any crop size works."""

    def __init__(self, config: dict[str, Any], num_classes: int):
        super().__init__()
        from transformers import AutoConfig, AutoModelForImageClassification

        given = {k: v for k, v in config.items() if k not in ("model_type", "id2label", "label2id", "num_labels",
                                                               "architectures", "transformers_version")}
        try:
            built = AutoConfig.for_model(config["model_type"], **given)
        except (KeyError, ValueError) as error:
            raise SettingsError([f"model_name: transformers cannot build model_type {config['model_type']!r}: "
                                 f"{error}"]) from None
        built.num_labels = num_classes
        self.model = AutoModelForImageClassification.from_config(built)
        self._options = ({"interpolate_pos_encoding": True}
                         if "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters else {})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images, **self._options).logits


def read_huggingface_architecture(repo: str) -> dict[str, Any]:
    """A Hugging Face checkpoint's config and preprocessor config, from the cache or the hub."""
    config = read_config_json(find_weights(repo, WeightsSource(filename=HF_CONFIG_FILE, hf_repo=repo), None, what="config"))
    try:
        preprocessor = read_config_json(find_weights(repo, WeightsSource(filename=HF_PREPROCESSOR_FILE, hf_repo=repo),
                                               None, what="preprocessor config", attempts=1))
    except WeightsUnavailableError as error:
        log.warning("%s: no %s (%s); the input size comes from its config, the normalisation is ImageNet's",
                    repo, HF_PREPROCESSOR_FILE, error)
        preprocessor = None
    return {"config": config, "preprocessor": preprocessor}


def read_config_json(path: Path) -> dict[str, Any]:
    """A model config file: a JSON object of bounded size (``WeightsUnavailableError`` otherwise)."""
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise WeightsUnavailableError(f"{path} is {path.stat().st_size} bytes, too large for a model config")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsUnavailableError(f"{path} is not a JSON config: {error}") from None
    if not isinstance(content, dict):
        raise WeightsUnavailableError(f"{path} holds a {type(content).__name__}, not a JSON object")
    return content


def _hf_input_size(config: dict[str, Any], preprocessor: dict[str, Any]) -> int:
    for key in ("crop_size", "size"):
        value = preprocessor.get(key)
        if isinstance(value, int):
            return value
        if isinstance(value, dict):
            for side in ("height", "shortest_edge", "width"):
                if isinstance(value.get(side), int):
                    return value[side]
    size = config.get("image_size", 224)
    return size[0] if isinstance(size, (list, tuple)) else int(size)


def _under_model(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """A transformers state dict (``vit.embeddings...``) named as in ``HuggingFaceClassifier`` (``model.vit...``)."""
    return {key if key.startswith("model.") else f"model.{key}": value for key, value in state.items()}
