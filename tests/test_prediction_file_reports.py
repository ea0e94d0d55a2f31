"""Scoring a predictions file: the labelled data's report and the predictions file's report each add up
(records read = kept + skipped), every line and every labelled image is accounted for once, in the
report of its own source, and both keep exactly the images that were scored."""
from __future__ import annotations

import json
import logging

import pytest
from PIL import Image

from visionsweep import api
from visionsweep.cli import main
from visionsweep.errors import DataError

TASK = "image_classification"
LABELS = ["cat", "dog"]


def _labelled(folder):
    """Six labelled images; e.png is listed but missing, f.png has a class the predictions do not know."""
    names = {"a.png": "cat", "b.png": "dog", "c.png": "cat", "d.png": "dog", "e.png": "cat", "f.png": "bird"}
    for name in names:
        if name != "e.png":
            Image.new("RGB", (20, 20)).save(folder / name)
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps({"image_url": name, "label": label}) + "\n" for name, label in names.items()))
    return data


def _line(filename, probs, labels=LABELS):
    return (json.dumps({"filename": filename, "probs": probs, "labels": labels}) + "\n").encode()


def _predictions(folder):
    lines = [
        _line("a.png", [0.9, 0.1]),                                 # 1 scored
        b'{"filename": "b.png", "probs": [\n',                      # 2 not JSON
        b'{"filename": "caf\xe9.png", "probs": [0.5, 0.5]}\n',      # 3 not UTF-8 (a Latin-1 e acute)
        _line("zebra.png", [0.5, 0.5]),                             # 4 an image the labelled data does not list
        _line("a.png", [0.1, 0.9]),                                 # 5 a second line for a.png (wrong, unused)
        _line("b.png", [0.2, 0.8]),                                 # 6 scored
        _line("c.png", [0.7]),                                      # 7 one number for two labels
        _line("e.png", [0.6, 0.4]),                                 # 8 a labelled record skipped (missing file)
        _line(str((folder / "b.png").resolve()), [0.8, 0.2]),       # 9 b.png again, by its resolved path
        _line("f.png", [0.5, 0.5]),                                 # 10 a class (bird) not in the labels list
    ]                                                               # d.png: no line
    path = folder / "predictions.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def test_both_reports_add_up_and_name_their_source(tmp_path):
    data, predictions = _labelled(tmp_path), _predictions(tmp_path)
    result = api.evaluate(data=data, task=TASK, predictions=predictions)
    labelled, lines = result.report, result.predictions_report
    assert (labelled.source, lines.source) == (str(data), str(predictions))

    # The labelled data: one record per labelled image.
    assert {p.location: (p.reason, p.image_url) for p in labelled.skipped} == {
        "data.jsonl:3": ("unusable prediction", "c.png"),
        "data.jsonl:4": ("no prediction", "d.png"),
        "data.jsonl:5": ("missing file", "e.png"),
        "data.jsonl:6": ("bad label", "f.png"),
    }
    assert (labelled.records_read, labelled.kept, len(labelled.skipped)) == (6, 2, 4)

    # The predictions file: one record per line.
    assert {p.location: p.reason for p in lines.skipped} == {
        "predictions.jsonl:2": "malformed line",
        "predictions.jsonl:3": "malformed line",
        "predictions.jsonl:4": "no label",
        "predictions.jsonl:5": "duplicate image",
        "predictions.jsonl:7": "malformed line",
        "predictions.jsonl:8": "image not scored",
        "predictions.jsonl:9": "duplicate image",
        "predictions.jsonl:10": "image not scored",
    }
    assert (lines.records_read, lines.kept, len(lines.skipped)) == (10, 2, 8)

    details = {p.location: p.detail for p in lines.skipped + labelled.skipped}
    assert "not UTF-8 text (byte 0xe9" in details["predictions.jsonl:3"]
    assert "the first, predictions.jsonl:1, is used" in details["predictions.jsonl:5"]
    assert "the first, predictions.jsonl:6, is used" in details["predictions.jsonl:9"]
    assert "'probs' must hold 2 finite numbers" in details["predictions.jsonl:7"]
    assert details["data.jsonl:3"].startswith("its prediction, line predictions.jsonl:7: 'probs' must hold 2")
    assert "data.jsonl:5 is skipped (missing file)" in details["predictions.jsonl:8"]
    assert "data.jsonl:6 is skipped (bad label)" in details["predictions.jsonl:10"]
    assert "class bird is not one of the classes of the predictions' 'labels' (cat, dog)" in details["data.jsonl:6"]
    assert "left out of the metrics, not scored as a miss" in details["data.jsonl:4"]

    # Only a.png (line 1, not its duplicate) and b.png are scored, both right: d.png, which has no line,
    # is not counted as a wrong answer, and a.png's second line (wrong) is not used.
    assert result.metrics["accuracy"] == 1.0
    metrics, report = result  # unpacks as before
    assert metrics is result.metrics and report is labelled


