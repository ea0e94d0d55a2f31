"""Classification models: builds, pretrained weights from file / cache / download, freezing."""
from __future__ import annotations

from dataclasses import replace

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from conftest import slow_variants
from visionsweep.errors import SettingsError, WeightsUnavailableError
from visionsweep.models import create_model, get_model_spec, list_models, registry
from visionsweep.models.freezing import train_mode
from visionsweep.models.weights import WeightsSource
from visionsweep.tasks import Task

# Azure's classification model names (docs/models.md)
CLASSIFICATION_MODELS = (
    "mobilenetv2", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnest50", "resnest101", "seresnext", "vits16r224", "vitb16r224", "vitl16r224",
)

SMALL = {"pretrained": False, "valid_crop_size": 64, "valid_resize_size": 72, "train_crop_size": 64}


def test_every_classification_model_is_registered():
    assert sorted(list_models(Task.CLASSIFICATION)) == sorted(CLASSIFICATION_MODELS)


@pytest.mark.parametrize("name", slow_variants(CLASSIFICATION_MODELS, {"vitl16r224"}))
def test_forward_and_backward(name):
    # Full configurations; ViT-L takes a few seconds on 2 CPU cores at 32 pixels, so it runs in the slow tier.
    model = create_model(name, 5, **{**SMALL, "valid_crop_size": 32, "train_crop_size": 32})
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5)
    logits.logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def _imagenet_resnet18(path):
    reference = torchvision.models.resnet18(num_classes=1000)
    torch.save(reference.state_dict(), path)
    return reference


def _assert_backbone_loaded(model, reference):
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.fc.weight.shape == (3, 512)  # a fresh head for 3 classes


def test_pretrained_from_explicit_file(tmp_path, offline_cache):
    reference = _imagenet_resnet18(tmp_path / "mine.pth")
    model = create_model("resnet18", 3, pretrained_weights=str(tmp_path / "mine.pth"))
    _assert_backbone_loaded(model, reference)


def test_pretrained_from_torch_cache(offline_cache):
    source = get_model_spec("resnet18").weights
    assert source.cache_path() == offline_cache / "torch" / "hub" / "checkpoints" / source.filename
    source.cache_path().parent.mkdir(parents=True)
    reference = _imagenet_resnet18(source.cache_path())
    _assert_backbone_loaded(create_model("resnet18", 3), reference)


def test_pretrained_download_into_cache(tmp_path, offline_cache, monkeypatch):
    monkeypatch.delenv("VISIONSWEEP_OFFLINE")
    reference = _imagenet_resnet18(tmp_path / "published.pth")
    source = WeightsSource(filename="published.pth", url=(tmp_path / "published.pth").as_uri())
    monkeypatch.setitem(registry._REGISTRY, "resnet18", replace(get_model_spec("resnet18"), weights=source))
    model = create_model("resnet18", 3)
    _assert_backbone_loaded(model, reference)
    assert source.cache_path().is_file()  # downloaded into the torch cache


def test_clear_error_when_no_weights(offline_cache):
    with pytest.raises(WeightsUnavailableError) as caught:
        create_model("resnet18", 3)
    message = str(caught.value)
    assert str(offline_cache / "torch" / "hub" / "checkpoints") in message
    assert "pretrained=false" in message and "pretrained_weights" in message
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_model("resnet18", 3, pretrained_weights="/no/such/file.pth")


def test_weights_of_another_architecture_are_refused(tmp_path, offline_cache):
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mobile.pth")
    with pytest.raises(WeightsUnavailableError, match="shares no parameter"):
        create_model("resnet18", 3, pretrained_weights=str(tmp_path / "mobile.pth"))


def test_vit_from_hugging_face_cache_with_resampled_position_embedding(offline_cache):
    repo = get_model_spec("vits16r224").weights.hf_repo
    snapshot = offline_cache / "hf" / ("models--" + repo.replace("/", "--"))
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("abc123")
    (snapshot / "snapshots" / "abc123").mkdir(parents=True)
    reference = timm.create_model("vit_small_patch16_224", num_classes=1000)
    save_file(reference.state_dict(), str(snapshot / "snapshots" / "abc123" / "model.safetensors"))

    model = create_model("vits16r224", 3, valid_crop_size=32, valid_resize_size=40)
    assert torch.equal(model.patch_embed.proj.weight, reference.patch_embed.proj.weight)
    assert torch.equal(model.cls_token, reference.cls_token)
    assert model.pos_embed.shape == (1, 1 + 2 * 2, 384)  # 32 px = 2 x 2 patches, resampled from 14 x 14
    assert torch.allclose(model.pos_embed[:, 0], reference.pos_embed[:, 0])  # the class token's entry is kept


def _step(model, size=64):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    train_mode(model)
    model(torch.randn(4, 3, size, size)).sum().backward()
    optimizer.step()


def test_freezing_keeps_frozen_groups_and_their_batchnorm_statistics():
    model = create_model("resnet18", 3, layers_to_freeze=2, **SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model)
    after = model.state_dict()
    for name in before:
        frozen = name.startswith(("conv1.", "bn1.", "layer1."))
        changed = not torch.equal(before[name], after[name])
        if frozen:
            assert not changed, f"{name} is frozen but changed"
    assert not torch.equal(before["layer2.0.conv1.weight"], after["layer2.0.conv1.weight"])
    assert not torch.equal(before["layer2.0.bn1.running_mean"], after["layer2.0.bn1.running_mean"])


def test_vit_freezing_never_freezes_tokens():
    model = create_model("vits16r224", 3, layers_to_freeze=13, valid_crop_size=32, valid_resize_size=40,
                         pretrained=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"cls_token", "pos_embed", "head.weight", "norm.weight"} <= trainable
    assert not any(n.startswith(("patch_embed.", "blocks.")) for n in trainable)


@pytest.mark.parametrize("name, groups", [("resnet50", 5), ("mobilenetv2", 19), ("seresnext", 5),
                                          ("resnest50", 5), ("vitb16r224", 13)])
def test_layer_group_counts_and_too_many(name, groups):
    assert len(get_model_spec(name).layer_groups) == groups
    with pytest.raises(SettingsError, match=f"has {groups} layer groups"):
        create_model(name, 3, layers_to_freeze=groups + 1, **SMALL)


def test_every_layer_group_matches_parameters():
    for name in CLASSIFICATION_MODELS:
        with torch.device("meta"):  # names only: no memory, no initialisation
            model = create_model(name, 3, **SMALL)
        names = [n for n, _ in model.named_parameters()]
        for group in get_model_spec(name).layer_groups:
            assert any(n.startswith(group) for n in names), f"{name}: group {group} matches no parameter"
