"""The MLflow pyfunc model of a model folder (``mlflow-model/``): written by training and by ``visionsweep
export --format mlflow``, a model from code without pickles, loaded by ``mlflow.pyfunc.load_model`` and
served by ``mlflow models serve``, answering what ``visionsweep.predict`` writes for the same images."""
from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

import visionsweep
from visionsweep.cli import main
from visionsweep.errors import ExportError, SettingsError
from visionsweep.exporting.mlflow_model import MLFLOW_INSTALL_HINT, MODEL_CODE, MODEL_CODE_FILE, write_mlflow_model
from visionsweep.sweep.leaderboard import write_best_mlflow_model
from visionsweep.training import run as training_run
from conftest import TINY_SETTINGS, write_color_dataset
from jsonl_helpers import read_lines
from test_onnx_prediction import RCNN, _scenes

CLS = "image_classification"
OD = "image_object_detection"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny classifier's model folder (mlflow-model/ written by training) and its images."""
    folder = tmp_path_factory.mktemp("mlflow-classifier")
    data = write_color_dataset(folder / "data", per_class=3, size=16)
    settings = {**TINY_SETTINGS, "number_of_epochs": 1, "export_onnx": False, "save_mlflow": True}
    result = visionsweep.train(CLS, data, settings=settings, output=folder / "run", progress=False)
    return result.model_dir, sorted((folder / "data" / "images").iterdir())


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A tiny Faster R-CNN's model folder (five boxes per image: no score filter) and its images."""
    folder = tmp_path_factory.mktemp("mlflow-detector")
    data = _scenes(folder, count=2)
    result = visionsweep.train(OD, data, data, settings={**RCNN, "export_onnx": False, "save_mlflow": True},
                               output=folder / "run", progress=False)
    return result.model_dir, sorted(folder.glob("*.png"))


def _predicted(model_dir, images, tmp_path, settings=None):
    """What ``visionsweep.predict`` writes for each image, in the order given, without the file name."""
    lines = read_lines(visionsweep.predict(model_dir, images[0].parent, output=tmp_path / "predicted.jsonl",
                                           settings=settings).output)
    by_name = {Path(line.pop("filename")).name: line for line in lines}
    return [by_name[image.name] for image in images]


def _base64(images):
    return [base64.b64encode(image.read_bytes()).decode("ascii") for image in images]


def _same(rows, lines):
    """The pyfunc model's rows answer as the prediction lines: the same classes and probabilities, or
    the same boxes in the same order (best first) with the same scores."""
    assert len(rows) == len(lines)
    for row, line in zip(rows, lines):
        assert row.keys() == line.keys()
        if "probs" in line:
            assert row["labels"] == line["labels"]
            assert row["probs"] == pytest.approx(line["probs"], abs=1e-6)
            continue
        assert [box["label"] for box in row["boxes"]] == [box["label"] for box in line["boxes"]]
        for box, other in zip(row["boxes"], line["boxes"]):
            assert box["score"] == pytest.approx(other["score"], abs=1e-5)
            assert box["box"] == pytest.approx(other["box"], abs=1e-5)


