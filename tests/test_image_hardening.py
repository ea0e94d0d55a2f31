"""Images that must not stop or fool a run: decompression bombs, 16-bit and other modes, truncated files,
and prediction reports that add up. Real files throughout, written here with PIL or by hand."""
from __future__ import annotations

import collections
import io
import json
import logging
import random
import struct
import warnings
import zlib
from itertools import repeat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_SETTINGS, write_color_dataset
from jsonl_helpers import read_lines, write_lines
from visionsweep.cli import main
from visionsweep.data import report as reasons
from visionsweep.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageProblem,
    ImageTooLarge,
    load_record_rgb,
    load_rgb,
    probe_image,
)
from visionsweep.data.jsonl import read_labeled_data
from visionsweep.data.records import ImageRecord
from visionsweep.settings import Settings
from visionsweep.tasks import Task

PIL_DEFAULT_LIMIT = 1024 * 1024 * 1024 // 4 // 3  # PIL's Image.MAX_IMAGE_PIXELS as shipped
TINY = [arg for key, value in {**TINY_SETTINGS, "number_of_epochs": 1, "training_batch_size": 5}.items()
        for arg in ("--set", f"{key}={value}")]


def write_png(path: Path, width: int, height: int, rows, *, bit_depth: int, color_type: int) -> Path:
    """A PNG written chunk by chunk; ``rows`` yields each row's raw bytes (filter type 0 is prepended)."""
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(b"\x00" + row) for row in rows) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def write_bomb(path: Path, side: int = 30000) -> Path:
    """A black 1-bit side x side PNG: 900 million pixels for side 30000 in about 110 KB. Decoded by PIL it
    takes 900 MB (one byte per pixel), 2.7 GB as RGB."""
    return write_png(path, side, side, repeat(bytes((side + 7) // 8), side), bit_depth=1, color_type=0)


def write_truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in half: its header is intact, so only decoding finds it."""
    pixels = np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


# --- decompression bombs -------------------------------------------------------------------------


def test_bomb_png_is_refused_from_its_header(tmp_path):
    bomb = write_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    assert struct.unpack(">II", bomb.read_bytes()[16:24]) == (30000, 30000)
    with pytest.raises(Image.DecompressionBombError):  # what PIL does on its own: not an OSError
        Image.open(bomb)

    for decode in (False, True):
        problem = probe_image(bomb, decode=decode)
        assert isinstance(problem, ImageProblem) and problem.reason == reasons.IMAGE_TOO_LARGE
        assert "900,000,000 pixels" in problem.detail and "max_image_pixels (89,478,485)" in problem.detail
        assert "raise max_image_pixels to at least 900,000,000" in problem.detail
    with pytest.raises(ImageTooLarge) as raised:
        load_rgb(bomb)
    assert raised.value.pixels == 900_000_000 and isinstance(raised.value, ValueError)
    assert Image.MAX_IMAGE_PIXELS == PIL_DEFAULT_LIMIT  # PIL's own limit is left as it was


def test_pil_warning_range_is_refused_and_the_setting_raises_the_limit(tmp_path, monkeypatch):
    # 100 million pixels: above PIL's limit, below twice it, where PIL only warns and would decode
    image = write_bomb(tmp_path / "big.png", side=10000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", PIL_DEFAULT_LIMIT)  # restored after the test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        problem = probe_image(image)
    assert problem.reason == reasons.IMAGE_TOO_LARGE
    assert "has 100,000,000 pixels (10000x10000), more than max_image_pixels (89,478,485)" in problem.detail

    assert probe_image(image, max_pixels=120_000_000) == (10000, 10000)
    assert Image.MAX_IMAGE_PIXELS == 120_000_000  # raised to match the raised setting, so PIL neither warns
    assert probe_image(image, max_pixels=DEFAULT_MAX_IMAGE_PIXELS).reason == reasons.IMAGE_TOO_LARGE
    assert Image.MAX_IMAGE_PIXELS == 120_000_000  # never lowered


def test_a_lower_limit_and_a_lowered_pil_limit(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(path)
    assert probe_image(path, max_pixels=1200) == (40, 30)
    assert "has 1,200 pixels (40x30), more than max_image_pixels (1,199)" in probe_image(path, max_pixels=1199).detail
    assert Image.MAX_IMAGE_PIXELS == PIL_DEFAULT_LIMIT

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # a program that lowered PIL's limit keeps it
    problem = probe_image(path)
    assert problem.reason == reasons.IMAGE_TOO_LARGE and "refused by PIL" in problem.detail
    assert "raise PIL.Image.MAX_IMAGE_PIXELS to at least 1,200" in problem.detail


def test_decoding_refuses_a_file_larger_than_when_it_was_checked(tmp_path):
    path = tmp_path / "image.png"
    Image.new("RGB", (40, 30), (9, 8, 7)).save(path)
    checked = ImageRecord(image_path=path, image_url="image.png", width=40, height=30)
    assert load_record_rgb(checked).size == (40, 30)
    Image.new("RGB", (400, 300)).save(path)  # replaced after the check
    with pytest.raises(ImageTooLarge, match="more than the 1,200 it had when the data was checked"):
        load_record_rgb(checked)


def test_max_image_pixels_setting():
    field = Settings.model_fields["max_image_pixels"]
    assert field.default == DEFAULT_MAX_IMAGE_PIXELS == PIL_DEFAULT_LIMIT


@pytest.mark.parametrize("value", ["0", "1000000001", "lots"])
def test_max_image_pixels_bounds(tmp_path, capsys, value):
    jsonl = write_color_dataset(tmp_path, per_class=2, size=8)
    assert main(["validate-data", "--task", "image_classification", "--data", str(jsonl),
                 "--set", f"max_image_pixels={value}"]) == 2
    assert "max_image_pixels" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory):
    """Ten 24x24 colour images, a bomb and a truncated JPEG listed in one JSONL file, and a model trained on it."""
    folder = tmp_path_factory.mktemp("bad_images")
    clean = write_color_dataset(folder, per_class=5, size=24)
    write_bomb(folder / "images" / "bomb.png")
    write_truncated_jpeg(folder / "images" / "truncated.jpg")
    lines = read_lines(clean) + [{"image_url": "images/bomb.png", "label": "red"},
                                 {"image_url": "images/truncated.jpg", "label": "blue"}]
    data = write_lines(lines, folder / "bad.jsonl")
    run = folder / "run"
    assert main(["train", "--task", "image_classification", "--data", str(data), "--output", str(run),
                 "--no-progress", *TINY]) == 0
    return folder, clean, data, run


def test_validate_data_skips_the_bomb_and_the_truncated_jpeg(bad_images, tmp_path, capsys):
    _, _, data, _ = bad_images
    report_file = tmp_path / "report.json"
    assert main(["validate-data", "--task", "image_classification", "--data", str(data),
                 "--output", str(report_file)]) == 0
    out = capsys.readouterr().out
    assert "12 records read, 10 images kept, 2 skipped" in out and "every image decoded in full" in out
    assert "skipped (image too large): 1" in out and "skipped (unreadable image): 1" in out
    assert "bomb.png has 900,000,000 pixels" in out and "image file is truncated" in out
    [source] = json.loads(report_file.read_text())["sources"]
    assert source["images_checked"] == "decoded"
    assert source["skipped_by_reason"] == {"image too large": 1, "unreadable image": 1}

    # headers only: the truncated JPEG passes, and the report says what was not checked
    assert main(["validate-data", "--task", "image_classification", "--data", str(data), "--headers-only",
                 "--output", str(report_file)]) == 0
    out = capsys.readouterr().out
    assert "12 records read, 11 images kept, 1 skipped" in out and "headers and file structure only" in out
    assert json.loads(report_file.read_text())["sources"][0]["images_checked"] == "headers"


def test_bad_images_are_errors_when_ignore_data_errors_is_false(bad_images, tmp_path, capsys):
    _, _, data, _ = bad_images
    for command in (["validate-data"], ["train", "--output", str(tmp_path / "run"), "--no-progress", *TINY]):
        assert main([*command, "--task", "image_classification", "--data", str(data),
                     "--set", "ignore_data_errors=false"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        assert "image too large" in err and "bomb.png has 900,000,000 pixels" in err
    assert not (tmp_path / "run" / "model").exists()


def test_train_skips_the_bomb_and_counts_the_truncated_jpeg(bad_images):
    _, _, _, run = bad_images
    report = json.loads((run / "data_report.json").read_text())
    [source] = report["sources"]
    assert (source["records_read"], source["kept"], source["skipped_by_reason"]) == (12, 11, {"image too large": 1})
    assert source["images_checked"] == "headers"
    # the truncated JPEG passes the header check and is reported when training reads it
    [failed] = report["failed_during_run"]
    assert "truncated.jpg" in failed and "image file is truncated" in failed
    assert report["training_images"] + report["validation_images"] == 11


def test_predict_a_folder_with_a_bomb_and_a_truncated_jpeg(bad_images, tmp_path, caplog):
    folder, _, _, run = bad_images
    caplog.set_level(logging.INFO, logger="visionsweep")
    predictions = tmp_path / "p.jsonl"
    assert main(["predict", str(run), str(folder / "images"), "--output", str(predictions)]) == 0
    summary = caplog.text
    assert "12 records read, 10 images kept, 2 skipped" in summary
    assert "skipped (image too large): 1" in summary and "skipped (unreadable image): 1" in summary
    assert "wrote 10 predictions" in summary and "metric" not in summary
    lines = read_lines(predictions)
    assert len(lines) == 10 and not {"bomb.png", "truncated.jpg"} & {Path(line["filename"]).name for line in lines}


def test_predict_report_adds_up_with_one_unreadable_file(bad_images, tmp_path):
    from visionsweep import api

    folder, _, _, run = bad_images
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("red_0.png", "blue_0.png", "blue_1.png"):
        (inputs / name).write_bytes((folder / "images" / name).read_bytes())
    write_truncated_jpeg(inputs / "broken.jpg")
    result = api.predict(run, inputs, output=tmp_path / "p.jsonl")
    report = result.report
    assert (report.records_read, report.kept, len(report.skipped)) == (4, 3, 1)
    assert report.records_read == report.kept + len(report.skipped)
    assert result.images == report.kept == len(read_lines(result.output))
    assert report.skipped[0].location == "broken.jpg" and report.skipped[0].reason == reasons.UNREADABLE_IMAGE


def test_predict_on_nothing_readable_is_an_error_without_metrics(bad_images, tmp_path, capsys):
    _, _, _, run = bad_images
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_truncated_jpeg(inputs / "broken.jpg")
    output = tmp_path / "p.jsonl"
    assert main(["predict", str(run), str(inputs), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no image of") and "nothing to predict on" in err
    assert "1 records read, 0 images kept, 1 skipped" in err and "metric" not in err
    assert not output.exists()


def test_evaluate_skips_the_bomb_and_the_truncated_jpeg(bad_images, tmp_path, capsys):
    _, _, data, run = bad_images
    assert main(["evaluate", str(run), "--data", str(data), "--output", str(tmp_path / "m.json")]) == 0
    written = json.loads((tmp_path / "m.json").read_text())
    report = written["data_report"]
    assert (report["records_read"], report["kept"], report["skipped"]) == (12, 10, 2)
    assert report["skipped_by_reason"] == {"image too large": 1, "unreadable image": 1}
    assert 0.0 <= written["metrics"]["accuracy"] <= 1.0
    assert json.loads(capsys.readouterr().out)["accuracy"] == written["metrics"]["accuracy"]


def test_predict_and_evaluate_read_max_image_pixels_from_the_overrides(bad_images, tmp_path, capsys):
    folder, clean, _, run = bad_images
    small = folder / "images" / "small.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(small)
    inputs = write_lines([{"image_url": str(small), "label": "red"}] + [
        {**line, "image_url": str(folder / line["image_url"])} for line in read_lines(clean)[:2]],
        tmp_path / "inputs.jsonl")
    from visionsweep import api

    result = api.predict(run, inputs, output=tmp_path / "p.jsonl", settings={"max_image_pixels": 300})
    assert [line["filename"] for line in read_lines(result.output)] == [str(small)]  # 256 pixels, not 576
    assert result.report.skipped_by_reason() == {"image too large": 2}
    _, report = api.evaluate(run, data=inputs, settings={"max_image_pixels": 300})
    assert (report.kept, report.skipped_by_reason()) == (1, {"image too large": 2})


# --- modes ---------------------------------------------------------------------------------------


def _rgb(path: Path) -> np.ndarray:
    image = load_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_16_bit_grey_png_reads_as_its_8_bit_version(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint16)
    grey[0, :4] = (0, 1, 254, 255)
    Image.fromarray(grey.astype(np.uint8)).save(tmp_path / "grey8.png")
    # 16-bit samples whose high byte is the 8-bit value and whose low byte is noise
    wide = grey * 256 + rng.integers(0, 256, grey.shape, dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "grey16.png")
    Image.fromarray(wide).save(tmp_path / "grey16.tif")
    assert (tmp_path / "grey16.png").read_bytes()[24] == 16  # IHDR bit depth: a real 16-bit PNG
    with Image.open(tmp_path / "grey16.png") as image:
        assert image.mode == "I;16"
        assert (np.asarray(image.convert("RGB")) == 255).mean() > 0.95  # PIL alone clips: a white image
    expected = _rgb(tmp_path / "grey8.png")
    assert np.array_equal(_rgb(tmp_path / "grey16.png"), expected)
    assert np.array_equal(_rgb(tmp_path / "grey16.tif"), expected)
    assert np.array_equal(expected[..., 0], grey) and np.array_equal(expected[..., 2], grey)


def test_16_bit_colour_png_reads_as_its_8_bit_version(tmp_path):
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 256, (12, 10, 3), dtype=np.uint16)
    Image.fromarray(colour.astype(np.uint8)).save(tmp_path / "rgb8.png")
    wide = (colour * 257).astype(">u2")  # 8-bit widened to 16 as PNG encoders do, stored big-endian
    write_png(tmp_path / "rgb16.png", 10, 12, (row.tobytes() for row in wide), bit_depth=16, color_type=2)
    assert np.array_equal(_rgb(tmp_path / "rgb16.png"), _rgb(tmp_path / "rgb8.png"))
    assert np.array_equal(_rgb(tmp_path / "rgb8.png"), colour)


def test_32_bit_integer_and_float_images(tmp_path):
    integers = np.array([[-5, 0, 255, 256, 32768, 65535, 70000]], dtype=np.int32)
    Image.fromarray(integers).save(tmp_path / "i32.tif")
    with Image.open(tmp_path / "i32.tif") as image:
        assert image.mode == "I"
    assert _rgb(tmp_path / "i32.tif")[0, :, 0].tolist() == [0, 0, 0, 1, 128, 255, 255]  # 0..65535, clipped

    floats = np.array([[-0.5, 0.0, 0.25, 0.5, 1.0, 2.0, np.nan]], dtype=np.float32)
    Image.fromarray(floats).save(tmp_path / "f32.tif")
    with Image.open(tmp_path / "f32.tif") as image:
        assert image.mode == "F"
    assert _rgb(tmp_path / "f32.tif")[0, :, 1].tolist() == [0, 0, 64, 128, 255, 255, 0]  # 0..1, clipped


def test_transparency_is_composited_onto_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 0], [200, 100, 50, 255], [200, 100, 50, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    pixels = _rgb(tmp_path / "rgba.png")[0]
    assert pixels[0].tolist() == [0, 0, 0] and pixels[1].tolist() == [200, 100, 50]
    assert np.abs(pixels[2].astype(int) - [100, 50, 25]).max() <= 1

    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
    pixels = _rgb(tmp_path / "la.png")[0]
    assert pixels[0].tolist() == [0, 0, 0] and pixels[1].tolist() == [200, 200, 200]

    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 255, 255, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 0)  # index 0: white in the palette, transparent
    palette.putpixel((1, 0), 1)  # index 1: opaque red
    palette.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as image:
        assert image.mode == "P" and np.asarray(image.convert("RGB"))[0, 0].tolist() == [255, 255, 255]
    assert _rgb(tmp_path / "p.png")[0].tolist() == [[0, 0, 0], [255, 0, 0]]

    colour = Image.fromarray(np.array([[[10, 20, 30], [40, 50, 60]]], dtype=np.uint8))
    colour.save(tmp_path / "rgb_trns.png", transparency=(10, 20, 30))  # single-colour transparency (tRNS)
    assert _rgb(tmp_path / "rgb_trns.png")[0].tolist() == [[0, 0, 0], [40, 50, 60]]


def test_other_modes_read_as_rgb(tmp_path):
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1").save(tmp_path / "bits.png")
    assert _rgb(tmp_path / "bits.png")[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    red = _rgb(tmp_path / "cmyk.jpg")[0, 0].astype(int)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15


# --- damaged files: every decoder failure is a bad record, never an exception ----------------------------


def write_unknown_dds(path: Path) -> Path:
    """A DDS file (whatever ``path``'s suffix says) whose pixel format PIL does not implement: its decoder
    raises NotImplementedError, not an OSError."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "DDS")
    data = bytearray(buffer.getvalue())
    struct.pack_into("<I", data, 80, 0x4)  # pixel format flags: a FourCC follows
    data[84:88] = b"ZZZZ"
    path.write_bytes(bytes(data))
    return path


def test_an_image_pil_cannot_decode_is_a_counted_skip(tmp_path):
    image = write_unknown_dds(tmp_path / "photo.png")
    with pytest.raises(NotImplementedError):  # what PIL itself raises
        Image.open(image).load()
    problem = probe_image(image, decode=True)
    assert isinstance(problem, ImageProblem) and problem.reason == reasons.UNREADABLE_IMAGE
    assert "NotImplementedError: Unimplemented pixel format" in problem.detail
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    write_lines([{"image_url": "photo.png", "label": "a"}, {"image_url": "good.png", "label": "b"}],
                tmp_path / "data.jsonl")
    data = read_labeled_data(tmp_path / "data.jsonl", Task.CLASSIFICATION, decode_images=True)
    assert [r.image_path.name for r in data.records] == ["good.png"]
    assert data.report.kept == 1 and data.report.skipped_by_reason() == {reasons.UNREADABLE_IMAGE: 1}


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM", "TGA", "DDS"])
def test_damaged_files_of_every_format_are_reported_not_raised(tmp_path, image_format):
    # Seeded damage: cut short and bytes overwritten, as a failed copy or a hostile file would be.
    rng = random.Random(image_format)
    pixels = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format)
    original = buffer.getvalue()
    path = tmp_path / f"damaged.{image_format.lower()}"
    outcomes = collections.Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL warns about corrupt EXIF and the like
        for attempt in range(60):
            damaged = bytearray(original if attempt % 2 else original[:rng.randrange(8, len(original))])
            for _ in range(rng.randrange(1, 12)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            path.write_bytes(bytes(damaged))
            probed = probe_image(path, decode=True)  # must not raise
            outcomes["problem" if isinstance(probed, ImageProblem) else "read"] += 1
            if not isinstance(probed, ImageProblem):
                assert load_rgb(path).size == probed
    assert outcomes["problem"] > 0
