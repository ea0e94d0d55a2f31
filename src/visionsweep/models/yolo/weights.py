"""Pretrained YOLOv5 weights: one COCO file per model_size, and reading the files that fit.

What loads into ``build_yolov5`` (by parameter name and shape, Detect convs ``model.24.m.*`` skipped
unless the model has 80 classes):

* a state dict of the release 3.0 architecture, as ``.pt``/``.pth`` (plain or nested under
  ``state_dict``, ``model`` or ``model_state``) or ``.safetensors``: for example
  ``{k: v for k, v in vendor_model.state_dict().items()}`` saved with ``torch.save``, or a visionsweep
  checkpoint of a yolov5 run;
* the vendor's release files ``yolov5s.pt`` ... ``yolov5x.pt`` of release v3.0 (the reference's
  ``yolov5.3.0s`` ... ``yolov5.3.0x``). These are pickles of whole model objects whose classes live in the
  vendor's (AGPL) code base; ``read_vendor_checkpoint`` reads the tensors out of them WITHOUT that code and
  without running anything from the file: every class the pickle names, other than the handful torch needs
  to rebuild tensors, is replaced by an inert placeholder that only records its state.

Files of later releases (v4.0 on: SiLU activations, C3 blocks) and files of another model_size are
refused with a message saying so, rather than half-loaded.
"""
from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from visionsweep.errors import WeightsUnavailableError
from visionsweep.models.weights import WeightsSource, read_state_dict
from visionsweep.tensor_files import check_torch_container

# The vendor's release 3.0 assets; the files are cached under a name that carries the release, so they
# never collide with another release's ``yolov5s.pt`` in the same cache folder.
RELEASE = "v3.0"
_RELEASE_URL = "https://github.com/ultralytics/yolov5/releases/download/v3.0/yolov5{letter}.pt"
_SIZE_LETTERS = {"small": "s", "medium": "m", "large": "l", "xlarge": "x", "extra_large": "x"}
# Present in every v3.0 file (BottleneckCSP has cv4); C3 blocks of v4.0 and later have only cv1-cv3.
_V3_MARKER = "model.2.cv4.conv.weight"
_LATER_MARKER = "model.2.cv1.conv.weight"


def yolov5_weights(model_size: str) -> WeightsSource:
    """The COCO-pretrained release 3.0 weights of one model size (xlarge and extra_large share one file)."""
    try:
        letter = _SIZE_LETTERS[model_size]
    except KeyError:
        raise WeightsUnavailableError(f"no YOLOv5 weights for model_size {model_size!r}; "
                                      f"sizes: {', '.join(_SIZE_LETTERS)}") from None
    return WeightsSource(filename=f"yolov5{letter}-{RELEASE}.pt", url=_RELEASE_URL.format(letter=letter),
                         reader=read_yolov5_weights)


def weights_for_settings(settings: Mapping[str, Any]) -> WeightsSource:
    """The weights source of the settings' ``model_size`` (medium when absent, the default)."""
    return yolov5_weights(settings.get("model_size", "medium"))


def read_yolov5_weights(path: Path) -> dict[str, torch.Tensor]:
    """A YOLOv5 state dict from a plain weights file or from the vendor's pickled release file."""
    if path.suffix == ".safetensors":
        return read_state_dict(path)
    try:
        return read_state_dict(path)
    except WeightsUnavailableError as plain_error:
        try:
            return read_vendor_checkpoint(path)
        except WeightsUnavailableError as vendor_error:
            raise WeightsUnavailableError(f"{path} is neither a YOLOv5 state dict ({plain_error}) nor a vendor "
                                          f"checkpoint ({vendor_error})") from None


def read_vendor_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The float32 state dict of the model pickled in a vendor YOLOv5 checkpoint (``{"model": Model, ...}``).

    The averaged weights (``"ema"``) are taken when the file has them, else ``"model"``. No class of the
    vendor's code base is imported or called: see the module docstring.
    """
    check_torch_container(path, WeightsUnavailableError)
    try:
        # weights_only=False is what lets torch use _InertPickle; it builds nothing but tensors (see below)
        content = torch.load(path, map_location="cpu", pickle_module=_InertPickle, weights_only=False)
    except Exception as error:  # a corrupt or foreign file fails in many ways; all mean "cannot read"
        raise WeightsUnavailableError(f"{path} could not be read as a pickled checkpoint: {error}") from None
    root = None
    if isinstance(content, dict):
        root = next((content[k] for k in ("ema", "model") if isinstance(content.get(k), _Placeholder)), None)
    elif isinstance(content, _Placeholder):
        root = content
    if root is None:
        raise WeightsUnavailableError(f"{path} holds no pickled model under 'ema' or 'model'")
    state = _module_state(root, "")
    if not state:
        raise WeightsUnavailableError(f"{path}: the pickled model holds no tensors")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def check_release_3_layout(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Refuse weights that would only half load: other releases, and other model sizes.

    Used as the registry's ``adapt_pretrained`` hook: returns ``state`` unchanged when it fits ``model``.
    """
    if _V3_MARKER not in state and _LATER_MARKER in state:
        raise WeightsUnavailableError(
            "these YOLOv5 weights are of release v4.0 or later (C3 blocks, SiLU); visionsweep builds the release "
            "3.0 architecture of the reference, so only v3.0 weights fit")
    own = model.state_dict()
    for key in (k for k in own if k.startswith("model.") and not k.startswith("model.24.m.")):
        if key in state and tuple(state[key].shape) != tuple(own[key].shape):
            raise WeightsUnavailableError(
                f"these YOLOv5 weights are for another model_size: {key} has shape {tuple(state[key].shape)} "
                f"in the file and {tuple(own[key].shape)} in the model built here; set model_size to the size "
                "the weights were trained with")
    return state