def test_training_writes_a_model_from_code_without_pickles(classifier):
    model_dir, _ = classifier
    folder = model_dir / "mlflow-model"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["MLmodel", "artifacts/labels.json", "artifacts/model.pt", "artifacts/settings.json", "conda.yaml",
                     "python_env.yaml", "requirements.txt", MODEL_CODE_FILE]
    assert (folder / MODEL_CODE_FILE).read_text() == MODEL_CODE
    assert (folder / "artifacts" / "model.pt").read_bytes() == (model_dir / "model.pt").read_bytes()
    flavor = mlflow.models.Model.load(str(folder)).flavors["python_function"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    requirements = (folder / "requirements.txt").read_text().split()
    assert {"torch==2.14.1", "torchvision==0.29.1", f"visionsweep=={visionsweep.__version__}",
            f"mlflow=={mlflow.__version__}"} <= set(requirements)
    assert all("==" in line for line in requirements)
    assert "wrote " + str(folder) in (model_dir.parent / "train.log").read_text()


def test_classifier_predicts_what_visionsweep_predict_writes(classifier, tmp_path):
    model_dir, images = classifier
    expected = _predicted(model_dir, images, tmp_path)
    model = mlflow.pyfunc.load_model(str(model_dir / "mlflow-model"))
    encoded = _base64(images)
    for column in ([p.read_bytes() for p in images], encoded, [json.dumps({"image_base64": e}) for e in encoded],
                   [base64.encodebytes(p.read_bytes()).decode() for p in images]):  # base64 with line breaks
        answer = model.predict(pd.DataFrame({"image": column}))
        assert list(answer.columns) == ["probs", "labels"]
        _same(answer.to_dict(orient="records"), expected)


def test_detector_predicts_what_visionsweep_predict_writes(detector, tmp_path):
    model_dir, images = detector
    expected = _predicted(model_dir, images, tmp_path)
    assert all(len(line["boxes"]) == 5 for line in expected)
    model = mlflow.pyfunc.load_model(str(model_dir / "mlflow-model"))
    for column in ([p.read_bytes() for p in images], _base64(images)):
        answer = model.predict(pd.DataFrame({"image": column}))
        assert list(answer.columns) == ["boxes"]
        _same(answer.to_dict(orient="records"), expected)


def test_signature_per_task(classifier, detector, tmp_path):
    def signature(folder):
        model = mlflow.models.Model.load(str(folder))
        return model.signature.inputs.to_dict(), model.signature.outputs.to_dict(), model.metadata

    inputs, outputs, metadata = signature(classifier[0] / "mlflow-model")
    assert inputs == [{"type": "binary", "name": "image", "required": True}]
    assert outputs == [{"type": "array", "items": {"type": "double"}, "name": "probs", "required": True},
                       {"type": "array", "items": {"type": "string"}, "name": "labels", "required": True}]
    assert metadata == {"visionsweep_version": visionsweep.__version__, "task": CLS, "model_name": "resnet18"}
    corners = {name: {"type": "double", "required": True} for name in ("topX", "topY", "bottomX", "bottomY")}
    box = {"box": {"type": "object", "properties": corners, "required": True},
           "label": {"type": "string", "required": True}, "score": {"type": "double", "required": True}}
    _, outputs, _ = signature(detector[0] / "mlflow-model")
    assert outputs == [{"type": "array", "items": {"type": "object", "properties": box}, "name": "boxes",
                        "required": True}]
    # Segmentation adds each object's polygon (the writer reads the folder's files, not the weights).
    segmenter = tmp_path / "segmenter"
    segmenter.mkdir()
    (segmenter / "model.pt").write_bytes(b"weights")
    (segmenter / "labels.json").write_text('["cat"]')
    (segmenter / "settings.json").write_text(json.dumps({"task": "image_instance_segmentation",
                                                         "model_name": "maskrcnn_resnet18_fpn"}))
    _, outputs, _ = signature(write_mlflow_model(segmenter).path)
    polygon = {"type": "array", "items": {"type": "array", "items": {"type": "double"}}, "required": True}
    assert outputs[0]["items"]["properties"] == {**box, "polygon": polygon}


def test_an_image_that_cannot_be_scored_fails_the_call_naming_its_row(classifier):
    model_dir, images = classifier
    model = mlflow.pyfunc.load_model(str(model_dir / "mlflow-model"))
    good = images[0].read_bytes()
    with pytest.raises(MlflowException) as error:
        model.predict(pd.DataFrame({"image": [good, b"not an image", good]}))
    assert error.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "1 of 3 images cannot be scored, so none was: row 1: unreadable image (" in error.value.message
    with pytest.raises(MlflowException, match=r"row 7: not a base64 string .*row 8: a JSON row must be an object "
                                              r"with the image as a base64 string under \"image_base64\""):
        model.predict(pd.DataFrame({"image": ["images/a.png", '{"image": "x"}']}, index=[7, 8]))
    with pytest.raises(MlflowException, match="the input has no 'image' column"):
        model.unwrap_python_model().predict(None, pd.DataFrame({"picture": [good]}))
    with pytest.raises(MlflowException, match="row 0: incompatible input format: got int"):
        model.unwrap_python_model().predict(None, pd.DataFrame({"image": [3]}))


def test_export_format_mlflow_from_a_run_folder_with_settings(detector, tmp_path, capsys):
    model_dir, images = detector
    output = tmp_path / "exported"
    assert main(["export", str(model_dir.parent), "--format", "mlflow", "--output", str(output),
                 "--set", "box_score_thresh=0.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"path": str(output), "format": "mlflow", "task": OD, "model_name": "fasterrcnn_resnet18_fpn",
                       "input": "image", "outputs": ["boxes"]}
    flavor = mlflow.models.Model.load(str(output)).flavors["python_function"]
    assert flavor["config"] == {"settings": {"box_score_thresh": 0.5}}  # MLflow keeps model_config as "config"
    model = mlflow.pyfunc.load_model(str(output))
    answer = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in images]}))
    _same(answer.to_dict(orient="records"), _predicted(model_dir, images, tmp_path, {"box_score_thresh": 0.5}))
    # Exported again over itself, and by default into the model folder; settings can also come at load time.
    assert visionsweep.export(model_dir, output, format="mlflow").path == output
    assert mlflow.models.Model.load(str(output)).flavors["python_function"]["config"] == {"settings": {}}
    loaded = mlflow.pyfunc.load_model(str(output), model_config={"settings": {"box_score_thresh": 0.7}})
    assert loaded.unwrap_python_model().scorer.trained.settings.box_score_thresh == 0.7
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("mlflow-model"))
    assert visionsweep.export(copy, format="mlflow").path == copy / "mlflow-model"
    assert not list(copy.glob(".mlflow-model*"))  # the staging folder is gone


