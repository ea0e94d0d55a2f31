"""Azure's early-termination policies: pure decisions over metric histories, and Optuna pruners.

Vocabulary (spec/sweeps-and-peers.md, A.10). An *interval* is one report of the primary metric
by a trial, that is one validation pass (every ``evaluation_frequency`` epochs); intervals count
from 1, and a trial's value at interval t is what it reported the t-th time. A policy acts at
interval t only when ``t % evaluation_interval == 0 and t >= delay_evaluation`` (an
``evaluation_interval`` of 0, the SDK default, means 1). Without a policy every trial runs to its
end; in-trial early stopping is separate and still applies. All image primary metrics are
maximised; the minimising mirror is implemented for completeness.

The decisions, with "better" meaning greater when maximising:

* **bandit** (``slack_factor`` xor ``slack_amount``): ``top`` is the best value reported at
  interval t by any trial that reached t (the current one included). The trial is stopped when
  its standing is worse than ``top / (1 + slack_factor)`` or ``top - slack_amount`` (mirror:
  ``top * (1 + slack_factor)``, ``top + slack_amount``). Docs example: top 0.8, slack_factor 0.2
  stops anything below 0.667.
* **median_stopping**: for every other trial that reached t, the running average of its values
  over intervals 1..t; the trial is stopped when its standing is worse than the median of those
  averages.
* **truncation_selection** (``truncation_percentage`` p, 1..99): all trials that reached t, the
  current one included, ranked by their standing; with n of them, the worst ``floor(n * p / 100)``
  are stopped. ``exclude_finished_jobs`` leaves finished trials out of the ranking.

Open choices the reference leaves, and ours:

* *Standing* of a trial at t is its **best value over intervals 1..t**, not its value at t. The
  docs' bandit example speaks of a run's best metric, and it is the conservative reading: a noisy
  dip does not cut a trial that was already good. Bandit's ``top`` follows the reference
  literally (values reported *at* t).
* *Peers* are the other trials that reached interval t: running, completed and cancelled ones.
  Failed and interrupted trials are left out (an interrupted trial is re-run and would count
  twice). The median uses the peers' running averages, not the current trial's own (Ray's rule;
  Vizier's uses completed trials only).
* *Minimum peers*: no policy acts until at least ``min_peers`` other trials reached t (default 3,
  as Ray's ``min_samples_required``; HyperDrive's number is undocumented). Our extension key
  ``min_peers`` in ``early_termination`` changes it; 0 lets the policy act on the first trial
  alone (bandit and median then never stop it, truncation may).
* *Ties*: a trial equal to the cut-off is never stopped: bandit and median stop only when strictly
  worse (beyond a relative 1e-12, so that 0.8 - 0.1 equals 0.7), and truncation ranks ties in the
  current trial's favour.
* Values that are not finite (a NaN metric) are left out of the peers; a trial whose own standing
  is not finite is not stopped by the policy (the trainer reports its own failure).
"""
from __future__ import annotations

from abc import abstractmethod

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import optuna
from optuna.pruners import BasePruner, NopPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from visionsweep.errors import SettingsError

DEFAULT_MIN_PEERS = 3
POLICY_TYPES = ("bandit", "median_stopping", "truncation_selection")
_PEER_STATES = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
_KEYS = {
    "bandit": {"slack_factor", "slack_amount"},
    "median_stopping": set(),
    "truncation_selection": {"truncation_percentage", "exclude_finished_jobs"},
}
_COMMON_KEYS = {"type", "evaluation_interval", "delay_evaluation", "min_peers"}


# --- pure decisions ---------------------------------------------------------------------------------


def is_due(interval: int, evaluation_interval: int, delay_evaluation: int) -> bool:
    """Whether a policy acts at ``interval`` (counted from 1). An evaluation_interval of 0 means 1."""
    every = max(int(evaluation_interval), 1)
    return interval >= 1 and interval % every == 0 and interval >= delay_evaluation


def standing(history: Sequence[float], t: int, *, maximize: bool = True) -> float:
    """A trial's best value over intervals 1..t (``history[0]`` is interval 1)."""
    values = [v for v in history[:t] if math.isfinite(v)]
    if not values:
        return math.nan
    return max(values) if maximize else min(values)


