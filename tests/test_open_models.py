"""Classification models beyond the catalog (timm names, Hugging Face checkpoints), the weights
commands, and the check that stops a run or a sweep at once when pretrained files are missing.

Nothing downloads: timm models are built from timm's registry, the Hugging Face model from a tiny
config this file writes, and the weights are files the tests make (``weights import`` puts them in
caches that the ``offline_cache`` fixture points at empty folders).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import TINY_SETTINGS, write_color_dataset
from jsonl_helpers import read_lines
from visionsweep import cli, predict, train
from visionsweep.errors import SettingsError, WeightsUnavailableError
from visionsweep.models import create_model, get_model_spec, open_models, registry
from visionsweep.models.weight_store import MANIFEST, download_weights, import_weights, sha256_of
from visionsweep.models.weights import WeightsSource
from visionsweep.settings import resolve_settings
from visionsweep.sweep.job import load_job
from visionsweep.sweep.runner import run_sweep
from visionsweep.tasks import Task

HF_MODEL = "acme/tiny-vit"
# The run's own crop sizes come from the model's config, so the tiny settings leave them out.
OPEN_SETTINGS = {k: v for k, v in TINY_SETTINGS.items() if not k.endswith(("_crop_size", "_resize_size"))}


def _tiny_vit_files(folder, *, size=32):
    """A Hugging Face checkpoint's three files for a two-block ViT of ``size`` px, and its reference model."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                       image_size=size, patch_size=8, num_labels=5)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(config.to_json_string())
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "size": {"height": size, "width": size}}))
    reference = ViTForImageClassification(config)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(folder / "model.safetensors"))
    return [folder / name for name in ("config.json", "preprocessor_config.json", "model.safetensors")], reference


# --- timm ---------------------------------------------------------------------------------------------


def test_a_timm_name_is_a_classification_model_with_its_own_config(offline_cache):
    for name in ("test_convnext", "timm/test_convnext"):
        settings = resolve_settings(Task.CLASSIFICATION, {"model_name": name})
        # timm's pretrained config of test_convnext: 160 px, crop_pct 0.95, mean and std 0.5
        assert (settings.valid_crop_size, settings.valid_resize_size, settings.train_crop_size) == (160, 168, 160)
        spec = get_model_spec(name)
        assert (spec.mean, spec.std, spec.head_prefixes) == ((0.5,) * 3, (0.5,) * 3, ("head.fc.",))
        assert spec.layer_groups == (("stem.",), ("stages.0.",), ("stages.1.",), ("stages.2.",), ("stages.3.",))
    model = create_model("test_convnext", 3, pretrained=False, layers_to_freeze=2)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith(("stem.", "stages.0.")) for name in frozen)
    assert all(p.requires_grad for name, p in model.named_parameters() if name.startswith("stages.1."))
    with pytest.raises(SettingsError, match=r"layers_to_freeze: got 6; test_convnext has 5 layer groups"):
        create_model("test_convnext", 3, pretrained=False, layers_to_freeze=6)


def test_unknown_names_and_other_tasks_are_refused_with_the_way_out():
    with pytest.raises(SettingsError) as caught:
        resolve_settings(Task.CLASSIFICATION, {"model_name": "convnext_tinyy"})
    assert "any timm model name" in str(caught.value) and "<org>/<name>" in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        resolve_settings(Task.OBJECT_DETECTION, {"model_name": "convnext_tiny"})
    assert "allowed for image_object_detection: yolov5" in str(caught.value)
    with pytest.raises(SettingsError, match="timm has no model 'convnext_tinyy'; did you mean convnext_tiny"):
        get_model_spec("timm/convnext_tinyy")


