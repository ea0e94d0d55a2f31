"""YOLOv5 wired into visionsweep: the registry (sizes, weights per model_size, the vendor file reader,
freezing), the family (a training step, EMA hooks, multi_scale, unreadable images), a run through ``train``
saving the averaged weights, and prediction (un-letterboxed boxes in the scoring format)."""
from __future__ import annotations

import json
import pickle
import sys
import types
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import visionsweep.training.run as run_module
from visionsweep import api
from visionsweep.checkpoint import load_checkpoint, save_checkpoint
from visionsweep.data.jsonl import read_labeled_data
from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.errors import WeightsUnavailableError
from visionsweep.families.detection import whole_images
from visionsweep.families.selection import family_for
from visionsweep.families.yolo import YoloFamily
from visionsweep.families.yolo.dataset import YoloElementDataset, collate_yolo
from visionsweep.families.yolo.family import yolo_targets_to_pixels
from visionsweep.families.yolo.recipe import DEFAULT_RECIPE
from visionsweep.inference import detection as detection_inference
from visionsweep.inference.model_folder import TrainedModel, load_trained_model
from visionsweep.models import create_model, get_model_spec, list_models
from visionsweep.models.weights import read_state_dict
from visionsweep.models.yolo import BACKBONE_LAYER_GROUPS, build_yolov5
from visionsweep.models.yolo.weights import read_vendor_checkpoint
from visionsweep.settings import resolve_settings
from visionsweep.tasks import Task

OD = Task.OBJECT_DETECTION
CLASSES = ["blue", "red"]
CPU = torch.device("cpu")


def _write_scenes(folder, count=4):
    """PNGs of different sizes on grey, each with a red and (from the second on) a blue rectangle."""
    lines = []
    for i in range(count):
        width, height = 96 + 16 * i, 64
        pixels = np.full((height, width, 3), 128, np.uint8)
        pixels[8:40, 8:40] = (255, 0, 0)
        objects = [{"label": "red", "topX": 8 / width, "topY": 8 / height, "bottomX": 40 / width,
                    "bottomY": 40 / height}]
        if i:
            pixels[24:56, 56:88] = (0, 0, 255)
            objects.append({"label": "blue", "topX": 56 / width, "topY": 24 / height, "bottomX": 88 / width,
                            "bottomY": 56 / height})
        Image.fromarray(pixels).save(folder / f"{i}.png")
        lines.append({"image_url": f"{i}.png", "label": objects})
    jsonl = folder / "data.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return jsonl


def _settings(**values):
    base = {"model_name": "yolov5", "model_size": "small", "pretrained": False, "img_size": 64,
            "training_batch_size": 2, "validation_batch_size": 2, "num_workers": 0, "seed": 0}
    return resolve_settings(OD, {**base, **values})


def _family(tmp_path, **values):
    """The family ``family_for`` picks for ``_settings(**values)``, its loaders on four scenes (training and
    validation alike), and the failures it reports."""
    records = read_labeled_data(_write_scenes(tmp_path), OD).records
    failures = []
    family = family_for(_settings(**values), CLASSES, CPU, lambda found, stage: failures.append((stage, found)))
    assert isinstance(family, YoloFamily)
    loaders = family.training_loaders(records, records)
    return loaders.train, loaders.validation, family, failures


# --- registry and weights ---------------------------------------------------------------------------


