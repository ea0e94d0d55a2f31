"""Tiling end to end on the aerial cars (1920 x 1080 drone photos, small vehicles), through the command
line: convert the YOLO labels, train a few steps with a 3 x 2 grid, predict with and without tiles,
evaluate the tiled model and its predictions file against the full-image labels."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jsonl_helpers import read_lines, write_lines
from visionsweep.cli import main

TASK = "image_object_detection"


@pytest.mark.slow
def test_train_predict_evaluate_with_tiles_on_aerial_cars(datasets, tmp_path, capsys):
    converted = tmp_path / "all.jsonl"
    assert main(["convert", "--from", "yolo", str(datasets / "aerial-cars"), "--output", str(converted)]) == 0
    records = read_lines(converted)
    assert len(records) == 49
    train = write_lines(records[:1], tmp_path / "train.jsonl")
    val = write_lines(records[1:2], tmp_path / "val.jsonl")
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--task", TASK, "--data", str(train), "--validation-data", str(val), "--output", str(run),
                 "--no-progress", "--set", "model_name=fasterrcnn_resnet18_fpn", "--set", "pretrained=false",
                 "--set", "number_of_epochs=1", "--set", "training_batch_size=4", "--set", "validation_batch_size=1",
                 "--set", "min_size=128", "--set", "max_size=256", "--set", "box_score_thresh=0.01",
                 "--set", "tile_grid_size=(3, 2)", "--set", "tile_overlap_ratio=0.25",
                 "--set", "log_training_metrics=Enable", "--set", "num_workers=0", "--set", "seed=0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed"
    assert json.loads((run / "model" / "settings.json").read_text())["tile_grid_size"] == [3, 2]
    epoch = read_lines(run / "metrics.jsonl")[0]
    assert np.isfinite(epoch["train_loss"]) and epoch["train_loss"] > 0
    assert "mean_average_precision_train" not in epoch  # training metrics are off with tiling
    assert 0.0 <= epoch["validation"]["mean_average_precision"] <= 1.0
    log = (run / "train.log").read_text()
    # The image is 1920 x 1080 with cars all over: the full image and its six tiles all hold objects.
    assert "tiling 3x2 with overlap 0.25: 7 training samples from 1 images" in log

    # Prediction inherits the tiling: full image plus six tiles, merged and not capped at
    # box_detections_per_img, so more boxes than one source may give; without tiles at most the cap.
    tiled, plain = tmp_path / "tiled.jsonl", tmp_path / "plain.jsonl"
    assert main(["predict", str(run), str(val), "--output", str(tiled), "--set", "box_detections_per_img=5"]) == 0
    assert main(["predict", str(run), str(val), "--output", str(plain), "--set", "box_detections_per_img=5",
                 "--set", "tile_grid_size=null"]) == 0
    [tiled_line], [plain_line] = read_lines(tiled), read_lines(plain)
    assert tiled_line["filename"] == plain_line["filename"] == records[1]["image_url"]
    assert len(plain_line["boxes"]) <= 5 < len(tiled_line["boxes"]) <= 35
    scores = [b["score"] for b in tiled_line["boxes"]]
    assert scores == sorted(scores, reverse=True)
    for item in tiled_line["boxes"]:
        x0, y0, x1, y1 = item["box"].values()
        assert 0.0 <= x0 <= x1 <= 1.0 and 0.0 <= y0 <= y1 <= 1.0 and item["score"] >= 0.01

    # Evaluating the tiled model (merged predictions against the full-image labels) gives the same VOC
    # numbers as scoring its predictions file with no model: VOC IoU does not change with the frame.
    all_boxes = tmp_path / "all_boxes.jsonl"
    assert main(["predict", str(run), str(val), "--output", str(all_boxes)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(val)]) == 0
    with_model = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--task", TASK, "--predictions", str(all_boxes), "--data", str(val)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert with_model["mean_average_precision"] == pytest.approx(from_file["mean_average_precision"], abs=1e-6)
    assert with_model["recall"] == pytest.approx(from_file["recall"], abs=1e-6)
    assert 0.0 <= with_model["mean_average_precision"] <= 1.0
