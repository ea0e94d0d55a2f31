"""The sweep driver: one worker that starts trials, each in its own process, until the budget is spent.

``run_sweep(job, run_dir)`` is the whole of ``visionsweep run JOB.yml``. What it guarantees:

* **Isolation.** Every trial is a new Python process (``trial_process``) with its output in
  ``trials/trial_NNNN/process.log``. A trial that raises, runs out of memory or dies hard
  (``os._exit``, a signal, the kernel's OOM killer) is recorded *failed* with its error and the
  end of its log, and the sweep goes on.
* **Concurrency.** ``max_concurrent_trials`` trials run side by side. With GPUs, one trial per GPU
  (``CUDA_VISIBLE_DEVICES``), so at most as many trials as GPUs; on CPU the trials see no GPU
  and the cores are shared out through ``OMP_NUM_THREADS`` unless the user set it.
* **Limits.** ``max_trials`` (capped by the grid size) is exact across workers (``slots``).
  ``timeout_minutes`` counts from the start of this command: when it passes, no trial starts and
  the running ones are asked to stop after their current epoch; they end *cancelled* with their
  best checkpoint (a trial that does not stop within ``stop_grace_s`` is killed, still cancelled).
  ``trial_timeout_minutes`` (our extension) does the same per trial. A resumed sweep gets a new
  timeout: the limit bounds one command's wall clock, not the sum over resumptions.
* **Resume.** The study lives in the run folder (``study.journal``) unless a storage URL is given.
  Running the same command again resumes: finished trials stay, trials of the dead run are
  re-run with their parameters, and the sweep goes on to its budget.
* **Many workers.** Several ``run_sweep`` calls (processes, machines) with the same job and
  storage URL share one study and run exactly the budget between them. A worker with nothing
  left to start waits for the others' running trials (re-running any whose worker dies), so that
  every worker ends with the complete leaderboard. Each worker keeps a record with a heartbeat in
  the study (``workers``), which is how ``status`` tells a live sweep from a killed one.
* **Outputs** in the run folder: ``sweep.json`` (what ``status`` reads), ``job.yml`` (a copy),
  ``trials/trial_NNNN/`` (the trainer's output plus ``trial.json``, ``process.log``),
  ``leaderboard.csv``, ``best_model/``, ``best_trial.json`` and ``report.html`` with ``report_data/``
  (the sweep report, ``sweep.report``: rewritten after every trial ends and at the end; a
  failure to write it is one warning line). With visionsweep's trainer the trials run with
  ``save_mlflow`` and ``write_report`` false and the sweep writes ``best_model/mlflow-model/`` and the
  best trial's ``report.html`` itself (when the best trial's settings keep them true): an MLflow model
  and a run report per trial would cost each trial an MLflow import and a copy of its weights, and a
  prediction pass over the validation images, for trials that nobody looks at.

The trainer is injectable (``trainer="package.module:function"`` or such a function); the default
is the real one, ``visionsweep.train``. Its contract is in ``trial_process``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import TrialState

from visionsweep.errors import SettingsError
from visionsweep.settings import merge_settings, resolve_settings
from visionsweep.sweep import attrs
from visionsweep.sweep.automode import Hardware
from visionsweep.sweep.job import Job
from visionsweep.sweep.launch import TRIAL_ENTRY, python_command
from visionsweep.sweep.trial_process import RESUME_STATE
from visionsweep.sweep.leaderboard import (
    LEADERBOARD_FILE, LeaderboardRow, best_row, copy_best_model, format_leaderboard, leaderboard_rows,
    write_best_mlflow_model, write_best_run_report, write_leaderboard,
)
from visionsweep.sweep.plan import SweepPlan, plan_sweep
from visionsweep.sweep.policies import make_pruner
from visionsweep.sweep.sampling import make_sampler
from visionsweep.sweep.slots import (
    claim_slot, mark_interrupted, reap_stale_trials, trial_status, work_left,
)
from visionsweep.sweep.space import SearchSpace, suggest
from visionsweep.sweep.storage import mask_url, open_storage, open_study, study_seed
from visionsweep.sweep.trial_checks import check_trials
from visionsweep.sweep.trial_process import (
    LOG_FILE, RESULT_FILE, SPEC_FILE, STOP_FILE, classify_error, trainer_path, write_json_atomic,
)
from visionsweep.sweep.sweep_folder import SWEEP_FILE, read_sweep_file
from visionsweep.sweep.workers import HEARTBEAT_S, STALE_AFTER_S, RunnerHeartbeat, notice_dead_runners

DEFAULT_TRAINER = "visionsweep:train"
# visionsweep.train by each name it can be given (a function passed is named by its module)
_VISIONSWEEP_TRAINERS = frozenset({DEFAULT_TRAINER, "visionsweep.training:train", "visionsweep.training.run:train"})
TRIALS_DIR = "trials"
TRIAL_FILE = "trial.json"
_LOG_TAIL_LINES = 25
_KILL_AFTER_TERM_S = 10.0
_REAP_INTERVAL_S = 2.0
_IDLE_POLL_S = 1.0


@dataclass
class SweepResult:
    """What one worker's ``run_sweep`` ends with (the board covers every worker's trials)."""

    run_dir: Path
    study_name: str
    budget: int
    rows: list[LeaderboardRow]
    best: LeaderboardRow | None
    best_model_dir: Path | None
    timed_out: bool
    counts: dict[str, int]


def run_sweep(job: Job, run_dir: str | Path, *, storage: str | None = None, study_name: str | None = None,
              trainer: str | Callable[..., Any] = DEFAULT_TRAINER, devices: Sequence[str] | None = None,
              processes_per_trial: int | None = None,
              hardware: Hardware | None = None, progress: Callable[[str], None] | None = None,
              poll_interval_s: float = 0.2, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S,
              stop_grace_s: float = 120.0) -> SweepResult:
    """Run (or resume, or join) the sweep of ``job`` with its study in ``run_dir`` or ``storage``.

    ``devices``: CUDA device ids; None detects them, ``[]`` runs on CPU. ``processes_per_trial``: the
    processes that train each trial together (DDP, one GPU each; see ``trial_width``).
    ``hardware`` feeds the AutoMode plan (detected when None). ``progress`` receives one line per
    event (default: print). ``heartbeat_s`` is how often this worker renews its heartbeat and its
    trials'; ``stale_after_s`` is how old the heartbeat of a worker on another host may be before
    its trials are re-run. Raises ``SettingsError`` when the run folder or study belongs to
    another job. Ctrl-C (or SIGTERM) stops the trials of this worker and marks them interrupted,
    so that the same command resumes them.
    """
    worker = _Worker(job, Path(run_dir), storage=storage, study_name=study_name, trainer=trainer_path(trainer),
                     devices=devices, processes_per_trial=processes_per_trial, hardware=hardware,
                     progress=progress or _print,
                     poll_interval_s=poll_interval_s, heartbeat_s=heartbeat_s, stale_after_s=stale_after_s,
                     stop_grace_s=stop_grace_s)
    return worker.run()


@dataclass
class _Running:
    trial: optuna.trial.Trial
    process: subprocess.Popen
    trial_dir: Path
    started: float
    device: str | None
    log: Any
    stop_reason: str | None = None
    stop_requested_at: float | None = None
    terminated_at: float | None = None


@dataclass
class _Worker:
    job: Job
    run_dir: Path
    storage: str | None
    study_name: str | None
    trainer: str
    devices: Sequence[str] | None
    processes_per_trial: int | None
    hardware: Hardware | None
    progress: Callable[[str], None]
    poll_interval_s: float
    heartbeat_s: float
    stale_after_s: float
    stop_grace_s: float
    running: dict[int, _Running] = field(default_factory=dict)
    timed_out: bool = False
    report_due: bool = False  # a trial ended since report.html was last written

    def run(self) -> SweepResult:
        self.devices = trial_devices(self.devices)
        if not self.devices and self.hardware is None:
            # Trials run on the CPU (none found, or --devices cpu): AutoMode plans for the CPU too.
            self.hardware = Hardware(gpus=0, gpu_memory_gib=0.0, cpus=os.cpu_count() or 1)
        # What the trials will draw and see is checked before anything is written: parse_job checks the
        # devices only when it is told them, and AutoMode's models only exist once it is planned.
        planned = None
        if self.job.mode == "automode":
            self.hardware = self.hardware or Hardware.detect()
            planned = plan_sweep(self.job, self.hardware).space
        self._check_trials(planned if planned is not None else self.job.search_space)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._read_or_write_sweep_file()
        self.study, self.plan = self._open()
        if planned is not None and self.plan.space != planned:  # joined a sweep planned on other hardware
            self._check_trials(self.plan.space)
        self.width, self.processes, message = trial_width(
            min(self.job.limits.max_concurrent_trials, self.plan.budget), len(self.devices), self.processes_per_trial)
        if message:
            self.progress(message)
        self.progress(f"sweep {self.study_name}: {self.plan.describe()}")
        for reason in self.plan.reasons:
            self.progress(f"  {reason}")
        for note in self.job.notes:
            self.progress(f"  note: {note}")
        self.heartbeat = RunnerHeartbeat(self.study, run_dir=self.run_dir, job_file=self.job.source,
                                         heartbeat_s=self.heartbeat_s, stale_after_s=self.stale_after_s)
        try:
            self._reap()
            previous = signal.getsignal(signal.SIGTERM) if _main_thread() else None
            if _main_thread():
                signal.signal(signal.SIGTERM, _raise_interrupt)
            try:
                self._loop()
            except BaseException:
                # Whatever stops this worker (Ctrl-C, SIGTERM, a storage error), its trials must not stay
                # RUNNING: they are marked interrupted so that the same command re-runs them.
                self._interrupt()
                raise
            finally:
                if _main_thread():
                    signal.signal(signal.SIGTERM, previous)
            return self._wrap_up()
        finally:
            self.heartbeat.end()

    # --- setup ------------------------------------------------------------------------------------

    def _read_or_write_sweep_file(self) -> None:
        path = self.run_dir / SWEEP_FILE
        if path.is_file():
            stored = json.loads(path.read_text())
            for key, given in (("storage", self.storage), ("study_name", self.study_name)):
                if given is not None and stored.get(key) != given:
                    raise SettingsError([f"{self.run_dir} holds a sweep with {key} {stored.get(key)!r}, not "
                                         f"{given!r}; resume it without --{key.replace('_', '-')} or use another "
                                         "run folder"], context="run folder")
            self.storage = stored.get("storage")
            self.study_name = stored["study_name"]
            return
        self.study_name = self.study_name or self.job.study_name()
        record = {"format": 1, "study_name": self.study_name, "storage": self.storage,
                  "job_file": str(self.job.source) if self.job.source else None, "task": self.job.task.value,
                  "primary_metric": self.job.primary_metric, "mode": self.job.mode,
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if self.job.source is not None:
            shutil.copyfile(self.job.source, self.run_dir / "job.yml")
        write_json_atomic(path, record)

    def _check_trials(self, space: SearchSpace | None) -> None:
        name = "AutoMode's search_space" if self.job.mode == "automode" else "search_space"
        # Another trainer (a test's, a plugin's) may need no visionsweep weights: only ours are checked for them.
        problems, _ = check_trials(self.job.task, self.job.base_settings(), space, devices=self.devices,
                                   space_name=name, check_weights=self.trainer in _VISIONSWEEP_TRAINERS)
        if problems:
            raise SettingsError(problems, context="job file")

    def _open(self) -> tuple[optuna.Study, SweepPlan]:
        storage = open_storage(self.storage, self.run_dir)
        assert self.study_name is not None
        if self.job.mode == "automode":
            # AutoMode's plan depends on the hardware: a resuming or joining worker takes the plan
            # stored by the first one rather than detecting its own.
            stored = _stored_plan(storage, self.study_name)
            plan = SweepPlan.from_dict(stored) if stored else plan_sweep(self.job, self.hardware or Hardware.detect())
        else:
            plan = plan_sweep(self.job)
        summary = {"task": self.job.task.value, "primary_metric": self.job.primary_metric, "mode": plan.mode,
                   "plan": plan.describe(), "storage": mask_url(self.storage) if self.storage else None}
        study, stored_plan, _ = open_study(storage, self.study_name, fingerprint=self.job.fingerprint(),
                                           plan=plan.to_dict(), summary=summary)
        plan = SweepPlan.from_dict(stored_plan)
        study.sampler = make_sampler(plan.sampling, plan.points, study_seed=study_seed(self.study_name))
        study.pruner = make_pruner(plan.policy)
        return study, plan

    # --- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        start = time.time()
        deadline = start + self.job.limits.timeout_minutes * 60
        last_beat = last_reap = start
        while True:
            now = time.time()
            for number, running in list(self.running.items()):
                if running.process.poll() is not None:
                    del self.running[number]
                    self._finish(running)
            if now >= deadline and not self.timed_out:
                self.timed_out = True
                self.progress(f"timeout_minutes ({self.job.limits.timeout_minutes:g}) reached: no new trials; "
                              f"{len(self.running)} running trial(s) stop after their current epoch")
                for running in self.running.values():
                    self._request_stop(running, f"sweep timeout ({self.job.limits.timeout_minutes:g} min)")
            self._enforce_trial_limits(now)
            while not self.timed_out and len(self.running) < self.width and self._launch():
                pass
            if now - last_beat >= self.heartbeat_s:
                last_beat = now
                self._heartbeat(now)
            if now - last_reap >= _REAP_INTERVAL_S:
                last_reap = now
                self._reap()
            if not self.running:
                if self.timed_out:
                    return
                trials = self._trials()
                if not work_left(trials, self.plan.budget):
                    if not any(t.state == TrialState.RUNNING for t in trials):
                        return
                    # Other workers' trials are still running: wait for them, so that this worker's
                    # leaderboard and best model cover the whole sweep, and so that a trial whose
                    # worker dies is re-run here once it is found stale.
                    time.sleep(_IDLE_POLL_S)
            if self.report_due:  # after launching the next trials, so that they start meanwhile
                self._write_report()
            time.sleep(self.poll_interval_s)

    def _reap(self) -> None:
        reaped = reap_stale_trials(self.study, self.plan.budget, stale_after_s=self.stale_after_s)
        notice_dead_runners(self.study)
        if reaped:
            self.progress(f"trial(s) {', '.join(map(str, reaped))} lost their worker (a stopped run or a dead "
                          "worker): they will be re-run")

    def _trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def _launch(self) -> bool:
        """Start one trial; False when there is no work left (the budget is full)."""
        if not work_left(self._trials(), self.plan.budget):
            return False
        trial = self.study.ask()
        slot = claim_slot(self.study, trial, self.plan.budget)
        if slot is None:
            return False
        now = time.time()
        values: dict[str, Any] = {attrs.STATUS: attrs.RUNNING, attrs.STARTED: now}
        if slot < len(self.plan.points):
            values[attrs.POINT] = slot
        trial_dir = self.run_dir / TRIALS_DIR / f"trial_{trial.number:04d}"
        values[attrs.TRIAL_DIR] = str(trial_dir)
        for key, value in values.items():
            trial.set_user_attr(key, value)
        sample = suggest(trial, self.plan.space)
        trial.set_user_attr(attrs.CONFIG, _jsonable(sample.values))
        trial.set_user_attr(attrs.SUBSPACE, sample.subspace)
        settings = merge_settings(self.job.base_settings(), sample.values)
        if self.trainer in _VISIONSWEEP_TRAINERS:
            # The sweep writes best_model/mlflow-model/ and the best trial's report.html (_wrap_up).
            settings["save_mlflow"] = settings["write_report"] = False
        trial_dir.mkdir(parents=True, exist_ok=True)
        try:
            resolve_settings(self.job.task, settings)
        except SettingsError as error:
            self._close(trial, trial_dir, now, {"status": attrs.FAILED, "error": {
                "kind": "invalid_settings", "type": "SettingsError",
                "message": f"the sampled settings are invalid, so the trial did not start: {error}"}})
            return True
        device = self._free_devices()
        spec = {
            "parent_pid": os.getpid(), "storage": self.storage, "run_dir": str(self.run_dir.resolve()),
            "study_name": self.study_name, "trial_id": trial._trial_id, "trial_number": trial.number,
            "policy": self.plan.policy.to_dict() if self.plan.policy else None, "trainer": self.trainer,
            "task": self.job.task.value, "data": str(self.job.training_data.path),
            "validation_data": str(self.job.validation_data.path) if self.job.validation_data else None,
            "label_column": self.job.target_column_name, "settings": _jsonable(settings),
            "output": str(trial_dir.resolve()), "stop_file": str((trial_dir / STOP_FILE).resolve()),
            "result_file": str((trial_dir / RESULT_FILE).resolve()), "processes": self.processes,
            "resume_from": self._saved_epochs_of(trial),
        }
        for stale in (RESULT_FILE, STOP_FILE):
            (trial_dir / stale).unlink(missing_ok=True)
        write_json_atomic(trial_dir / SPEC_FILE, spec)
        log = (trial_dir / LOG_FILE).open("ab")
        process = subprocess.Popen(
            python_command(TRIAL_ENTRY, [str(trial_dir / SPEC_FILE)]),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._child_env(device),
            start_new_session=True)  # terminal Ctrl-C reaches the runner only, which stops trials itself
        self.running[trial.number] = _Running(trial, process, trial_dir, now, device, log)
        where = f" on GPU {device}" if device is not None else ""
        if self.processes > 1:
            where += f" ({self.processes} processes)"
        self.progress(f"trial {trial.number} started{where} (slot {slot + 1}/{self.plan.budget}): "
                      f"{_describe_config(sample.values)}")
        return True

    def _finish(self, running: _Running) -> None:
        running.log.close()
        code = running.process.returncode
        result_path = running.trial_dir / RESULT_FILE
        result: dict[str, Any] | None = None
        if result_path.is_file():
            try:
                result = json.loads(result_path.read_text())
            except json.JSONDecodeError:
                result = None
        if result is None and running.stop_reason is not None:
            result = self._killed_after_stop(running)
        if result is None:
            result = {"status": attrs.FAILED, "error": _death(code, running.trial_dir / LOG_FILE)}
        self._close(running.trial, running.trial_dir, running.started, result)

    def _close(self, trial: optuna.trial.Trial, trial_dir: Path, started: float, result: dict[str, Any]) -> None:
        """Record a trial's end in the study (attributes first: Optuna freezes finished trials)."""
        duration = time.time() - started
        status = result["status"]
        error = result.get("error") or {}
        message = _error_message(error) if error else None
        values: dict[str, Any] = {attrs.STATUS: status, attrs.DURATION: round(duration, 3),
                                  attrs.LOG: str(trial_dir / LOG_FILE)}
        for key, name in ((attrs.BEST_SCORE, "best_score"), (attrs.BEST_EPOCH, "best_epoch"),
                          (attrs.EPOCHS_RUN, "epochs_run"), (attrs.MODEL_DIR, "model_dir"),
                          (attrs.CANCEL_REASON, "cancel_reason"), (attrs.RETRIES, "retries")):
            if result.get(name) is not None:
                values[key] = result[name]
        if message:
            values[attrs.ERROR] = message
            values[attrs.ERROR_KIND] = error.get("kind", "exception")
        try:
            for key, value in values.items():
                trial.set_user_attr(key, value)
            if status in (attrs.COMPLETED, attrs.EARLY_STOPPED):
                self.study.tell(trial, values=float(result["best_score"]))
            else:
                self.study.tell(trial, state=TrialState.PRUNED if status == attrs.CANCELLED else TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.progress(f"trial {trial.number}: another worker already closed it (it looked abandoned); its "
                          "re-run replaces it")
            return
        write_json_atomic(trial_dir / TRIAL_FILE, {"trial": trial.number, "config": trial.user_attrs.get(attrs.CONFIG),
                                                   "duration_s": round(duration, 3), **result})
        self.progress(_finish_line(trial.number, status, result, message, duration, self.job.primary_metric))
        self.report_due = True

    def _killed_after_stop(self, running: _Running) -> dict[str, Any]:
        """A trial killed because it did not stop in time: cancelled, scored from its reports."""
        frozen = next(t for t in self._trials() if t.number == running.trial.number)  # reports it wrote
        values = [v for v in frozen.intermediate_values.values() if math.isfinite(v)]
        model_dir = running.trial_dir / "model"
        reason = f"{running.stop_reason}; killed after not stopping within {self.stop_grace_s:g}s"
        if not values:
            return {"status": attrs.FAILED, "error": {"kind": "interrupted", "type": "Timeout",
                                                      "message": f"{reason}, before any validation pass"}}
        return {"status": attrs.CANCELLED, "best_score": max(values), "cancel_reason": reason,
                "model_dir": str(model_dir) if model_dir.is_dir() else None}

    # --- limits, heartbeats, devices -----------------------------------------------------------------

    def _enforce_trial_limits(self, now: float) -> None:
        limit = self.job.limits.trial_timeout_minutes
        for running in self.running.values():
            if limit is not None and running.stop_reason is None and now - running.started > limit * 60:
                self._request_stop(running, f"trial timeout ({limit:g} min)")
            if running.stop_requested_at is not None and now - running.stop_requested_at > self.stop_grace_s:
                if running.terminated_at is None:
                    running.terminated_at = now
                    running.process.terminate()
                elif now - running.terminated_at > _KILL_AFTER_TERM_S:
                    running.process.kill()

    def _request_stop(self, running: _Running, reason: str) -> None:
        running.stop_reason = reason
        running.stop_requested_at = time.time()
        (running.trial_dir / STOP_FILE).write_text(reason)

    def _heartbeat(self, now: float) -> None:
        self.heartbeat.beat(now)
        for running in self.running.values():
            try:
                running.trial.set_user_attr(attrs.HEARTBEAT, now)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # closed by another worker; _finish will report it

    def _saved_epochs_of(self, trial: optuna.trial.Trial) -> str | None:
        """The folder of the interrupted trial that ``trial`` re-runs, when it saved an epoch to resume from."""
        number = trial.user_attrs.get(attrs.RETRY_OF)
        if number is None:
            return None
        earlier = next((t for t in self._trials() if t.number == number), None)
        folder = earlier.user_attrs.get(attrs.TRIAL_DIR) if earlier is not None else None
        if folder is None or not (Path(folder) / RESUME_STATE).is_file():
            return None
        return str(Path(folder).resolve())

    def _free_devices(self) -> str | None:
        """The CUDA_VISIBLE_DEVICES of the next trial: ``processes`` GPUs that no running trial has."""
        if not self.devices:
            return None
        used = {d for r in self.running.values() if r.device for d in r.device.split(",")}
        return ",".join([d for d in self.devices if d not in used][:self.processes])

    def _child_env(self, device: str | None) -> dict[str, str]:
        env = dict(os.environ)
        # The trainer function is imported by name in the trial process: give it this process's path.
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(paths + [env["PYTHONPATH"]] if env.get("PYTHONPATH") else paths)
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        else:
            # A CPU trial must not see a GPU: under --devices cpu on a GPU machine, device auto
            # would otherwise put every trial on cuda:0 at once.
            env["CUDA_VISIBLE_DEVICES"] = ""
            if "OMP_NUM_THREADS" not in os.environ:
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(self.width * self.processes, 1)))
        return env

    # --- the end ------------------------------------------------------------------------------------

    def _interrupt(self) -> None:
        if not self.running:
            return
        self.progress("stopping: the running trials are marked interrupted and will be re-run by the same command")
        for running in self.running.values():
            running.process.terminate()
        deadline = time.time() + _KILL_AFTER_TERM_S
        for running in self.running.values():
            try:
                running.process.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()
            running.log.close()
        trials = self.study.get_trials(deepcopy=False)
        for number in self.running:
            frozen = next(t for t in trials if t.number == number)
            mark_interrupted(self.study, frozen, trials, self.plan.budget, "the sweep was stopped (Ctrl-C or SIGTERM)")
        self.running.clear()

    def _wrap_up(self) -> SweepResult:
        rows = leaderboard_rows(self.study)
        metric = self.job.primary_metric
        write_leaderboard(rows, self.run_dir / LEADERBOARD_FILE, metric)
        self.progress("")
        self.progress(format_leaderboard(rows, metric, limit=30))
        best = best_row(rows)
        copied = None
        if best is not None:
            copied, message = copy_best_model(best, self.run_dir, metric)
            self.progress(message)
            if copied is not None and self._best_keeps(best, "save_mlflow"):
                self.progress(write_best_mlflow_model(copied))
            if self._best_keeps(best, "write_report"):
                self.progress(write_best_run_report(best))
        else:
            self.progress("no trial reached a score; nothing to copy to best_model/")
        counts: dict[str, int] = {}
        for trial in self.study.get_trials(deepcopy=False):
            status = trial_status(trial)
            counts[status] = counts.get(status, 0) + 1
        self.progress(f"leaderboard: {self.run_dir / LEADERBOARD_FILE}")
        self._write_report(announce=True)
        return SweepResult(self.run_dir, str(self.study_name), self.plan.budget, rows, best, copied,
                           self.timed_out, counts)

    def _write_report(self, *, announce: bool = False) -> None:
        """Rewrite the sweep's ``report.html`` (``announce``: say where); a failure costs one progress line,
        never the sweep."""
        self.report_due = False
        try:
            from visionsweep.sweep.report import write_sweep_report  # matplotlib: imported once, here

            path = write_sweep_report(self.run_dir, study=self.study)
        except Exception as error:  # noqa: BLE001 - the report is a view of the sweep, not part of it
            first = (str(error).strip().splitlines() or [""])[0]
            self.progress(f"warning: the sweep report was not written ({type(error).__name__}: {first})")
            return
        if announce:
            self.progress(f"report: {path}")

    def _best_keeps(self, best: LeaderboardRow, setting: str) -> bool:
        """Whether the best trial's settings keep ``setting`` (save_mlflow, write_report) on, before the sweep
        turned it off for the trial: with visionsweep's trainer, the sweep then does that work for the best
        trial alone."""
        if self.trainer not in _VISIONSWEEP_TRAINERS:
            return False
        return getattr(resolve_settings(self.job.task, merge_settings(self.job.base_settings(), best.config)), setting)


