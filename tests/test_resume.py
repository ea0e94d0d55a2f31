"""Resuming an interrupted run from ``checkpoints/last.pt``: a run killed (SIGKILL) after epoch 2 of 4 and
resumed ends with exactly the weights, checkpoints and metrics of an uninterrupted run (classification
and YOLOv5); what a folder that cannot be resumed says; the settings that may change on resume; and the
pieces (schedule, early stopping, best weights, metrics lines) one by one."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import TINY_SETTINGS, write_color_dataset
from visionsweep.checkpoint import load_checkpoint, save_checkpoint
from visionsweep.cli import main
from visionsweep.errors import CheckpointError
from visionsweep.settings import resolve_settings
from visionsweep.tasks import Task
from visionsweep.training import train
from visionsweep.training.early_stopping import EarlyStopping
from visionsweep.training.resume import ResumePoint, best_weights
from visionsweep.training.run import _keep_metrics_up_to
from visionsweep.training.schedulers import Schedule

CLASSIFICATION = "image_classification"
# Early stopping cannot trigger in 4 epochs (its delay is 5); deterministic kernels make the comparison exact.
SETTINGS = {**TINY_SETTINGS, "number_of_epochs": 4, "deterministic": True}

# Trains in a process of its own and kills it hard (no cleanup, as an out-of-memory kill or a power cut)
# from the epoch callback, which runs after the epoch's last.pt is written.
KILL_AFTER_EPOCH = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)  # as the test process (conftest), so that both compute alike
import visionsweep
task, data, validation, output, settings, epoch = sys.argv[1:]

def kill_after(report):
    if report.epoch == int(epoch):
        os.kill(os.getpid(), signal.SIGKILL)

visionsweep.train(task, data, validation or None, settings=json.loads(settings), output=output,
                  epoch_callback=kill_after, progress=False)
"""


@pytest.fixture(autouse=True)
def _keep_torch_determinism_flags():
    """``deterministic: true`` switches torch's process-wide flags; other tests in this process get theirs back."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


def _killed_run(task: str, data: Path, validation: Path | None, output: Path, settings: dict, epoch: int) -> None:
    done = subprocess.run([sys.executable, "-c", KILL_AFTER_EPOCH, task, str(data), str(validation or ""),
                           str(output), json.dumps(settings), str(epoch)], capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-3000:]
    assert (output / "checkpoints" / "last.pt").is_file() and not (output / "model" / "metrics.json").exists()


def _assert_same_content(whole, resumed, where: str = "") -> None:
    """Every tensor equal (torch.equal), every other value equal, keys and lengths alike."""
    if isinstance(whole, torch.Tensor):
        assert isinstance(resumed, torch.Tensor) and torch.equal(whole, resumed), where
    elif isinstance(whole, dict):
        assert set(whole) == set(resumed), where
        for key in whole:
            _assert_same_content(whole[key], resumed[key], f"{where}.{key}")
    elif isinstance(whole, (list, tuple)):
        assert len(whole) == len(resumed), where
        for index, (a, b) in enumerate(zip(whole, resumed)):
            _assert_same_content(a, b, f"{where}[{index}]")
    else:
        assert whole == resumed, where


def _metrics_lines(run: Path) -> list[dict]:
    """metrics.jsonl without the timings, which differ between any two runs."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in ("duration_s", "train_duration_s")} for line in lines]


def _assert_resumed_run_equals(whole: Path, resumed: Path) -> None:
    for name in ("model/model.pt", "checkpoints/last.pt"):
        _assert_same_content(torch.load(whole / name, weights_only=True), torch.load(resumed / name, weights_only=True),
                             name)
    assert len(_metrics_lines(resumed)) == 4
    assert _metrics_lines(resumed) == _metrics_lines(whole)
    best = [json.loads((run / "model/metrics.json").read_text()) for run in (whole, resumed)]
    assert best[0] == best[1]


@pytest.fixture(scope="module")
def color_data(tmp_path_factory) -> Path:
    return write_color_dataset(tmp_path_factory.mktemp("colors"))


@pytest.fixture(scope="module")
def whole_run(color_data, tmp_path_factory) -> Path:
    """An uninterrupted 4-epoch run (also: a finished run)."""
    output = tmp_path_factory.mktemp("whole") / "run"
    train(CLASSIFICATION, color_data, settings=SETTINGS, output=output, progress=False)
    return output


