"""ONNX Runtime prediction from model folders and exported files: the same prediction lines as the torch
runtime for every family (tiling included), ``model.onnx`` written by training, and clear errors for
files that do not fit. Family-level parity of the graphs themselves is in test_onnx_export.py."""
from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import visionsweep
from visionsweep.checkpoint import load_checkpoint
from visionsweep.cli import main
from visionsweep.errors import ExportError, SettingsError
from conftest import TINY_SETTINGS, write_color_dataset
from jsonl_helpers import read_lines, write_lines

DETECTION = {"pretrained": False, "number_of_epochs": 1, "training_batch_size": 2, "validation_batch_size": 2,
             "log_validation_loss": "Disable", "num_workers": 0, "seed": 0}
RCNN = {**DETECTION, "model_name": "fasterrcnn_resnet18_fpn", "min_size": 64, "max_size": 96, "box_score_thresh": 0.0,
        "box_detections_per_img": 5}
YOLO = {**DETECTION, "model_name": "yolov5", "model_size": "small", "img_size": 64, "box_score_thresh": 0.2}
DEPLOYMENT = (Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text()
SQUARES = {"red": (0.1, 0.2, 0.4, 0.7), "blue": (0.55, 0.3, 0.9, 0.8)}


def _scenes(folder, count=3, sizes=((96, 64), (80, 64), (64, 96))):
    """Noisy scenes of different sizes with a red and a blue square, and their JSONL file. The noise makes
    a barely trained detector score its boxes differently: on a flat background they all score alike,
    and which of two equal scores wins NMS is down to float rounding."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for name, (x0, y0, x1, y1) in SQUARES.items():
            pixels[int(y0 * height):int(y1 * height), int(x0 * width):int(x1 * width)] = (
                (255, 0, 0) if name == "red" else (0, 0, 255))
        Image.fromarray(pixels).save(folder / f"{i}.png")
        lines.append({"image_url": f"{i}.png", "label": [
            dict(zip(("label", "topX", "topY", "bottomX", "bottomY"), (name, *box))) for name, box in SQUARES.items()]})
    return write_lines(lines, folder / "data.jsonl")


def _spread_yolo_scores(model_dir):
    """Give a saved YOLOv5 clearly different scores and export it again. After one step its saved weights
    (the moving average) are still the initial ones, which score every box near the same prior, and which
    of two equal scores survives NMS is down to float rounding. Redrawn convolutions and Detect biases at
    zero spread the scores out."""
    checkpoint = model_dir / "model.pt"
    content = load_checkpoint(checkpoint)
    generator = torch.Generator().manual_seed(0)
    for name, value in content["model_state"].items():
        if value.dim() == 4:
            value.copy_(torch.randn(value.shape, generator=generator) * (2.0 / value[0].numel()) ** 0.5)
        elif name.startswith("model.24.m.") and name.endswith("bias"):  # the Detect convs
            value.zero_()
    torch.save(content, checkpoint)
    visionsweep.export(model_dir)


def _predict_both(run_dir, data, tmp_path, settings=None):
    torch_lines = read_lines(visionsweep.predict(run_dir, data, output=tmp_path / "torch.jsonl", settings=settings).output)
    onnx_lines = read_lines(visionsweep.predict(run_dir, data, output=tmp_path / "onnx.jsonl", settings=settings,
                                                runtime="onnxruntime").output)
    return torch_lines, onnx_lines


def _assert_same_detections(torch_lines, onnx_lines):
    """Per image the same boxes (within 1e-3 of the image size), labels and scores (within 1e-4), in any
    order among equal scores: a barely trained detector scores many boxes alike, and float rounding
    decides their order."""
    assert [line["filename"] for line in onnx_lines] == [line["filename"] for line in torch_lines]
    assert any(line["boxes"] for line in torch_lines), "a test of equal detections needs detections"
    for ours, theirs in zip(torch_lines, onnx_lines):
        assert len(theirs["boxes"]) == len(ours["boxes"])
        unmatched = list(theirs["boxes"])
        for item in ours["boxes"]:
            match = next((other for other in unmatched if other["label"] == item["label"]
                          and abs(other["score"] - item["score"]) <= 1e-4
                          and np.allclose(list(other["box"].values()), list(item["box"].values()), atol=1e-3)), None)
            assert match is not None, f"{item} has no counterpart in {unmatched}"
            unmatched.remove(match)


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classifier")
    data = write_color_dataset(folder)
    result = visionsweep.train("image_classification", data, data, output=folder / "run", progress=False,
                               settings={**TINY_SETTINGS, "number_of_epochs": 1, "export_onnx": True})
    return result, data


def test_training_writes_model_onnx_and_onnxruntime_predicts_the_torch_probabilities(classifier_run, tmp_path):
    result, data = classifier_run
    exported = result.model_dir / "model.onnx"
    assert exported.is_file() and exported.stat().st_size > 1_000_000
    torch_lines, onnx_lines = _predict_both(result.run_dir, data, tmp_path)
    assert len(onnx_lines) == len(torch_lines) == 12
    for ours, theirs in zip(torch_lines, onnx_lines):
        assert theirs["filename"] == ours["filename"] and theirs["labels"] == ours["labels"] == ["blue", "red"]
        np.testing.assert_allclose(theirs["probs"], ours["probs"], rtol=1e-3, atol=1e-5)
    # The file alone (no model folder) predicts the same, its task, labels and settings from its metadata.
    alone = tmp_path / "alone" / "classifier.onnx"
    alone.parent.mkdir()
    shutil.copy(exported, alone)
    file_lines = read_lines(visionsweep.predict(alone, data, output=tmp_path / "file.jsonl").output)
    assert [line["probs"] for line in file_lines] == [line["probs"] for line in onnx_lines]


def test_evaluate_with_onnxruntime_gives_the_torch_metrics(classifier_run):
    result, data = classifier_run
    ours, _ = visionsweep.evaluate(result.run_dir, data=data)
    theirs, _ = visionsweep.evaluate(result.run_dir, data=data, runtime="onnxruntime")
    assert theirs["accuracy"] == ours["accuracy"]
    assert theirs["log_loss"] == pytest.approx(ours["log_loss"], abs=1e-4)


def test_exported_with_normalisation_in_the_graph_predicts_the_same(classifier_run, tmp_path):
    result, data = classifier_run
    path = visionsweep.export(result.run_dir, tmp_path / "normalising.onnx",
                              settings={"enable_onnx_normalization": True}).path
    assert visionsweep.predict(path, data, output=tmp_path / "n.jsonl").images == 12
    plain = read_lines(visionsweep.predict(result.run_dir, data, output=tmp_path / "t.jsonl").output)
    for ours, theirs in zip(plain, read_lines(tmp_path / "n.jsonl")):
        np.testing.assert_allclose(theirs["probs"], ours["probs"], rtol=1e-3, atol=1e-5)


def test_a_setting_the_graph_holds_fixed_is_refused_with_the_way_out(classifier_run, tmp_path):
    result, data = classifier_run
    with pytest.raises(SettingsError, match="valid_crop_size.*export again"):
        visionsweep.predict(result.run_dir, data, output=tmp_path / "p.jsonl", runtime="onnxruntime",
                            settings={"valid_crop_size": 24, "valid_resize_size": 32})
    assert not (tmp_path / "p.jsonl").exists()


def test_files_that_do_not_fit_are_refused_naming_the_problem(classifier_run, tmp_path):
    result, data = classifier_run
    # A model.onnx of another model in the folder (a stale export): the checkpoint is the truth.
    other_dir = tmp_path / "other"
    other = visionsweep.train("image_classification_multilabel", write_color_dataset(tmp_path, multilabel=True),
                              output=other_dir, progress=False,
                              settings={**TINY_SETTINGS, "number_of_epochs": 1, "export_onnx": True})
    folder = tmp_path / "copy"
    shutil.copytree(result.model_dir, folder)
    shutil.copy(other.model_dir / "model.onnx", folder / "model.onnx")
    with pytest.raises(ExportError, match="does not match.*task.*labels"):
        visionsweep.predict(folder, data, output=tmp_path / "p.jsonl", runtime="onnxruntime")
    # An ONNX file visionsweep did not write.
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph), foreign)
    with pytest.raises(ExportError, match="no visionsweep metadata"):
        visionsweep.predict(foreign, data, output=tmp_path / "p.jsonl")
    # Not an ONNX file at all.
    (tmp_path / "text.onnx").write_text("not a model")
    with pytest.raises(ExportError, match="not a readable ONNX file"):
        visionsweep.predict(tmp_path / "text.onnx", data, output=tmp_path / "p.jsonl")
    # A file of a fixed batch size.
    fixed = visionsweep.export(result.run_dir, tmp_path / "b3.onnx", batch=3).path
    with pytest.raises(ExportError, match="exactly 3 images"):
        visionsweep.predict(fixed, data, output=tmp_path / "p.jsonl")
    # The torch runtime cannot run an ONNX file.
    with pytest.raises(SettingsError, match="runs with onnxruntime"):
        visionsweep.predict(fixed, data, output=tmp_path / "p.jsonl", runtime="torch")
    assert not (tmp_path / "p.jsonl").exists()


def test_export_command_and_its_errors(classifier_run, tmp_path, capsys):
    result, _ = classifier_run
    output = tmp_path / "cli.onnx"
    assert main(["export", str(result.run_dir), "--output", str(output), "--batch", "4", "--opset", "18"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["input"] == "input1" and printed["input_shape"] == [4, 3, 32, 32] and printed["outputs"] == ["output1"]
    model = onnx.load(output)
    assert model.opset_import[0].version == 18
    assert json.loads({p.key: p.value for p in model.metadata_props}["visionsweep.labels"]) == ["blue", "red"]
    for arguments, message in ((["--format", "tflite"], "format: got 'tflite'"), (["--batch", "two"], "--batch"),
                               (["--opset", "9"], "opset: got 9"), (["--batch", "0"], "--batch")):
        assert main(["export", str(result.run_dir), "--output", str(tmp_path / "x.onnx"), *arguments]) == 2
        assert message in capsys.readouterr().err
    assert main(["export", str(tmp_path / "no-run")]) == 2
    assert "no trained model" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_training_without_export_onnx_writes_none_and_onnxruntime_says_how_to_export(tmp_path):
    data = write_color_dataset(tmp_path)
    result = visionsweep.train("image_classification", data, data, output=tmp_path / "run", progress=False,
                               settings={**TINY_SETTINGS, "number_of_epochs": 1, "export_onnx": False})
    assert not (result.model_dir / "model.onnx").exists()
    with pytest.raises(ExportError, match="visionsweep export"):
        visionsweep.predict(result.run_dir, data, output=tmp_path / "p.jsonl", runtime="onnxruntime")


def test_a_failed_export_is_a_warning_naming_the_cause_not_a_failed_run(tmp_path, monkeypatch, caplog):
    def refuse(*args, **kwargs):
        raise RuntimeError("the exporter ran out of luck")

    monkeypatch.setattr("visionsweep.training.run.export_onnx", refuse)
    data = write_color_dataset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="visionsweep"):
        result = visionsweep.train("image_classification", data, data, output=tmp_path / "run", progress=False,
                                   settings={**TINY_SETTINGS, "number_of_epochs": 1, "export_onnx": True})
    assert result.status == "completed" and (result.model_dir / "model.pt").is_file()
    assert not (result.model_dir / "model.onnx").exists()
    assert "model.onnx was not written (RuntimeError: the exporter ran out of luck)" in caplog.text
    assert "the exporter ran out of luck" in (result.run_dir / "train.log").read_text()


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("yolo")
    # At img_size 64 these are predicted in frames of 64 x 64, 64 x 32 and 32 x 64 (rectangular batches).
    data = _scenes(folder, sizes=((96, 64), (128, 64), (64, 128)))
    result = visionsweep.train("image_object_detection", data, data, output=folder / "run", progress=False,
                               settings=YOLO)
    _spread_yolo_scores(result.model_dir)
    return result, data


def _check_raised_threshold(run_dir, data, tmp_path):
    """A threshold above the exported one: applied by filtering the graph's detections (R-CNN) or by the
    post-processing outside the graph (YOLOv5)."""
    scores = sorted(b["score"] for line in read_lines(tmp_path / "torch.jsonl") for b in line["boxes"])
    # Halfway between the best two scores: one at the threshold could pass in one runtime and not the other.
    threshold = (scores[-1] + scores[-2]) / 2
    torch_lines, onnx_lines = _predict_both(run_dir, data, tmp_path, settings={"box_score_thresh": threshold})
    _assert_same_detections(torch_lines, onnx_lines)
    assert sum(len(line["boxes"]) for line in onnx_lines) == 1


def test_yolo_predicts_the_same_lines_with_onnxruntime(yolo_run, tmp_path):
    result, data = yolo_run
    _assert_same_detections(*_predict_both(result.run_dir, data, tmp_path))
    _check_raised_threshold(result.run_dir, data, tmp_path)


@pytest.mark.slow
def test_faster_rcnn_predicts_the_same_lines_with_onnxruntime(tmp_path):
    data = _scenes(tmp_path)
    result = visionsweep.train("image_object_detection", data, data, output=tmp_path / "run", progress=False,
                               settings=RCNN)
    _assert_same_detections(*_predict_both(result.run_dir, data, tmp_path))
    _check_raised_threshold(result.run_dir, data, tmp_path)
    # Below the file's own threshold: the graph has dropped those detections.
    stricter = visionsweep.export(result.run_dir, tmp_path / "t05.onnx", settings={"box_score_thresh": 0.05}).path
    with pytest.raises(SettingsError, match="box_score_thresh: got 0.0, below"):
        visionsweep.predict(stricter, data, output=tmp_path / "p.jsonl", settings={"box_score_thresh": 0.0})


def test_the_script_of_docs_deployment_prints_the_boxes_visionsweep_predicts(yolo_run, tmp_path):
    result, data = yolo_run
    (script,) = [code for code in re.findall(r"^```python\n(.*?)^```", DEPLOYMENT, flags=re.MULTILINE | re.DOTALL)
                 if "onnxruntime.InferenceSession" in code]
    (tmp_path / "score.py").write_text(script)
    exported = visionsweep.export(result.run_dir, tmp_path / "nms.onnx", nms=True).path
    image = data.parent / "0.png"
    printed = subprocess.run([sys.executable, str(tmp_path / "score.py"), str(exported), str(image)],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    (line,) = read_lines(visionsweep.predict(result.run_dir, image, output=tmp_path / "p.jsonl").output)
    width, height = Image.open(image).size
    # The script resizes with another filter, which moves the scores near box_score_thresh a little: a few
    # boxes of an untrained model's many may cross it either way.
    assert printed and len(printed) == pytest.approx(len(line["boxes"]), rel=0.05, abs=2)
    for row in printed[:3]:  # the best boxes: the same up to the resampling filter
        label, score, *box = row.split()
        assert any(item["label"] == label and abs(item["score"] - float(score)) < 0.02
                   and np.allclose([float(v) for v in box],
                                   np.multiply(list(item["box"].values()), [width, height] * 2), atol=3)
                   for item in line["boxes"]), row


@pytest.mark.slow
def test_tiled_detection_through_onnxruntime_merges_the_same_boxes(tmp_path):
    data = _scenes(tmp_path, sizes=((128, 96),))
    result = visionsweep.train("image_object_detection", data, data, output=tmp_path / "run", progress=False,
                               settings=RCNN)
    tiled = {"tile_grid_size": "2x1", "tile_overlap_ratio": 0.25}
    torch_lines, onnx_lines = _predict_both(result.run_dir, data, tmp_path, settings=tiled)
    _assert_same_detections(torch_lines, onnx_lines)
    untiled = read_lines(visionsweep.predict(result.run_dir, data, output=tmp_path / "untiled.jsonl").output)
    assert sum(map(len, (l["boxes"] for l in torch_lines))) > sum(map(len, (l["boxes"] for l in untiled)))


@pytest.mark.slow
def test_mask_rcnn_predicts_the_same_polygons_with_onnxruntime(tmp_path):
    data = _scenes(tmp_path, count=2, sizes=((96, 64),))
    lines = read_lines(data)
    for line in lines:
        for item in line["label"]:
            x0, y0, x1, y1 = (item.pop(k) for k in ("topX", "topY", "bottomX", "bottomY"))
            item["polygon"] = [[x0, y0, x1, y0, x1, y1, x0, y1]]
    write_lines(lines, data)
    result = visionsweep.train("image_instance_segmentation", data, data, output=tmp_path / "run", progress=False,
                               settings={**RCNN, "model_name": "maskrcnn_resnet18_fpn"})
    torch_lines, onnx_lines = _predict_both(result.run_dir, data, tmp_path, settings={"mask_pixel_score_threshold": 0.3})
    _assert_same_detections(torch_lines, onnx_lines)
    for ours, theirs in zip(torch_lines, onnx_lines):
        for a, b in zip(ours["boxes"], theirs["boxes"]):
            assert len(a["polygon"]) == len(b["polygon"])
