"""The process that runs one trial, started by the runner with ``launch.python_command`` and the
path of its ``trial_spec.json``.

The runner writes the spec (what to train, where, which trainer), starts this process with its
output going to the trial's ``process.log``, and waits. This process calls the trainer with an
``epoch_callback`` that, after every validation pass, reports the primary metric to the study
(``trial.report(value, step=interval)``, intervals counted from 1) and asks the study's pruner;
when the policy says stop, or the runner has written the stop file (sweep or trial timeout), the
callback returns True and the trainer ends the run keeping its best checkpoint ("cancelled").

The result goes to ``result.json``; the runner records it in the study (this process never ends
the trial itself). A trainer exception is caught, classified and written there too. When this
process dies without a result (killed, out of host memory, a segfault, ``os._exit``), the runner
records the failure from the exit status and the log. The process dies with its runner (Linux
parent-death signal), so a killed sweep leaves no orphan trainers behind.

Trainer contract (the signature of ``visionsweep.train``)::

    trainer(task, data, validation_data, *, settings, output, epoch_callback[, label_column][, progress]
            [, overwrite]) -> result

``result`` has (as attributes or keys) ``status`` (completed | early_stopped | cancelled),
``best_score``, ``best_epoch``, ``epochs_run``, ``model_dir``; each epoch report has ``epoch``,
``evaluated``, ``metrics`` and ``primary_value``. Epochs are counted from 1 (``best_epoch`` too).
A trainer that takes ``overwrite`` is given ``overwrite=True``: the trial folder belongs to the
trial, and what an earlier, dead attempt of it left there is replaced, not refused.
"""
from __future__ import annotations

import ctypes
import importlib
import inspect
import json
import math
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import optuna

from visionsweep.errors import DataError, SettingsError
from visionsweep.sweep import attrs
from visionsweep.sweep.policies import make_pruner
from visionsweep.sweep.storage import open_storage

