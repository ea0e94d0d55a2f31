"""Reading an Azure AutoML image job YAML into a checked ``Job``.

Every key of the reference schema (spec/sweeps-and-peers.md, A.2 to A.5) is accepted:

* used: ``type`` (must be ``automl``), ``task``, ``primary_metric``, ``target_column_name``,
  ``training_data``, ``validation_data``, ``validation_data_size``, ``limits``,
  ``training_parameters``, ``sweep`` (``sampling_algorithm``, ``early_termination`` and the older
  ``sweep.limits``), ``search_space``;
* kept as metadata: ``name`` (the default study name), ``display_name``, ``experiment_name``,
  ``description``, ``tags``, ``log_verbosity``, ``$schema``;
* accepted and reported as ignored, because they configure Azure: ``compute``, ``outputs``,
  ``resources``, ``queue_settings``, ``identity``, ``services``, ``environment_variables`` and
  ``properties``.

Data paths are resolved against the folder of the YAML file. Every problem in the file is
collected and raised at once as a ``SettingsError``; nothing is dropped silently.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from visionsweep.errors import SettingsError
from visionsweep.settings import merge_settings, resolve_settings
from visionsweep.settings.partial import check_base_settings, check_setting_names, known_settings
from visionsweep.sweep.policies import PolicySpec, parse_policy
from visionsweep.sweep.sampling import SamplingSpec, check_sampling, parse_sampling
from visionsweep.sweep.space import SearchSpace, parse_search_space
from visionsweep.sweep.space_checks import check_space
from visionsweep.sweep.trial_checks import check_trials
from visionsweep.tasks import Task, parse_task
from visionsweep.yaml_files import YamlError, read_yaml_file

MODES = ("single", "sweep", "automode")
DEFAULT_TIMEOUT_MINUTES = 7 * 24 * 60  # the reference's default, 7 days
MAX_TIMEOUT_MINUTES = 60 * 24 * 60
LOG_VERBOSITIES = ("not_set", "debug", "info", "warning", "error", "critical")
_METADATA_KEYS = {"$schema", "name", "display_name", "experiment_name", "description", "tags", "log_verbosity"}
_AZURE_ONLY_KEYS = {"compute", "outputs", "resources", "queue_settings", "identity", "services",
                    "environment_variables", "properties"}
_USED_KEYS = {"type", "task", "primary_metric", "target_column_name", "training_data", "validation_data",
              "validation_data_size", "limits", "training_parameters", "sweep", "search_space"}
_LIMIT_KEYS = {"max_trials", "max_concurrent_trials", "timeout_minutes", "trial_timeout_minutes"}
_DATA_KEYS = {"path", "type", "mode", "description"}
_DATA_TYPES = ("mltable", "uri_file", "uri_folder")


@dataclass(frozen=True)
class DataInput:
    """``training_data`` / ``validation_data``: an MLTable folder or a JSONL file, absolute."""

    path: Path
    type: str = "mltable"


@dataclass(frozen=True)
class Limits:
    """``limits``. ``max_concurrent_trials`` is already capped at ``max_trials``.
    ``trial_timeout_minutes`` is our extension (image jobs on Azure have no per-trial timeout)."""

    max_trials: int = 1
    max_concurrent_trials: int = 1
    timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES
    trial_timeout_minutes: float | None = None


@dataclass(frozen=True)
class Job:
    """A checked image job. ``mode`` says which of the three ways to run applies (A.5):

    * ``single``: max_trials 1 and no search space; one trial with ``training_parameters``
      (the task's default model unless ``model_name`` is given);
    * ``sweep``: a ``search_space`` with ``sweep.sampling_algorithm``;
    * ``automode``: max_trials > 1 and no search space, sampling or policy (see ``automode``).
    """

    task: Task
    mode: str
    primary_metric: str
    target_column_name: str
    training_data: DataInput
    validation_data: DataInput | None
    validation_data_size: float | None
    limits: Limits
    training_parameters: Mapping[str, Any]
    sampling: SamplingSpec | None = None
    early_termination: PolicySpec | None = None
    search_space: SearchSpace | None = None
    name: str | None = None
    experiment_name: str | None = None
    description: str | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)
    log_verbosity: str = "info"
    source: Path | None = None
    notes: tuple[str, ...] = ()

    def base_settings(self) -> dict[str, Any]:
        """Settings every trial starts from: ``training_parameters`` (runtime names), the primary
        metric and, without validation data, the held-out fraction."""
        extra: dict[str, Any] = {"primary_metric": self.primary_metric}
        if self.validation_data is None and self.validation_data_size is not None:
            extra["validation_size"] = self.validation_data_size
        return merge_settings(self.training_parameters, extra)

    def fingerprint(self) -> str:
        """A hash of what defines the sweep (task, metric, settings, space, sampling, policy,
        max_trials), leaving out data paths and per-worker limits, so that workers on other machines
        and a resumed run can check that they run the same sweep."""
        content = {
            "task": self.task.value, "mode": self.mode, "primary_metric": self.primary_metric,
            "training_parameters": self.base_settings(), "max_trials": self.limits.max_trials,
            "sampling": self.sampling.to_dict() if self.sampling else None,
            "early_termination": self.early_termination.to_dict() if self.early_termination else None,
            "search_space": self.search_space.to_raw() if self.search_space else None,
        }
        text = json.dumps(content, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def study_name(self) -> str:
        """The default Optuna study name: the job's ``name``, else the YAML file's stem."""
        if self.name:
            return str(self.name)
        return self.source.stem if self.source else "visionsweep"


def load_job(path: str | Path, *, check_files: bool = True, devices: Sequence[str] | None = None) -> Job:
    """Read and check a job YAML file (see ``parse_job``). Raises ``SettingsError`` listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError([f"job file {path} does not exist"], context="job file")
    try:
        raw = read_yaml_file(path)
    except YamlError as error:
        raise SettingsError([str(error)], context="job file") from None
    return parse_job(raw, base_dir=path.resolve().parent, source=path.resolve(), check_files=check_files,
                     devices=devices)


def parse_job(raw: Any, *, base_dir: str | Path = ".", source: Path | None = None, check_files: bool = True,
              devices: Sequence[str] | None = None) -> Job:
    """Check a job mapping (as read from YAML). Relative data paths resolve against ``base_dir``.

    Besides the schema, every value a trial can draw goes through the checks of a single run that
    need the model registry, the machine or the file system (``trial_checks.check_trials``).
    ``check_files=False`` skips checking that the data paths and ``pretrained_weights`` files exist.
    ``devices``: the CUDA device ids the runner will give the trials (``[]``: the CPU), against which
    ``device`` is checked; None leaves that to the runner.
    """
    if not isinstance(raw, Mapping):
        raise SettingsError([f"a job file holds a mapping of keys, got {type(raw).__name__}"], context="job file")
    problems: list[str] = []
    notes: list[str] = []
    base_dir = Path(base_dir)

    for key in raw:
        if key == "properties":
            problems.extend(_node_count_problems(raw[key]))
        if key in _AZURE_ONLY_KEYS:
            notes.append(_ignored_note(key, raw[key]))
        elif key not in _USED_KEYS | _METADATA_KEYS:
            known = sorted(_USED_KEYS | _METADATA_KEYS | _AZURE_ONLY_KEYS)
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed top-level keys: {', '.join(known)}"
            problems.append(f"{key}: unknown key{hint}")

    if raw.get("type") != "automl":
        problems.append(f"type: got {raw.get('type')!r}; an image job has type: automl")
    task: Task | None = None
    if "task" not in raw:
        problems.append("task: required; one of " + ", ".join(t.value for t in Task))
    else:
        try:
            task = parse_task(raw["task"])
        except SettingsError as error:
            problems.extend(error.problems)

    primary_metric = raw.get("primary_metric")
    if task is not None:
        if primary_metric is None:
            primary_metric = task.primary_metric
        elif primary_metric not in task.primary_metric_choices:
            problems.append(f"primary_metric: got {primary_metric!r}; allowed for {task}: "
                            f"{', '.join(task.primary_metric_choices)}")
    target_column = raw.get("target_column_name", "label")
    if not isinstance(target_column, str) or not target_column:
        problems.append(f"target_column_name: must be a column name such as label, got {target_column!r}")

    training_data = _data_input(raw.get("training_data"), "training_data", base_dir, check_files, problems,
                                required=True)
    validation_data = _data_input(raw.get("validation_data"), "validation_data", base_dir, check_files, problems,
                                  required=False)
    validation_size = raw.get("validation_data_size")
    if validation_size is not None:
        if isinstance(validation_size, bool) or not isinstance(validation_size, (int, float)) \
                or not 0 < validation_size < 1:
            problems.append(f"validation_data_size: must be a fraction between 0 and 1 (exclusive), "
                            f"got {validation_size!r}")
        elif validation_data is not None:
            notes.append("validation_data_size is ignored: validation_data is given")

    verbosity = str(raw.get("log_verbosity", "info")).lower()
    if verbosity not in LOG_VERBOSITIES:
        problems.append(f"log_verbosity: got {raw.get('log_verbosity')!r}; allowed: {', '.join(LOG_VERBOSITIES)}")

    sweep_raw = raw.get("sweep")
    if sweep_raw is not None and not isinstance(sweep_raw, Mapping):
        problems.append(f"sweep: must be a mapping with sampling_algorithm, got {type(sweep_raw).__name__}")
        sweep_raw = None
    limits = _limits(raw.get("limits"), sweep_raw, problems, notes)

    training_parameters = raw.get("training_parameters") or {}
    if not isinstance(training_parameters, Mapping):
        problems.append(f"training_parameters: must be a mapping of KEY: value, got {type(training_parameters).__name__}")
        training_parameters = {}
    training_parameters = dict(training_parameters)
    name_problems, name_notes = check_setting_names(task, training_parameters, "training_parameters")
    problems.extend(name_problems)
    notes.extend(name_notes)

    sampling: SamplingSpec | None = None
    policy: PolicySpec | None = None
    if sweep_raw is not None:
        for key in sweep_raw:
            if key not in ("sampling_algorithm", "early_termination", "limits"):
                problems.append(f"sweep.{key}: unknown key; allowed: sampling_algorithm, early_termination, limits")
        sampling, sampling_problems = parse_sampling(sweep_raw.get("sampling_algorithm"))
        policy, policy_problems = parse_policy(sweep_raw.get("early_termination"))
        problems.extend(sampling_problems + policy_problems)

    space: SearchSpace | None = None
    if raw.get("search_space") is not None:
        space, space_problems = parse_search_space(raw["search_space"])
        problems.extend(space_problems)

    mode = _mode(space, sweep_raw, limits, problems)
    job_notes: list[str] = []
    if mode == "sweep" and space is not None and sampling is not None:
        sampling_problems, sampling_notes = check_sampling(sampling, space, has_policy=policy is not None)
        problems.extend(sampling_problems)
        job_notes.extend(sampling_notes)
    if task is None:
        # Without a task only the names can be checked: a name that no task knows is wrong for any task.
        for index, sub in enumerate(space.subspaces if space is not None else ()):
            problems.extend(check_setting_names(None, sub.keys(), f"search_space[{index}]")[0])
    else:
        # Every check runs whatever the checks before it found, each on what they left valid, so
        # that one pass reports every problem of the file (not one layer of problems per attempt).
        metric = primary_metric if primary_metric in task.primary_metric_choices else task.primary_metric
        named = merge_settings(known_settings(task, training_parameters), {"primary_metric": metric})
        base_problems, base = check_base_settings(task, named)
        problems.extend(base_problems)
        if mode == "sweep" and space is not None:
            space_problems, space_notes = check_space(task, base, space)
            problems.extend(space_problems)
            job_notes.extend(space_notes)
        else:
            try:
                resolve_settings(task, base)
            except SettingsError as error:
                # Rules between keys; one that names a rejected key only echoes that key's problem.
                rejected = set(named) - set(base)
                problems.extend(f"training_parameters: {p}" for p in error.problems
                                if not any(key in p for key in rejected))
        trial_problems, trial_notes = check_trials(task, base, space if mode == "sweep" else None, devices=devices,
                                                   check_files=check_files, models_from_plan=mode == "automode")
        problems.extend(trial_problems)
        job_notes.extend(trial_notes)
    if problems:
        raise SettingsError(problems, context="job file")
    assert task is not None and training_data is not None and isinstance(primary_metric, str)
    return Job(
        task=task, mode=mode, primary_metric=primary_metric, target_column_name=target_column,
        training_data=training_data, validation_data=validation_data,
        validation_data_size=float(validation_size) if validation_size is not None else None,
        limits=limits, training_parameters=training_parameters, sampling=sampling, early_termination=policy,
        search_space=space, name=raw.get("name"), experiment_name=raw.get("experiment_name"),
        description=raw.get("description"), tags=dict(raw.get("tags") or {}), log_verbosity=verbosity,
        source=source, notes=tuple(notes + job_notes),
    )


def _mode(space: SearchSpace | None, sweep: Mapping[str, Any] | None, limits: Limits, problems: list[str]) -> str:
    if space is not None:
        if sweep is None or sweep.get("sampling_algorithm") is None:
            problems.append("search_space needs sweep.sampling_algorithm (random, grid or bayesian), e.g. "
                            "sweep: {sampling_algorithm: random}")
        return "sweep"
    if sweep is not None and (sweep.get("sampling_algorithm") is not None or sweep.get("early_termination") is not None):
        problems.append("sweep.sampling_algorithm and sweep.early_termination need a search_space; remove them to "
                        "let AutoMode choose (max_trials > 1) or to train one model (max_trials 1)")
        return "sweep"
    return "single" if limits.max_trials == 1 else "automode"


def _limits(raw: Any, sweep: Mapping[str, Any] | None, problems: list[str], notes: list[str]) -> Limits:
    values: dict[str, Any] = {}
    if raw is not None:
        if not isinstance(raw, Mapping):
            problems.append(f"limits: must be a mapping, got {type(raw).__name__}")
        else:
            values.update(raw)
    older = sweep.get("limits") if sweep is not None else None
    if older is not None:
        if not isinstance(older, Mapping):
            problems.append(f"sweep.limits: must be a mapping, got {type(older).__name__}")
        else:
            for key, value in older.items():
                if key in values and values[key] != value:
                    problems.append(f"sweep.limits.{key} ({value!r}) contradicts limits.{key} ({values[key]!r}); "
                                    "give it once, under limits")
                values[key] = value
            notes.append(f"sweep.limits ({', '.join(older)}) is the older location; read as limits")
    for key in values:
        if key not in _LIMIT_KEYS:
            close = difflib.get_close_matches(str(key), sorted(_LIMIT_KEYS), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(sorted(_LIMIT_KEYS))}"
            problems.append(f"limits.{key}: unknown key{hint}")
    max_trials = _whole(values, "max_trials", 1, 1, 1000, problems)
    concurrent = _whole(values, "max_concurrent_trials", 1, 1, 100, problems)
    timeout = _number(values, "timeout_minutes", DEFAULT_TIMEOUT_MINUTES, MAX_TIMEOUT_MINUTES, problems)
    trial_timeout = _number(values, "trial_timeout_minutes", None, MAX_TIMEOUT_MINUTES, problems)
    if concurrent > max_trials:
        notes.append(f"max_concurrent_trials {concurrent} is capped at max_trials {max_trials}")
        concurrent = max_trials
    return Limits(max_trials, concurrent, timeout, trial_timeout)  # type: ignore[arg-type]


def _whole(values: Mapping[str, Any], key: str, default: int, low: int, high: int, problems: list[str]) -> int:
    value = values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems.append(f"limits.{key}: must be a whole number from {low} to {high}, got {value!r}")
        return default
    return value


def _number(values: Mapping[str, Any], key: str, default: float | None, high: float,
            problems: list[str]) -> float | None:
    value = values.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
        problems.append(f"limits.{key}: must be a number of minutes above 0 and at most {high:g} (60 days), "
                        f"got {value!r}")
        return default
    return float(value)


def _data_input(raw: Any, key: str, base_dir: Path, check: bool, problems: list[str], *,
                required: bool) -> DataInput | None:
    if raw is None:
        if required:
            problems.append(f"{key}: required, e.g. {key}: {{type: mltable, path: ./data/train-mltable}}")
        return None
    if isinstance(raw, str):
        raw = {"path": raw}
    if not isinstance(raw, Mapping) or "path" not in raw:
        problems.append(f"{key}: must be a mapping with a path (an MLTable folder or a JSONL file), got {raw!r}")
        return None
    for name in raw:
        if name not in _DATA_KEYS:
            problems.append(f"{key}.{name}: unknown key; allowed: {', '.join(sorted(_DATA_KEYS))}")
    kind = str(raw.get("type", "mltable")).lower()
    if kind not in _DATA_TYPES:
        problems.append(f"{key}.type: got {raw.get('type')!r}; allowed: {', '.join(_DATA_TYPES)}")
    text = str(raw["path"])
    if text.startswith(("azureml:", "azureml://", "https://", "http://", "wasbs://", "abfss://")):
        problems.append(f"{key}.path: {text!r} points at cloud storage; download the data and give a local MLTable "
                        "folder or JSONL file")
        return None
    text = text.removeprefix("file://")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (base_dir / path).resolve()
    if check and not path.exists():
        problems.append(f"{key}.path: {path} does not exist (relative paths are read from the job file's folder "
                        f"{base_dir})")
    return DataInput(path, kind)


def _node_count_problems(properties: Any) -> list[str]:
    """``properties.node_count_per_trial`` above 1 asks for trials that span machines, which a sweep does not
    run: each trial trains on the machine of the worker that runs it (with all the GPUs it is given)."""
    if not isinstance(properties, Mapping) or "node_count_per_trial" not in properties:
        return []
    value = properties["node_count_per_trial"]
    try:
        count = int(str(value))
    except ValueError:
        return [f"properties.node_count_per_trial: got {value!r}; use a whole number of machines"]
    if count == 1:
        return []
    return [f"properties.node_count_per_trial: got {value!r}; a sweep's trial trains on one machine (on all the GPUs "
            "it is given, --processes-per-trial). Remove the property (or set it to 1), and to use several "
            "machines start a sweep worker on each with the same --storage; to train one model on several "
            "machines, use 'visionsweep train --nnodes' (docs/distributed.md)"]


def _ignored_note(key: str, value: Any) -> str:
    return f"{key} is ignored: it only configures Azure"
