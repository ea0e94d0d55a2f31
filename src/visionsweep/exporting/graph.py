"""What a family hands the exporter (``OnnxGraph``), the user's export options, and the writing of a
graph with torch's ONNX exporter.

The TorchScript-based exporter (``dynamo=False``) is used for every family: torchvision's detectors
(NMS, RoIAlign, mask pasting) export through it, and it writes a classifier or YOLOv5 in well under a
second where the ``torch.export`` one takes ten or more.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from visionsweep.errors import ExportError, SettingsError
from visionsweep.exporting.batching import loop_over_batch

if TYPE_CHECKING:  # onnx is imported where a graph is built or read: it takes most of a second to import,
    import onnx    # which every training process and command would pay

# The opsets the exporter writes: the batch loop slices shapes as opset 15 does (HardSwish needs 14); torch's TorchScript exporter stops at its maximum.
MIN_OPSET = 15
MAX_OPSET = torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
DEFAULT_OPSET = 17


@dataclass(frozen=True)
class ExportOptions:
    """``batch``: the batch size the file takes, None for any; ``opset``: the ONNX opset to write;
    ``nms``: put non-maximum suppression in the graph (YOLOv5; the R-CNN graphs always have it)."""

    batch: int | None = None
    opset: int = DEFAULT_OPSET
    nms: bool = False

    def __post_init__(self) -> None:
        problems = []
        if self.batch is not None and not (isinstance(self.batch, int) and self.batch >= 1):
            problems.append(f"batch: got {self.batch!r}; use a positive number of images or 'dynamic'")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            problems.append(f"opset: got {self.opset}; the installed torch {torch.__version__} writes opsets "
                            f"{MIN_OPSET} to {MAX_OPSET} for visionsweep's models")
        if problems:
            raise SettingsError(problems, context="export")


@dataclass(frozen=True)
class OnnxGraph:
    """A network ready to export: ``module`` called on ``example`` traces the graph.

    ``outputs`` maps each output name, in order, to what it holds (the file's metadata says it).
    ``mean`` and ``std``: the normalisation the input takes (None: RGB in 0..1 as it is);
    ``normalized_in_graph``: the graph takes 0..255 and normalises itself (``InGraphNormalization``).
    ``per_image``: the module takes one image (3, H, W) and its outputs have one row per detection;
    the exporter wraps it in a loop over the batch (``batching.loop_over_batch``), which adds a
    ``batch_index`` output. Otherwise the module takes the whole (N, 3, H, W) batch, and axis 0 of the
    input and of every output is the batch unless ``dynamic`` names it otherwise (a count of
    detections). ``dynamic`` names the axes that vary.
    """

    module: nn.Module
    example: torch.Tensor
    input_name: str
    outputs: dict[str, str]
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    normalized_in_graph: bool = False
    per_image: bool = False
    nms_in_graph: bool = False
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)

    @property
    def input_range(self) -> str:
        if self.normalized_in_graph:
            return "0-255"
        return "0-1" if self.mean is None else "0-1, normalised with mean and std"


class InGraphNormalization(nn.Module):
    """``enable_onnx_normalization``: the graph takes RGB in 0..255 and scales (and, with ``mean`` and
    ``std``, normalises) it before ``module``."""

    def __init__(self, module: nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None):
        super().__init__()
        self.module = module
        shape = (-1, 1, 1)
        self.register_buffer("mean", torch.tensor(mean or (0.0, 0.0, 0.0)).view(shape))
        self.register_buffer("std", torch.tensor(std or (1.0, 1.0, 1.0)).view(shape))

    def forward(self, images: torch.Tensor):
        return self.module((images / 255.0 - self.mean) / self.std)


def to_onnx(graph: OnnxGraph, options: ExportOptions) -> onnx.ModelProto:
    """Trace ``graph`` into an ONNX model of ``options.batch`` images (any number when None)."""
    example = graph.example[0] if graph.per_image else graph.example
    dynamic = {name: dict(axes) for name, axes in graph.dynamic.items()}
    if not graph.per_image:
        for name in (graph.input_name, *graph.outputs):
            dynamic.setdefault(name, {}).setdefault(0, "batch")  # unless the axis counts detections
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The tracer's notes on Python values it freezes (sizes, thresholds) are about torchvision's code and
        # hold for the exported shapes; the deprecation note concerns the exporter, chosen above on purpose.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(graph.module.eval(), (example,), buffer, dynamo=False, opset_version=options.opset,
                              input_names=[graph.input_name], output_names=list(graph.outputs),
                              dynamic_axes=dynamic, do_constant_folding=True)
        except Exception as error:  # the exporter's many error types all mean the same: this graph did not export
            raise ExportError(f"torch could not export the model at opset {options.opset}: "
                              f"{type(error).__name__}: {error}") from error
    import onnx

    model = onnx.load_from_string(buffer.getvalue())
    if graph.per_image:
        model = loop_over_batch(model, graph.input_name)
    _set_batch_size(model, options.batch)
    return model


def _set_batch_size(model: onnx.ModelProto, batch: int | None) -> None:
    """Declare the input's batch axis fixed at ``batch`` (or named ``batch`` when any size goes)."""
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    if batch is None:
        dim.dim_param = "batch"
    else:
        dim.dim_value = batch
