"""Detection importers (Pascal VOC, YOLO, COCO) into records and JSONL, and the COCO exporter."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from pycocotools.coco import COCO

from visionsweep.data import convert, read_labeled_data
from visionsweep.data import detection_labels  # noqa: F401  (registers the detection label parser)
from visionsweep.data.detection_formats.coco import import_coco
from visionsweep.data.detection_formats.coco_export import export_coco
from visionsweep.data.detection_formats.voc import import_voc
from visionsweep.data.detection_formats.yolo import import_yolo
from visionsweep.data.importers import importer_names
from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.errors import DataError
from visionsweep.tasks import Task


def _image(path: Path, size=(200, 100)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 90)).save(path)
    return path


def _voc_xml(path: Path, filename: str, size: tuple[int, int], objects: list[tuple]) -> None:
    parts = [f"<annotation><filename>{filename}</filename><path>/elsewhere/{filename}</path>",
             f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
    for name, x0, y0, x1, y1, *difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{difficult[0] if difficult else 0}</difficult>"
                     f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts) + "</annotation>")


def test_the_three_formats_are_registered():
    assert {"voc", "yolo", "coco"} <= set(importer_names())


# --- Pascal VOC ---------------------------------------------------------------------------------------


def test_bccd_imports_with_its_two_zero_size_boxes_dropped(datasets, tmp_path):
    result = import_voc(datasets / "BCCD")
    assert result.task is Task.OBJECT_DETECTION
    assert len(result.records) == 364 and not result.report.skipped
    assert sum(len(r.objects) for r in result.records) == 4888 - 2
    assert result.report.class_counts == {"RBC": 4155 - 2, "WBC": 372, "Platelets": 361}
    dropped = result.report.dropped_annotations
    assert [(p.location, p.image_url) for p in dropped] == [("BloodImage_00338.xml", "BloodImage_00338.jpg"),
                                                            ("BloodImage_00343.xml", "BloodImage_00343.jpg")]
    assert "[504, 337, 504, 337]" in dropped[0].detail and "zero width or height" in dropped[0].detail
    assert "[181, 329, 181, 329]" in dropped[1].detail
    # BloodImage_00338.xml, first object: RBC 453,81,555,182 in a 640x480 image
    record = next(r for r in result.records if r.image_path.name == "BloodImage_00338.jpg")
    assert record.objects[0] == ObjectAnnotation("RBC", (453 / 640, 81 / 480, 555 / 640, 182 / 480))
    assert (record.width, record.height) == (640, 480)


def test_bccd_converts_to_jsonl_that_reads_back_identically(datasets, tmp_path):
    result = convert("voc", datasets / "BCCD", tmp_path / "bccd.jsonl", image_set="train")
    assert len(result.records) == 205  # ImageSets/Main/train.txt
    data = read_labeled_data(tmp_path / "bccd.jsonl", Task.OBJECT_DETECTION)
    assert len(data.records) == 205 and not data.report.skipped and not data.report.dropped_annotations
    assert [r.objects for r in data.records] == [r.objects for r in result.records]
    first = json.loads((tmp_path / "bccd.jsonl").read_text().splitlines()[0])
    assert set(first["label"][0]) == {"label", "topX", "topY", "bottomX", "bottomY", "isCrowd"}


def test_voc_rules_for_boxes_images_and_sizes(tmp_path):
    root = tmp_path / "voc"
    for name in ("ok", "allbad", "mismatch", "orphan"):
        _image(root / "JPEGImages" / f"{name}.jpg")
    _voc_xml(root / "Annotations" / "ok.xml", "ok.jpg", (200, 100), [
        ("cat", 10, 20, 110, 60),
        ("dog", -0.5, 0, 200.6, 100, 1),   # under a pixel outside: clipped
        ("dog", 150, 50, 202, 90),         # two pixels outside: dropped
        ("cat", 120, 50, 100, 90),         # inverted: dropped
        ("cat", "a", 1, 2, 3),             # not numbers: dropped
    ])
    _voc_xml(root / "Annotations" / "allbad.xml", "allbad.jpg", (200, 100), [("cat", 5, 5, 5, 9)])
    _voc_xml(root / "Annotations" / "mismatch.xml", "mismatch.jpg", (100, 200), [("cat", 5, 5, 50, 90)])
    _voc_xml(root / "Annotations" / "missing.xml", "missing.jpg", (200, 100), [("cat", 5, 5, 50, 90)])
    _voc_xml(root / "Annotations" / "empty.xml", "ok.jpg", (200, 100), [])
    result = import_voc(root, difficult_as_crowd=True)
    kept = {r.location: r for r in result.records}
    assert set(kept) == {"ok.xml", "empty.xml"}
    assert kept["empty.xml"].objects == ()  # no <object>: a background image
    objects = kept["ok.xml"].objects
    assert objects == (ObjectAnnotation("cat", (0.05, 0.2, 0.55, 0.6)),
                       ObjectAnnotation("dog", (0.0, 0.0, 1.0, 1.0), is_crowd=True))
    details = [(p.location, p.detail) for p in result.report.dropped_annotations]  # files in name order
    assert [location for location, _ in details] == ["allbad.xml", "ok.xml", "ok.xml", "ok.xml"]
    assert "object 1 ('cat'): pixel box [5, 5, 5, 9] in a 200x100 image has zero width" in details[0][1]
    assert "object 3" in details[1][1] and "sticks out of the image" in details[1][1]
    assert "object 4" in details[2][1] and "inverted" in details[2][1]
    assert "object 5" in details[3][1] and "no numeric" in details[3][1]
    assert result.report.skipped_by_reason() == {"no valid object": 1, "image size mismatch": 1, "missing file": 1,
                                                 "image without annotation file": 1}
    skipped = {p.location: p.detail for p in result.report.skipped}
    assert "declares 100x200 but the image is 200x100" in skipped["mismatch.xml"]
    assert "orphan.jpg" in skipped


def test_voc_normalises_by_the_declared_size_when_images_were_resized(tmp_path):
    _image(tmp_path / "a.jpg", size=(100, 50))  # labelled at 200x100, shrunk afterwards
    _voc_xml(tmp_path / "a.xml", "a.jpg", (200, 100), [("cat", 10, 20, 110, 60)])
    (record,) = import_voc(tmp_path).records
    assert record.objects[0].box == (0.05, 0.2, 0.55, 0.6)


def test_voc_without_xml_files_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no Pascal VOC XML files"):
        import_voc(tmp_path)


# --- YOLO ---------------------------------------------------------------------------------------------


def test_aerial_cars_import_with_names_from_the_names_file(datasets, tmp_path):
    result = import_yolo(datasets / "aerial-cars")
    assert len(result.records) == 49 and not result.report.skipped and not result.report.dropped_annotations
    assert result.report.class_counts == {"car": 722, "bus": 68, "minibus": 60, "truck": 5}
    record = next(r for r in result.records if r.image_path.name == "DJI-00760-00001.jpg")
    assert (record.width, record.height) == (1920, 1080)
    # first line: 0 0.429166666667 0.461574074074 0.0145833333333 0.0675925925926
    cx, cy, w, h = 0.429166666667, 0.461574074074, 0.0145833333333, 0.0675925925926
    assert record.objects[0].label == "car"
    assert record.objects[0].box == pytest.approx((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), abs=1e-12)
    converted = convert("yolo", datasets / "aerial-cars", tmp_path / "cars.jsonl")
    data = read_labeled_data(tmp_path / "cars.jsonl", Task.OBJECT_DETECTION)
    assert sum(len(r.objects) for r in data.records) == 855 == sum(len(r.objects) for r in converted.records)


def test_coco128_seg_reports_label_files_without_images_and_keeps_unlabelled_images(datasets):
    result = import_yolo(datasets / "coco128-seg", names=[f"class{i}" for i in range(80)])
    assert len(result.records) == 128
    assert result.report.skipped_by_reason() == {"annotation without image": 2}
    assert sorted(p.location for p in result.report.skipped) == ["labels/train2017/000000000656.txt",
                                                                 "labels/train2017/000000000659.txt"]
    unlabelled = sorted(r.image_path.name for r in result.records if not r.objects)
    assert unlabelled == ["000000000250.jpg", "000000000508.jpg"]
    assert sum(len(r.objects) for r in result.records) == 941 - 12  # the two orphan files hold 12 lines


def test_yolo_rules_in_an_images_labels_layout(tmp_path):
    root = tmp_path / "set"
    _image(root / "images" / "train" / "a.jpg")
    _image(root / "images" / "train" / "b.jpg")  # no label file: background
    _image(root / "images" / "train" / "c.jpg")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.4\n"          # box
        "1 0.1 0.1 0.3 0.1 0.2 0.3\n"  # polygon: box derived
        "7 0.5 0.5 0.1 0.1\n"          # class out of range
        "0 0.5 0.5 0.1\n"              # three coordinates
        "0 0.95 0.5 0.2 0.2\n"         # sticks out by 10 pixels
        "\n")
    (root / "labels" / "train" / "c.txt").write_text("0 0.5 0.5 0 0.2\n")  # zero width: image skipped
    (root / "labels" / "train" / "z.txt").write_text("0 0.5 0.5 0.2 0.2\n")  # no image
    (root / "data.yaml").write_text("names: {0: cat, 1: dog}\n")
    (root / "README.txt").write_text("not a label file")
    result = import_yolo(root)
    records = {r.image_path.name: r for r in result.records}
    assert set(records) == {"a.jpg", "b.jpg"}
    assert records["b.jpg"].objects == ()
    a = records["a.jpg"].objects
    assert [o.label for o in a] == ["cat", "dog"]
    assert a[0].box == pytest.approx((0.4, 0.3, 0.6, 0.7))
    assert a[1].box == pytest.approx((0.1, 0.1, 0.3, 0.3)) and a[1].polygons == ()
    details = [(p.location, p.detail) for p in result.report.dropped_annotations]
    assert [loc for loc, _ in details] == ["labels/train/a.txt:3", "labels/train/a.txt:4", "labels/train/a.txt:5",
                                           "labels/train/c.txt:1"]
    assert "class 7" in details[0][1] and "3 coordinates" in details[1][1] and "sticks out" in details[2][1]
    assert result.report.skipped_by_reason() == {"no valid object": 1, "annotation without image": 1}
    segmentation = import_yolo(root, task="image_instance_segmentation")
    (a_seg,) = [r for r in segmentation.records if r.image_path.name == "a.jpg"]
    assert [o.polygons for o in a_seg.objects] == [((0.1, 0.1, 0.3, 0.1, 0.2, 0.3),)]


def test_yolo_without_a_names_file_says_how_to_give_one(tmp_path):
    _image(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match="names=PATH"):
        import_yolo(tmp_path)


# --- COCO ---------------------------------------------------------------------------------------------


def _records(tmp_path: Path) -> list[ImageRecord]:
    a = _image(tmp_path / "img" / "a.png", (200, 100))
    b = _image(tmp_path / "img" / "b.png", (64, 48))
    return [
        ImageRecord(a, "img/a.png", objects=(ObjectAnnotation("dog", (0.1, 0.2, 0.5, 0.9)),
                                             ObjectAnnotation("cat", (0.25, 0.5, 0.75, 1.0), is_crowd=True))),
        ImageRecord(b, "img/b.png"),  # background image
    ]


def test_coco_export_writes_pixel_boxes_that_pycocotools_reads(tmp_path):
    path = export_coco(_records(tmp_path), ["cat", "dog"], tmp_path / "out" / "coco.json")
    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"]
    assert [(i["file_name"], i["width"], i["height"]) for i in coco.loadImgs(coco.getImgIds())] == [
        (str((tmp_path / "img" / "a.png").resolve()), 200, 100), (str((tmp_path / "img" / "b.png").resolve()), 64, 48)]
    annotations = coco.loadAnns(coco.getAnnIds())
    assert [a["id"] for a in annotations] == [1, 2]
    assert annotations[0]["bbox"] == pytest.approx([20, 20, 80, 70]) and annotations[0]["category_id"] == 2
    assert annotations[0]["area"] == pytest.approx(5600)
    assert annotations[1]["iscrowd"] == 1 and annotations[1]["category_id"] == 1


def test_coco_round_trip_gives_back_the_same_records(tmp_path):
    records = _records(tmp_path)
    path = export_coco(records, ["cat", "dog"], tmp_path / "coco.json")
    assert json.loads(path.read_text())["images"][0]["file_name"] == "img/a.png"
    result = import_coco(path)
    assert not result.report.skipped and not result.report.dropped_annotations
    assert [r.image_path for r in result.records] == [r.image_path for r in records]
    for back, original in zip(result.records, records):
        assert [(o.label, o.is_crowd) for o in back.objects] == [(o.label, o.is_crowd) for o in original.objects]
        for o, p in zip(back.objects, original.objects):
            assert o.box == pytest.approx(p.box, abs=1e-12)
    convert("coco", path, tmp_path / "back.jsonl")
    assert len(read_labeled_data(tmp_path / "back.jsonl", Task.OBJECT_DETECTION).records) == 2


def test_coco_import_reports_what_it_cannot_use(tmp_path):
    _image(tmp_path / "a.png", (100, 50))
    _image(tmp_path / "c.png", (100, 50))
    polygon = [10, 10, 60, 10, 60, 40]
    document = {
        "images": [{"id": 7, "file_name": "a.png", "width": 100, "height": 50},
                   {"id": 8, "file_name": "b.png", "width": 100, "height": 50},
                   {"id": 9, "file_name": "c.png", "width": 100, "height": 50}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 5, 30, 20], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 2, "segmentation": [polygon], "iscrowd": 0},  # box from polygon
            {"id": 3, "image_id": 7, "category_id": 3, "bbox": [1, 1, 2, 2]},                    # unknown category
            {"id": 4, "image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2]},                   # unknown image
            {"id": 5, "image_id": 7, "category_id": 1, "bbox": [1, 1, 2, 2], "iscrowd": 1,
             "segmentation": {"size": [50, 100], "counts": "abc"}},
            {"id": 6, "image_id": 8, "category_id": 1, "bbox": [1, 1, 2, 2]},                    # missing file
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(document))
    result = import_coco(path)
    records = {r.image_path.name: r for r in result.records}
    assert set(records) == {"a.png", "c.png"} and records["c.png"].objects == ()
    assert records["a.png"].objects == (ObjectAnnotation("cat", (0.1, 0.1, 0.4, 0.5)),
                                        ObjectAnnotation("dog", (0.1, 0.2, 0.6, 0.8)),
                                        ObjectAnnotation("cat", (0.01, 0.02, 0.03, 0.06), is_crowd=True))
    assert [p.detail for p in result.report.dropped_annotations] == [
        "image_id 99 is not in 'images'", "annotation id 3: category_id 3 is not in 'categories'"]
    assert result.report.skipped_by_reason() == {"missing file": 1}
    segmentation = import_coco(path, task=Task.INSTANCE_SEGMENTATION)
    (a,) = [r for r in segmentation.records if r.image_path.name == "a.png"]
    assert [o.label for o in a.objects] == ["dog"]
    assert a.objects[0].polygons == ((0.1, 0.2, 0.6, 0.2, 0.6, 0.8),)
    assert any("RLE mask cannot be decoded" in p.detail for p in segmentation.report.dropped_annotations)


def test_coco_export_needs_every_class_named(tmp_path):
    with pytest.raises(DataError, match=r"\['dog'\] occur in the records"):
        export_coco(_records(tmp_path), ["cat"], tmp_path / "coco.json")