def test_the_command_logs_and_writes_both_reports(tmp_path, caplog):
    data, predictions = _labelled(tmp_path), _predictions(tmp_path)
    output = tmp_path / "evaluation.json"
    caplog.set_level(logging.INFO, logger="visionsweep")
    assert main(["evaluate", "--task", TASK, "--predictions", str(predictions), "--data", str(data),
                 "--output", str(output)]) == 0
    assert f"{data}: 6 records read, 2 images kept, 4 skipped" in caplog.text
    assert f"{predictions}: 10 records read, 2 images kept, 8 skipped" in caplog.text
    written = json.loads(output.read_text())
    for key, read in (("data_report", 6), ("predictions_report", 10)):
        assert written[key]["records_read"] == read == written[key]["kept"] + written[key]["skipped"]
    assert written["predictions_report"]["skipped_by_reason"] == {
        "malformed line": 3, "no label": 1, "duplicate image": 2, "image not scored": 2}


def test_ignore_data_errors_false_makes_any_unscored_record_an_error(tmp_path):
    data = tmp_path / "data.jsonl"
    for name in ("a.png", "b.png"):
        Image.new("RGB", (20, 20)).save(tmp_path / name)
    data.write_text("".join(json.dumps({"image_url": n, "label": label}) + "\n"
                            for n, label in (("a.png", "cat"), ("b.png", "dog"))))
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_bytes(_line("a.png", [0.9, 0.1]) + _line("b.png", [0.2, 0.8]))
    assert api.evaluate(data=data, task=TASK, predictions=predictions,
                        settings={"ignore_data_errors": False}).metrics["accuracy"] == 1.0
    predictions.write_bytes(_line("a.png", [0.9, 0.1]))  # b.png has no prediction
    with pytest.raises(DataError, match="1 record.s. could not be scored and ignore_data_errors is false") as error:
        api.evaluate(data=data, task=TASK, predictions=predictions, settings={"ignore_data_errors": False})
    assert "no prediction" in str(error.value)
    assert api.evaluate(data=data, task=TASK, predictions=predictions).metrics["accuracy"] == 1.0  # the default


def test_a_line_whose_labels_differ_is_malformed_not_fatal(tmp_path):
    data = tmp_path / "data.jsonl"
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (20, 20)).save(tmp_path / name)
    data.write_text("".join(json.dumps({"image_url": n, "label": label}) + "\n"
                            for n, label in (("a.png", "cat"), ("b.png", "dog"), ("c.png", "cat"))))
    predictions = tmp_path / "predictions.jsonl"
    # The first line's list is the odd one out: the list most lines give is the class list.
    predictions.write_bytes(_line("a.png", [0.9, 0.1], ["dog", "cat"]) + _line("b.png", [0.2, 0.8])
                            + _line("c.png", [0.6, 0.4]))
    result = api.evaluate(data=data, task=TASK, predictions=predictions)
    (problem,) = result.predictions_report.skipped
    assert (problem.location, problem.reason) == ("predictions.jsonl:1", "malformed line")
    assert "its 'labels' list differs from the one most lines give (cat, dog)" in problem.detail
    assert [p.reason for p in result.report.skipped] == ["unusable prediction"]
    assert result.metrics["accuracy"] == 1.0 and result.report.kept == result.predictions_report.kept == 2


def test_a_detection_image_without_a_line_is_reported_not_counted_as_missed_objects(tmp_path):
    box = {"topX": 0.1, "topY": 0.1, "bottomX": 0.6, "bottomY": 0.6}
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 40)).save(tmp_path / name)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"image_url": n, "label": [{"label": "can", **box}]}) + "\n"
                            for n in ("a.png", "b.png")))
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"filename": "a.png", "boxes": [{"box": box, "label": "can", "score": 0.9}]})
                           + "\n")
    result = api.evaluate(data=data, task="image_object_detection", predictions=predictions)
    # b.png's object would halve the recall if its missing line were read as "nothing found"
    assert result.metrics["recall"] == pytest.approx(1.0) == result.metrics["mean_average_precision"]
    assert [(p.location, p.reason) for p in result.report.skipped] == [("data.jsonl:2", "no prediction")]
    assert (result.report.records_read, result.report.kept) == (2, 1)
    assert (result.predictions_report.records_read, result.predictions_report.kept) == (1, 1)