def test_registry_builds_the_size_the_settings_name():
    spec = get_model_spec("yolov5")
    assert "yolov5" in list_models(OD) and spec.family == "yolov5"
    assert spec.layer_groups == BACKBONE_LAYER_GROUPS and len(spec.layer_groups) == 10
    assert spec.head_prefixes == ("model.24.m.",)
    model = create_model("yolov5", 1, model_size="small", pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == 7_255_094  # the reference table, small at 1 class
    assert model.detect.nc == 1


def test_one_weights_file_per_model_size():
    spec = get_model_spec("yolov5")
    names = {size: spec.weights_source({"model_size": size}) for size in
             ("small", "medium", "large", "xlarge", "extra_large")}
    assert [names[s].filename for s in ("small", "medium", "large", "xlarge")] == [
        "yolov5s-v3.0.pt", "yolov5m-v3.0.pt", "yolov5l-v3.0.pt", "yolov5x-v3.0.pt"]
    assert names["extra_large"] == names["xlarge"]
    assert names["medium"].url.endswith("/releases/download/v3.0/yolov5m.pt")
    assert spec.weights_source({}).filename == "yolov5m-v3.0.pt"  # medium is the default size


def test_missing_weights_say_where_to_put_them_and_how_to_train_from_scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("VISIONSWEEP_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as caught:
        create_model("yolov5", 3, model_size="large")
    message = str(caught.value)
    assert str(tmp_path / "hub" / "checkpoints" / "yolov5l-v3.0.pt") in message
    assert "pretrained=false" in message and "v3.0/yolov5l.pt" in message


def test_cached_state_dict_loads_everything_but_the_detect_convs(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    coco = build_yolov5(80, "small")
    with torch.no_grad():  # values no fresh model has, statistics included
        for parameter in coco.parameters():
            parameter.uniform_(-1, 1)
        for module in coco.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.uniform_(0.5, 2.0)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(coco.state_dict(), tmp_path / "hub" / "checkpoints" / "yolov5s-v3.0.pt")
    model = create_model("yolov5", 3, model_size="small")
    own, source = model.state_dict(), coco.state_dict()
    assert torch.equal(own["model.0.conv.conv.weight"], source["model.0.conv.conv.weight"])
    assert torch.equal(own["model.23.cv4.bn.running_var"], source["model.23.cv4.bn.running_var"])
    assert torch.equal(own["model.24.anchors"], source["model.24.anchors"])
    assert own["model.24.m.0.weight"].shape[0] == 3 * 8  # 3 anchors x (3 classes + 5): fresh
    # With 80 classes the head would fit, but it stays fresh too: the COCO class order is not the data's.
    full = create_model("yolov5", 80, model_size="small").state_dict()
    assert torch.equal(full["model.9.cv4.conv.weight"], source["model.9.cv4.conv.weight"])
    assert not torch.equal(full["model.24.m.2.weight"], source["model.24.m.2.weight"])


def test_other_release_or_size_is_refused_not_half_loaded(tmp_path):
    medium = tmp_path / "medium.pt"
    torch.save(build_yolov5(80, "medium").state_dict(), medium)
    with pytest.raises(WeightsUnavailableError, match="another model_size: model.0.conv.conv.weight"):
        create_model("yolov5", 2, model_size="small", pretrained_weights=str(medium))
    later = tmp_path / "v4.pt"
    state = build_yolov5(80, "small").state_dict()
    torch.save({k: v for k, v in state.items() if ".cv4." not in k}, later)  # C3 blocks have no cv4
    with pytest.raises(WeightsUnavailableError, match="v4.0 or later"):
        create_model("yolov5", 2, model_size="small", pretrained_weights=str(later))


def _vendor_like_file(path, model):
    """Pickle ``model`` the way the vendor's release files are: a whole half-precision model object whose
    classes live in modules ``models.yolo`` / ``models.common`` (that exist only while saving)."""
    package, common, yolo = (types.ModuleType(n) for n in ("models", "models.common", "models.yolo"))
    saved = {name: sys.modules.get(name) for name in ("models", "models.common", "models.yolo")}
    sys.modules.update({"models": package, "models.common": common, "models.yolo": yolo})
    renamed = {}
    try:
        for module in model.modules():
            cls = type(module)
            if cls.__module__.startswith("visionsweep"):
                home = yolo if cls.__name__ in ("YoloV5", "Detect") else common
                name = "Model" if cls.__name__ == "YoloV5" else cls.__name__
                if cls not in renamed:
                    renamed[cls] = type(name, (cls,), {"__module__": home.__name__})
                    setattr(home, name, renamed[cls])
                module.__class__ = renamed[cls]
        torch.save({"epoch": -1, "best_fitness": np.float64(0.5), "training_results": None,
                    "model": model.half(), "optimizer": None}, path)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def test_vendor_release_file_loads_without_the_vendor_code(tmp_path):
    original = build_yolov5(80, "small")
    expected = {k: v.clone() for k, v in original.state_dict().items()}
    path = tmp_path / "yolov5s.pt"
    _vendor_like_file(path, original)
    with pytest.raises(WeightsUnavailableError):
        read_state_dict(path)  # the safe plain reader cannot unpickle a model object
    state = read_vendor_checkpoint(path)
    assert set(state) == set(expected)
    assert state["model.4.m.0.cv2.conv.weight"].dtype == torch.float32
    assert torch.equal(state["model.4.m.0.cv2.conv.weight"], expected["model.4.m.0.cv2.conv.weight"].half().float())
    model = create_model("yolov5", 4, model_size="small", pretrained_weights=str(path))
    assert torch.equal(model.state_dict()["model.9.cv1.conv.weight"], state["model.9.cv1.conv.weight"])


class _Trap:
    """Unpickling this would call ``_spring`` (a stand-in for any code a hostile file could run)."""

    def __reduce__(self):
        return (_spring, ("called",))


_SPRUNG: list[str] = []


def _spring(value):
    _SPRUNG.append(value)
    return value


def test_vendor_reader_never_calls_what_the_file_names(tmp_path):
    path = tmp_path / "hostile.pt"
    torch.save({"model": _Trap(), "other": _Trap()}, path)
    with pytest.raises(WeightsUnavailableError, match="holds no tensors"):
        read_vendor_checkpoint(path)
    assert _SPRUNG == []
    pickle.loads(pickle.dumps(_Trap()))  # the trap is real: plain unpickling springs it
    assert _SPRUNG == ["called"]


def test_layers_to_freeze_keeps_the_frozen_backbone_unchanged_by_a_step(tmp_path):
    train_loader, _, family, _ = _family(tmp_path)
    model = create_model("yolov5", 2, model_size="small", pretrained=False, layers_to_freeze=3)
    frozen = ("model.0.", "model.1.", "model.2.")
    assert all(p.requires_grad == (not n.startswith(frozen)) for n, p in model.named_parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from visionsweep.models.freezing import train_mode
    train_mode(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    loss, count = family.train_step(model, next(iter(train_loader)))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith(frozen):  # weights and BatchNorm statistics alike
            assert torch.equal(after[key], value), key
    assert not torch.equal(after["model.3.conv.weight"], before["model.3.conv.weight"])
    assert not torch.equal(after["model.4.bn.running_mean"], before["model.4.bn.running_mean"])


# --- the family --------------------------------------------------------------------------------------


def test_train_step_loss_and_the_averaged_weights_hooks(tmp_path):
    train_loader, _, family, _ = _family(tmp_path)
    model = create_model("yolov5", 2, model_size="small", pretrained=False)
    model.train()
    assert family.weights_to_keep(model) is model  # before any step there is no average yet
    batch = next(iter(train_loader))
    assert batch.images.dtype == torch.uint8 and tuple(batch.images.shape) == (2, 3, 64, 64)
    loss, count = family.train_step(model, batch)
    assert count == 2 and loss.requires_grad and 0 < loss.item() < 100
    loss.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= 0.1 * parameter.grad
    family.after_optimizer_step(model)
    kept = family.weights_to_keep(model)
    assert kept is family.ema.module and kept is not model and family.ema.updates == 1
    # One update blends in 1 - d of the new weights: d = 0.9999 (1 - exp(-1 / 2000)), about 5e-4.
    d = 0.9999 * (1 - np.exp(-1 / 2000))
    name = "model.24.m.0.bias"
    old = (dict(model.named_parameters())[name] + 0.1 * dict(model.named_parameters())[name].grad).detach()
    new = dict(model.named_parameters())[name].detach()
    assert torch.allclose(dict(kept.named_parameters())[name], d * old + (1 - d) * new, atol=1e-6)
    metrics = family.training_metrics()
    assert set(metrics) == {"train_box_loss", "train_obj_loss", "train_cls_loss"}
    assert sum(metrics.values()) * 2 == pytest.approx(loss.item(), rel=1e-5)  # the loss is per image x batch size
    assert family.training_metrics() == {}  # reset for the next epoch


def test_multi_scale_feeds_each_batch_a_stride_multiple_around_img_size(tmp_path):
    sizes = []
    for multi_scale in (True, False):
        train_loader, _, family, _ = _family(tmp_path, multi_scale=multi_scale)
        model = create_model("yolov5", 2, model_size="small", pretrained=False).train()
        hook = model.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
        batch = next(iter(train_loader))
        for _ in range(8):
            family.train_step(model, batch)
        hook.remove()
    scaled, fixed = sizes[:8], sizes[8:]
    assert fixed == [(64, 64)] * 8
    assert all(h == w and h % 32 == 0 and 32 <= h <= 96 for h, w in scaled)  # [64/2, 3*64/2], multiples of 32
    assert len(set(scaled)) > 1


def test_unreadable_images_are_reported_not_raised(tmp_path):
    jsonl = _write_scenes(tmp_path, count=2)
    records = read_labeled_data(jsonl, OD).records
    (tmp_path / "1.png").write_bytes(b"not an image any more")
    from visionsweep.families.yolo.pipeline import YoloTrainTransform
    validation = YoloElementDataset(records, CLASSES, 64)
    assert validation[1].image is None and validation[1].failures[0][0] == 1
    batch = collate_yolo([validation[0], validation[1]])
    assert len(batch.images) == 1 and batch.indices.tolist() == [0] and batch.failures[0][0] == 1
    # A batch of unreadable images alone: reported, no detections, and the network is not run on nothing.
    reported = []
    family = YoloFamily(_settings(), CLASSES, CPU, lambda failures, stage: reported.extend(failures))
    unreadable = collate_yolo([validation[1]])
    assert family.detect(build_yolov5(2, "small").eval(), unreadable, "validation").images == []
    assert [index for index, _ in reported] == [1]
    training = YoloElementDataset(records, CLASSES, 64, YoloTrainTransform(64, mosaic=True))
    torch.manual_seed(0)  # the dataset's generator follows the torch seed
    items = [training[0] for _ in range(4)]  # 12 mosaic partners drawn from both images
    assert all(item.image is not None and item.image.shape == (3, 64, 64) for item in items)
    assert {index for item in items for index, _ in item.failures} == {1}


def test_mosaic_closes_for_the_last_epochs_of_the_recipe_at_most_half_the_run(tmp_path):
    records = read_labeled_data(_write_scenes(tmp_path), OD).records

    def first_single_image_epoch(epochs, close):
        family = YoloFamily(_settings(number_of_epochs=epochs), CLASSES, CPU, lambda *_: None,
                            recipe=replace(DEFAULT_RECIPE, close_mosaic_epochs=close))
        dataset = family.training_dataset(records, whole_images(records))
        for epoch in range(1, epochs + 1):  # the loop counts epochs from 1
            family.start_epoch(epoch)
            if dataset.mosaic_closed:
                return epoch
        return None

    assert DEFAULT_RECIPE.close_mosaic_epochs == 15
    assert first_single_image_epoch(30, 15) == 16  # epochs 16 to 30 on single images
    assert first_single_image_epoch(100, 15) == 86
    assert first_single_image_epoch(10, 15) == 6  # at most half the run
    assert first_single_image_epoch(1, 15) is None  # a one-epoch run keeps its mosaics
    assert first_single_image_epoch(30, 0) is None  # the reference's recipe


def test_yolo_targets_to_pixels_by_hand():
    targets = torch.tensor([[1, 1, 0.5, 0.5, 0.2, 0.4], [0, 0, 0.25, 0.5, 0.5, 1.0]])
    first, second = yolo_targets_to_pixels(targets, 2, width=100, height=50)
    assert first["boxes"].tolist() == [[0.0, 0.0, 50.0, 50.0]] and first["labels"].tolist() == [0]
    assert second["boxes"].tolist() == [pytest.approx([40.0, 15.0, 60.0, 35.0])] and second["labels"].tolist() == [1]
    assert not second["iscrowd"].any()


def test_a_run_saves_and_ends_with_the_averaged_weights(tmp_path, monkeypatch):
    captured = {}
    real = run_module.family_for

    def spying_family_for(*args):
        family = real(*args)
        keep = family.weights_to_keep

        def weights_to_keep(model):
            captured["raw"] = {k: v.clone() for k, v in model.state_dict().items()}
            return keep(model)

        family.weights_to_keep = weights_to_keep
        captured["family"] = family
        return family

    monkeypatch.setattr(run_module, "family_for", spying_family_for)
    data = _write_scenes(tmp_path)
    settings = _settings(number_of_epochs=1, validation_metric_type="coco_voc", log_training_metrics="Enable")
    result = run_module.train(OD, data, data, settings=settings, output=tmp_path / "run", progress=False)
    saved = load_checkpoint(result.model_dir / "model.pt")["model_state"]
    assert isinstance(captured["family"], YoloFamily)
    averaged = captured["family"].ema.module.state_dict()
    assert set(saved) == set(averaged)
    assert all(torch.equal(saved[k], averaged[k]) for k in saved)
    assert any(not torch.equal(saved[k], captured["raw"][k]) for k in saved if k.endswith(".weight"))
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_box_loss", "train_obj_loss", "train_cls_loss", "mean_average_precision_train"} <= set(line)
    assert line["validation"]["log_loss"] > 0 and "mean_average_precision" in line["validation"]
    assert result.settings.model_name == "yolov5"


# --- prediction --------------------------------------------------------------------------------------


class _FixedDetector(nn.Module):
    """Eval-mode stand-in for YOLOv5: for every image one box around the centre of the input, half its width
    and height (objectness 0.9, class probabilities 0.2 / 0.8), and one below the score threshold."""

    def forward(self, images):
        height, width = images.shape[-2:]
        row = torch.tensor([[width / 2, height / 2, width / 2, height / 2, 0.9, 0.2, 0.8],
                            [10.0, 10.0, 4.0, 4.0, 0.05, 0.9, 0.1]])
        return row.expand(len(images), 2, 7).clone(), []


def _fixed_model(tmp_path):
    settings = _settings(box_score_thresh=0.1)
    return TrainedModel(task=OD, model_name="yolov5", labels=CLASSES, settings=settings, model=_FixedDetector(),
                        device=CPU, source=tmp_path / "none.pt")


def test_predictions_are_unletterboxed_to_fractions_of_the_original_image(tmp_path):
    lines = []
    for name, size in (("wide.png", (200, 100)), ("tall.png", (100, 200)), ("squat.png", (200, 90))):
        Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(tmp_path / name)
        lines.append({"image_url": name, "label": [
            {"label": "red", "topX": 0.25, "topY": 0.25, "bottomX": 0.75, "bottomY": 0.75}]})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = read_labeled_data(tmp_path / "data.jsonl", OD).records
    out = list(detection_inference.predict_lines(_fixed_model(tmp_path), records, DataReport(source="test")))
    # wide: 200x100 -> 64x32, its own frame (no padding): input (16, 8, 48, 24) is original (50, 25, 150, 75).
    # Had it been padded to 64x64, the centre box (16, 16, 48, 48) would map to (50, 0, 150, 100).
    wide, tall, squat = out
    assert wide["filename"] == "wide.png" and len(wide["boxes"]) == 1
    assert wide["boxes"][0]["label"] == "red" and wide["boxes"][0]["score"] == pytest.approx(0.72)
    assert list(wide["boxes"][0]["box"].values()) == pytest.approx([0.25, 0.25, 0.75, 0.75])
    # tall: 100x200 -> 32x64, frame 32x64: input (8, 16, 24, 48) is original (25, 50, 75, 150)
    assert list(tall["boxes"][0]["box"].values()) == pytest.approx([0.25, 0.25, 0.75, 0.75])
    # squat: 200x90 -> 64x29, frame 64x32 with 1 row of padding above: input (16, 8, 48, 24) is
    # original (16 / 0.32, (8 - 1) / (29 / 90), ...) = (50, 21.72, 150, 71.38)
    assert list(squat["boxes"][0]["box"].values()) == pytest.approx([0.25, 7 / 29, 0.75, 23 / 29])
    metrics = detection_inference.evaluate_model(_fixed_model(tmp_path), records[:2], DataReport(source="test"))
    # Scored in original pixels: both boxes are hits.
    red = metrics["per_label_metrics"]["red"]
    assert (red["precision"], red["recall"]) == (pytest.approx(1.0), pytest.approx(1.0))


def test_predict_from_a_model_folder_writes_the_scoring_format(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, size in enumerate(((90, 60), (50, 70))):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), np.uint8)).save(
            folder / f"{i}.png")
    settings = _settings()
    model = create_model("yolov5", 2, model_size="small", pretrained=False)
    save_checkpoint(tmp_path / "model" / "model.pt", model=model, task=OD.value, model_name="yolov5",
                    labels=CLASSES, settings=settings.to_dict(), epoch=0, score=None, metrics={})
    assert api._format(OD) is detection_inference
    trained = load_trained_model(tmp_path / "model", device="cpu")
    assert isinstance(family_for(trained.settings, trained.labels, trained.device, lambda f, s: None), YoloFamily)
    result = api.predict(tmp_path / "model", folder, output=tmp_path / "p.jsonl",
                         settings={"box_score_thresh": 0.005})
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert result.images == 2 and [line["filename"] for line in lines] == [str(folder / "0.png"),
                                                                           str(folder / "1.png")]
    assert any(line["boxes"] for line in lines)  # an untrained head still scores ~0.01 on its largest anchors
    for line in lines:
        assert set(line) == {"filename", "boxes"} and len(line["boxes"]) <= 300
        scores = [item["score"] for item in line["boxes"]]
        assert scores == sorted(scores, reverse=True) and all(s > 0.005 for s in scores)
        for item in line["boxes"]:
            assert list(item["box"]) == ["topX", "topY", "bottomX", "bottomY"] and item["label"] in CLASSES
            x0, y0, x1, y1 = item["box"].values()
            assert 0.0 <= x0 <= x1 <= 1.0 and 0.0 <= y0 <= y1 <= 1.0


def test_prediction_reads_images_without_labels():
    record = ImageRecord(image_path=__import__("pathlib").Path("missing.png"), image_url="missing.png")
    item = YoloElementDataset([record], CLASSES, 64)[0]
    assert item.image is None and "missing.png" in item.failures[0][1]

