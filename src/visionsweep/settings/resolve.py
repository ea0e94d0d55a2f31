"""Turning user input (Python values, files, ``--set KEY=VALUE``) into validated ``Settings``.

Every problem is collected and reported together; nothing given is silently dropped: a key that
only means something on Azure, or that does not apply to the chosen model, is kept in
``Settings.notes`` and shown to the user.
"""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from pydantic import ValidationError

from visionsweep.errors import SettingsError
from visionsweep.model_catalog import model_name_problem
from visionsweep.json_files import DuplicateJsonKeyError, parse_json
from visionsweep.settings.defaults import cpu_count, task_model_defaults
from visionsweep.settings.schema import Settings, combination_problems, scope_of
from visionsweep.tasks import Task, parse_task
from visionsweep.yaml_files import YamlError, YamlRefusedError, parse_yaml, read_yaml_file

# Names of Azure's job YAML (v2) and of its inference settings.json, mapped to the runtime names
# used throughout visionsweep. Both spellings are accepted everywhere.
ALIASES = {
    "gradient_accumulation_step": "grad_accumulation_step",
    "learning_rate_scheduler": "lr_scheduler",
    "ams_gradient": "amsgrad",
    "validation_resize_size": "valid_resize_size",
    "validation_crop_size": "valid_crop_size",
    "training_crop_size": "train_crop_size",
    "box_score_threshold": "box_score_thresh",
    "nms_iou_threshold": "nms_iou_thresh",
    "box_detections_per_image": "box_detections_per_img",
    "image_size": "img_size",
    "tile_predictions_nms_threshold": "tile_predictions_nms_thresh",
    "random_seed": "seed",
    "number_of_workers": "num_workers",
    "validation_data_size": "validation_size",
    "split_ratio": "validation_size",
}

# Accepted so that Azure settings load unchanged, but they configure Azure services, not training.
AZURE_ONLY_KEYS = frozenset({
    "enable_code_generation", "stream_image_files", "log_verbose_metrics",
    "print_local_package_versions", "output_scoring", "validate_scoring", "log_scoring_file_info",
    "label_column_name", "project_id", "version_number",
})
AZURE_ONLY_NOTE = "is ignored: it only configures Azure services"

_ADVANCED_KEYS = {"stream_image_files", "apply_automl_train_augmentations", "apply_mosaic_for_yolo"}


def resolve_settings(task: Task | str, values: Mapping[str, Any] | None = None) -> Settings:
    """Validate ``values`` for ``task`` and fill in the task's and model's defaults.

    Raises ``SettingsError`` listing every problem: unknown keys (with the nearest valid name),
    values of the wrong type or out of range, keys that do not apply to the task, bad combinations.
    """
    task = parse_task(task)
    given, notes, problems = _canonical_keys(dict(values or {}))
    given.pop("task", None)

    model_name = given.get("model_name", task.default_model)
    problem = model_name_problem(task, model_name) if isinstance(model_name, str) else \
        f"model_name: got {model_name!r}; give a model name (a string)"
    if problem is not None:
        problems.append(problem)
        model_name = task.default_model  # keep validating the other keys against the default model
    for key in list(given):
        problem = scope_problem(task, key)
        if problem is not None:
            problems.append(f"{key}: {problem}")
            del given[key]
        elif not scope_of(key).covers(task, model_name):
            notes.append(f"{key}={given[key]!r} has no effect with model_name {model_name}")
    metric = given.get("primary_metric")
    if metric is not None and metric not in task.primary_metric_choices:
        problems.append(f"primary_metric: got {metric!r}; allowed for {task}: {', '.join(task.primary_metric_choices)}")
        del given["primary_metric"]

    merged = {**task_model_defaults(task, model_name, given), **given, "task": task, "model_name": model_name}
    settings = None
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as error:
        problems.extend(_describe(error, merged))
    else:
        problems.extend(combination_problems(settings))
    if problems:
        raise SettingsError(problems)
    settings.notes.extend(notes)
    if settings.num_workers > cpu_count():
        # Only a value given can be above: the default is capped. It is used as given, because loading
        # from slow storage can keep more workers than cores busy.
        settings.notes.append(f"num_workers={settings.num_workers} is more than the {cpu_count()} CPUs here; it "
                              "is used as given (more data loader processes than CPUs add memory, not speed, "
                              "unless the images load from slow storage)")
    return settings


