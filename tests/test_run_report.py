"""The run report (report.html): written at the end of training, rebuilt by ``visionsweep report``, and
opened in a real headless Chromium: no console error, every figure drawn, the gallery worst first."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import visionsweep
from browser_helpers import open_report
from conftest import TINY_SETTINGS, write_color_dataset
from jsonl_helpers import read_lines, write_lines
from visionsweep.cli import main
from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.reports.gallery import score_classification, score_detection
from visionsweep.reports.run_report import write_run_report

DOCS_IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
REPORT = {**TINY_SETTINGS, "write_report": True}
SQUARES = {"red": (0.1, 0.2, 0.4, 0.7), "blue": (0.55, 0.3, 0.9, 0.8)}
RCNN = {"min_size": 64, "max_size": 96, "box_score_thresh": 0.0, "box_detections_per_img": 5, "pretrained": False,
        "number_of_epochs": 1, "training_batch_size": 2, "validation_batch_size": 2, "log_validation_loss": "Disable",
        "num_workers": 0, "seed": 0, "export_onnx": False, "save_mlflow": False, "write_report": True}
YOLO = {"model_name": "yolov5", "model_size": "small", "img_size": 64, "pretrained": False, "number_of_epochs": 2,
        "training_batch_size": 2, "validation_batch_size": 2, "num_workers": 0, "seed": 0, "export_onnx": False,
        "save_mlflow": False, "write_report": True, "box_score_thresh": 0.01}


def _csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def _doc_screenshot(opened, name: str) -> None:
    """docs/images/NAME: only when asked (VISIONSWEEP_WRITE_DOC_SCREENSHOTS=1), never in a normal run."""
    if os.environ.get("VISIONSWEEP_WRITE_DOC_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(exist_ok=True)
        opened.page.screenshot(path=str(DOCS_IMAGES / name), full_page=True,
                               clip={"x": 0, "y": 0, "width": 1280, "height": 1600})


def _scenes(folder: Path, count: int, *, polygons: bool = False) -> Path:
    """Noisy 80 x 64 scenes with a red and a blue square (as boxes, or as polygons for segmentation)."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        pixels = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
        for name, (x0, y0, x1, y1) in SQUARES.items():
            pixels[int(y0 * 64):int(y1 * 64), int(x0 * 80):int(x1 * 80)] = (255, 0, 0) if name == "red" else (0, 0, 255)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        lines.append({"image_url": f"{i}.png", "label": [
            {"label": name, "isCrowd": 0, "polygon": [[x0, y0, x1, y0, x1, y1, x0, y1]]} if polygons else
            dict(zip(("label", "topX", "topY", "bottomX", "bottomY"), (name, x0, y0, x1, y1)))
            for name, (x0, y0, x1, y1) in SQUARES.items()]})
    return write_lines(lines, folder / "data.jsonl")


def test_a_classification_run_ends_with_a_report_that_opens_in_a_browser(tmp_path):
    data = write_color_dataset(tmp_path / "data", per_class=8)
    with data.open("a") as lines:  # one record the data report skips, and the run report shows why
        lines.write(json.dumps({"image_url": "images/gone.png", "label": "red"}) + "\n")
    # Settings under which the tiny model learns something in four epochs: the figures have shapes.
    settings = {**REPORT, "number_of_epochs": 4, "learning_rate": 0.005, "warmup_cosine_lr_warmup_epochs": 0,
                "training_batch_size": 8}
    result = visionsweep.train("image_classification", data, data, settings=settings, output=tmp_path / "run",
                               progress=False)
    report = result.run_dir / "report.html"
    assert report.is_file()
    with open_report(report, tmp_path / "report.png") as opened:
        assert opened.errors == []
        plots = {p["id"]: p for p in opened.plots()}
        assert set(plots) == {"figure-loss", "figure-primary_metric", "figure-learning_rate",
                              "figure-confusion_matrix", "figure-precision_recall"}
        assert all(p["width"] > 100 and p["height"] > 100 and p["colours"] > 5 for p in plots.values()), plots
        captions = opened.texts(".gallery-image figcaption")
        assert len(captions) == 16  # every validation image (fewer than the gallery's 24)
        scores = [float(caption.split()[0]) for caption in captions]
        assert scores == sorted(scores)  # worst first
        _doc_screenshot(opened, "run-report-classification.png")
        # Sorting the per-class table by a column reorders its rows.
        before = opened.texts("#per-class-table tbody tr td:first-child")
        opened.page.click("#per-class-table thead th:text-is(\"support\")")  # 8, 8, then 16 for the averages
        opened.page.click("#per-class-table thead th:text-is(\"support\")")  # descending
        after = opened.texts("#per-class-table tbody tr td:first-child")
        assert sorted(after) == sorted(before) and after[0].endswith("avg")
        assert "missing file: 1" in opened.page.inner_text("#data-sources")
        skipped = opened.page.locator("details", has_text="skipped records")
        skipped.locator("summary").click()
        assert "images/gone.png" in skipped.inner_text() and "does not exist" in skipped.inner_text()
    assert (tmp_path / "report.png").stat().st_size > 10_000
    # The figures' numbers beside the report are those of the run's files.
    epochs = read_lines(result.run_dir / "metrics.jsonl")
    loss_rows = [row for row in _csv(result.run_dir / "report_data" / "loss.csv")[1:] if row[0] == "training"]
    assert [float(row[2]) for row in loss_rows] == pytest.approx([e["train_loss"] for e in epochs])
    best = json.loads((result.run_dir / "model" / "metrics.json").read_text())["metrics"]
    matrix = _csv(result.run_dir / "report_data" / "confusion_matrix.csv")
    assert [[int(v) for v in row[1:]] for row in matrix[1:]] == best["confusion_matrix"]["matrix"]


