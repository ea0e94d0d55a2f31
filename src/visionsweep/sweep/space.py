"""The search-space grammar of Azure image jobs, sampling through Optuna, and checks against the schema.

A search space is a list of *sub-spaces*. Each sub-space maps hyperparameter names to a fixed
value or a distribution, and a trial draws from exactly one sub-space (a conditional space).
Distributions are written in either of Azure's two spellings::

    learning_rate: "uniform(0.001, 0.01)"                         # string form
    learning_rate: {type: uniform, min_value: 0.001, max_value: 0.01}  # object form

Reference semantics (spec/sweeps-and-peers.md, A.8), which we reproduce exactly:

=============  ========================  ==============================================
expression     parameters                value
=============  ========================  ==============================================
choice         values                    one of the values
randint        upper                     integer in [0, upper)
uniform        min_value, max_value      U(min, max)
quniform       min_value, max_value, q   round(U(min, max) / q) * q
loguniform     min_value, max_value      exp(U(min, max))  (the bounds are exponents)
qloguniform    min_value, max_value, q   round(exp(U(min, max)) / q) * q
normal         mu, sigma                 N(mu, sigma), unbounded
qnormal        mu, sigma, q              round(N(mu, sigma) / q) * q
lognormal      mu, sigma                 exp(N(mu, sigma))
qlognormal     mu, sigma, q              round(exp(N(mu, sigma)) / q) * q
=============  ========================  ==============================================

How values reach Optuna. Every distribution is sampled as one *raw* Optuna parameter and then
mapped to its value by ``Distribution.from_raw``:

* choice is a categorical parameter; randint an integer parameter on [0, upper - 1].
* uniform and loguniform are float parameters on [min, max] and [exp(min), exp(max)] (log scale).
* The q-variants sample the continuous parameter and round afterwards. Optuna's own ``step``
  would anchor its grid at ``min`` and give every grid value equal weight, whereas the reference
  rounds to multiples of q anchored at 0, so the end values get half weight and a value may
  fall just outside [min, max]. Rounding afterwards keeps the reference's distribution exactly;
  the Optuna parameter then holds the unrounded number and the trial's ``config`` the value used.
* normal and lognormal families cannot be Optuna distributions, which are all bounded. They are
  sampled through their quantile: the raw parameter ``<name>.quantile`` is a float u in
  (1e-12, 1 - 1e-12) and the value is mu + sigma * inverse_normal_cdf(u). With a random sampler u
  is uniform, so the value follows N(mu, sigma) exactly up to a cut at about 7 sigma; with the
  Sobol sampler the transform gives a quasi-random normal sequence; TPE models u, a bounded
  reparametrisation of the same distribution.

Values are cast to the type the schema declares for the key: a float drawn for an integer key
(``number_of_epochs: quniform(10, 30, 5)``) becomes ``int(round(value))``, an integer drawn for a
float key becomes a float.
"""
from __future__ import annotations

import difflib
import itertools
import json
import math
import re
import typing
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Iterable, Iterator, Mapping, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from visionsweep.errors import SettingsError
from visionsweep.settings import ALIASES, Settings, all_setting_names, resolve_settings, scope_of
from visionsweep.settings.resolve import AZURE_ONLY_KEYS
from visionsweep.tasks import Task, parse_task

# The parameters of each distribution, in positional order for the string form.
PARAMETERS: dict[str, tuple[str, ...]] = {
    "choice": ("values",),
    "randint": ("upper",),
    "uniform": ("min_value", "max_value"),
    "quniform": ("min_value", "max_value", "q"),
    "loguniform": ("min_value", "max_value"),
    "qloguniform": ("min_value", "max_value", "q"),
    "normal": ("mu", "sigma"),
    "qnormal": ("mu", "sigma", "q"),
    "lognormal": ("mu", "sigma"),
    "qlognormal": ("mu", "sigma", "q"),
}
KINDS = tuple(PARAMETERS)
NORMAL_FAMILY = frozenset({"normal", "qnormal", "lognormal", "qlognormal"})
SUBSPACE_PARAM = "subspace"
"""Name of the categorical Optuna parameter that picks the sub-space when there are several."""

