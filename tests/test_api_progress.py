"""The Python API shows a run's lines on stderr as the CLI does (``visionsweep.console``): by default
in a script that configured no logging, never with ``progress=False``, once when the application
configured logging, and leaving the logging setup as it found it."""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

import pytest

from conftest import TINY_SETTINGS, write_color_dataset
from visionsweep.console import console_progress
from visionsweep.errors import DataError, SettingsError
from visionsweep.training import train

LOG = logging.getLogger("visionsweep")
SETTINGS = {**TINY_SETTINGS, "number_of_epochs": 2}
LINES = ("training resnet18 on cpu: ", "epoch 1/2: train loss ", "epoch 2/2: train loss ", "finished (")


@contextlib.contextmanager
def plain_script() -> Iterator[logging.Logger]:
    """Logging as a plain script or notebook has it: no handler on the root logger (pytest puts its
    capture handlers there for each test phase; they are put back before the phase ends)."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    for handler in saved:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        yield root
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)


def _setup() -> tuple[list[logging.Handler], int, bool]:
    return LOG.handlers[:], LOG.level, LOG.propagate


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> object:
    return write_color_dataset(tmp_path_factory.mktemp("data"), per_class=4, size=16)


def test_train_shows_the_cli_lines_on_stderr_by_default(data, tmp_path, capfd):
    with plain_script():
        before = _setup()
        train("image_classification", data, settings=SETTINGS, output=tmp_path / "run")
        assert _setup() == before  # handler removed, level put back
    err = capfd.readouterr().err
    for line in LINES:
        assert err.count(line) == 1, (line, err)
    assert "8 records read, 8 images kept" in err  # the data report's summary, as the CLI prints it
    assert "INFO" not in err  # the message alone, as the CLI formats it


def test_progress_false_shows_neither_lines_nor_bar(data, tmp_path, capfd):
    with plain_script():
        before = _setup()
        result = train("image_classification", data, settings=SETTINGS, output=tmp_path / "run", progress=False)
        assert _setup() == before
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert "epoch 2/2: train loss " in (result.run_dir / "train.log").read_text()  # the run's log has them


def test_an_application_that_configured_logging_gets_each_line_once(data, tmp_path, capfd):
    with plain_script() as root:
        root.setLevel(logging.INFO)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("app: %(message)s"))
        root.addHandler(handler)
        before = _setup()
        train("image_classification", data, settings=SETTINGS, output=tmp_path / "run")
        assert _setup() == before
    err = capfd.readouterr().err
    for line in LINES:
        assert err.count(line) == 1, (line, err)
        assert f"app: {line}" in err  # through the application's handler, not one of ours


@pytest.mark.parametrize("mistake", ["settings", "data"])
def test_a_failing_call_leaves_the_logger_as_it_was(data, tmp_path, mistake):
    with plain_script():
        before = _setup()
        if mistake == "settings":
            with pytest.raises(SettingsError):
                train("image_classification", data, settings={**SETTINGS, "model_name": "no_such_model"},
                      output=tmp_path / "run")
        else:  # fails inside the run's checks, with the console handler in place
            with pytest.raises(DataError):
                train("image_classification", tmp_path / "missing.jsonl", settings=SETTINGS,
                      output=tmp_path / "run")
        assert _setup() == before


def test_console_adds_nothing_when_nested_or_not_propagating(capfd):
    with plain_script():
        before = _setup()
        with console_progress(), console_progress():
            assert len(LOG.handlers) == len(before[0]) + 1
            LOG.info("shown once")
            LOG.propagate = False  # as _RunLog.file_only on every rank but 0: a root handler would not see it
            LOG.info("not shown")
            LOG.propagate = True
        with console_progress(False):
            LOG.info("not shown either")
        assert _setup() == before
    assert capfd.readouterr().err == "shown once\n"
