"""The model of a sweep run folder: its best trial's model folder, for ``predict RUN`` and ``evaluate RUN``.

This is the one place outside the runner that knows how a sweep's run folder leads to a model:
the study (named by ``sweep.json``) ranks the trials as the leaderboard does, and the best trial's
``model_dir`` holds its model. The study is read rather than ``best_trial.json``, which the runner
writes only when it ends, so that a sweep in progress or a killed one gives its best model so far.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from visionsweep.errors import CheckpointError
from visionsweep.sweep import attrs
from visionsweep.sweep.leaderboard import BEST_MODEL_DIR, BEST_TRIAL_FILE, LeaderboardRow, best_row, leaderboard_rows
from visionsweep.sweep.runner import TRIALS_DIR
from visionsweep.sweep.sweep_folder import SWEEP_FILE, open_sweep_study

log = logging.getLogger("visionsweep")


def is_sweep_folder(path: str | Path) -> bool:
    """Whether ``path`` is the run folder of a sweep (``visionsweep run`` wrote its ``sweep.json``)."""
    return (Path(path) / SWEEP_FILE).is_file()


def best_model_folder(run_dir: str | Path) -> Path:
    """The model folder of the sweep's best trial (the leaderboard's first row), logged with its trial.

    Raises ``CheckpointError`` when no trial has a score yet, or when the best trial's model folder
    is on another machine and the run folder holds no copy of it.
    """
    run_dir = Path(run_dir)
    _, study = open_sweep_study(run_dir)
    rows = leaderboard_rows(study)
    best = best_row(rows)
    if best is None:
        running = sum(1 for row in rows if row.status == attrs.RUNNING)
        raise CheckpointError(
            f"sweep {run_dir} has no finished trial with a score yet ({len(rows)} trial(s) on the leaderboard, "
            f"{running} running), so it has no best model; see 'visionsweep status {run_dir}', or give a "
            "trial's model folder (trials/trial_NNNN/model)")
    folder = _local_model_folder(best, run_dir)
    metric = study.user_attrs.get(attrs.JOB_SUMMARY, {}).get("primary_metric", "score")
    log.info("sweep %s: using trial %d, the best (%s %.4g), model folder %s", run_dir, best.trial, metric,
             best.score, folder)
    return folder


def _local_model_folder(best: LeaderboardRow, run_dir: Path) -> Path:
    """Where the best trial's model folder is on this machine: where the trial wrote it, the same
    place inside this run folder (a run folder that was moved or copied), or the runner's copy in
    ``best_model/`` when ``best_trial.json`` says it is of this trial."""
    candidates = []
    if best.model_dir:
        recorded = Path(best.model_dir)
        candidates.append(recorded)
        if best.trial_dir and recorded.is_relative_to(best.trial_dir):
            candidates.append(run_dir / TRIALS_DIR / Path(best.trial_dir).name / recorded.relative_to(best.trial_dir))
    if _copied_trial(run_dir) == best.trial:
        candidates.append(run_dir / BEST_MODEL_DIR)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    where = f" (it ran on {best.host})" if best.host else ""
    raise CheckpointError(f"the best trial of sweep {run_dir}, trial {best.trial}, has its model folder "
                          f"{best.model_dir} on another machine{where}; copy that folder here and predict with it")


def _copied_trial(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / BEST_TRIAL_FILE).read_text())["trial"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
