"""Resuming an interrupted run: what ``RUN_DIR/checkpoints/last.pt`` holds, and what a run folder must hold
to be continued.

After every epoch rank 0 writes ``last.pt`` (atomically, as every checkpoint): a checkpoint
(``visionsweep.checkpoint``) of the network's own weights (not a family's moving average, which is part
of the family's state), with ``optimizer_state``, ``lr_scheduler_state`` (the position in the schedule)
and a ``training_state`` entry of tensors and plain data:

    early_stopping  EarlyStopping.state(): best_epoch, best_score, counter, should_stop
    grad_scaler     the mixed-precision loss scale (GradScaler.state_dict(); empty on the CPU)
    best_metrics    every validation metric of the best epoch, as model/metrics.json will hold them
    family          ModelFamily.training_state(): for YOLOv5 the moving average of the weights and the
                    generators of multi_scale and of the augmentation; for R-CNN its augmentation generator
    random          the global generators (``devices.random_states``) and the training loader's generator

Its ``epoch`` is the epoch just finished; the run continues with the next. The best epoch's weights are
not in it: ``model/model.pt`` holds them, as the reference restores them.

A run folder can be resumed when it holds ``settings.json``, ``train.jsonl``, ``validation.jsonl`` and
``checkpoints/last.pt`` and has not finished: ``model/metrics.json`` is the last file a run writes, so
its presence means the run is complete. The resumed run trains on the records the run used and with its
settings; of the settings given with resume, only ``CHANGEABLE_SETTINGS`` may differ (an out-of-memory
retry halves the batch), and ``number_of_epochs`` may only grow.

What continues exactly: with ``num_workers`` 0, the same settings and the same number of processes, a
resumed run draws the same random numbers, in the same order, as an uninterrupted run, so on the CPU
with ``deterministic`` it ends with the same weights. Loader workers (``num_workers`` > 0) hold
generators of their own that no checkpoint sees, and the processes of a distributed run other than
rank 0 get rank 0's generators, so their augmentation goes on differently (from states as random).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from visionsweep.checkpoint import BEST_MODEL_FILE, load_checkpoint
from visionsweep.devices import random_states, restore_random_states
from visionsweep.errors import CheckpointError, RunFolderError, SettingsError
from visionsweep.families.base import ModelFamily
from visionsweep.settings import Settings, override_settings, resolve_settings
from visionsweep.tasks import Task, parse_task
from visionsweep.training.loop import LoopState
from visionsweep.training.schedulers import Schedule
from visionsweep.utils import json_ready

LAST_CHECKPOINT = "last.pt"
# Written last by a run that ended; a run folder holding it is finished.
FINISHED_MARKER = Path("model") / "metrics.json"
CHANGEABLE_SETTINGS = ("training_batch_size", "grad_accumulation_step", "num_workers", "number_of_epochs")
TRAINING_STATE_ENTRIES = ("early_stopping", "grad_scaler", "best_metrics", "family", "random")


def last_checkpoint_path(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / LAST_CHECKPOINT


@dataclass
class ResumePoint:
    """A run folder checked for resuming: its task, the settings to go on with, and ``last.pt`` 's content."""

    run_dir: Path
    task: Task
    settings: Settings
    checkpoint: dict[str, Any]
    changes: dict[str, tuple[Any, Any]]  # the settings that differ from the run's: (before, after)

    @property
    def epoch(self) -> int:
        """The last epoch the run finished (counted from 1)."""
        return self.checkpoint["epoch"]

    @property
    def state(self) -> dict[str, Any]:
        return self.checkpoint["training_state"]

    @property
    def train_file(self) -> Path:
        return self.run_dir / "train.jsonl"

    @property
    def validation_file(self) -> Path:
        return self.run_dir / "validation.jsonl"


