"""A user's mistake on the command line: one ``error: ...`` line, exit status 2, no traceback, and
nothing written; a run folder that already holds a run is refused unless ``--overwrite``."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import TINY_SETTINGS, write_color_dataset
from visionsweep.cli import main
from visionsweep.errors import DataError, RunFolderError, TrainingError
from visionsweep.training import train


def _tiny(**changes) -> list[str]:
    """--set options of TINY_SETTINGS with ``changes`` (a key may be given only once)."""
    return [arg for key, value in {**TINY_SETTINGS, **changes}.items() for arg in ("--set", f"{key}={value}")]


TINY = _tiny()


def _one_error_line(capsys, caplog) -> str:
    """The error the command printed, checked to be a single ``error:`` line with no traceback
    anywhere: not on stderr, and not in a log record (pytest's log capture takes those off stderr)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Traceback" not in caplog.text
    assert not any(record.exc_info for record in caplog.records)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_train_with_a_missing_data_file_says_so_in_one_line_and_writes_nothing(tmp_path, capsys, caplog):
    output = tmp_path / "run"
    code = main(["train", "--task", "image_classification", "--data", str(tmp_path / "missing.jsonl"),
                 "--output", str(output), *TINY])
    assert code == 2
    assert _one_error_line(capsys, caplog) == f"error: data file {tmp_path / 'missing.jsonl'} does not exist"
    assert not output.exists()


def test_the_same_through_the_console_prints_no_traceback(tmp_path):
    # A real process, so that the stderr log handler the command installs is the one that prints.
    output = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "visionsweep.cli", "train", "--task", "image_classification",
                           "--data", str(tmp_path / "missing.jsonl"), "--output", str(output)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr == f"error: data file {tmp_path / 'missing.jsonl'} does not exist\n"
    assert not output.exists()


def test_a_failure_after_the_data_check_writes_no_run_folder_either(tmp_path, capsys, caplog):
    # A weights file that exists is read with the model, after the data: still before anything is written.
    data = write_color_dataset(tmp_path / "data", per_class=3)
    weights = tmp_path / "damaged-weights.pth"
    weights.write_bytes(b"not a weights file")
    output = tmp_path / "run"
    code = main(["train", "--task", "image_classification", "--data", str(data), "--output", str(output),
                 *_tiny(pretrained=True, pretrained_weights=weights)])
    assert code == 2
    assert "damaged-weights.pth" in _one_error_line(capsys, caplog)
    assert not output.exists()


@pytest.mark.parametrize("command, expected", [
    (["predict", "{tmp}/no-model", "{tmp}/image.png"], "error: no trained model at {tmp}/no-model"),
    (["evaluate", "--task", "image_classification", "--predictions", "{tmp}/p.jsonl", "--data", "{tmp}/no.jsonl"],
     "error: data file {tmp}/no.jsonl does not exist"),
    (["validate-data", "--task", "image_classification", "--data", "{tmp}/no.jsonl"],
     "error: data file {tmp}/no.jsonl does not exist"),
    (["convert", "--from", "folder", "{tmp}/no-folder", "--output", "{tmp}/out.jsonl"],
     "error: {tmp}/no-folder is not a folder"),
    (["convert", "--from", "folder", "{tmp}/classes", "--output", "{tmp}"], "error: {tmp}: Is a directory"),
    (["run", "{tmp}/no-job.yml"], "error: 1 invalid job file value:"),
    (["status", "{tmp}/no-sweep"], "error: 1 invalid run folder value:"),
    (["train", "--task", "image_classification", "--data", "{tmp}/no.jsonl", "--config", "{tmp}/no.yml"],
     "error: 1 invalid settings file value:"),
])
def test_other_commands_report_user_errors_in_one_line(command, expected, tmp_path, capsys, caplog):
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    write_color_dataset(tmp_path / "images")
    (tmp_path / "images" / "images" / "red_0.png").rename(tmp_path / "classes" / "cat" / "1.png")
    code = main([part.format(tmp=tmp_path) for part in command])
    assert code == 2
    assert _one_error_line(capsys, caplog).startswith(expected.format(tmp=tmp_path))


# --- the run folder --------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused_and_overwrite_replaces_it(tmp_path, capsys, caplog):
    data = write_color_dataset(tmp_path / "data", per_class=3)
    run = tmp_path / "run"
    command = ["train", "--task", "image_classification", "--data", str(data), "--output", str(run), "--no-progress",
               *TINY]
    assert main(command) == 0
    (run / "notes.txt").write_text("the user's own file")
    first_log = (run / "train.log").read_text()
    first_model = (run / "model" / "model.pt").read_bytes()
    capsys.readouterr()

    assert main(command) == 2
    line = _one_error_line(capsys, caplog)
    assert line.startswith(f"error: output folder {run} already holds a run (settings.json") and "--overwrite" in line
    assert (run / "train.log").read_text() == first_log  # untouched

    # --overwrite with a bad input still refuses before touching the earlier run
    assert main([*command[:4], str(tmp_path / "missing.jsonl"), *command[5:], "--overwrite"]) == 2
    assert (run / "train.log").read_text() == first_log and (run / "model" / "model.pt").read_bytes() == first_model

    assert main([*command[:-len(TINY)], *_tiny(number_of_epochs=1), "--overwrite"]) == 0
    log = (run / "train.log").read_text()
    assert log.count("records read") == 1 and "epoch 1/1" in log and "epoch 2/2" not in log  # not appended
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert (run / "notes.txt").read_text() == "the user's own file"  # only the run's own files are replaced


def test_overwrite_replaces_only_the_runs_own_files_in_python(tmp_path):
    # One step a run: the fast form of the command-line test above, whose first run trains two epochs.
    data = write_color_dataset(tmp_path / "data", per_class=3)
    settings = {**TINY_SETTINGS, "number_of_epochs": 1}
    run = tmp_path / "run"
    train("image_classification", data, settings=settings, output=run, progress=False)
    (run / "notes.txt").write_text("the user's own file")
    train("image_classification", data, settings=settings, output=run, progress=False, overwrite=True)
    assert (run / "train.log").read_text().count("records read") == 1  # not appended
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert (run / "model" / "model.pt").is_file()
    assert (run / "notes.txt").read_text() == "the user's own file"


def test_run_folder_rules_in_python(tmp_path):
    data = write_color_dataset(tmp_path / "data", per_class=3)
    (tmp_path / "empty").mkdir()
    train("image_classification", data, settings={**TINY_SETTINGS, "number_of_epochs": 1}, output=tmp_path / "empty",
          progress=False)  # an empty folder is no earlier run
    with pytest.raises(RunFolderError, match="already holds a run"):
        train("image_classification", data, settings=TINY_SETTINGS, output=tmp_path / "empty", progress=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        train("image_classification", data, settings=TINY_SETTINGS, output=tmp_path / "file", progress=False)
    with pytest.raises(DataError):
        train("image_classification", tmp_path / "missing.jsonl", settings=TINY_SETTINGS, output=tmp_path / "new",
              progress=False)
    assert not (tmp_path / "new").exists()


def test_the_log_ends_with_a_user_error_in_one_line_and_a_bug_with_its_traceback(tmp_path):
    data = write_color_dataset(tmp_path / "data", per_class=3)
    settings = {**TINY_SETTINGS, "number_of_epochs": 1}

    def user_error(report):
        raise TrainingError("the loss is exploding; reduce learning_rate")

    def bug(report):
        raise ZeroDivisionError("division by zero")

    with pytest.raises(TrainingError):
        train("image_classification", data, settings=settings, output=tmp_path / "a", epoch_callback=user_error,
              progress=False)
    log = (tmp_path / "a" / "train.log").read_text()
    # what was logged while the inputs were checked, before the folder existed, is there too
    assert "data.jsonl: 6 records read" in log.splitlines()[0]
    assert log.splitlines()[-1].endswith("ERROR visionsweep: run failed: the loss is exploding; reduce learning_rate")
    assert "Traceback" not in log

    with pytest.raises(ZeroDivisionError):
        train("image_classification", data, settings=settings, output=tmp_path / "b", epoch_callback=bug,
              progress=False)
    log = (tmp_path / "b" / "train.log").read_text()
    assert "run failed\nTraceback" in log and log.rstrip().endswith("ZeroDivisionError: division by zero")


def test_the_example_refuses_to_replace_its_run_unless_told(tmp_path, capsys, caplog):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "settings.json").write_text(json.dumps({"model_name": "resnet18"}))
    assert main(["example", "digits", "--output", str(tmp_path)]) == 2
    assert "--overwrite" in _one_error_line(capsys, caplog)
    assert not (tmp_path / "data").exists()  # refused before the digits were written
