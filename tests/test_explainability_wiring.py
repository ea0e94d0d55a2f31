"""Explainability wired through the package (docs/explainability.md): the settings, the Grad-CAM layer of
each model's registration, ``predict`` / ``explain`` lines in the reference's scoring fields
(``visualizations``, ``attributions``), the ``predict --set`` path, and every refusal as a clear error.
The scoring endpoint's side is in test_serving.py. The explanations themselves (each method's numbers,
the figure) are tests/test_explanations.py's."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from torch import nn

import visionsweep
from visionsweep.checkpoint import save_checkpoint
from visionsweep.cli import main
from visionsweep.errors import SettingsError
from visionsweep.models import create_model, get_model_spec, gradcam_layer
from visionsweep.settings import resolve_settings
from visionsweep.tasks import Task
from visionsweep.training.preflight import run_settings_problems
from conftest import TINY_SETTINGS, slow_variants, write_color_dataset
from jsonl_helpers import read_lines

CROP = TINY_SETTINGS["valid_crop_size"]  # 32
FAST = {"n_steps": 4}  # integrated gradients and XRAI: 4 steps instead of 50
CNNS = ("mobilenetv2", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnest50", "resnest101",
        "seresnext")
VITS = ("vits16r224", "vitb16r224", "vitl16r224")


# --- models --------------------------------------------------------------------------------------------


def _train(folder: Path, task: str, multilabel: bool, **settings) -> tuple[Path, list[Path]]:
    data = write_color_dataset(folder, per_class=2, multilabel=multilabel)
    result = visionsweep.train(task, data, data, output=folder / "run", progress=False,
                               settings={**TINY_SETTINGS, "number_of_epochs": 1, **settings})
    return result.run_dir, sorted((folder / "images").glob("*.png"))


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A tiny resnet18 (32 px, one epoch) with model.onnx, and its four images."""
    return _train(tmp_path_factory.mktemp("multiclass"), "image_classification", False, export_onnx=True)


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory) -> tuple[Path, list[Path]]:
    """A tiny multi-label resnet18 (red, blue, striped) and its four images."""
    return _train(tmp_path_factory.mktemp("multilabel"), "image_classification_multilabel", True)


def _untrained_checkpoint(path: Path, task: Task, settings: dict, labels=("a", "b")) -> Path:
    """A model folder's checkpoint written without training (the refusals never run the network)."""
    resolved = resolve_settings(task, {"pretrained": False, **settings})
    model = create_model(resolved.model_name, len(labels), task=task, **{
        key: value for key, value in settings.items() if key != "model_name"}, pretrained=False)
    return save_checkpoint(path / "model.pt", model=model, task=task.value, model_name=resolved.model_name,
                           labels=list(labels), settings=resolved.to_dict(), epoch=1, score=None, metrics={})


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    return _untrained_checkpoint(tmp_path_factory.mktemp("detector"), Task.OBJECT_DETECTION,
                                 {"model_name": "fasterrcnn_resnet18_fpn", "min_size": 64, "max_size": 96})


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> Path:
    crop = {"valid_resize_size": CROP, "valid_crop_size": CROP, "train_crop_size": CROP}
    return _untrained_checkpoint(tmp_path_factory.mktemp("vit"), Task.CLASSIFICATION,
                                 {"model_name": "vits16r224", **crop})


def _png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
    assert image.format == "PNG"
    image.load()
    return image


def _shape(nested) -> tuple[int, ...]:
    array = np.asarray(nested, dtype=np.float32)
    assert np.isfinite(array).all()
    return array.shape


# --- the Grad-CAM layer of each registration -------------------------------------------------------------


@pytest.mark.parametrize("model_name", slow_variants(CNNS, {"resnet101", "resnet152", "resnest101"}))
def test_every_cnn_names_its_gradcam_layer_the_last_block_of_its_backbone(model_name):
    model = create_model(model_name, 3, pretrained=False)
    spec = get_model_spec(model_name)
    layer = gradcam_layer(spec, model)
    assert spec.gradcam_module == ("features" if model_name == "mobilenetv2" else "layer4")
    assert layer is model.get_submodule(spec.gradcam_module)[-1]
    assert any(p.numel() for p in layer.parameters())
    assert any(isinstance(m, nn.Conv2d) for m in layer.modules())


