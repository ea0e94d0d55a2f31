"""The settings schema: every key accepted, rejected out of range and of the wrong type; defaults."""
from __future__ import annotations

import json

import pytest

from visionsweep.errors import SettingsError
from visionsweep.settings import Settings, load_settings_file, parse_set_options, resolve_settings
from visionsweep.tasks import Task

CLS, ML, OD, IS = Task.CLASSIFICATION, Task.MULTILABEL, Task.OBJECT_DETECTION, Task.INSTANCE_SEGMENTATION

# key: (task and model to test it with, a good value, an out-of-range value, a wrong-type value).
# None means the key has no range to leave (booleans, free strings) or no wrong type.
CASES = {
    "model_name": ((CLS, "resnet18"), "resnet18", "resnet9", 5),
    "number_of_epochs": ((CLS, "resnet18"), 3, 0, "three"),
    "training_batch_size": ((CLS, "resnet18"), 8, 0, "eight"),
    "validation_batch_size": ((CLS, "resnet18"), 8, -1, [8]),
    "grad_accumulation_step": ((CLS, "resnet18"), 2, 0, "two"),
    "early_stopping": ((CLS, "resnet18"), False, None, "maybe"),
    "early_stopping_patience": ((CLS, "resnet18"), 2, 0, 2.5),
    "early_stopping_delay": ((CLS, "resnet18"), 0, -1, "soon"),
    "learning_rate": ((CLS, "resnet18"), 0.001, 1.5, "fast"),
    "lr_scheduler": ((CLS, "resnet18"), "step", "cosine", 3),
    "step_lr_gamma": ((CLS, "resnet18"), 0.1, 1.1, "half"),
    "step_lr_step_size": ((CLS, "resnet18"), 3, 0, "x"),
    "warmup_cosine_lr_cycles": ((CLS, "resnet18"), 0.5, -0.1, "x"),
    "warmup_cosine_lr_warmup_epochs": ((CLS, "resnet18"), 0, -1, "x"),
    "optimizer": ((CLS, "resnet18"), "adamw", "rmsprop", 1),
    "momentum": ((CLS, "resnet18"), 0.5, 1.5, "x"),
    "weight_decay": ((CLS, "resnet18"), 0.01, -0.1, "x"),
    "nesterov": ((CLS, "resnet18"), False, None, "perhaps"),
    "beta1": ((CLS, "resnet18"), 0.8, 1.0, "x"),
    "beta2": ((CLS, "resnet18"), 0.99, 1.0, "x"),
    "amsgrad": ((CLS, "resnet18"), True, None, "x"),
    "evaluation_frequency": ((CLS, "resnet18"), 2, 0, "x"),
    "checkpoint_frequency": ((CLS, "resnet18"), 2, 0, "x"),
    "checkpoint_run_id": ((CLS, "resnet18"), "runs/a", None, 3),
    "checkpoint_filename": ((CLS, "resnet18"), "a.pt", None, 3),
    "layers_to_freeze": ((CLS, "resnet18"), 2, -1, "x"),
    "grad_clip_type": ((CLS, "resnet18"), "norm", "l2", 1),
    "validation_size": ((CLS, "resnet18"), 0.3, 1.0, "x"),
    "seed": ((CLS, "resnet18"), 7, -1, "x"),
    "deterministic": ((CLS, "resnet18"), True, None, "x"),
    "distributed": ((CLS, "resnet18"), False, None, "x"),
    "num_workers": ((CLS, "resnet18"), 0, -1, "x"),
    "ignore_data_errors": ((CLS, "resnet18"), False, None, "x"),
    "primary_metric": ((CLS, "resnet18"), "f1_score_macro", "iou", 3),
    "log_training_metrics": ((CLS, "resnet18"), "Enable", "On", 1),
    "log_validation_loss": ((OD, "fasterrcnn_resnet18_fpn"), "Disable", "Off", 1),
    "enable_onnx_normalization": ((CLS, "resnet18"), True, None, "x"),
    "export_onnx": ((CLS, "resnet18"), False, None, "x"),
    "save_mlflow": ((CLS, "resnet18"), False, None, "x"),
    "write_report": ((CLS, "resnet18"), False, None, "x"),
    "apply_automl_train_augmentations": ((CLS, "resnet18"), False, None, "x"),
    "pretrained": ((CLS, "resnet18"), False, None, "x"),
    "pretrained_weights": ((CLS, "resnet18"), "w.pth", None, 3),
    "device": ((CLS, "resnet18"), "cpu", None, 3),
    "mixed_precision": ((CLS, "resnet18"), False, None, "x"),
    "max_image_pixels": ((CLS, "resnet18"), 200_000_000, 1_000_000_001, "lots"),
    "weighted_loss": ((CLS, "resnet18"), 2, 3, "x"),
    "imbalance_rate_threshold": ((CLS, "resnet18"), 3, -1, "x"),
    "valid_resize_size": ((CLS, "resnet18"), 300, 0, "x"),
    "valid_crop_size": ((CLS, "resnet18"), 200, 0, "x"),
    "train_crop_size": ((CLS, "resnet18"), 200, 0, "x"),
    "min_size": ((OD, "fasterrcnn_resnet18_fpn"), 400, 0, "x"),
    "max_size": ((OD, "fasterrcnn_resnet18_fpn"), 1000, 0, "x"),
    "box_score_thresh": ((OD, "fasterrcnn_resnet18_fpn"), 0.2, 1.2, "x"),
    "nms_iou_thresh": ((OD, "fasterrcnn_resnet18_fpn"), 0.4, -0.2, "x"),
    "box_detections_per_img": ((OD, "fasterrcnn_resnet18_fpn"), 50, 0, "x"),
    "validation_metric_type": ((OD, "fasterrcnn_resnet18_fpn"), "coco", "map", 1),
    "validation_iou_threshold": ((OD, "fasterrcnn_resnet18_fpn"), 0.75, 0.05, "x"),
    "tile_grid_size": ((OD, "fasterrcnn_resnet18_fpn"), "3x2", (0, 2), "3y2"),
    "tile_overlap_ratio": ((OD, "fasterrcnn_resnet18_fpn"), 0.1, 1.0, "x"),
    "tile_predictions_nms_thresh": ((OD, "fasterrcnn_resnet18_fpn"), 0.3, 1.5, "x"),
    "img_size": ((OD, "yolov5"), 320, 0, "x"),
    "model_size": ((OD, "yolov5"), "small", "tiny", 1),
    "multi_scale": ((OD, "yolov5"), True, None, "x"),
    "apply_mosaic_for_yolo": ((OD, "yolov5"), False, None, "x"),
    "giou": ((OD, "yolov5"), 0.1, -1.0, "x"),
    "cls": ((OD, "yolov5"), 0.5, -1.0, "x"),
    "cls_pw": ((OD, "yolov5"), 2.0, 0.0, "x"),
    "obj": ((OD, "yolov5"), 0.5, -1.0, "x"),
    "obj_pw": ((OD, "yolov5"), 2.0, 0.0, "x"),
    "anchor_t": ((OD, "yolov5"), 3.0, 1.0, "x"),
    "fl_gamma": ((OD, "yolov5"), 1.5, -1.0, "x"),
    "degrees": ((OD, "yolov5"), 10.0, 200.0, "x"),
    "translate": ((OD, "yolov5"), 0.1, 1.0, "x"),
    "scale": ((OD, "yolov5"), 0.3, 1.0, "x"),
    "shear": ((OD, "yolov5"), 2.0, 90.0, "x"),
    "mask_pixel_score_threshold": ((IS, None), 0.6, 1.5, "x"),
    "max_number_of_polygon_points": ((IS, None), 50, 2, "x"),
    "export_as_image": ((IS, None), True, None, "x"),
    "image_type": ((IS, None), "PNG", "gif", 1),
    "model_explainability": ((CLS, "resnet18"), True, None, "x"),
    "xai_algorithm": ((ML, "resnet18"), "integrated_gradients", "lime", 1),
    "visualizations": ((CLS, "resnet18"), False, None, "x"),
    "attributions": ((CLS, "resnet18"), True, None, "x"),
    "confidence_score_threshold_multilabel": ((ML, "resnet18"), 0.3, 1.5, "x"),
    "n_steps": ((CLS, "resnet18"), 4, 1, 2.5),
    "approximation_method": ((CLS, "resnet18"), "gausslegendre", "simpson", 1),
    "xrai_fast": ((CLS, "resnet18"), False, None, "x"),
}


