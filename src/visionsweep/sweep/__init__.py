"""Hyperparameter sweeps from Azure AutoML image job YAML files, on Optuna.

The public surface (what ``visionsweep run``, ``status`` and ``dashboard`` call):

* ``load_job(path) -> Job``: read and check a job file;
* ``run_sweep(job, run_dir, *, storage=None, study_name=None, trainer=..., devices=None) -> SweepResult``;
* ``sweep_status(run_dir) -> SweepStatus`` and ``format_status(status) -> str``;
* ``dashboard_command(run_dir) -> list[str]`` and ``run_dashboard(run_dir)``.

The pieces: ``space`` (grammar and sampling), ``distributions`` (what each one draws),
``space_checks`` (a space against the schema), ``trial_checks`` (against the models and the
machine), ``sampling`` (algorithms), ``policies`` (early termination), ``automode``, ``plan``,
``slots`` (budgets and resume), ``workers`` (runner records, heartbeats, liveness), ``storage``,
``trial_process`` (one trial), ``runner``, ``leaderboard``, ``status``, ``best_model`` (a sweep
folder's model, for predict). docs/sweeps.md explains them.
"""
from visionsweep.sweep.automode import AutoModePlan, Hardware, plan_automode
from visionsweep.sweep.distributions import Distribution
from visionsweep.sweep.job import DataInput, Job, Limits, load_job, parse_job
from visionsweep.sweep.leaderboard import LeaderboardRow
from visionsweep.sweep.plan import SweepPlan, plan_sweep
from visionsweep.sweep.policies import (
    BanditPruner, MedianStoppingPruner, PolicySpec, TruncationSelectionPruner, make_pruner,
)
from visionsweep.sweep.runner import DEFAULT_TRAINER, SweepResult, run_sweep
from visionsweep.sweep.sampling import SamplingSpec, make_sampler
from visionsweep.sweep.space import SearchSpace, SubSpace, parse_search_space, suggest
from visionsweep.sweep.status import SweepStatus, dashboard_command, format_status, run_dashboard, sweep_status

__all__ = [
    "AutoModePlan", "BanditPruner", "DEFAULT_TRAINER", "DataInput", "Distribution", "Hardware", "Job",
    "LeaderboardRow", "Limits", "MedianStoppingPruner", "PolicySpec", "SamplingSpec", "SearchSpace", "SubSpace",
    "SweepPlan", "SweepResult", "SweepStatus", "TruncationSelectionPruner", "dashboard_command", "format_status",
    "load_job", "make_pruner", "make_sampler", "parse_job", "parse_search_space", "plan_automode", "plan_sweep",
    "run_dashboard", "run_sweep", "suggest", "sweep_status",
]