def resume_point(run_dir: str | Path, settings: Settings | Mapping[str, Any] | None = None,
                 task: Task | str | None = None) -> ResumePoint:
    """Check that ``run_dir`` holds an unfinished run with a readable ``last.pt``, and that ``settings`` (and
    ``task``, when given) agree with the run's own. Raises RunFolderError, CheckpointError or SettingsError,
    each naming the file or the settings at fault."""
    run_dir = Path(run_dir)
    run_task, original_settings = settings_to_resume(run_dir)
    if (run_dir / FINISHED_MARKER).is_file():
        raise RunFolderError(f"cannot resume {run_dir}: the run already finished ({FINISHED_MARKER} is written); "
                             "start a new run, or continue from its model with checkpoint_run_id")
    _, resumed_settings = settings_to_resume(run_dir, settings)
    if task is not None and parse_task(task) is not run_task:
        raise SettingsError([f"task: the run in {run_dir} is {run_task.value}, not {parse_task(task).value}"],
                            context="resume")
    for name in ("train.jsonl", "validation.jsonl"):
        if not (run_dir / name).is_file():
            raise RunFolderError(f"cannot resume {run_dir}: {name}, the records the run trained on, is missing")
    return ResumePoint(run_dir, run_task, resumed_settings, _load_last_checkpoint(run_dir),
                       changed_settings(original_settings, resumed_settings))


def settings_to_resume(run_dir: Path, given: Settings | Mapping[str, Any] | None = None) -> tuple[Task, Settings]:
    """The run's task and the settings to resume it with: its ``settings.json`` (notes included), with the
    keys of ``given`` that may change on resume. Any other difference is a SettingsError listing the keys."""
    path = run_dir / "settings.json"
    if not path.is_file():
        raise RunFolderError(f"cannot resume {run_dir}: it is not a run folder (no settings.json)")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        task = parse_task(saved.pop("task"))
        notes = [str(note) for note in saved.pop("notes", [])]
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
        raise RunFolderError(f"cannot resume {run_dir}: {path} is unreadable ({error})") from None
    original = resolve_settings(task, saved)
    resumed = original
    if given:
        values = given.to_dict() if isinstance(given, Settings) else dict(given)
        if values.get("seed") is None:  # a Settings object not yet through a run has no seed: the run's holds
            values.pop("seed", None)
        resumed = resolve_settings(task, override_settings(saved, values))
        problems = changed_settings_problems(original, resumed)
        if problems:
            raise SettingsError(problems, context="resume settings")
    resumed.notes[:] = list(dict.fromkeys([*notes, *resumed.notes]))  # the run's notes, each once
    return task, resumed


def changed_settings(original: Settings, resumed: Settings) -> dict[str, tuple[Any, Any]]:
    """Every setting whose value differs, with its value before and after."""
    before, after = original.to_dict(), resumed.to_dict()
    return {key: (before.get(key), after.get(key)) for key in type(original).model_fields
            if before.get(key) != after.get(key)}


def changed_settings_problems(original: Settings, resumed: Settings) -> list[str]:
    """One line per setting that a resumed run may not change but that ``resumed`` changes."""
    allowed = ", ".join(CHANGEABLE_SETTINGS)
    problems = []
    for key, (before, after) in changed_settings(original, resumed).items():
        if key not in CHANGEABLE_SETTINGS:
            problems.append(f"{key}: the run was started with {before!r}, given {after!r}; a resumed run keeps "
                            f"its settings except {allowed}")
        elif key == "number_of_epochs" and after < before:
            problems.append(f"number_of_epochs: given {after}, fewer than the run's {before}; on resume it may "
                            "only grow")
    return problems


def _load_last_checkpoint(run_dir: Path) -> dict[str, Any]:
    path = last_checkpoint_path(run_dir)
    if not path.is_file():
        raise CheckpointError(f"cannot resume {run_dir}: {path} does not exist (the run saved no state: it "
                              "stopped before the end of its first epoch, or was trained by a visionsweep that did "
                              "not write it); start the run again")
    content = load_checkpoint(path)
    problems = _resume_problems(content)
    if problems:
        raise CheckpointError(f"cannot resume from {path}: {'; '.join(problems)}")
    return content


