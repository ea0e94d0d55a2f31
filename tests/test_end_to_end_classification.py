"""End to end on the fridge objects: train from scratch, predict, evaluate, through the command line."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from jsonl_helpers import read_lines
from visionsweep.cli import main

pytestmark = pytest.mark.slow

FAST = ["--set", "model_name=resnet18", "--set", "pretrained=false", "--set", "valid_resize_size=72",
        "--set", "valid_crop_size=64", "--set", "train_crop_size=64", "--set", "training_batch_size=16",
        "--set", "validation_batch_size=16", "--set", "seed=0", "--set", "num_workers=0"]


def test_multiclass_fridge(datasets, tmp_path, capsys):
    folder = datasets / "fridgeObjects_cls"
    run = tmp_path / "run"
    assert main(["train", "--task", "image_classification", "--data", str(folder / "cls_train.jsonl"),
                 "--validation-data", str(folder / "mltable_cls_val"), "--output", str(run),
                 "--set", "number_of_epochs=3", "--no-progress", *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["epochs_run"] == 3
    assert sorted(p.name for p in (run / "model").iterdir()) == ["labels.json", "metrics.json", "mlflow-model",
                                                                 "model.onnx", "model.pt", "settings.json"]
    labels = json.loads((run / "model" / "labels.json").read_text())
    assert labels == ["can", "carton", "milk_bottle", "water_bottle"]
    assert len(read_lines(run / "metrics.jsonl")) == 3
    report = json.loads((run / "data_report.json").read_text())
    assert report["training_images"] == 104 and report["validation_images"] == 30

    predictions = tmp_path / "predictions.jsonl"
    assert main(["predict", str(run), str(folder / "cls_val.jsonl"), "--output", str(predictions)]) == 0
    lines = read_lines(predictions)
    assert len(lines) == 30
    assert set(lines[0]) == {"filename", "probs", "labels"}
    assert lines[0]["filename"] == "small-150/can_10.jpg"  # as listed in the JSONL file
    assert all(line["labels"] == labels for line in lines)
    assert np.allclose([sum(line["probs"]) for line in lines], 1.0, atol=1e-5)

    # the full-size originals: a folder of images, other sizes and EXIF
    assert main(["predict", str(run / "model"), str(folder / "img"), "--output", str(tmp_path / "img.jsonl")]) == 0
    assert len(read_lines(tmp_path / "img.jsonl")) == 18

    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(folder / "cls_val.jsonl")]) == 0
    with_model = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--task", "image_classification", "--predictions", str(predictions),
                 "--data", str(folder / "cls_val.jsonl"), "--output", str(tmp_path / "m.json")]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert with_model["accuracy"] == pytest.approx(from_file["accuracy"])
    assert with_model["accuracy"] == pytest.approx(summary["best_score"])
    assert np.mean([np.argmax(line["probs"]) == labels.index(line["filename"].split("/")[1].rsplit("_", 1)[0])
                    for line in lines]) == pytest.approx(with_model["accuracy"])
    assert set(with_model["confusion_matrix"]) == {"class_labels", "matrix"}


def test_multilabel_fridge(datasets, tmp_path, capsys):
    folder = datasets / "odFridgeObjects_FairMOTformat"
    run = tmp_path / "run"
    assert main(["train", "--task", "image_classification_multilabel", "--data",
                 str(folder / "multilabel_train.jsonl"), "--validation-data", str(folder / "multilabel_val.jsonl"),
                 "--output", str(run), "--set", "number_of_epochs=2", "--no-progress", *FAST]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["primary_metric"] == "iou"
    predictions = tmp_path / "p.jsonl"
    assert main(["predict", str(run), str(folder / "mltable_multilabel_val"), "--output", str(predictions)]) == 0
    lines = read_lines(predictions)
    assert len(lines) == 28
    assert all(0.0 <= p <= 1.0 for line in lines for p in line["probs"])
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(folder / "multilabel_val.jsonl")]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["iou"] == pytest.approx(summary["best_score"])
    assert set(metrics["iou_classwise"]) == {"can", "carton", "milk_bottle", "water_bottle"}


def test_split_when_no_validation_data(datasets, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--task", "image_classification", "--data",
                 str(datasets / "fridgeObjects_cls" / "cls_annotations.jsonl"), "--output", str(run),
                 "--set", "number_of_epochs=1", "--set", "validation_size=0.25", "--no-progress", *FAST]) == 0
    report = json.loads((run / "data_report.json").read_text())
    assert report["validation_split_from_training"] is True
    # a quarter of each class, rounded: can 32 -> 8, carton 32 -> 8, milk_bottle 37 -> 9, water_bottle 33 -> 8
    assert (report["training_images"], report["validation_images"]) == (101, 33)
    held_out = [json.loads(line)["label"] for line in (run / "validation.jsonl").read_text().splitlines()]
    assert sorted(set(held_out)) == ["can", "carton", "milk_bottle", "water_bottle"]


def test_validate_data_and_clear_errors(datasets, tmp_path, capsys):
    assert main(["validate-data", "--task", "image_classification", "--data",
                 str(datasets / "fridgeObjects_cls" / "cls_train.jsonl")]) == 0
    assert "104 images kept" in capsys.readouterr().out
    assert main(["train", "--task", "image_classification", "--data", "x.jsonl", "--set", "learning_rat=0.1",
                 "--set", "number_of_epochs=0"]) == 2
    err = capsys.readouterr().err
    assert "learning_rat: unknown setting; did you mean 'learning_rate'?" in err and "number_of_epochs" in err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "visionsweep.cli", "models", "--task", "image_classification"],
                         capture_output=True, text=True, check=True).stdout
    assert "default vitb16r224" in out and "seresnext" in out