def test_a_timm_vit_trains_at_one_size_and_loads_its_weights_resampled(offline_cache):
    reference = timm.create_model("test_vit", num_classes=1000)  # the published file holds 1000 classes at 160 px
    path = offline_cache / "model.safetensors"
    save_file(reference.state_dict(), str(path))
    (stored,) = import_weights([path], model="test_vit")
    assert stored == get_model_spec("test_vit").weights.cached_file()

    model = create_model("test_vit", 3, valid_crop_size=64, valid_resize_size=72)
    assert torch.equal(model.patch_embed.proj.weight, reference.patch_embed.proj.weight)
    assert model.pos_embed.shape[1] == 1 + (64 // 16) ** 2  # resampled from the 10 x 10 grid
    assert model.head.weight.shape == (3, reference.head.weight.shape[1])
    with pytest.raises(SettingsError, match="train_crop_size: test_vit needs train_crop_size == valid_crop_size"):
        create_model("test_vit", 3, valid_crop_size=64, valid_resize_size=72, train_crop_size=48)


def test_a_timm_model_trains_predicts_and_exports_with_its_normalisation(tmp_path):
    data = write_color_dataset(tmp_path / "data")
    result = train(Task.CLASSIFICATION, data, settings={**TINY_SETTINGS, "model_name": "timm/test_convnext",
                                                        "number_of_epochs": 1, "export_onnx": True,
                                                        "layers_to_freeze": 1},
                   output=tmp_path / "run", progress=False)
    assert result.status == "completed"
    from visionsweep.exporting.metadata import OnnxMetadata

    metadata = OnnxMetadata.of_file(result.model_dir / "model.onnx")
    assert metadata.normalization == {"mean": [0.5] * 3, "std": [0.5] * 3}  # timm's config, not ImageNet's
    torch_lines = read_lines(predict(result.model_dir, data, output=tmp_path / "torch.jsonl").output)
    onnx_lines = read_lines(predict(result.model_dir, data, output=tmp_path / "onnx.jsonl", runtime="onnxruntime").output)
    assert np.allclose([line["probs"] for line in torch_lines], [line["probs"] for line in onnx_lines], atol=1e-4)


def test_models_search_lists_timm_names(capsys):
    assert cli.main(["models", "--search", "convnext_ti"]) == 0
    names = capsys.readouterr().out.split()
    assert "convnext_tiny" in names and all("convnext_ti" in name for name in names)


# --- Hugging Face -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_hugging_face_checkpoint_trains_predicts_and_exports_anywhere(offline_cache, tmp_path):
    files, reference = _tiny_vit_files(tmp_path / "download")
    assert cli.main(["weights", "import", *map(str, files), "--model", HF_MODEL]) == 0
    model = create_model(HF_MODEL, 3)
    assert torch.equal(model.model.vit.embeddings.patch_embeddings.projection.weight,
                       reference.vit.embeddings.patch_embeddings.projection.weight)
    assert model.model.classifier.out_features == 3
    with pytest.raises(SettingsError, match="does not know the layer groups of acme/tiny-vit"):
        create_model(HF_MODEL, 3, layers_to_freeze=1)

    data = write_color_dataset(tmp_path / "data")
    result = train(Task.CLASSIFICATION, data, settings={**OPEN_SETTINGS, "model_name": HF_MODEL, "pretrained": True,
                                                        "number_of_epochs": 1, "export_onnx": True},
                   output=tmp_path / "run", progress=False)
    assert (result.settings.valid_crop_size, result.settings.valid_resize_size) == (32, 32)  # its preprocessor's

    # The model folder and its ONNX file predict without the Hugging Face cache: both keep the config.
    shutil.rmtree(offline_cache / "hf")
    open_models._SPECS.clear()
    onnx_lines = read_lines(predict(result.model_dir / "model.onnx", data, output=tmp_path / "onnx.jsonl").output)
    open_models._SPECS.clear()
    torch_lines = read_lines(predict(result.model_dir, data, output=tmp_path / "torch.jsonl").output)
    assert len(torch_lines) == len(onnx_lines) == 12
    assert np.allclose([line["probs"] for line in torch_lines], [line["probs"] for line in onnx_lines], atol=1e-4)


def test_a_hugging_face_model_without_its_config_says_how_to_get_it(offline_cache):
    with pytest.raises(WeightsUnavailableError) as caught:
        create_model(HF_MODEL, 3, pretrained=False)
    message = str(caught.value)
    assert "no config for acme/tiny-vit" in message and "visionsweep weights download acme/tiny-vit" in message


# --- the weights commands -----------------------------------------------------------------------------


@pytest.fixture
def published_resnet18(offline_cache, monkeypatch):
    """resnet18's weights published at a file:// URL whose name carries the file's SHA-256 prefix, as
    torchvision's do."""
    import torchvision

    upstream = offline_cache / "upstream"
    upstream.mkdir()
    staging = upstream / "staging.pth"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), staging)
    published = upstream / f"resnet18-{sha256_of(staging)[:8]}.pth"
    staging.rename(published)
    source = WeightsSource(filename=published.name, url=published.as_uri())
    monkeypatch.setitem(registry._REGISTRY, "resnet18", replace(get_model_spec("resnet18"), weights=source))
    return source


