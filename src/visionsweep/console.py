"""What an API call shows on the console: the "visionsweep" logger's lines on stderr, for that call only.

The ``visionsweep`` command configures logging (``logging.basicConfig``), so a run's lines ("training
resnet18 on cpu: ...", "epoch 1/3: ...", "finished ...") reach its stderr. A plain script or notebook has
configured nothing, and Python's last-resort handler shows warnings only. ``console_progress`` stands in
for the handler the application did not set up, while the call lasts:

* nothing is configured on import, and nothing is left behind: the handler (and the logger level it
  needs) is removed when the call ends, also when it fails;
* an application that configured logging (a handler on the "visionsweep" logger or, as the records
  propagate, on the root logger: ``logging.basicConfig``, the CLI, a test runner) gets the records in its
  own handlers only, so no line is shown twice; a call inside another call adds nothing either;
* the handler shows what a root handler would: nothing while the "visionsweep" logger does not
  propagate (``_RunLog.file_only`` on every rank but 0 of a distributed run), nothing below a level the
  user set on the logger.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

LOGGER = "visionsweep"


class _Console(logging.StreamHandler):
    """Shows a record as the CLI does (the message alone, on stderr), while the logger propagates."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        super().__init__(sys.stderr)  # the stderr of the call's moment (a notebook's, a capture's)
        self.setLevel(level)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.addFilter(lambda record: logger.propagate)


@contextlib.contextmanager
def console_progress(enabled: bool = True) -> Iterator[None]:
    """Show the "visionsweep" logger's INFO lines (and above) on stderr until the block ends; nothing
    when not ``enabled`` or when the application has configured logging (see the module)."""
    logger = logging.getLogger(LOGGER)
    if not enabled or logger.hasHandlers():
        yield
        return
    level = logger.level
    handler = _Console(logger, level or logging.INFO)
    if level == logging.NOTSET:  # else the root logger's level (WARNING) would hold the INFO lines back
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
