"""Progress of a running or finished sweep (``visionsweep status RUN``) and the optuna-dashboard command.

Both read only: the run folder's ``sweep.json`` names the study and its storage, and the study
holds everything else, so they work while workers are running, from any machine that reaches
the storage.
"""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna

from visionsweep.errors import SettingsError
from visionsweep.sweep import attrs
from visionsweep.sweep.leaderboard import LeaderboardRow, best_row, format_leaderboard, leaderboard_rows
from visionsweep.sweep.runner import read_sweep_file
from visionsweep.sweep.slots import slots_taken, trial_status
from visionsweep.sweep.storage import journal_path, mask_url, open_storage


@dataclass(frozen=True)
class SweepStatus:
    """A snapshot of one sweep. ``counts`` maps every status (``attrs``) to its number of trials."""

    run_dir: Path
    study_name: str
    storage: str
    task: str
    primary_metric: str
    plan: str
    budget: int
    counts: dict[str, int]
    rows: list[LeaderboardRow]
    best: LeaderboardRow | None
    finished: bool

    @property
    def done(self) -> int:
        """Trials that ended and count against the budget."""
        return sum(self.counts.get(s, 0) for s in (*attrs.SCORED, attrs.FAILED))


def sweep_status(run_dir: str | Path) -> SweepStatus:
    """Read the state of the sweep in ``run_dir``. Raises ``SettingsError`` for a folder without a sweep."""
    run_dir = Path(run_dir)
    record = read_sweep_file(run_dir)
    storage = open_storage(record.get("storage"), run_dir)
    try:
        study = optuna.load_study(study_name=record["study_name"], storage=storage,
                                  sampler=optuna.samplers.RandomSampler())
    except KeyError:
        raise SettingsError([f"{run_dir}: study {record['study_name']!r} is not in its storage yet (the sweep has "
                             "not started, or the storage is another one)"], context="run folder") from None
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for trial in trials:
        status = trial_status(trial)
        counts[status] = counts.get(status, 0) + 1
    summary = study.user_attrs.get(attrs.JOB_SUMMARY, {})
    budget = int(study.user_attrs.get(attrs.BUDGET, 0))
    rows = leaderboard_rows(study)
    finished = (slots_taken(trials) >= budget and not counts.get(attrs.RUNNING) and not counts.get(attrs.WAITING))
    storage_label = mask_url(record["storage"]) if record.get("storage") else str(journal_path(None, run_dir))
    return SweepStatus(run_dir, record["study_name"], storage_label, summary.get("task", record.get("task", "?")),
                       summary.get("primary_metric", record.get("primary_metric", "?")), summary.get("plan", ""),
                       budget, counts, rows, best_row(rows), finished)


def format_status(status: SweepStatus, *, limit: int = 10) -> str:
    """A human-readable report: progress, counts, running trials, the best trial and the top of the board."""
    state = "finished" if status.finished else "in progress"
    lines = [f"sweep {status.study_name} ({status.task}, {state})", f"  run folder: {status.run_dir}",
             f"  storage:    {status.storage}", f"  plan:       {status.plan}",
             f"  progress:   {status.done}/{status.budget} trials ended"]
    shown = [f"{status.counts[s]} {s}" for s in (attrs.COMPLETED, attrs.EARLY_STOPPED, attrs.CANCELLED, attrs.FAILED,
                                                 attrs.RUNNING, attrs.WAITING, attrs.INTERRUPTED)
             if status.counts.get(s)]
    if shown:
        lines.append(f"  trials:     {', '.join(shown)}")
    for row in status.rows:
        if row.status == attrs.RUNNING:
            seen = (f"interval {row.last_interval}, {status.primary_metric} {row.last_value:.4g}"
                    if row.last_interval is not None else "no validation pass yet")
            lines.append(f"  running:    trial {row.trial} on {row.host or '?'} ({seen})")
    if status.best is not None:
        lines.append(f"  best:       trial {status.best.trial}, {status.primary_metric} {status.best.score:.4g}")
    if status.rows:
        lines.extend(["", format_leaderboard(status.rows, status.primary_metric, limit=limit)])
    return "\n".join(lines)


def dashboard_command(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8080) -> list[str]:
    """The optuna-dashboard command line for the sweep in ``run_dir`` (journal file or database URL)."""
    record = read_sweep_file(run_dir)
    target = record.get("storage") or str(journal_path(None, run_dir))
    return ["optuna-dashboard", target, "--host", host, "--port", str(port)]


def run_dashboard(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard for the sweep (blocks). Needs the optuna-dashboard package."""
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise SettingsError(["optuna-dashboard is not installed; install it with 'pip install optuna-dashboard', or "
                             f"run: {' '.join(dashboard_command(run_dir, host=host, port=port))}"], context="dashboard")
    import optuna_dashboard

    record = read_sweep_file(run_dir)
    optuna_dashboard.run_server(open_storage(record.get("storage"), run_dir), host=host, port=port)


def dashboard_available() -> bool:
    """Whether the optuna-dashboard command is on PATH."""
    return shutil.which("optuna-dashboard") is not None
