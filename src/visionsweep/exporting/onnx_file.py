"""Writing a trained model as one ONNX file that carries its own metadata.

``export_onnx`` asks the model's family what to export (``ModelFamily.onnx_graph``), traces it
(``graph.to_onnx``), adds the metadata (``metadata.OnnxMetadata``), checks the result with the ONNX
checker and writes it. ``visionsweep.api.export`` loads a model folder for it; training calls it on the
best weights at the end of a run (``export_onnx`` setting).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from visionsweep.errors import ExportError
from visionsweep.exporting.batching import BATCH_INDEX
from visionsweep.exporting.graph import ExportOptions, to_onnx
from visionsweep.exporting.metadata import OnnxMetadata
from visionsweep.families.selection import family_for
from visionsweep.models import get_model_spec
from visionsweep.settings import Settings

if TYPE_CHECKING:  # imported where a file is written (see graph.py)
    import onnx

ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    metadata: OnnxMetadata
    seconds: float
    size_bytes: int


def export_onnx(model: nn.Module, settings: Settings, labels: Sequence[str], output: str | Path,
                options: ExportOptions = ExportOptions()) -> OnnxExport:
    """Write ``model`` (trained for ``settings`` on ``labels``) to ``output`` as ONNX. ``model`` itself
    is left as it is: a copy is exported, on the CPU."""
    import onnx

    started = time.perf_counter()
    family = family_for(settings, labels, torch.device("cpu"), _no_images)
    network = family.inference_model(copy.deepcopy(model).cpu()).eval()
    graph = family.onnx_graph(network, options)
    proto = to_onnx(graph, options)
    input_dims = proto.graph.input[0].type.tensor_type.shape.dim
    metadata = OnnxMetadata(
        task=settings.task.value, model_name=settings.model_name, labels=list(labels),
        input_name=graph.input_name, input_shape=[d.dim_value or None for d in input_dims],
        input_range=graph.input_range,
        normalization=None if graph.mean is None else {"mean": list(graph.mean), "std": list(graph.std)},
        normalized_in_graph=graph.normalized_in_graph, outputs=_outputs(proto, graph.outputs),
        nms_in_graph=graph.nms_in_graph,
        box_score_thresh=getattr(settings, "box_score_thresh", None),
        nms_iou_thresh=getattr(settings, "nms_iou_thresh", None), settings=settings.to_dict(),
        model_architecture=get_model_spec(settings.model_name).architecture)
    metadata.write(proto)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"the exported graph of {settings.model_name} is not valid ONNX: {error}") from None
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")  # a file cut short never passes for an export
    onnx.save(proto, partial)
    partial.replace(output)
    return OnnxExport(output, metadata, time.perf_counter() - started, output.stat().st_size)


def _outputs(proto: onnx.ModelProto, described: dict[str, str]) -> dict[str, str]:
    """Every output of the file (the batch loop adds ``batch_index``) with what it holds."""
    what = {**described, BATCH_INDEX: "(K,) the image of each detection"}
    return {o.name: what.get(o.name, "") for o in proto.graph.output}


def _no_images(failures: list[tuple[int, str]], stage: str) -> None:
    raise AssertionError("exporting reads no image")  # a family asked to export never loads data
