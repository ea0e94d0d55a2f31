"""The sweep runner end to end, with the stand-in trainer of ``sweep_helpers``: every trial is a
real process. Failure isolation, sampling through the runner, resume after a kill, devices."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from sweep_helpers import (
    EPOCH_SECONDS, EXITS, KILLED, NO_MEMORY, RAISES, counted, job_writer, run_fake, start_worker, study_trials,
    wait_for,
)
from visionsweep.errors import SettingsError
from visionsweep.sweep import attrs
from visionsweep.sweep.automode import Hardware
from visionsweep.sweep.runner import visible_device_ids
from visionsweep.sweep.status import sweep_status


@pytest.fixture
def job_file(tmp_path):
    return job_writer(tmp_path)


def test_the_stand_in_trainer_adds_no_torch_to_a_trial_process():
    # Every trial of the sweep tests imports sweep_helpers; with torch (visionsweep.training loads train on
    # first use, not on import) each would spend 8-13 s importing on a busy 2-core machine, and the sweep
    # tests take minutes longer. The trial process itself, and its retry rules, must not load torch either.
    code = ("import sys\nfrom visionsweep.sweep.trial_process import main\nimport visionsweep.training.recovery\n"
            "assert 'torch' not in sys.modules\nbefore = set(sys.modules)\n"
            "import sweep_helpers\nadded = set(sys.modules) - before\n"
            "assert not {'torch', 'torchvision', 'timm'} & added, sorted(added)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# --- failure isolation ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_failed_trials_are_recorded_and_the_sweep_goes_on(job_file, tmp_path):
    path = job_file(f"""\
        limits: {{max_trials: 5, max_concurrent_trials: 3}}
        training_parameters: {{number_of_epochs: 2}}
        sweep: {{sampling_algorithm: grid}}
        search_space:
          - learning_rate: "choice(0.005, {RAISES}, {EXITS}, {NO_MEMORY}, {KILLED})"
        """)
    run_dir = tmp_path / "run"
    result, _ = run_fake(path, run_dir)
    by_lr = {t.user_attrs[attrs.CONFIG]["learning_rate"]: t for t in study_trials(run_dir)}
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


@pytest.mark.slow
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
    result, _ = run_fake(path, tmp_path / "run")
    assert result.budget == 5 and len(result.rows) == 5
    configs = {(r.config["model_name"], r.config["learning_rate"]) for r in result.rows}
    assert configs == {("resnet18", 0.004), ("resnet18", 0.006), ("resnet34", 0.004), ("resnet34", 0.006),
                       ("mobilenetv2", 0.003)}


@pytest.mark.slow
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
        return {t.user_attrs[attrs.SLOT]: t.user_attrs[attrs.CONFIG] for t in study_trials(run_dir)}

    run_fake(path, tmp_path / "first")
    run_fake(path, tmp_path / "second")
    first, second = by_slot(tmp_path / "first"), by_slot(tmp_path / "second")
    assert first == second and len({str(c) for c in first.values()}) == 3


@pytest.mark.slow
def test_bayesian_sweep_runs(job_file, tmp_path):
    path = job_file("""\
        limits: {max_trials: 4, max_concurrent_trials: 2}
        training_parameters: {number_of_epochs: 1}
        sweep: {sampling_algorithm: {type: bayesian, seed: 1, n_startup_trials: 2}}
        search_space:
          - model_name: resnet18
            learning_rate: "uniform(0.001, 0.01)"
        """)
    result, _ = run_fake(path, tmp_path / "run")
    assert result.counts == {"completed": 4}
    assert len({r.config["learning_rate"] for r in result.rows}) == 4


# --- resume ------------------------------------------------------------------------------------------------


@pytest.mark.slow
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
    worker = start_worker(path, run_dir)

    def progress():
        if not (run_dir / "study.journal").exists():
            return False
        trials = study_trials(run_dir)
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        return len(done) >= 2 and any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    wait_for(progress)
    worker.send_signal(signal.SIGKILL)  # no clean-up at all; its trial processes die with it
    worker.wait()
    before = {t.number: t for t in study_trials(run_dir)}
    finished_before = {n: t.user_attrs[attrs.CONFIG] for n, t in before.items() if t.state.is_finished()}
    running_before = {n: t.user_attrs.get(attrs.CONFIG) for n, t in before.items()
                      if t.state == optuna.trial.TrialState.RUNNING}
    assert running_before

    result, lines = run_fake(path, run_dir)  # the same command again
    after = study_trials(run_dir)
    budgeted = counted(after)
    assert len(budgeted) == 6
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in budgeted), [
        (t.number, t.state, t.user_attrs.get(attrs.ERROR)) for t in budgeted]
    assert sorted(t.user_attrs[attrs.SLOT] for t in budgeted) == list(range(6))
    # Finished trials stay as they were; the interrupted ones are re-run with their values.
    for number, config in finished_before.items():
        assert after[number].state == optuna.trial.TrialState.COMPLETE and after[number].user_attrs[attrs.CONFIG] == config
    for number, config in running_before.items():
        assert after[number].user_attrs[attrs.STATUS] == "interrupted"
        rerun = next(t for t in budgeted if t.user_attrs.get(attrs.RETRY_OF) == number)
        assert config is None or rerun.user_attrs[attrs.CONFIG] == config  # None: killed before it drew
    assert any("will be re-run" in line for line in lines)
    assert len(result.rows) == 6 and sweep_status(run_dir).finished


@pytest.mark.slow
def test_a_trial_replaces_what_an_earlier_attempt_left_in_its_folder(job_file, tmp_path):
    # A trial folder is the trial's own: the runner has the trainer replace a stale run there
    # (overwrite=True) rather than refuse it, as a user's second run into one folder is refused.
    path = job_file("""\
        limits: {max_trials: 1}
        training_parameters: {number_of_epochs: 2, learning_rate: 0.005}
        """)
    stale = tmp_path / "run" / "trials" / "trial_0000"
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "weights.txt").write_text("from a run that died")
    result, _ = run_fake(path, tmp_path / "run")
    assert result.counts == {"completed": 1}, [row.note for row in result.rows]
    assert float((stale / "model" / "weights.txt").read_text()) == result.best.score


# --- devices (no GPU is used: the stand-in trainer only records what it was given) ------------------------


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.slow
def test_each_trial_gets_a_gpu_of_its_own_and_no_more_trials_than_gpus(job_file, tmp_path, monkeypatch):
    monkeypatch.setenv(EPOCH_SECONDS, "0.3")
    path = job_file("""\
        limits: {max_trials: 5, max_concurrent_trials: 3}
        training_parameters: {number_of_epochs: 3}
        sweep: {sampling_algorithm: {type: random, seed: 1}}
        search_space: [{learning_rate: "uniform(0.004, 0.006)"}]
        """)
    run_dir = tmp_path / "run"
    result, lines = run_fake(path, run_dir, devices=["3", "5"])
    assert result.counts == {"completed": 5}
    assert "2 GPU(s): running 2 trials at a time, one per GPU (max_concurrent_trials 3)" in lines
    spans = []
    for trial in study_trials(run_dir):
        environment = json.loads((Path(trial.user_attrs[attrs.TRIAL_DIR]) / "environment.json").read_text())
        start = trial.user_attrs[attrs.STARTED]
        spans.append((start, start + trial.user_attrs[attrs.DURATION], environment["CUDA_VISIBLE_DEVICES"]))
        # The runner shares out CPU threads only for CPU trials; a GPU trial keeps the user's setting.
        assert environment["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS")
    assert {device for _, _, device in spans} == {"3", "5"}
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if _overlap(a, b)]
    assert overlapping  # trials did run side by side ...
    assert all(a[2] != b[2] for a, b in overlapping)  # ... never two on one GPU
    assert all(sum(s[0] <= start < s[1] for s in spans) <= 2 for start, _, _ in spans)  # at most 2 at once


@pytest.mark.slow
def test_cpu_trials_share_the_cores_out(job_file, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    path = job_file("""\
        limits: {max_trials: 2, max_concurrent_trials: 2}
        training_parameters: {number_of_epochs: 1}
        sweep: {sampling_algorithm: grid}
        search_space: [{learning_rate: "choice(0.004, 0.006)"}]
        """)
    run_dir = tmp_path / "run"
    run_fake(path, run_dir)
    for trial in study_trials(run_dir):
        environment = json.loads((Path(trial.user_attrs[attrs.TRIAL_DIR]) / "environment.json").read_text())
        # No GPU is visible to a CPU trial, and the cores are shared out between the two at a time.
        assert environment == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 2))}


@pytest.mark.slow
def test_devices_cpu_on_a_gpu_machine_hides_the_gpus_and_plans_automode_for_the_cpu(job_file, tmp_path, monkeypatch):
    monkeypatch.setattr(Hardware, "detect", classmethod(lambda cls: Hardware(gpus=2, gpu_memory_gib=80.0, cpus=16)))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    path = job_file("""\
        limits: {max_trials: 2, max_concurrent_trials: 2}
        training_parameters: {number_of_epochs: 1}
        """)
    run_dir = tmp_path / "run"
    result, lines = run_fake(path, run_dir, devices=[])
    assert any("-> cpu model list" in line for line in lines)
    assert {row.config["model_name"] for row in result.rows} == {"mobilenetv2", "resnet18"}  # not vitb16r224
    for trial in study_trials(run_dir):
        environment = json.loads((Path(trial.user_attrs[attrs.TRIAL_DIR]) / "environment.json").read_text())
        assert environment["CUDA_VISIBLE_DEVICES"] == ""
    # Detected, the two GPUs would serve the trials, and AutoMode would plan for a large GPU.
    result, lines = run_fake(path, tmp_path / "gpu", devices=None)
    assert any("-> large gpu model list" in line for line in lines)
    assert {row.config["model_name"] for row in result.rows} == {"vitb16r224", "seresnext"}


def test_detected_gpus_keep_the_users_cuda_visible_devices():
    assert visible_device_ids(2, None) == ["0", "1"]
    # Under CUDA_VISIBLE_DEVICES=2,3 the trials must get GPUs 2 and 3, not 0 and 1.
    assert visible_device_ids(2, "2,3") == ["2", "3"]
    assert visible_device_ids(1, "GPU-8f1c, 7") == ["GPU-8f1c"]  # CUDA saw one: it stops at a bad entry
    assert visible_device_ids(0, "") == []


@pytest.mark.slow
def test_a_device_the_trials_cannot_use_is_refused_before_anything_is_written(job_file, tmp_path):
    path = job_file("""\
        limits: {max_trials: 1}
        training_parameters: {number_of_epochs: 1, learning_rate: 0.005, device: "cuda:1"}
        """)
    # On GPUs each trial sees only its own GPU, as cuda:0.
    with pytest.raises(SettingsError) as raised:
        run_fake(path, tmp_path / "run", devices=["0", "1"])
    assert raised.value.problems == [
        "training_parameters.device: got 'cuda:1' but only 1 GPU(s) exist; in this sweep each trial sees one GPU of "
        "its own (one of 0, 1, through CUDA_VISIBLE_DEVICES), where it is cuda:0: remove device or use auto, and "
        "choose the GPUs with --devices 1"]
    # On the CPU (--devices cpu) the trials see no GPU at all, so every trial would fail.
    with pytest.raises(SettingsError) as raised:
        run_fake(path, tmp_path / "run", devices=[])
    assert raised.value.problems == [
        "training_parameters.device: got 'cuda:1' but no CUDA GPU is available; use auto or cpu; in this sweep the "
        "trials run on the CPU and see no GPU (--devices cpu was given, or no GPU was found); to train on GPUs, give "
        "them with --devices"]
    assert not (tmp_path / "run").exists()
    # cuda:0 is each trial's own GPU.
    result, _ = run_fake(job_file("""\
        limits: {max_trials: 1}
        training_parameters: {number_of_epochs: 1, learning_rate: 0.005, device: "cuda:0"}
        """, name="gpu.yml"), tmp_path / "gpu", devices=["1"])
    assert result.counts == {"completed": 1}


def test_automode_models_are_checked_against_layers_to_freeze_before_anything_is_written(job_file, tmp_path):
    # On the CPU AutoMode picks mobilenetv2 (19 layer groups) and resnet18 (5) for two trials.
    path = job_file("""\
        limits: {max_trials: 2}
        training_parameters: {number_of_epochs: 1, layers_to_freeze: 6}
        """)
    with pytest.raises(SettingsError) as raised:
        run_fake(path, tmp_path / "run", devices=[])
    assert raised.value.problems == [
        "AutoMode's search_space[1]: layers_to_freeze: got 6; resnet18 has 5 layer groups (conv1+bn1, layer1, layer2, "
        "layer3, layer4), so use 0 to 5"]
    assert not (tmp_path / "run").exists()


def test_run_command_checks_the_device_against_its_devices_option_with_the_job(job_file, tmp_path, capsys):
    from visionsweep.cli import main

    path = job_file("""\
        limits: {max_trials: 2}
        training_parameters: {number_of_epochs: 1, device: cuda, learning_rat: 0.01}
        """)
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run"), "--devices", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 2 invalid job file values:\n")
    assert "  - training_parameters.learning_rat: unknown setting; did you mean 'learning_rate'?" in err
    assert ("  - training_parameters.device: got 'cuda' but no CUDA GPU is available; use auto or cpu; in this sweep "
            "the trials run on the CPU and see no GPU") in err
    assert not (tmp_path / "run").exists()
