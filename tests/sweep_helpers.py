"""Shared helpers of the sweep tests: a stand-in trainer, job files, and ways to run and read sweeps.

A plain module (not a test file), imported by ``test_sweep_runner``, ``test_sweep_outputs`` and
``test_sweep_workers``. Trial processes import the stand-in trainer by name
(``sweep_helpers:fake_train``); the runner hands its own ``sys.path`` to them, so whatever put this
folder on the path of the test process (pytest's rootdir insertion, or ``pythonpath``) also serves
the trials.

The stand-in (``fake_train``) "trains" ``number_of_epochs`` epochs, reporting a score that rises
towards ``1 - 40 * |learning_rate - 0.005|``: epoch n (counted from 1) scores ``ceiling - 0.2 / n``. Special
learning rates make it fail in each way a trial can; environment variables slow it down or make it
ignore a stop request.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from visionsweep.sweep import attrs
from visionsweep.sweep.job import load_job
from visionsweep.sweep.launch import WORKER_ENTRY, python_command
from visionsweep.sweep.runner import SweepResult, run_sweep
from visionsweep.training.run_folder import check_run_folder, clear_run_folder

TRAINER = "sweep_helpers:fake_train"
EPOCH_SECONDS = "VS_TEST_EPOCH_SECONDS"
STALL_AFTER = "VS_TEST_STALL_AFTER_EPOCH"  # from this epoch (counted from 1) on, one epoch takes a minute ...
IGNORE_STOP = "VS_TEST_IGNORE_STOP"  # ... and the trainer does not honour a stop request
RAISES, EXITS, NO_MEMORY, KILLED = 0.0021, 0.0031, 0.0041, 0.0051


@dataclass
class FakeReport:
    epoch: int
    evaluated: bool
    metrics: dict
    primary_value: float | None


@dataclass
class FakeResult:
    run_dir: Path
    model_dir: Path
    status: str
    primary_metric: str
    best_score: float
    best_epoch: int | None
    epochs_run: int


def fake_train(task, data, validation_data=None, *, settings, output, epoch_callback=None, progress=True,
               overwrite=False):
    """Stand-in for visionsweep.train with the same contract (see trial_process). ``settings`` are
    the given keys only, as the real trainer resolves the defaults itself. It also writes the
    ``CUDA_VISIBLE_DEVICES`` and ``OMP_NUM_THREADS`` it was started with to ``environment.json``.
    An earlier run in ``output`` is refused unless ``overwrite``, by the real trainer's rule."""
    check_run_folder(Path(output), overwrite=overwrite)
    clear_run_folder(Path(output))
    lr = settings["learning_rate"]
    print(f"fake training {settings.get('model_name', 'default')} lr={lr}", flush=True)
    (Path(output) / "environment.json").write_text(json.dumps(
        {name: os.environ.get(name) for name in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}))
    if lr == RAISES:
        raise RuntimeError("synthetic failure in epoch 1")
    if lr == EXITS:
        os._exit(7)
    if lr == NO_MEMORY:
        raise MemoryError("synthetic allocation failure")
    if lr == KILLED:
        os.kill(os.getpid(), signal.SIGKILL)
    model_dir = Path(output) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    ceiling = 1 - 40 * abs(lr - 0.005)
    best, best_epoch, status = float("-inf"), None, "completed"
    stall = int(os.environ.get(STALL_AFTER, "0"))
    for epoch in range(1, settings["number_of_epochs"] + 1):
        time.sleep(60 if 0 < stall <= epoch else float(os.environ.get(EPOCH_SECONDS, "0")))
        score = ceiling - 0.2 / epoch
        if score > best:
            best, best_epoch = score, epoch
            (model_dir / "weights.txt").write_text(repr(score))
        if epoch_callback and epoch_callback(FakeReport(epoch, True, {"accuracy": score}, score)) \
                and not os.environ.get(IGNORE_STOP):
            status = "cancelled"
            break
    return FakeResult(Path(output), model_dir, status, "accuracy", best, best_epoch, epoch)


def job_writer(folder: Path) -> Callable[..., Path]:
    """A function that writes a classification job file (the body below the data lines) into
    ``folder``, next to a one-line JSONL file that the stand-in trainer never reads."""
    (folder / "train.jsonl").write_text('{"image_url": "a.jpg", "label": "can"}\n')

    def write(body: str, name: str = "job.yml") -> Path:
        path = folder / name
        path.write_text("type: automl\ntask: image_classification\n"
                        "training_data: {path: train.jsonl, type: uri_file}\n" + textwrap.dedent(body))
        return path
    return write


def run_fake(path: Path, run_dir: Path, **kwargs: Any) -> tuple[SweepResult, list[str]]:
    """Run the job at ``path`` with the stand-in trainer on CPU; returns the result and progress lines."""
    lines: list[str] = []
    kwargs.setdefault("devices", [])
    result = run_sweep(load_job(path), run_dir, trainer=TRAINER, progress=lines.append, poll_interval_s=0.05,
                       **kwargs)
    return result, lines


def study_trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    """Every trial of the sweep whose study lives in ``run_dir/study.journal``."""
    record = json.loads((run_dir / "sweep.json").read_text())
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal")))
    return optuna.load_study(study_name=record["study_name"], storage=storage).get_trials()


def counted(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards the budget (not interrupted, not surplus)."""
    return [t for t in trials if t.user_attrs.get(attrs.STATUS) not in attrs.EXCLUDED]


def start_worker(path: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """A sweep worker in its own process (as on another terminal or machine), with the stand-in trainer."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen(python_command(WORKER_ENTRY, ["run", str(path), "--run-dir", str(run_dir), "--trainer",
                                                          TRAINER, "--devices", "cpu", *extra]),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``condition`` every 0.1 s; AssertionError when it is not true within ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")
