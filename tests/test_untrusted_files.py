"""Untrusted files: checkpoints, model folders and weights load without running anything from them; corrupt
files and interrupted saves give clear errors that name the file."""
from __future__ import annotations

import collections
import io
import json
import pathlib
import pickle
import shutil
import tarfile
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from conftest import TINY_SETTINGS, write_color_dataset
from visionsweep import api, cli
from visionsweep.errors import CheckpointError, WeightsUnavailableError
from visionsweep.inference.model_folder import load_trained_model
from visionsweep.models import create_model, get_model_spec
from visionsweep.models.yolo import build_yolov5
from visionsweep.models.yolo.weights import _InertUnpickler, _Placeholder, read_vendor_checkpoint
from visionsweep.settings import resolve_settings
from visionsweep.sweep.leaderboard import LeaderboardRow, copy_best_model
from visionsweep import checkpoint as checkpoint_module
from visionsweep.training import train
from visionsweep.checkpoint import FORMAT, load_checkpoint, load_for_incremental_training, save_checkpoint
from visionsweep.training.optim import build_optimizer
from visionsweep.training.schedulers import Schedule


class _TouchOnLoad:
    """Unpickling this creates ``marker``: what a hostile checkpoint does (any code could run the same way)."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


class _ExecOnLoad:
    """Unpickling this runs Python source with ``exec``; the source creates ``marker``."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",))


