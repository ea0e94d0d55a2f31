"""Hardening of sweeps: status of a killed runner, runners that open a new SQLite storage together,
every job-file problem in one pass, and prediction with a sweep's run folder.

Runners and trials are real processes (the stand-in trainer of ``sweep_helpers``), killed with
SIGKILL where a test needs a dead runner.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweep_helpers import (
    EPOCH_SECONDS, RAISES, STALL_AFTER, counted, job_writer, run_fake, start_worker, study_trials, wait_for,
)
from visionsweep.cli import main as cli_main
from visionsweep.errors import CheckpointError, SettingsError
from visionsweep.sweep import attrs
from visionsweep.sweep.best_model import best_model_folder
from visionsweep.sweep.job import load_job
from visionsweep.sweep.slots import is_stale
from visionsweep.sweep.status import format_status, sweep_status
from visionsweep.sweep.workers import runner_records, worker_identity


@pytest.fixture
def job_file(tmp_path):
    return job_writer(tmp_path)


# --- 12: status tells a dead runner from a live one --------------------------------------------------------


@pytest.mark.slow
def test_status_after_a_killed_runner_says_it_stopped_and_how_to_resume(job_file, tmp_path, monkeypatch):
    monkeypatch.setenv(EPOCH_SECONDS, "0.1")
    monkeypatch.setenv(STALL_AFTER, "2")  # the first runner's trial reports epoch 1, then runs until it is killed
    path = job_file("""\
        limits: {max_trials: 3, max_concurrent_trials: 1}
        training_parameters: {number_of_epochs: 4}
        sweep: {sampling_algorithm: {type: random, seed: 3}}
        search_space:
          - learning_rate: "uniform(0.001, 0.01)"
        """)
    run_dir = tmp_path / "run"
    worker = start_worker(path, run_dir)
    monkeypatch.delenv(STALL_AFTER)

    def a_trial_reported():
        try:
            return any(t.state == TrialState.RUNNING and t.intermediate_values for t in study_trials(run_dir))
        except (OSError, KeyError):  # no sweep.json, or no study in the journal yet
            return False
    wait_for(a_trial_reported)
    live = sweep_status(run_dir)
    assert live.state == "running" and not live.finished and live.interrupted == []
    assert [(r.pid, r.state) for r in live.runners] == [(worker.pid, "running")]
    assert "in progress" in format_status(live) and f"runner:     pid {worker.pid} on" in format_status(live)

    worker.send_signal(signal.SIGKILL)  # no clean-up: the runner's record and its trial stay as they were
    worker.wait()
    worker.stdout.close()
    running = [t.number for t in study_trials(run_dir) if t.state == TrialState.RUNNING]
    assert len(running) == 1  # the storage still says running: status must not believe it
    dead = sweep_status(run_dir)
    assert dead.state == "stopped" and not dead.finished
    assert dead.interrupted == running and not dead.counts.get(attrs.RUNNING)
    assert dead.counts[attrs.INTERRUPTED] == 1
    assert [(r.pid, r.state) for r in dead.runners] == [(worker.pid, "dead")]
    assert running[0] not in [row.trial for row in dead.rows]
    text = format_status(dead)
    assert "(image_classification, stopped)" in text
    assert f"stopped:    runner (pid {worker.pid} on {socket.gethostname()}, last heartbeat" in text
    assert f"is not running (killed or crashed); trial {running[0]} was interrupted" in text
    assert f"to resume:  rerun `visionsweep run {path} --run-dir {run_dir}`" in text
    assert "running:" not in text

    # The command status prints resumes it: the interrupted trial is re-run with its values, and the
    # new runner takes over the dead one, which status then no longer names.
    result, lines = run_fake(path, run_dir)
    assert any(f"trial(s) {running[0]} lost their worker" in line for line in lines)
    trials = study_trials(run_dir)
    rerun = next(t for t in trials if t.user_attrs.get(attrs.RETRY_OF) == running[0])
    assert rerun.state == TrialState.COMPLETE
    assert rerun.user_attrs[attrs.CONFIG] == next(t for t in trials if t.number == running[0]).user_attrs[attrs.CONFIG]
    assert len(counted(trials)) == 3 and result.counts[attrs.COMPLETED] == 3
    done = sweep_status(run_dir)
    assert done.state == "finished" and done.runners == [] and done.interrupted == []
    assert "(image_classification, finished)" in format_status(done) and "stopped" not in format_status(done)
    states = {r.pid: r.state for r in runner_records(_study(run_dir))}
    assert states[worker.pid] == "dead" and states[os.getpid()] == "ended"


def test_runners_and_trials_on_another_host_are_judged_by_their_heartbeat():
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    now = time.time()
    for pid, heartbeat in ((11, now - 20), (12, now - 400)):
        study.set_user_attr(f"{attrs.RUNNER_PREFIX}elsewhere:{pid}:1", {
            "host": "elsewhere", "pid": pid, "worker": f"{pid}:1", "started": now - 500, "heartbeat": heartbeat,
            "ended": None, "stale_after_s": 300.0})
    study.set_user_attr(f"{attrs.RUNNER_PREFIX}elsewhere:13:1", {
        "host": "elsewhere", "pid": 13, "worker": "13:1", "started": now - 500, "heartbeat": now - 400,
        "ended": now - 400, "stale_after_s": 300.0})
    assert [(r.pid, r.state) for r in runner_records(study, now=now)] == [(11, "running"), (12, "dead"), (13, "ended")]

    trial = study.ask()
    for key, value in {attrs.HOST: "elsewhere", attrs.WORKER: "11:1", attrs.HEARTBEAT: now - 20}.items():
        trial.set_user_attr(key, value)
    frozen = study.get_trials()[0]
    assert not is_stale(frozen, now, 300.0) and is_stale(frozen, now + 281, 300.0)
    # On this host the process answers at once, whatever the heartbeat says.
    mine = worker_identity()
    trial.set_user_attr(attrs.HOST, mine[attrs.HOST])
    trial.set_user_attr(attrs.WORKER, mine[attrs.WORKER])
    assert not is_stale(study.get_trials()[0], now + 10_000, 300.0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial.set_user_attr(attrs.WORKER, f"{dead.pid}:1")
    assert is_stale(study.get_trials()[0], now, 300.0)


# --- 13: runners that open a new SQLite storage at the same moment --------------------------------------


def _start_together(setup: str, actions: list[str], folder: Path) -> list[subprocess.Popen]:
    """One Python process per action, each held after ``setup`` (its imports) until all are ready,
    then released at the same moment."""
    go = folder / "go"
    processes = []
    for index, action in enumerate(actions):
        ready = folder / f"ready{index}"
        code = (f"import os, sys, time\n{setup}\nopen({str(ready)!r}, 'w').close()\n"
                f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.001)\n{action}\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        processes.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    wait_for(lambda: all((folder / f"ready{i}").exists() for i in range(len(actions))), timeout=120)
    go.touch()
    return processes


def test_processes_that_open_a_new_sqlite_storage_together_all_succeed(tmp_path):
    # Without the retry, one of two processes fails in most rounds with "UNIQUE constraint failed:
    # alembic_version.version_num" or "table studies already exists".
    for round_ in range(2):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        url = f"sqlite:///{folder / 'study.db'}"
        open_ = (f"storage = open_storage({url!r}, {str(folder)!r})\n"
                 "study, _, _ = open_study(storage, 'shared', fingerprint='f', plan={'budget': 1}, summary={})\n"
                 "print('opened', study.study_name)")
        processes = _start_together("from visionsweep.sweep.storage import open_storage, open_study",
                                    [open_, open_], folder)
        outputs = [p.communicate(timeout=120)[0] for p in processes]
        assert [p.returncode for p in processes] == [0, 0], outputs
        assert all("opened shared" in out for out in outputs)
        assert optuna.get_all_study_names(url) == ["shared"]


@pytest.mark.slow
def test_two_runners_started_together_on_a_new_sqlite_storage_both_run(job_file, tmp_path, monkeypatch):
    monkeypatch.setenv(EPOCH_SECONDS, "0.3")
    path = job_file("""\
        limits: {max_trials: 4, max_concurrent_trials: 2}
        training_parameters: {number_of_epochs: 2}
        sweep: {sampling_algorithm: {type: random, seed: 5}}
        search_space:
          - learning_rate: "uniform(0.001, 0.01)"
        """)
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    commands = [["run", str(path), "--run-dir", str(tmp_path / f"worker{i}"), "--trainer", "sweep_helpers:fake_train",
                 "--devices", "cpu", "--storage", url, "--study-name", "shared"] for i in range(2)]
    actions = [f"sys.exit(main({command!r}))" for command in commands]
    # Everything a runner imports or reads before it opens the storage is loaded before the barrier, so
    # that both reach the new database within milliseconds of each other.
    warm_up = ("from visionsweep.sweep.__main__ import main\nfrom visionsweep.sweep.job import load_job\n"
               f"import optuna.storages._rdb.storage, alembic.migration\nload_job({str(path)!r})")
    processes = _start_together(warm_up, actions, tmp_path)
    outputs = [p.communicate(timeout=180)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    trials = optuna.load_study(study_name="shared", storage=url).get_trials()
    budgeted = counted(trials)
    assert len(budgeted) == 4 and all(t.state == TrialState.COMPLETE for t in budgeted)
    assert sorted(t.user_attrs[attrs.SLOT] for t in budgeted) == [0, 1, 2, 3]
    assert len({t.user_attrs[attrs.WORKER] for t in budgeted}) == 2  # both ran trials


class _FakeRedis:
    """What the Redis journal backend calls on its client, over a dict."""

    def __init__(self, values: dict[str, bytes]):
        self.values = values

    def get(self, key: str) -> bytes | None:
        return self.values.get(key)

    def set(self, key: str, value: bytes) -> None:
        self.values[key] = value


class _WritesAFile:
    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "pwned"))


def test_a_redis_storage_never_unpickles_the_snapshot_stored_beside_its_log(tmp_path):
    import pickle

    from optuna.storages.journal import JournalRedisBackend, JournalStorage

    from visionsweep.sweep.storage import _RedisLogOnly

    marker = tmp_path / "pwned"
    planted = {":snapshot": pickle.dumps(_WritesAFile(marker))}  # whoever can write to Redis can plant this
    for backend_class in (JournalRedisBackend, _RedisLogOnly):
        backend = backend_class.__new__(backend_class)  # the client is replaced: no Redis server is needed
        backend._redis, backend._prefix, backend._use_cluster = _FakeRedis(dict(planted)), "", False
        JournalStorage(backend)
        # Optuna's own backend runs the planted code on open; the one visionsweep opens does not.
        assert marker.exists() == (backend_class is JournalRedisBackend)
        marker.unlink(missing_ok=True)
    backend = _RedisLogOnly.__new__(_RedisLogOnly)
    backend._redis, backend._prefix, backend._use_cluster = _FakeRedis({}), "", False
    backend.save_snapshot(b"anything")
    assert backend._redis.values == {}


# --- 14: every problem of a job file in one pass -----------------------------------------------------------


def _job(tmp_path: Path, text: str) -> Path:
    (tmp_path / "train.jsonl").write_text('{"image_url": "a.jpg", "label": "can"}\n')
    path = tmp_path / "job.yml"
    path.write_text(textwrap.dedent(text))
    return path


def test_every_layer_of_a_job_file_is_checked_in_one_pass(tmp_path):
    path = _job(tmp_path, """\
        type: automl
        task: image_classification
        training_data: {path: train.jsonl, type: uri_file}
        limts: {max_trials: 4}
        limits: {max_trials: 4, max_concurent_trials: 2}
        training_parameters: {learning_rat: 0.1, momentum: 7, number_of_epochs: 2}
        sweep: {sampling_algorithm: grid}
        search_space:
          - learnin_rate: "choice(0.1, 0.2)"
            optimizer: "choice('sgd', 'adamx')"
            model_name: "choice('resnet18', 'resnet34')"
          - model_name: mobilenetv2
            weight_decay: 5
            learning_rate: "uniform(0.001, 2.0)"
        """)
    with pytest.raises(SettingsError) as error:
        load_job(path)
    problems = error.value.problems
    expected = [
        "limts: unknown key; did you mean 'limits'?",                                   # top level
        "limits.max_concurent_trials: unknown key; did you mean 'max_concurrent_trials'?",  # limits
        "training_parameters.learning_rat: unknown setting; did you mean 'learning_rate'?",  # a name
        "training_parameters.momentum: got 7; Input should be less than or equal to 1",  # a value
        "search_space[0].learnin_rate: unknown setting; did you mean 'learning_rate'?",  # a search-space name
        "search_space[0] with model_name resnet18: optimizer='adamx' (from choice('sgd', 'adamx')) is rejected",
        "search_space[0] with model_name resnet34: optimizer='adamx'",
        "search_space[1] with model_name mobilenetv2: weight_decay: got 5",  # a fixed value of a sub-space ...
        "search_space[1] with model_name mobilenetv2: learning_rate=2.0",  # ... and a distribution beside it
        "search_space[1].learning_rate: grid sampling takes only choice(...), got uniform(0.001, 2.0)",  # sampling
    ]
    for fragment in expected:
        assert sum(fragment in p for p in problems) == 1, (fragment, problems)
    assert len(problems) == len(expected), problems
    assert not any("momentum" in p for p in problems if p.startswith("search_space"))  # reported once, where it is


def test_setting_names_are_checked_even_when_the_task_is_unreadable(tmp_path):
    path = _job(tmp_path, """\
        type: automl
        task: image_clasification
        training_data: {path: train.jsonl, type: uri_file}
        limits: {max_trials: 2}
        training_parameters: {learning_rat: 0.1}
        sweep: {sampling_algorithm: random}
        search_space:
          - {model_name: resnet18, numbr_of_epochs: "choice(1, 2)"}
        """)
    with pytest.raises(SettingsError) as error:
        load_job(path)
    text = "\n".join(error.value.problems)
    assert "task: got 'image_clasification'" in text
    assert "training_parameters.learning_rat: unknown setting; did you mean 'learning_rate'?" in text
    assert "search_space[0].numbr_of_epochs: unknown setting; did you mean 'number_of_epochs'?" in text
    assert len(error.value.problems) == 3


def test_single_model_job_reports_bad_values_and_rules_of_training_parameters(tmp_path):
    path = _job(tmp_path, """\
        type: automl
        task: image_classification
        training_data: {path: train.jsonl, type: uri_file}
        limits: {max_trials: 1, max_concurent_trials: 1}
        training_parameters: {momentum: 7, optimizer: adamx, learning_rat: 0.1, valid_crop_size: 300,
                              valid_resize_size: 256}
        """)
    with pytest.raises(SettingsError) as error:
        load_job(path)
    text = "\n".join(error.value.problems)
    for fragment in ("limits.max_concurent_trials: unknown key", "training_parameters.learning_rat: unknown setting",
                     "training_parameters.momentum: got 7", "training_parameters.optimizer: got 'adamx'",
                     "training_parameters: valid_crop_size (300) is larger than valid_resize_size (256)"):
        assert fragment in text, fragment
    assert len(error.value.problems) == 5


# --- 16: predict and evaluate with a sweep's run folder ----------------------------------------------------


# Not slow: the fast tier's one sweep that starts trial processes (runner, trial process, best model).
def test_a_sweep_folder_resolves_to_its_best_trials_model_folder(job_file, tmp_path, caplog):
    path = job_file("""\
        limits: {max_trials: 3, max_concurrent_trials: 3}
        training_parameters: {number_of_epochs: 2}
        sweep: {sampling_algorithm: grid}
        search_space:
          - learning_rate: "choice(0.003, 0.005, 0.008)"
        """)
    run_dir = tmp_path / "run"
    result, _ = run_fake(path, run_dir)
    best = result.best
    assert best.config == {"learning_rate": 0.005}
    with caplog.at_level("INFO", logger="visionsweep"):
        assert best_model_folder(run_dir) == Path(best.model_dir)
    assert f"using trial {best.trial}, the best (accuracy {best.score:.4g})" in caplog.text

    # A run folder moved to another place (or machine) still finds the model inside it.
    moved = tmp_path / "moved"
    run_dir.rename(moved)
    assert best_model_folder(moved) == moved / "trials" / Path(best.trial_dir).name / "model"
    assert float((best_model_folder(moved) / "weights.txt").read_text()) == best.score
    # Without the trial folder, the runner's copy of the best model serves, as it is of the same trial.
    os.rename(moved / "trials", tmp_path / "trials-elsewhere")
    assert best_model_folder(moved) == moved / "best_model"
    (moved / "best_model").rename(tmp_path / "best-elsewhere")
    with pytest.raises(CheckpointError, match=f"trial {best.trial}, has its model folder .* on another machine"):
        best_model_folder(moved)


@pytest.mark.slow
def test_predict_on_a_sweep_without_a_scored_trial_says_so(job_file, tmp_path, capsys):
    path = job_file(f"""\
        limits: {{max_trials: 1}}
        training_parameters: {{number_of_epochs: 1, learning_rate: {RAISES}}}
        """)
    run_dir = tmp_path / "run"
    result, _ = run_fake(path, run_dir)
    assert result.counts == {"failed": 1}
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert cli_main(["predict", str(run_dir), str(image), "--output", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"error: sweep {run_dir} has no finished trial with a score yet (1 trial(s) on the leaderboard, 0 running)" \
        in err
    assert "Traceback" not in err and not (tmp_path / "p.jsonl").exists()


@pytest.mark.slow
def test_predict_and_evaluate_a_sweep_folder_use_its_best_trial(tmp_path, caplog):
    from conftest import TINY_SETTINGS, write_color_dataset

    data = write_color_dataset(tmp_path / "data", per_class=4, size=32)
    settings = {k: v for k, v in TINY_SETTINGS.items() if k not in ("model_name", "learning_rate")}
    settings["number_of_epochs"] = 1
    job = tmp_path / "job.yml"
    job.write_text(textwrap.dedent(f"""\
        type: automl
        task: image_classification
        training_data: {{path: {data}, type: uri_file}}
        validation_data: {{path: {data}, type: uri_file}}
        limits: {{max_trials: 2, max_concurrent_trials: 2}}
        training_parameters: {json.dumps(settings)}
        sweep: {{sampling_algorithm: grid}}
        search_space:
          - model_name: "choice('resnet18', 'mobilenetv2')"
            learning_rate: 0.01
        """))
    run_dir = tmp_path / "run"
    assert cli_main(["run", str(job), "--run-dir", str(run_dir), "--devices", "cpu"]) == 0
    status = sweep_status(run_dir)
    assert status.state == "finished" and status.counts.get(attrs.COMPLETED) == 2
    best = status.best

    with caplog.at_level("INFO", logger="visionsweep"):
        assert cli_main(["predict", str(run_dir), str(data), "--output", str(tmp_path / "sweep.jsonl")]) == 0
    assert f"using trial {best.trial}, the best" in caplog.text
    assert cli_main(["predict", str(Path(best.model_dir)), str(data), "--output", str(tmp_path / "best.jsonl")]) == 0
    assert (tmp_path / "sweep.jsonl").read_text() == (tmp_path / "best.jsonl").read_text()
    metrics_file = tmp_path / "metrics.json"
    assert cli_main(["evaluate", str(run_dir), "--data", str(data), "--output", str(metrics_file)]) == 0
    assert json.loads(metrics_file.read_text())["metrics"]["accuracy"] == pytest.approx(best.score)


def _study(run_dir: Path) -> optuna.Study:
    record = json.loads((run_dir / "sweep.json").read_text())
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal")))
    return optuna.load_study(study_name=record["study_name"], storage=storage)
