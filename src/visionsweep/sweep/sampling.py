"""Sampling algorithms: random (optionally Sobol), grid and bayesian, as Optuna samplers.

Reference restrictions (spec/sweeps-and-peers.md, A.9) and what we do:

==========  =====================================================  ==========================================
algorithm   reference                                              visionsweep
==========  =====================================================  ==========================================
random      every distribution, conditional spaces, termination    same; ``{type: random, seed, rule: sobol}``
grid        choice only, conditional spaces, termination;          same; the points are shuffled with the seed
            one trial per point, capped at max_trials              (default 0) so a capped grid is a fair subset
bayesian    choice, uniform, quniform only; no conditional         more permissive: every distribution,
            spaces; no early termination                           conditional spaces and early termination
                                                                   are accepted, each with a note that Azure
                                                                   would refuse the job
==========  =====================================================  ==========================================

Every trial has a *slot*, its position in the budget (0 .. budget-1, see ``runner``). Samplers are
seeded per slot, not per process: slot k of a seeded random sweep draws the same values whichever
worker runs it, whether the sweep ran in one go or was resumed, and two workers that share one
study never draw identical values because they share a seed. A sampler may also be given
*assigned points* (grid points, AutoMode presets): the trial in slot k takes point k.

* random: ``RandomSampler`` seeded with ``(seed, slot)``; unseeded when the job gives no seed.
* sobol: Optuna's ``QMCSampler`` (scrambled Sobol, seeded; the seed defaults to 0 so that all
  workers walk one sequence). Limits inherited from it: the first trial is drawn at random, and the
  Sobol sequence covers the parameters of the first finished trial's sub-space only; parameters of
  other sub-spaces are drawn at random (slot-seeded).
* grid: every point of every sub-space (``space.grid_points``), in a seeded random order; the
  budget is ``min(max_trials, number of points)``.
* bayesian: Optuna's ``TPESampler`` with the Optuna 5 defaults (multivariate, constant liar) plus
  ``group=True`` for conditional spaces. The first ``n_startup_trials`` trials (default 10, our
  extension key in the object spelling) are random. The TPE is seeded with ``(seed, slot)`` too.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, QMCSampler, RandomSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from visionsweep.sweep import attrs
from visionsweep.sweep.space import SearchSpace, grid_points, grid_problems

ALGORITHMS = ("random", "grid", "bayesian")
RULES = ("random", "sobol")
_BAYESIAN_AZURE_KINDS = frozenset({"choice", "uniform", "quniform"})
_OBJECT_KEYS = {"type", "seed", "rule", "n_startup_trials"}


@dataclass(frozen=True)
class SamplingSpec:
    """The ``sweep.sampling_algorithm`` value: ``random`` or ``{type: random, seed: 7, rule: sobol}``."""

    algorithm: str = "random"
    seed: int | None = None
    rule: str = "random"
    n_startup_trials: int | None = None

    def describe(self) -> str:
        extra = [f"seed={self.seed}"] if self.seed is not None else []
        if self.rule != "random":
            extra.append(f"rule={self.rule}")
        if self.n_startup_trials is not None:
            extra.append(f"n_startup_trials={self.n_startup_trials}")
        return f"{self.algorithm}({', '.join(extra)})" if extra else self.algorithm

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "seed": self.seed, "rule": self.rule,
                "n_startup_trials": self.n_startup_trials}


def parse_sampling(raw: Any, *, where: str = "sweep.sampling_algorithm") -> tuple[SamplingSpec | None, list[str]]:
    """Read the string or object spelling (case-insensitive, as the SDK's ``"Random"``)."""
    if raw is None:
        return None, [f"{where}: required when sweep is given; one of {', '.join(ALGORITHMS)}"]
    values: dict[str, Any] = {"type": raw} if isinstance(raw, str) else dict(raw) if isinstance(raw, Mapping) else {}
    if not values:
        return None, [f"{where}: must be one of {', '.join(ALGORITHMS)} or a mapping with a type, got {raw!r}"]
    problems = [f"{where}.{k}: unknown key; allowed: {', '.join(sorted(_OBJECT_KEYS))}" for k in values
                if k not in _OBJECT_KEYS]
    algorithm = str(values.get("type", "")).strip().lower()
    if algorithm not in ALGORITHMS:
        problems.append(f"{where}: got {values.get('type')!r}; allowed: {', '.join(ALGORITHMS)}")
    seed = values.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        problems.append(f"{where}.seed: must be a whole number >= 0, got {seed!r}")
    rule = str(values.get("rule", "random")).strip().lower()
    if rule not in RULES:
        problems.append(f"{where}.rule: got {values.get('rule')!r}; allowed: {', '.join(RULES)}")
    elif rule != "random" and algorithm != "random":
        problems.append(f"{where}.rule: {rule} applies to random sampling only, not {algorithm}")
    startup = values.get("n_startup_trials")
    if startup is not None:
        if algorithm != "bayesian":
            problems.append(f"{where}.n_startup_trials: applies to bayesian sampling only")
        elif isinstance(startup, bool) or not isinstance(startup, int) or startup < 1:
            problems.append(f"{where}.n_startup_trials: must be a whole number >= 1, got {startup!r}")
    if problems:
        return None, problems
    return SamplingSpec(algorithm, seed, rule, startup), []


def check_sampling(spec: SamplingSpec, space: SearchSpace, *, has_policy: bool) -> tuple[list[str], list[str]]:
    """What the algorithm cannot do with this space (problems) and where we go beyond Azure (notes)."""
    problems: list[str] = []
    notes: list[str] = []
    if spec.algorithm == "grid":
        problems.extend(grid_problems(space))
    if spec.algorithm == "bayesian":
        others = sorted({d.kind for _, _, d in space.distributions() if d.kind not in _BAYESIAN_AZURE_KINDS})
        if others:
            notes.append(f"bayesian sampling with {', '.join(others)}: Azure accepts only choice, uniform and "
                         "quniform; visionsweep samples them with TPE (this job would not run on Azure)")
        if space.is_conditional:
            notes.append("bayesian sampling over several sub-spaces: Azure accepts conditional spaces only with "
                         "random and grid; visionsweep uses TPE with group=True (this job would not run on Azure)")
        if has_policy:
            notes.append("bayesian sampling with early termination: HyperDrive refuses the combination; "
                         "visionsweep applies the policy (this job would not run on Azure)")
    return problems, notes


def budget_for(spec: SamplingSpec, space: SearchSpace, max_trials: int) -> int:
    """Trials the sweep runs: max_trials, capped by the number of grid points for grid sampling."""
    if spec.algorithm == "grid":
        return min(max_trials, sum(sub.grid_size() for sub in space.subspaces))
    return max_trials


def assigned_points(spec: SamplingSpec, space: SearchSpace) -> list[dict[str, Any]]:
    """The grid points in the order slots take them (seeded shuffle); empty for other algorithms."""
    if spec.algorithm != "grid":
        return []
    points = grid_points(space)
    order = np.random.default_rng(spec.seed or 0).permutation(len(points))
    return [points[i] for i in order]


def make_sampler(spec: SamplingSpec, points: Sequence[Mapping[str, Any]] = (), *,
                 study_seed: int = 0) -> BaseSampler:
    """The Optuna sampler for ``spec``, wrapped so that it is seeded per slot and honours points.

    ``study_seed`` seeds the Sobol sequence when the job gives no seed (use a hash of the study
    name so that every worker of one study walks the same sequence).
    """
    seed = spec.seed
    if spec.algorithm == "bayesian":
        startup = spec.n_startup_trials or 10

        def make(slot: int) -> BaseSampler:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return TPESampler(seed=slot_seed(seed, slot), n_startup_trials=startup, multivariate=True,
                                  group=True, constant_liar=True)
        return SlotSampler(make, points)
    random_sampler = SlotSampler(lambda slot: RandomSampler(seed=slot_seed(seed, slot)))
    if spec.algorithm == "random" and spec.rule == "sobol":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            qmc = QMCSampler(qmc_type="sobol", scramble=True, seed=seed if seed is not None else study_seed,
                             independent_sampler=random_sampler, warn_asynchronous_seeding=False,
                             warn_independent_sampling=False)
        return SlotSampler(lambda slot: qmc, points)
    return SlotSampler(lambda slot: RandomSampler(seed=slot_seed(seed, slot)), points)


def slot_seed(seed: int | None, slot: int) -> int | None:
    """A seed for one slot derived from the job's seed (None stays None: draw from the OS)."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([seed, slot]).generate_state(1)[0])


class SlotSampler(BaseSampler):
    """Delegates to a sampler built for the trial's slot; a trial with an assigned point takes it.

    The slot and point are read from the trial's user attributes ``attrs.SLOT`` and ``attrs.POINT``,
    which the runner sets right after ``study.ask()`` and before any ``suggest_*`` call. A trial
    without a slot (sampling outside the runner, as in tests) uses slot = its trial number.
    Parameters missing from an assigned point are drawn by the slot's sampler.
    """

    def __init__(self, make: Callable[[int], BaseSampler], points: Sequence[Mapping[str, Any]] = ()):
        self._make = make
        self._points = [dict(p) for p in points]
        self._cache: dict[int, BaseSampler] = {}

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._point(trial) is not None:
            return {}
        return self._sampler(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if self._point(trial) is not None or not search_space:
            return {}
        return self._sampler(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        point = self._point(trial)
        if point is not None and param_name in point:
            return point[param_name]
        return self._sampler(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        # The slot is not known yet when Optuna calls this (inside study.ask()); samplers are built lazily.
        pass

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        sampler = self._cache.pop(trial.number, None)
        if sampler is not None:
            sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        for sampler in self._cache.values():
            sampler.reseed_rng()

    def _slot(self, trial: FrozenTrial) -> int:
        return int(trial.user_attrs.get(attrs.SLOT, trial.number))

    def _point(self, trial: FrozenTrial) -> dict[str, Any] | None:
        index = trial.user_attrs.get(attrs.POINT)
        if index is None or not 0 <= int(index) < len(self._points):
            return None
        return self._points[int(index)]

    def _sampler(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._cache:
            self._cache[trial.number] = self._make(self._slot(trial))
        return self._cache[trial.number]