def load_settings_file(path: str | Path) -> dict[str, Any]:
    """Read a flat mapping of settings from a YAML or JSON file (JSON is read as the YAML it is), with
    the limits of ``visionsweep.yaml_files``: size, aliases, duplicate keys."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError([f"settings file {path} does not exist"], context="settings file")
    try:
        content = read_yaml_file(path)
    except YamlError as error:
        raise SettingsError([str(error)], context="settings file") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise SettingsError([f"{path} must hold a mapping of KEY: VALUE, not a {type(content).__name__}"],
                            context="settings file")
    return content


def parse_set_options(options: Iterable[str], option: str = "--set") -> dict[str, Any]:
    """Parse ``KEY=VALUE`` strings; values are read as YAML (``0.01``, ``true``, ``[3, 2]``) by the same
    reader as settings files. A value that is not YAML stays the string given; one that the reader
    refuses (an alias bomb, a duplicate key) is a problem, and so is a key given twice, as a settings
    file may not give a key twice either (``override_settings`` is how ``--set`` wins over ``--config``).
    ``option`` names the command-line option in the problems (``convert`` reads its ``--option`` here)."""
    values: dict[str, Any] = {}
    texts: dict[str, str] = {}
    problems = []
    for given in options:
        key, sep, text = given.partition("=")
        key = key.strip()
        if not sep or not key:
            example = ", e.g. --set learning_rate=0.01" if option == "--set" else ""
            problems.append(f"{option} {given!r}: write it as KEY=VALUE{example}")
            continue
        if key in texts:
            problems.append(f"{option} {key}: given twice, as {texts[key]!r} and as {text!r}; give it once")
            continue
        texts[key] = text
        try:
            values[key] = parse_yaml(text, f"{option} {key}") if text.strip() else None
        except YamlRefusedError as error:
            problems.append(str(error))
        except YamlError:
            values[key] = text
    if problems:
        raise SettingsError(problems, context=f"{option} option")
    return values


def override_settings(values: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with ``overrides`` winning, as ``--set`` wins over ``--config``, whatever the spelling:
    an override of ``lr_scheduler`` replaces a ``learning_rate_scheduler`` of ``values``, and one of
    ``apply_mosaic_for_yolo`` replaces that key inside ``values``' ``advanced_settings``. (Within one
    source, two spellings of a setting are a problem for ``resolve_settings``.)"""
    replaced = {canonical_key(key) for key in overrides}
    merged = {key: value for key, value in values.items() if canonical_key(key) not in replaced}
    advanced = merged.get("advanced_settings")
    if advanced is not None and replaced & _ADVANCED_KEYS:
        unpacked, problems = _unpack_advanced(advanced)
        if not problems:  # an unreadable advanced_settings is left for resolve_settings to report
            merged["advanced_settings"] = {k: v for k, v in unpacked.items() if k not in replaced}
    return {**merged, **overrides}


def merge_settings(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merge setting mappings, later layers winning, with every key under its runtime name."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            merged[canonical_key(key)] = value
    return merged


def canonical_key(key: str) -> str:
    """The runtime name of a setting (Azure's v2 names map through ``ALIASES``)."""
    return ALIASES.get(key, key)


def all_setting_names() -> list[str]:
    return [name for name in Settings.model_fields if name != "task"]


def unknown_setting(key: str) -> str:
    """Why ``key`` is not a setting, with the nearest valid name when there is one."""
    candidates = all_setting_names() + list(ALIASES)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else "see docs/settings.md for the list"
    return f"unknown setting; {hint}"


def scope_problem(task: Task, name: str) -> str | None:
    """Why the setting ``name`` (a runtime name) does not apply to ``task``; None when it does."""
    scope = scope_of(name)
    if task not in scope.tasks:
        purpose = f": {scope.purpose}" if scope.purpose else ""
        return f"does not apply to {task}; it is a setting of {scope.describe()}{purpose}"
    return None


def _canonical_keys(values: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """Map aliases to runtime names, unpack advanced_settings, set aside Azure-only keys."""
    notes: list[str] = []
    problems: list[str] = []
    if "advanced_settings" in values:
        advanced, advanced_problems = _unpack_advanced(values.pop("advanced_settings"))
        problems.extend(advanced_problems)
        for key, value in advanced.items():
            if key in values:
                problems.append(f"{key}: given both in advanced_settings ({value!r}) and as a setting "
                                f"({values[key]!r}); give it once")
            else:
                values[key] = value
    known = set(Settings.model_fields)
    given: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in values.items():
        name = canonical_key(key)
        if name in AZURE_ONLY_KEYS:
            notes.append(f"{key}={value!r} {AZURE_ONLY_NOTE}")
        elif name not in known:
            problems.append(f"{key}: {unknown_setting(key)}")
        elif name in given:
            problems.append(f"{key} and {spelled[name]} are the same setting; give only one")
        else:
            given[name] = value
            spelled[name] = key
    return given, notes, problems


def _unpack_advanced(raw: Any) -> tuple[dict[str, Any], list[str]]:
    if isinstance(raw, str):
        try:
            raw = parse_json(raw)
        except json.JSONDecodeError as error:
            return {}, [f"advanced_settings: not valid JSON ({error}); write e.g. '{{\"apply_mosaic_for_yolo\": false}}'"]
        except DuplicateJsonKeyError as error:
            return {}, [f"advanced_settings: {error}"]
    if not isinstance(raw, dict):
        return {}, [f"advanced_settings: must be a JSON object, got {type(raw).__name__}"]
    unknown = sorted(set(raw) - _ADVANCED_KEYS)
    if unknown:
        return {}, [f"advanced_settings: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_ADVANCED_KEYS))}"]
    return raw, []


def _describe(error: ValidationError, given: Mapping[str, Any]) -> list[str]:
    lines = []
    for item in error.errors():
        key, *inner = [str(part) for part in item["loc"]] or ["settings"]
        message = item["msg"].removeprefix("Value error, ")
        if type(item.get("ctx", {}).get("le")) is int:  # a size or count limit: say where its reason is
            message += " (docs/security.md gives the reason for each size and count limit)"
        if inner:  # an element of a tuple such as tile_grid_size: show the whole value given
            message = f"item {'.'.join(inner)}: {message}"
        lines.append(f"{key}: got {given.get(key, item['input'])!r}; {message}")
    return lines
