"""Who runs a sweep: each runner's record in the study, its heartbeat, and whether it is alive.

Every ``visionsweep run`` process (a *runner*, or worker) writes a record into the study when it
starts, as the study user attribute ``vs_runner:<host>:<pid>:<start ticks>``: its host, pid and
process token, run folder, job file, start time and a heartbeat. It renews the heartbeat every
``heartbeat_s`` while it runs (also while it only waits for other workers' trials) and marks the
record ended when it returns or is stopped by Ctrl-C or SIGTERM. A runner that is killed
(SIGKILL, a crash, a lost machine) leaves its record as it was, until a later runner finds it dead,
takes over its trials and marks it noticed (``notice_dead_runners``). The record lives in the study, not
in a file, so that it works the same on every storage (journal file, PostgreSQL, SQLite, Redis)
and ``status`` on any machine that reaches the storage sees every runner.

Whether a worker is alive is decided here, in ``worker_alive``, for runners and for the trials they
run: on its own host, by its process (pid and start time, so that a reused pid does not count);
seen from another host, by the age of its heartbeat (dead when older than its ``stale_after_s``).
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import optuna

from visionsweep.sweep import attrs

HEARTBEAT_S = 30.0
"""How often a runner renews its heartbeat and its running trials' heartbeats (seconds)."""
STALE_AFTER_S = 300.0
"""A worker on another host whose heartbeat is older than this is taken for dead (seconds)."""


@dataclass(frozen=True)
class RunnerRecord:
    """One runner of the sweep as ``runner_records`` read it, with what this process concludes.

    ``state`` is ``running``, ``ended`` (it returned or was stopped cleanly) or ``dead`` (its
    process is gone, or its heartbeat is stale, without an end). ``noticed`` is when a later
    runner found it dead and took over its trials (None while nobody has).
    """

    key: str
    host: str
    pid: int
    worker: str
    run_dir: str | None
    job_file: str | None
    started: float
    heartbeat: float
    ended: float | None
    noticed: float | None
    stale_after_s: float
    state: str

    def describe(self) -> str:
        """``pid 1234 on host-a``, for messages."""
        return f"pid {self.pid} on {self.host}"

    def last_heartbeat(self, now: float | None = None) -> str:
        """``last heartbeat 12 s ago``, for messages."""
        return f"last heartbeat {_age((time.time() if now is None else now) - self.heartbeat)} ago"


class RunnerHeartbeat:
    """This process's runner record in the study: written by the constructor, renewed by ``beat``,
    closed by ``end``. Only this process writes its key, so the record is kept here and rewritten
    whole rather than read back from the storage."""

    def __init__(self, study: optuna.Study, *, run_dir: Path, job_file: Path | None, heartbeat_s: float,
                 stale_after_s: float):
        identity = worker_identity()
        self.study = study
        self.key = f"{attrs.RUNNER_PREFIX}{identity[attrs.HOST]}:{identity[attrs.WORKER]}"
        now = time.time()
        self.record: dict[str, Any] = {
            "host": identity[attrs.HOST], "pid": os.getpid(), "worker": identity[attrs.WORKER],
            "run_dir": str(run_dir.resolve()), "job_file": str(job_file) if job_file else None, "started": now,
            "heartbeat": now, "ended": None, "heartbeat_s": heartbeat_s, "stale_after_s": stale_after_s}
        self.study.set_user_attr(self.key, self.record)

    def beat(self, now: float | None = None) -> None:
        self.record["heartbeat"] = time.time() if now is None else now
        self.study.set_user_attr(self.key, self.record)

    def end(self) -> None:
        self.record["heartbeat"] = self.record["ended"] = time.time()
        self.study.set_user_attr(self.key, self.record)


def runner_records(study: optuna.Study, *, now: float | None = None) -> list[RunnerRecord]:
    """Every runner that ever worked on the study, oldest first, each with its state as seen from here."""
    now = time.time() if now is None else now
    records = []
    for key, value in study.user_attrs.items():
        if not key.startswith(attrs.RUNNER_PREFIX) or not isinstance(value, Mapping):
            continue
        stale_after_s = float(value.get("stale_after_s", STALE_AFTER_S))
        ended, noticed = _time(value.get("ended")), _time(value.get("noticed"))
        alive = worker_alive(value.get("host"), value.get("worker"), value.get("heartbeat"), now=now,
                             stale_after_s=stale_after_s)
        records.append(RunnerRecord(
            key=key, host=str(value.get("host", "?")), pid=int(value.get("pid", 0)),
            worker=str(value.get("worker", "")), run_dir=value.get("run_dir"), job_file=value.get("job_file"),
            started=float(value.get("started", 0)), heartbeat=float(value.get("heartbeat", 0)), ended=ended,
            noticed=noticed, stale_after_s=stale_after_s,
            state="ended" if ended is not None else "running" if alive else "dead"))
    return sorted(records, key=lambda r: r.started)


def notice_dead_runners(study: optuna.Study) -> list[RunnerRecord]:
    """Mark the records of dead runners that nobody noticed yet as noticed (by this runner, which
    re-runs their trials), so that ``status`` stops naming them; returns them.

    A runner on another host that was only cut off rewrites its whole record with its next
    heartbeat, which clears the mark.
    """
    now = time.time()
    found = [r for r in runner_records(study, now=now) if r.state == "dead" and r.noticed is None]
    for record in found:
        study.set_user_attr(record.key, {**study.user_attrs[record.key], "noticed": now})
    return found


def worker_alive(host: Any, worker: Any, heartbeat: Any, *, now: float | None = None,
                 stale_after_s: float = STALE_AFTER_S) -> bool:
    """Whether the worker process ``worker`` (a ``pid:start`` token) on ``host`` still runs.

    On this host the process itself answers; for another host (or a record without a token) the
    heartbeat does: alive while it is at most ``stale_after_s`` old. Without either, alive (the
    caller decides what a missing heartbeat means).
    """
    if host == socket.gethostname() and worker:
        return process_alive(str(worker))
    if heartbeat is None:
        return True
    return (time.time() if now is None else now) - float(heartbeat) <= stale_after_s


def worker_identity() -> dict[str, Any]:
    """Host and process token of this worker, stored on each trial it runs and in its runner record."""
    return {attrs.HOST: socket.gethostname(), attrs.WORKER: _process_token(os.getpid())}


def process_alive(token: str) -> bool:
    """Whether the process of a ``pid:start`` token still runs (a reused pid does not count)."""
    pid_text, _, start = token.partition(":")
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except ValueError:
        return True  # not a token we wrote; leave it to the heartbeat
    stat = _stat(pid)
    if stat and stat[0] == "Z":
        return False  # killed, not yet collected by its parent
    return not start or not stat or stat[19] == start


def _process_token(pid: int) -> str:
    return f"{pid}:{_start_ticks(pid)}"


def _start_ticks(pid: int) -> str:
    """The process start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    stat = _stat(pid)
    return stat[19] if stat else ""


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state first; empty off Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    # The command name (field 2) may contain spaces; the fields after its closing parenthesis are fixed.
    return stat.rsplit(")", 1)[1].split()


def _time(value: Any) -> float | None:
    return None if value is None else float(value)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
