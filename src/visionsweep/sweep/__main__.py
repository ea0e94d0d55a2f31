"""``python -m visionsweep.sweep run|status|dashboard``: the sweep commands of ``visionsweep``.

This is what extra workers run (``python -m visionsweep.sweep run JOB.yml --run-dir RUN --storage
postgresql://...`` on each machine); ``visionsweep run/status/dashboard`` are the same commands.
"""
from __future__ import annotations

import argparse
import sys

from visionsweep.errors import VisionSweepError
from visionsweep.sweep.commands import add_sweep_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visionsweep.sweep",
                                     description="The sweep commands of visionsweep (run, status, dashboard), "
                                                 "as each worker of a sweep on several machines runs them.")
    add_sweep_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:"))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except VisionSweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