def test_weights_download_into_a_folder_then_import_checks_the_hashes(published_resnet18, offline_cache,
                                                                       monkeypatch, capsys):
    monkeypatch.delenv("VISIONSWEEP_OFFLINE")  # the connected machine
    carried = offline_cache / "carried"
    (downloaded,) = download_weights(["resnet18"], carried)
    manifest = json.loads((carried / MANIFEST).read_text())
    assert manifest["files"][0]["sha256"] == sha256_of(downloaded)
    assert published_resnet18.cached_file() is None  # --into leaves the caches alone

    monkeypatch.setenv("VISIONSWEEP_OFFLINE", "1")  # the offline machine
    assert cli.main(["weights", "list", "resnet18"]) == 0
    assert "\tmissing\t" in capsys.readouterr().out
    assert cli.main(["weights", "import", str(carried)]) == 0
    assert published_resnet18.cached_file() is not None
    assert cli.main(["weights", "list", "resnet18"]) == 0
    assert "\tpresent\t" in capsys.readouterr().out
    create_model("resnet18", 3)  # loads from the cache

    with downloaded.open("r+b") as stream:  # one byte changed in transit
        stream.seek(-1, 2)
        last = stream.read(1)
        stream.seek(-1, 2)
        stream.write(bytes([last[0] ^ 1]))
    with pytest.raises(WeightsUnavailableError, match="its SHA-256 is .*, not "):
        import_weights([carried])
    with pytest.raises(WeightsUnavailableError, match="does not start with"):  # the published name's hash
        import_weights([downloaded])
    with pytest.raises(SettingsError, match="--sha256: the hash of one file"):  # never silently unused
        import_weights([carried], sha256=sha256_of(downloaded))

    # A crafted manifest cannot name files outside its folder, nor cache paths outside the caches.
    entry = manifest["files"][0]
    for crafted in ({**entry, "file": "../outside.pth"}, {**entry, "hf_repo": "../..", "url": None},
                    {**entry, "filename": "../../escape.pth"}):
        (carried / MANIFEST).write_text(json.dumps({"format": manifest["format"], "files": [crafted]}))
        with pytest.raises(WeightsUnavailableError, match="is not a manifest"):
            import_weights([carried])
    assert not (offline_cache / "escape.pth").exists()


def test_weights_import_refuses_files_that_do_not_load_safely(offline_cache, tmp_path, monkeypatch, capfd):
    class Payload:
        def __reduce__(self):
            return (print, ("payload ran",))

    damaged = tmp_path / "model.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsUnavailableError):
        import_weights([damaged], model="test_vit")
    assert get_model_spec("test_vit").weights.cached_file() is None

    staging = tmp_path / "staging.pth"
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, staging)
    published = staging.rename(tmp_path / f"resnet18-{sha256_of(staging)[:8]}.pth")  # its hash matches its name
    source = WeightsSource(filename=published.name, url=published.as_uri())
    monkeypatch.setitem(registry._REGISTRY, "resnet18", replace(get_model_spec("resnet18"), weights=source))
    with pytest.raises(WeightsUnavailableError):
        import_weights([published])
    assert "payload ran" not in capfd.readouterr().out and source.cached_file() is None
    with pytest.raises(WeightsUnavailableError, match="is not the name of a catalog model's weights file"):
        import_weights([damaged])


# --- fail fast ----------------------------------------------------------------------------------------


def test_an_offline_sweep_with_missing_weights_stops_before_any_trial(offline_cache, tmp_path):
    (tmp_path / "train.jsonl").write_text('{"image_url": "a.jpg", "label": "can"}\n')
    job = tmp_path / "job.yml"
    job.write_text("type: automl\ntask: image_classification\ntraining_data: {path: train.jsonl, type: uri_file}\n"
                   "limits: {max_trials: 10}\nsweep: {sampling_algorithm: random}\n"
                   "search_space:\n  - model_name: \"choice('resnet18', 'mobilenetv2')\"\n"
                   "    learning_rate: 'uniform(0.001, 0.01)'\n")
    with pytest.raises(SettingsError) as caught:
        run_sweep(load_job(job), tmp_path / "sweep", devices=[], progress=lambda line: None)
    message = str(caught.value)
    assert "pretrained files of 2 model(s) are not in the cache and downloads are off" in message
    assert "resnet18 weights" in message and "mobilenetv2 weights" in message
    assert "visionsweep weights download resnet18 mobilenetv2 --into DIR" in message
    assert "pretrained: false" in message and str(offline_cache / "torch") in message
    assert not (tmp_path / "sweep").exists()  # no study, no trial


def test_train_with_missing_weights_stops_before_building_a_model(offline_cache, tmp_path, monkeypatch):
    import visionsweep.training.run as run

    built = []
    monkeypatch.setattr(run, "build_model", lambda *args, **kwargs: built.append(1))
    data = write_color_dataset(tmp_path / "data")
    with pytest.raises(WeightsUnavailableError, match="resnet18 weights: .*resnet18-f37072fd.pth"):
        train(Task.CLASSIFICATION, data, settings={**TINY_SETTINGS, "pretrained": True}, output=tmp_path / "run",
              progress=False)
    assert not built and not (tmp_path / "run" / "model").exists()
