"""The sweep commands (``run``, ``status``, ``dashboard``), shared by ``visionsweep`` and
``python -m visionsweep.sweep`` (what extra workers run)."""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path


def add_sweep_commands(commands: argparse._SubParsersAction) -> None:
    """Register run, status and dashboard; each sets ``handler(args) -> exit code``."""
    from visionsweep.sweep.runner import DEFAULT_TRAINER

    run = commands.add_parser("run", help="run, resume or join the sweep of an Azure AutoML image job YAML")
    run.add_argument("job", help="Azure AutoML image job YAML")
    run.add_argument("--run-dir", help="run folder (default: runs/STUDY_NAME); the same folder resumes")
    run.add_argument("--storage", help="database URL shared by several workers, e.g. postgresql://user@host/db")
    run.add_argument("--study-name", help="study name in the storage (default: the job's name or file name)")
    run.add_argument("--trainer", default=DEFAULT_TRAINER,
                     help="the function that trains one trial, as module:function (default: %(default)s)")
    run.add_argument("--devices", help="comma-separated CUDA device ids, or 'cpu' (default: all visible GPUs)")
    run.add_argument("--processes-per-trial", type=int, metavar="N",
                     help="processes that train each trial together (DDP), one GPU each (default: the GPUs shared "
                          "out among max_concurrent_trials; 1 on the CPU); docs/distributed.md")
    run.set_defaults(handler=_run)

    status = commands.add_parser("status", help="progress of a running or finished sweep")
    status.add_argument("run_dir", help="the sweep's run folder (the --run-dir of run)")
    status.set_defaults(handler=_status)

    dashboard = commands.add_parser("dashboard", help="open a sweep in optuna-dashboard")
    dashboard.add_argument("run_dir", help="the sweep's run folder (the --run-dir of run)")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    dashboard.add_argument("--port", type=int, default=8080, help="port to serve on (default: %(default)s)")
    dashboard.set_defaults(handler=_dashboard)


def _run(args: argparse.Namespace) -> int:
    from visionsweep.sweep.job import load_job
    from visionsweep.sweep.runner import run_sweep, trial_devices

    devices = trial_devices(None if args.devices is None else [] if args.devices == "cpu" else args.devices.split(","))
    job = load_job(args.job, devices=devices)  # the devices too: a device the trials cannot use is a job problem
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / job.study_name()
    try:
        result = run_sweep(job, run_dir, storage=args.storage, study_name=args.study_name, trainer=args.trainer,
                           devices=devices, processes_per_trial=args.processes_per_trial)
    except KeyboardInterrupt:
        return 130
    return 0 if result.best is not None else 1


def _status(args: argparse.Namespace) -> int:
    from visionsweep.sweep.status import format_status, sweep_status

    print(format_status(sweep_status(args.run_dir)))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from visionsweep.sweep.status import dashboard_available, dashboard_command, run_dashboard

    if dashboard_available():
        return subprocess.call(dashboard_command(args.run_dir, host=args.host, port=args.port))
    run_dashboard(args.run_dir, host=args.host, port=args.port)
    return 0
