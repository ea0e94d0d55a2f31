"""Object-detection labels in Azure JSONL: which objects are dropped, which images are skipped, and why."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from visionsweep.data import read_labeled_data
from visionsweep.data.detection_labels import (
    check_detection_data,
    parse_crowd_flag,
    parse_detection_label,
    parse_object_label,
)
from visionsweep.data.labels import BadLabel, label_parser
from visionsweep.data.records import LabeledData
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError
from visionsweep.tasks import Task


def box(x0, y0, x1, y1, label="can", **extra):
    return {"label": label, "topX": x0, "topY": y0, "bottomX": x1, "bottomY": y1, **extra}


def test_a_valid_box_keeps_its_exact_coordinates_and_class():
    parsed = parse_detection_label([box(0.1, 0.2, 0.35, 0.6, label="carton", isCrowd=0)])
    assert len(parsed.objects) == 1
    obj = parsed.objects[0]
    assert (obj.label, obj.box, obj.is_crowd, obj.polygons) == ("carton", (0.1, 0.2, 0.35, 0.6), False, ())
    assert parsed.dropped == []


def test_the_reference_invalid_boxes_are_dropped_one_sentence_each_and_the_valid_one_kept():
    invalid = [(-0.1, 0, 0.5, 0.5), (0, 0, 0.5, 1.1), (0.8, 0, 0.5, 0.5), (0.5, 0, 0.5, 0.5), (0, 0.8, 0.5, 0.5),
               (0, 0.5, 0.5, 0.5)]
    parsed = parse_detection_label([box(*b) for b in invalid] + [box(0, 0, 0.5, 0.5, label="milk")])
    assert [o.box for o in parsed.objects] == [(0.0, 0.0, 0.5, 0.5)]
    assert len(parsed.dropped) == 6
    assert "not inside the image" in parsed.dropped[0] and "object 1" in parsed.dropped[0]
    assert "not inside the image" in parsed.dropped[1]
    assert "inverted" in parsed.dropped[2] and "inverted" in parsed.dropped[4]
    assert "zero width or height" in parsed.dropped[3] and "zero width or height" in parsed.dropped[5]


def test_boxes_are_never_clipped_even_when_barely_outside():
    parsed = parse_detection_label([box(0, 0, 1.0000001, 0.5), box(0, 0, 1.0, 0.5)])
    assert [o.box for o in parsed.objects] == [(0.0, 0.0, 1.0, 0.5)]
    assert "object 1" in parsed.dropped[0]


def test_an_image_whose_objects_are_all_invalid_is_skipped_with_every_reason():
    with pytest.raises(BadLabel, match=r"all 2 object\(s\) are invalid.*object 1.*zero width.*object 2.*inside"):
        parse_detection_label([box(0.5, 0, 0.5, 0.5), box(0, 0, 2, 0.5)])


def test_an_empty_label_list_is_a_background_image():
    parsed = parse_detection_label([])
    assert parsed.objects == () and parsed.dropped == []


@pytest.mark.parametrize("value", [{"label": "can"}, "can", None, 3])
def test_a_label_that_is_not_a_list_skips_the_image(value):
    with pytest.raises(BadLabel, match="must be a list of objects"):
        parse_detection_label(value)


@pytest.mark.parametrize("item, message", [
    ("can", "object 2 must be a JSON object"),
    ({"topX": 0, "topY": 0, "bottomX": 1, "bottomY": 1}, "no 'label' key"),
    ({"label": "can", "topX": 0, "topY": 0, "bottomX": 1}, "incomplete.*bottomY"),
    ({"label": 1.5, "topX": 0, "topY": 0, "bottomX": 1, "bottomY": 1}, "class float"),
    ({"label": None, "topX": 0, "topY": 0, "bottomX": 1, "bottomY": 1}, "class NoneType"),
    ({"label": " ", "topX": 0, "topY": 0, "bottomX": 1, "bottomY": 1}, "empty class name"),
    ({"label": "can", "topX": "left", "topY": 0, "bottomX": 1, "bottomY": 1}, "topX 'left', which is not a number"),
    ({"label": "can", "topX": True, "topY": 0, "bottomX": 1, "bottomY": 1}, "coordinates must be numbers"),
])
def test_malformed_objects_skip_the_image_with_a_sentence_naming_the_problem(item, message):
    with pytest.raises(BadLabel, match=message):
        parse_detection_label([box(0, 0, 0.5, 0.5), item])


def test_numeric_strings_and_integer_classes_are_accepted():
    parsed = parse_detection_label([{"label": 3, "topX": "0.25", "topY": 0, "bottomX": "0.75", "bottomY": 1}])
    assert parsed.objects[0].label == "3"
    assert parsed.objects[0].box == (0.25, 0.0, 0.75, 1.0)


@pytest.mark.parametrize("value, crowd", [
    (1, True), (1.0, True), (True, True), ("1", True), ("true", True), ("True", True), ("TRUE", True),
    (0, False), (0.0, False), (False, False), ("0", False), ("false", False), ("False", False), (None, False),
])
def test_crowd_flag_spellings(value, crowd):
    assert parse_crowd_flag(value) is crowd
    assert parse_detection_label([box(0, 0, 1, 1, isCrowd=value)]).objects[0].is_crowd is crowd


def test_a_missing_crowd_flag_means_not_crowd():
    assert parse_detection_label([box(0, 0, 1, 1)]).objects[0].is_crowd is False


@pytest.mark.parametrize("value", ["yes", 2, "crowd", [1]])
def test_an_unknown_crowd_value_skips_the_image_instead_of_guessing(value):
    with pytest.raises(BadLabel, match="isCrowd"):
        parse_detection_label([box(0, 0, 1, 1, isCrowd=value)])


def test_a_polygon_gives_the_box_and_box_keys_are_ignored():
    item = {"label": "can", "topX": 0.0, "topY": 0.0, "bottomX": 0.1, "bottomY": 0.1,
            "polygon": [[0.2, 0.3, 0.6, 0.3, 0.6, 0.9], [0.1, 0.5, 0.3, 0.5, 0.2, 0.7]]}
    obj = parse_detection_label([item]).objects[0]
    assert obj.box == (0.1, 0.3, 0.6, 0.9)
    assert len(obj.polygons) == 2


def test_polygon_segments_too_short_or_outside_are_left_out_and_reported():
    item = {"label": "can", "polygon": [[0.2, 0.3, 0.6, 0.3], [0.2, 0.3, 1.2, 0.3, 0.6, 0.9], [0.1, 0.1, 0.4, 0.1, 0.4, 0.5]]}
    parsed = parse_detection_label([item])
    assert parsed.objects[0].polygons == ((0.1, 0.1, 0.4, 0.1, 0.4, 0.5),)
    assert parsed.objects[0].box == (0.1, 0.1, 0.4, 0.5)
    assert len(parsed.dropped) == 2
    assert "segment 1 has 2 point(s)" in parsed.dropped[0] and "segment 2 has a point outside" in parsed.dropped[1]


@pytest.mark.parametrize("polygon", [[[0.5, 0.6, 0.5, 0.7, 0.5, 0.8]], [[0.5, 0.5, 0.5, 0.5, 0.5, 0.5]], [], [[]], None])
def test_degenerate_or_empty_polygons_drop_the_object(polygon):
    parsed = parse_detection_label([box(0, 0, 1, 1), {"label": "can", "polygon": polygon}])
    assert len(parsed.objects) == 1 and len(parsed.dropped) >= 1


@pytest.mark.parametrize("polygon, message", [([[0.1, 0.2, 0.3]], "equal numbers"), ([{"x": 1}], "segment 1 is dict"),
                                               ("0.1 0.2", "polygon of type str")])
def test_malformed_polygons_skip_the_image(polygon, message):
    with pytest.raises(BadLabel, match=message):
        parse_detection_label([{"label": "can", "polygon": polygon}])


def test_segmentation_drops_box_only_objects():
    parsed = parse_object_label([box(0, 0, 1, 1), {"label": "can", "polygon": [[0.1, 0.1, 0.4, 0.1, 0.4, 0.5]]}],
                                require_polygon=True)
    assert len(parsed.objects) == 1 and "needs one" in parsed.dropped[0]


def test_importing_the_module_registers_the_detection_parser():
    assert label_parser(Task.OBJECT_DETECTION) is parse_detection_label


def _image(path: Path, size=(40, 30)) -> None:
    Image.new("RGB", size, (120, 30, 200)).save(path)


def test_reader_keeps_background_images_skips_bad_ones_and_reports_dropped_objects(tmp_path):
    for name in ("a", "b", "c", "d", "e"):
        _image(tmp_path / f"{name}.png")
    lines = [
        {"image_url": "a.png", "label": [box(0.1, 0.1, 0.5, 0.5), box(0.6, 0.6, 0.6, 0.9)]},  # one object dropped
        {"image_url": "b.png", "label": []},  # background, kept
        {"image_url": "c.png", "label": [box(0.1, 0.1, 1.5, 0.5)]},  # every object invalid: skipped
        {"image_url": "d.png", "label": {"label": "can"}},  # not a list: skipped
        {"image_url": "e.png", "label": [box(0.2, 0.2, 0.4, 0.4, label="milk", isCrowd="true")]},
    ]
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    data = read_labeled_data(jsonl, Task.OBJECT_DETECTION)
    assert [r.image_url for r in data.records] == ["a.png", "b.png", "e.png"]
    assert data.records[1].objects == ()
    assert data.records[2].objects[0].is_crowd is True
    report = data.report.to_dict()
    assert report["records_read"] == 5 and report["kept"] == 3
    assert report["skipped_by_reason"] == {"bad label": 2}
    assert [p["location"] for p in report["skipped_records"]] == ["train.jsonl:3", "train.jsonl:4"]
    assert report["dropped_annotations"] == 1
    assert report["dropped_annotation_details"][0]["location"] == "train.jsonl:1"
    assert "zero width or height" in report["dropped_annotation_details"][0]["detail"]
    stats = check_detection_data(data)
    assert (stats.images, stats.background_images, stats.objects, stats.crowd_objects) == (3, 1, 2, 1)


def test_data_with_only_background_images_has_no_objects_to_learn(tmp_path):
    _image(tmp_path / "a.png")
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text(json.dumps({"image_url": "a.png", "label": []}) + "\n")
    data = read_labeled_data(jsonl, Task.OBJECT_DETECTION)
    with pytest.raises(DataError, match=r"no objects in .*train.jsonl.*all 1 image\(s\) are background"):
        check_detection_data(data)


def test_data_without_any_usable_image_is_an_error_that_shows_the_report():
    report = DataReport(source="val.jsonl", records_read=2)
    report.skip("val.jsonl:1", "bad label", "all 1 object(s) are invalid")
    with pytest.raises(DataError, match=r"no usable image in val.jsonl(.|\n)*bad label"):
        check_detection_data(LabeledData([], report))


def test_fridge_detection_set_reads_completely(datasets):
    folder = datasets / "odFridgeObjects_FairMOTformat"
    train = read_labeled_data(folder / "od_train.jsonl", Task.OBJECT_DETECTION)
    val = read_labeled_data(folder / "mltable_od_val", Task.OBJECT_DETECTION)
    assert (len(train), len(val)) == (100, 28)
    assert not train.report.skipped and not train.report.dropped_annotations
    stats = check_detection_data(train), check_detection_data(val)
    # README: 336 boxes over the 128 images, at most one object of a class per image
    assert stats[0].objects + stats[1].objects == 336
    assert train.classes == ["can", "carton", "milk_bottle", "water_bottle"]
    first = train.records[0]
    assert first.objects[0].label == "carton"
    assert first.objects[0].box == pytest.approx((0.200405, 0.25976, 0.466935, 0.78228))
    assert (first.width, first.height) == (499, 666)
