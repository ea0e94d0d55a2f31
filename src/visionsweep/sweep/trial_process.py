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

A trial given several processes (``--processes-per-trial``) runs this module in each, under PyTorch's
launcher: rank 0 is the trial as above; the other ranks train their share (the trainer makes them one
distributed run) and neither report nor write the result. When one of them fails, the launcher stops
the others and exits with a failure, which the runner records from its log.

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
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import optuna

from visionsweep.errors import DataError, SettingsError
from visionsweep.sweep import attrs
from visionsweep.sweep.launch import TRIAL_ENTRY, python_command
from visionsweep.sweep.policies import make_pruner
from visionsweep.sweep.storage import open_storage

RESULT_FILE = "result.json"
RESUME_STATE = "checkpoints/last.pt"  # what a trainer that can resume saves after every epoch
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
    launched = "RANK" in os.environ  # one of the processes of a distributed trial
    _die_with_parent(os.getppid() if launched else spec.get("parent_pid"))
    if not launched and spec.get("resume_from"):  # a re-run of an interrupted trial: take its run over
        shutil.copytree(spec["resume_from"], spec["output"], dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(SPEC_FILE, LOG_FILE, RESULT_FILE, STOP_FILE))
        print(f"resuming the interrupted trial's run from {spec['resume_from']}", flush=True)
    if not launched and spec.get("processes", 1) > 1:
        return _launch_processes(spec, argv[0])
    if launched and os.environ["RANK"] != "0":  # train this process's share; rank 0 reports
        trainer = import_trainer(spec["trainer"])
        options, data = _continuation(spec, trainer, _trainer_options(spec, trainer, None), first=True)
        trainer(spec["task"], *data, **options)
        return 0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    result = run_trial(spec)
    write_json_atomic(Path(spec["result_file"]), result)
    return 0 if result["status"] in _FINAL else 1


def _launch_processes(spec: dict[str, Any], spec_file: str) -> int:
    """Run the trial as ``spec["processes"]`` processes of this module under PyTorch's launcher, which
    stops them all when one fails; this process, the launcher's, dies with the runner as a trial does."""
    from visionsweep.distributed import DistributedError
    from visionsweep.training.launcher import Launch, launch_processes

    try:
        launch_processes(Launch(spec["processes"]), ["--no-python", *python_command(TRIAL_ENTRY, [spec_file])])
    except DistributedError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


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
        outcome, retries = _train_with_retries(trainer, spec, reporter)
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
        "retries": retries,
    }
    if result["best_score"] is None or not math.isfinite(result["best_score"]):
        result.update(status=attrs.FAILED, error={
            "kind": "exception", "type": "NoScore",
            "message": f"the trainer ended ({status}) without a finite best primary-metric value "
                       f"(best_score={best!r}); was any validation pass run?", "traceback": ""})
    return result


def _trainer_options(spec: dict[str, Any], trainer: Callable[..., Any], reporter: EpochReporter | None
                     ) -> dict[str, Any]:
    """The keyword arguments of the trainer call that the spec asks for and the trainer takes."""
    kwargs: dict[str, Any] = {"settings": spec["settings"], "output": Path(spec["output"]), "epoch_callback": reporter}
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
    return kwargs


def _train_with_retries(trainer: Callable[..., Any], spec: dict[str, Any], reporter: EpochReporter
                        ) -> tuple[Any, list[str]]:
    """Run the trainer; after an out-of-memory error or a failed data-loading worker, run it again with the
    settings ``visionsweep.training.recovery`` gives (continuing from the last saved epoch when the trainer
    can resume and one was saved). Returns the outcome and a line per retry (also printed to the log)."""
    from visionsweep.settings import resolve_settings
    from visionsweep.training.recovery import retry_settings

    settings, retries = dict(spec["settings"]), []
    if spec.get("resume_from") and _accepts(trainer, "resume", keyword_only=True):
        _report_saved_epochs(Path(spec["output"]), reporter)
    while True:
        options = _trainer_options({**spec, "settings": settings}, trainer, reporter)
        options, data = _continuation(spec, trainer, options, first=not retries)
        if retries and "resume" not in options:
            reporter.restart()
        try:
            return trainer(spec["task"], *data, **options), retries
        except Exception as error:  # noqa: BLE001 - only the errors recovery knows are retried
            if spec.get("processes", 1) > 1:
                raise  # the other processes wait in the run that failed: the launcher ends the trial
            retry = retry_settings(error, settings, resolve_settings(spec["task"], settings))
            if retry is None:
                raise
            settings, why = retry
            retries.append(why)
            print(f"retrying the trial: {why}", flush=True)
            _release_memory()


def _continuation(spec: dict[str, Any], trainer: Callable[..., Any], options: dict[str, Any], *, first: bool
                  ) -> tuple[dict[str, Any], tuple[Any, Any]]:
    """The trainer's options and data for this attempt: resume the run in the trial folder when the trainer
    can and an epoch was saved there (a re-run of an interrupted trial, or a retry), else start it."""
    data = (spec["data"], spec.get("validation_data"))
    wanted = spec.get("resume_from") is not None or not first
    if wanted and _accepts(trainer, "resume", keyword_only=True) and (Path(spec["output"]) / RESUME_STATE).is_file():
        return {**options, "resume": True, "overwrite": False}, (None, None)  # its own records, in its folder
    return options, data


def _report_saved_epochs(output: Path, reporter: EpochReporter) -> None:
    """Report the evaluated epochs of the run taken over again, so that the study has the whole history."""
    from visionsweep.checkpoint import load_checkpoint

    if not (output / RESUME_STATE).is_file():
        return
    saved = load_checkpoint(output / RESUME_STATE)["epoch"]  # a later metrics line is an epoch to redo
    metrics = output / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        epoch = json.loads(line)
        if epoch["epoch"] <= saved and epoch.get("evaluated") and epoch.get("primary_value") is not None:
            reporter.record(epoch["epoch"], float(epoch["primary_value"]))


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
            value = float(value)
            self.record(_field(report, "epoch"), value)
            final = self.last_epoch is not None and _field(report, "epoch") == self.last_epoch
            if not final and self.trial.should_prune():
                self.cancel_reason = f"early termination by {self.policy} at interval {self.interval}"
                return True
        if self.stop_file.exists():
            self.cancel_reason = self.stop_file.read_text().strip() or "stop requested by the runner"
            return True
        return False

    def record(self, epoch: int, value: float) -> None:
        """Report the value of an evaluated epoch as the next interval."""
        self.interval += 1
        self.trial.report(value, self.interval)
        self.intervals.append({"interval": self.interval, "epoch": epoch, "value": value})

    def restart(self) -> None:
        """The run starts over: its epochs are reported again from the first interval."""
        self.interval, self.intervals = 0, []


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
