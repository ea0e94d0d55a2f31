"""The leaderboard of a sweep (printed table and CSV file), the copy of the best trial's model, its
MLflow model and its run report.

Rows come from the study, so any worker, and ``status``, can build the same board. Order:
trials with a score (completed, early-stopped and cancelled, which keep their best checkpoint)
by best primary-metric value, highest first; then running, waiting and failed trials.
Interrupted and surplus trials are not rows (see ``slots``).
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

import optuna

from visionsweep.exporting.mlflow_model import MLFLOW_MODEL_DIR, MlflowMissingError, write_mlflow_model
from visionsweep.sweep import attrs
from visionsweep.sweep.slots import trial_status

LEADERBOARD_FILE = "leaderboard.csv"
BEST_MODEL_DIR = "best_model"
BEST_TRIAL_FILE = "best_trial.json"
_ORDER = {attrs.RUNNING: 1, attrs.WAITING: 2, attrs.FAILED: 3}


@dataclass(frozen=True)
class LeaderboardRow:
    """One trial. ``score`` is its best primary-metric value (None when it has none yet)."""

    trial: int
    status: str
    score: float | None
    best_epoch: int | None
    epochs_run: int | None
    duration_s: float | None
    config: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    trial_dir: str | None = None
    model_dir: str | None = None
    host: str | None = None
    last_interval: int | None = None
    last_value: float | None = None


def leaderboard_rows(study: optuna.Study) -> list[LeaderboardRow]:
    """Every counted trial of the study, best first."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        status = trial_status(trial)
        if status in attrs.EXCLUDED:
            continue
        user = trial.user_attrs
        score = user.get(attrs.BEST_SCORE)
        duration = user.get(attrs.DURATION)
        if duration is None and status == attrs.RUNNING and trial.datetime_start is not None:
            duration = (datetime.now() - trial.datetime_start).total_seconds()
        values = trial.intermediate_values
        last = max(values) if values else None
        note = user.get(attrs.CANCEL_REASON) if status == attrs.CANCELLED else user.get(attrs.ERROR)
        rows.append(LeaderboardRow(
            trial=trial.number, status=status, score=float(score) if score is not None else None,
            best_epoch=user.get(attrs.BEST_EPOCH), epochs_run=user.get(attrs.EPOCHS_RUN), duration_s=duration,
            config=dict(user.get(attrs.CONFIG, {})), note=str(note or ""), trial_dir=user.get(attrs.TRIAL_DIR),
            model_dir=user.get(attrs.MODEL_DIR), host=user.get(attrs.HOST), last_interval=last,
            last_value=float(values[last]) if last is not None else None))
    return sorted(rows, key=_sort_key)


def best_row(rows: Iterable[LeaderboardRow]) -> LeaderboardRow | None:
    """The scored trial with the highest score (the lowest trial number wins a tie)."""
    scored = [r for r in rows if r.status in attrs.SCORED and r.score is not None and math.isfinite(r.score)]
    return min(scored, key=_sort_key) if scored else None


def format_leaderboard(rows: Sequence[LeaderboardRow], primary_metric: str, *, limit: int | None = None) -> str:
    """A fixed-width text table: rank, trial, status, the metric, epochs, time, the swept values, a note."""
    shown = list(rows[:limit] if limit else rows)
    keys = _config_keys(shown)
    header = ["#", "trial", "status", primary_metric, "best epoch", "epochs", "time", *keys, "note"]
    table = [header]
    for rank, row in enumerate(shown, 1):
        table.append([str(rank), str(row.trial), row.status, _number(row.score), _text(row.best_epoch),
                      _text(row.epochs_run), format_duration(row.duration_s),
                      *(_number(row.config[k]) if k in row.config else "-" for k in keys), _short(row.note)])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    if limit and len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more in {LEADERBOARD_FILE}")
    return "\n".join(lines)


def write_leaderboard(rows: Sequence[LeaderboardRow], path: str | Path, primary_metric: str) -> Path:
    """Write the board as CSV (one row per trial, every swept key a column, full notes and paths)."""
    path = Path(path)
    keys = _config_keys(rows)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["rank", "trial", "status", primary_metric, "best_epoch", "epochs_run", "duration_s",
                         *keys, "note", "trial_dir", "model_dir", "host"])
        for rank, row in enumerate(rows, 1):
            writer.writerow([rank, row.trial, row.status, "" if row.score is None else row.score,
                             _blank(row.best_epoch), _blank(row.epochs_run),
                             "" if row.duration_s is None else round(row.duration_s, 1),
                             *(_csv_value(row.config.get(k, "")) for k in keys), row.note,
                             _blank(row.trial_dir), _blank(row.model_dir), _blank(row.host)])
    os.replace(tmp, path)
    return path