def bandit_stops(peer_values_at_t: Sequence[float], my_history: Sequence[float], t: int, *,
                 slack_factor: float | None = None, slack_amount: float | None = None,
                 maximize: bool = True) -> bool:
    """Bandit: stop when my standing at t is worse than the best value at t, minus the slack.

    ``peer_values_at_t`` are the other trials' values reported at interval t; ``my_history`` is the
    current trial's values for intervals 1..t. Exactly one of the two slacks must be given.
    """
    if (slack_factor is None) == (slack_amount is None):
        raise ValueError("give exactly one of slack_factor and slack_amount")
    mine = standing(my_history, t, maximize=maximize)
    pool = [v for v in (*peer_values_at_t, my_history[t - 1]) if math.isfinite(v)]
    if not math.isfinite(mine) or not pool:
        return False
    top = max(pool) if maximize else min(pool)
    if slack_factor is not None:
        limit = top / (1 + slack_factor) if maximize else top * (1 + slack_factor)
    else:
        limit = top - slack_amount if maximize else top + slack_amount  # type: ignore[operator]
    return _better(limit, mine, maximize)


def median_stops(peer_histories: Sequence[Sequence[float]], my_history: Sequence[float], t: int, *,
                 maximize: bool = True) -> bool:
    """Median stopping: stop when my standing at t is worse than the median of the peers' running
    averages over intervals 1..t. Peers with fewer than t values are ignored."""
    mine = standing(my_history, t, maximize=maximize)
    averages = [sum(h[:t]) / t for h in peer_histories if len(h) >= t]
    averages = [a for a in averages if math.isfinite(a)]
    if not math.isfinite(mine) or not averages:
        return False
    return _better(statistics.median(averages), mine, maximize)


def truncation_stops(peer_standings: Sequence[float], my_standing: float, truncation_percentage: float, *,
                     maximize: bool = True) -> bool:
    """Truncation selection: stop when I am among the worst ``floor(n * p / 100)`` of the n trials
    (me included) ranked by standing; trials equal to me rank below me."""
    peers = [v for v in peer_standings if math.isfinite(v)]
    if not math.isfinite(my_standing):
        return False
    cut = math.floor((len(peers) + 1) * truncation_percentage / 100)
    worse_or_equal = sum(1 for v in peers if not _better(v, my_standing, maximize))
    # My position in a worst-first order that puts ties before me is len(worse or equal peers).
    return worse_or_equal < cut


def _better(a: float, b: float, maximize: bool) -> bool:
    """Strictly better, beyond floating-point rounding (0.8 - 0.1 is 0.7000000000000001)."""
    margin = 1e-12 * max(1.0, abs(a), abs(b))
    return a - b > margin if maximize else b - a > margin


# --- the policy specification of a job --------------------------------------------------------------