# The quantile range of the normal family: inverse_cdf(1e-12) is about -7.03 sigma.
_QUANTILE_EPS = 1e-12
_STANDARD_NORMAL = NormalDist()
_PRIMITIVE = (str, int, float, bool, type(None))
_NUMBER = (int, float)


@dataclass(frozen=True)
class Distribution:
    """One parsed distribution. ``params`` holds the canonical parameter names of ``PARAMETERS``."""

    kind: str
    params: Mapping[str, Any]

    @property
    def values(self) -> tuple[Any, ...]:
        """The choice values (empty for other kinds)."""
        return tuple(self.params.get("values", ()))

    @property
    def is_choice(self) -> bool:
        return self.kind == "choice"

    def describe(self) -> str:
        """The string spelling, e.g. ``uniform(0.001, 0.01)``; parsing it gives this distribution back."""
        args = self.values if self.is_choice else tuple(self.params[p] for p in PARAMETERS[self.kind])
        return f"{self.kind}({', '.join(_literal(a) for a in args)})"

    def to_object(self) -> dict[str, Any]:
        """The object spelling, e.g. ``{"type": "uniform", "min_value": 0.001, "max_value": 0.01}``."""
        return {"type": self.kind, **{name: (list(v) if name == "values" else v) for name, v in self.params.items()}}

    def raw_name(self, name: str) -> str:
        """The Optuna parameter name that stores the raw draw for the key parameter ``name``."""
        return f"{name}.quantile" if self.kind in NORMAL_FAMILY else name

    def optuna_distribution(self) -> BaseDistribution:
        """The bounded Optuna distribution of the raw parameter (see the module docstring)."""
        p = self.params
        if self.kind == "choice":
            return CategoricalDistribution(_raw_choices(self.values))
        if self.kind == "randint":
            return IntDistribution(0, int(p["upper"]) - 1)
        if self.kind in ("uniform", "quniform"):
            return FloatDistribution(float(p["min_value"]), float(p["max_value"]))
        if self.kind in ("loguniform", "qloguniform"):
            return FloatDistribution(math.exp(p["min_value"]), math.exp(p["max_value"]), log=True)
        return FloatDistribution(_QUANTILE_EPS, 1.0 - _QUANTILE_EPS)

    def from_raw(self, raw: Any) -> Any:
        """Map a raw Optuna draw to the distribution's value (before casting to the key's type)."""
        kind, p = self.kind, self.params
        if kind == "choice":
            return self.values[_raw_choices(self.values).index(raw)]
        if kind == "randint":
            return int(raw)
        if kind in NORMAL_FAMILY:
            value = p["mu"] + p["sigma"] * _STANDARD_NORMAL.inv_cdf(float(raw))
            if kind in ("lognormal", "qlognormal"):
                value = math.exp(value)
        else:
            value = float(raw)
        return _round_to(value, p["q"]) if "q" in p else value

    def extremes(self) -> list[Any]:
        """Values at the edges of the range: every choice, both ends otherwise (after rounding).

        The normal family is unbounded; its entries are the 0.1 % and 99.9 % quantiles.
        """
        if self.is_choice:
            return list(self.values)
        dist = self.optuna_distribution()
        if self.kind in NORMAL_FAMILY:
            raws: list[Any] = [0.001, 0.999]
        else:
            raws = [dist.low, dist.high]  # type: ignore[attr-defined]
        return _unique(self.from_raw(r) for r in raws)

    def representative(self) -> Any:
        """A value from the middle of the range, used to probe the other keys of a sub-space."""
        if self.is_choice:
            return self.values[0]
        if self.kind == "randint":
            return int(self.params["upper"]) // 2
        if self.kind in NORMAL_FAMILY:
            return self.from_raw(0.5)
        dist = self.optuna_distribution()
        low, high = dist.low, dist.high  # type: ignore[attr-defined]
        middle = math.sqrt(low * high) if getattr(dist, "log", False) else (low + high) / 2
        return self.from_raw(middle)


