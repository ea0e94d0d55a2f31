"""The run report: ``report.html`` in a run folder, from what the run wrote there.

It shows the settings, the data report (kept and skipped records, with reasons), learning curves,
the per-class table, a confusion matrix, precision/recall curves and a gallery of validation images
(``gallery``). Everything but the gallery and the classification curves comes from the files of the
run (metrics.jsonl, model/metrics.json of the best epoch); those two need the best model's
predictions on the validation images, which the report makes with the model folder, as ``visionsweep
predict`` would.

Training writes the report at the end of every run (setting ``write_report``); ``visionsweep report
RUN_DIR`` writes it again from the folder alone.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from visionsweep.data.images import DEFAULT_MAX_IMAGE_PIXELS
from visionsweep.data.jsonl import read_labeled_data
from visionsweep.data.report import DataReport
from visionsweep.errors import SettingsError, VisionSweepError
from visionsweep.reports import gallery as gallery_module
from visionsweep.reports.figures import Figure, Series, heat_map, line_chart
from visionsweep.reports.page import render, write_report
from visionsweep.tasks import Task

log = logging.getLogger("visionsweep")

GALLERY_SIZE = 24
MAX_GALLERY_SIZE = 1000  # each image is ~20 KB of the one HTML file
# Detection: the predictions drawn and counted in the gallery, and the confusion matrix shown (all the
# matrices are in model/metrics.json).
SCORE_THRESHOLD = 0.5


@dataclass(frozen=True)
class RunFiles:
    """What a run wrote in its folder, read once."""

    path: Path
    task: Task
    settings: dict[str, Any]
    data_report: dict[str, Any] | None
    epochs: list[dict[str, Any]]
    best: dict[str, Any] | None  # model/metrics.json: the best epoch's metrics
    classes: list[str]


def read_run_files(run_dir: str | Path) -> RunFiles:
    path = Path(run_dir)
    settings = _json(path / "settings.json")
    if not isinstance(settings, dict) or "task" not in settings:
        raise VisionSweepError(f"{path} is not a run folder (no settings.json with a task); give the folder a "
                               "training run wrote")
    epochs = []
    metrics_file = path / "metrics.jsonl"
    for line in metrics_file.read_text(encoding="utf-8").splitlines() if metrics_file.is_file() else []:
        try:
            epochs.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a killed run
    labels = _json(path / "model" / "labels.json")
    report = _json(path / "data_report.json")
    return RunFiles(path, Task(settings["task"]), settings, report, epochs, _json(path / "model" / "metrics.json"),
                    labels if isinstance(labels, list) else (report or {}).get("classes", []))


def write_run_report(run_dir: str | Path, *, gallery_size: int = GALLERY_SIZE,
                     score_threshold: float = SCORE_THRESHOLD) -> Path:
    """Write ``report.html`` (and ``report_data/*.csv``) in ``run_dir``; returns the report's path.
    ``gallery_size`` (0 to 1000) images are shown; ``score_threshold`` (0 to 1) is for detection."""
    problems = [f"{name}: got {value!r}; use {rule}" for name, value, ok, rule in (
        ("gallery_size", gallery_size, isinstance(gallery_size, int) and 0 <= gallery_size <= MAX_GALLERY_SIZE,
         f"a whole number from 0 to {MAX_GALLERY_SIZE}"),
        ("score_threshold", score_threshold, isinstance(score_threshold, (int, float)) and 0 <= score_threshold <= 1,
         "a number from 0 to 1")) if not ok]
    if problems:
        raise SettingsError(problems, context="report")
    run = read_run_files(run_dir)
    scored, prediction_note = _score_validation_images(run, score_threshold)
    figures = [*_learning_curves(run), *_confusion_matrices(run, scored), *_precision_recall_curves(run, scored)]
    pictures = gallery_module.gallery(scored, gallery_size, score_threshold)
    html = render("run.html.j2", title=f"visionsweep run {run.path.name}", run=run, summary=_summary(run),
                  settings_rows=_settings_rows(run.settings), notes=run.settings.get("notes", []),
                  data=_data_rows(run.data_report), per_class=_per_class_table(run), figures=figures,
                  gallery=pictures, validation_images=len(scored), prediction_note=prediction_note)
    return write_report(run.path, html, figures)


# --- sections -----------------------------------------------------------------------------------------


def _summary(run: RunFiles) -> list[tuple[str, Any]]:
    best = run.best or {}
    last = run.epochs[-1] if run.epochs else {}
    return [("task", run.task.value), ("model", run.settings.get("model_name")),
            ("classes", len(run.classes)), ("epochs run", best.get("epochs_run", last.get("epoch"))),
            ("primary metric", run.settings.get("primary_metric")), ("best epoch", best.get("epoch")),
            ("best value", last.get("best_score"))]


def _settings_rows(settings: dict[str, Any]) -> list[tuple[str, str]]:
    return [(key, json.dumps(value) if not isinstance(value, str) else value)
            for key, value in sorted(settings.items()) if key != "notes"]


def _data_rows(report: dict[str, Any] | None) -> dict[str, Any] | None:
    if report is None:
        return None
    skipped = [dict(record, source=source["source"]) for source in report.get("sources", [])
               for record in source.get("skipped_records", [])]
    return {"sources": report.get("sources", []), "skipped": skipped,
            "failed_during_run": report.get("failed_during_run", []),
            "training_images": report.get("training_images"), "validation_images": report.get("validation_images"),
            "split": report.get("validation_split_from_training")}


def _per_class_table(run: RunFiles) -> dict[str, Any] | None:
    metrics = (run.best or {}).get("metrics") or {}
    if run.task.is_classification:
        rows = metrics.get("classification_report")
        if not rows:
            return None
        columns = [c for c in ("precision", "recall", "f1-score", "auc", "average_precision", "iou", "support")
                   if any(c in values for values in rows.values())]
        return {"columns": columns, "rows": [(name, [values.get(c) for c in columns]) for name, values in rows.items()]}
    rows = metrics.get("per_label_metrics")
    if not rows:
        return None
    columns = ["precision", "recall", "average_precision"]
    return {"columns": columns, "rows": [(name, [_defined(values.get(c)) for c in columns])
                                         for name, values in rows.items()],
            "note": "blank: undefined (no object of the class, or no prediction of it)"}


def _learning_curves(run: RunFiles) -> list[Figure]:
    epochs = run.epochs
    evaluated = [e for e in epochs if e.get("evaluated") and _finite(e.get("primary_value"))]
    losses = [Series("training", [e["epoch"] for e in epochs if _finite(e.get("train_loss"))],
                     [e["train_loss"] for e in epochs if _finite(e.get("train_loss"))])]
    validation_loss = [e for e in evaluated if _finite((e.get("validation") or {}).get("log_loss"))]
    if validation_loss:
        losses.append(Series("validation", [e["epoch"] for e in validation_loss],
                             [e["validation"]["log_loss"] for e in validation_loss]))
    metric = run.settings.get("primary_metric", "primary metric")
    best_epoch = (run.best or {}).get("epoch")
    primary = Series(metric, [e["epoch"] for e in evaluated], [e["primary_value"] for e in evaluated],
                     marked=[i for i, e in enumerate(evaluated) if e["epoch"] == best_epoch])
    rates = Series("learning rate", [e["epoch"] for e in epochs if _finite(e.get("learning_rate"))],
                   [e["learning_rate"] for e in epochs if _finite(e.get("learning_rate"))])
    return [line_chart("loss", "Loss per epoch", losses, x_label="epoch", y_label="loss", whole_x=True),
            line_chart("primary_metric", f"{metric} per epoch (validation)", [primary], x_label="epoch",
                       y_label=metric, whole_x=True,
                       note="x marks the best epoch, whose weights the model folder holds"),
            line_chart("learning_rate", "Learning rate at the end of each epoch", [rates], x_label="epoch",
                       y_label="learning rate", whole_x=True)]


def _confusion_matrices(run: RunFiles, scored: Sequence[gallery_module.ScoredImage]) -> list[Figure]:
    metrics = (run.best or {}).get("metrics") or {}
    if run.task == Task.MULTILABEL:
        if not scored:
            return []
        truth = np.array([[label in s.record.labels for label in run.classes] for s in scored])
        predicted = np.array([np.asarray(s.line["probs"]) > gallery_module.MULTILABEL_THRESHOLD for s in scored])
        counts = [[int((t & p).sum()), int((~t & p).sum()), int((t & ~p).sum()), int((~t & ~p).sum())]
                  for t, p in zip(truth.T, predicted.T)]
        return [heat_map("confusion_matrix", "Per-class outcomes (validation, best model)", counts, run.classes,
                         ["true positive", "false positive", "false negative", "true negative"],
                         row_title="class", column_title="outcome",
                         note=f"predicted: probability above {gallery_module.MULTILABEL_THRESHOLD}")]
    if run.task.is_classification:
        matrix = metrics.get("confusion_matrix")
        if not matrix:
            return []
        return [heat_map("confusion_matrix", "Confusion matrix (validation, best epoch)", matrix["matrix"],
                         matrix["class_labels"], matrix["class_labels"], row_title="true class",
                         column_title="predicted class")]
    matrices = metrics.get("confusion_matrices_per_score_threshold")
    if not matrices:
        return []
    by_threshold = {float(key): value for key, value in matrices.items()}
    shown = SCORE_THRESHOLD if SCORE_THRESHOLD in by_threshold else max(by_threshold)
    title = "Confusion matrix (validation, best epoch, " + (
        f"predictions scored >= {shown:g})" if shown >= 0 else "no prediction matched any object)")
    return [heat_map("confusion_matrix", title, by_threshold[shown], run.classes, [*run.classes, "missed"],
                     row_title="true class", column_title="predicted class",
                     note="objects and predictions matched whatever their class; model/metrics.json has the "
                          "matrices at every score threshold 0.0 to 0.9")]


def _precision_recall_curves(run: RunFiles, scored: Sequence[gallery_module.ScoredImage]) -> list[Figure]:
    if run.task.is_classification:
        return _classification_curves(run, scored)
    metrics = (run.best or {}).get("metrics") or {}
    if "precisions_per_score_threshold" not in metrics:
        return []
    series = [_threshold_curve("all classes", metrics)]
    series += [_threshold_curve(name, values) for name, values in (metrics.get("per_label_metrics") or {}).items()
               if "precisions_per_score_threshold" in values]
    series = [s for s in series if len(s.x)]
    if not series:  # no prediction at any threshold: the table says so, a blank figure would not
        return []
    return [line_chart("precision_recall", "Precision and recall (validation, best epoch)", series,
                       x_label="recall", y_label="precision",
                       note="one point per score threshold 0.00 to 0.99; 'all classes' pools every prediction")]


def _threshold_curve(label: str, metrics: dict[str, Any]) -> Series:
    precisions = {float(k): v for k, v in metrics["precisions_per_score_threshold"].items()}
    recalls = {float(k): v for k, v in metrics["recalls_per_score_threshold"].items()}
    points = [(recalls[t], precisions[t]) for t in sorted(precisions) if precisions[t] >= 0 and recalls.get(t, -1) >= 0]
    return Series(label, [p[0] for p in points], [p[1] for p in points])


def _classification_curves(run: RunFiles, scored: Sequence[gallery_module.ScoredImage]) -> list[Figure]:
    from sklearn.metrics import precision_recall_curve

    if not scored:
        return []
    multilabel = run.task == Task.MULTILABEL
    probabilities = np.array([s.line["probs"] for s in scored])
    series = []
    for index, name in enumerate(scored[0].line["labels"]):
        truth = np.array([(name in s.record.labels) if multilabel else s.record.labels[0] == name for s in scored])
        if truth.any():
            precision, recall, _ = precision_recall_curve(truth, probabilities[:, index])
            series.append(Series(name, recall.tolist(), precision.tolist()))
    return [line_chart("precision_recall", "Precision and recall, each class against the rest (validation, best "
                       "model)", series, x_label="recall", y_label="precision",
                       note="a class without a validation image has no curve")]


# --- predictions --------------------------------------------------------------------------------------


def _score_validation_images(run: RunFiles, score_threshold: float
                             ) -> tuple[list[gallery_module.ScoredImage], str]:
    """The best model's prediction on every validation image, scored; and a note when there is none."""
    from visionsweep.inference import classification as classification_inference
    from visionsweep.inference import detection as detection_inference
    from visionsweep.inference.model_folder import load_trained_model

    validation = run.path / "validation.jsonl"
    if not (run.path / "model").is_dir():
        return [], "the run has no model folder, so nothing was predicted"
    if not validation.is_file() or not validation.read_text(encoding="utf-8").strip():
        return [], "the run had no validation images"
    try:  # images deleted since, a model folder cut short: the rest of the report is still worth having
        data = read_labeled_data(validation, run.task, max_image_pixels=run.settings.get(
            "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
        # the gallery needs the predictions only: no mask files, no explanations (model_explainability)
        overrides = {"export_as_image": False} if run.task.predicts_masks else (
            {"model_explainability": False} if run.task.is_classification else None)
        trained = load_trained_model(run.path / "model", overrides=overrides)
        inference = classification_inference if run.task.is_classification else detection_inference
        lines = list(inference.predict_lines(trained, data.records, DataReport(source=str(validation))))
    except VisionSweepError as error:
        return [], f"the validation images could not be predicted ({error})"
    by_url = {record.image_url: record for record in data.records}
    iou = float(run.settings.get("validation_iou_threshold", 0.5))
    scored = []
    for line in lines:
        record = by_url[line["filename"]]
        if run.task.is_classification:
            scored.append(gallery_module.score_classification(record, line, run.task == Task.MULTILABEL))
        else:
            scored.append(gallery_module.score_detection(record, line, trained.labels, iou, score_threshold))
    skipped = len(data.records) - len(scored)
    return scored, f"{skipped} validation images could not be read" if skipped else ""


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _defined(value: Any) -> Any:
    return None if value == -1 else value
