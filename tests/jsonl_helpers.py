"""JSONL files and detection prediction lines, as the end-to-end tests read, write and check them."""
from __future__ import annotations

import json

from visionsweep.inference.detection import BOX_KEYS


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_lines(lines, path):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def absolute_subset(source, count, output):
    """The first ``count`` records of a JSONL file, with absolute image paths (the images stay where they are)."""
    lines = read_lines(source)[:count]
    for line in lines:
        line["image_url"] = str(source.parent / line["image_url"])
    return write_lines(lines, output)


def check_detection_lines(lines, classes, score_floor, most):
    """Each line in the reference's detection format: boxes best first, at most ``most`` of them,
    normalised corners in the reference's key order, known labels, scores above ``score_floor``."""
    for line in lines:
        assert set(line) == {"filename", "boxes"}
        scores = [item["score"] for item in line["boxes"]]
        assert scores == sorted(scores, reverse=True) and len(scores) <= most
        for item in line["boxes"]:
            assert set(item) == {"box", "label", "score"} and item["label"] in classes
            assert list(item["box"]) == list(BOX_KEYS)
            x0, y0, x1, y1 = item["box"].values()
            assert 0.0 <= x0 <= x1 <= 1.0 and 0.0 <= y0 <= y1 <= 1.0
            assert isinstance(item["score"], float) and score_floor < item["score"] <= 1.0


def check_labeled_dataset(predictions_path, labeled_path):
    """The labelled-dataset file (predict --labeled-dataset) against its predictions file: one line per
    prediction line, in the same order, in the reference's field order (spec 6.2). Returns its lines."""
    from urllib.parse import unquote

    predictions, labeled = read_lines(predictions_path), read_lines(labeled_path)
    assert len(labeled) == len(predictions) > 0
    for prediction, line in zip(predictions, labeled):
        assert list(line) == ["image_url", "label_confidence", "label"]
        assert line["image_url"] == "AmlDatastore://" + unquote(prediction["filename"])
        if "probs" in prediction:  # classification: every class's probability and the full class list
            assert line["label_confidence"] == prediction["probs"] and line["label"] == prediction["labels"]
            continue
        assert line["label_confidence"] == [item["score"] for item in prediction["boxes"]]
        assert len(line["label"]) == len(prediction["boxes"])
        for label, item in zip(line["label"], prediction["boxes"]):
            keys = ["topX", "topY", "bottomX", "bottomY", "label"] + (["polygon"] if "polygon" in item else [])
            assert list(label) == keys
            assert [label[k] for k in keys[:4]] == [item["box"][k] for k in keys[:4]]
            assert label["label"] == item["label"] and label.get("polygon") == item.get("polygon")
    return labeled