def _resolve(task_model, values):
    task, model = task_model
    base = {"model_name": model} if model else {}
    return resolve_settings(task, {**base, **values})


def test_every_key_has_a_case():
    assert set(CASES) == set(Settings.model_fields) - {"task"}


@pytest.mark.parametrize("key", sorted(CASES))
def test_good_value_accepted(key):
    task_model, good, _, _ = CASES[key]
    settings = _resolve(task_model, {key: good})
    expected = {"tile_grid_size": (3, 2), "image_type": "png"}.get(key, good)
    assert getattr(settings, key) == expected


@pytest.mark.parametrize("key", sorted(k for k, c in CASES.items() if c[2] is not None))
def test_out_of_range_rejected_naming_the_key(key):
    task_model, _, bad, _ = CASES[key]
    with pytest.raises(SettingsError) as caught:
        _resolve(task_model, {key: bad})
    assert key in str(caught.value)
    assert repr(bad) in str(caught.value)


@pytest.mark.parametrize("key", sorted(CASES))
def test_wrong_type_rejected_naming_the_key(key):
    task_model, _, _, wrong = CASES[key]
    with pytest.raises(SettingsError) as caught:
        _resolve(task_model, {key: wrong})
    assert key in str(caught.value)


def test_several_bad_keys_are_reported_together():
    with pytest.raises(SettingsError) as caught:
        resolve_settings(CLS, {"learning_rate": -1, "optimizer": "rmsprop", "number_of_epochs": 0, "batchsize": 3})
    problems = caught.value.problems
    assert len(problems) == 4
    assert {p.split(":")[0] for p in problems} == {"learning_rate", "optimizer", "number_of_epochs", "batchsize"}


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(SettingsError, match="did you mean 'learning_rate'"):
        resolve_settings(CLS, {"learning_rat": 0.1})
    with pytest.raises(SettingsError, match="did you mean 'number_of_epochs'"):
        resolve_settings(CLS, {"number_of_epoch": 3})