@dataclass(frozen=True)
class SubSpace:
    """One dictionary of the ``search_space`` list: fixed values and distributions, in the given order."""

    fixed: Mapping[str, Any] = field(default_factory=dict)
    distributions: Mapping[str, Distribution] = field(default_factory=dict)

    def keys(self) -> list[str]:
        return [*self.fixed, *self.distributions]

    def grid_size(self) -> int:
        """Number of grid points: the product of the choice counts (1 when nothing varies)."""
        return math.prod(len(d.values) for d in self.distributions.values())

    def to_raw(self) -> dict[str, Any]:
        """The object spelling of this sub-space (JSON-ready), which ``parse_search_space`` reads back."""
        return {**{k: _jsonable(v) for k, v in self.fixed.items()},
                **{k: _jsonable(d.to_object()) for k, d in self.distributions.items()}}


@dataclass(frozen=True)
class SearchSpace:
    """The ``search_space`` list. An empty sweep (one model, AutoMode without keys) is one empty sub-space."""

    subspaces: tuple[SubSpace, ...] = (SubSpace(),)

    def __post_init__(self) -> None:
        if not self.subspaces:
            raise ValueError("a search space needs at least one sub-space")

    @property
    def is_conditional(self) -> bool:
        return len(self.subspaces) > 1

    def param_name(self, index: int, key: str) -> str:
        """Optuna parameter name of ``key`` in sub-space ``index``: ``key`` alone when there is one
        sub-space, ``key@index`` otherwise (Optuna stores one distribution per name per study)."""
        return f"{key}@{index}" if self.is_conditional else key

    def distributions(self) -> Iterator[tuple[int, str, Distribution]]:
        for index, sub in enumerate(self.subspaces):
            for key, dist in sub.distributions.items():
                yield index, key, dist

    def to_raw(self) -> list[dict[str, Any]]:
        return [sub.to_raw() for sub in self.subspaces]


@dataclass(frozen=True)
class Sample:
    """What one trial drew: the sub-space index and the values of every key of that sub-space,
    cast to the schema's types (fixed values included), in the sub-space's key order."""

    subspace: int
    values: dict[str, Any]


# --- parsing ----------------------------------------------------------------------------------------


def parse_search_space(raw: Any, *, where: str = "search_space") -> tuple[SearchSpace, list[str]]:
    """Parse the YAML ``search_space`` value: a list of mappings (a single mapping is taken as a
    list of one). Returns the space and every problem found (the space is partial when there are
    problems)."""
    problems: list[str] = []
    if raw is None:
        return SearchSpace(), problems
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        return SearchSpace(), [f"{where}: must be a non-empty list of mappings (one per sub-space), "
                               f"got {type(raw).__name__}"]
    subspaces = []
    for index, item in enumerate(raw):
        here = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            problems.append(f"{here}: must be a mapping of KEY: value or distribution, got {type(item).__name__}")
            continue
        fixed: dict[str, Any] = {}
        dists: dict[str, Distribution] = {}
        canonical_seen: dict[str, str] = {}
        for key, value in item.items():
            key = str(key)
            canonical = canonical_key(key)
            if canonical in canonical_seen:
                problems.append(f"{here}: {key} and {canonical_seen[canonical]} are the same setting; give only one")
                continue
            canonical_seen[canonical] = key
            try:
                parsed = parse_value(value)
            except SettingsError as error:
                problems.extend(f"{here}.{key}: {p}" for p in error.problems)
                continue
            if isinstance(parsed, Distribution):
                dists[key] = parsed
            else:
                fixed[key] = cast_value(key, parsed)
        subspaces.append(SubSpace(fixed, dists))
    return SearchSpace(tuple(subspaces) or (SubSpace(),)), problems


def parse_value(value: Any) -> Any:
    """A literal, or a ``Distribution`` for the string or object spelling of one.

    A string is a distribution only when it starts with a distribution name and a parenthesis
    (``"choice('a', 'b')"``); ``"warmup_cosine"`` or ``"3x2"`` stay literals. A mapping is a
    distribution only when it has a ``type`` key. Raises ``SettingsError`` listing the problems.
    """
    if isinstance(value, str) and _looks_like_expression(value):
        return parse_expression(value)
    if isinstance(value, Mapping) and "type" in value:
        return parse_object(value)
    return value


