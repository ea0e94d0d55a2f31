"""A setting given twice, or two settings that contradict each other, is an error, never a silent
choice; a setting used as given against this machine's advice is a note that is shown.

--set given twice, duplicate keys in advanced_settings and in user JSON (JSON Lines records, COCO
files), pretrained_weights with pretrained=false, num_workers above the CPU count."""
from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from conftest import TINY_SETTINGS, write_color_dataset
from visionsweep.cli import main
from visionsweep.data.jsonl import read_json_lines
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError, SettingsError
from visionsweep.json_files import DuplicateJsonKeyError, parse_json
from visionsweep.settings import override_settings, parse_set_options, resolve_settings

CLS = "image_classification"
OD = "image_object_detection"


def _problems(task, values):
    with pytest.raises(SettingsError) as raised:
        resolve_settings(task, values)
    return raised.value.problems


# --- 1. --set given twice ------------------------------------------------------------------------------


def test_a_set_option_given_twice_is_an_error_naming_the_key_and_both_values():
    with pytest.raises(SettingsError) as raised:
        parse_set_options(["learning_rate=0.1", "momentum=0.8", "learning_rate=0.2"])
    assert raised.value.problems == ["--set learning_rate: given twice, as '0.1' and as '0.2'; give it once"]
    # The same value twice is refused too, as a settings file may not give a key twice.
    with pytest.raises(SettingsError, match=r"--set seed: given twice, as '1' and as '1'"):
        parse_set_options(["seed=1", "seed=1"])
    # Two spellings of one setting in --set are the resolver's "same setting" problem.
    values = parse_set_options(["lr_scheduler=step", "learning_rate_scheduler=warmup_cosine"])
    assert _problems(CLS, values) == ["learning_rate_scheduler and lr_scheduler are the same setting; give only one"]


def test_set_given_twice_on_the_command_line_is_refused(tmp_path, capsys):
    data = write_color_dataset(tmp_path / "data", per_class=3, size=8)
    code = main(["validate-data", "--task", CLS, "--data", str(data), "--set", "learning_rate=0.1",
                 "--set", "learning_rate=0.2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "  - --set learning_rate: given twice, as '0.1' and as '0.2'; give it once" in err
    assert "Traceback" not in err


def test_a_convert_option_given_twice_is_refused_under_its_own_name(tmp_path, capsys):
    code = main(["convert", "--from", "csv", str(tmp_path / "labels.csv"), "--output", str(tmp_path / "out.jsonl"),
                 "--option", "multilabel=true", "--option", "multilabel=false"])
    assert code == 2
    assert "  - --option multilabel: given twice, as 'true' and as 'false'; give it once" in capsys.readouterr().err


def test_set_wins_over_config_whatever_the_spelling(tmp_path, capsys):
    config = {"learning_rate_scheduler": "step", "learning_rate": 0.05,
              "advanced_settings": '{"apply_mosaic_for_yolo": true}'}
    merged = override_settings(config, parse_set_options(["lr_scheduler=warmup_cosine", "apply_mosaic_for_yolo=false",
                                                          "learning_rate=0.02"]))
    assert merged == {"advanced_settings": {}, "lr_scheduler": "warmup_cosine", "apply_mosaic_for_yolo": False,
                      "learning_rate": 0.02}
    settings = resolve_settings(OD, {**merged, "model_name": "yolov5"})
    assert (settings.lr_scheduler, settings.apply_mosaic_for_yolo, settings.learning_rate) == ("warmup_cosine", False,
                                                                                            0.02)
    # Through the command line: the settings file spells it learning_rate_scheduler, --set lr_scheduler.
    path = tmp_path / "settings.yml"
    path.write_text("learning_rate_scheduler: step\n")
    data = write_color_dataset(tmp_path / "data", per_class=3, size=8)
    assert main(["validate-data", "--task", CLS, "--data", str(data), "--config", str(path),
                 "--set", "lr_scheduler=warmup_cosine"]) == 0
    assert "same setting" not in capsys.readouterr().err


# --- 2. duplicate keys in JSON that users write ------------------------------------------------------------


def test_a_key_twice_in_advanced_settings_is_an_error():
    assert _problems(OD, {"model_name": "yolov5", "advanced_settings":
                          '{"apply_mosaic_for_yolo": false, "apply_mosaic_for_yolo": true}'}) == [
        "advanced_settings: the key 'apply_mosaic_for_yolo' is given twice (false, then true); give each key once"]


def test_a_key_in_advanced_settings_and_as_a_setting_is_an_error():
    assert _problems(CLS, {"apply_automl_train_augmentations": True,
                           "advanced_settings": '{"apply_automl_train_augmentations": false}'}) == [
        "apply_automl_train_augmentations: given both in advanced_settings (False) and as a setting (True); "
        "give it once"]
    # Alone, either place works.
    assert not resolve_settings(CLS, {"advanced_settings": '{"apply_automl_train_augmentations": false}'}
                                ).apply_automl_train_augmentations


def test_parse_json_refuses_a_repeated_key_at_any_depth_and_shortens_long_values():
    assert parse_json('{"a": {"b": 1}, "c": [{"d": 2}]}') == {"a": {"b": 1}, "c": [{"d": 2}]}
    with pytest.raises(DuplicateJsonKeyError) as raised:
        parse_json('{"images": [], "annotations": [{"bbox": [1, 2, 3, 4], "bbox": [5, 6, 7, 8]}]}')
    assert str(raised.value) == "the key 'bbox' is given twice ([1, 2, 3, 4], then [5, 6, 7, 8]); give each key once"
    long = json.dumps(list(range(100)))
    with pytest.raises(DuplicateJsonKeyError) as raised:
        parse_json(f'{{"annotations": {long}, "annotations": []}}')
    assert str(raised.value) == ("the key 'annotations' is given twice ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, "
                                 "13, 14, 15, 16..., then []); give each key once")


def test_a_json_lines_record_with_a_key_twice_is_one_malformed_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"image_url": "a.png", "label": "cat"}\n'
                    '{"image_url": "b.png", "label": "cat", "label": "dog"}\n'
                    '{"image_url": "c.png", "label": "dog"}\n')
    report = DataReport(source=str(path))
    items = list(read_json_lines(path, report))
    assert [item for _, item in items] == [{"image_url": "a.png", "label": "cat"}, None,
                                           {"image_url": "c.png", "label": "dog"}]
    assert "the key 'label' is given twice (\"cat\", then \"dog\"); give each key once" in report.summary()
    assert "data.jsonl:2" in report.summary()


