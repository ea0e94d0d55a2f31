"""The checks of a single run that need the model registry, the machine or the file system, applied
before any trial starts to every value the trials of a job can draw.

``training.preflight.run_settings_problems`` decides them for one run: a ``model_name`` without a
builder, ``layers_to_freeze`` beyond the model's layer groups, a ``device`` the process cannot use, a
``pretrained_weights`` file that does not exist, an ``xai_algorithm`` the model does not support. ``check_trials`` asks it about every fixed value
and every value a distribution can draw: each choice, both ends of a range (as
``space_checks.check_space`` does for the schema). Without these, ``layers_to_freeze: choice(0, 99)``
or ``device: cuda`` under ``--devices cpu`` would fail trial after trial instead of when the job is
checked.

The device is checked as the trials will see it: the runner gives each trial one GPU of its own
through ``CUDA_VISIBLE_DEVICES`` (it is ``cuda:0`` there), or no GPU at all when the trials run on
the CPU (``--devices cpu``, or none found).
"""
from __future__ import annotations

import itertools
import re
from typing import Any, Mapping, Sequence

from visionsweep.errors import SettingsError
from visionsweep.settings import canonical_key, resolve_settings
from visionsweep.settings.partial import cast_value, known_settings
from visionsweep.sweep.distributions import NORMAL_FAMILY, Distribution
from visionsweep.sweep.space import SearchSpace, SubSpace
from visionsweep.tasks import Task, parse_task

# The keys whose values run_settings_problems reads; layers_to_freeze is judged against the model.
_CHECKED_KEYS = ("model_name", "model_size", "layers_to_freeze", "device", "pretrained", "pretrained_weights",
                 "model_explainability", "xai_algorithm")
_BASE = "training_parameters"
# The checked keys whose problems depend on the model drawn with them.
_MODEL_DEPENDENT = ("layers_to_freeze", "xai_algorithm")


def check_trials(task: Task | str, base: Mapping[str, Any], space: SearchSpace | None, *,
                 devices: Sequence[str] | None, check_files: bool = True, models_from_plan: bool = False,
                 space_name: str = "search_space", check_weights: bool = False) -> tuple[list[str], list[str]]:
    """(problems, notes) of the model-, machine- and file-dependent checks of every trial.

    ``base`` holds the settings every trial shares (already checked by the schema, as
    ``check_base_settings`` leaves them); ``space`` the search space, None when the trials run
    ``base`` alone. ``devices``: the CUDA device ids the runner gives the trials, one each, ``[]``
    when they run on the CPU, None when not known (the device is then not checked here; the runner
    checks it). ``check_files`` False leaves ``pretrained_weights`` files unchecked.
    ``models_from_plan``: AutoMode, whose runner picks the models from the hardware; unless ``base``
    pins ``model_name``, ``layers_to_freeze`` is checked when the runner calls this with the plan's
    space. ``space_name`` names the space in the problems (AutoMode's plan is not the job's).
    ``check_weights``: also find (or download) the pretrained files of every model the trials can draw,
    and name those missing in one problem (``weight_store.missing_files_problem``): the runner's check
    before the first trial, so that an offline sweep stops once instead of failing every trial.

    A value that a distribution of the normal family reaches only at its 0.1 %/99.9 % quantile is a
    note (such trials are recorded failed), as in ``check_space``. Values the schema rejects are
    left to the schema's checks.
    """
    from visionsweep.models.weight_store import missing_files_problem  # here: they load torch and the models
    from visionsweep.training.preflight import run_settings_problems

    task = parse_task(task)
    base = known_settings(task, {canonical_key(key): value for key, value in base.items()})
    gpus = None if devices is None else (1 if devices else 0)
    problems: list[str] = []
    notes: list[str] = []
    drawn_runs = []
    subspaces = list(enumerate(space.subspaces)) if space is not None else [(None, SubSpace())]
    for index, sub in subspaces:
        here = f"{space_name}[{index}]" if index is not None else _BASE
        candidates = _candidates(task, base, sub, here)
        if models_from_plan and "model_name" not in candidates:
            candidates.pop("layers_to_freeze", None)
        for combination in itertools.product(*candidates.values()):
            drawn = dict(zip(candidates, combination))
            try:
                settings = resolve_settings(task, {key: value for key, (value, _, _) in drawn.items()})
            except SettingsError:
                continue  # check_base_settings and check_space report what the schema rejects
            drawn_runs.append(settings)
            for problem in run_settings_problems(settings, gpus=gpus, check_files=check_files):
                line, unbounded = _line(problem, drawn, here)
                if problem.startswith("device:") and devices is not None:
                    line += _device_hint(settings.device, devices)
                if unbounded:
                    notes.append(f"{line}; such trials will be recorded failed")
                else:
                    problems.append(line)
    if check_weights and not problems:
        missing = missing_files_problem(drawn_runs)
        if missing is not None:
            problems.append(missing)
    return _unique(problems), _unique(notes)


def _candidates(task: Task, base: Mapping[str, Any], sub: SubSpace,
                here: str) -> dict[str, list[tuple[Any, str, Distribution | None]]]:
    """For each checked key that is set: (value, where it is set, its distribution or None) for every
    value it takes in this sub-space."""
    fixed = {canonical_key(k): v for k, v in known_settings(task, sub.fixed).items()}
    distributions = {canonical_key(k): d for k, d in known_settings(task, sub.distributions).items()}
    candidates: dict[str, list[tuple[Any, str, Distribution | None]]] = {}
    for key in _CHECKED_KEYS:
        if key in distributions:
            dist = distributions[key]
            candidates[key] = [(cast_value(key, value), here, dist) for value in dist.extremes()]
        elif key in fixed:
            candidates[key] = [(fixed[key], here, None)]
        elif key in base:
            candidates[key] = [(base[key], _BASE, None)]
    return candidates


def _line(problem: str, drawn: Mapping[str, tuple[Any, str, Distribution | None]], here: str) -> tuple[str, bool]:
    """The problem as a job problem line: where the values involved are set, which value a
    distribution drew; and whether that value lies only in the tail of an unbounded distribution."""
    key = problem.split(":", 1)[0]
    value, where, dist = drawn.get(key, (None, _BASE, None))
    involved = ["model_name", key] if key in _MODEL_DEPENDENT else [key]
    if all(drawn.get(k, (None, _BASE, None))[1] == _BASE for k in involved):
        return f"{_BASE}.{problem}", False
    label = here
    model, _, model_dist = drawn.get("model_name", (None, _BASE, None))
    if key in _MODEL_DEPENDENT and model_dist is not None:
        label += f" with model_name {model}"
    if dist is not None:
        return f"{label}: {key}={value!r} (from {dist.describe()}) is rejected: {problem}", dist.kind in NORMAL_FAMILY
    return f"{label}: {problem}", False


def _device_hint(device: str, devices: Sequence[str]) -> str:
    if not devices:
        return ("; in this sweep the trials run on the CPU and see no GPU (--devices cpu was given, or no GPU was "
                "found); to train on GPUs, give them with --devices")
    pinned = re.fullmatch(r"cuda:(\d+)", device)
    choose = f"--devices {pinned.group(1)}" if pinned else "--devices"
    return (f"; in this sweep each trial sees one GPU of its own (one of {', '.join(devices)}, through "
            f"CUDA_VISIBLE_DEVICES), where it is cuda:0: remove device or use auto, and choose the GPUs with {choose}")


def _unique(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))
