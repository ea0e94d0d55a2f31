"""Reading classification data: JSONL and MLTable, bad records, importers, the data report, splits."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionsweep.data import convert, read_labeled_data, split_train_validation
from visionsweep.data.records import ImageRecord
from visionsweep.errors import DataError
from visionsweep.tasks import Task


def _image(path: Path, color=(200, 10, 10), size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A multi-class JSONL file with one record of every kind of problem."""
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "b.jpg")
    _image(tmp_path / "images" / "c.png")
    (tmp_path / "images" / "corrupt.jpg").write_bytes(b"this is not a jpeg at all")
    return _jsonl(tmp_path / "train.jsonl", [
        {"image_url": "images/a.png", "label": "cat"},
        {"image_url": "images/b.jpg", "label": "dog"},
        {"image_url": "images/c.png", "label": 3},                       # integer class ids are classes
        {"image_url": "images/missing.png", "label": "cat"},             # missing file
        {"image_url": "images/corrupt.jpg", "label": "dog"},             # unreadable image
        '{"image_url": "images/a.png", "label": ',                       # malformed JSON
        {"image_url": "images/b.jpg", "label": ["dog"]},                 # list label in multi-class
        {"image_url": "images/b.jpg", "label": ""},                      # empty label
        {"label": "cat"},                                                # no image_url
        {"image_url": "images/a.png"},                                   # no label
        {"image_url": "azureml://datastores/blob/paths/x.png", "label": "cat"},  # remote URL
        {"image_url": "images/a.png", "label": "cat"},                   # duplicate image
        "",                                                              # blank lines are not records
    ])


def test_report_counts_every_skipped_record(messy: Path):
    data = read_labeled_data(messy, Task.CLASSIFICATION)
    assert [r.image_path.name for r in data.records] == ["a.png", "b.jpg", "c.png"]
    assert data.classes == ["3", "cat", "dog"]
    report = data.report
    assert (report.records_read, report.kept, len(report.skipped)) == (12, 3, 9)
    assert report.skipped_by_reason() == {
        "missing file": 1, "unreadable image": 1, "malformed line": 1, "bad label": 3,
        "missing image_url": 1, "unsupported image_url": 1, "duplicate image": 1}
    by_line = {p.location: p for p in report.skipped}
    assert "does not exist" in by_line["train.jsonl:4"].detail
    assert "cannot be decoded" in by_line["train.jsonl:5"].detail
    assert "must be a string or an integer" in by_line["train.jsonl:7"].detail
    assert "empty string" in by_line["train.jsonl:8"].detail
    assert "already listed at train.jsonl:1" in by_line["train.jsonl:12"].detail
    assert report.class_counts == {"cat": 1, "dog": 1, "3": 1}
    assert data.records[0].width == 12 and data.records[0].height == 10
    assert "9 skipped" in report.summary()


def test_ignore_data_errors_false_is_a_hard_error_listing_problems(messy: Path):
    with pytest.raises(DataError) as caught:
        read_labeled_data(messy, Task.CLASSIFICATION, ignore_data_errors=False)
    text = str(caught.value)
    assert "9 bad record(s)" in text and "train.jsonl:4" in text and "ignore_data_errors" in text


def test_no_usable_image_is_an_error(tmp_path: Path):
    path = _jsonl(tmp_path / "d.jsonl", [{"image_url": "nope.png", "label": "a"}])
    with pytest.raises(DataError, match="no usable image"):
        read_labeled_data(path, Task.CLASSIFICATION)


def test_multilabel_labels(tmp_path: Path):
    _image(tmp_path / "x.png")
    _image(tmp_path / "y.png")
    _image(tmp_path / "z.png")
    path = _jsonl(tmp_path / "ml.jsonl", [
        {"image_url": "x.png", "label": ["dog", "cat", "dog"]},
        {"image_url": "y.png", "label": []},                  # none of the classes: kept
        {"image_url": "z.png", "label": "cat"},               # a string is not a list
        {"image_url": "x.png", "label": ["cat", {"a": 1}]},   # mixed types
    ])
    data = read_labeled_data(path, Task.MULTILABEL)
    assert [r.labels for r in data.records] == [("cat", "dog"), ()]
    assert data.report.skipped_by_reason() == {"bad label": 2}


def test_detection_labels_are_rejected_for_classification(datasets: Path):
    with pytest.raises(DataError, match="is this object-detection data"):
        read_labeled_data(datasets / "odFridgeObjects_FairMOTformat" / "od_val.jsonl", Task.MULTILABEL)


def test_relative_paths_resolve_against_the_jsonl_folder(tmp_path: Path, monkeypatch):
    _image(tmp_path / "data" / "imgs" / "p.png")
    absolute = _image(tmp_path / "elsewhere" / "q.png")
    path = _jsonl(tmp_path / "data" / "d.jsonl", [
        {"image_url": "imgs/p.png", "label": "a"},
        {"image_url": str(absolute), "label": "b"},
        {"image_url": absolute.as_uri(), "label": "c"},
    ])
    monkeypatch.chdir(tmp_path / "elsewhere")  # the working directory must not matter
    data = read_labeled_data(path, Task.CLASSIFICATION)
    assert data.records[0].image_path == tmp_path / "data" / "imgs" / "p.png"
    assert len(data.records) == 2 and data.report.skipped_by_reason() == {"duplicate image": 1}