RESULT_FILE = "result.json"
STOP_FILE = "STOP"
SPEC_FILE = "trial_spec.json"
LOG_FILE = "process.log"
_FINAL = (attrs.COMPLETED, attrs.EARLY_STOPPED, attrs.CANCELLED)


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 0 when the trial ended normally (cancelled included), 1 on failure."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m visionsweep.sweep.trial_process TRIAL_SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text())
    _die_with_parent(spec.get("parent_pid"))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    result = run_trial(spec)
    write_json_atomic(Path(spec["result_file"]), result)
    return 0 if result["status"] in _FINAL else 1


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the trainer as the spec says and return the result record (never raises for trainer errors)."""
    reporter: EpochReporter | None = None
    try:
        storage = open_storage(spec["storage"], spec["run_dir"])
        study = optuna.load_study(study_name=spec["study_name"], storage=storage,
                                  pruner=make_pruner(spec.get("policy")), sampler=optuna.samplers.RandomSampler())
        trial = optuna.trial.Trial(study, spec["trial_id"])
        reporter = EpochReporter(trial, Path(spec["stop_file"]), (spec.get("policy") or {}).get("type"),
                                 last_epoch=_last_epoch(spec["task"], spec["settings"]))
        trainer = import_trainer(spec["trainer"])
        kwargs: dict[str, Any] = {"settings": spec["settings"], "output": Path(spec["output"]),
                                  "epoch_callback": reporter}
        if spec.get("label_column", "label") != "label":
            if not _accepts(trainer, "label_column"):
                raise SettingsError([f"target_column_name {spec['label_column']!r}: the trainer "
                                     f"{spec['trainer']} reads the label column 'label' only; rename the column"],
                                    context="job file")
            kwargs["label_column"] = spec["label_column"]
        if _accepts(trainer, "progress", keyword_only=True):
            kwargs["progress"] = False  # a progress bar in a log file is noise; train.log has every epoch
        if _accepts(trainer, "overwrite", keyword_only=True):
            kwargs["overwrite"] = True
        outcome = trainer(spec["task"], spec["data"], spec.get("validation_data"), **kwargs)
    except BaseException as error:  # noqa: BLE001 - every failure of the trial must be recorded
        if isinstance(error, KeyboardInterrupt):
            raise
        return _failure(error, reporter)
    status = str(_field(outcome, "status", attrs.COMPLETED))
    if status not in _FINAL:
        status = attrs.COMPLETED
    best = _field(outcome, "best_score")
    result = {
        "status": status,
        "best_score": float(best) if best is not None else None,
        "best_epoch": _field(outcome, "best_epoch"),
        "epochs_run": _field(outcome, "epochs_run"),
        "model_dir": _path(_field(outcome, "model_dir")),
        "run_dir": _path(_field(outcome, "run_dir")),
        "primary_metric": _field(outcome, "primary_metric"),
        "cancel_reason": (reporter.cancel_reason or "the trainer stopped the run") if status == attrs.CANCELLED else None,
        "intervals": reporter.intervals,
    }
    if result["best_score"] is None or not math.isfinite(result["best_score"]):
        result.update(status=attrs.FAILED, error={
            "kind": "exception", "type": "NoScore",
            "message": f"the trainer ended ({status}) without a finite best primary-metric value "
                       f"(best_score={best!r}); was any validation pass run?", "traceback": ""})
    return result


class EpochReporter:
    """The ``epoch_callback`` given to the trainer: reports, asks the pruner, honours the stop file.

    The pruner is not asked after ``last_epoch`` (the number of the trial's final epoch when known):
    stopping there saves nothing, and the trial that ran its whole schedule is recorded completed
    rather than cancelled. Its value is still reported, so that later trials compare against it.
    """

    def __init__(self, trial: optuna.trial.Trial, stop_file: Path, policy: str | None, *,
                 last_epoch: int | None = None):
        self.trial = trial
        self.stop_file = stop_file
        self.policy = policy
        self.last_epoch = last_epoch
        self.interval = 0
        self.intervals: list[dict[str, Any]] = []
        self.cancel_reason: str | None = None

    def __call__(self, report: Any) -> bool:
        value = _field(report, "primary_value")
        if _field(report, "evaluated", value is not None) and value is not None:
            self.interval += 1
            value = float(value)
            self.trial.report(value, self.interval)
            self.intervals.append({"interval": self.interval, "epoch": _field(report, "epoch"), "value": value})
            final = self.last_epoch is not None and _field(report, "epoch") == self.last_epoch
            if not final and self.trial.should_prune():
                self.cancel_reason = f"early termination by {self.policy} at interval {self.interval}"
                return True
        if self.stop_file.exists():
            self.cancel_reason = self.stop_file.read_text().strip() or "stop requested by the runner"
            return True
        return False


def import_trainer(path: str) -> Callable[..., Any]:
    """Import ``package.module:function`` (``visionsweep:train`` is the real trainer)."""
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise SettingsError([f"trainer {path!r}: write it as package.module:function"], context="trainer")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def trainer_path(trainer: str | Callable[..., Any]) -> str:
    """The import path of a trainer given as a function; it must be importable in a new process."""
    if isinstance(trainer, str):
        return trainer
    module = getattr(trainer, "__module__", None)
    qualname = getattr(trainer, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        raise SettingsError([f"trainer {trainer!r}: each trial runs in a new process, which imports the trainer "
                             "by name; pass a module-level function of an importable module (or 'module:function')"],
                            context="trainer")
    return f"{module}:{qualname}"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def classify_error(error: BaseException) -> str:
    """exception | out_of_memory | invalid_settings | data_error."""
    if isinstance(error, SettingsError):
        return "invalid_settings"
    if isinstance(error, DataError):
        return "data_error"
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" \
            or "out of memory" in str(error).lower():
        return "out_of_memory"
    return "exception"


def _last_epoch(task: str, settings: dict[str, Any]) -> int | None:
    """The number (counted from 1) of the trial's final epoch (None when the settings do not
    resolve: the trainer then reports the problem itself)."""
    from visionsweep.settings import resolve_settings

    try:
        return int(resolve_settings(task, settings).number_of_epochs)
    except (SettingsError, ValueError, TypeError):
        return None


def _failure(error: BaseException, reporter: "EpochReporter | None") -> dict[str, Any]:
    return {
        "status": attrs.FAILED,
        "intervals": reporter.intervals if reporter else [],
        "error": {"kind": classify_error(error), "type": type(error).__name__, "message": str(error),
                  "traceback": traceback.format_exc()},
    }


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _path(value: Any) -> str | None:
    return None if value is None else str(value)


def _accepts(function: Callable[..., Any], name: str, *, keyword_only: bool = False) -> bool:
    """Whether ``function`` takes the keyword ``name`` (``keyword_only``: by that exact name only)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return not keyword_only
    return any(p.name == name or (not keyword_only and p.kind is inspect.Parameter.VAR_KEYWORD) for p in parameters)


def _die_with_parent(parent_pid: int | None) -> None:
    """Ask Linux to kill this process when the runner dies; elsewhere rely on the runner's cleanup."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except OSError:
            pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(3)  # the runner died before the signal was armed


if __name__ == "__main__":
    sys.exit(main())
