"""Checkpoint files: what a trained model needs to predict again, and incremental training from one.

A checkpoint is a ``torch.save`` dict of tensors and plain data only (numbers, strings, lists, dicts), so
it loads with ``torch.load(weights_only=True)`` and no file can run code when loaded: ``format``,
``task``, ``model_name``, ``labels`` (class names in index order), ``number_of_classes``, ``settings``
(the run's resolved settings, as in settings.json), ``model_state``, ``epoch``, ``score`` and ``metrics``
of that epoch; periodic checkpoints add ``optimizer_state`` and ``lr_scheduler_state``, and a run's
``checkpoints/last.pt`` also ``training_state`` (what resuming the run needs, see
``visionsweep.training.resume``). Files written before this rule was enforced hold the same plain content
and load unchanged.
"""
from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visionsweep.errors import CheckpointError
from visionsweep.models.weights import load_matching
from visionsweep.tasks import Task
from visionsweep.tensor_files import load_torch_file
from visionsweep.utils import json_ready

FORMAT = "visionsweep-checkpoint/1"
BEST_MODEL_FILE = "model.pt"
# A save writes NAME.partial, then renames it to NAME; a run killed in between leaves the .partial.
PARTIAL_SUFFIX = ".partial"


def save_checkpoint(path: Path, *, model: nn.Module, task: str, model_name: str, labels: list[str],
                    settings: dict[str, Any], epoch: int, score: float | None, metrics: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, schedule: Any = None,
                    training_state: dict[str, Any] | None = None, architecture: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (a killed run never leaves a half-written file behind).

    ``training_state`` (tensors and plain data) is stored as it is, for resuming the run;
    ``architecture`` (plain data: a Hugging Face model's config, ``ModelSpec.architecture``) builds the
    model again where that config is not cached.

    Leftover ``*.pt.partial`` files of an interrupted save in the same folder are removed. Raises
    TypeError, before writing anything, if some entry is not a tensor or plain data.
    """
    content = {
        "format": FORMAT, "task": Task(task).value, "model_name": model_name, "labels": list(labels),
        "number_of_classes": len(labels), "settings": json_ready(settings), "epoch": epoch,
        "score": None if score is None else float(score), "metrics": json_ready(metrics),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if optimizer is not None:
        content["optimizer_state"] = optimizer.state_dict()
    if schedule is not None:
        content["lr_scheduler_state"] = schedule.state_dict()
    if training_state is not None:
        content["training_state"] = training_state
    if architecture is not None:
        content["model_architecture"] = architecture
    _check_plain(content, "checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob("*.pt" + PARTIAL_SUFFIX):
        stale.unlink(missing_ok=True)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    try:
        torch.save(content, partial)
        partial.replace(path)
    except BaseException:  # a full disk or an interrupt: leave the previous checkpoint, not a fragment
        partial.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The content of a visionsweep checkpoint; CheckpointError naming the file for anything else.

    Nothing in the file is run: see ``visionsweep.tensor_files.load_torch_file``.
    """
    path = Path(path)
    if path.name.endswith(PARTIAL_SUFFIX):
        raise CheckpointError(f"{path} is the unfinished file of an interrupted save, not a checkpoint; "
                              f"use {path.name[:-len(PARTIAL_SUFFIX)]} in the same folder")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    content = load_torch_file(path, CheckpointError)
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a visionsweep checkpoint (no {FORMAT!r} format marker)")
    problems = _content_problems(content)
    if problems:
        raise CheckpointError(f"{path} is a damaged visionsweep checkpoint: {'; '.join(problems)}")
    return content


def incremental_checkpoint_path(checkpoint_run_id: str | None, checkpoint_filename: str | None) -> Path | None:
    """The file named by the incremental-training settings, or None when neither is set.

    ``checkpoint_run_id`` is an earlier run folder (its best model is used); ``checkpoint_filename``
    is a checkpoint file, relative to that run folder when both are given.
    """
    if checkpoint_run_id is None and checkpoint_filename is None:
        return None
    if checkpoint_run_id is None:
        return Path(checkpoint_filename)
    run = Path(checkpoint_run_id)
    if not run.is_dir():
        raise CheckpointError(f"checkpoint_run_id: run folder {run} does not exist")
    if checkpoint_filename is not None:
        return run / checkpoint_filename
    return run / "model" / BEST_MODEL_FILE


def load_for_incremental_training(model: nn.Module, model_name: str, path: Path) -> list[str]:
    """Start ``model`` from a checkpoint's weights: same model_name required, parameters matched by
    name and shape (so a head for another number of classes is left fresh). Optimizer and
    schedule start anew, as in the reference."""
    content = load_checkpoint(path)
    if content["model_name"] != model_name:
        raise CheckpointError(f"{path} holds a {content['model_name']} model, but this run trains {model_name}; "
                              "use a checkpoint of the same model_name")
    loaded = load_matching(model, content["model_state"])
    if not loaded:
        raise CheckpointError(f"{path} shares no parameter (by name and shape) with this {model_name}")
    return loaded


# What torch.load(weights_only=True) builds without question; a tensor subclass or a NumPy scalar
# (a float subclass) would be refused at load, so the check is on exact types.
_PLAIN_SCALARS = (type(None), bool, int, float, str)
_PLAIN_TENSORS = (torch.Tensor, nn.Parameter)
_PLAIN_MAPPINGS = (dict, collections.OrderedDict)


def _check_plain(value: Any, where: str) -> None:
    kind = type(value)
    if kind in _PLAIN_SCALARS or kind in _PLAIN_TENSORS:
        return
    if kind in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
    elif kind in _PLAIN_MAPPINGS:
        for key, item in value.items():
            _check_plain(key, f"{where} key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
    else:
        raise TypeError(f"{where} is a {kind.__module__}.{kind.__qualname__}; a checkpoint holds only tensors and "
                        "plain data (None, bool, int, float, str, list, tuple, dict), so it loads without running code")


# Entry -> (what it must be, the types that are that); the optional ones may be absent.
_REQUIRED = {
    "task": ("one of " + ", ".join(t.value for t in Task), (str,)), "model_name": ("a string", (str,)),
    "labels": ("a list of class names", (list,)), "settings": ("a dict", (dict,)),
    "model_state": ("a dict of tensors", (dict, collections.OrderedDict)),
}
_OPTIONAL = {
    "epoch": ("an integer", (int, type(None))), "score": ("a number", (int, float, type(None))),
    "metrics": ("a dict", (dict,)), "optimizer_state": ("a dict", (dict,)), "lr_scheduler_state": ("a dict", (dict,)),
    "training_state": ("a dict", (dict,)), "model_architecture": ("a dict", (dict,)),
}


def _content_problems(content: dict[str, Any]) -> list[str]:
    """What is missing or of the wrong kind in a checkpoint that loaded (a weights-only file can hold anything
    plain, so a crafted or damaged one must not reach the model builders as a traceback)."""
    problems = []
    for key, (expected, types) in _REQUIRED.items():
        if key not in content:
            problems.append(f"no {key!r} entry")
        elif not isinstance(content[key], types):
            problems.append(f"{key!r} is not {expected}")
    for key, (expected, types) in _OPTIONAL.items():
        if key in content and not isinstance(content[key], types):
            problems.append(f"{key!r} is not {expected}")
    if problems:
        return problems
    if content["task"] not in {t.value for t in Task}:
        problems.append(f"'task' {content['task']!r} is not {_REQUIRED['task'][0]}")
    if not all(isinstance(label, str) for label in content["labels"]):
        problems.append("'labels' holds something other than class names (strings)")
    if content.get("number_of_classes", len(content["labels"])) != len(content["labels"]):
        problems.append(f"'number_of_classes' is {content['number_of_classes']!r} but there are "
                        f"{len(content['labels'])} labels")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content["model_state"].items()):
        problems.append("'model_state' holds something other than named tensors")
    return problems