def parse_expression(text: str) -> Distribution:
    """Parse the string spelling, e.g. ``quniform(10, 30, 5)`` or ``choice('sgd', "adamw")``.

    Arguments are literals: numbers, quoted strings, bare words (``true``/``false``, ``none``/``null``,
    otherwise a string), lists ``[...]``, tuples ``(...)`` and ``range(start, stop[, step])``;
    keyword arguments use the object spelling's names (``uniform(min_value=0.1, max_value=0.2)``).
    ``choice`` with one list or range argument takes its elements as the values (as the Python SDK's
    ``Choice(values=[...])``); with several arguments each argument is one value.
    """
    tokens = _tokenize(text)
    parser = _Parser(tokens, text)
    kind, args, kwargs = parser.expression()
    kind_l = kind.lower()
    if kind_l not in PARAMETERS:
        raise SettingsError([_unknown_kind(kind)], context="search space")
    if kind_l == "choice":
        if kwargs:
            if args or set(kwargs) != {"values"}:
                raise SettingsError([f"choice takes its values as arguments or as values=[...], in {text!r}"],
                                    context="search space")
            values = kwargs["values"]
        elif len(args) == 1 and isinstance(args[0], (list, _Range)):
            values = list(args[0])
        else:
            values = list(args)
        return _build("choice", {"values": values})
    names = PARAMETERS[kind_l]
    problems = []
    if len(args) > len(names):
        problems.append(f"{kind_l} takes {len(names)} argument(s) ({', '.join(names)}), got {len(args)} in {text!r}")
    params = dict(zip(names, args))
    for name, value in kwargs.items():
        if name not in names:
            problems.append(_unknown_param(kind_l, name))
        elif name in params:
            problems.append(f"{kind_l}: {name} is given twice in {text!r}")
        else:
            params[name] = value
    if problems:
        raise SettingsError(problems, context="search space")
    return _build(kind_l, params)


def parse_object(mapping: Mapping[str, Any]) -> Distribution:
    """Parse the object spelling, e.g. ``{type: quniform, min_value: 10, max_value: 30, q: 5}``."""
    kind = str(mapping.get("type", "")).strip().lower()
    if kind not in PARAMETERS:
        raise SettingsError([_unknown_kind(mapping.get("type"))], context="search space")
    params = {}
    problems = []
    for name, value in mapping.items():
        if name == "type":
            continue
        if name not in PARAMETERS[kind]:
            problems.append(_unknown_param(kind, str(name)))
        else:
            params[name] = list(value) if name == "values" and isinstance(value, (list, tuple, range)) else value
    if problems:
        raise SettingsError(problems, context="search space")
    return _build(kind, params)


