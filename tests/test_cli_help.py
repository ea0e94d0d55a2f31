"""The command line's first contact: --version, help text on every argument, the task and import
format choices listed in full (from the Task enum and the importer registry), a plain description."""
from __future__ import annotations

import argparse
import importlib.metadata
import tomllib
from pathlib import Path

import pytest

import visionsweep
from visionsweep import cli
from visionsweep.data import importer_names, importers
from visionsweep.model_catalog import OPEN_MODELS_HINT, model_names
from visionsweep.sweep.commands import add_sweep_commands
from visionsweep.tasks import Task

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {"train", "predict", "evaluate", "validate-data", "convert", "run", "status", "dashboard", "models",
            "example", "export", "serve", "report", "weights"}
SUBCOMMANDS = {"weights list", "weights download", "weights import"}


def _walk(parser: argparse.ArgumentParser, path: str = ""):
    """(command path, parser) for ``parser`` and every subcommand parser below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from _walk(subparser, f"{path} {name}".strip())


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    missing = []
    for path, each in _walk(parser):
        for action in each._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path or '(top)'}: {action.option_strings or action.dest}")
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{path or '(top)'} {choice.dest}: the command" for choice in action._choices_actions
                            if not choice.help]
    return missing


def test_every_argument_of_every_command_has_help():
    parser = cli._parser()
    assert {path for path, _ in _walk(parser)} == COMMANDS | SUBCOMMANDS | {""}
    assert _undocumented(parser) == []


def test_the_sweep_workers_parser_documents_every_argument_too():
    parser = argparse.ArgumentParser(prog="python -m visionsweep.sweep")
    add_sweep_commands(parser.add_subparsers(dest="command", required=True, help="one of:"))
    assert _undocumented(parser) == []


def test_the_walk_finds_an_argument_without_help():
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands.choices["status"].add_argument("--quiet", action="store_true")
    assert _undocumented(parser) == ["status: ['--quiet']"]


def test_no_help_text_abbreviates_its_choices():
    for path, parser in _walk(cli._parser()):
        for action in parser._actions:
            assert "..." not in (action.help or ""), f"{path} {action.option_strings}: {action.help}"


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"visionsweep {importlib.metadata.version('visionsweep')}\n"


def test_version_falls_back_to_the_package_version_from_a_source_tree(monkeypatch, capsys):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out == f"visionsweep {visionsweep.__version__}\n"


def test_package_version_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert visionsweep.__version__ == project["version"] == "0.1.0"


@pytest.mark.parametrize("command", ["train", "evaluate", "validate-data", "models"])
def test_task_help_lists_every_task(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    # argparse wraps help lines; compare without the line breaks
    text = " ".join(capsys.readouterr().out.split())
    assert all(task.value in text for task in Task)
    assert f"one of: {', '.join(task.value for task in Task)}" in text


def test_models_lists_the_models_of_each_task_with_its_default(capsys):
    # In process: test_end_to_end_classification.py runs the console script (slow).
    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{task.value} (default {task.default_model}): {', '.join(model_names(task))}" for task in Task] \
        + [f"classification also takes {OPEN_MODELS_HINT}"]
    assert cli.main(["models", "--task", "image_object_detection"]) == 0
    detection = [line for line in lines if line.startswith("image_object_detection ")]
    assert capsys.readouterr().out.splitlines() == detection == [
        "image_object_detection (default yolov5): yolov5, fasterrcnn_resnet18_fpn, fasterrcnn_resnet34_fpn, "
        "fasterrcnn_resnet50_fpn, fasterrcnn_resnet101_fpn, fasterrcnn_resnet152_fpn, retinanet_resnet50_fpn, "
        "fasterrcnn_resnet50_fpn_v2"]


def test_convert_lists_and_accepts_exactly_the_registered_formats(capsys):
    names = importer_names()
    assert {"folder", "csv", "voc", "yolo", "coco"} <= set(names)
    with pytest.raises(SystemExit):
        cli.main(["convert", "--help"])
    assert f"one of: {', '.join(names)}" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["convert", "--from", "labelme", "photos", "--output", "out.jsonl"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'labelme'" in capsys.readouterr().err


def test_a_newly_registered_importer_appears_in_convert(monkeypatch):
    monkeypatch.setitem(importers._IMPORTERS, "labelme", importers._IMPORTERS["folder"])
    args = cli._parser().parse_args(["convert", "--from", "labelme", "photos", "--output", "out.jsonl"])
    assert args.source_format == "labelme"


def test_top_level_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert cli.DESCRIPTION.split(":")[0] in " ".join(text.split())
    for markup in ("``", "::", ".. ", ":func:", ":class:"):
        assert markup not in text
    assert all(command in text for command in COMMANDS)
