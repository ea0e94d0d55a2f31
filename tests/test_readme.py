"""README.md's code blocks run as written without network (after its first command), or say what
they need.

Fast: every ``visionsweep`` command parses with the real parser, reads only what an earlier README
command wrote or what the repository holds, and trains with valid settings that need no weights;
every call of the Python block binds to the API. Slow: the first command, the digits commands and
the Python block run for real in a scratch folder, with empty weight caches and downloads off. The
sweep block's job is run by tests/test_end_to_end_sweep.py.
"""
from __future__ import annotations

import ast
import inspect
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml

import visionsweep
from visionsweep.cli import _parser, main
from visionsweep.data.jsonl import read_labeled_data
from visionsweep.settings import parse_set_options, resolve_settings
from visionsweep.tasks import Task

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)
BASH = [code for language, code in BLOCKS if language == "bash"]
(PYTHON,) = [code for language, code in BLOCKS if language == "python"]
# Commands other than visionsweep's that the README may use: setting up and testing the checkout.
OTHER_COMMANDS = {"python3", ".", "pip", "python"}
# What each command reads and writes, by its parsed argument names.
READS = {"train": ("data", "validation_data", "config"), "predict": ("model", "input", "config"),
         "evaluate": ("model", "data", "predictions", "config"), "validate-data": ("data", "validation_data"),
         "convert": ("source",), "run": ("job",), "status": ("run_dir",), "export": ("model",),
         "report": ("folder",)}
WRITES = ("output", "run_dir")


def _commands(block: str) -> list[list[str]]:
    """The commands of a bash block as argument lists, ``NAME=VALUE`` lines applied to later ``$NAME``."""
    variables: dict[str, str] = {}
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 1 and re.fullmatch(r"[A-Z_]+=\S+", words[0]):
            name, value = words[0].split("=", 1)
            variables[name] = value
            continue
        words = [re.sub(r"\$(\w+)", lambda m: variables[m[1]], word) for word in words]
        while words:
            end = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:end])
            words = words[end + 1:]
    return commands


def _visionsweep_commands() -> list[list[str]]:
    commands = [command for block in BASH for command in _commands(block)]
    unknown = [c for c in commands if c[0] != "visionsweep" and c[0] not in OTHER_COMMANDS]
    assert not unknown, f"README commands this test does not know: {unknown}"
    return [command[1:] for command in commands if command[0] == "visionsweep"]


def test_readme_has_only_bash_and_python_blocks():
    assert [language for language, _ in BLOCKS] == ["bash", "bash", "bash", "bash", "python"]


def test_every_command_parses_and_reads_only_what_is_there():
    """Each path a command reads is written by an earlier README command (the digits example first)
    or is in the repository; the old `--data train.jsonl` of nowhere fails here."""
    parser = _parser()
    written: list[str] = []
    commands = _visionsweep_commands()
    assert commands[0][:2] == ["example", "digits"]
    for args in commands:
        parsed = parser.parse_args(args)  # exits (fails the test) on an unknown command or flag
        for name in READS.get(parsed.command, ()):
            path = getattr(parsed, name, None)
            if path is None:
                continue
            earlier = any(path == w or path.startswith(w.rstrip("/") + "/") for w in written)
            assert earlier or (REPO / path).exists(), f"visionsweep {' '.join(args)}: nothing writes {path}"
        written += [getattr(parsed, name) for name in WRITES if getattr(parsed, name, None)]


def test_readme_training_needs_no_weights_and_its_settings_are_valid():
    parser = _parser()
    trains = [parser.parse_args(args) for args in _visionsweep_commands() if args[0] == "train"]
    assert trains
    for args in trains:
        assert resolve_settings(args.task, parse_set_options(args.set)).pretrained is False
    tree = ast.parse(PYTHON)
    (settings,) = [ast.literal_eval(node.value) for node in ast.walk(tree)
                   if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "settings"]
    assert resolve_settings(Task.CLASSIFICATION, settings).pretrained is False
    (create,) = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and _api_name(node) == "create_model"]
    model_name = ast.literal_eval(create.args[0])
    options = {k.arg: ast.literal_eval(k.value) for k in create.keywords if k.arg != "num_classes"}
    assert resolve_settings(Task.CLASSIFICATION, {"model_name": model_name, **options}).pretrained is False


def test_python_block_calls_bind_to_the_api():
    calls = [node for node in ast.walk(ast.parse(PYTHON)) if isinstance(node, ast.Call) and _api_name(node)]
    assert {_api_name(call) for call in calls} == {"train", "predict", "evaluate", "export", "create_model"}
    for call in calls:
        assert _api_name(call) in visionsweep.__all__
        signature = inspect.signature(getattr(visionsweep, _api_name(call)))
        signature.bind(*call.args, **{k.arg: k.value for k in call.keywords})  # TypeError on a wrong argument


def test_the_sweep_block_says_what_data_it_needs():
    """The quick sweep's data is beside the repository; the prose before its block must say so."""
    (job_file,) = [args[1] for args in _visionsweep_commands() if args[0] == "run"]
    raw = yaml.safe_load((REPO / job_file).read_text())
    beside = os.path.normpath(REPO.parent / "shared" / "datasets")
    for key in ("training_data", "validation_data"):
        assert os.path.normpath((REPO / job_file).parent / raw[key]["path"]).startswith(beside + os.sep)
    prose = README[:README.index(f"visionsweep run {job_file}")].rsplit("```", 1)[0].strip().rsplit("\n\n", 1)[1]
    assert "`../shared/datasets`" in prose and "needs" in prose


def _api_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "visionsweep":
        return func.attr
    return None


@pytest.mark.slow
def test_readme_digits_commands_and_python_block_run_offline(tmp_path, monkeypatch):
    """The README as a new user runs it: no network, nothing in the weight caches."""
    for name in ("TORCH_HOME", "HF_HOME"):
        monkeypatch.setenv(name, str(tmp_path / "empty-cache" / name))
    monkeypatch.setenv("VISIONSWEEP_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    for args in _visionsweep_commands():
        if args[0] in ("run", "status"):
            continue  # the sweep block: tests/test_end_to_end_sweep.py runs the same job
        assert main(args) == 0, f"visionsweep {' '.join(args)}"
    data = Path("runs/digits-example/data")
    # 1,797 digits, 183 of them threes; the commands' outputs hold every one
    assert len(read_labeled_data(Path("runs/digits/images.jsonl"), Task.CLASSIFICATION).records) == 1797
    assert len(Path("runs/digits/predictions-3.jsonl").read_text().splitlines()) == 183
    assert len(list((data / "images" / "3").iterdir())) == 183
    assert Path("runs/digits/report.html").stat().st_size > 50_000  # figures and the gallery embedded

    namespace: dict = {}
    exec(compile(PYTHON, "README.md python block", "exec"), namespace)
    assert namespace["result"].status == "completed" and namespace["result"].epochs_run == 2
    assert 0.0 <= namespace["metrics"]["accuracy"] <= 1.0
    assert len(Path("runs/digits-python/predictions.jsonl").read_text().splitlines()) == 183
    assert sum(p.numel() for p in namespace["model"].parameters() if p.requires_grad) > 0