def _build(kind: str, params: dict[str, Any]) -> Distribution:
    """Check the parameters of one distribution and return it; every problem is listed."""
    problems = [f"{kind}: missing {name}" for name in PARAMETERS[kind] if name not in params]
    for name, value in params.items():
        if name == "values":
            continue
        if isinstance(value, bool) or not isinstance(value, _NUMBER) or not math.isfinite(value):
            problems.append(f"{kind}: {name} must be a finite number, got {value!r}")
    if problems:
        raise SettingsError(problems, context="search space")
    if kind == "choice":
        values = params["values"]
        if not isinstance(values, list) or not values:
            problems.append(f"choice: values must be a non-empty list, got {values!r}")
        else:
            for value in values:
                if not isinstance(value, _PRIMITIVE + (list, tuple)):
                    problems.append(f"choice: value {value!r} must be a number, string, boolean, null or list")
            seen = [json.dumps(_jsonable(v), sort_keys=True) + type(v).__name__ for v in values]
            duplicates = _unique(values[i] for i, s in enumerate(seen) if seen.count(s) > 1)
            if duplicates:
                problems.append(f"choice: {', '.join(repr(d) for d in duplicates)} listed more than once")
            has_bool = any(isinstance(v, bool) for v in values)
            if has_bool and any(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in values):
                # Optuna finds categories by equality, and True == 1 in Python.
                problems.append(f"choice: {values!r} mixes true/false with numbers; use one type")
            params = {"values": tuple(tuple(v) if isinstance(v, list) else v for v in values)}
    elif kind == "randint":
        upper = params["upper"]
        if float(upper) != int(upper) or upper < 1:
            problems.append(f"randint: upper must be a whole number >= 1 (values are 0 .. upper-1), got {upper!r}")
        else:
            params["upper"] = int(upper)
    else:
        if "min_value" in params and params["min_value"] > params["max_value"]:
            problems.append(f"{kind}: min_value {params['min_value']!r} is larger than max_value {params['max_value']!r}")
        if kind in ("loguniform", "qloguniform") and max(abs(params["min_value"]), abs(params["max_value"])) > 700:
            problems.append(f"{kind}: min_value and max_value are exponents (values are exp(min)..exp(max)); "
                            f"{params['min_value']!r}..{params['max_value']!r} overflows. For 0.001..0.1 write "
                            f"{math.log(0.001):.4f}, {math.log(0.1):.4f}")
        if "sigma" in params and params["sigma"] <= 0:
            problems.append(f"{kind}: sigma must be > 0, got {params['sigma']!r}")
        if "q" in params and params["q"] <= 0:
            problems.append(f"{kind}: q must be > 0, got {params['q']!r}")
    if problems:
        raise SettingsError(problems, context="search space")
    return Distribution(kind, params)


# --- sampling ---------------------------------------------------------------------------------------


def suggest(trial: optuna.trial.Trial, space: SearchSpace) -> Sample:
    """Draw one configuration through ``trial`` (define-by-run).

    With several sub-spaces the categorical parameter ``subspace`` picks one first, and only that
    sub-space's keys are suggested, under names ``key@index``. Fixed values are included in the
    result; nothing is validated here (see ``validate_config``).
    """
    index = 0
    if space.is_conditional:
        index = int(trial.suggest_categorical(SUBSPACE_PARAM, list(range(len(space.subspaces)))))
    sub = space.subspaces[index]
    values = {key: cast_value(key, value) for key, value in sub.fixed.items()}
    for key, dist in sub.distributions.items():
        name = dist.raw_name(space.param_name(index, key))
        raw = _suggest_raw(trial, name, dist.optuna_distribution())
        values[key] = cast_value(key, dist.from_raw(raw))
    return Sample(index, values)


def grid_points(space: SearchSpace) -> list[dict[str, Any]]:
    """Every grid point as raw Optuna parameters, sub-space by sub-space, last key varying fastest.

    Only choice distributions can be enumerated; call ``grid_problems`` first.
    """
    points = []
    for index, sub in enumerate(space.subspaces):
        names = [space.param_name(index, key) for key in sub.distributions]
        choices = [_raw_choices(d.values) for d in sub.distributions.values()]
        for combo in itertools.product(*choices):
            point = {SUBSPACE_PARAM: index} if space.is_conditional else {}
            point.update(zip(names, combo))
            points.append(point)
    return points


def grid_problems(space: SearchSpace) -> list[str]:
    """Keys that grid sampling cannot enumerate (anything but ``choice``)."""
    return [f"search_space[{index}].{key}: grid sampling takes only choice(...), got {dist.describe()}; "
            f"list the values as a choice, or use sampling_algorithm: random"
            for index, key, dist in space.distributions() if not dist.is_choice]


# --- types and validation ---------------------------------------------------------------------------


def canonical_key(key: str) -> str:
    """The runtime name of a setting (Azure's v2 names map through ``visionsweep.settings.ALIASES``)."""
    return ALIASES.get(key, key)


