"""``python -m visionsweep.sweep run|status|dashboard``: the sweep commands without the main CLI.

This is what extra workers run (``python -m visionsweep.sweep run JOB.yml --run-dir RUN --storage
postgresql://...`` on each machine) and what the tests drive; ``visionsweep run/status/dashboard``
call the same functions.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

from visionsweep.errors import VisionSweepError
from visionsweep.sweep.job import load_job
from visionsweep.sweep.runner import DEFAULT_TRAINER, run_sweep
from visionsweep.sweep.status import dashboard_command, dashboard_available, format_status, run_dashboard, sweep_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visionsweep.sweep", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run, resume or join the sweep of a job file")
    run.add_argument("job", help="Azure AutoML image job YAML")
    run.add_argument("--run-dir", required=True, help="run folder (created; the same folder resumes)")
    run.add_argument("--storage", help="database URL shared by several workers, e.g. postgresql://user@host/db")
    run.add_argument("--study-name", help="study name in the storage (default: the job's name or file name)")
    run.add_argument("--trainer", default=DEFAULT_TRAINER, help="trainer as module:function")
    run.add_argument("--devices", help="comma-separated CUDA device ids, or 'cpu' (default: all visible GPUs)")
    status = commands.add_parser("status", help="progress of a running or finished sweep")
    status.add_argument("run_dir")
    dashboard = commands.add_parser("dashboard", help="open the sweep in optuna-dashboard")
    dashboard.add_argument("run_dir")
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            devices = None if args.devices is None else [] if args.devices == "cpu" else args.devices.split(",")
            result = run_sweep(load_job(args.job), args.run_dir, storage=args.storage, study_name=args.study_name,
                               trainer=args.trainer, devices=devices)
            return 0 if result.best is not None else 1
        if args.command == "status":
            print(format_status(sweep_status(args.run_dir)))
            return 0
        if dashboard_available():
            return subprocess.call(dashboard_command(args.run_dir, host=args.host, port=args.port))
        run_dashboard(args.run_dir, host=args.host, port=args.port)
        return 0
    except VisionSweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
