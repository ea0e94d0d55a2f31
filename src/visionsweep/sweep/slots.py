"""Exact trial budgets across workers, and recovery of trials whose worker died.

**Slots.** Every trial that counts has a slot, its position in the budget (0 .. budget-1). A new
trial's slot is the number of trials with a lower trial number that are neither re-runs nor
surplus. Trial numbers are handed out atomically by the storage, so two workers asking at the
same moment get different slots; a trial whose slot is >= budget is *surplus*: it is closed at
once (FAIL, status ``surplus``) and never runs. Exactly ``budget`` trials therefore run, whatever
the number of workers. The slot also seeds the trial's sampler and picks its assigned point.

**Interrupted trials.** A RUNNING trial is *stale* when its worker is gone (``workers.worker_alive``:
the worker ran on this host and its process no longer exists, checked at once, or its heartbeat is
older than ``stale_after_s``, for workers on other hosts), or when it never got a heartbeat within
``CLAIM_GRACE_S`` of being asked for (its worker died between asking and stamping it). Any worker
that finds one marks it ``interrupted`` (FAIL) and enqueues a re-run with the same parameters and
slot; only the worker whose state change succeeds enqueues it, so a trial is re-run once.
Interrupted and surplus trials do not count against the budget and are left off the leaderboard.
Finished trials are never re-run.
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from visionsweep.sweep import attrs
from visionsweep.sweep.workers import worker_alive, worker_identity

CLAIM_GRACE_S = 5.0

_STATE_STATUS = {
    TrialState.RUNNING: attrs.RUNNING, TrialState.WAITING: attrs.WAITING, TrialState.COMPLETE: attrs.COMPLETED,
    TrialState.PRUNED: attrs.CANCELLED, TrialState.FAIL: attrs.FAILED,
}


def trial_status(trial: FrozenTrial) -> str:
    """The visionsweep status of a trial (``attrs`` vocabulary)."""
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        return _STATE_STATUS[trial.state]
    return str(trial.user_attrs.get(attrs.STATUS, _STATE_STATUS[trial.state]))


def is_retry(trial: FrozenTrial) -> bool:
    return attrs.RETRY_OF in trial.user_attrs


def slot_of(trial: FrozenTrial, trials: Sequence[FrozenTrial]) -> int:
    """The trial's slot: its stored slot (re-runs carry their predecessor's), else its position
    among the trials that are neither re-runs nor surplus."""
    if attrs.SLOT in trial.user_attrs:
        return int(trial.user_attrs[attrs.SLOT])
    return sum(1 for other in trials
               if other.number < trial.number and not is_retry(other) and trial_status(other) != attrs.SURPLUS)


def slots_taken(trials: Iterable[FrozenTrial]) -> int:
    """Slots handed out so far (re-runs reuse a slot, surplus trials have none)."""
    return sum(1 for t in trials if not is_retry(t) and trial_status(t) != attrs.SURPLUS)


def work_left(trials: Sequence[FrozenTrial], budget: int) -> bool:
    """Whether a worker may start a trial: a free slot, or an enqueued re-run waiting."""
    return slots_taken(trials) < budget or any(t.state == TrialState.WAITING for t in trials)


def claim_slot(study: optuna.Study, trial: optuna.trial.Trial, budget: int) -> int | None:
    """Stamp a freshly asked trial with this worker's identity and a heartbeat, then give it its
    slot, or close it as surplus and return None. Call it right after ``study.ask()``."""
    for key, value in {**worker_identity(), attrs.HEARTBEAT: time.time()}.items():
        trial.set_user_attr(key, value)
    trials = study.get_trials(deepcopy=False)
    frozen = next(t for t in trials if t.number == trial.number)
    slot = slot_of(frozen, trials)
    if slot >= budget:
        trial.set_user_attr(attrs.STATUS, attrs.SURPLUS)
        study.tell(trial, state=TrialState.FAIL)
        return None
    trial.set_user_attr(attrs.SLOT, slot)
    return slot


def reap_stale_trials(study: optuna.Study, budget: int, *, stale_after_s: float,
                      now: float | None = None) -> list[int]:
    """Mark the RUNNING trials of dead workers interrupted and enqueue their re-runs.

    Returns the numbers of the trials this call marked.
    """
    now = time.time() if now is None else now
    trials = study.get_trials(deepcopy=False)
    reaped = []
    for trial in trials:
        if trial.state != TrialState.RUNNING or not is_stale(trial, now, stale_after_s):
            continue
        if mark_interrupted(study, trial, trials, budget, "its worker process is gone (killed or crashed)"):
            reaped.append(trial.number)
    return reaped


def mark_interrupted(study: optuna.Study, trial: FrozenTrial, trials: Sequence[FrozenTrial], budget: int,
                     reason: str) -> bool:
    """Close a RUNNING trial as interrupted and enqueue its re-run (same parameters, same slot).

    Returns False when another process finished or reaped the trial first.
    """
    slot = slot_of(trial, trials)
    status = attrs.INTERRUPTED if slot < budget else attrs.SURPLUS
    try:
        set_trial_attrs(study, trial, {attrs.STATUS: status, attrs.ERROR_KIND: "interrupted",
                                       attrs.ERROR: f"interrupted: {reason}; re-run as a new trial"})
        study.tell(trial.number, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, RuntimeError):
        return False
    if status == attrs.INTERRUPTED:
        study.enqueue_trial(dict(trial.params), user_attrs={attrs.SLOT: slot, attrs.RETRY_OF: trial.number})
    return True


def set_trial_attrs(study: optuna.Study, trial: FrozenTrial, values: Mapping[str, Any]) -> None:
    """Set user attributes on a trial this process holds no ``Trial`` object for."""
    # Optuna has no public call for this; the storage method is the one its Trial uses.
    for key, value in values.items():
        study._storage.set_trial_user_attr(trial._trial_id, key, value)


def is_stale(trial: FrozenTrial, now: float, stale_after_s: float) -> bool:
    """Whether a RUNNING trial's worker is gone (see the module docstring)."""
    user = trial.user_attrs
    alive = worker_alive(user.get(attrs.HOST), user.get(attrs.WORKER), user.get(attrs.HEARTBEAT), now=now,
                         stale_after_s=stale_after_s)
    if user.get(attrs.HEARTBEAT) is None:
        # A live worker stamps a trial within milliseconds of asking for it (``claim``); one that
        # is still unstamped after CLAIM_GRACE_S was asked for by a worker that died right then.
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return not alive or now - started > CLAIM_GRACE_S
    return not alive