def test_a_coco_file_with_a_key_twice_is_refused_whole(tmp_path):
    from visionsweep.data.detection_formats.coco import import_coco

    coco = tmp_path / "coco.json"
    coco.write_text('{"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], '
                    '"annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4]}], '
                    '"annotations": [], "categories": [{"id": 1, "name": "can"}]}')
    with pytest.raises(DataError) as raised:
        import_coco(coco)
    assert str(raised.value) == (
        f"{coco} is not a COCO file that can be read unambiguously: the key 'annotations' is given twice "
        '([{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0..., then []); give each key once')


# --- 3. pretrained_weights with pretrained=false --------------------------------------------------------------


def test_pretrained_weights_with_pretrained_false_is_an_error(tmp_path, capsys):
    assert _problems(CLS, {"pretrained": False, "pretrained_weights": "w.pth"}) == [
        "pretrained_weights: got 'w.pth' but pretrained is false, which trains from scratch; remove "
        "pretrained_weights, or set pretrained=true to start from the file"]
    assert resolve_settings(CLS, {"pretrained_weights": "w.pth"}).pretrained  # pretrained defaults to true
    data = write_color_dataset(tmp_path / "data", per_class=3, size=8)
    code = main(["train", "--task", CLS, "--data", str(data), "--output", str(tmp_path / "run"),
                 "--set", "pretrained=false", "--set", "pretrained_weights=w.pth"])
    assert code == 2
    assert "pretrained_weights: got 'w.pth' but pretrained is false" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_model_trained_from_a_weights_file_still_loads_for_prediction(tmp_path):
    from visionsweep import train
    from visionsweep.inference.model_folder import load_trained_model
    from visionsweep.models import create_model

    weights = tmp_path / "start.pth"
    torch.save(create_model("resnet18", 5, pretrained=False).state_dict(), weights)
    data = write_color_dataset(tmp_path / "data", per_class=3, size=8)
    settings = {**TINY_SETTINGS, "number_of_epochs": 1, "pretrained": True, "pretrained_weights": str(weights)}
    result = train(CLS, data, settings=settings, output=tmp_path / "run", progress=False)
    assert json.loads((result.run_dir / "settings.json").read_text())["pretrained_weights"] == str(weights)
    # Loading sets pretrained to false; the stored weights file must not then contradict it.
    weights.unlink()
    trained = load_trained_model(result.run_dir)
    assert (trained.settings.pretrained, trained.settings.pretrained_weights) == (False, None)


# --- 4. num_workers above the CPU count -----------------------------------------------------------------------


def test_num_workers_above_the_cpu_count_is_used_as_given_with_a_note(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    settings = resolve_settings(CLS, {"num_workers": 6})
    assert settings.num_workers == 6
    assert settings.notes == ["num_workers=6 is more than the 2 CPUs here; it is used as given (more data loader "
                              "processes than CPUs add memory, not speed, unless the images load from slow storage)"]
    default = resolve_settings(CLS, {})
    assert (default.num_workers, default.notes) == (2, [])  # the reference's 8, capped at the 2 CPUs
    assert resolve_settings(CLS, {"num_workers": 2}).notes == []


def test_validate_data_shows_the_setting_notes(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    data = write_color_dataset(tmp_path / "data", per_class=3, size=8)
    with caplog.at_level(logging.WARNING, logger="visionsweep"):
        assert main(["validate-data", "--task", CLS, "--data", str(data), "--set", "num_workers=3",
                     "--set", "log_verbose_metrics=true"]) == 0
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("setting note:")]
    assert notes == ["setting note: log_verbose_metrics=True is ignored: it only configures Azure services",
                     "setting note: num_workers=3 is more than the 2 CPUs here; it is used as given (more data loader "
                     "processes than CPUs add memory, not speed, unless the images load from slow storage)"]