@pytest.mark.parametrize("model_name", VITS)
def test_the_vits_have_no_gradcam_layer(model_name):
    spec = get_model_spec(model_name)
    assert spec.gradcam_module is None and gradcam_layer(spec, nn.Identity()) is None


# --- settings ------------------------------------------------------------------------------------------


def test_the_explanation_settings_and_their_reference_defaults():
    settings = resolve_settings(Task.MULTILABEL, {"model_name": "resnet18"})
    assert {key: getattr(settings, key) for key in (
        "model_explainability", "xai_algorithm", "visualizations", "attributions",
        "confidence_score_threshold_multilabel", "n_steps", "approximation_method", "xrai_fast")} == {
        "model_explainability": False, "xai_algorithm": "xrai", "visualizations": True, "attributions": False,
        "confidence_score_threshold_multilabel": 0.5, "n_steps": 50, "approximation_method": "riemann_middle",
        "xrai_fast": True}


@pytest.mark.parametrize("values, message", [
    ({"n_steps": 1}, "n_steps: got 1; Input should be greater than or equal to 2"),
    ({"n_steps": 2.5}, "n_steps: got 2.5; Input should be a valid integer"),
    ({"n_steps": True}, "n_steps: got True; must be a whole number from 2 to 1000, not a boolean"),
    ({"approximation_method": "simpson"}, "approximation_method: got 'simpson'; Input should be 'riemann_right'"),
    ({"xai_algorithm": "lime"}, "xai_algorithm: got 'lime'; Input should be 'xrai', 'integrated_gradients'"),
])
def test_bad_explanation_options_are_refused_naming_the_option(values, message):
    with pytest.raises(SettingsError) as caught:
        resolve_settings(Task.CLASSIFICATION, {"model_name": "resnet18", **values})
    assert any(problem.startswith(message) for problem in caught.value.problems), caught.value.problems


def test_explainability_of_a_detector_says_it_is_for_classification():
    with pytest.raises(SettingsError) as caught:
        resolve_settings(Task.OBJECT_DETECTION, {"model_explainability": True, "xai_algorithm": "xrai"})
    assert caught.value.problems == [
        f"{key}: does not apply to image_object_detection; it is a setting of image_classification and "
        "image_classification_multilabel: explainability is for classification models only; a detector's "
        "boxes are not explained" for key in ("model_explainability", "xai_algorithm")]


def test_a_run_asking_guided_gradcam_of_a_vit_is_refused_before_it_starts():
    settings = resolve_settings(Task.CLASSIFICATION, {"model_name": "vits16r224", "model_explainability": True,
                                                      "xai_algorithm": "guided_gradcam"})
    assert run_settings_problems(settings, gpus=None) == [
        "xai_algorithm: guided_gradcam does not support vits16r224: Grad-CAM takes the gradient at a convolutional "
        "layer, and vits16r224 has none (a vision transformer); the methods that support vits16r224 are xrai, "
        "integrated_gradients and guided_backprop"]
    unasked = settings.model_copy(update={"model_explainability": False})
    assert run_settings_problems(unasked, gpus=None) == []


def test_a_sweep_drawing_a_vit_for_guided_gradcam_is_refused_before_any_trial():
    from visionsweep.sweep.job import parse_job

    raw = {"type": "automl", "task": "image_classification", "training_data": {"path": "train.jsonl"},
           "limits": {"max_trials": 2}, "sweep": {"sampling_algorithm": "random"},
           "training_parameters": {"model_explainability": True, "xai_algorithm": "guided_gradcam"},
           "search_space": [{"model_name": "choice('resnet18', 'vits16r224')"}]}
    with pytest.raises(SettingsError) as caught:
        parse_job(raw, check_files=False)
    assert [p for p in caught.value.problems if "guided_gradcam" in p] == [
        "search_space[0] with model_name vits16r224: xai_algorithm: guided_gradcam does not support vits16r224: "
        "Grad-CAM takes the gradient at a convolutional layer, and vits16r224 has none (a vision transformer); the "
        "methods that support vits16r224 are xrai, integrated_gradients and guided_backprop"]


# --- prediction lines ----------------------------------------------------------------------------------


