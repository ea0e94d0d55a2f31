"""The Python API; the ``visionsweep`` command is a thin layer over these functions."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator, Mapping

from visionsweep.data import convert as _convert
from visionsweep.data.importers import ImportResult
from visionsweep.data.jsonl import read_labeled_data
from visionsweep.data.loading import TrainingData
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError, SettingsError
from visionsweep.exporting.graph import ExportOptions
from visionsweep.exporting.mlflow_model import MlflowModelExport, write_mlflow_model
from visionsweep.exporting.onnx_file import ONNX_FILE, OnnxExport, export_onnx
from visionsweep.inference import classification as classification_inference
from visionsweep.inference import detection as detection_inference
from visionsweep.inference.explanations import check_explainable
from visionsweep.inference.inputs import collect_inputs
from visionsweep.inference.labeled_dataset import labeled_dataset_line
from visionsweep.inference.model_folder import TrainedModel, load_trained_model
from visionsweep.inference.prediction_files import scoring_summary
from visionsweep.settings import resolve_settings
from visionsweep.tasks import Task, parse_task
from visionsweep.training.preflight import prepare_run
from visionsweep.utils import json_ready

EXPORT_FORMATS = ("onnx", "mlflow")

@dataclass
class PredictionResult:
    output: Path
    images: int
    report: DataReport
    # The labelled-dataset file (predict's labeled_dataset), or None when none was asked for.
    labeled_dataset: Path | None = None


def predict(model: str | Path, inputs: str | Path, *, output: str | Path = "predictions.jsonl",
            settings: Mapping[str, Any] | None = None, runtime: str | None = None,
            labeled_dataset: str | Path | None = None) -> PredictionResult:
    """Predict on an image, a folder of images, a JSONL file or an MLTable folder; write JSON Lines.

    ``model`` is a run folder, a model folder, a checkpoint, a sweep's run folder or an exported
    ``.onnx`` file. ``settings`` override inference settings of the training run (e.g.
    ``valid_resize_size``, ``box_score_thresh``). ``runtime`` is ``torch`` (the default) or
    ``onnxruntime``, which runs the model folder's ``model.onnx`` (the default for an ``.onnx`` file)
    and writes the same lines.

    ``labeled_dataset`` also writes the reference's labelled-dataset file there (its
    ``labeled_dataset.json``): the same images in the same order as ``output``, each as
    ``{"image_url": "AmlDatastore://<filename>", "label_confidence": [...], "label": [...]}``
    (``inference.labeled_dataset``).

    A classifier with ``model_explainability`` true (in ``settings`` or its training run's) also explains
    each prediction: see ``explain``.
    """
    output = Path(output)
    labeled = None if labeled_dataset is None else Path(labeled_dataset)
    if labeled is not None:
        _check_second_output(labeled, output)
    trained = load_model(model, settings, runtime)
    check_explainable(trained.settings, onnx=trained.model is None)  # before any input is read
    records, report = collect_inputs(inputs, max_image_pixels=trained.settings.max_image_pixels)
    written = [output] if labeled is None else [output, labeled]
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    try:
        with output.open("w", encoding="utf-8") as out, \
                (labeled.open("w", encoding="utf-8") if labeled else contextlib.nullcontext()) as labels_out:
            # exported mask images (export_as_image) go beside the predictions file
            options = {"mask_dir": output.parent / "masks"} if trained.task.predicts_masks else {}
            for line in _format(trained.task).predict_lines(trained, records, report, **options):
                line = json_ready(line)
                out.write(json.dumps(line) + "\n")
                if labels_out is not None:
                    labels_out.write(json.dumps(labeled_dataset_line(line)) + "\n")
                count += 1
    except BaseException:
        for path in written:  # a file cut short would pass for a finished prediction
            path.unlink(missing_ok=True)
        raise
    report.images_checked = "decoded"  # each kept image was decoded to predict on; those that failed are skipped
    if count == 0:
        for path in written:  # an empty file would pass for a finished prediction
            path.unlink()
        raise DataError(f"no image of {inputs} could be read, so there is nothing to predict on.\n{report.summary()}")
    return PredictionResult(output=output, images=count, report=report, labeled_dataset=labeled)


def explain(model: str | Path, inputs: str | Path, *, output: str | Path = "explanations.jsonl",
            settings: Mapping[str, Any] | None = None, runtime: str | None = None,
            labeled_dataset: str | Path | None = None) -> PredictionResult:
    """``predict`` with ``model_explainability`` on: each line of ``output`` also says which pixels made a
    classifier give its answer, in the reference's fields (docs/explainability.md):

    * ``visualizations``: the 2 x 2 figure (image, heat map, blend, top 30 % of pixels) as a base64 PNG;
    * ``attributions``: the attribution array, nested lists ``[3][crop][crop]`` (with ``attributions`` true).

    A multi-class model explains its top class. A multi-label model explains each class whose probability is
    above ``confidence_score_threshold_multilabel``: both fields are then lists, one entry per such class,
    or None when no class is above it. The options are settings, given in ``settings`` by name, e.g.
    ``{"xai_algorithm": "integrated_gradients", "n_steps": 20, "attributions": True}``: ``xai_algorithm``
    (``xrai``, ``integrated_gradients``, ``guided_backprop``, ``guided_gradcam``), ``visualizations``,
    ``attributions``, ``confidence_score_threshold_multilabel``, ``n_steps``, ``approximation_method``,
    ``xrai_fast`` (docs/settings.md). Explaining takes gradients through the torch network: ``runtime``
    ``onnxruntime`` and an ``.onnx`` file are refused, and so is a detection model. ``model``, ``inputs``,
    ``runtime`` and ``labeled_dataset`` are as for ``predict``.
    """
    given = dict(settings or {})
    if given.get("model_explainability", True) is not True:
        raise SettingsError([f"model_explainability: got {given['model_explainability']!r}; explain always explains "
                             "(leave it out), and predict predicts without explanations"], context="argument")
    return predict(model, inputs, output=output, settings={**given, "model_explainability": True}, runtime=runtime,
                   labeled_dataset=labeled_dataset)


def _check_second_output(path: Path, output: Path) -> None:
    """A labelled-dataset path must be a file of its own: neither the predictions file nor a folder."""
    if path.resolve() == output.resolve():
        raise SettingsError([f"labeled_dataset: {path} is also the predictions file (output); give it another "
                             "name, such as labeled_dataset.json beside the predictions"], context="argument")
    if path.is_dir():
        raise SettingsError([f"labeled_dataset: {path} is a folder; give a file path, such as "
                             f"{path / 'labeled_dataset.json'}"], context="argument")


@dataclass
class EvaluationResult:
    """The metrics and what happened to every record. It unpacks as ``metrics, report``."""

    metrics: dict[str, Any]
    # The labelled data: one record per labelled image, kept when it was scored.
    report: DataReport
    # Scoring a predictions file: one record per line of it, kept when its image was scored (as many as
    # ``report`` keeps). None when a model was evaluated.
    predictions_report: DataReport | None = None

    @property
    def reports(self) -> list[DataReport]:
        return [self.report] if self.predictions_report is None else [self.report, self.predictions_report]

    def __iter__(self) -> Iterator[Any]:
        return iter((self.metrics, self.report))


def evaluate(model: str | Path | None = None, *, data: str | Path, task: Task | str | None = None,
             predictions: str | Path | None = None, settings: Mapping[str, Any] | None = None,
             runtime: str | None = None) -> EvaluationResult:
    """Metrics on labelled ``data``: of a trained ``model``, or of a ``predictions`` file with no model.

    Returns the metrics with the report of the labelled data (records that could not be scored, and why)
    and, for a predictions file, the report of its lines (``inference.prediction_files``). With
    ``ignore_data_errors`` false any record skipped in either report is an error. ``model`` and
    ``runtime`` are as for ``predict``.
    """
    if (model is None) == (predictions is None):
        raise SettingsError(["evaluate: give either a trained model or a predictions file (with task), not both"])
    if model is not None:
        trained = load_model(model, settings, runtime)
        labelled = read_labeled_data(data, trained.task, ignore_data_errors=trained.settings.ignore_data_errors,
                                     max_image_pixels=trained.settings.max_image_pixels)
        metrics = _format(trained.task).evaluate_model(trained, labelled.records, labelled.report)
        labelled.report.images_checked = "decoded"  # the model read every kept image; those that failed are skipped
        return EvaluationResult(metrics, labelled.report)
    if task is None:
        raise SettingsError(["evaluate: scoring a predictions file needs the task (--task)"])
    task = parse_task(task)
    resolved = resolve_settings(task, settings)
    labelled = read_labeled_data(data, task, ignore_data_errors=resolved.ignore_data_errors,
                                 max_image_pixels=resolved.max_image_pixels)
    predictions_report = DataReport(source=str(predictions))
    options = {} if task.is_classification else {  # how detections are matched and scored
        "metric_type": resolved.validation_metric_type, "iou_threshold": resolved.validation_iou_threshold}
    metrics = _format(task).score_prediction_file(predictions, labelled.records, task, labelled.report,
                                                     predictions_report, **options)
    if not resolved.ignore_data_errors and (labelled.report.skipped or predictions_report.skipped):
        skipped = len(labelled.report.skipped) + len(predictions_report.skipped)
        raise DataError(f"{skipped} record(s) could not be scored and ignore_data_errors is false:\n"
                        f"{scoring_summary(labelled.report, predictions_report)}\n"
                        "Fix them, or set ignore_data_errors=true to score the rest.")
    return EvaluationResult(metrics, labelled.report, predictions_report)


def validate_data(task: Task | str, data: str | Path, validation_data: str | Path | None = None, *,
                  settings: Mapping[str, Any] | None = None, decode_images: bool = True) -> TrainingData:
    """Check the settings and read and check the data exactly as ``train`` does (``prepare_run``),
    without training: the data reports and the split.

    Every image is decoded in full, so that any image training would fail to read is reported here;
    ``decode_images=False`` reads only headers and file structure, as ``train`` does before it starts
    (faster; an image damaged further in, such as a JPEG cut short, is then found only by training).
    The reports say which check ran (``images_checked``).
    """
    return prepare_run(task, data, validation_data, settings=settings, decode_images=decode_images,
                       check_weights=False).data


def export(model: str | Path, output: str | Path | None = None, *, format: str = "onnx",
           batch: int | None = None, opset: int | None = None, nms: bool = False,
           settings: Mapping[str, Any] | None = None) -> OnnxExport | MlflowModelExport:
    """Export a trained model (run folder, model folder, checkpoint or sweep run folder) as ONNX
    (``format="onnx"``) or as an MLflow pyfunc model (``format="mlflow"``).

    ONNX: ``output`` defaults to ``model.onnx`` in the model folder. ``batch``: the batch size the file
    takes (None: any); ``opset``: the ONNX opset (default ``exporting.graph.DEFAULT_OPSET``); ``nms``:
    YOLOv5 with the score filter and NMS in the graph. ``settings`` override the model's inference
    settings first (``enable_onnx_normalization``, ``box_score_thresh``, ``valid_crop_size``, ...).

    MLflow (``pip install 'visionsweep[mlflow]'``): ``output`` is a folder, by default ``mlflow-model`` in
    the model folder (which must hold ``model.pt``, ``labels.json`` and ``settings.json``, as training
    leaves it); ``settings`` are kept in the MLflow model and applied whenever it loads; ``batch``,
    ``opset`` and ``nms`` do not apply. docs/deployment.md describes each format's inputs and outputs.
    """
    if format not in EXPORT_FORMATS:
        raise SettingsError([f"format: got {format!r}; visionsweep exports {', '.join(EXPORT_FORMATS)}"],
                            context="export")
    if Path(model).suffix.lower() == ".onnx":
        raise SettingsError([f"model: {model} is already an ONNX file; export a run or model folder"],
                            context="export")
    if format == "mlflow":
        onnx_only = [name for name, given in (("batch", batch is not None), ("opset", opset is not None),
                                              ("nms", nms)) if given]
        if onnx_only:
            raise SettingsError([f"{name}: applies to ONNX export only (an MLflow model takes any number of "
                                 "images of any size, and predicts with torch)" for name in onnx_only],
                                context="export")
        trained = load_model(model, settings, "torch")  # checks the model and the settings before writing
        return write_mlflow_model(trained.source.parent, output, settings=settings)
    options = ExportOptions(batch=batch, **({} if opset is None else {"opset": opset}), nms=nms)
    trained = load_model(model, settings, "torch")
    output = Path(output) if output is not None else trained.source.parent / ONNX_FILE
    return export_onnx(trained.model, trained.settings, trained.labels, output, options)


def convert(source_format: str, source: str | Path, output: str | Path, **options: Any) -> ImportResult:
    """Import annotations from another layout (``folder``, ``csv``, ...) into Azure JSONL."""
    return _convert(source_format, source, output, **options)


def report(folder: str | Path, *, gallery_size: int = 24, score_threshold: float = 0.5) -> Path:
    """Write ``report.html`` of a run folder or of a sweep folder again (docs/reports.md); returns its path.

    A run report shows ``gallery_size`` validation images, worst first; ``score_threshold`` is for
    detection: the predictions drawn and counted in the gallery, and the confusion matrix shown.
    """
    from visionsweep.sweep.best_model import is_sweep_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; give a run folder (train --output) or a sweep folder")
    if is_sweep_folder(folder):
        from visionsweep.sweep.report import write_sweep_report

        return write_sweep_report(folder)
    from visionsweep.reports.run_report import write_run_report

    return write_run_report(folder, gallery_size=gallery_size, score_threshold=score_threshold)


def load_model(model: str | Path, settings: Mapping[str, Any] | None = None, runtime: str | None = None
               ) -> TrainedModel:
    """The trained model of a run folder, a model folder, a checkpoint, an ONNX file, or a sweep's run
    folder (its best trial's), for ``runtime`` (``torch``, or ``onnxruntime``: see ``predict``), with
    ``settings`` overriding its inference settings."""
    # Imported here: the sweep package loads Optuna, which only a sweep folder needs.
    from visionsweep.sweep.best_model import best_model_folder, is_sweep_folder

    path = Path(model)
    return load_trained_model(best_model_folder(path) if is_sweep_folder(path) else path, overrides=settings,
                              runtime=runtime)


def _format(task: Task) -> ModuleType:
    """The module that writes and scores the predictions of ``task`` (the scoring format differs by task,
    not by model): ``predict_lines``, ``evaluate_model`` and ``score_prediction_file``."""
    return classification_inference if task.is_classification else detection_inference