def test_key_of_another_task_is_an_error():
    with pytest.raises(SettingsError, match="min_size: does not apply to image_classification"):
        resolve_settings(CLS, {"min_size": 400})
    with pytest.raises(SettingsError, match="weighted_loss: does not apply to image_object_detection"):
        resolve_settings(OD, {"weighted_loss": 1})


def test_key_of_another_model_is_kept_as_a_note():
    settings = resolve_settings(OD, {"model_name": "fasterrcnn_resnet18_fpn", "img_size": 320})
    assert settings.notes == ["img_size=320 has no effect with model_name fasterrcnn_resnet18_fpn"]


def test_azure_only_keys_are_accepted_and_noted():
    settings = resolve_settings(CLS, {"log_verbose_metrics": False, "enable_code_generation": True})
    assert len(settings.notes) == 2 and all("only configures Azure" in n for n in settings.notes)


@pytest.mark.parametrize("task, model, epochs, train_batch, valid_batch, lr, clip", [
    (CLS, "resnet50", 15, 78, 78, 0.01, "value"),
    (ML, "resnet50", 15, 78, 78, 0.035, "value"),
    (CLS, "vits16r224", 15, 128, 128, 0.0125, "norm"),
    (CLS, "vitb16r224", 15, 48, 48, 0.0125, "norm"),
    (CLS, "vitl16r224", 15, 10, 10, 0.001, "norm"),
    (ML, "vits16r224", 15, 128, 128, 0.025, "norm"),
    (ML, "vitl16r224", 15, 10, 10, 0.002, "norm"),
    (OD, "yolov5", 30, 16, 16, 0.01, "value"),
    (OD, "fasterrcnn_resnet50_fpn", 15, 2, 1, 0.005, "value"),
    (IS, "maskrcnn_resnet50_fpn", 15, 2, 1, 0.005, "value"),
])
def test_per_model_defaults(task, model, epochs, train_batch, valid_batch, lr, clip):
    s = resolve_settings(task, {"model_name": model})
    assert (s.number_of_epochs, s.training_batch_size, s.validation_batch_size, s.learning_rate, s.grad_clip_type) == (
        epochs, train_batch, valid_batch, lr, clip)


def test_task_defaults():
    assert resolve_settings(CLS).model_name == "vitb16r224"
    assert resolve_settings(OD).model_name == "yolov5"
    assert resolve_settings(IS).model_name == "maskrcnn_resnet50_fpn"
    assert resolve_settings(ML).primary_metric == "iou"
    yolo = resolve_settings(OD)
    assert (yolo.img_size, yolo.model_size, yolo.box_score_thresh, yolo.nms_iou_thresh) == (640, "medium", 0.1, 0.5)
    rcnn = resolve_settings(OD, {"model_name": "retinanet_resnet50_fpn"})
    assert (rcnn.min_size, rcnn.max_size, rcnn.box_score_thresh, rcnn.box_detections_per_img) == (600, 1333, 0.3, 100)


def test_explicit_value_wins_over_model_default():
    assert resolve_settings(CLS, {"model_name": "vitl16r224", "learning_rate": 0.02}).learning_rate == 0.02


def test_vit_trains_at_its_validation_crop():
    assert resolve_settings(CLS, {"model_name": "vits16r224", "valid_crop_size": 160,
                                  "valid_resize_size": 180}).train_crop_size == 160
    with pytest.raises(SettingsError, match="needs train_crop_size == valid_crop_size"):
        resolve_settings(CLS, {"model_name": "vits16r224", "train_crop_size": 128})