def test_multiclass_lines_explain_the_top_class_with_a_figure_and_attributions(multiclass, tmp_path):
    run_dir, images = multiclass
    plain = read_lines(visionsweep.predict(run_dir, images[0].parent, output=tmp_path / "plain.jsonl").output)
    assert all("visualizations" not in line and "attributions" not in line for line in plain)
    result = visionsweep.explain(run_dir, images[0].parent, output=tmp_path / "explained.jsonl",
                                 settings={"xai_algorithm": "integrated_gradients", "attributions": True, **FAST})
    assert isinstance(result, visionsweep.PredictionResult) and result.images == len(images)
    lines = read_lines(result.output)
    for line, before in zip(lines, plain):
        assert list(line) == ["filename", "probs", "labels", "visualizations", "attributions"]
        assert line["filename"] == before["filename"] and line["labels"] == before["labels"]
        np.testing.assert_allclose(line["probs"], before["probs"], atol=1e-6)
        assert _png(line["visualizations"]).size[0] > 100
        assert _shape(line["attributions"]) == (3, CROP, CROP)
    again = read_lines(visionsweep.explain(run_dir, images[0], output=tmp_path / "again.jsonl", settings={
        "xai_algorithm": "integrated_gradients", "attributions": True, "visualizations": False, **FAST}).output)
    assert again[0]["visualizations"] is None
    np.testing.assert_allclose(again[0]["attributions"], lines[0]["attributions"], rtol=1e-5, atol=1e-7)  # seed


def test_predict_with_model_explainability_uses_the_reference_defaults(multiclass, tmp_path):
    run_dir, images = multiclass
    [line] = read_lines(visionsweep.predict(run_dir, images[0], output=tmp_path / "p.jsonl", settings={
        "model_explainability": True, **FAST}).output)  # xrai, a figure, no attributions
    assert _png(line["visualizations"]) and line["attributions"] is None


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_multilabel_lines_explain_each_class_above_the_threshold(multilabel, tmp_path, threshold):
    run_dir, images = multilabel
    settings = {"xai_algorithm": "guided_backprop", "attributions": True,
                "confidence_score_threshold_multilabel": threshold}
    [line] = read_lines(visionsweep.explain(run_dir, images[0], output=tmp_path / "m.jsonl",
                                            settings=settings).output)
    assert line["labels"] == ["blue", "red", "striped"]
    if threshold == 1.0:  # no class above it: nothing explained, as the reference's null outputs
        assert line["visualizations"] is None and line["attributions"] is None
        return
    assert all(p > 0.0 for p in line["probs"])
    assert len(line["visualizations"]) == len(line["attributions"]) == 3
    assert all(_png(figure) for figure in line["visualizations"])
    assert [_shape(a) for a in line["attributions"]] == [(3, CROP, CROP)] * 3


def test_the_cli_predicts_with_explanations_through_set(multiclass, tmp_path, capsys):
    run_dir, images = multiclass
    output = tmp_path / "cli.jsonl"
    assert main(["predict", str(run_dir), str(images[0]), "--output", str(output), "--set", "model_explainability=true",
                 "--set", "xai_algorithm=integrated_gradients", "--set", "n_steps=4", "--set", "attributions=true",
                 "--set", "visualizations=false"]) == 0, capsys.readouterr().err
    [line] = read_lines(output)
    assert line["visualizations"] is None and _shape(line["attributions"]) == (3, CROP, CROP)


# --- refusals: each a clear error, before any image is read ---------------------------------------------


