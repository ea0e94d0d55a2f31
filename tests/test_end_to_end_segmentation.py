"""Instance segmentation end to end on coco128-seg through the command line: convert the YOLO-seg labels,
train Mask R-CNN ResNet-18 from scratch for one step at a small size, predict polygons (and mask images),
evaluate with the model and from the predictions file."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jsonl_helpers import read_lines, write_lines
from visionsweep.cli import main

TASK = "image_instance_segmentation"


@pytest.mark.slow
def test_convert_train_predict_evaluate_on_coco128_seg(datasets, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # mask images go beside the predictions
    (tmp_path / "coco.names").write_text("".join(f"class{i:02d}\n" for i in range(80)))
    converted = tmp_path / "coco128.jsonl"
    assert main(["convert", "--from", "yolo", str(datasets / "coco128-seg"), "--output", str(converted),
                 "--option", f"names={tmp_path / 'coco.names'}", "--option", f"task={TASK}"]) == 0
    capsys.readouterr()
    labelled = [line for line in read_lines(converted) if line["label"]]
    # Images with few objects keep the steps cheap on a CPU: two steps of two, two images to validate on.
    small = sorted(labelled, key=lambda line: len(line["label"]))[:4]
    train = write_lines(small, tmp_path / "train.jsonl")
    val = write_lines(small[:2], tmp_path / "val.jsonl")
    run = tmp_path / "run"
    assert main(["train", "--task", TASK, "--data", str(train), "--validation-data", str(val), "--output", str(run),
                 "--no-progress", "--set", "model_name=maskrcnn_resnet18_fpn", "--set", "pretrained=false",
                 "--set", "number_of_epochs=1", "--set", "training_batch_size=2", "--set", "validation_batch_size=2",
                 "--set", "min_size=96", "--set", "max_size=160", "--set", "box_score_thresh=0.01",
                 "--set", "box_detections_per_img=4", "--set", "validation_metric_type=coco_voc",
                 "--set", "log_validation_loss=Disable", "--set", "num_workers=0", "--set", "seed=0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["primary_metric"] == "mean_average_precision"
    (epoch,) = read_lines(run / "metrics.jsonl")
    assert np.isfinite(epoch["train_loss"]) and epoch["train_loss"] > 0
    assert 0.0 <= epoch["validation"]["mean_average_precision"] <= 1.0
    classes = json.loads((run / "model" / "labels.json").read_text())
    assert classes == sorted({o["label"] for line in small for o in line["label"]})

    predictions = tmp_path / "predictions.jsonl"
    assert main(["predict", str(run), str(val), "--output", str(predictions), "--set", "export_as_image=true",
                 "--set", "image_type=png", "--set", "max_number_of_polygon_points=6",
                 "--set", "mask_pixel_score_threshold=0.3"]) == 0
    lines = read_lines(predictions)
    assert [line["filename"] for line in lines] == [line["image_url"] for line in small[:2]]
    boxes = [item for line in lines for item in line["boxes"]]
    assert boxes, "an untrained model at threshold 0.01 still reports boxes"
    for item in boxes:
        assert list(item) == ["box", "label", "score", "polygon"] and item["label"] in classes
        for segment in item["polygon"]:
            assert 6 <= len(segment) <= 12 and len(segment) % 2 == 0  # 3 to 6 points
            assert all(0.0 <= v <= 1.0 for v in segment)
    assert any(item["polygon"] for item in boxes)
    written = sorted((tmp_path / "masks").rglob("*.png"))
    assert len(written) == len(boxes)
    roots = {line["filename"].rsplit("/", 1)[-1].split(".")[0] for line in lines if line["boxes"]}
    assert {p.relative_to(tmp_path / "masks").parts[0] for p in written} == roots

    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(val)]) == 0
    with_model = json.loads(capsys.readouterr().out)
    assert 0.0 <= with_model["mean_average_precision"] <= 1.0 and len(with_model["coco_metrics"]) == 12
    assert main(["evaluate", "--task", TASK, "--predictions", str(predictions), "--data", str(val)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert set(from_file["per_label_metrics"]) >= {o["label"] for line in small[:2] for o in line["label"]}
    assert -1.0 <= from_file["mean_average_precision"] <= 1.0