@dataclass(frozen=True)
class PolicySpec:
    """The ``sweep.early_termination`` block, checked. ``type`` is one of ``POLICY_TYPES``."""

    type: str
    evaluation_interval: int = 1
    delay_evaluation: int = 0
    slack_factor: float | None = None
    slack_amount: float | None = None
    truncation_percentage: int | None = None
    exclude_finished_jobs: bool = False
    min_peers: int = DEFAULT_MIN_PEERS

    def to_dict(self) -> dict[str, Any]:
        """The non-default fields, JSON-ready (what a trial process needs to rebuild the pruner)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        extra = {"bandit": f"slack_factor={self.slack_factor}" if self.slack_factor is not None
                 else f"slack_amount={self.slack_amount}",
                 "median_stopping": "",
                 "truncation_selection": f"truncation_percentage={self.truncation_percentage}"}[self.type]
        parts = [p for p in (extra, f"evaluation_interval={self.evaluation_interval}",
                             f"delay_evaluation={self.delay_evaluation}", f"min_peers={self.min_peers}") if p]
        return f"{self.type}({', '.join(parts)})"


def parse_policy(raw: Any, *, where: str = "sweep.early_termination") -> tuple[PolicySpec | None, list[str]]:
    """Read an ``early_termination`` mapping. Returns (spec or None when absent, problems)."""
    if raw is None:
        return None, []
    if not isinstance(raw, Mapping):
        return None, [f"{where}: must be a mapping with a type ({', '.join(POLICY_TYPES)}), got {raw!r}"]
    kind = str(raw.get("type", "")).strip().lower()
    if kind not in POLICY_TYPES:
        return None, [f"{where}.type: got {raw.get('type')!r}; allowed: {', '.join(POLICY_TYPES)}"]
    values = dict(raw)
    values.pop("type")
    problems = [f"{where}.{key}: not a setting of {kind}; allowed: {', '.join(sorted((_COMMON_KEYS | _KEYS[kind]) - {'type'}))}"
                for key in values if key not in _COMMON_KEYS | _KEYS[kind]]
    for key in list(values):
        if key not in _COMMON_KEYS | _KEYS[kind]:
            del values[key]
    try:
        spec = PolicySpec(type=kind, **values)
        _pruner_class(kind)(**_pruner_kwargs(spec))  # the classes hold the checks
    except SettingsError as error:
        problems.extend(f"{where}.{p}" for p in error.problems)
        return None, problems
    except TypeError as error:
        return None, [*problems, f"{where}: {error}"]
    return (None, problems) if problems else (_normalised(spec), problems)


def make_pruner(spec: PolicySpec | Mapping[str, Any] | None) -> BasePruner:
    """The Optuna pruner for a policy (``NopPruner`` for none). Accepts ``PolicySpec.to_dict()``."""
    if spec is None:
        return NopPruner()
    if isinstance(spec, Mapping):
        spec = PolicySpec(**spec)
    return _pruner_class(spec.type)(**_pruner_kwargs(spec))


def _normalised(spec: PolicySpec) -> PolicySpec:
    # Integral floats from YAML (2.0) become ints so the spec prints and serialises cleanly.
    return PolicySpec(**{**asdict(spec), "evaluation_interval": max(int(spec.evaluation_interval), 1),
                         "delay_evaluation": int(spec.delay_evaluation), "min_peers": int(spec.min_peers)})


def _pruner_class(kind: str) -> type["_AzurePolicy"]:
    return {"bandit": BanditPruner, "median_stopping": MedianStoppingPruner,
            "truncation_selection": TruncationSelectionPruner}[kind]


def _pruner_kwargs(spec: PolicySpec) -> dict[str, Any]:
    common = {"evaluation_interval": spec.evaluation_interval, "delay_evaluation": spec.delay_evaluation,
              "min_peers": spec.min_peers}
    if spec.type == "bandit":
        return {**common, "slack_factor": spec.slack_factor, "slack_amount": spec.slack_amount}
    if spec.type == "truncation_selection":
        return {**common, "truncation_percentage": spec.truncation_percentage,
                "exclude_finished_jobs": spec.exclude_finished_jobs}
    return common


# --- Optuna pruners ---------------------------------------------------------------------------------


class _AzurePolicy(BasePruner):
    """Shared part: the interval schedule, the peer collection and the minimum number of peers.

    Trials report the primary metric with ``trial.report(value, step=t)``, t = 1, 2, ... (one step
    per interval). ``prune`` looks at the trial's last step.
    """

    def __init__(self, *, evaluation_interval: int = 1, delay_evaluation: int = 0,
                 min_peers: int = DEFAULT_MIN_PEERS, problems: list[str] | None = None):
        problems = list(problems or [])
        for name, value in (("evaluation_interval", evaluation_interval), ("delay_evaluation", delay_evaluation),
                            ("min_peers", min_peers)):
            if not _is_whole(value) or value < 0:
                problems.append(f"{name}: must be a whole number >= 0, got {value!r}")
        if problems:
            raise SettingsError(problems, context="early_termination")
        self.evaluation_interval = max(int(evaluation_interval), 1)
        self.delay_evaluation = int(delay_evaluation)
        self.min_peers = int(min_peers)

    def prune(self, study: "optuna.study.Study", trial: FrozenTrial) -> bool:
        t = trial.last_step
        if t is None or not is_due(t, self.evaluation_interval, self.delay_evaluation):
            return False
        mine = _history(trial, t)
        if len(mine) < t:
            return False  # steps are missing; the trial did not report as the runner does
        peers = [p for p in study.get_trials(deepcopy=False, states=self._peer_states())
                 if p.number != trial.number and t in p.intermediate_values]
        if len(peers) < self.min_peers:
            return False
        return self.decide([_history(p, t) for p in peers], mine, t, study.direction == StudyDirection.MAXIMIZE)

    @abstractmethod
    def decide(self, peer_histories: list[list[float]], my_history: list[float], t: int, maximize: bool) -> bool:
        """Whether to stop the trial at step ``t``, from the peers' histories and its own."""

    def _peer_states(self) -> tuple[TrialState, ...]:
        return _PEER_STATES