def _stored_plan(storage: Any, study_name: str) -> dict[str, Any] | None:
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
    except KeyError:
        return None
    return study.user_attrs.get(attrs.PLAN)


def trial_width(concurrent: int, gpus: int, processes: int | None) -> tuple[int, int, str | None]:
    """(trials at a time, processes per trial, a line saying why fewer trials run than asked for).

    With GPUs every process has one, so ``concurrent`` x ``processes`` must fit on them: by default the
    GPUs are shared out among the concurrent trials (all of them per trial when one runs at a time, as
    the reference), and fewer trials run at a time when they do not fit. On the CPU a trial is one
    process unless asked for more. Raises ``SettingsError`` when one trial asks for more GPUs than exist.
    """
    if processes is not None and processes < 1:
        raise SettingsError([f"--processes-per-trial: got {processes}; use 1 or more"], context="sweep")
    if not gpus:
        return concurrent, processes or 1, None
    processes = processes or max(1, gpus // concurrent)
    if processes > gpus:
        raise SettingsError([f"--processes-per-trial: got {processes}, but there are {gpus} GPU(s) and each process "
                             f"needs one; use at most {gpus}"], context="sweep")
    fits = gpus // processes
    if fits >= concurrent:
        return concurrent, processes, None
    each = "one per GPU" if processes == 1 else f"{processes} GPUs each"
    return fits, processes, f"{gpus} GPU(s): running {fits} trials at a time, {each} (max_concurrent_trials {concurrent})"


def trial_devices(devices: Sequence[str] | None) -> list[str]:
    """The CUDA device ids the trials get, one each: ``devices`` as given (``[]``: the CPU), or when
    None the GPUs visible to this process (none when torch or CUDA is unavailable)."""
    if devices is not None:
        return list(devices)
    return visible_device_ids(Hardware.detect().gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))


