"""The twelve classification models: torchvision ResNets and MobileNetV2, timm ResNeSt, SE-ResNeXt and ViT.

Every builder returns a network whose classifier has ``num_classes`` outputs (logits); the same
network serves multi-class (softmax) and multi-label (sigmoid) training. Pretrained weights are
ImageNet weights of the same architecture. Each convolutional model names the module whose last child
guided Grad-CAM explains (``gradcam_module``: the last block of ``layer4``, or ``features``' last layer);
the ViTs have none.
"""
from __future__ import annotations

from typing import Any

import timm
import torchvision.models as tvm
from torch import nn

from visionsweep.models.open_models import resample_position_embedding
from visionsweep.models.registry import register_model
from visionsweep.models.weights import WeightsSource

_RESNET_GROUPS = (("conv1.", "bn1."), ("layer1.",), ("layer2.",), ("layer3.",), ("layer4.",))
_MOBILENET_GROUPS = tuple((f"features.{i}.",) for i in range(19))
# The position embedding and class token belong to no group: they are never frozen.
_VIT_GROUPS = (("patch_embed.",), *((f"blocks.{i}.",) for i in range(12)))


def _torchvision(weights: Any) -> WeightsSource:
    return WeightsSource(filename=weights.url.rsplit("/", 1)[-1], url=weights.url)


def _timm(name: str) -> WeightsSource:
    return WeightsSource(filename="model.safetensors", hf_repo=timm.models.get_pretrained_cfg(name).hf_hub_id)


def _resnet(name: str, weights: Any):
    def register(builder):
        return register_model(name, layer_groups=_RESNET_GROUPS, weights=_torchvision(weights),
                              head_prefixes=("fc.",), gradcam_module="layer4")(builder)
    return register


@_resnet("resnet18", tvm.ResNet18_Weights.IMAGENET1K_V1)
def resnet18(num_classes: int) -> nn.Module:
    return tvm.resnet18(num_classes=num_classes)


@_resnet("resnet34", tvm.ResNet34_Weights.IMAGENET1K_V1)
def resnet34(num_classes: int) -> nn.Module:
    return tvm.resnet34(num_classes=num_classes)


@_resnet("resnet50", tvm.ResNet50_Weights.IMAGENET1K_V1)
def resnet50(num_classes: int) -> nn.Module:
    return tvm.resnet50(num_classes=num_classes)


@_resnet("resnet101", tvm.ResNet101_Weights.IMAGENET1K_V1)
def resnet101(num_classes: int) -> nn.Module:
    return tvm.resnet101(num_classes=num_classes)


@_resnet("resnet152", tvm.ResNet152_Weights.IMAGENET1K_V1)
def resnet152(num_classes: int) -> nn.Module:
    return tvm.resnet152(num_classes=num_classes)


@register_model("mobilenetv2", layer_groups=_MOBILENET_GROUPS,
                weights=_torchvision(tvm.MobileNet_V2_Weights.IMAGENET1K_V1), head_prefixes=("classifier.",),
                gradcam_module="features")
def mobilenetv2(num_classes: int) -> nn.Module:
    return tvm.mobilenet_v2(num_classes=num_classes)


# ResNeSt-50/101 as in the resnest package: deep stem and average-pool downsampling (timm's "d" and "e").
@register_model("resnest50", layer_groups=_RESNET_GROUPS,
                weights=_timm("resnest50d"), head_prefixes=("fc.",), gradcam_module="layer4")
def resnest50(num_classes: int) -> nn.Module:
    return timm.create_model("resnest50d", num_classes=num_classes)


@register_model("resnest101", layer_groups=_RESNET_GROUPS,
                weights=_timm("resnest101e"), head_prefixes=("fc.",), gradcam_module="layer4")
def resnest101(num_classes: int) -> nn.Module:
    return timm.create_model("resnest101e", num_classes=num_classes)


# SE-ResNeXt-50 32x4d. timm names the stem conv1/bn1 where the reference's library said layer0; timm's
# global pooling also takes any input size, where the reference was fixed to 224.
@register_model("seresnext", layer_groups=_RESNET_GROUPS,
                weights=_timm("seresnext50_32x4d"), head_prefixes=("fc.",), gradcam_module="layer4")
def seresnext(num_classes: int) -> nn.Module:
    return timm.create_model("seresnext50_32x4d", num_classes=num_classes)


def _vit(name: str, timm_name: str):
    def register(builder):
        return register_model(name, layer_groups=_VIT_GROUPS,
                              weights=_timm(timm_name), head_prefixes=("head.",),
                              adapt_pretrained=resample_position_embedding, fixed_input_size=True)(builder)
    return register


@_vit("vits16r224", "vit_small_patch16_224")
def vits16r224(num_classes: int, valid_crop_size: int = 224) -> nn.Module:
    """ViT-S/16; the position embedding is built for ``valid_crop_size`` (train and valid crops are equal)."""
    return timm.create_model("vit_small_patch16_224", num_classes=num_classes, img_size=valid_crop_size)


@_vit("vitb16r224", "vit_base_patch16_224")
def vitb16r224(num_classes: int, valid_crop_size: int = 224) -> nn.Module:
    """ViT-B/16; the position embedding is built for ``valid_crop_size``."""
    return timm.create_model("vit_base_patch16_224", num_classes=num_classes, img_size=valid_crop_size)


@_vit("vitl16r224", "vit_large_patch16_224")
def vitl16r224(num_classes: int, valid_crop_size: int = 224) -> nn.Module:
    """ViT-L/16; the position embedding is built for ``valid_crop_size``."""
    return timm.create_model("vit_large_patch16_224", num_classes=num_classes, img_size=valid_crop_size)
