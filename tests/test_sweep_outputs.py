"""Sweep outputs and limits through the runner: leaderboard, best model, status, invalid draws,
early termination keeping its best model, the sweep timeout. Uses the stand-in trainer of sweep_helpers."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import optuna
import pytest

from sweep_helpers import EPOCH_SECONDS, IGNORE_STOP, STALL_AFTER, TRAINER, job_writer, run_fake, study_trials
from visionsweep.cli import main as cli_main
from visionsweep.errors import SettingsError
from visionsweep.sweep import attrs
from visionsweep.sweep.__main__ import main as sweep_main
from visionsweep.sweep.automode import Hardware
from visionsweep.sweep.job import load_job
from visionsweep.sweep.runner import run_sweep
from visionsweep.sweep.sampling import SamplingSpec, assigned_points
from visionsweep.sweep.space import parse_search_space
from visionsweep.sweep.status import dashboard_command, format_status, sweep_status


@pytest.fixture
def job_file(tmp_path):
    return job_writer(tmp_path)


# --- outputs --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_writes_leaderboard_best_model_and_status(job_file, tmp_path):
    path = job_file("""\
        limits: {max_trials: 3, max_concurrent_trials: 3}
        training_parameters: {number_of_epochs: 3}
        sweep: {sampling_algorithm: grid}
        search_space:
          - model_name: "choice('resnet18', 'mobilenetv2')"
            learning_rate: 0.006
          - model_name: resnet34
            learning_rate: 0.005
        """)
    run_dir = tmp_path / "run"
    result, lines = run_fake(path, run_dir)
    assert result.budget == 3 and result.counts == {"completed": 3}
    assert result.best.trial == next(t.number for t in study_trials(run_dir) if t.params.get("subspace") == 1)
    assert result.best.config == {"model_name": "resnet34", "learning_rate": 0.005}
    assert abs(result.best.score - (1 - 0.2 / 3)) < 1e-9 and result.best.best_epoch == 3
    # The best trial's model folder is copied to a stable place, with a record of where it came from.
    assert float((run_dir / "best_model" / "weights.txt").read_text()) == result.best.score
    assert json.loads((run_dir / "best_trial.json").read_text())["trial"] == result.best.trial
    rows = list(csv.DictReader((run_dir / "leaderboard.csv").open()))
    assert [r["trial"] for r in rows][0] == str(result.best.trial) and len(rows) == 3
    assert {r["model_name"] for r in rows} == {"resnet18", "mobilenetv2", "resnet34"}
    assert any(line.startswith("#  trial  status") for line in "\n".join(lines).splitlines())
    for trial in study_trials(run_dir):
        record = json.loads((Path(trial.user_attrs[attrs.TRIAL_DIR]) / "trial.json").read_text())
        assert record["status"] == "completed" and record["epochs_run"] == 3
    status = sweep_status(run_dir)
    assert status.finished and status.done == 3 and status.best.trial == result.best.trial
    assert "3/3 trials ended" in format_status(status)
    assert dashboard_command(run_dir)[:2] == ["optuna-dashboard", str((run_dir / "study.journal").resolve())]


@pytest.mark.slow
def test_sampled_settings_the_schema_rejects_fail_without_a_process(job_file, tmp_path):
    path = job_file("""\
        limits: {max_trials: 4, max_concurrent_trials: 2}
        training_parameters: {number_of_epochs: 1, learning_rate: 0.005}
        sweep: {sampling_algorithm: grid}
        search_space:
          - model_name: vitb16r224
            training_crop_size: "choice(224, 256)"
            validation_crop_size: "choice(224, 256)"
        """)
    job = load_job(path)
    assert any("train_crop_size == valid_crop_size" in n for n in job.notes)
    result, _ = run_fake(path, tmp_path / "run")
    assert result.counts == {"completed": 2, "failed": 2}
    failed = [r for r in result.rows if r.status == "failed"]
    assert all("did not start" in r.note and "train_crop_size == valid_crop_size" in r.note for r in failed)
    assert not any((Path(r.trial_dir) / "process.log").exists() for r in failed)


# --- early termination and limits --------------------------------------------------------------------------


@pytest.mark.slow
def test_bandit_cancels_a_poor_trial_which_keeps_its_metrics_and_best_model(job_file, tmp_path):
    space, _ = parse_search_space([{"learning_rate": "choice(0.005, 0.02)"}])
    # One trial at a time with the good point first (the grid order is seeded), so the poor one has a peer.
    seed = next(s for s in range(100) if assigned_points(SamplingSpec("grid", seed=s), space)[0]["learning_rate"] == 0.005)
    path = job_file(f"""\
        limits: {{max_trials: 2, max_concurrent_trials: 1}}
        training_parameters: {{number_of_epochs: 4, model_name: resnet18}}
        sweep:
          sampling_algorithm: {{type: grid, seed: {seed}}}
          early_termination: {{type: bandit, slack_factor: 0.1, delay_evaluation: 2, min_peers: 1}}
        search_space:
          - learning_rate: "choice(0.005, 0.02)"
        """)
    result, _ = run_fake(path, tmp_path / "run")
    good, poor = result.rows
    assert good.config["learning_rate"] == 0.005 and good.status == "completed" and good.epochs_run == 4
    # Interval 2: the best value there is 0.9, the poor trial's best 0.3 is below 0.9 / 1.1.
    assert poor.status == "cancelled" and poor.epochs_run == 2 and abs(poor.score - 0.3) < 1e-9
    assert poor.note == "early termination by bandit at interval 2"
    assert float((Path(poor.model_dir) / "weights.txt").read_text()) == poor.score
    poor_trial = next(t for t in study_trials(tmp_path / "run") if t.number == poor.trial)
    assert poor_trial.state == optuna.trial.TrialState.PRUNED
    assert list(poor_trial.intermediate_values) == [1, 2] and abs(poor_trial.intermediate_values[2] - 0.3) < 1e-9


@pytest.mark.slow
def test_a_policy_does_not_cancel_a_trial_at_its_last_epoch(job_file, tmp_path):
    space, _ = parse_search_space([{"learning_rate": "choice(0.005, 0.02)"}])
    seed = next(s for s in range(100) if assigned_points(SamplingSpec("grid", seed=s), space)[0]["learning_rate"] == 0.005)
    # As in the test above, but the poor trial's interval 2 is its last epoch: stopping it there
    # saves nothing, so it completes (its values still reach the study for later comparisons).
    path = job_file(f"""\
        limits: {{max_trials: 2, max_concurrent_trials: 1}}
        training_parameters: {{number_of_epochs: 2, model_name: resnet18}}
        sweep:
          sampling_algorithm: {{type: grid, seed: {seed}}}
          early_termination: {{type: bandit, slack_factor: 0.1, delay_evaluation: 2, min_peers: 1}}
        search_space:
          - learning_rate: "choice(0.005, 0.02)"
        """)
    result, _ = run_fake(path, tmp_path / "run")
    good, poor = result.rows
    assert good.config["learning_rate"] == 0.005 and poor.config["learning_rate"] == 0.02
    assert poor.status == "completed" and poor.epochs_run == 2 and abs(poor.score - 0.3) < 1e-9
    poor_trial = next(t for t in study_trials(tmp_path / "run") if t.number == poor.trial)
    assert poor_trial.state == optuna.trial.TrialState.COMPLETE and list(poor_trial.intermediate_values) == [1, 2]


@pytest.mark.slow
def test_timeout_stops_running_trials_cleanly(job_file, tmp_path, monkeypatch):
    monkeypatch.setenv(EPOCH_SECONDS, "0.2")
    path = job_file("""\
        limits: {max_trials: 6, max_concurrent_trials: 2, timeout_minutes: 0.04}
        training_parameters: {number_of_epochs: 100, learning_rate: 0.005}
        sweep: {sampling_algorithm: random}
        search_space: [{model_name: "choice('resnet18', 'resnet34')"}]
        """)
    started = time.time()
    result, lines = run_fake(path, tmp_path / "run")
    assert result.timed_out and time.time() - started < 30
    assert result.counts == {"cancelled": 2}  # two ran side by side, none started after the timeout
    for row in result.rows:
        assert row.note == "sweep timeout (0.04 min)" and 1 <= row.epochs_run < 100 and row.score is not None
    assert any("timeout_minutes (0.04) reached" in line for line in lines)


@pytest.mark.slow
def test_a_run_folder_keeps_its_job(job_file, tmp_path):
    body = """\
        limits: {max_trials: 1}
        training_parameters: {number_of_epochs: 1, learning_rate: %s}
        """
    run_dir = tmp_path / "run"
    run_fake(job_file(body % 0.005), run_dir)
    with pytest.raises(SettingsError, match="holds the sweep of a different job"):
        run_fake(job_file(body % 0.006, "changed.yml"), run_dir)


@pytest.mark.slow
def test_a_trial_that_does_not_stop_in_time_is_killed_and_still_cancelled(job_file, tmp_path, monkeypatch):
    monkeypatch.setenv(STALL_AFTER, "2")  # epoch 1 reports, epoch 2 never ends
    monkeypatch.setenv(IGNORE_STOP, "1")
    # The timeout leaves the trial process time to start and report epoch 1 even on a busy machine.
    path = job_file("""\
        limits: {max_trials: 1, trial_timeout_minutes: 0.1}
        training_parameters: {number_of_epochs: 5, learning_rate: 0.005}
        """)
    started = time.time()
    result, _ = run_fake(path, tmp_path / "run", stop_grace_s=0.5)
    assert time.time() - started < 30
    (row,) = result.rows
    assert row.status == "cancelled" and abs(row.score - 0.8) < 1e-9  # its one report, 1 - 0.2 / 1
    assert row.note == "trial timeout (0.1 min); killed after not stopping within 0.5s"
    assert float((Path(row.model_dir) / "weights.txt").read_text()) == row.score


@pytest.mark.slow
def test_automode_runs_its_default_configurations_first(job_file, tmp_path):
    path = job_file("""\
        limits: {max_trials: 4, max_concurrent_trials: 2}
        training_parameters: {number_of_epochs: 1}
        """)
    result = run_sweep(load_job(path), tmp_path / "run", trainer=TRAINER, devices=[], progress=lambda line: None,
                       hardware=Hardware(gpus=0, gpu_memory_gib=0, cpus=2), poll_interval_s=0.05)
    by_slot = {t.user_attrs[attrs.SLOT]: t.user_attrs[attrs.CONFIG] for t in study_trials(tmp_path / "run")}
    assert by_slot[0] == {"model_name": "mobilenetv2", "learning_rate": 0.01}
    assert by_slot[1] == {"model_name": "resnet18", "learning_rate": 0.01}
    assert {by_slot[2]["model_name"], by_slot[3]["model_name"]} <= {"mobilenetv2", "resnet18"}
    assert all(0.01 / 3 <= by_slot[s]["learning_rate"] <= 0.03 for s in (2, 3))
    assert result.counts == {"completed": 4}


def test_a_sweep_whose_every_draw_breaks_a_rule_starts_no_process_and_has_no_best_model(job_file, tmp_path,
                                                                                         capsys):
    # A whole sweep, job file to status, with no trial process, for the fast tier (the sweeps that start
    # trial processes are slow but one): both grid points break vitb16r224's crop rule, so both trials
    # fail before a process would start.
    path = job_file("""\
        limits: {max_trials: 2}
        training_parameters: {number_of_epochs: 1, learning_rate: 0.005, model_name: vitb16r224,
                              validation_crop_size: 224}
        sweep: {sampling_algorithm: grid}
        search_space:
          - training_crop_size: "choice(256, 288)"
        """)
    run_dir = tmp_path / "run"
    # As an extra worker runs it; 1: no trial reached a score.
    assert sweep_main(["run", str(path), "--run-dir", str(run_dir), "--trainer", TRAINER, "--devices", "cpu"]) == 1
    rows = list(csv.DictReader((run_dir / "leaderboard.csv").open()))
    assert sorted(r["training_crop_size"] for r in rows) == ["256", "288"] and {r["status"] for r in rows} == {"failed"}
    assert all("did not start" in r["note"] and "train_crop_size == valid_crop_size" in r["note"] for r in rows)
    for trial in (run_dir / "trials").iterdir():  # a record and no process.log: no process ran
        assert [p.name for p in trial.iterdir()] == ["trial.json"]
        assert json.loads((trial / "trial.json").read_text())["error"]["kind"] == "invalid_settings"
    assert not (run_dir / "best_model").exists()
    capsys.readouterr()
    assert sweep_main(["status", str(run_dir)]) == 0
    assert "2/2 trials ended" in capsys.readouterr().out
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert cli_main(["predict", str(run_dir), str(image), "--output", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"error: sweep {run_dir} has no finished trial with a score yet (2 trial(s) on the leaderboard, 0 running)" \
        in err
    assert "Traceback" not in err and not (tmp_path / "p.jsonl").exists()
