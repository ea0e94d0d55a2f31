"""Command lines that start a visionsweep entry point in a new Python process.

``python -c`` rather than ``python -m``: the trial and worker modules are already imported by
``visionsweep.sweep`` itself, and running one of them again as ``__main__`` makes Python warn
about a module imported twice.
"""
from __future__ import annotations

import sys

TRIAL_ENTRY = "visionsweep.sweep.trial_process:main"
WORKER_ENTRY = "visionsweep.sweep.__main__:main"


def python_command(entry: str, args: list[str]) -> list[str]:
    """The command that calls ``entry`` (``package.module:function``) with ``args`` and exits with
    its return value, run by this interpreter."""
    module, _, function = entry.partition(":")
    code = f"import sys\nfrom {module} import {function}\nsys.exit({function}(sys.argv[1:]))\n"
    return [sys.executable, "-c", code, *args]
