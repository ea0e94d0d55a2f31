"""Settings checked in parts, before the whole settings of a run are known.

A sweep job gives its settings in parts: ``training_parameters`` that every trial shares, and a
search space whose values exist only once a trial draws them. The job is checked before any trial
runs, so names are checked without their values, each shared value on its own, and a drawn value is
cast to the type the schema declares for its key. The checks are ``resolve_settings``' own: the same
names, bounds and messages as a single run.
"""
from __future__ import annotations

import math
import typing
from typing import Any, Iterable, Mapping

from visionsweep.errors import SettingsError
from visionsweep.settings.resolve import (
    AZURE_ONLY_KEYS, AZURE_ONLY_NOTE, all_setting_names, canonical_key, resolve_settings, scope_problem,
    unknown_setting,
)
from visionsweep.settings.schema import Settings
from visionsweep.tasks import Task, parse_task


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
    ``visionsweep.sweep.space_checks.check_space`` then checks with the search space (rules between
    keys involve the sampled values, so they are left to it). Names must have been checked
    (``known_settings``).
    """
    task = parse_task(task)
    rejected = [p for p in settings_problems(task, base) if problem_is_about(p, base)]
    clean = {key: value for key, value in base.items() if not any(problem_is_about(p, {key}) for p in rejected)}
    return [f"{where}.{p}" for p in rejected], clean


def settings_problems(task: Task, values: Mapping[str, Any]) -> list[str]:
    """Every problem ``resolve_settings`` finds in ``values``; empty when they resolve."""
    try:
        resolve_settings(task, dict(values))
    except SettingsError as error:
        return error.problems
    return []


def problem_is_about(problem: str, keys: Iterable[str]) -> bool:
    """Whether a problem line of ``resolve_settings`` is about one of ``keys`` alone (it starts with ``key:``)."""
    return any(problem.startswith(f"{key}:") for key in keys)


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


def _name_problem(task: Task | str | None, key: str) -> tuple[str | None, str | None]:
    """(problem, note) for one setting name; see ``check_setting_names``."""
    name = canonical_key(key)
    if key == "advanced_settings":
        return None, None
    if name in AZURE_ONLY_KEYS:
        return None, AZURE_ONLY_NOTE
    if name not in all_setting_names():
        return unknown_setting(key), None
    if task is not None:
        return scope_problem(parse_task(task), name), None
    return None, None


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