def _resume_problems(content: dict[str, Any]) -> list[str]:
    """What a checkpoint lacks to resume a run from (a best-model file or a periodic one, say)."""
    problems = [f"no {key!r} entry" for key in ("optimizer_state", "lr_scheduler_state", "training_state")
                if key not in content]
    if not isinstance(content.get("epoch"), int) or isinstance(content.get("epoch"), bool) or content["epoch"] < 1:
        problems.append("'epoch' is not an epoch number")
    state = content.get("training_state", {})
    problems += [f"'training_state' has no {key!r} entry" for key in TRAINING_STATE_ENTRIES if key not in state]
    return problems


def training_state(loop_state: LoopState, family: ModelFamily, train_loader: Any) -> dict[str, Any]:
    """The ``training_state`` entry of ``last.pt`` after an epoch (see the module docstring)."""
    generator = getattr(train_loader, "generator", None)
    return {
        "early_stopping": loop_state.early_stopping, "grad_scaler": loop_state.grad_scaler,
        "best_metrics": json_ready(loop_state.best_metrics), "family": family.training_state(),
        "random": {**random_states(), "train_loader": generator.get_state() if generator is not None else None},
    }


def restore_training(point: ResumePoint, *, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
                     family: ModelFamily, classes: list[str]) -> None:
    """Put the network, optimizer, schedule and family back where ``last.pt`` has them."""
    content = point.checkpoint
    if content["labels"] != classes:
        raise CheckpointError(f"{last_checkpoint_path(point.run_dir)} was trained on the classes {content['labels']}, "
                              f"but the run's records now hold {classes}; were train.jsonl or validation.jsonl "
                              "edited?")
    with _as_checkpoint_error(point):
        model.load_state_dict(content["model_state"])
        optimizer.load_state_dict(content["optimizer_state"])
        schedule.load_state_dict(content["lr_scheduler_state"])
        family.load_training_state(point.state["family"])


def restore_random_generators(point: ResumePoint, train_loader: Any) -> None:
    """Put back the generators as they were after the saved epoch: call last, just before training, since
    building the model and loaders draws from them."""
    states = point.state["random"]
    generator = getattr(train_loader, "generator", None)
    with _as_checkpoint_error(point):
        restore_random_states(states)
        if generator is not None and states.get("train_loader") is not None:
            generator.set_state(states["train_loader"])


def best_weights(point: ResumePoint,
                 kept_weights: Callable[[], nn.Module]) -> tuple[dict[str, torch.Tensor] | None, bool]:
    """The kept weights of the best epoch (None before there is one), and whether ``model/model.pt`` must be
    written again from them. They come from that file, except when a run was killed between writing
    ``last.pt`` and ``model.pt`` at an epoch that was best: then they are that epoch's, restored
    (``kept_weights()``, what the family keeps of the restored network), and the file is behind."""
    best_epoch = point.state["early_stopping"]["best_epoch"]
    if best_epoch is None:
        return None, False
    path = point.run_dir / "model" / BEST_MODEL_FILE
    saved = load_checkpoint(path) if path.is_file() else None
    if saved is not None and saved.get("epoch") == best_epoch:
        return saved["model_state"], False
    if best_epoch == point.epoch:
        return {k: v.detach().to("cpu", copy=True) for k, v in kept_weights().state_dict().items()}, True
    found = "does not exist" if saved is None else f"is of epoch {saved.get('epoch')}"
    raise CheckpointError(f"cannot resume {point.run_dir}: {path}, the best epoch's weights, {found}, but "
                          f"{last_checkpoint_path(point.run_dir)} says the best epoch is {best_epoch}")


@contextlib.contextmanager
def _as_checkpoint_error(point: ResumePoint) -> Iterator[None]:
    """Turn a failure to load saved state (shapes, missing keys, bad generator states) into a CheckpointError
    naming last.pt: the file does not belong to this run, or was altered."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as error:
        raise CheckpointError(f"{last_checkpoint_path(point.run_dir)} does not fit this run ({type(error).__name__}: "
                              f"{error}); it may have been altered: start the run again") from None