def test_export_format_mlflow_refuses_what_does_not_apply(classifier, tmp_path):
    model_dir, _ = classifier
    with pytest.raises(SettingsError) as error:
        visionsweep.export(model_dir, tmp_path / "m", format="mlflow", batch=4, nms=True)
    assert error.value.problems == [
        "batch: applies to ONNX export only (an MLflow model takes any number of images of any size, and predicts "
        "with torch)",
        "nms: applies to ONNX export only (an MLflow model takes any number of images of any size, and predicts "
        "with torch)"]
    with pytest.raises(SettingsError, match=r"format: got 'pickle'; visionsweep exports onnx, mlflow"):
        visionsweep.export(model_dir, format="pickle")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(model_dir / "model.pt", partial)
    with pytest.raises(ExportError, match=r"has no labels.json or settings.json: an MLflow model is written from a "
                                          r"model folder as training leaves it"):
        visionsweep.export(partial, format="mlflow")


def test_without_mlflow_export_is_a_clear_error_and_training_a_log_line(classifier, tmp_path, monkeypatch, caplog):
    model_dir, _ = classifier
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("mlflow-model"))
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ExportError, match="writing an MLflow model needs MLflow, which is not installed: "
                                          + MLFLOW_INSTALL_HINT.replace("[", r"\[").replace("]", r"\]")):
        visionsweep.export(copy, format="mlflow")
    with caplog.at_level(logging.INFO, logger="visionsweep"):
        training_run._save_mlflow_model(copy)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "mlflow-model/ not written: writing an MLflow model needs MLflow, which is not installed: "
                 f"{MLFLOW_INSTALL_HINT} (or set save_mlflow false)")]
    assert not (copy / "mlflow-model").exists()
    assert write_best_mlflow_model(copy).startswith("mlflow-model/ not written: writing an MLflow model needs MLflow")


def test_a_failed_write_is_a_warning_never_a_failed_run(classifier, tmp_path, monkeypatch, caplog):
    model_dir, _ = classifier
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("mlflow-model"))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mlflow.pyfunc, "save_model", broken)
    with caplog.at_level(logging.INFO, logger="visionsweep"):
        training_run._save_mlflow_model(copy)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "warning: mlflow-model/ was not written (OSError: disk full); the model folder is complete "
                    "without it, and 'visionsweep export --format mlflow' can retry")]
    assert {p.name for p in copy.iterdir()} == {p.name for p in model_dir.iterdir()} - {"mlflow-model"}
    assert write_best_mlflow_model(copy) == (f"warning: {copy / 'mlflow-model'} was not written (OSError: disk full); "
                                             f"'visionsweep export {copy} --format mlflow' can retry")