def copy_best_model(row: LeaderboardRow, run_dir: str | Path, primary_metric: str) -> tuple[Path | None, str]:
    """Copy the best trial's model folder to ``<run>/best_model`` and describe it in ``best_trial.json``.

    Returns (the copy, or None when the folder is not on this machine; a one-line message).
    """
    run_dir = Path(run_dir)
    record: dict[str, Any] = {"trial": row.trial, "status": row.status, "primary_metric": primary_metric,
                              "score": row.score, "best_epoch": row.best_epoch, "config": row.config,
                              "trial_dir": row.trial_dir, "model_dir": row.model_dir, "host": row.host}
    source = Path(row.model_dir) if row.model_dir else None
    target = run_dir / BEST_MODEL_DIR
    if source is None or not source.is_dir():
        record["copied_to"] = None
        message = (f"best trial {row.trial}'s model folder {row.model_dir} is not on this machine "
                   f"(it ran on {row.host}); copy it from there")
        copied = None
    else:
        staging = run_dir / f".{BEST_MODEL_DIR}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        # A trial killed while saving leaves NAME.pt.partial beside the last good checkpoint (save_checkpoint)
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns("*.partial"))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
        record["copied_to"] = str(target)
        message = f"best model (trial {row.trial}, {primary_metric} {_number(row.score)}) copied to {target}"
        copied = target
    (run_dir / BEST_TRIAL_FILE).write_text(json.dumps(record, indent=2, default=str))
    return copied, message


def write_best_mlflow_model(best_model_dir: Path) -> str:
    """Write ``best_model/mlflow-model`` (the trials write none: ``runner``); returns a one-line message.
    MLflow not installed, or any failure, leaves the best model folder complete without it."""
    try:
        written = write_mlflow_model(best_model_dir)
    except MlflowMissingError as error:
        return f"{MLFLOW_MODEL_DIR}/ not written: {error} (or set save_mlflow false)"
    except Exception as error:  # any failure of MLflow: the sweep has its best model all the same
        return (f"warning: {best_model_dir / MLFLOW_MODEL_DIR} was not written ({type(error).__name__}: {error}); "
                f"'visionsweep export {best_model_dir} --format mlflow' can retry")
    return f"MLflow model of the best trial written to {written.path}"


def write_best_run_report(row: LeaderboardRow) -> str:
    """Write the best trial's ``report.html`` in its folder (the trials write none: ``runner``); returns a
    one-line message. A folder on another machine, or any failure, leaves the sweep as it is."""
    from visionsweep.reports.run_report import write_run_report  # torch and matplotlib: only here

    folder = Path(row.trial_dir) if row.trial_dir else None
    if folder is None or not (folder / "settings.json").is_file():
        return f"best trial {row.trial}'s folder {row.trial_dir} is not on this machine: no run report written"
    try:
        path = write_run_report(folder)
    except Exception as error:  # noqa: BLE001 - the report is a view of the trial, not part of the sweep
        return (f"warning: the best trial's run report was not written ({type(error).__name__}: {error}); "
                f"'visionsweep report {folder}' can retry")
    return f"run report of the best trial written to {path}"


def _sort_key(row: LeaderboardRow) -> tuple[int, float, int]:
    if row.status in attrs.SCORED and row.score is not None and math.isfinite(row.score):
        return (0, -row.score, row.trial)
    return (_ORDER.get(row.status, 3), 0.0, row.trial)


def _config_keys(rows: Iterable[LeaderboardRow]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        for key in row.config:
            if key not in keys:
                keys.append(key)
    return keys


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _blank(value: Any) -> Any:
    return "" if value is None else value


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def format_duration(seconds: float | None, *, missing: str = "-") -> str:
    """``12m05s`` or ``1h02m``; ``missing`` for no duration."""
    if seconds is None:
        return missing
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _short(note: str, width: int = 60) -> str:
    first = note.strip().splitlines()[0] if note.strip() else ""
    return first if len(first) <= width else first[: width - 3] + "..."
