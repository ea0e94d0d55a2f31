"""The sweep runner end to end, with a stand-in trainer: every trial is a real process.

The stand-in (``fake_train``) "trains" ``number_of_epochs`` epochs, reporting a score that rises
towards ``1 - 40 * |learning_rate - 0.005|``; special learning rates make it fail in each way a
trial can. Trial processes import it by name, so it lives at module level.
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

import optuna
import pytest

from visionsweep.sweep import attrs
from visionsweep.sweep.job import load_job
from visionsweep.sweep.launch import WORKER_ENTRY, python_command
from visionsweep.sweep.runner import run_sweep
from visionsweep.sweep.status import sweep_status

TRAINER = "test_sweep_runner:fake_train"
EPOCH_SECONDS = "VS_TEST_EPOCH_SECONDS"
STALL_AFTER = "VS_TEST_STALL_AFTER_EPOCH"  # from this epoch on, one epoch takes a minute ...
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
    best_epoch: int
    epochs_run: int


def fake_train(task, data, validation_data=None, *, settings, output, epoch_callback=None, progress=True):
    """Stand-in for visionsweep.train with the same contract (see trial_process). ``settings`` are
    the given keys only, as the real trainer resolves the defaults itself."""
    lr = settings["learning_rate"]
    print(f"fake training {settings.get('model_name', 'default')} lr={lr}", flush=True)
    if lr == RAISES:
        raise RuntimeError("synthetic failure in epoch 0")
    if lr == EXITS:
        os._exit(7)
    if lr == NO_MEMORY:
        raise MemoryError("synthetic allocation failure")
    if lr == KILLED:
        os.kill(os.getpid(), signal.SIGKILL)
    model_dir = Path(output) / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    ceiling = 1 - 40 * abs(lr - 0.005)
    best, best_epoch, status = float("-inf"), 0, "completed"
    stall = int(os.environ.get(STALL_AFTER, "-1"))
    for epoch in range(settings["number_of_epochs"]):
        time.sleep(60 if 0 <= stall <= epoch else float(os.environ.get(EPOCH_SECONDS, "0")))
        score = ceiling - 0.2 / (epoch + 1)
        if score > best:
            best, best_epoch = score, epoch
            (model_dir / "weights.txt").write_text(repr(score))
        if epoch_callback and epoch_callback(FakeReport(epoch, True, {"accuracy": score}, score)) \
                and not os.environ.get(IGNORE_STOP):
            status = "cancelled"
            break
    return FakeResult(Path(output), model_dir, status, "accuracy", best, best_epoch, epoch + 1)


def job_writer(folder: Path):
    """A function that writes a classification job file (the body below the data lines) into
    ``folder``, next to a one-line JSONL file that the stand-in trainer never reads."""
    (folder / "train.jsonl").write_text('{"image_url": "a.jpg", "label": "can"}\n')

    def write(body: str, name: str = "job.yml") -> Path:
        path = folder / name
        path.write_text("type: automl\ntask: image_classification\n"
                        "training_data: {path: train.jsonl, type: uri_file}\n" + textwrap.dedent(body))
        return path
    return write


@pytest.fixture
def job_file(tmp_path):
    return job_writer(tmp_path)


def _run(path: Path, run_dir: Path, **kwargs):
    lines: list[str] = []
    result = run_sweep(load_job(path), run_dir, trainer=TRAINER, devices=[], progress=lines.append,
                       poll_interval_s=0.05, **kwargs)
    return result, lines


def _trials(run_dir: Path):
    record = json.loads((run_dir / "sweep.json").read_text())
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal")))
    return optuna.load_study(study_name=record["study_name"], storage=storage).get_trials()


def _counted(trials):
    return [t for t in trials if t.user_attrs.get(attrs.STATUS) not in attrs.EXCLUDED]


# --- failure isolation ------------------------------------------------------------------------------------


def test_failed_trials_are_recorded_and_the_sweep_goes_on(job_file, tmp_path):
    path = job_file(f"""\
        limits: {{max_trials: 5, max_concurrent_trials: 3}}
        training_parameters: {{number_of_epochs: 2}}
        sweep: {{sampling_algorithm: grid}}
        search_space:
          - learning_rate: "choice(0.005, {RAISES}, {EXITS}, {NO_MEMORY}, {KILLED})"
        """)
    run_dir = tmp_path / "run"
    result, _ = _run(path, run_dir)
    by_lr = {t.user_attrs[attrs.CONFIG]["learning_rate"]: t for t in _trials(run_dir)}
    assert result.counts == {"completed": 1, "failed": 4}
    assert result.best.config["learning_rate"] == 0.005
    raised, exited, no_memory, killed = (by_lr[lr].user_attrs for lr in (RAISES, EXITS, NO_MEMORY, KILLED))
    assert raised[attrs.ERROR_KIND] == "exception" and "RuntimeError: synthetic failure" in raised[attrs.ERROR]
    assert exited[attrs.ERROR_KIND] == "crashed" and "exited with status 7" in exited[attrs.ERROR]
    assert f"fake training default lr={EXITS}" in exited[attrs.ERROR]  # the end of its log
    assert no_memory[attrs.ERROR_KIND] == "out_of_memory"
    assert killed[attrs.ERROR_KIND] == "out_of_memory" and "killed by SIGKILL" in killed[attrs.ERROR]
    for lr in (RAISES, EXITS, NO_MEMORY, KILLED):
        assert by_lr[lr].state == optuna.trial.TrialState.FAIL
        assert Path(by_lr[lr].user_attrs[attrs.LOG]).read_text().startswith("fake training")


# --- sampling through the runner ---------------------------------------------------------------------------


def test_grid_runs_each_point_of_each_subspace_once(job_file, tmp_path):
    path = job_file("""\
        limits: {max_trials: 20, max_concurrent_trials: 3}
        training_parameters: {number_of_epochs: 1}
        sweep: {sampling_algorithm: grid}
        search_space:
          - model_name: "choice('resnet18', 'resnet34')"
            learning_rate: "choice(0.004, 0.006)"
          - model_name: mobilenetv2
            learning_rate: "choice(0.003)"
        """)
    result, _ = _run(path, tmp_path / "run")
    assert result.budget == 5 and len(result.rows) == 5
    configs = {(r.config["model_name"], r.config["learning_rate"]) for r in result.rows}
    assert configs == {("resnet18", 0.004), ("resnet18", 0.006), ("resnet34", 0.004), ("resnet34", 0.006),
                       ("mobilenetv2", 0.003)}


def test_seeded_random_sweep_repeats(job_file, tmp_path):
    path = job_file("""\
        limits: {max_trials: 3, max_concurrent_trials: 3}
        training_parameters: {number_of_epochs: 1}
        sweep: {sampling_algorithm: {type: random, seed: 7}}
        search_space:
          - model_name: "choice('resnet18', 'mobilenetv2')"
            learning_rate: "loguniform(-6.9, -4)"
        """)

    def by_slot(run_dir):
        return {t.user_attrs[attrs.SLOT]: t.user_attrs[attrs.CONFIG] for t in _trials(run_dir)}

    _run(path, tmp_path / "first")
    _run(path, tmp_path / "second")
    first, second = by_slot(tmp_path / "first"), by_slot(tmp_path / "second")
    assert first == second and len({str(c) for c in first.values()}) == 3


def test_bayesian_sweep_runs(job_file, tmp_path):
    path = job_file("""\
        limits: {max_trials: 4, max_concurrent_trials: 2}
        training_parameters: {number_of_epochs: 1}
        sweep: {sampling_algorithm: {type: bayesian, seed: 1, n_startup_trials: 2}}
        search_space:
          - model_name: resnet18
            learning_rate: "uniform(0.001, 0.01)"
        """)
    result, _ = _run(path, tmp_path / "run")
    assert result.counts == {"completed": 4}
    assert len({r.config["learning_rate"] for r in result.rows}) == 4


# --- resume ------------------------------------------------------------------------------------------------


def _worker(path: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """A sweep worker in its own process (as on another terminal or machine)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen(python_command(WORKER_ENTRY, ["run", str(path), "--run-dir", str(run_dir), "--trainer",
                                                          TRAINER, "--devices", "cpu", *extra]),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_a_killed_sweep_resumes_without_repeating_finished_trials(job_file, tmp_path, monkeypatch):
    monkeypatch.setenv(EPOCH_SECONDS, "0.25")
    path = job_file("""\
        limits: {max_trials: 6, max_concurrent_trials: 2}
        training_parameters: {number_of_epochs: 4}
        sweep: {sampling_algorithm: {type: random, seed: 3}}
        search_space:
          - model_name: "choice('resnet18', 'mobilenetv2')"
            learning_rate: "uniform(0.001, 0.01)"
        """)
    run_dir = tmp_path / "run"
    worker = _worker(path, run_dir)

    def progress():
        if not (run_dir / "study.journal").exists():
            return False
        trials = _trials(run_dir)
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        return len(done) >= 2 and any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    _wait_for(progress)
    worker.send_signal(signal.SIGKILL)  # no clean-up at all; its trial processes die with it
    worker.wait()
    before = {t.number: t for t in _trials(run_dir)}
    finished_before = {n: t.user_attrs[attrs.CONFIG] for n, t in before.items() if t.state.is_finished()}
    running_before = {n: t.user_attrs.get(attrs.CONFIG) for n, t in before.items()
                      if t.state == optuna.trial.TrialState.RUNNING}
    assert running_before

    result, lines = _run(path, run_dir)  # the same command again
    after = _trials(run_dir)
    counted = _counted(after)
    assert len(counted) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in counted), [
        (t.number, t.state, t.user_attrs.get(attrs.ERROR)) for t in counted]
    assert sorted(t.user_attrs[attrs.SLOT] for t in counted) == list(range(6))
    # Finished trials stay as they were; the interrupted ones are re-run with their values.
    for number, config in finished_before.items():
        assert after[number].state == optuna.trial.TrialState.COMPLETE and after[number].user_attrs[attrs.CONFIG] == config
    for number, config in running_before.items():
        assert after[number].user_attrs[attrs.STATUS] == "interrupted"
        rerun = next(t for t in counted if t.user_attrs.get(attrs.RETRY_OF) == number)
        assert config is None or rerun.user_attrs[attrs.CONFIG] == config  # None: killed before it drew
    assert any("will be re-run" in line for line in lines)
    assert len(result.rows) == 6 and sweep_status(run_dir).finished


