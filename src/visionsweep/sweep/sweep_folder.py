"""A sweep's run folder as others read it: its ``sweep.json`` record and, through that, its study.

``status``, ``best_model`` and the sweep report open a sweep from its folder alone (no job file);
the runner writes the record when the sweep starts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna

from visionsweep.errors import SettingsError
from visionsweep.sweep.storage import open_storage

SWEEP_FILE = "sweep.json"


def read_sweep_file(run_dir: str | Path) -> dict[str, Any]:
    """The ``sweep.json`` of a run folder (raises ``SettingsError`` when it is not a sweep's folder)."""
    path = Path(run_dir) / SWEEP_FILE
    if not path.is_file():
        raise SettingsError([f"{run_dir} is not a sweep run folder (no {SWEEP_FILE}); give the folder that "
                             "'visionsweep run' wrote"], context="run folder")
    return json.loads(path.read_text())


def open_sweep_study(run_dir: str | Path) -> tuple[dict[str, Any], optuna.Study]:
    """The ``sweep.json`` record of a run folder and its study, opened read-only in spirit (no
    sampler state, nothing written). Raises ``SettingsError`` when the folder holds no sweep, or
    its study is not in the storage yet."""
    run_dir = Path(run_dir)
    record = read_sweep_file(run_dir)
    storage = open_storage(record.get("storage"), run_dir)
    try:
        study = optuna.load_study(study_name=record["study_name"], storage=storage,
                                  sampler=optuna.samplers.RandomSampler())
    except KeyError:
        raise SettingsError([f"{run_dir}: study {record['study_name']!r} is not in its storage yet (the sweep has "
                             "not started, or the storage is another one)"], context="run folder") from None
    return record, study