def test_mltable_folder(tmp_path: Path):
    _image(tmp_path / "imgs" / "p.png")
    _jsonl(tmp_path / "train.jsonl", [{"image_url": "imgs/p.png", "label": "a"}])
    table = tmp_path / "train-mltable"
    table.mkdir()
    (table / "MLTable").write_text("paths:\n  - file: ../train.jsonl\ntransformations:\n  - read_json_lines:\n"
                                   "      encoding: utf8\n      invalid_lines: error\n")
    data = read_labeled_data(table, Task.CLASSIFICATION)
    assert [r.image_path for r in data.records] == [tmp_path / "imgs" / "p.png"]
    (table / "MLTable").write_text("paths:\n  - file: ../train.jsonl\ntransformations:\n  - read_delimited: {}\n")
    with pytest.raises(DataError, match="read_json_lines"):
        read_labeled_data(table, Task.CLASSIFICATION)
    (table / "MLTable").write_text("paths:\n  - file: ../other.jsonl\ntransformations:\n  - read_json_lines: {}\n")
    with pytest.raises(DataError, match="does not exist"):
        read_labeled_data(table, Task.CLASSIFICATION)


def test_shared_fridge_mltable(datasets: Path):
    data = read_labeled_data(datasets / "fridgeObjects_cls" / "mltable_cls_train", Task.CLASSIFICATION)
    assert len(data.records) == 104 and data.classes == ["can", "carton", "milk_bottle", "water_bottle"]
    assert data.report.class_counts == {"can": 24, "carton": 23, "milk_bottle": 30, "water_bottle": 27}


def test_class_folder_import(tmp_path: Path):
    root = tmp_path / "tree"
    _image(root / "cat" / "1.png")
    _image(root / "cat" / "nested" / "2.jpg")
    _image(root / "dog" / "3.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "stray.png").write_bytes(b"")
    result = convert("folder", root, tmp_path / "out" / "data.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "out" / "data.jsonl").read_text().splitlines()]
    assert [(Path(line["image_url"]).name, line["label"]) for line in lines] == [
        ("1.png", "cat"), ("2.jpg", "cat"), ("3.png", "dog")]
    assert result.report.skipped_by_reason() == {"bad label": 1, "unreadable image": 1}
    data = read_labeled_data(tmp_path / "out" / "data.jsonl", Task.CLASSIFICATION)  # written paths resolve
    assert len(data.records) == 3


def test_csv_import(tmp_path: Path):
    _image(tmp_path / "img" / "1.png")
    _image(tmp_path / "img" / "2.png")
    (tmp_path / "labels.csv").write_text("filename,labels\nimg/1.png,can carton\nimg/2.png,milk\nimg/3.png\n")
    result = convert("csv", tmp_path / "labels.csv", tmp_path / "ml.jsonl", multilabel=True)
    assert [r.labels for r in result.records] == [("can", "carton"), ("milk",)]
    assert result.report.skipped_by_reason() == {"malformed line": 1}
    data = read_labeled_data(tmp_path / "ml.jsonl", Task.MULTILABEL)
    assert [r.labels for r in data.records] == [("can", "carton"), ("milk",)]


def _records(counts: dict[str, int]) -> list[ImageRecord]:
    return [ImageRecord(Path(f"{label}{i}.png"), f"{label}{i}.png", labels=(label,))
            for label, n in counts.items() for i in range(n)]


def test_split_is_stratified_and_seeded():
    records = _records({"a": 50, "b": 30, "c": 10, "d": 1})
    train, validation = split_train_validation(records, 0.2, seed=3)
    assert Counter(r.labels[0] for r in validation) == {"a": 10, "b": 6, "c": 2}
    assert len(train) + len(validation) == len(records)
    assert not {r.image_url for r in train} & {r.image_url for r in validation}
    again, _ = split_train_validation(records, 0.2, seed=3)
    other, _ = split_train_validation(records, 0.2, seed=4)
    assert [r.image_url for r in again] == [r.image_url for r in train]
    assert [r.image_url for r in other] != [r.image_url for r in train]


def test_multilabel_split_stratifies_by_rarest_label():
    records = ([ImageRecord(Path(f"x{i}"), f"x{i}", labels=("common", "rare")) for i in range(10)]
               + [ImageRecord(Path(f"y{i}"), f"y{i}", labels=("common",)) for i in range(40)])
    _, validation = split_train_validation(records, 0.2, seed=0)
    rare = sum("rare" in r.labels for r in validation)
    assert rare == 2 and len(validation) == 10


def test_split_fractions_over_many_seeds_are_unbiased():
    records = _records({"a": 7, "b": 13})
    sizes = [len(split_train_validation(records, 0.3, seed=s)[1]) for s in range(20)]
    assert set(sizes) == {round(0.3 * 7) + round(0.3 * 13)}
    picks = np.zeros(20)
    for s in range(200):
        for r in split_train_validation(records, 0.3, seed=s)[1]:
            picks[records.index(r)] += 1
    # every image is held out about 30% of the time
    assert picks.min() > 200 * 0.3 * 0.5 and picks.max() < 200 * 0.3 * 1.6