class BanditPruner(_AzurePolicy):
    """Azure's BanditPolicy. Exactly one of ``slack_factor`` (ratio, > 0) or ``slack_amount`` (>= 0)."""

    def __init__(self, *, slack_factor: float | None = None, slack_amount: float | None = None,
                 evaluation_interval: int = 1, delay_evaluation: int = 0, min_peers: int = DEFAULT_MIN_PEERS):
        problems = []
        if (slack_factor is None) == (slack_amount is None):
            problems.append("bandit needs exactly one of slack_factor (ratio, e.g. 0.2) or slack_amount "
                            f"(absolute, e.g. 0.05); got slack_factor={slack_factor!r}, slack_amount={slack_amount!r}")
        if slack_factor is not None and (not _is_number(slack_factor) or slack_factor <= 0):
            problems.append(f"slack_factor: must be a number > 0, got {slack_factor!r}")
        if slack_amount is not None and (not _is_number(slack_amount) or slack_amount < 0):
            problems.append(f"slack_amount: must be a number >= 0, got {slack_amount!r}")
        super().__init__(evaluation_interval=evaluation_interval, delay_evaluation=delay_evaluation,
                         min_peers=min_peers, problems=problems)
        self.slack_factor = None if slack_factor is None else float(slack_factor)
        self.slack_amount = None if slack_amount is None else float(slack_amount)

    def decide(self, peer_histories: list[list[float]], my_history: list[float], t: int, maximize: bool) -> bool:
        return bandit_stops([h[t - 1] for h in peer_histories], my_history, t, slack_factor=self.slack_factor,
                            slack_amount=self.slack_amount, maximize=maximize)


class MedianStoppingPruner(_AzurePolicy):
    """Azure's MedianStoppingPolicy (the docs suggest evaluation_interval 1, delay_evaluation 5)."""

    def decide(self, peer_histories: list[list[float]], my_history: list[float], t: int, maximize: bool) -> bool:
        return median_stops(peer_histories, my_history, t, maximize=maximize)


class TruncationSelectionPruner(_AzurePolicy):
    """Azure's TruncationSelectionPolicy. ``truncation_percentage`` is a whole number in 1..99."""

    def __init__(self, *, truncation_percentage: int | None = None, exclude_finished_jobs: bool = False,
                 evaluation_interval: int = 1, delay_evaluation: int = 0, min_peers: int = DEFAULT_MIN_PEERS):
        problems = []
        if truncation_percentage is None:
            problems.append("truncation_percentage: required, a whole number from 1 to 99 (e.g. 20)")
        elif not _is_whole(truncation_percentage) or not 1 <= truncation_percentage <= 99:
            problems.append(f"truncation_percentage: must be a whole number from 1 to 99, got {truncation_percentage!r}")
        if not isinstance(exclude_finished_jobs, bool):
            problems.append(f"exclude_finished_jobs: must be true or false, got {exclude_finished_jobs!r}")
        super().__init__(evaluation_interval=evaluation_interval, delay_evaluation=delay_evaluation,
                         min_peers=min_peers, problems=problems)
        self.truncation_percentage = int(truncation_percentage or 0)
        self.exclude_finished_jobs = exclude_finished_jobs

    def decide(self, peer_histories: list[list[float]], my_history: list[float], t: int, maximize: bool) -> bool:
        return truncation_stops([standing(h, t, maximize=maximize) for h in peer_histories],
                                standing(my_history, t, maximize=maximize), self.truncation_percentage,
                                maximize=maximize)

    def _peer_states(self) -> tuple[TrialState, ...]:
        return (TrialState.RUNNING,) if self.exclude_finished_jobs else _PEER_STATES


def _history(trial: FrozenTrial, t: int) -> list[float]:
    values = trial.intermediate_values
    return [float(values[s]) for s in range(1, t + 1) if s in values]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: Any) -> bool:
    return _is_number(value) and float(value) == int(value)
