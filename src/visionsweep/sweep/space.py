"""The search-space grammar of Azure image jobs, and sampling a trial's values from it through Optuna.

A search space is a list of *sub-spaces*. Each sub-space maps hyperparameter names to a fixed
value or a distribution, and a trial draws from exactly one sub-space (a conditional space).
Distributions are written in either of Azure's two spellings::

    learning_rate: "uniform(0.001, 0.01)"                         # string form
    learning_rate: {type: uniform, min_value: 0.001, max_value: 0.01}  # object form

What each distribution draws, and how it is sampled through Optuna, is in
``visionsweep.sweep.distributions``; the check of a space against the schema in
``visionsweep.sweep.space_checks``.

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
from typing import Any, Iterable, Iterator, Mapping

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from visionsweep.errors import SettingsError
from visionsweep.settings import canonical_key
from visionsweep.settings.partial import cast_value
from visionsweep.sweep.distributions import KINDS, PARAMETERS, SCALAR_TYPES, Distribution, jsonable, raw_choices

SUBSPACE_PARAM = "subspace"
"""Name of the categorical Optuna parameter that picks the sub-space when there are several."""

_NUMBER = (int, float)


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
        return {**{k: jsonable(v) for k, v in self.fixed.items()},
                **{k: jsonable(d.to_object()) for k, d in self.distributions.items()}}


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
                if not isinstance(value, SCALAR_TYPES + (list, tuple)):
                    problems.append(f"choice: value {value!r} must be a number, string, boolean, null or list")
            seen = [json.dumps(jsonable(v), sort_keys=True) + type(v).__name__ for v in values]
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
    result; nothing is validated here (``visionsweep.settings.resolve_settings`` does that).
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
        choices = [raw_choices(d.values) for d in sub.distributions.values()]
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


# --- helpers ----------------------------------------------------------------------------------------


def _suggest_raw(trial: optuna.trial.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def _unique(items: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


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
