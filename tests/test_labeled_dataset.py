"""The reference's labelled-dataset file (predict --labeled-dataset): its lines from prediction lines, and the
command end to end with a tiny classifier. The detection and segmentation files are checked on trained
R-CNN models in test_rcnn_inference.py."""
from __future__ import annotations

import json
import logging

import pytest

import visionsweep
from conftest import TINY_SETTINGS, write_color_dataset
from jsonl_helpers import check_labeled_dataset, read_lines
from visionsweep.cli import main
from visionsweep.errors import SettingsError
from visionsweep.inference.labeled_dataset import labeled_dataset_line


def test_a_segmentation_line_in_the_reference_field_order():
    prediction = {"filename": "images/my%20cat.jpg", "boxes": [
        {"box": {"topX": 0.1, "topY": 0.2, "bottomX": 0.5, "bottomY": 0.75}, "label": "cat", "score": 0.93,
         "polygon": [[0.1, 0.2, 0.5, 0.2, 0.5, 0.75]]},
        {"box": {"topX": 0.6, "topY": 0.0, "bottomX": 1.0, "bottomY": 0.4}, "label": "dog", "score": 0.41,
         "polygon": []}]}
    line = labeled_dataset_line(prediction)
    # the exact JSON text, so that key order is checked too
    assert json.dumps(line) == (
        '{"image_url": "AmlDatastore://images/my cat.jpg", "label_confidence": [0.93, 0.41], "label": ['
        '{"topX": 0.1, "topY": 0.2, "bottomX": 0.5, "bottomY": 0.75, "label": "cat", '
        '"polygon": [[0.1, 0.2, 0.5, 0.2, 0.5, 0.75]]}, '
        '{"topX": 0.6, "topY": 0.0, "bottomX": 1.0, "bottomY": 0.4, "label": "dog", "polygon": []}]}')


def test_detection_and_classification_lines():
    detection = {"filename": "a.jpg", "boxes": [
        {"box": {"topX": 0.25, "topY": 0.5, "bottomX": 0.75, "bottomY": 1.0}, "label": "can", "score": 0.5}]}
    assert labeled_dataset_line(detection) == {
        "image_url": "AmlDatastore://a.jpg", "label_confidence": [0.5],
        "label": [{"topX": 0.25, "topY": 0.5, "bottomX": 0.75, "bottomY": 1.0, "label": "can"}]}
    assert labeled_dataset_line({"filename": "b.png", "boxes": []}) == {
        "image_url": "AmlDatastore://b.png", "label_confidence": [], "label": []}
    # classification: every class's probability and the full class list, as the predictions line
    classification = {"filename": "dir/c%2Bd.png", "probs": [0.125, 0.875], "labels": ["blue", "red"]}
    assert json.dumps(labeled_dataset_line(classification)) == (
        '{"image_url": "AmlDatastore://dir/c+d.png", "label_confidence": [0.125, 0.875], "label": ["blue", "red"]}')


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labeled")
    data = write_color_dataset(folder, per_class=3, size=16)
    result = visionsweep.train("image_classification", data, data, output=folder / "run", progress=False,
                               settings={**TINY_SETTINGS, "number_of_epochs": 1})
    return result.run_dir, data


def test_the_command_writes_the_labelled_dataset_of_its_predictions(classifier, tmp_path, caplog):
    run, data = classifier
    caplog.set_level(logging.INFO, logger="visionsweep")
    predictions, labeled = tmp_path / "predictions.jsonl", tmp_path / "outputs" / "labeled_dataset.json"
    assert main(["predict", str(run), str(data), "--output", str(predictions), "--labeled-dataset", str(labeled)]) == 0
    assert f"wrote the labelled dataset of those predictions to {labeled}" in caplog.text
    lines = check_labeled_dataset(predictions, labeled)
    assert [line["image_url"] for line in lines] == [f"AmlDatastore://{line['image_url']}" for line in read_lines(data)]
    assert all(line["label"] == ["blue", "red"] and sum(line["label_confidence"]) == pytest.approx(1)
               for line in lines)
    # without the option, no such file
    assert main(["predict", str(run), str(data), "--output", str(tmp_path / "alone.jsonl")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.jsonl", "outputs", "predictions.jsonl"]


def test_a_labelled_dataset_path_that_cannot_be_written_is_named(classifier, tmp_path, capsys):
    run, data = classifier
    predictions = tmp_path / "predictions.jsonl"
    with pytest.raises(SettingsError, match="labeled_dataset: .* is also the predictions file"):
        visionsweep.predict(run, data, output=predictions, labeled_dataset=predictions)
    assert main(["predict", str(run), str(data), "--output", str(predictions), "--labeled-dataset", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"labeled_dataset: {tmp_path} is a folder; give a file path, such as {tmp_path / 'labeled_dataset.json'}" \
        in err and "Traceback" not in err
    assert not predictions.exists()
