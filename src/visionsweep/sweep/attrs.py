"""Names of what visionsweep stores on Optuna trials and studies, and the trial status vocabulary.

Optuna's own states are too coarse for a sweep's record (an early-terminated trial and a trial
cut by the sweep's timeout are both PRUNED; a trial that crashed and one that was interrupted by a
killed sweep are both FAIL), so every trial also carries ``STATUS``.
"""
from __future__ import annotations

# --- trial user attributes ------------------------------------------------------------------------
SLOT = "vs_slot"                # position in the trial budget, 0 .. budget-1 (see runner docstring)
POINT = "vs_point"              # index of an assigned point (grid point, AutoMode preset), when any
RETRY_OF = "vs_retry_of"        # number of the interrupted trial that this trial re-runs
STATUS = "vs_status"            # one of the statuses below
CONFIG = "vs_config"            # the sampled values of the trial's sub-space, cast (what the trainer got)
SUBSPACE = "vs_subspace"        # index of the sub-space the trial drew from
HOST = "vs_host"                # host name of the worker that runs the trial
WORKER = "vs_worker"            # "<pid>:<start ticks>" of that worker process
HEARTBEAT = "vs_heartbeat"      # unix time of the worker's last sign of life for this trial
STARTED = "vs_started"          # unix time the trial started
DURATION = "vs_duration_s"      # seconds from start to end
BEST_SCORE = "vs_best_score"    # best primary-metric value (also of a cancelled trial)
BEST_EPOCH = "vs_best_epoch"
EPOCHS_RUN = "vs_epochs_run"
TRIAL_DIR = "vs_trial_dir"
MODEL_DIR = "vs_model_dir"
LOG = "vs_log"
ERROR = "vs_error"              # one-paragraph message (for failed and interrupted trials)
ERROR_KIND = "vs_error_kind"    # exception | out_of_memory | invalid_settings | data_error | crashed | interrupted
CANCEL_REASON = "vs_cancel_reason"
RETRIES = "vs_retries"          # why the trial was run again with other settings (out of memory), one line each

# --- study user attributes ------------------------------------------------------------------------
FINGERPRINT = "vs_fingerprint"  # hash of the job's sweep-relevant content
BUDGET = "vs_budget"            # number of trials the sweep runs (max_trials, capped by the grid size)
PLAN = "vs_plan"                # the search space and assigned points, as written by the first worker
JOB_SUMMARY = "vs_job"          # task, primary metric, mode, sampling and policy, for ``status``
RUNNER_PREFIX = "vs_runner:"    # + "<host>:<pid>:<start ticks>": one runner's record and heartbeat (``workers``)

# --- trial statuses -------------------------------------------------------------------------------
RUNNING = "running"
WAITING = "waiting"             # enqueued re-run of an interrupted trial, not started yet
COMPLETED = "completed"
EARLY_STOPPED = "early_stopped"  # in-trial early stopping (the trainer's patience), a normal end
CANCELLED = "cancelled"          # stopped by the early-termination policy or a timeout; keeps its best model
FAILED = "failed"
INTERRUPTED = "interrupted"      # its worker died; a re-run with the same slot and values replaces it
SURPLUS = "surplus"              # asked for after the budget was full (a race between workers); never ran

SCORED = (COMPLETED, EARLY_STOPPED, CANCELLED)
"""Statuses whose best score counts for the leaderboard and the best model."""
EXCLUDED = (INTERRUPTED, SURPLUS)
"""Statuses of trials that do not count against the budget and are left off the leaderboard."""