def test_visionsweep_report_rebuilds_it_and_survives_missing_validation_images(tmp_path, capsys):
    data = write_color_dataset(tmp_path / "data", per_class=3, multilabel=True)
    run = visionsweep.train("image_classification_multilabel", data, data, settings={**TINY_SETTINGS,
                            "number_of_epochs": 1}, output=tmp_path / "run", progress=False).run_dir
    assert not (run / "report.html").exists()  # write_report false
    assert main(["report", str(run), "--gallery-size", "2"]) == 0
    assert capsys.readouterr().out.strip() == str(run / "report.html")
    with open_report(run / "report.html", tmp_path / "multilabel.png") as opened:
        assert opened.errors == []
        assert len(opened.texts(".gallery-image")) == 2
        assert {p["id"] for p in opened.plots()} >= {"figure-confusion_matrix", "figure-precision_recall"}
    outcomes = _csv(run / "report_data" / "confusion_matrix.csv")
    assert outcomes[0] == ["class", "true positive", "false positive", "false negative", "true negative"]
    assert all(sum(int(v) for v in row[1:]) == 6 for row in outcomes[1:])  # each class: one outcome per image

    shutil.rmtree(tmp_path / "data" / "images")  # the validation images are gone: no gallery, still a report
    assert main(["report", str(run)]) == 0
    with open_report(run / "report.html", tmp_path / "no-images.png") as opened:
        assert opened.errors == []
        assert opened.texts(".gallery-image") == []
        assert "could not be predicted" in opened.page.inner_text("#gallery + p")
        assert {p["id"] for p in opened.plots()} == {"figure-loss", "figure-primary_metric", "figure-learning_rate"}

    capsys.readouterr()
    assert main(["report", str(tmp_path / "data")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["report", str(run), "--score-threshold", "2"]) == 2
    assert "score_threshold: got 2.0; use a number from 0 to 1" in capsys.readouterr().err


@pytest.mark.parametrize("task, model_name", [
    ("image_object_detection", "fasterrcnn_resnet18_fpn"),
    pytest.param("image_instance_segmentation", "maskrcnn_resnet18_fpn", marks=pytest.mark.slow),
])
def test_a_detection_report_draws_the_predictions_it_counts(tmp_path, task, model_name):
    data = _scenes(tmp_path, 4, polygons=task == "image_instance_segmentation")
    run = visionsweep.train(task, data, data, settings={**RCNN, "model_name": model_name}, output=tmp_path / "run",
                            progress=False).run_dir
    with open_report(run / "report.html", tmp_path / "report.png") as opened:
        assert opened.errors == []
        plots = {p["id"]: p for p in opened.plots()}
        expected = {"figure-loss", "figure-primary_metric", "figure-learning_rate", "figure-precision_recall"}
        # Instance segmentation has no confusion matrix, as the reference (spec 5.9).
        assert set(plots) == expected | ({"figure-confusion_matrix"} if task == "image_object_detection" else set())
        assert all(p["width"] > 100 and p["colours"] > 5 for p in plots.values()), plots
        captions = opened.texts(".gallery-image figcaption")
        assert len(captions) == 4
        if task == "image_object_detection":
            _doc_screenshot(opened, "run-report-detection.png")
    # The barely trained model scores every box low: at the report's 0.5 nothing is counted, and the
    # precision/recall curve has its points at the low thresholds, those of the best epoch's metrics.
    assert all("0 found, 0 wrong, 2 missed" in caption for caption in captions)
    best = json.loads((run / "model" / "metrics.json").read_text())["metrics"]
    pooled = [row for row in _csv(run / "report_data" / "precision_recall.csv")[1:] if row[0] == "all classes"]
    expected_points = [(best["recalls_per_score_threshold"][t], p) for t, p in
                       best["precisions_per_score_threshold"].items() if p >= 0]
    assert pooled and [float(v) for row in pooled for v in row[1:]] == pytest.approx(
        [v for point in expected_points for v in point])


def test_a_detection_report_with_classes_never_predicted(tmp_path):
    data = _scenes(tmp_path, 4)
    run = visionsweep.train("image_object_detection", data, data, settings=YOLO, output=tmp_path / "run",
                            progress=False).run_dir
    with open_report(run / "report.html", tmp_path / "detection.png") as opened:
        assert opened.errors == []
        plots = opened.plots()
        assert {p["id"] for p in plots} == {"figure-loss", "figure-primary_metric", "figure-learning_rate",
                                            "figure-confusion_matrix"}
        assert all(p["width"] > 100 and p["colours"] > 5 for p in plots), plots
        captions = opened.texts(".gallery-image figcaption")
        assert len(captions) == 4
        # Two squares per image; after two steps YOLOv5 predicts nothing at all: both missed everywhere,
        # no precision/recall point at any threshold (a sentence instead of a blank figure).
        assert all("0 found" in caption and "2 missed" in caption for caption in captions)
        assert opened.texts("#per-class-table tbody td:first-child") == ["blue", "red"]
        assert "no validation prediction" in opened.page.inner_text("#no-precision-recall")
        assert "no prediction matched any object" in opened.page.inner_text("#figure-confusion_matrix")
    # No prediction overlaps an object: the best epoch has the one matrix keyed -1 (spec 5.8), every
    # object missed, as the gallery says.
    best = json.loads((run / "model" / "metrics.json").read_text())["metrics"]
    assert best["confusion_matrices_per_score_threshold"] == {"-1.0": [[0, 0, 4], [0, 0, 4]]}
    matrix = _csv(run / "report_data" / "confusion_matrix.csv")
    assert matrix == [["true class", "blue", "red", "missed"], ["blue", "0", "0", "4"], ["red", "0", "0", "4"]]


def test_detection_images_are_scored_by_f1_of_their_boxes():
    record = ImageRecord(Path("a.png"), "a.png", objects=(
        ObjectAnnotation("red", (0.1, 0.1, 0.4, 0.4)), ObjectAnnotation("blue", (0.5, 0.5, 0.9, 0.9)),
        ObjectAnnotation("blue", (0.0, 0.6, 0.2, 0.8), is_crowd=True)))

    def box(label, corners, score):
        return {"box": dict(zip(("topX", "topY", "bottomX", "bottomY"), corners)), "label": label, "score": score}

    line = {"filename": "a.png", "boxes": [
        box("red", (0.1, 0.1, 0.4, 0.4), 0.9),     # found
        box("red", (0.5, 0.5, 0.9, 0.9), 0.8),     # right place, wrong class: wrong, and blue is missed
        box("blue", (0.0, 0.6, 0.2, 0.8), 0.7),    # on the crowd object: neither
        box("blue", (0.5, 0.5, 0.9, 0.9), 0.2)]}   # below the threshold: not counted
    scored = score_detection(record, line, ["blue", "red"], 0.5, 0.5)
    assert scored.score == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert scored.summary.startswith("1 found, 1 wrong, 1 missed")
    assert score_detection(record, line, ["blue", "red"], 0.5, 0.1).score == pytest.approx(2 * 2 / (2 * 2 + 1))
    empty = ImageRecord(Path("b.png"), "b.png")
    assert score_detection(empty, {"filename": "b.png", "boxes": []}, ["red"], 0.5, 0.5).score == 1.0


def test_classification_images_are_scored_by_the_truth_they_get():
    line = {"filename": "a.png", "probs": [0.7, 0.2, 0.1], "labels": ["a", "b", "c"]}
    assert score_classification(ImageRecord(Path("a.png"), "a.png", labels=("b",)), line, False).score == 0.2
    multilabel = score_classification(ImageRecord(Path("a.png"), "a.png", labels=("a", "c")), line, True)
    assert multilabel.score == pytest.approx(1 - (0.3 + 0.2 + 0.9) / 3)
    assert multilabel.summary == "true a, c; predicted a (0.70)"


def test_a_report_of_a_run_that_evaluated_nothing(tmp_path):
    """A run folder with its epochs but no evaluated one and no model folder (killed early): a report."""
    data = write_color_dataset(tmp_path / "data", per_class=2)
    run = visionsweep.train("image_classification", data, data, settings={**TINY_SETTINGS, "number_of_epochs": 1},
                            output=tmp_path / "run", progress=False).run_dir
    shutil.rmtree(run / "model")
    lines = read_lines(run / "metrics.jsonl")
    write_lines([{**line, "evaluated": False, "primary_value": None} for line in lines], run / "metrics.jsonl")
    path = write_run_report(run)
    with open_report(path, tmp_path / "empty.png") as opened:
        assert opened.errors == []
        assert "no model folder" in opened.page.inner_text("#gallery + p")
        assert "No per-class metrics" in opened.page.inner_text("#per-class + p")