def _cli_error(capsys, *arguments: str) -> str:
    assert main(["predict", *map(str, arguments)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_explaining_a_detector_is_an_error_saying_explainability_is_for_classification(detector, tmp_path, capsys):
    err = _cli_error(capsys, detector, tmp_path / "no-images", "--output", tmp_path / "out.jsonl",
                     "--set", "model_explainability=true")
    assert "model_explainability: does not apply to image_object_detection" in err
    assert "explainability is for classification models only" in err
    with pytest.raises(SettingsError, match="explainability is for classification models only"):
        visionsweep.explain(detector, tmp_path / "no-images", output=tmp_path / "out.jsonl")


def test_guided_gradcam_of_a_vit_is_an_error_listing_the_methods_that_support_it(vit, tmp_path, capsys):
    # The inputs do not exist: the refusal comes before they are read.
    err = _cli_error(capsys, vit, tmp_path / "no-images", "--output", tmp_path / "out.jsonl",
                     "--set", "model_explainability=true", "--set", "xai_algorithm=guided_gradcam")
    assert "guided_gradcam does not support vits16r224" in err
    assert "the methods that support vits16r224 are xrai, integrated_gradients and guided_backprop" in err


@pytest.mark.parametrize("option, message", [
    ("n_steps=1", "n_steps: got 1; Input should be greater than or equal to 2"),
    ("n_steps=ten", "n_steps: got 'ten'; Input should be a valid integer"),
    ("approximation_method=simpson", "approximation_method: got 'simpson'; Input should be 'riemann_right'"),
    ("xai_algorithm=lime", "xai_algorithm: got 'lime'"),
])
def test_a_bad_explanation_option_is_an_error_naming_it(multiclass, tmp_path, capsys, option, message):
    err = _cli_error(capsys, multiclass[0], tmp_path / "no-images", "--output", tmp_path / "out.jsonl",
                     "--set", "model_explainability=true", "--set", option)
    assert message in err


def test_the_onnxruntime_runtime_cannot_explain(multiclass, tmp_path, capsys):
    run_dir, images = multiclass
    err = _cli_error(capsys, run_dir, images[0], "--output", tmp_path / "out.jsonl", "--runtime", "onnxruntime",
                     "--set", "model_explainability=true")
    assert "model_explainability: explaining a prediction takes gradients through the torch network" in err
    assert "onnxruntime runtime runs only the exported ONNX graph" in err
    with pytest.raises(SettingsError, match="the torch runtime"):
        visionsweep.explain(run_dir / "model" / "model.onnx", images[0], output=tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_explain_refuses_model_explainability_false(multiclass, tmp_path):
    with pytest.raises(SettingsError, match="model_explainability: got False; explain always explains"):
        visionsweep.explain(multiclass[0], multiclass[1][0], output=tmp_path / "out.jsonl",
                            settings={"model_explainability": False})


def test_the_run_report_does_not_explain_its_gallery(tmp_path, monkeypatch):
    """A run trained with model_explainability true: its report predicts the validation images without it."""
    import visionsweep.inference.explanations as explanations

    def no_explaining(*args, **kwargs):
        raise AssertionError("the report explained a prediction")

    monkeypatch.setattr(explanations.Explainer, "fields", no_explaining)
    run_dir, _ = _train(tmp_path, "image_classification", False, model_explainability=True, write_report=True)
    assert (run_dir / "report.html").is_file()
    assert json.loads((run_dir / "model" / "settings.json").read_text())["model_explainability"] is True


# --- the MLflow model's JSON rows ------------------------------------------------------------------------


def test_the_mlflow_model_explains_with_the_first_rows_options(multiclass):
    pytest.importorskip("mlflow")
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from visionsweep.serving.pyfunc import ImageModel

    run_dir, images = multiclass
    model = ImageModel()
    model.load_context(SimpleNamespace(model_config={}, artifacts={"model": str(run_dir / "model")}))
    image = base64.b64encode(images[0].read_bytes()).decode()
    xai = {"xai_algorithm": "integrated_gradients", "n_steps": 4, "attributions": True, "visualizations": False}
    first = json.dumps({"image_base64": image, "model_explainability": True, "xai_parameters": xai})
    answer = model.predict(None, pd.DataFrame({"image": [first, image]}))  # the second row follows the first
    assert list(answer.columns) == ["probs", "labels", "visualizations", "attributions"]
    assert answer["visualizations"].isna().all()
    assert [_shape(a) for a in answer["attributions"]] == [(3, CROP, CROP)] * 2
    assert list(model.predict(None, pd.DataFrame({"image": [image]})).columns) == ["probs", "labels"]
    bad = json.dumps({"image_base64": image, "model_explainability": True, "xai_parameters": {"n_steps": 1}})
    with pytest.raises(MlflowException, match="n_steps: got 1"):
        model.predict(None, pd.DataFrame({"image": [bad]}))
    other = json.dumps({"image_base64": image, "model_explainability": False})
    with pytest.raises(MlflowException, match="row 1: asks for other explanation options than row 0"):
        model.predict(None, pd.DataFrame({"image": [first, other]}))
