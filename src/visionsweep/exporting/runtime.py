"""Running an exported file with ONNX Runtime: the session, its execution provider, and the conversion
from what a family feeds its torch model to what the graph takes.

A family's stand-in for its torch model (``ModelFamily.onnx_model``) calls ``OnnxSession.run`` with
exactly the tensor the torch model would get; the session converts it when the graph normalises its
input itself (``enable_onnx_normalization``), runs the graph and hands back torch tensors.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime
import torch

from visionsweep.errors import ExportError, SettingsError
from visionsweep.exporting.metadata import OnnxMetadata

log = logging.getLogger("visionsweep")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def providers_for(device: torch.device) -> list[str]:
    """ONNX Runtime's execution providers for the torch ``device``: CUDA (then the CPU) for a GPU when
    the installed onnxruntime has it, else the CPU, with a warning when a GPU was asked for."""
    available = onnxruntime.get_available_providers()
    if device.type != "cuda":
        return [CPU]
    if CUDA in available:
        return [(CUDA, {"device_id": device.index or 0}), CPU]
    log.warning("device %s: the installed onnxruntime has no CUDA provider (install onnxruntime-gpu); "
                "running the ONNX model on the CPU", device)
    return [CPU]


class OnnxSession:
    """An exported file loaded in ONNX Runtime, with its metadata."""

    def __init__(self, path: str | Path, device: torch.device = torch.device("cpu")):
        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        # As many threads as torch uses (the server's workers share the cores out), not one per core each.
        options.intra_op_num_threads = torch.get_num_threads()
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=providers_for(device))
        except Exception as error:  # onnxruntime raises its own untyped errors for every kind of bad file
            raise ExportError(f"{self.path} cannot be loaded by ONNX Runtime: {error}") from None
        self.metadata = OnnxMetadata.read(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self.output_names = [o.name for o in self.session.get_outputs()]
        scale = self.metadata.normalization or {"mean": [0.0] * 3, "std": [1.0] * 3}
        self._mean = np.array(scale["mean"], dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.array(scale["std"], dtype=np.float32).reshape(-1, 1, 1)

    def run(self, model_input: torch.Tensor) -> dict[str, torch.Tensor]:
        """The graph's outputs by name for ``model_input``, the batch the family's torch model would get."""
        images = model_input.detach().float().cpu().numpy()
        if self.metadata.normalized_in_graph:  # the graph takes 0-255 RGB and normalises it itself
            images = (images * self._std + self._mean) * np.float32(255.0)
        outputs = self.session.run(None, {self.metadata.input_name: np.ascontiguousarray(images)})
        return {name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs)}


def check_fixed_settings(session: OnnxSession, settings: Any, fixed: Sequence[str], *,
                         at_least: Sequence[str] = ()) -> None:
    """Refuse settings that differ from the values the graph was exported with and holds fixed
    (``fixed``), or that are below them (``at_least``: thresholds the stand-in can raise by filtering
    the graph's output, but not lower)."""
    exported = session.metadata.settings
    problems = []
    for name in fixed:
        if getattr(settings, name) != exported.get(name):
            problems.append(f"{name}: got {getattr(settings, name)!r}, but {session.path.name} was exported with "
                            f"{exported.get(name)!r}, which its graph holds; export again with --set {name}=... "
                            "or predict with the torch runtime")
    for name in at_least:
        if getattr(settings, name) < exported.get(name, float("-inf")):
            problems.append(f"{name}: got {getattr(settings, name)!r}, below the {exported.get(name)!r} "
                            f"{session.path.name} was exported with; the graph drops what is below it, so "
                            f"export again with --set {name}=... or predict with the torch runtime")
    if problems:
        raise SettingsError(problems, context="ONNX prediction")
