"""Faster R-CNN and Mask R-CNN through ``train``, ``predict`` and ``evaluate`` after one training step on
two synthetic scenes: the fast tier's run of R-CNN prediction and evaluation (the runs on the shared
datasets, in test_end_to_end_detection.py and test_end_to_end_segmentation.py, are slow)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

import visionsweep
from jsonl_helpers import check_labeled_dataset
from visionsweep.geometry.masks import pixel_segments, polygons_to_masks
from visionsweep.inference.mask_images import mask_image_path

# One step: two images, a batch of two. Small frames; threshold 0 so the barely trained model reports boxes.
SETTINGS = {"pretrained": False, "number_of_epochs": 1, "training_batch_size": 2, "validation_batch_size": 2,
            "min_size": 64, "max_size": 96, "box_score_thresh": 0.0, "box_detections_per_img": 3,
            "log_validation_loss": "Disable", "num_workers": 0, "seed": 0}
# Normalised (x0, y0, x1, y1) of a red and a blue square on a grey 96 x 64 scene.
SQUARES = {"red": (0.1, 0.2, 0.4, 0.7), "blue": (0.55, 0.3, 0.9, 0.8)}


def _scenes(folder: Path, label, size: tuple[int, int] = (96, 64)) -> Path:
    """Two grey scenes of ``size`` (width, height) with the squares painted in, and their JSONL file with
    ``label(name, box)`` per square."""
    lines = []
    width, height = size
    for i in range(2):
        pixels = np.full((height, width, 3), 128, np.uint8)
        for name, (x0, y0, x1, y1) in SQUARES.items():
            pixels[int(y0 * height):int(y1 * height), int(x0 * width):int(x1 * width)] = \
                (255, 0, 0) if name == "red" else (0, 0, 255)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        lines.append({"image_url": f"{i}.png", "label": [label(name, box) for name, box in SQUARES.items()]})
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return data


def _check_boxes(lines: list[dict]) -> list[dict]:
    assert [line["filename"] for line in lines] == ["0.png", "1.png"]
    boxes = [item for line in lines for item in line["boxes"]]
    assert boxes, "at threshold 0 a model reports boxes"
    for line in lines:
        assert len(line["boxes"]) <= 3
        scores = [item["score"] for item in line["boxes"]]
        assert scores == sorted(scores, reverse=True)
    for item in boxes:
        assert item["label"] in SQUARES and list(item["box"]) == ["topX", "topY", "bottomX", "bottomY"]
        assert all(0.0 <= v <= 1.0 for v in item["box"].values())
    return boxes


def test_faster_rcnn_predicts_and_evaluates_after_one_step(tmp_path):
    data = _scenes(tmp_path, lambda name, box: dict(zip(("label", "topX", "topY", "bottomX", "bottomY"), (name, *box))))
    result = visionsweep.train("image_object_detection", data, data, output=tmp_path / "run", progress=False,
                               settings={**SETTINGS, "model_name": "fasterrcnn_resnet18_fpn"})
    assert result.status == "completed" and result.epochs_run == 1
    out = visionsweep.predict(result.run_dir, data, output=tmp_path / "predictions.jsonl",
                              labeled_dataset=tmp_path / "labeled" / "labeled_dataset.json")
    assert out.images == 2 and out.labeled_dataset == tmp_path / "labeled" / "labeled_dataset.json"
    _check_boxes([json.loads(line) for line in out.output.read_text().splitlines()])
    labeled = check_labeled_dataset(out.output, out.labeled_dataset)
    assert [line["image_url"] for line in labeled] == ["AmlDatastore://0.png", "AmlDatastore://1.png"]
    assert all("polygon" not in label for line in labeled for label in line["label"])
    metrics, report = visionsweep.evaluate(result.run_dir, data=data)
    assert 0.0 <= metrics["mean_average_precision"] <= 1.0 and set(metrics["per_label_metrics"]) == set(SQUARES)
    assert not report.skipped


def test_mask_rcnn_predicts_polygons_and_mask_images_and_evaluates_after_one_step(tmp_path):
    def polygon(name, box):
        x0, y0, x1, y1 = box
        return {"label": name, "isCrowd": 0, "polygon": [[x0, y0, x1, y0, x1, y1, x0, y1]]}

    # 192 x 128 images: the model frame (min_size 64, max_size 96) is half that, 96 x 64.
    data = _scenes(tmp_path, polygon, size=(192, 128))
    result = visionsweep.train("image_instance_segmentation", data, data, output=tmp_path / "run", progress=False,
                               settings={**SETTINGS, "model_name": "maskrcnn_resnet18_fpn"})
    assert result.status == "completed" and result.epochs_run == 1
    exported = {"export_as_image": True, "image_type": "png", "mask_pixel_score_threshold": 0.5}
    out = visionsweep.predict(result.run_dir, data, output=tmp_path / "out" / "predictions.jsonl", settings=exported,
                              labeled_dataset=tmp_path / "out" / "labeled_dataset.json")
    lines = [json.loads(line) for line in out.output.read_text().splitlines()]
    boxes = _check_boxes(lines)
    labeled = check_labeled_dataset(out.output, out.labeled_dataset)
    assert all(list(label)[-1] == "polygon" for line in labeled for label in line["label"])
    for item in boxes:
        assert list(item) == ["box", "label", "score", "polygon"]
        assert all(len(segment) % 2 == 0 and all(0.0 <= v <= 1.0 for v in segment) for segment in item["polygon"])
    # One mask image per box, beside the predictions file, in a folder per image, at the ORIGINAL image's
    # size (not the 96 x 64 frame), lying over the box's polygon rasterised at that size.
    masks = tmp_path / "out" / "masks"
    written = sorted(masks.rglob("*.png"))
    assert len(written) == len(boxes)
    assert {p.relative_to(masks).parts[0] for p in written} <= {"0", "1"}
    compared = 0
    for line in lines:
        for i, item in enumerate(line["boxes"]):
            path = mask_image_path(masks, line["filename"], i, item["label"], item["score"], "png")
            with Image.open(path) as image:
                assert image.size == (192, 128)
                mask = np.asarray(image) > 127
            if item["polygon"]:
                outline = polygons_to_masks([pixel_segments(item["polygon"], 192, 128)], 128, 192)[0].astype(bool)
                assert (mask & outline).sum() / (mask | outline).sum() > 0.9
                compared += 1
    assert compared, "at mask threshold 0.5 the model traces some polygon"
    metrics, report = visionsweep.evaluate(result.run_dir, data=data)
    assert 0.0 <= metrics["mean_average_precision"] <= 1.0 and set(metrics["per_label_metrics"]) == set(SQUARES)
    assert not report.skipped
