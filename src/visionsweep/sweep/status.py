"""Progress of a running or finished sweep (``visionsweep status RUN``) and the optuna-dashboard command.

Both read only: the run folder's ``sweep.json`` names the study and its storage, and the study
holds everything else, so they work while workers are running, from any machine that reaches
the storage.
"""
from __future__ import annotations

import importlib.util
import shlex
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from visionsweep.errors import SettingsError
from visionsweep.sweep import attrs
from visionsweep.sweep.leaderboard import LeaderboardRow, best_row, format_leaderboard, leaderboard_rows
from visionsweep.sweep.slots import is_stale, slots_taken, trial_status
from visionsweep.sweep.storage import journal_path, mask_url, open_storage
from visionsweep.sweep.sweep_folder import open_sweep_study, read_sweep_file
from visionsweep.sweep.workers import STALE_AFTER_S, RunnerRecord, runner_records


@dataclass(frozen=True)
class SweepStatus:
    """A snapshot of one sweep. ``counts`` maps every status (``attrs``) to its number of trials.

    ``state`` is ``finished`` (the budget is spent and no trial runs), ``running`` (a runner is
    alive) or ``stopped`` (work is left and no runner is alive: killed, crashed, or ended by its
    timeout; ``resume_command`` continues it). A RUNNING trial whose runner is gone is counted
    *interrupted* and listed in ``interrupted``: that is what the next run records it as before
    re-running it. ``runners`` holds the live runners and the dead ones that no runner took over.
    """

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
    state: str = "finished"
    runners: list[RunnerRecord] = field(default_factory=list)
    interrupted: list[int] = field(default_factory=list)
    resume_command: str = ""

    @property
    def done(self) -> int:
        """Trials that ended and count against the budget."""
        return sum(self.counts.get(s, 0) for s in (*attrs.SCORED, attrs.FAILED))


def sweep_status(run_dir: str | Path) -> SweepStatus:
    """Read the state of the sweep in ``run_dir``. Raises ``SettingsError`` for a folder without a sweep."""
    run_dir = Path(run_dir)
    record, study = open_sweep_study(run_dir)
    now = time.time()
    trials = study.get_trials(deepcopy=False)
    runners = runner_records(study, now=now)
    stale_after = {(r.host, r.worker): r.stale_after_s for r in runners}
    lost = [t.number for t in trials if t.state == TrialState.RUNNING and is_stale(
        t, now, stale_after.get((t.user_attrs.get(attrs.HOST), t.user_attrs.get(attrs.WORKER)), STALE_AFTER_S))]
    counts: dict[str, int] = {}
    for trial in trials:
        status = attrs.INTERRUPTED if trial.number in lost else trial_status(trial)
        counts[status] = counts.get(status, 0) + 1
    summary = study.user_attrs.get(attrs.JOB_SUMMARY, {})
    budget = int(study.user_attrs.get(attrs.BUDGET, 0))
    rows = [row for row in leaderboard_rows(study) if row.trial not in lost]
    finished = (slots_taken(trials) >= budget and not counts.get(attrs.RUNNING) and not counts.get(attrs.WAITING))
    alive = any(r.state == "running" for r in runners) or bool(counts.get(attrs.RUNNING))
    state = "finished" if finished else "running" if alive else "stopped"
    storage_label = mask_url(record["storage"]) if record.get("storage") else str(journal_path(None, run_dir))
    return SweepStatus(run_dir, record["study_name"], storage_label, summary.get("task", record.get("task", "?")),
                       summary.get("primary_metric", record.get("primary_metric", "?")), summary.get("plan", ""),
                       budget, counts, rows, best_row(rows), finished, state,
                       [r for r in runners if r.state == "running" or (r.state == "dead" and r.noticed is None)],
                       lost, _resume_command(run_dir, record))


def format_status(status: SweepStatus, *, limit: int = 10) -> str:
    """A human-readable report: progress, counts, runners, running and interrupted trials, the best
    trial and the top of the board; for a stopped sweep, why and the command that resumes it."""
    state = {"finished": "finished", "running": "in progress", "stopped": "stopped"}[status.state]
    lines = [f"sweep {status.study_name} ({status.task}, {state})", f"  run folder: {status.run_dir}",
             f"  storage:    {status.storage}", f"  plan:       {status.plan}",
             f"  progress:   {status.done}/{status.budget} trials ended"]
    shown = [f"{status.counts[s]} {s}" for s in (attrs.COMPLETED, attrs.EARLY_STOPPED, attrs.CANCELLED, attrs.FAILED,
                                                 attrs.RUNNING, attrs.WAITING, attrs.INTERRUPTED)
             if status.counts.get(s)]
    if shown:
        lines.append(f"  trials:     {', '.join(shown)}")
    dead = [r for r in status.runners if r.state == "dead"]
    for runner in status.runners:
        if runner.state == "running":
            lines.append(f"  runner:     {runner.describe()} ({runner.last_heartbeat()})")
    for row in status.rows:
        if row.status == attrs.RUNNING:
            seen = (f"interval {row.last_interval}, {status.primary_metric} {row.last_value:.4g}"
                    if row.last_interval is not None else "no validation pass yet")
            lines.append(f"  running:    trial {row.trial} on {row.host or '?'} ({seen})")
    interrupted = ""
    if status.interrupted:
        many = len(status.interrupted) > 1
        interrupted = (f"trial{'s' if many else ''} {', '.join(map(str, status.interrupted))} "
                       f"{'were' if many else 'was'} interrupted")
    if status.state == "stopped":
        why = (" and ".join(f"runner ({r.describe()}, {r.last_heartbeat()})" for r in dead)
               + f" {'are' if len(dead) > 1 else 'is'} not running (killed or crashed)") if dead else \
            "no runner is running (each one ended: a timeout_minutes limit, Ctrl-C or SIGTERM)"
        lines.append(f"  stopped:    {'; '.join(filter(None, [why, interrupted]))}")
        lines.append(f"  to resume:  rerun `{status.resume_command}`")
    elif status.state == "running":
        for runner in dead:
            lines.append(f"  lost:       runner ({runner.describe()}, {runner.last_heartbeat()}) is not running; "
                         "the running workers re-run its trials")
        if interrupted:
            lines.append(f"  lost:       {interrupted} (their runner is gone); they are re-run with the same values")
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


def _resume_command(run_dir: Path, record: dict[str, Any]) -> str:
    """The command that resumes the sweep: the job file it was started with, else the run folder's copy."""
    job = record.get("job_file")
    if not job or not Path(job).is_file():
        job = str(run_dir / "job.yml") if (run_dir / "job.yml").is_file() else "JOB.yml"
    return f"visionsweep run {shlex.quote(str(job))} --run-dir {shlex.quote(str(run_dir))}"
