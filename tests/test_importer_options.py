"""Importer options of ``convert``: max_image_pixels for every importer, checked like the setting, and
options an importer does not take."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from visionsweep import api
from visionsweep.cli import main
from visionsweep.data import convert, importer_names
from visionsweep.errors import SettingsError

SIDES = {"big": 20, "small": 8}  # 400 and 64 pixels


def _png(path: Path, side: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, side), (200, 30, 30)).save(path)


def _folder(root: Path) -> Path:
    for name, side in SIDES.items():
        _png(root / "tree" / "can" / f"{name}.png", side)
    return root / "tree"


def _csv(root: Path) -> Path:
    for name, side in SIDES.items():
        _png(root / "img" / f"{name}.png", side)
    (root / "labels.csv").write_text("".join(f"img/{name}.png,can\n" for name in SIDES))
    return root / "labels.csv"


def _voc(root: Path) -> Path:
    for name, side in SIDES.items():
        _png(root / "voc" / "JPEGImages" / f"{name}.png", side)
        (root / "voc" / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "voc" / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.png</filename><size><width>{side}</width><height>{side}</height>"
            "</size><object><name>can</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>"
            "</bndbox></object></annotation>")
    return root / "voc"


def _yolo(root: Path) -> Path:
    for name, side in SIDES.items():
        _png(root / "yolo" / f"{name}.png", side)
        (root / "yolo" / f"{name}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    (root / "yolo" / "classes.txt").write_text("can\n")
    return root / "yolo"


def _coco(root: Path) -> Path:
    images = []
    for number, (name, side) in enumerate(SIDES.items(), start=1):
        _png(root / "coco" / f"{name}.png", side)
        images.append({"id": number, "file_name": f"{name}.png", "width": side, "height": side})
    document = {"images": images, "categories": [{"id": 1, "name": "can"}],
                "annotations": [{"id": n, "image_id": n, "category_id": 1, "bbox": [1, 1, 4, 4]} for n in (1, 2)]}
    (root / "coco" / "coco.json").write_text(json.dumps(document))
    return root / "coco" / "coco.json"


SOURCES = {"folder": _folder, "csv": _csv, "voc": _voc, "yolo": _yolo, "coco": _coco}


def test_every_importer_is_covered():
    assert set(SOURCES) == set(importer_names())


@pytest.mark.parametrize("source_format", sorted(SOURCES))
def test_max_image_pixels_refuses_larger_images_in_every_importer(source_format, tmp_path):
    source = SOURCES[source_format](tmp_path)
    limited = convert(source_format, source, tmp_path / "limited.jsonl", max_image_pixels=100)
    assert [r.image_path.name for r in limited.records] == ["small.png"]
    (problem,) = limited.report.skipped
    assert problem.reason == "image too large"
    assert "has 400 pixels (20x20), more than max_image_pixels (100)" in problem.detail
    assert (limited.report.records_read, limited.report.kept) == (2, 1)
    # the written file says the size it found
    (line,) = [json.loads(text) for text in (tmp_path / "limited.jsonl").read_text().splitlines()]
    assert line["image_details"]["width"] == "8px"

    raised = convert(source_format, source, tmp_path / "raised.jsonl", max_image_pixels=400)
    assert sorted(r.image_path.name for r in raised.records) == ["big.png", "small.png"]
    assert not raised.report.skipped


def test_the_command_takes_the_option(tmp_path, capsys):
    source = _folder(tmp_path)
    assert main(["convert", "--from", "folder", str(source), "--output", str(tmp_path / "out.jsonl"),
                 "--option", "max_image_pixels=100"]) == 0
    out = capsys.readouterr().out
    assert "skipped (image too large): 1" in out and "wrote 1 image_classification records" in out


@pytest.mark.parametrize("value, message", [
    (0, "max_image_pixels: got 0; Input should be greater than or equal to 1"),
    (2_000_000_000, "max_image_pixels: got 2000000000; Input should be less than or equal to 1000000000"),
    ("many", "max_image_pixels: got 'many'; Input should be a valid integer"),
])
def test_max_image_pixels_has_the_bounds_of_the_setting(value, message, tmp_path):
    with pytest.raises(SettingsError, match="invalid importer option value") as error:
        api.convert("folder", _folder(tmp_path), tmp_path / "out.jsonl", max_image_pixels=value)
    assert message in str(error.value)
    assert not (tmp_path / "out.jsonl").exists()
    # the same value is refused, with the same words, as a setting of a run
    with pytest.raises(SettingsError) as as_setting:
        api.validate_data("image_classification", tmp_path / "none.jsonl", settings={"max_image_pixels": value})
    assert message in str(as_setting.value)


def test_an_option_the_importer_does_not_take_is_named_with_its_options(tmp_path, capsys):
    assert main(["convert", "--from", "csv", str(_csv(tmp_path)), "--output", str(tmp_path / "out.jsonl"),
                 "--option", "multilabel=true", "--option", "image_rot=img"]) == 2
    err = capsys.readouterr().err
    assert "error: 1 invalid importer option value:" in err
    assert ("image_rot: not an option of the csv importer; its options are multilabel, image_root, "
            "max_image_pixels") in err
    assert "Traceback" not in err and not (tmp_path / "out.jsonl").exists()