def merge_settings(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merge setting mappings, later layers winning, with every key under its runtime name."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            merged[canonical_key(key)] = value
    return merged


def cast_value(key: str, value: Any) -> Any:
    """Cast a drawn value to the schema type of ``key``: floats for integer keys become
    ``int(round(value))``, integers for float keys become floats; anything else is unchanged."""
    kind = _value_kind(canonical_key(key))
    if isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, float) and math.isfinite(value):
        return int(round(value))
    if kind == "float" and isinstance(value, int):
        return float(value)
    return value


def validate_config(task: Task | str, config: Mapping[str, Any]) -> Settings:
    """Resolve one trial's settings with the schema; raises ``SettingsError`` listing every problem."""
    return resolve_settings(task, dict(config))


def check_setting_names(task: Task | str | None, keys: Iterable[str], where: str) -> tuple[list[str], list[str]]:
    """Problems (unknown keys, keys of another task) and notes (Azure-only keys) for setting names.

    ``task`` None (a job whose task is unreadable) checks only that each name is a setting of some task.
    """
    problems: list[str] = []
    notes: list[str] = []
    for key in keys:
        problem, note = _name_problem(task, key)
        if problem:
            problems.append(f"{where}.{key}: {problem}")
        if note:
            notes.append(f"{where}.{key} {note}")
    return problems, notes


