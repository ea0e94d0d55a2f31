"""YOLOv5 end to end on the fridge objects through the command line: train a few epochs from scratch at a
small image size, predict (a JSONL file and a single image), evaluate with the model and from the
predictions file, and check every output format."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jsonl_helpers import absolute_subset, check_detection_lines, read_lines
from visionsweep.cli import main

TASK = "image_object_detection"
CLASSES = ["can", "carton", "milk_bottle", "water_bottle"]


@pytest.mark.slow
def test_yolov5_train_predict_evaluate_on_fridge_objects(datasets, tmp_path, capsys):
    folder = datasets / "odFridgeObjects_FairMOTformat"
    train = absolute_subset(folder / "od_train.jsonl", 8, tmp_path / "train.jsonl")
    val = absolute_subset(folder / "od_val.jsonl", 4, tmp_path / "val.jsonl")
    run = tmp_path / "run"
    assert main(["train", "--task", TASK, "--data", str(train), "--validation-data", str(val), "--output", str(run),
                 "--no-progress", "--set", "model_name=yolov5", "--set", "model_size=small",
                 "--set", "pretrained=false", "--set", "img_size=128", "--set", "number_of_epochs=2",
                 "--set", "training_batch_size=4", "--set", "validation_batch_size=4", "--set", "num_workers=0",
                 "--set", "seed=0", "--set", "validation_metric_type=coco_voc"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    assert json.loads((run / "model" / "labels.json").read_text()) == CLASSES
    stored = json.loads((run / "model" / "settings.json").read_text())
    assert (stored["model_name"], stored["model_size"], stored["img_size"]) == ("yolov5", "small", 128)
    assert stored["box_score_thresh"] == 0.1 and stored["nms_iou_thresh"] == 0.5  # the yolov5 defaults
    epochs = read_lines(run / "metrics.jsonl")
    for epoch in epochs:
        assert np.isfinite(epoch["train_loss"]) and epoch["train_loss"] > 0
        assert epoch["train_loss"] == pytest.approx(
            4 * (epoch["train_box_loss"] + epoch["train_obj_loss"] + epoch["train_cls_loss"]), rel=1e-4)
        validation = epoch["validation"]
        assert -1.0 <= validation["mean_average_precision"] <= 1.0 and validation["log_loss"] > 0
    assert epochs[-1]["learning_rate"] < epochs[0]["learning_rate"]  # warm-up then cosine decay

    # An untrained detector's scores sit far below the default 0.1; a low threshold gives boxes to check.
    predictions = tmp_path / "predictions.jsonl"
    assert main(["predict", str(run), str(val), "--output", str(predictions), "--set", "box_score_thresh=0.001"]) == 0
    lines = read_lines(predictions)
    assert [line["filename"] for line in lines] == [line["image_url"] for line in read_lines(val)]
    assert any(line["boxes"] for line in lines)
    check_detection_lines(lines, CLASSES, 0.001, 300)  # YOLOv5 keeps at most 300
    one_image = tmp_path / "one.jsonl"
    assert main(["predict", str(run / "model"), read_lines(val)[0]["image_url"], "--output", str(one_image),
                 "--set", "box_score_thresh=0.002"]) == 0
    (single,) = read_lines(one_image)
    check_detection_lines([single], CLASSES, 0.002, 300)
    # The same image and model: the higher threshold keeps exactly the boxes above it, in the same places.
    kept = [item for item in lines[0]["boxes"] if item["score"] > 0.002]
    assert single["boxes"] and len(single["boxes"]) == len(kept)
    for mine, theirs in zip(single["boxes"], kept):
        assert mine["label"] == theirs["label"] and mine["score"] == pytest.approx(theirs["score"])
        assert list(mine["box"].values()) == pytest.approx(list(theirs["box"].values()))

    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(val), "--set", "box_score_thresh=0.001"]) == 0
    with_model = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--task", TASK, "--predictions", str(predictions), "--data", str(val)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    # The same detections scored in original pixels by the model's path and, normalised and scaled back,
    # from the file: every VOC number agrees.
    for key in ("mean_average_precision", "precision", "recall"):
        assert with_model[key] == pytest.approx(from_file[key], abs=1e-9)
    for name, values in from_file["per_label_metrics"].items():
        for key in ("precision", "recall", "average_precision"):  # the curves per threshold are dicts
            assert values[key] == pytest.approx(with_model["per_label_metrics"][name][key], abs=1e-9)
    assert len(with_model["coco_metrics"]) == 12
