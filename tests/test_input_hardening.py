"""Data files and settings that must not crash, hang or silently mislead (hardening items 7 to 11):
a JSONL line that is not UTF-8, YAML alias bombs and duplicate keys in every YAML reader, upper
bounds of the size and count settings, tiles too small for their grid, single-class multi-label,
background-only detection data, and settings that validate-data must refuse exactly as train does."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_SETTINGS, write_color_dataset
from visionsweep.cli import main
from visionsweep.data.jsonl import read_labeled_data
from visionsweep.data.detection_formats.yolo import import_yolo
from visionsweep.errors import DataError, SettingsError
from visionsweep.evaluation.classification import classification_metrics
from visionsweep.settings import load_settings_file, parse_set_options, resolve_settings
from visionsweep.sweep.job import load_job

SRC = Path(__file__).resolve().parents[1] / "src"
CLS, ML, OD = "image_classification", "image_classification_multilabel", "image_object_detection"
RCNN = {"model_name": "fasterrcnn_resnet18_fpn"}

# The classic "billion laughs": nine levels of nine aliases, 9**9 = 387,420,489 strings once expanded.
# It is the value of a real key, so that anything that walks it (validation, a message that shows
# the value given, JSON for settings.json) would expand it.
BILLION_LAUGHS = textwrap.dedent("""\
    - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]
    - &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    - &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    - &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    - &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    - &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    - &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    - &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
    - &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
    """)


def _indented(text: str, spaces: int) -> str:
    return textwrap.indent(text, " " * spaces)


def _image(path: Path, size=(64, 64), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _detection_data(folder: Path, sizes: list[tuple[int, int]], with_objects: bool = True) -> Path:
    lines = []
    for index, size in enumerate(sizes):
        _image(folder / "images" / f"{index}.png", size)
        label = [{"label": "car", "topX": 0.2, "topY": 0.2, "bottomX": 0.6, "bottomY": 0.6}] if with_objects else []
        lines.append({"image_url": f"images/{index}.png", "label": label})
    return _write_jsonl(folder / "data.jsonl", lines)


def _run_bounded(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter limited to 2 GiB of address space and ``timeout`` seconds.

    An expanded billion-laughs needs tens of GiB, so a reader that expands it dies of MemoryError
    (or runs out of time) instead of taking the machine down; one that refuses it returns at once."""
    prelude = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})


def _repeated_values(message: str, source: Path) -> int:
    """The count of values repeated by aliases that the refusal of ``source`` states."""
    found = re.search(re.escape(str(source)) + r": its aliases \(\*name\) repeat ([\d,]+) values", message)
    assert found, message
    return int(found.group(1).replace(",", ""))


# --- 7. JSONL lines that are not UTF-8 ----------------------------------------------------------------


def test_a_line_that_is_not_utf8_is_one_malformed_line_and_the_rest_of_the_file_is_kept(tmp_path):
    for name in "abc":
        _image(tmp_path / "images" / f"{name}.png", (8, 8))
    good = [json.dumps({"image_url": f"images/{n}.png", "label": n}).encode() for n in "ac"]
    latin1 = '{"image_url": "images/b.png", "label": "caf\xe9"}'.encode("latin-1")  # 0xe9 alone is not UTF-8
    (tmp_path / "data.jsonl").write_bytes(b"\xef\xbb\xbf" + good[0] + b"\n" + latin1 + b"\n" + good[1] + b"\r\n")
    data = read_labeled_data(tmp_path / "data.jsonl", CLS)
    assert [r.location for r in data.records] == ["data.jsonl:1", "data.jsonl:3"]
    assert data.report.records_read == 3 and data.report.skipped_by_reason() == {"malformed line": 1}
    (problem,) = data.report.skipped
    assert problem.location == "data.jsonl:2"
    assert "not UTF-8 text (byte 0xe9 at byte 44 of the line); save the file as UTF-8" in problem.detail


