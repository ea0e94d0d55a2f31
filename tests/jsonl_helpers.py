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
