"""Object detection end to end on the fridge objects (train a few steps from scratch, predict, evaluate
with the model and from the predictions file, through the command line), and the scoring of
prediction files against labels with hand-made predictions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from jsonl_helpers import absolute_subset, check_detection_lines, read_lines
from visionsweep.cli import main
from visionsweep.data.jsonl import read_labeled_data
from visionsweep.data.report import DataReport
from visionsweep.inference.detection import BOX_KEYS, prediction_line, score_prediction_file
from visionsweep.tasks import Task

TASK = "image_object_detection"
CLASSES = ["can", "carton", "milk_bottle", "water_bottle"]


@pytest.mark.slow
@pytest.mark.parametrize("model_name, options", [
    ("fasterrcnn_resnet18_fpn", ["--set", "validation_metric_type=voc"]),
    ("retinanet_resnet50_fpn", ["--set", "validation_metric_type=coco_voc", "--set", "log_validation_loss=Disable"]),
])
def test_train_predict_evaluate_on_fridge_objects(datasets, tmp_path, capsys, model_name, options):
    folder = datasets / "odFridgeObjects_FairMOTformat"
    train = absolute_subset(folder / "od_train.jsonl", 4, tmp_path / "train.jsonl")
    val = absolute_subset(folder / "od_val.jsonl", 3, tmp_path / "val.jsonl")
    run = tmp_path / "run"
    assert main(["train", "--task", TASK, "--data", str(train), "--validation-data", str(val), "--output", str(run),
                 "--no-progress", "--set", f"model_name={model_name}", "--set", "pretrained=false",
                 "--set", "number_of_epochs=1", "--set", "training_batch_size=2", "--set", "validation_batch_size=3",
                 "--set", "min_size=128", "--set", "max_size=256", "--set", "box_score_thresh=0.05",
                 "--set", "num_workers=0", "--set", "seed=0", *options]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["primary_metric"] == "mean_average_precision"
    assert json.loads((run / "model" / "labels.json").read_text()) == sorted(
        {o["label"] for path in (train, val) for line in read_lines(path) for o in line["label"]})
    epoch = read_lines(run / "metrics.jsonl")[0]
    assert np.isfinite(epoch["train_loss"]) and epoch["train_loss"] > 0
    validation = epoch["validation"]
    assert -1.0 <= validation["mean_average_precision"] <= 1.0
    assert ("log_loss" in validation) == (model_name == "fasterrcnn_resnet18_fpn")

    predictions = tmp_path / "predictions.jsonl"
    assert main(["predict", str(run), str(val), "--output", str(predictions), "--set", "box_detections_per_img=5"]) == 0
    lines = read_lines(predictions)
    assert [line["filename"] for line in lines] == [line["image_url"] for line in read_lines(val)]
    check_detection_lines(lines, CLASSES, 0.05, 5)
    one_image = tmp_path / "one.jsonl"
    assert main(["predict", str(run / "model"), read_lines(val)[0]["image_url"], "--output", str(one_image),
                 "--set", "box_score_thresh=0.5"]) == 0
    check_detection_lines(read_lines(one_image), CLASSES, 0.5, 100)

    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(val), "--set", "box_detections_per_img=5"]) == 0
    with_model = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--task", TASK, "--predictions", str(predictions), "--data", str(val)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    # The same detections scored two ways: in the model's frame, and normalised then scaled to the original
    # image. Both agree on every VOC number (IoU does not change when both sides scale alike).
    for key in ("mean_average_precision", "precision", "recall"):
        assert with_model[key] == pytest.approx(from_file[key], abs=1e-9)
    for name, values in from_file["per_label_metrics"].items():
        assert _scalars(values) == pytest.approx(_scalars(with_model["per_label_metrics"][name]), abs=1e-9)
    if "coco_voc" in options[1]:
        assert len(with_model["coco_metrics"]) == 12


def _image_set(folder):
    """Two labelled images of different sizes, written as JSONL."""
    lines = []
    for name, (width, height), objects in (
            ("a.png", (200, 100), [("can", (0.1, 0.2, 0.4, 0.9), 0), ("carton", (0.5, 0.1, 0.9, 0.5), 0)]),
            ("b.png", (120, 160), [("can", (0.2, 0.2, 0.6, 0.7), 0), ("can", (0.0, 0.0, 0.1, 0.1), 1)])):
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(folder / name)
        lines.append({"image_url": name, "label": [
            {"label": label, "topX": b[0], "topY": b[1], "bottomX": b[2], "bottomY": b[3], "isCrowd": crowd}
            for label, b, crowd in objects]})
    jsonl = folder / "labels.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return jsonl


def _prediction(filename, *boxes):
    return {"filename": filename, "boxes": [
        {"box": dict(zip(BOX_KEYS, box)), "label": label, "score": score} for label, box, score in boxes]}


def _score(folder, lines, **options):
    """Metrics, the labelled data's report and the predictions file's report."""
    data = read_labeled_data(_image_set(folder), Task.OBJECT_DETECTION)
    path = folder / "predictions.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    predictions_report = DataReport(source=str(path))
    metrics = score_prediction_file(path, data.records, Task.OBJECT_DETECTION, data.report, predictions_report,
                                    **options)
    return metrics, data.report, predictions_report


def _scalars(entry):
    """A class's precision, recall and AP (without its curves per score threshold)."""
    return {key: entry[key] for key in ("precision", "recall", "average_precision")}


