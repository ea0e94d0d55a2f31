"""The metadata an exported file carries, so that it can be used without the model folder.

Written as the ONNX model's ``metadata_props`` (string keys and values; JSON where a value is not a
plain string), read back with a clear error when a file lacks them or they do not parse.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionsweep.errors import ExportError

if TYPE_CHECKING:  # imported where a file is read or written (see graph.py)
    import onnx

FORMAT_VERSION = 1
_KEY = "visionsweep"  # every key starts with this, so other tools' metadata never collides with ours


@dataclass(frozen=True)
class OnnxMetadata:
    """What a user (or ``visionsweep predict``) needs to run an exported file.

    ``input_shape`` is (batch, 3, height, width) with None where any size goes; ``input_range`` is
    "0-1" or "0-255"; ``normalization`` the (mean, std) the graph expects its input to be normalised
    with (``normalized_in_graph``: the graph does it itself); ``outputs`` maps each output name to
    what it holds; ``settings`` are the model's inference settings as the training run resolved them;
    ``model_architecture`` what builds the model where its name alone does not (a Hugging Face model's
    config: ``ModelSpec.architecture``), so the file predicts on a machine without that config.
    """

    task: str
    model_name: str
    labels: list[str]
    input_name: str
    input_shape: list[int | None]
    input_range: str
    normalization: dict[str, list[float]] | None
    normalized_in_graph: bool
    outputs: dict[str, str]
    nms_in_graph: bool
    box_score_thresh: float | None
    nms_iou_thresh: float | None
    settings: dict[str, Any]
    model_architecture: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def write(self, model: onnx.ModelProto) -> None:
        """Replace ``model``'s visionsweep metadata with this one."""
        import onnx

        props = {p.key: p.value for p in model.metadata_props if not p.key.startswith(f"{_KEY}.")}
        props.update({f"{_KEY}.{key}": json.dumps(value) for key, value in asdict(self).items()})
        onnx.helper.set_model_props(model, props)

    @classmethod
    def of_file(cls, path: str | Path) -> "OnnxMetadata":
        """The metadata of the ONNX file at ``path``."""
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # protobuf's DecodeError and onnx's own: not a readable ONNX file either way
            raise ExportError(f"{path} is not a readable ONNX file ({type(error).__name__}: {error})") from None
        return cls.read({p.key: p.value for p in model.metadata_props}, str(path))

    @classmethod
    def read(cls, props: dict[str, str], source: str) -> "OnnxMetadata":
        """The metadata in ``props`` (an ONNX file's ``metadata_props``, e.g. from onnxruntime's
        ``get_modelmeta().custom_metadata_map``)."""
        ours = {key[len(_KEY) + 1:]: value for key, value in props.items() if key.startswith(f"{_KEY}.")}
        if not ours:
            raise ExportError(f"{source} carries no visionsweep metadata: it was not written by 'visionsweep "
                              "export' (or the metadata was stripped); export the model folder again")
        try:
            values = {key: json.loads(value) for key, value in ours.items()}
            version = values.get("format_version")
            if version != FORMAT_VERSION:
                raise ExportError(f"{source}: metadata format {version!r}, this visionsweep reads format "
                                  f"{FORMAT_VERSION}; export the model folder again with this version")
            fields = {name: values[name] if field.default is MISSING else values.get(name, field.default)
                      for name, field in cls.__dataclass_fields__.items()}
            return cls(**fields)
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ExportError(f"{source}: its visionsweep metadata is incomplete or damaged ({error}); export the "
                              "model folder again") from None
