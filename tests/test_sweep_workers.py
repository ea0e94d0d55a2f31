"""Several workers share one sweep and run exactly max_trials trials between them: on one journal
file (as on a shared file system), and on PostgreSQL when VISIONSWEEP_TEST_POSTGRES_URL is set."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import optuna
import pytest

from sweep_helpers import EPOCH_SECONDS, counted, job_writer, start_worker
from visionsweep.sweep import attrs


@pytest.fixture
def job_file(tmp_path):
    return job_writer(tmp_path)


def _two_workers(path: Path, tmp_path: Path, storage: str, study_name: str):
    workers = [start_worker(path, tmp_path / f"worker{i}", "--storage", storage, "--study-name", study_name)
               for i in range(2)]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    return outputs


def _check_shared_sweep(trials, budget):
    budgeted = counted(trials)
    assert len(budgeted) == budget
    assert sorted(t.user_attrs[attrs.SLOT] for t in budgeted) == list(range(budget))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in budgeted)
    assert len({json.dumps(t.user_attrs[attrs.CONFIG], sort_keys=True) for t in budgeted}) == budget
    workers = [t.user_attrs[attrs.WORKER] for t in budgeted]
    assert len(set(workers)) == 2, workers  # both took part


SHARED_JOB = """\
    limits: {max_trials: 6, max_concurrent_trials: 2}
    training_parameters: {number_of_epochs: 3}
    sweep: {sampling_algorithm: {type: random, seed: 5}}
    search_space:
      - model_name: "choice('resnet18', 'mobilenetv2')"
        learning_rate: "uniform(0.001, 0.01)"
    """


@pytest.mark.slow
def test_two_workers_share_one_journal_and_run_exactly_max_trials(job_file, tmp_path, monkeypatch):
    monkeypatch.setenv(EPOCH_SECONDS, "0.4")
    journal = tmp_path / "shared" / "study.journal"
    _two_workers(job_file(SHARED_JOB), tmp_path, str(journal), "shared")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    _check_shared_sweep(optuna.load_study(study_name="shared", storage=storage).get_trials(), 6)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("VISIONSWEEP_TEST_POSTGRES_URL"),
                    reason="set VISIONSWEEP_TEST_POSTGRES_URL=postgresql://user@host/db to run two workers on PostgreSQL")
def test_two_workers_share_one_postgresql_study(job_file, tmp_path, monkeypatch):
    monkeypatch.setenv(EPOCH_SECONDS, "0.4")
    url = os.environ["VISIONSWEEP_TEST_POSTGRES_URL"]
    name = f"visionsweep-test-{uuid.uuid4().hex[:8]}"
    _two_workers(job_file(SHARED_JOB), tmp_path, url, name)
    study = optuna.load_study(study_name=name, storage=url)
    try:
        _check_shared_sweep(study.get_trials(), 6)
    finally:
        optuna.delete_study(study_name=name, storage=url)
