"""The distributions of Azure's sweep grammar: what each one draws, and how it is sampled through Optuna.

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

How distributions are written, and the checks of their parameters, are in ``visionsweep.sweep.space``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

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
SCALAR_TYPES = (str, int, float, bool, type(None))
"""The types Optuna keeps as categories; a list or tuple choice travels as its JSON text."""

# The quantile range of the normal family: inverse_cdf(1e-12) is about -7.03 sigma.
_QUANTILE_EPS = 1e-12
_STANDARD_NORMAL = NormalDist()


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
            return CategoricalDistribution(raw_choices(self.values))
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
            return self.values[raw_choices(self.values).index(raw)]
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
        return list(dict.fromkeys(self.from_raw(r) for r in raws))

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


def raw_choices(values: Sequence[Any]) -> tuple[Any, ...]:
    """The Optuna categories of choice ``values``: None/bool/int/float/str as they are, a list or tuple
    as its JSON text."""
    return tuple(v if isinstance(v, SCALAR_TYPES) else json.dumps(jsonable(v)) for v in values)


def jsonable(value: Any) -> Any:
    """``value`` with its tuples as lists, ready for ``json.dumps``."""
    if isinstance(value, tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def _round_to(value: float, q: float) -> float:
    # Python's round() ties to even, as numpy's does in the reference implementation; the %.12g
    # removes binary noise such as 0.30000000000000004 for q = 0.1.
    return float(f"{round(value / q) * q:.12g}")


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