def known_settings(task: Task | str | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` whose names ``check_setting_names`` accepts, so that the checks of
    their values can go on after a misspelt name has been reported."""
    return {key: value for key, value in values.items() if _name_problem(task, key)[0] is None}


def check_base_settings(task: Task | str, base: Mapping[str, Any],
                        where: str = "training_parameters") -> tuple[list[str], dict[str, Any]]:
    """Check the settings every trial shares, each value on its own (type, range, allowed names).

    Returns the problems (``where.key: ...``) and ``base`` without the rejected keys, which
    ``check_space`` then checks with the search space (rules between keys involve the sampled
    values, so they are left to it). Names must have been checked (``known_settings``).
    """
    task = parse_task(task)
    rejected = [p for p in _problems(task, base) if _about(p, base)]
    clean = {key: value for key, value in base.items() if not _about_any(rejected, key)}
    return [f"{where}.{p}" for p in rejected], clean


def check_space(task: Task | str, base: Mapping[str, Any], space: SearchSpace) -> tuple[list[str], list[str]]:
    """Check a search space against the schema before any trial runs.

    For each sub-space and each model it may pick, the fixed values plus a middle value of every
    distribution are resolved; then each distribution's edge values (every choice, both ends of a
    range) are tried one key at a time. A value the schema rejects on its own (out of range, wrong
    type, not an allowed name) is a problem. A rule between several keys that some draws break
    (a ViT's train and valid crop sizes) is only a note: those trials fail validation and are
    recorded failed, the others run. The normal family is unbounded, so a rejected 0.1 %/99.9 %
    quantile is a note too. Returns (problems, notes).
    """
    task = parse_task(task)
    problems: list[str] = []
    notes: list[str] = []
    for index, sub in enumerate(space.subspaces):
        here = f"search_space[{index}]"
        name_problems, name_notes = check_setting_names(task, sub.keys(), here)
        problems.extend(name_problems)
        notes.extend(name_notes)
        # A misspelt key is reported above; the sub-space's other keys are still checked, so that
        # one pass over the job finds every problem.
        fixed = merge_settings(base, known_settings(task, sub.fixed))
        distributions = known_settings(task, sub.distributions)
        model_dist = next((d for k, d in distributions.items() if canonical_key(k) == "model_name"), None)
        models = list(model_dist.values) if model_dist else [fixed.get("model_name", task.default_model)]
        others = {k: d for k, d in distributions.items() if canonical_key(k) != "model_name"}
        own_keys = {*fixed, "model_name"}
        sampled_keys = {canonical_key(k) for k in others}
        for model in models:
            probe = merge_settings(fixed, {k: cast_value(k, d.representative()) for k, d in others.items()},
                                   {"model_name": model})
            label = f"{here} with model_name {model}"
            base_problems = _problems(task, probe)
            for p in base_problems:
                if _about(p, own_keys):
                    problems.append(f"{label}: {p}")
                elif not _about(p, sampled_keys):  # sampled keys are reported at their edge values below
                    notes.append(f"{label}: some draws break a rule and will be recorded failed: {p}")
            rejected = {key for key in own_keys if _about_any(base_problems, key)}
            if "model_name" in rejected:
                continue  # not a model of the task: nothing else can be checked against it
            if rejected:
                # The fixed values reported above are left out, and the distributions checked without them.
                probe = {k: v for k, v in probe.items() if k not in rejected}
                base_problems = _problems(task, probe)
            for key, dist in others.items():
                for value in dist.extremes():
                    value = cast_value(key, value)
                    for p in _problems(task, merge_settings(probe, {key: value})):
                        line = f"{label}: {key}={value!r} (from {dist.describe()}) is rejected: {p}"
                        if _about(p, {canonical_key(key)}):
                            if dist.kind in NORMAL_FAMILY:
                                notes.append(f"{line}; such trials will be recorded failed")
                            else:
                                problems.append(line)
                        elif p not in base_problems and not _about(p, sampled_keys):
                            notes.append(f"{line}; such trials will be recorded failed")
    return _unique(problems), _unique(notes)


def _about(problem: str, keys: Iterable[str]) -> bool:
    """Whether a schema problem line is about one of ``keys`` alone (it starts with ``key:``)."""
    return any(problem.startswith(f"{key}:") for key in keys)


def _about_any(problems: Iterable[str], key: str) -> bool:
    return any(_about(p, {key}) for p in problems)


def _name_problem(task: Task | str | None, key: str) -> tuple[str | None, str | None]:
    """(problem, note) for one setting name; see ``check_setting_names``."""
    name = canonical_key(key)
    if key == "advanced_settings":
        return None, None
    if name in AZURE_ONLY_KEYS:
        return None, "is ignored: it only configures Azure services"
    known = all_setting_names()
    if name not in known:
        close = difflib.get_close_matches(key, sorted(set(known) | set(ALIASES)), n=1, cutoff=0.6)
        return (f"unknown setting; did you mean {close[0]!r}?" if close
                else "unknown setting; see docs/settings.md for the list"), None
    if task is not None and parse_task(task) not in scope_of(name).tasks:
        return f"does not apply to {parse_task(task)}; it is a setting of {scope_of(name).describe()}", None
    return None, None


def _problems(task: Task, config: Mapping[str, Any]) -> list[str]:
    try:
        resolve_settings(task, dict(config))
    except SettingsError as error:
        return error.problems
    return []


def _value_kind(name: str) -> str:
    """'int', 'float' or 'other' for a schema field (Optional and Annotated unwrapped)."""
    info = Settings.model_fields.get(name)
    if info is None:
        return "other"
    annotation = info.annotation
    while True:
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin is typing.Annotated or (origin is typing.Union and len(args) == 1):
            annotation = args[0]
            continue
        break
    if annotation is bool:
        return "other"
    if annotation is int or (origin is typing.Literal and all(isinstance(a, int) and not isinstance(a, bool)
                                                                for a in typing.get_args(annotation))):
        return "int"
    if annotation is float:
        return "float"
    return "other"


# --- helpers ----------------------------------------------------------------------------------------


def _suggest_raw(trial: optuna.trial.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def _raw_choices(values: Sequence[Any]) -> tuple[Any, ...]:
    """Optuna categories are None/bool/int/float/str; a list or tuple value travels as its JSON text."""
    return tuple(v if isinstance(v, _PRIMITIVE) else json.dumps(_jsonable(v)) for v in values)


def _round_to(value: float, q: float) -> float:
    # Python's round() ties to even, as numpy's does in the reference implementation; the %.12g
    # removes binary noise such as 0.30000000000000004 for q = 0.1.
    return float(f"{round(value / q) * q:.12g}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _unique(items: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def _looks_like_expression(text: str) -> bool:
    match = re.match(r"\s*([A-Za-z_]\w*)\s*\(", text)
    return bool(match) and (match.group(1).lower() in PARAMETERS or _is_near_kind(match.group(1)))


def _is_near_kind(word: str) -> bool:
    return bool(difflib.get_close_matches(word.lower(), KINDS, n=1, cutoff=0.75))


def _unknown_kind(kind: Any) -> str:
    close = difflib.get_close_matches(str(kind).lower(), KINDS, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown distribution {kind!r}{hint} (allowed: {', '.join(KINDS)})"


def _unknown_param(kind: str, name: str) -> str:
    return f"{kind} has no parameter {name!r}; its parameters are {', '.join(PARAMETERS[kind])}"


# --- the tokenizer and parser of the string spelling --------------------------------------------------


class _Range(list):
    """The expansion of ``range(...)`` (a list that remembers it came from a range)."""


_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<punct>[()\[\],=])
  | (?P<word>[^\s()\[\],='"]+)
""", re.VERBOSE)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise SettingsError([f"cannot read {text!r} at position {position}: unbalanced quote?"],
                                context="search space")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group(), position))
        position = match.end()
    return tokens


class _Parser:
    """Recursive descent over the tokens: ``NAME ( [arg {, arg}] [,] )`` with literal arguments."""

    def __init__(self, tokens: list[tuple[str, str, int]], text: str):
        self.tokens = tokens
        self.text = text
        self.index = 0

    def expression(self) -> tuple[str, list[Any], dict[str, Any]]:
        kind, name, _ = self._take()
        if kind != "word":
            self._fail("expected a distribution name")
        self._expect("(")
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        while not self._peek_is(")"):
            if self._peek_kind() == "word" and self._peek_is("=", offset=1):
                key = self._take()[1]
                self._take()
                if key in kwargs:
                    self._fail(f"{key} is given twice")
                kwargs[key] = self._value()
            else:
                if kwargs:
                    self._fail("a positional argument follows a keyword argument")
                args.append(self._value())
            if not self._peek_is(")"):
                self._expect(",")
        self._expect(")")
        if self.index != len(self.tokens):
            self._fail("unexpected text after the closing parenthesis")
        return name, args, kwargs

    def _value(self) -> Any:
        kind, text, _ = self._take()
        if kind == "string":
            return _unquote(text)
        if text in ("[", "("):
            closing = "]" if text == "[" else ")"
            items = []
            while not self._peek_is(closing):
                items.append(self._value())
                if not self._peek_is(closing):
                    self._expect(",")
            self._expect(closing)
            return items
        if kind == "word":
            if text == "range" and self._peek_is("("):
                return self._range()
            return _bare_word(text)
        self._fail(f"unexpected {text!r}")

    def _range(self) -> _Range:
        self._expect("(")
        bounds = []
        while not self._peek_is(")"):
            bounds.append(self._value())
            if not self._peek_is(")"):
                self._expect(",")
        self._expect(")")
        if not 1 <= len(bounds) <= 3 or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
            self._fail("range takes 1 to 3 whole numbers, e.g. range(1, 10, 2)")
        return _Range(range(*bounds))

    def _take(self) -> tuple[str, str, int]:
        if self.index >= len(self.tokens):
            self._fail("the expression ends early (missing ')'?)")
        token = self.tokens[self.index]
        self.index += 1
        return token

    def _expect(self, text: str) -> None:
        token = self._take()
        if token[1] != text or token[0] != "punct":
            self.index -= 1
            self._fail(f"expected {text!r}, found {token[1]!r}")

    def _peek_is(self, text: str, offset: int = 0) -> bool:
        position = self.index + offset
        return position < len(self.tokens) and self.tokens[position][0] == "punct" and self.tokens[position][1] == text

    def _peek_kind(self) -> str | None:
        return self.tokens[self.index][0] if self.index < len(self.tokens) else None

    def _fail(self, message: str) -> typing.NoReturn:
        position = self.tokens[self.index][2] if self.index < len(self.tokens) else len(self.text)
        raise SettingsError([f"cannot parse {self.text!r} at position {position}: {message}"], context="search space")


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def _bare_word(text: str) -> Any:
    lowered = text.lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    if lowered in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text