# --- reading a pickled model without its code ---------------------------------------------------------


class _Placeholder:
    """Stands for an instance of any class the pickle names: keeps its constructor arguments and state."""

    __slots__ = ("args", "state", "items")
    qualified_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any):
        instance = object.__new__(cls)
        instance.args, instance.state, instance.items = args, {}, []
        return instance

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "_Placeholder":
        # Protocol 2 pickles a method as getattr(class, name), then calls the result: record that call too.
        return type(self)(*args)

    def __setstate__(self, state: Any) -> None:
        # nn.Module pickles its __dict__; objects with __slots__ pickle (dict, slots).
        self.state = state[0] if isinstance(state, tuple) and len(state) == 2 else state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)


def _tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
            metadata: Any = None) -> torch.Tensor:
    """torch's own tensor rebuild, without the backward hooks the file may attach (placeholders, never run)."""
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                           collections.OrderedDict(), metadata)


def _parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> torch.Tensor:
    """A parameter from its tensor, without the hooks and the attributes (``state``) the file may attach."""
    return torch._utils._rebuild_parameter(data, requires_grad, collections.OrderedDict())


# The only callables a pickle can reach: tensor rebuilds that build nothing but tensors, and the types a
# module's state holds. torch's own loader resolves storage classes before asking ``find_class``.
_REBUILDS = {
    ("torch._utils", "_rebuild_tensor_v2"): _tensor, ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
}
_TYPES = {
    ("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset, ("torch", "Size"): torch.Size, ("torch", "device"): torch.device,
}
_PYTHON2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _InertUnpickler(pickle.Unpickler):
    """Unpickling runs code only through what ``find_class`` returns (``REDUCE``, ``NEWOBJ``, ``INST`` and
    ``OBJ`` call it, ``BUILD`` calls its ``__setstate__``). Here that is one of ``_REBUILDS``, one of
    ``_TYPES``, a torch dtype, or a fresh ``_Placeholder`` subclass, whose constructor and ``__setstate__``
    only store their arguments; no module is imported and no attribute of one is looked up by name."""

    def find_class(self, module: str, name: str) -> Any:
        module = _PYTHON2_MODULES.get(module, module)  # protocol 2 pickles name builtins "__builtin__"
        known = _REBUILDS.get((module, name)) or _TYPES.get((module, name))
        if known is not None:
            return known
        # vars(), not getattr(): torch's module __getattr__ would import a submodule for some names.
        dtype = vars(torch).get(name) if module == "torch" else None
        if isinstance(dtype, torch.dtype):
            return dtype
        return type(name, (_Placeholder,), {"__slots__": (), "qualified_name": f"{module}.{name}"})


class _InertPickle:
    """A stand-in for the ``pickle`` module that ``torch.load`` accepts as ``pickle_module``."""

    Unpickler = _InertUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _InertUnpickler(file, **kwargs).load()


def _module_state(root: _Placeholder, prefix: str) -> dict[str, torch.Tensor]:
    """``state_dict()`` of a pickled nn.Module tree: parameters, persistent buffers, then submodules.

    Walked with a stack, each module once, so a hostile file's cycles or deep nesting end the walk
    rather than the process.
    """
    result: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    pending = [(prefix, root)]
    while pending:
        prefix, module = pending.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        state = module.state if isinstance(module.state, dict) else {}
        for name, tensor in _entries(state.get("_parameters")):
            if isinstance(tensor, torch.Tensor):
                result[prefix + name] = tensor.detach()
        transient = state.get("_non_persistent_buffers_set")
        transient = transient if isinstance(transient, (set, frozenset)) else set()
        for name, tensor in _entries(state.get("_buffers")):
            if isinstance(tensor, torch.Tensor) and name not in transient:
                result[prefix + name] = tensor.detach()
        children = [(f"{prefix}{name}.", child) for name, child in _entries(state.get("_modules"))
                    if isinstance(child, _Placeholder)]
        pending.extend(reversed(children))  # depth first, in the pickled order, as state_dict() is
    return result


def _entries(container: Any) -> list[tuple[str, Any]]:
    """The string-named entries of a dict (a module's ``_parameters``, ``_buffers``, ``_modules``)."""
    if isinstance(container, dict):
        return [(name, value) for name, value in container.items() if isinstance(name, str)]
    return []