def test_prediction_line_normalises_by_the_model_frame():
    predictions = {"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0]]), "labels": torch.tensor([1]),
                   "scores": torch.tensor([0.75])}
    line = prediction_line("x.jpg", predictions, ["can", "carton"], (100, 80))
    assert line == {"filename": "x.jpg", "boxes": [
        {"box": {"topX": 0.1, "topY": 0.25, "bottomX": 0.5, "bottomY": 0.75}, "label": "carton", "score": 0.75}]}
    assert list(line["boxes"][0]["box"]) == ["topX", "topY", "bottomX", "bottomY"]


def test_scoring_perfect_predictions(tmp_path):
    lines = [_prediction("a.png", ("can", (0.1, 0.2, 0.4, 0.9), 0.9), ("carton", (0.5, 0.1, 0.9, 0.5), 0.8)),
             _prediction("b.png", ("can", (0.2, 0.2, 0.6, 0.7), 0.7), ("can", (0.0, 0.0, 0.1, 0.1), 0.6))]
    metrics, report, predictions_report = _score(tmp_path, lines, metric_type="coco_voc")
    assert metrics["mean_average_precision"] == pytest.approx(1.0)
    # The prediction on the crowd box is ignored (neither TP nor FP), and the crowd box counts no object.
    assert _scalars(metrics["per_label_metrics"]["can"]) == pytest.approx(
        {"precision": 1.0, "recall": 1.0, "average_precision": 1.0})
    assert metrics["coco_metrics"]["AP50"] == pytest.approx(1.0)
    assert not report.skipped and not predictions_report.skipped
    assert report.kept == predictions_report.kept == predictions_report.records_read == 2


def test_scoring_misses_wrong_classes_and_unknown_classes(tmp_path):
    lines = [_prediction("a.png", ("carton", (0.1, 0.2, 0.4, 0.9), 0.9), ("carton", (0.5, 0.1, 0.9, 0.5), 0.8)),
             _prediction("b.png", ("can", (0.6, 0.7, 0.9, 0.95), 0.7), ("ghost", (0.2, 0.2, 0.6, 0.7), 0.6))]
    metrics, _, _ = _score(tmp_path, lines)
    per_label = metrics["per_label_metrics"]
    # carton: TP at 0.8 after an FP at 0.9 -> AP 0.5 (envelope 0.5 over recall 0..1), precision 1/2
    assert _scalars(per_label["carton"]) == pytest.approx({"precision": 0.5, "recall": 1.0, "average_precision": 0.5})
    assert _scalars(per_label["can"]) == pytest.approx({"precision": 0.0, "recall": 0.0, "average_precision": 0.0})
    # a class only the predictions name: AP undefined, left out of the mean
    assert _scalars(per_label["ghost"]) == {"precision": 0.0, "recall": -1.0, "average_precision": -1.0}
    assert metrics["mean_average_precision"] == pytest.approx(0.25, abs=1e-6)


def test_scoring_reports_malformed_and_missing_lines(tmp_path):
    lines = [_prediction("a.png", ("can", (0.1, 0.2, 0.4, 0.9), 0.9)),
             {"filename": "b.png", "boxes": [{"box": {"topX": 0.1}, "label": "can", "score": 0.5}]},
             _prediction("c.png")]
    metrics, report, predictions_report = _score(tmp_path, lines)
    # b.png's line is malformed: a malformed line of the file, and an unusable prediction of the labelled image
    skipped = {p.location: p for p in predictions_report.skipped}
    assert {location: (p.reason, p.image_url) for location, p in skipped.items()} == {
        "predictions.jsonl:2": ("malformed line", "b.png"), "predictions.jsonl:3": ("no label", "c.png")}
    assert "box 1 needs numbers for topX, topY, bottomX, bottomY" in skipped["predictions.jsonl:2"].detail
    (unusable,) = report.skipped
    assert (unusable.location, unusable.reason, unusable.image_url) == ("labels.jsonl:2", "unusable prediction",
                                                                        "b.png")
    assert "line predictions.jsonl:2: box 1 needs numbers" in unusable.detail
    assert (report.records_read, report.kept) == (2, 1)
    assert (predictions_report.records_read, predictions_report.kept) == (3, 1)
    # only a.png is scored: can found, carton missed
    assert metrics["per_label_metrics"]["can"]["average_precision"] == pytest.approx(1.0)
    assert metrics["per_label_metrics"]["carton"]["average_precision"] == 0.0