class _Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def interrupted_run(color_data, tmp_path_factory) -> Path:
    """A run stopped after epoch 2 of 4 by an exception in this process (cheaper than a killed process, and as
    resumable); tests copy it before changing it."""
    output = tmp_path_factory.mktemp("interrupted") / "run"

    def interrupt(report):
        if report.epoch == 2:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        train(CLASSIFICATION, color_data, settings=SETTINGS, output=output, epoch_callback=interrupt, progress=False)
    return output


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _error_of(capsys, argv: list[str]) -> str:
    """The command's one-line (SettingsError: first line and its list) error message, checked to have no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: "), err
    return err


# --- killed and resumed: the same run ------------------------------------------------------------------------

def test_a_run_killed_after_epoch_2_resumes_to_the_weights_of_an_uninterrupted_run(whole_run, color_data, tmp_path,
                                                                                   capsys):
    run = tmp_path / "run"
    _killed_run(CLASSIFICATION, color_data, None, run, SETTINGS, epoch=2)
    assert len(_metrics_lines(run)) == 2
    assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 2

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "completed" and summary["epochs_run"] == 4

    _assert_resumed_run_equals(whole_run, run)
    log = (run / "train.log").read_text()
    assert "epoch 2/4" in log and f"resuming {run} after epoch 2 of 4" in log and "epoch 4/4" in log  # appended


def test_a_killed_yolov5_run_resumes_to_the_same_averaged_weights_and_generators(tmp_path, capsys):
    from test_yolo_integration import _write_scenes

    data = _write_scenes(tmp_path)
    settings = {"model_name": "yolov5", "model_size": "small", "pretrained": False, "img_size": 64,
                "training_batch_size": 2, "validation_batch_size": 2, "num_workers": 0, "seed": 0,
                "number_of_epochs": 4, "deterministic": True, "multi_scale": True,  # mosaic is on by default
                "export_onnx": False, "save_mlflow": False}
    train(Task.OBJECT_DETECTION, data, data, settings=settings, output=tmp_path / "whole", progress=False)
    _killed_run(Task.OBJECT_DETECTION.value, data, data, tmp_path / "cut", settings, epoch=2)
    assert main(["train", "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    _assert_resumed_run_equals(tmp_path / "whole", tmp_path / "cut")
    family_state = load_checkpoint(tmp_path / "cut" / "checkpoints/last.pt")["training_state"]["family"]
    assert family_state["ema"]["updates"] > 0 and family_state["augmentation_rng"] is not None


# --- what may change -------------------------------------------------------------------------------------------

def test_resume_with_half_the_batch_and_twice_the_accumulation(interrupted_run, tmp_path, capsys):
    run = _copy(interrupted_run, tmp_path)
    assert main(["train", "--resume", str(run), "--no-progress", "--set", "training_batch_size=2",
                 "--set", "gradient_accumulation_step=2", "--set", "number_of_epochs=5"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs_run"] == 5
    assert [line["epoch"] for line in _metrics_lines(run)] == [1, 2, 3, 4, 5]
    saved = json.loads((run / "settings.json").read_text())
    assert (saved["training_batch_size"], saved["grad_accumulation_step"], saved["number_of_epochs"]) == (2, 2, 5)
    assert "resumed with training_batch_size 2 (the run had 4)" in (run / "train.log").read_text()
    assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 5


def test_changed_settings_are_refused_with_every_key_named(interrupted_run, tmp_path, capsys):
    run = _copy(interrupted_run, tmp_path)
    err = _error_of(capsys, ["train", "--resume", str(run), "--set", "learning_rate=0.05",
                             "--set", "model_name=resnet34", "--set", "number_of_epochs=3"])
    assert "learning_rate: the run was started with 0.01, given 0.05" in err
    assert "model_name: the run was started with 'resnet18'" in err
    assert "number_of_epochs: given 3, fewer than the run's 4" in err
    assert load_checkpoint(run / "checkpoints/last.pt")["epoch"] == 2  # nothing trained


# --- what cannot be resumed ------------------------------------------------------------------------------------

def test_a_folder_without_last_pt_names_the_file(interrupted_run, tmp_path, capsys):
    run = _copy(interrupted_run, tmp_path)
    (run / "checkpoints" / "last.pt").unlink()
    err = _error_of(capsys, ["train", "--resume", str(run)])
    assert f"{run / 'checkpoints' / 'last.pt'} does not exist" in err


def test_a_damaged_last_pt_names_the_file(interrupted_run, tmp_path, capsys):
    run = _copy(interrupted_run, tmp_path)
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    assert str(run / "checkpoints" / "last.pt") in _error_of(capsys, ["train", "--resume", str(run)])
    best = load_checkpoint(run / "model" / "model.pt")  # a checkpoint, but not one to resume from
    shutil.copy(run / "model" / "model.pt", run / "checkpoints" / "last.pt")
    err = _error_of(capsys, ["train", "--resume", str(run)])
    assert "cannot resume from" in err and "no 'training_state' entry" in err and best["epoch"] == 2


def test_a_finished_run_is_not_resumed(whole_run, capsys):
    assert "the run already finished" in _error_of(capsys, ["train", "--resume", str(whole_run)])


def test_a_folder_that_holds_no_run(tmp_path, capsys):
    assert "it is not a run folder" in _error_of(capsys, ["train", "--resume", str(tmp_path)])


def test_resume_takes_the_runs_own_task_and_data(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--resume", str(tmp_path), "--data", "x.jsonl"])
    assert stopped.value.code == 2 and "leave out --data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", "x.jsonl"])
    assert "required: --task (or --resume RUN_DIR)" in capsys.readouterr().err


# --- the pieces ------------------------------------------------------------------------------------------------

def test_schedule_state_keeps_the_point_of_the_curve_for_another_number_of_steps_per_epoch():
    def schedule(steps_per_epoch: int) -> Schedule:
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
        return Schedule(optimizer, "warmup_cosine", steps_per_epoch=steps_per_epoch, epochs=6, warmup_epochs=2)

    before = schedule(10)
    for _ in range(25):
        before.after_optimizer_step()
    same, doubled = schedule(10), schedule(20)
    same.load_state_dict(before.state_dict())
    doubled.load_state_dict(before.state_dict())
    assert (same.step, same.learning_rate) == (25, before.learning_rate)
    assert doubled.step == 50 and doubled.learning_rate == pytest.approx(before.learning_rate, rel=0.05)


def test_early_stopping_state_round_trip():
    stopper = EarlyStopping(patience=2, delay=0)
    for epoch, score in enumerate([0.5, 0.4, 0.4], start=1):
        stopper.update(epoch, score)
    again = EarlyStopping(patience=2, delay=0)
    again.load_state(stopper.state())
    assert (again.best_epoch, again.best_score, again.counter, again.should_stop) == (1, 0.5, 2, True)
    assert stopper.state()["should_stop"] is True


def _point(tmp_path: Path, *, epoch: int, best_epoch: int | None) -> ResumePoint:
    settings = resolve_settings(Task.CLASSIFICATION, {"model_name": "resnet18"})
    state = {"early_stopping": {"best_epoch": best_epoch, "best_score": 0.5, "counter": 0, "should_stop": False}}
    return ResumePoint(tmp_path, Task.CLASSIFICATION, settings, {"epoch": epoch, "training_state": state}, {})


def test_best_weights_come_from_model_pt_or_from_the_epoch_last_pt_holds(tmp_path):
    model = nn.Linear(2, 2)
    save_checkpoint(tmp_path / "model" / "model.pt", model=model, task="image_classification", model_name="resnet18",
                    labels=["a", "b"], settings={}, epoch=1, score=0.5, metrics={})
    weights, behind = best_weights(_point(tmp_path, epoch=2, best_epoch=1), lambda: nn.Linear(2, 2))
    assert not behind and torch.equal(weights["weight"], model.weight)
    # Killed between writing last.pt (epoch 2, the best) and model.pt: the restored epoch-2 weights, model.pt behind.
    restored = nn.Linear(2, 2)
    weights, behind = best_weights(_point(tmp_path, epoch=2, best_epoch=2), lambda: restored)
    assert behind and torch.equal(weights["weight"], restored.weight)
    assert best_weights(_point(tmp_path, epoch=2, best_epoch=None), lambda: restored) == (None, False)
    with pytest.raises(CheckpointError, match="the best epoch's weights, is of epoch 1, but"):
        best_weights(_point(tmp_path, epoch=3, best_epoch=2), lambda: restored)


def test_metrics_lines_after_the_saved_epoch_are_dropped(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n{"epo')
    _keep_metrics_up_to(metrics, 2)
    assert metrics.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