@pytest.mark.slow
def test_a_sweep_writes_the_mlflow_model_of_its_best_model_only(classifier, tmp_path, capsys):
    """... and its best model folder holds the best trial's model.onnx, which ONNX Runtime predicts with; the
    run report too is the best trial's alone, linked from the sweep report."""
    data = Path(classifier[1][0]).parent.parent / "data.jsonl"
    job = tmp_path / "job.yml"
    parameters = {**TINY_SETTINGS, "number_of_epochs": 1, "export_onnx": True, "save_mlflow": True,
                  "write_report": True}
    job.write_text(f"""type: automl
task: {CLS}
training_data: {{path: {data}, type: uri_file}}
limits: {{max_trials: 2, max_concurrent_trials: 1}}
training_parameters: {json.dumps(parameters)}
sweep: {{sampling_algorithm: grid}}
search_space:
  - learning_rate: "choice(0.01, 0.001)"
""")
    run = tmp_path / "run"
    assert main(["run", str(job), "--run-dir", str(run), "--devices", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"MLflow model of the best trial written to {run / 'best_model' / 'mlflow-model'}" in out
    trials = sorted((run / "trials").iterdir())
    assert len(trials) == 2 and not any((trial / "model" / "mlflow-model").exists() for trial in trials)
    assert all(json.loads((trial / "settings.json").read_text())["save_mlflow"] is False for trial in trials)
    best = run / "trials" / f"trial_{json.loads((run / 'best_trial.json').read_text())['trial']:04d}"
    assert f"run report of the best trial written to {best / 'report.html'}" in out
    assert [trial for trial in trials if (trial / "report.html").exists()] == [best]
    assert f'href="trials/{best.name}/report.html"' in (run / "report.html").read_text()
    model = mlflow.pyfunc.load_model(str(run / "best_model" / "mlflow-model"))
    images = classifier[1][:2]
    answer = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in images]}))
    _same(answer.to_dict(orient="records"), _predicted(run, images, tmp_path))
    assert (run / "best_model" / "model.onnx").is_file()
    onnx_lines = read_lines(visionsweep.predict(run, images[0], output=tmp_path / "onnx.jsonl",
                                                runtime="onnxruntime").output)
    np.testing.assert_allclose(onnx_lines[0]["probs"], answer.loc[0, "probs"], rtol=1e-3, atol=1e-5)


# --- mlflow models serve ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def served(classifier, tmp_path):
    """``mlflow models serve`` on the classifier's MLflow model, on a free loopback port (its base URL)."""
    port = _free_port()
    # The server starts uvicorn by name: the environment's scripts must be on PATH, as when it is activated.
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(classifier[0] / "mlflow-model"),
         "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)  # its own group: uvicorn too
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /ping within 120 s"
            time.sleep(0.5)
        yield url
    finally:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=15)
        log.close()


def _signal_group(process, signal_number):
    """Signal the server and the uvicorn it started (one process group, ours); either may be gone."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal_number)


@pytest.mark.slow
def test_mlflow_models_serve_answers_the_managed_endpoint_body(classifier, served):
    model_dir, images = classifier
    images = images[:2]
    expected = mlflow.pyfunc.load_model(str(model_dir / "mlflow-model")).predict(
        pd.DataFrame({"image": [p.read_bytes() for p in images]})).to_dict(orient="records")
    # The body of an Azure managed endpoint (its "input_data"), under MLflow's "dataframe_split".
    inner = {"columns": ["image"], "index": [0, 1], "data": _base64(images)}
    status, answer = _post(f"{served}/invocations", {"dataframe_split": inner})
    assert status == 200
    _same(answer["predictions"], expected)
    # pandas' split orient also takes the data as rows of one value each.
    rows = {**inner, "data": [[image] for image in inner["data"]]}
    status, answer = _post(f"{served}/invocations", {"dataframe_split": rows})
    assert status == 200 and len(answer["predictions"]) == 2
    status, answer = _post(f"{served}/invocations", {"dataframe_split": {
        **inner, "data": [inner["data"][0], base64.b64encode(b"not an image").decode()]}})
    assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "1 of 2 images cannot be scored, so none was: row 1: unreadable image" in answer["message"]