def test_a_predictions_file_line_that_is_not_utf8_is_reported_too(tmp_path):
    from visionsweep.data.report import DataReport
    from visionsweep.data.records import ImageRecord
    from visionsweep.inference.prediction_files import match_prediction_lines

    records = [ImageRecord(tmp_path / f"{n}.png", f"{n}.png", labels=("x",), location=f"d.jsonl:{i}")
               for i, n in enumerate("ab", start=1)]
    predictions = tmp_path / "p.jsonl"
    predictions.write_bytes(b'{"filename": "a.png", "probs": [1.0]}\n{"filename": "b\xff.png"}\n')
    report, predictions_report = DataReport(source="d.jsonl", kept=2), DataReport(source=str(predictions))
    pairs = match_prediction_lines(predictions, records, report, predictions_report)
    assert [pair.record.image_url for pair in pairs] == ["a.png"]
    (problem,) = predictions_report.skipped
    assert (problem.location, problem.reason) == ("p.jsonl:2", "malformed line") and "not UTF-8" in problem.detail
    assert (predictions_report.records_read, predictions_report.kept) == (2, 1)


# --- 8. YAML: alias bombs, duplicate keys, size -------------------------------------------------------


def test_a_billion_laughs_settings_file_is_refused_at_once(tmp_path):
    bomb = tmp_path / "settings.yaml"
    bomb.write_text("learning_rate:\n" + _indented(BILLION_LAUGHS, 2))
    result = _run_bounded(f"""
        from visionsweep.errors import SettingsError
        from visionsweep.settings import load_settings_file, resolve_settings
        try:
            resolve_settings("image_classification", load_settings_file({str(bomb)!r}))
        except SettingsError as error:
            print(error)
        """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _repeated_values(result.stdout, bomb) >= 9**9  # at least its 387,420,489 strings
    assert "more than the 10,000 allowed (an alias bomb such as 'billion laughs'?)" in result.stdout


def test_a_billion_laughs_in_a_jobs_training_parameters_is_refused_at_once(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    job = tmp_path / "job.yaml"
    job.write_text("type: automl\ntask: image_classification\nprimary_metric: accuracy\n"
                   "training_data: {type: uri_file, path: train.jsonl}\n"
                   "training_parameters:\n  model_name: resnet18\n  number_of_epochs:\n" + _indented(BILLION_LAUGHS, 4))
    result = _run_bounded(f"""
        from visionsweep.errors import SettingsError
        from visionsweep.sweep.job import load_job
        try:
            load_job({str(job)!r})
        except SettingsError as error:
            print(error)
        """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "invalid job file value" in result.stdout and _repeated_values(result.stdout, job) >= 9**9


def test_a_billion_laughs_mltable_is_refused_at_once(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _write_jsonl(tmp_path / "train.jsonl", [{"image_url": "images/a.png", "label": "a"}])
    # Valid apart from the bomb: without the alias budget this MLTable would be read.
    (tmp_path / "MLTable").write_text("paths:\n  - file: ./train.jsonl\ntransformations:\n  - read_json_lines:\n"
                                      "      encoding: utf8\n  - laughs:\n" + _indented(BILLION_LAUGHS, 6))
    result = _run_bounded(f"""
        from visionsweep.data.jsonl import read_labeled_data
        from visionsweep.errors import DataError
        try:
            read_labeled_data({str(tmp_path)!r}, "image_classification")
        except DataError as error:
            print(error)
        """)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _repeated_values(result.stdout, tmp_path / "MLTable") >= 9**9


def test_set_options_and_yolo_data_yaml_go_through_the_same_reader(tmp_path):
    flow = "[" + ", ".join(line.removeprefix("- ") for line in BILLION_LAUGHS.splitlines()) + "]"
    with pytest.raises(SettingsError, match=r"--set tile_grid_size: its aliases \(\*name\) repeat"):
        parse_set_options(["tile_grid_size=" + flow])
    root = tmp_path / "yolo"
    _image(root / "a.jpg")
    (root / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text("nc: 2\nnames: [cat, dog]\nnames: [dog, cat]\n")
    with pytest.raises(DataError, match=r"data\.yaml: line 3: duplicate key 'names' \(first given at line 2\)"):
        import_yolo(root)
    (root / "data.yaml").write_text("names:\n" + _indented(BILLION_LAUGHS, 2))
    with pytest.raises(DataError, match=r"data\.yaml: its aliases"):
        import_yolo(root)


def test_aliases_within_the_budget_and_merge_keys_still_work(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("base: &base {learning_rate: 0.01}\n")
    assert load_settings_file(settings) == {"base": {"learning_rate": 0.01}}
    job = tmp_path / "job.yaml"
    (tmp_path / "train.jsonl").write_text("")
    job.write_text(textwrap.dedent("""\
        type: automl
        task: image_classification
        primary_metric: accuracy
        training_data: {type: uri_file, path: train.jsonl}
        limits: {max_trials: 4}
        sweep: {sampling_algorithm: random}
        search_space:
          - &resnets
            model_name: {type: choice, values: [resnet18, resnet34]}
            learning_rate: {type: uniform, min_value: 0.001, max_value: 0.01}
          - <<: *resnets
            model_name: {type: choice, values: [resnet50]}
        """))
    spaces = load_job(job).search_space.to_raw()
    assert spaces[1]["learning_rate"] == spaces[0]["learning_rate"]
    assert spaces[1]["model_name"]["values"] == ["resnet50"]  # the key beside '<<' wins, as YAML says


@pytest.mark.parametrize("name, text, key, lines", [
    ("settings.yaml", "learning_rate: 0.01\nnumber_of_epochs: 3\nlearning_rate: 0.1\n", "learning_rate", (3, 1)),
    ("settings.json", '{\n  "seed": 1,\n  "seed": 2\n}\n', "seed", (3, 2)),
])
def test_a_duplicate_key_in_a_settings_file_names_the_key_and_both_lines(tmp_path, name, text, key, lines):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SettingsError) as caught:
        load_settings_file(path)
    assert caught.value.problems == [
        f"{path}: line {lines[0]}: duplicate key {key!r} (first given at line {lines[1]}); give each key once"]


def test_a_duplicate_key_in_a_job_file_or_an_mltable_names_the_key_and_both_lines(tmp_path):
    (tmp_path / "train.jsonl").write_text("")
    job = tmp_path / "job.yaml"
    job.write_text("type: automl\ntask: image_classification\nprimary_metric: accuracy\n"
                   "training_data: {type: uri_file, path: train.jsonl}\n"
                   "training_parameters:\n  learning_rate: 0.01\n  number_of_epochs: 3\n  learning_rate: 0.2\n")
    with pytest.raises(SettingsError, match=r"job\.yaml: line 8: duplicate key 'learning_rate' \(first given at "
                                            r"line 6\)"):
        load_job(job)
    (tmp_path / "MLTable").write_text("paths:\n  - file: a.jsonl\ntransformations:\n  - read_json_lines: {}\n"
                                      "paths:\n  - file: b.jsonl\n")
    with pytest.raises(DataError, match=r"MLTable: line 5: duplicate key 'paths' \(first given at line 1\)"):
        read_labeled_data(tmp_path, CLS)


def test_settings_files_over_one_mib_and_recursive_aliases_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("learning_rate: 0.01\n" + "#" * (1 << 20) + "\n")
    with pytest.raises(SettingsError, match=r"big\.yaml is larger than 1,048,576 bytes"):
        load_settings_file(big)
    loop = tmp_path / "loop.yaml"
    loop.write_text("tile_grid_size: &grid [3, *grid]\n")
    with pytest.raises(SettingsError, match="an alias at line 1 refers to a value that contains it"):
        load_settings_file(loop)
    python_object = tmp_path / "object.yaml"
    python_object.write_text("seed: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(SettingsError, match="could not determine a constructor"):
        load_settings_file(python_object)


# --- 9. Upper bounds of sizes and counts --------------------------------------------------------------


@pytest.mark.parametrize("task, key, largest, base", [
    (CLS, "train_crop_size", 4096, {"valid_crop_size": 224}),
    (CLS, "valid_crop_size", 4096, {"valid_resize_size": 4096, "train_crop_size": 224}),
    (CLS, "valid_resize_size", 4096, {}),
    (OD, "min_size", 4096, {**RCNN, "max_size": 4096}),
    (OD, "max_size", 4096, RCNN),
    (OD, "img_size", 4096, {}),
    (CLS, "training_batch_size", 1024, {}),
    (CLS, "validation_batch_size", 1024, {}),
    (CLS, "grad_accumulation_step", 1024, {}),
    (CLS, "number_of_epochs", 10_000, {}),
    (CLS, "early_stopping_patience", 10_000, {}),
    (CLS, "early_stopping_delay", 10_000, {}),
    (CLS, "evaluation_frequency", 10_000, {}),
    (CLS, "checkpoint_frequency", 10_000, {}),
    (CLS, "step_lr_step_size", 10_000, {}),
    (CLS, "warmup_cosine_lr_warmup_epochs", 10_000, {}),
    (CLS, "num_workers", 64, {}),
    (CLS, "seed", 4_294_967_295, {}),
    (OD, "box_detections_per_img", 10_000, RCNN),
    ("image_instance_segmentation", "max_number_of_polygon_points", 10_000, {}),
    (CLS, "n_steps", 1000, {}),
])
def test_every_size_and_count_setting_has_a_maximum(task, key, largest, base):
    model = {"model_name": "resnet18"} if task in (CLS, ML) else {}
    assert getattr(resolve_settings(task, {**model, **base, key: largest}), key) == largest
    with pytest.raises(SettingsError) as caught:
        resolve_settings(task, {**model, **base, key: largest + 1})
    [problem] = [p for p in caught.value.problems if p.startswith(key)]
    assert problem == (f"{key}: got {largest + 1}; Input should be less than or equal to {largest} "
                       "(docs/security.md gives the reason for each size and count limit)")


def test_the_maxima_keep_every_reference_default_and_documented_example():
    # spec/sweeps-and-peers.md's detection sweep, and the reference defaults of each task
    assert resolve_settings(OD, {"image_size": 960, "tile_grid_size": "5x3"}).img_size == 960
    assert resolve_settings(OD, {**RCNN, "min_size": 800, "max_size": 1333, "tile_grid_size": "3x2"}).min_size == 800
    for task in (CLS, ML, OD, "image_instance_segmentation"):
        resolve_settings(task, {})
    assert resolve_settings(CLS, {"model_name": "vits16r224"}).training_batch_size == 128


def test_a_tile_grid_number_under_one_or_over_sixteen_says_so():
    with pytest.raises(SettingsError) as caught:
        resolve_settings(OD, {"tile_grid_size": "0x2"})
    assert caught.value.problems == [
        "tile_grid_size: got '0x2'; each number must be at least 1 (COLUMNSxROWS, e.g. 3x2)"]
    with pytest.raises(SettingsError) as caught:
        resolve_settings(OD, {"tile_grid_size": "1000x1000"})
    assert caught.value.problems == [
        "tile_grid_size: got '1000x1000'; each number must be at most 16 (COLUMNSxROWS, e.g. 3x2): a grid of c x r "
        "tiles costs about 1 + c r model passes per image"]
    assert resolve_settings(OD, {"tile_grid_size": [16, 1]}).tile_grid_size == (16, 1)


def test_0x2_from_the_command_line_or_a_file_is_a_grid_not_hexadecimal_2(tmp_path, capsys):
    # YAML 1.1 reads 0x2 as the integer 2 (and 010 as 8): the grid's zero would vanish unreported.
    assert parse_set_options(["tile_grid_size=0x2", "seed=010", "number_of_epochs=1_000", "learning_rate=0.5"]) == {
        "tile_grid_size": "0x2", "seed": "010", "number_of_epochs": 1000, "learning_rate": 0.5}
    config = tmp_path / "settings.yml"
    config.write_text("tile_grid_size: 0x2\nmodel_name: fasterrcnn_resnet18_fpn\n")
    assert load_settings_file(config)["tile_grid_size"] == "0x2"
    for options in (["--set", "tile_grid_size=0x2"], ["--config", str(config)]):
        code = main(["validate-data", "--task", OD, "--data", str(tmp_path / "none.jsonl"), *options])
        assert code == 2
        assert "tile_grid_size: got '0x2'; each number must be at least 1 (COLUMNSxROWS, e.g. 3x2)" in \
            capsys.readouterr().err
    assert resolve_settings(CLS, {"seed": "010"}).seed == 10


def test_images_too_small_for_the_tile_grid_are_bad_records_before_training(tmp_path, capsys):
    # 3x2 tiles with overlap 0.25: a 640 x 480 image gives 256 x 274 pixel tiles, a 64 x 48 one 25.6 x 27.4.
    data = _detection_data(tmp_path, [(640, 480), (640, 480), (640, 480), (64, 48), (640, 480)])
    settings = ["--set", "model_name=fasterrcnn_resnet18_fpn", "--set", "tile_grid_size=3x2", "--set", "seed=0",
                "--set", "pretrained=false", "--set", "number_of_epochs=1", "--set", "min_size=64",
                "--set", "max_size=128"]
    assert main(["validate-data", "--task", OD, "--data", str(data), *settings]) == 0
    out = capsys.readouterr().out
    assert "skipped (too small for tile_grid_size): 1" in out
    assert ("data.jsonl:4 (images/3.png): too small for tile_grid_size: " + str(tmp_path / "images" / "3.png") +
            " is 64 x 48 pixels: tile_grid_size 3x2 with overlap 0.25 gives tiles of 25.6 x 27.4 pixels, under the "
            "32 a tile needs; a grid of at most 2x1 fits it") in out
    assert "training images: 3, validation images: 1" in out
    # ignore_data_errors=false makes it an error; a grid that fits nothing leaves no usable image.
    assert main(["validate-data", "--task", OD, "--data", str(data), *settings,
                 "--set", "ignore_data_errors=false"]) == 2
    assert "1 bad record(s) and ignore_data_errors is false" in capsys.readouterr().err
    small = _detection_data(tmp_path / "small", [(64, 48)] * 3)
    assert main(["train", "--task", OD, "--data", str(small), "--output", str(tmp_path / "run"), *settings]) == 2
    err = capsys.readouterr().err
    assert "error: no usable image" in err and "skipped (too small for tile_grid_size): 3" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


# --- 10. Single-class multi-label, background-only detection ------------------------------------------


def test_single_class_multilabel_metrics_are_those_of_the_one_class():
    probabilities = np.array([[0.9], [0.2], [0.7], [0.4], [0.1]])
    truth = np.array([[1], [0], [0], [1], [0]])  # predicted: 1, 0, 1, 0, 0: one true positive, one FP, one FN
    metrics = classification_metrics(probabilities, truth, ["cat"], multilabel=True)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    for name in ("precision_score", "recall_score", "f1_score"):
        assert [metrics[f"{name}_{a}"] for a in ("macro", "micro", "weighted")] == [0.5, 0.5, 0.5]
        assert metrics[f"{name}_classwise"] == {"cat": 0.5}
    assert metrics["iou_classwise"] == {"cat": pytest.approx(1 / 3)}
    # per image: 1 (hit), 0 (nothing true or predicted counts 0, as sklearn's zero_division=0), 0, 0, 0
    assert metrics["iou"] == pytest.approx(1 / 5)
    assert metrics["AUC_macro"] == pytest.approx(5 / 6)  # 5 of the 6 positive-negative pairs are ordered right


def test_single_class_multilabel_trains_scores_and_saves_a_model(tmp_path):
    data = write_color_dataset(tmp_path / "data", per_class=4, size=16, multilabel=True)
    lines = [json.loads(line) for line in data.read_text().splitlines()]
    for line in lines:  # keep only the 'striped' label: each image is striped or not
        line["label"] = [name for name in line["label"] if name == "striped"]
    _write_jsonl(data, lines)
    from visionsweep.training import train

    result = train(ML, data, data, settings={**TINY_SETTINGS, "number_of_epochs": 1}, output=tmp_path / "run",
                   progress=False)
    assert json.loads((result.model_dir / "labels.json").read_text()) == ["striped"]
    assert (result.model_dir / "model.pt").is_file() and 0.0 <= result.best_score <= 1.0


def test_detection_data_of_background_images_only_is_a_data_problem(tmp_path, capsys):
    data = _detection_data(tmp_path, [(64, 64)] * 4, with_objects=False)
    assert main(["validate-data", "--task", OD, "--data", str(data), "--set", "pretrained=false"]) == 2
    err = capsys.readouterr().err
    assert (f"error: no objects in the training images of {data}: all 3 image(s) are background images (empty "
            "label lists). This is a data problem: detection needs labelled objects") in err
    assert "num_classes" not in err and "Traceback" not in err
    labelless = write_color_dataset(tmp_path / "ml", per_class=3, size=8, multilabel=True)
    _write_jsonl(labelless, [{**json.loads(line), "label": []} for line in labelless.read_text().splitlines()])
    with pytest.raises(DataError, match="none of the 5 training images has a label"):
        from visionsweep import api

        api.validate_data(ML, labelless, settings={"seed": 0})


# --- 11. Every setting checked up front, in validate-data as in train ---------------------------------


@pytest.mark.parametrize("setting, message", [
    ("device=tpu", "device: got 'tpu'; use auto, cpu, cuda or cuda:N (N the index of a GPU, e.g. cuda:0)"),
    ("layers_to_freeze=99", "layers_to_freeze: got 99; resnet18 has 5 layer groups (conv1+bn1, layer1, layer2, "
                            "layer3, layer4), so use 0 to 5"),
    ("pretrained_weights=/no/such/weights.pth", "pretrained_weights: file /no/such/weights.pth does not exist"),
])
def test_validate_data_refuses_what_train_refuses_with_the_same_message(tmp_path, capsys, setting, message):
    data = write_color_dataset(tmp_path / "data", per_class=3, size=8)
    options = ["--task", CLS, "--data", str(data), "--set", "model_name=resnet18", "--set", setting]
    assert main(["validate-data", *options]) == 2
    validate_err = capsys.readouterr().err
    assert f"  - {message}" in validate_err and "Traceback" not in validate_err
    assert main(["train", *options, "--output", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == validate_err
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a GPU")
def test_validate_data_refuses_cuda_on_a_machine_without_a_gpu(tmp_path, capsys):
    data = write_color_dataset(tmp_path / "data", per_class=3, size=8)
    assert main(["validate-data", "--task", CLS, "--data", str(data), "--set", "device=cuda:0"]) == 2
    assert "device: got 'cuda:0' but no CUDA GPU is available; use auto or cpu" in capsys.readouterr().err


def test_security_page_gives_every_upper_bound_of_the_schema():
    from visionsweep.settings import Settings

    page = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    bounded = {name: item.le for name, field in Settings.model_fields.items()
               for item in _constraints(field.annotation) + list(field.metadata)
               if type(getattr(item, "le", None)) is int}
    assert len(bounded) >= 20
    for name, largest in bounded.items():
        [row] = [row for row in rows if f"`{name}`" in row.split("|")[1]]
        assert f"{largest:,}" in row or str(largest) in row, (name, largest, row)


def _constraints(annotation):
    """The constraint objects inside ``Optional[Annotated[int, Field(...)]]`` and the like."""
    from typing import get_args

    found = list(getattr(annotation, "__metadata__", ()))
    for argument in get_args(annotation):
        found += _constraints(argument)
    return [m for item in found for m in getattr(item, "metadata", [item])]