def test_combination_rules():
    with pytest.raises(SettingsError, match="valid_crop_size .* larger than valid_resize_size"):
        resolve_settings(CLS, {"valid_crop_size": 300})
    with pytest.raises(SettingsError, match="nesterov=true needs momentum > 0"):
        resolve_settings(CLS, {"momentum": 0})
    assert resolve_settings(CLS, {"momentum": 0, "nesterov": False}).momentum == 0
    with pytest.raises(SettingsError, match="multiple of 32.*try 672"):
        resolve_settings(OD, {"img_size": 650})
    with pytest.raises(SettingsError, match=r"max_size \(300\) is smaller than min_size"):
        resolve_settings(IS, {"max_size": 300})


@pytest.mark.parametrize("text, grid", [("3x2", (3, 2)), ("3X2", (3, 2)), ("  3  x  2  ", (3, 2)),
                                        ("(3, 2)", (3, 2)), ([5, 3], (5, 3))])
def test_tile_grid_spellings(text, grid):
    assert resolve_settings(OD, {"tile_grid_size": text}).tile_grid_size == grid


@pytest.mark.parametrize("text", ["3x", "x", "0.5x3", "3x0.5", "3y2", "axb", "random string", "(3, 2, 3)",
                                  "(3.0, 2.0)", "(-1, -2)", "(0, 2)", "(1, 1)", "not a list"])
def test_tile_grid_rejections(text):
    with pytest.raises(SettingsError, match="tile_grid_size"):
        resolve_settings(OD, {"tile_grid_size": text})


def test_tiling_is_rejected_for_segmentation():
    with pytest.raises(SettingsError, match="tile_grid_size: does not apply to image_instance_segmentation"):
        resolve_settings(IS, {"tile_grid_size": "2x2"})


def test_lenient_numbers_and_booleans_from_text():
    s = resolve_settings(CLS, {"number_of_epochs": 4.0, "early_stopping": "no", "amsgrad": "on"})
    assert (s.number_of_epochs, s.early_stopping, s.amsgrad) == (4, False, True)
    with pytest.raises(SettingsError, match="number_of_epochs"):
        resolve_settings(CLS, {"number_of_epochs": 4.5})


def test_azure_v2_names_are_aliases():
    s = resolve_settings(OD, {"model_name": "fasterrcnn_resnet18_fpn", "box_score_threshold": 0.2,
                              "learning_rate_scheduler": "step", "gradient_accumulation_step": 3,
                              "tile_predictions_nms_threshold": 0.4, "validation_data_size": 0.1})
    assert (s.box_score_thresh, s.lr_scheduler, s.grad_accumulation_step, s.tile_predictions_nms_thresh,
            s.validation_size) == (0.2, "step", 3, 0.4, 0.1)
    with pytest.raises(SettingsError, match="same setting"):
        resolve_settings(CLS, {"training_crop_size": 200, "train_crop_size": 200})


def test_advanced_settings_json_string():
    s = resolve_settings(OD, {"advanced_settings": '{"apply_mosaic_for_yolo": false}'})
    assert s.apply_mosaic_for_yolo is False
    with pytest.raises(SettingsError, match="advanced_settings: unknown key"):
        resolve_settings(OD, {"advanced_settings": '{"mosaic": false}'})
    with pytest.raises(SettingsError, match="advanced_settings: not valid JSON"):
        resolve_settings(OD, {"advanced_settings": "{oops"})


def test_settings_from_files_and_set_options(tmp_path):
    yaml_file = tmp_path / "s.yml"
    yaml_file.write_text("learning_rate: 0.02\nmodel_name: resnet18\n")
    json_file = tmp_path / "s.json"
    json_file.write_text(json.dumps({"number_of_epochs": 3}))
    values = {**load_settings_file(yaml_file), **load_settings_file(json_file)}
    values.update(parse_set_options(["learning_rate=0.05", "early_stopping=false", "tile_grid_size=3x2"]))
    assert values == {"learning_rate": 0.05, "model_name": "resnet18", "number_of_epochs": 3,
                      "early_stopping": False, "tile_grid_size": "3x2"}
    with pytest.raises(SettingsError, match="KEY=VALUE"):
        parse_set_options(["learning_rate"])
    (tmp_path / "list.yml").write_text("- 1\n- 2\n")
    with pytest.raises(SettingsError, match="must hold a mapping"):
        load_settings_file(tmp_path / "list.yml")


def test_to_dict_holds_only_applicable_keys():
    cls = resolve_settings(CLS, {"model_name": "resnet18"}).to_dict()
    assert "valid_crop_size" in cls and "min_size" not in cls and "img_size" not in cls
    yolo = resolve_settings(OD).to_dict()
    assert "img_size" in yolo and "min_size" not in yolo and "weighted_loss" not in yolo


def test_settings_reference_page_is_up_to_date():
    from pathlib import Path

    from visionsweep.settings.reference import settings_reference

    page = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
    assert page.read_text() == settings_reference(), "regenerate: python -m visionsweep.settings.reference > docs/settings.md"