@dataclass(frozen=True)
class Family:
    task: str
    settings: dict[str, Any]
    image_size: int

    @property
    def model_name(self) -> str:
        return self.settings["model_name"]

    def model(self, classes: int) -> nn.Module:
        return create_model(self.model_name, classes, **{k: v for k, v in self.settings.items() if k != "model_name"})

    def stored_settings(self) -> dict[str, Any]:
        return resolve_settings(self.task, self.settings).to_dict()

    def write_data(self, folder: pathlib.Path) -> pathlib.Path:
        if self.task == "image_classification":
            return write_color_dataset(folder, per_class=2, size=self.image_size)
        folder.mkdir(parents=True)
        lines = []
        for i in range(2):
            pixels = np.full((self.image_size, self.image_size, 3), 128, np.uint8)
            pixels[8:40, 8:40] = (255, 0, 0)
            Image.fromarray(pixels).save(folder / f"{i}.png")
            lines.append({"image_url": f"{i}.png", "label": [
                {"label": "red", "topX": 0.125, "topY": 0.125, "bottomX": 0.625, "bottomY": 0.625}]})
        (folder / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        return folder / "data.jsonl"


_DETECTION = {"pretrained": False, "training_batch_size": 2, "validation_batch_size": 2, "num_workers": 0, "seed": 0,
              "number_of_epochs": 1}
FAMILIES = {
    "classification": Family("image_classification", {**TINY_SETTINGS, "number_of_epochs": 1}, 24),
    "fasterrcnn": Family("image_object_detection", {**_DETECTION, "model_name": "fasterrcnn_resnet18_fpn",
                                                    "min_size": 64, "max_size": 96}, 64),
    "yolov5": Family("image_object_detection", {**_DETECTION, "model_name": "yolov5", "model_size": "small",
                                                "img_size": 64}, 64),
}


def _checkpoint_content(family: Family, labels: list[str]) -> dict[str, Any]:
    """A checkpoint's dict as visionsweep's release 0.1 ``save_checkpoint`` builds it."""
    return {"format": FORMAT, "task": family.task, "model_name": family.model_name, "labels": labels,
            "number_of_classes": len(labels), "settings": family.stored_settings(), "epoch": 0, "score": 0.5,
            "metrics": {"accuracy": 0.5}, "model_state": family.model(len(labels)).state_dict()}


def _write_hostile_checkpoint(path: pathlib.Path, family: Family, marker: pathlib.Path, trap: type = _TouchOnLoad,
                              **save_options: Any) -> None:
    """A real checkpoint of ``family``, every entry valid, with one object deep in its metrics that creates
    ``marker`` when unpickled."""
    content = _checkpoint_content(family, ["red", "blue"])
    content["metrics"] = {"accuracy": 0.5, "per_label": [{"red": trap(marker)}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path, **save_options)


# --- a pickle that would run code -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FAMILIES))
def test_hostile_checkpoint_is_refused_by_predict_evaluate_and_incremental_training(tmp_path, name):
    family = FAMILIES[name]
    marker = tmp_path / "written-by-the-pickle"
    run = tmp_path / "earlier-run"
    hostile = run / "model" / "model.pt"
    _write_hostile_checkpoint(hostile, family, marker)
    data = family.write_data(tmp_path / "data")
    attempts = {
        "predict": lambda: api.predict(run / "model", data, output=tmp_path / "predictions.jsonl"),
        "evaluate": lambda: api.evaluate(run, data=data),
        "checkpoint_filename": lambda: train(family.task, data, data, output=tmp_path / "by-file", progress=False,
                                             settings={**family.settings, "checkpoint_filename": str(hostile)}),
        "checkpoint_run_id": lambda: train(family.task, data, data, output=tmp_path / "by-run", progress=False,
                                           settings={**family.settings, "checkpoint_run_id": str(run)}),
    }
    for attempt, call in attempts.items():
        with pytest.raises(CheckpointError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"{hostile} is refused unread"), attempt
        assert "could run code" in message and "weights_only" not in message, attempt
        assert not marker.exists(), f"{attempt} ran code from the checkpoint"
    torch.load(hostile, weights_only=False)  # the file is a real attack: an unrestricted load runs it
    assert marker.exists()


def test_hostile_checkpoint_names_the_refused_object_and_the_cli_prints_an_error(tmp_path, capsys):
    family = FAMILIES["classification"]
    marker = tmp_path / "written-by-the-pickle"
    hostile = tmp_path / "model" / "model.pt"
    _write_hostile_checkpoint(hostile, family, marker, pickle_protocol=4)
    with pytest.raises(CheckpointError, match=r"damaged, or uses pickle instructions that loading without running "
                                              r"code does not allow \(Unsupported operand 149\)"):
        load_checkpoint(hostile)
    _write_hostile_checkpoint(hostile, family, marker, trap=_ExecOnLoad)
    with pytest.raises(CheckpointError, match="holds the Python object exec, and building it could run code"):
        load_checkpoint(hostile)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(images / "a.png")
    assert cli.main(["predict", str(tmp_path / "model"), str(images), "--output", str(tmp_path / "p.jsonl")]) == 2
    error = capsys.readouterr().err
    assert f"error: {hostile} is refused unread" in error and "Traceback" not in error
    assert not marker.exists()


def test_hostile_pretrained_weights_are_refused_for_every_reader(tmp_path):
    marker = tmp_path / "written-by-the-pickle"
    for protocol in (2, 4):
        hostile = tmp_path / f"weights-{protocol}.pt"
        torch.save({"model": _TouchOnLoad(marker), "state_dict": {"w": torch.zeros(1)}}, hostile,
                   pickle_protocol=protocol)
        with pytest.raises(WeightsUnavailableError, match=f"{hostile} is refused unread"):
            create_model("resnet18", 2, pretrained_weights=str(hostile))
        # yolov5 falls back to the vendor reader, which finds no model in the placeholder
        with pytest.raises(WeightsUnavailableError, match=str(hostile)):
            create_model("yolov5", 2, model_size="small", pretrained_weights=str(hostile))
    assert not marker.exists()


# --- the vendor YOLOv5 reader -------------------------------------------------------------------------


def test_vendor_reader_reads_the_tensors_of_a_model_that_carries_traps(tmp_path):
    marker = tmp_path / "written-by-the-pickle"
    model = build_yolov5(80, "small")
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.touch_trap = _TouchOnLoad(marker)  # plain attributes pickle with the module, as in the vendor's files
    model.model[0].exec_trap = _ExecOnLoad(marker)
    path = tmp_path / "yolov5s.pt"
    torch.save({"epoch": -1, "model": model}, path)
    state = read_vendor_checkpoint(path)
    assert set(state) == set(expected)
    assert torch.equal(state["model.0.conv.conv.weight"], expected["model.0.conv.conv.weight"])
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the traps are real
    assert marker.exists()


@pytest.mark.parametrize("module, name", [
    ("posix", "system"), ("os", "system"), ("builtins", "exec"), ("builtins", "eval"), ("builtins", "getattr"),
    ("builtins", "__import__"), ("__builtin__", "open"), ("pathlib", "Path"), ("subprocess", "Popen"),
    ("torch", "load"), ("torch", "_dynamo"), ("torch.serialization", "load"), ("torch._utils", "_rebuild_from_type"),
    ("copyreg", "_reconstructor"), ("numpy.core.multiarray", "_reconstruct"),
])
def test_vendor_unpickler_gives_an_inert_placeholder_for_any_other_global(module, name):
    found = _InertUnpickler(io.BytesIO(b"")).find_class(module, name)
    assert isinstance(found, type) and issubclass(found, _Placeholder)
    assert found.qualified_name.endswith(f".{name}")
    instance = found("echo", "anything")  # calling it only records the arguments
    assert instance.args == ("echo", "anything")


def test_vendor_unpickler_builds_real_tensors_and_dtypes_only():
    unpickler = _InertUnpickler(io.BytesIO(b""))
    assert unpickler.find_class("torch", "float16") is torch.float16
    assert unpickler.find_class("collections", "OrderedDict") is collections.OrderedDict
    rebuild = unpickler.find_class("torch._utils", "_rebuild_parameter_with_state")
    parameter = rebuild(torch.ones(2), True, {"hook": print}, {"attribute": print})
    assert isinstance(parameter, nn.Parameter) and not parameter._backward_hooks
    assert not hasattr(parameter, "attribute")  # a file cannot attach attributes or hooks to a tensor


def test_vendor_reader_survives_a_module_tree_with_a_cycle(tmp_path):
    root = nn.Module()
    root.add_module("conv", nn.Conv2d(1, 1, 1))
    root._modules["loop"] = root  # a hostile file can say anything; a recursive walk would never end
    path = tmp_path / "cycle.pt"
    torch.save({"model": root}, path)
    assert set(read_vendor_checkpoint(path)) == {"conv.weight", "conv.bias"}


# --- checkpoints of the current release ---------------------------------------------------------------


def _release_0_1_save(path: pathlib.Path, content: dict[str, Any], optimizer, schedule) -> None:
    """``save_checkpoint`` of release 0.1, line for line (it loaded with ``weights_only=False``)."""
    content = {**content, "optimizer_state": optimizer.state_dict(),
               "lr_scheduler_state": {"step": schedule.step, "epoch": schedule.epoch}}  # 0.1's schedule state
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(content, partial)
    partial.replace(path)


@pytest.mark.parametrize("name, optimizer", [("classification", "sgd"), ("fasterrcnn", "adamw"),
                                             ("yolov5", "adam")])
def test_checkpoints_of_release_0_1_load_unchanged(tmp_path, name, optimizer):
    family = FAMILIES[name]
    content = _checkpoint_content(family, ["red", "blue"])
    model = family.model(2)
    model.load_state_dict(content["model_state"])
    optim = build_optimizer(model, optimizer, learning_rate=0.01, weight_decay=1e-4, momentum=0.9, nesterov=True,
                            beta1=0.9, beta2=0.999, amsgrad=optimizer == "adam")
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 0.1)
    optim.step()  # momentum buffers, step counters: the state a periodic checkpoint carries
    schedule = Schedule(optim, "warmup_cosine", steps_per_epoch=3, epochs=2)
    schedule.after_optimizer_step()
    path = tmp_path / "run" / "model" / "model.pt"
    _release_0_1_save(path, content, optim, schedule)

    loaded = load_checkpoint(path)
    assert loaded["lr_scheduler_state"] == {"step": 1, "epoch": 0} and loaded["labels"] == ["red", "blue"]
    assert loaded["optimizer_state"]["state"]  # non-empty optimizer state survives
    trained = load_trained_model(tmp_path / "run")
    assert trained.labels == ["red", "blue"] and trained.source == path
    assert all(torch.equal(v, content["model_state"][k]) for k, v in trained.model.state_dict().items())
    fresh = family.model(2)
    assert load_for_incremental_training(fresh, family.model_name, path)
    assert torch.equal(next(iter(fresh.state_dict().values())), next(iter(content["model_state"].values())))


def test_save_checkpoint_writes_only_plain_data_and_refuses_anything_else(tmp_path):
    model = nn.Linear(2, 2)
    common = dict(model=model, task="image_classification", model_name="resnet18", labels=["a", "b"], epoch=0)
    path = save_checkpoint(tmp_path / "model.pt", **common, settings={"seed": np.int64(3)}, score=np.float64(0.25),
                           metrics={"accuracy": np.float32(0.5), "matrix": np.eye(2)})
    loaded = torch.load(path, weights_only=True)  # NumPy values were turned into plain numbers
    assert type(loaded["score"]) is float and loaded["settings"] == {"seed": 3}
    assert loaded["metrics"] == {"accuracy": 0.5, "matrix": [[1.0, 0.0], [0.0, 1.0]]}

    class Odd:
        def state_dict(self):
            return {"step": 1, "callback": print}

    with pytest.raises(TypeError, match=r"checkpoint\['lr_scheduler_state'\]\['callback'\] is a builtins"):
        save_checkpoint(tmp_path / "odd.pt", **common, settings={}, score=None, metrics={}, schedule=Odd())
    assert not (tmp_path / "odd.pt").exists() and not (tmp_path / "odd.pt.partial").exists()


# --- corrupt and foreign files ------------------------------------------------------------------------


def _real_checkpoint(path: pathlib.Path) -> pathlib.Path:
    return save_checkpoint(path, model=nn.Linear(4, 2), task="image_classification", model_name="resnet18",
                           labels=["a", "b"], settings={}, epoch=0, score=None, metrics={})


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_a_clear_error_naming_the_file(tmp_path, damage):
    path = _real_checkpoint(tmp_path / "model" / "model.pt")
    whole = path.read_bytes()
    path.write_bytes({"truncated": whole[: len(whole) // 2], "garbage": b"hello, this is no checkpoint" * 40,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=rf"^{path} is not a readable PyTorch file \(truncated or corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_trained_model(tmp_path / "model")


def test_checkpoint_of_plain_data_with_wrong_entries_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"format": FORMAT, "task": "image_painting", "model_name": "resnet18", "labels": ["a", 3],
                "settings": {}, "model_state": {"w": "not a tensor"}, "number_of_classes": 5}, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is a damaged visionsweep checkpoint")
    assert "'task' 'image_painting'" in message and "'labels' holds" in message
    assert "'number_of_classes' is 5 but there are 2 labels" in message and "'model_state' holds" in message
    torch.save({"format": FORMAT, "task": "image_classification", "labels": "ab", "settings": {}}, path)
    with pytest.raises(CheckpointError, match="no 'model_name' entry; 'labels' is not a list.*; no 'model_state'"):
        load_checkpoint(path)


def test_pytorch_0_3_tar_file_is_refused_unread(tmp_path):
    path = tmp_path / "old.pt"
    with tarfile.open(path, "w") as archive:
        payload = pickle.dumps({"format": FORMAT})
        member = tarfile.TarInfo("pickle")
        member.size = len(payload)
        archive.addfile(member, io.BytesIO(payload))
    with pytest.raises(CheckpointError, match=f"{path} is in the tar format of PyTorch 0.3"):
        load_checkpoint(path)


def test_compressed_zip_record_is_refused_before_it_can_expand(tmp_path):
    plain = _real_checkpoint(tmp_path / "plain.pt")
    torch.save({"model_state": {"w": torch.zeros(1_000_000)}}, tmp_path / "zeros.pt")
    for source in (plain, tmp_path / "zeros.pt"):
        bomb = tmp_path / f"bomb-{source.name}"
        with zipfile.ZipFile(source) as original, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
            for record in original.infolist():
                out.writestr(record.filename, original.read(record.filename))
        assert torch.load(bomb, weights_only=True)  # torch itself would inflate it
        expected = rf"^{bomb} is refused unread: its record .* is compressed"
        with pytest.raises(CheckpointError, match=expected):
            load_checkpoint(bomb)
        with pytest.raises(WeightsUnavailableError, match=expected):
            create_model("resnet18", 2, pretrained_weights=str(bomb))
        with pytest.raises(WeightsUnavailableError, match=expected):
            read_vendor_checkpoint(bomb)
    assert (tmp_path / "bomb-zeros.pt").stat().st_size < 100_000  # 4 MB of tensor from a few kilobytes


def _corrupt_safetensors(path: pathlib.Path, damage: str) -> pathlib.Path:
    save_file({"fc.weight": torch.zeros(8, 8)}, str(path))
    whole = path.read_bytes()
    header = len(whole) - 8 * 8 * 4
    path.write_bytes({"truncated": whole[:-16], "garbage header": (header - 8).to_bytes(8, "little")
                      + b"{" * (header - 8) + whole[header:], "header too large": (2**40).to_bytes(8, "little")
                      + whole[8:]}[damage])
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage header", "header too large"])
def test_corrupt_safetensors_is_a_clear_error_for_every_reader(tmp_path, monkeypatch, damage):
    path = _corrupt_safetensors(tmp_path / "weights.safetensors", damage)
    expected = rf"^{path} is not a readable safetensors file \(truncated or corrupt: SafetensorError: "
    with pytest.raises(WeightsUnavailableError, match=expected):
        create_model("resnet18", 2, pretrained_weights=str(path))
    with pytest.raises(WeightsUnavailableError, match=expected):  # read as safetensors, never as a vendor pickle
        create_model("yolov5", 2, model_size="small", pretrained_weights=str(path))

    # timm's weights come as model.safetensors in the Hugging Face cache: delete it and it is fetched again
    monkeypatch.setenv("VISIONSWEEP_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    repo = get_model_spec("vits16r224").weights.hf_repo
    snapshot = tmp_path / "hf" / ("models--" + repo.replace("/", "--"))
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("abc123")
    (snapshot / "snapshots" / "abc123").mkdir(parents=True)
    cached = snapshot / "snapshots" / "abc123" / "model.safetensors"
    shutil.copyfile(path, cached)
    with pytest.raises(WeightsUnavailableError, match=r"is not a readable safetensors file .*It is the cached "
                                                      "download of vits16r224's weights: delete it"):
        create_model("vits16r224", 2, valid_crop_size=32, valid_resize_size=40)


# --- interrupted saves ---------------------------------------------------------------------------------


def test_next_save_removes_leftovers_of_an_interrupted_one(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("epoch_3.pt.partial", "model.pt.partial"):
        (folder / name).write_bytes(b"PK\x03\x04 half a zip")
    (folder / "notes.txt").write_text("kept")
    _real_checkpoint(folder / "epoch_4.pt")
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_4.pt", "notes.txt"]
    assert load_checkpoint(folder / "epoch_4.pt")["labels"] == ["a", "b"]


def test_an_interrupted_save_keeps_the_previous_checkpoint_and_leaves_nothing(tmp_path, monkeypatch):
    path = _real_checkpoint(tmp_path / "model" / "model.pt")
    before = path.read_bytes()

    def killed_while_writing(content, target):
        pathlib.Path(target).write_bytes(b"PK\x03\x04 half")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        _real_checkpoint(path)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]


def test_a_partial_file_is_never_taken_for_a_checkpoint(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    partial = folder / "model.pt.partial"
    partial.write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(CheckpointError, match=f"{partial} is the unfinished file of an interrupted save.*use model.pt"):
        load_checkpoint(partial)
    with pytest.raises(CheckpointError, match="no trained model at"):
        load_trained_model(folder)  # a folder holding only the leftover has no model


def test_best_model_copy_of_a_sweep_leaves_partial_files_behind(tmp_path):
    model_dir = tmp_path / "trials" / "trial_0000" / "model"
    _real_checkpoint(model_dir / "model.pt")
    (model_dir / "model.pt.partial").write_bytes(b"PK\x03\x04 half a zip")
    row = LeaderboardRow(trial=0, status="completed", score=0.5, best_epoch=0, epochs_run=1, duration_s=1.0,
                         model_dir=str(model_dir))
    copied, _ = copy_best_model(row, tmp_path, "accuracy")
    assert sorted(p.name for p in copied.iterdir()) == ["model.pt"]
