"""Writing a model folder as an MLflow pyfunc model (``mlflow-model/``) that ``mlflow.pyfunc.load_model``
loads and ``mlflow models serve`` serves (docs/deployment.md).

The MLflow model is a model from code: MLflow keeps ``MODEL_CODE`` (below) as a file in the model and
runs it to build the model (``visionsweep.serving.pyfunc.ImageModel``), so the folder holds no pickle.
Its artifacts are the model folder's ``model.pt``, ``labels.json`` and ``settings.json``; ``model.onnx``
stays out (the pyfunc model predicts with torch, and the weights are the bulk of the copy). MLflow is an
optional extra: without it installed this module raises ``MlflowMissingError``.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from visionsweep.errors import ExportError
from visionsweep.json_files import parse_json
from visionsweep.tasks import Task

MLFLOW_MODEL_DIR = "mlflow-model"
MLFLOW_INSTALL_HINT = "pip install 'visionsweep[mlflow]'"
INPUT_COLUMN = "image"
# artifact name -> the model folder's file. ImageModel loads "model" (the checkpoint holds the labels and
# settings too); labels.json and settings.json are there to be read, as in the model folder.
ARTIFACT_FILES = {"model": "model.pt", "labels": "labels.json", "settings": "settings.json"}
MODEL_CODE_FILE = "visionsweep_model.py"
MODEL_CODE = '''\
"""The visionsweep model of this MLflow model: MLflow runs this file to build it (models from code)."""
import mlflow

from visionsweep.serving.pyfunc import ImageModel

mlflow.models.set_model(ImageModel())
'''


class MlflowMissingError(ExportError):
    """MLflow, an optional extra, is not installed."""


@dataclass(frozen=True)
class MlflowModelMetadata:
    """What the MLflow model takes and answers: one ``input_name`` column of images (of any size) and one
    column per answer field (``outputs``, each with what it holds)."""

    task: str
    model_name: str
    labels: list[str]
    outputs: dict[str, str]
    input_name: str = INPUT_COLUMN


@dataclass(frozen=True)
class MlflowModelExport:
    path: Path
    metadata: MlflowModelMetadata
    seconds: float
    size_bytes: int


def output_columns(task: Task) -> dict[str, str]:
    """The columns of the pyfunc model's answer for ``task``, with what each holds (one row per image)."""
    if task.is_classification:
        return {"probs": "list of float: the probability of each class, in the order of labels",
                "labels": "list of str: every class name (the same list for each image)"}
    polygon = ', "polygon": [[x1, y1, x2, y2, ...], ...]' if task.predicts_masks else ""
    return {"boxes": 'list of {"box": {"topX", "topY", "bottomX", "bottomY"} (0-1), "label", "score"'
                     f'{polygon}}}, best first'}


def write_mlflow_model(model_dir: str | Path, output: str | Path | None = None, *,
                       settings: Mapping[str, Any] | None = None) -> MlflowModelExport:
    """Write the model folder ``model_dir`` (``model.pt``, ``labels.json``, ``settings.json``) as an MLflow
    pyfunc model in the folder ``output`` (default ``model_dir/mlflow-model``), replacing one there.

    ``settings`` (inference settings such as ``box_score_thresh``, already validated by the caller) are
    stored as the model's ``model_config`` ``{"settings": {...}}`` and applied when it loads, unless the
    load gives its own. The folder is written whole or not at all.
    """
    pyfunc = _import_mlflow_pyfunc()
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema

    started = time.perf_counter()
    model_dir = Path(model_dir)
    output = Path(output) if output is not None else model_dir / MLFLOW_MODEL_DIR
    missing = [name for name in ARTIFACT_FILES.values() if not (model_dir / name).is_file()]
    if missing:
        raise ExportError(f"{model_dir} has no {' or '.join(missing)}: an MLflow model is written from a model "
                          "folder as training leaves it (model.pt, labels.json, settings.json)")
    stored = parse_json((model_dir / "settings.json").read_text(encoding="utf-8"))
    try:
        task = Task(stored["task"])
    except (KeyError, TypeError, ValueError):
        raise ExportError(f"{model_dir / 'settings.json'} names no task that visionsweep knows; it is not the "
                          "settings.json of a training run") from None
    metadata = MlflowModelMetadata(task=task.value, model_name=stored["model_name"],
                                   labels=parse_json((model_dir / "labels.json").read_text(encoding="utf-8")),
                                   outputs=output_columns(task))
    signature = ModelSignature(inputs=Schema([ColSpec(DataType.binary, INPUT_COLUMN)]),
                               outputs=Schema([ColSpec(dtype, name) for name, dtype in _output_types(task).items()]))
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.{os.getpid()}.partial")  # a folder cut short never passes
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tempfile.TemporaryDirectory(prefix="visionsweep-mlflow-") as folder, _quiet_mlflow():
            code = Path(folder) / MODEL_CODE_FILE
            code.write_text(MODEL_CODE, encoding="utf-8")
            pyfunc.save_model(
                str(staging), python_model=str(code), signature=signature,
                artifacts={name: str(model_dir / file) for name, file in ARTIFACT_FILES.items()},
                pip_requirements=pip_requirements(),  # given, so MLflow does not load the model to infer them
                # always there: MLflow lets a load (model_config=...) change only the keys the model has
                model_config={"settings": dict(settings or {})},
                metadata={"visionsweep_version": importlib.metadata.version("visionsweep"),
                          "task": metadata.task, "model_name": metadata.model_name})
        shutil.rmtree(output, ignore_errors=True)
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(path.stat().st_size for path in output.rglob("*") if path.is_file())
    return MlflowModelExport(output, metadata, time.perf_counter() - started, size)


def pip_requirements() -> list[str]:
    """visionsweep's own requirements pinned to the versions installed here, MLflow, and visionsweep itself."""
    from packaging.requirements import Requirement

    core = [Requirement(line) for line in importlib.metadata.requires("visionsweep") or []]
    names = [r.name for r in core if r.marker is None or r.marker.evaluate({"extra": ""})]
    return [f"{name}=={importlib.metadata.version(name)}" for name in [*names, "mlflow", "visionsweep"]]


def _output_types(task: Task) -> dict[str, Any]:
    """The MLflow type of each output column (``output_columns``)."""
    from mlflow.types import DataType
    from mlflow.types.schema import Array, Object, Property

    if task.is_classification:
        return {"probs": Array(DataType.double), "labels": Array(DataType.string)}
    box = Object([Property(corner, DataType.double) for corner in ("topX", "topY", "bottomX", "bottomY")])
    detection = [Property("box", box), Property("label", DataType.string), Property("score", DataType.double)]
    if task.predicts_masks:
        detection.append(Property("polygon", Array(Array(DataType.double))))
    return {"boxes": Array(Object(detection))}


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Without MLflow's progress bars (for copying local files) and its advice to save an input example
    (which would need an image here): noise in a training log."""
    variable = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(variable)
    os.environ[variable] = "false"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            yield
    finally:
        if previous is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = previous


def _import_mlflow_pyfunc():
    try:
        import mlflow.pyfunc
    except ImportError:
        raise MlflowMissingError(f"writing an MLflow model needs MLflow, which is not installed: "
                                 f"{MLFLOW_INSTALL_HINT}") from None
    return mlflow.pyfunc