def visible_device_ids(count: int, visible: str | None) -> list[str]:
    """What to put in each trial's ``CUDA_VISIBLE_DEVICES`` for the ``count`` GPUs this process sees.

    A trial's ``CUDA_VISIBLE_DEVICES`` names devices of the whole machine, not positions among this
    process's visible devices: under ``CUDA_VISIBLE_DEVICES=2,3`` the two GPUs are ``"2"`` and
    ``"3"``, and a trial given ``"0"`` would land on GPU 0, which the user kept out. CUDA stops at
    the first invalid entry of the list, so the first ``count`` entries are the devices it sees.
    """
    if visible is None:
        return [str(i) for i in range(count)]
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    return entries[:count]


def _death(code: int | None, log_path: Path) -> dict[str, Any]:
    """Describe a trial process that ended without writing its result."""
    tail = _tail(log_path)
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        kind = "out_of_memory" if -code == signal.SIGKILL else "crashed"
        why = " (the kernel's out-of-memory killer is the usual sender)" if -code == signal.SIGKILL else ""
        message = f"the trial process was killed by {name}{why}"
    else:
        kind = "out_of_memory" if "out of memory" in tail.lower() else "crashed"
        message = f"the trial process exited with status {code} without a result"
    return {"kind": kind, "type": "ProcessDied", "message": message, "log_tail": tail}


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _error_message(error: dict[str, Any]) -> str:
    text = f"{error.get('type', 'Error')}: {error.get('message', '')}".strip()
    if error.get("log_tail"):
        text += f"\nlast lines of the log:\n{error['log_tail']}"
    return text


def _finish_line(number: int, status: str, result: dict[str, Any], message: str | None, duration: float,
                 metric: str) -> str:
    took = f"{duration:.1f}s" if duration < 120 else f"{duration / 60:.1f} min"
    if status in attrs.SCORED:
        epoch = f" (epoch {result['best_epoch']})" if result.get("best_epoch") is not None else ""
        reason = f"; {result['cancel_reason']}" if status == attrs.CANCELLED and result.get("cancel_reason") else ""
        return f"trial {number} {status}: {metric} {result['best_score']:.4g}{epoch} in {took}{reason}"
    first = (message or "").splitlines()[0] if message else ""
    return f"trial {number} {status} after {took}: {first}"


def _describe_config(values: dict[str, Any]) -> str:
    if not values:
        return "default settings"
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _print(line: str) -> None:
    print(line, flush=True)


__all__ = ["DEFAULT_TRAINER", "SweepResult", "classify_error", "read_sweep_file", "run_sweep", "trial_devices",
           "visible_device_ids"]
