"""The R-CNN family of object detectors: Faster R-CNN on ResNet-18/34/50/101/152 with FPN, RetinaNet
on ResNet-50 with FPN, and (instance segmentation) Mask R-CNN on ResNet-18/34/50/101/152 with FPN, built
from torchvision parts the way the reference builds them (spec 2.1-2.6).

Contract of every model built here:

* Input: a list of (3, H, W) float tensors that are ALREADY resized (``min_size`` / ``max_size`` rule)
  and normalised with the ImageNet mean and std, as ``visionsweep.families.rcnn.transforms.prepare_image``
  does in the data loader (the reference moved both steps out of the model). The model only pads
  the batch to a common size divisible by 32.
* Training mode, with targets ``{"boxes": (N, 4) float x0, y0, x1, y1 pixels of the input frame,
  "labels": (N,) int64 model class indices}``: a dict of losses, whose plain sum is the training loss.
* Eval mode: per image ``{"boxes": (K, 4), "labels": (K,), "scores": (K,)}``, boxes in pixels of the
  input frame (clipped to it), at most ``box_detections_per_img``, scores above ``box_score_thresh``,
  after class-wise NMS at ``nms_iou_thresh``.
* Mask R-CNN also takes ``"masks": (N, H, W) uint8`` (1 inside the object) in training targets, and
  returns ``"masks": (K, 1, H, W)`` float mask probabilities pasted into the input frame in eval mode.

Class indices: Faster and Mask R-CNN reserve index 0 for the background, so dataset class ``i`` is model label
``i + 1`` and the network has one class more than the data; RetinaNet has no background class (model
label ``i`` is class ``i``). ``label_offset(model_name)`` says which.

The ResNet trunk uses frozen batch norm throughout (no statistics or affine updates, also when training
from scratch); by default ``conv1`` and ``layer1`` are frozen and ``layer2``-``layer4`` train. A set
``layers_to_freeze`` k freezes exactly the first k of the groups conv1, layer1 ... layer4 and makes every
other parameter trainable (0 freezes nothing).

Pretrained weights: the ResNet-50 detectors start from torchvision's COCO weights (only the
class-dependent last layer is fresh; for Mask R-CNN also the whole mask predictor, as the reference
replaces it). For ResNet-18/34/101/152 no public COCO detector exists (the reference's were trained by
the vendor), so they start from ImageNet weights of the backbone (the same files as the classification
ResNets) and the FPN and heads start fresh.

Beyond the reference: ``fasterrcnn_resnet50_fpn_v2`` and ``maskrcnn_resnet50_fpn_v2``, torchvision's own
v2 builders (Li et al., "Benchmarking Detection Transfer Learning with Vision Transformers": ordinary
batch norm in the trunk and heads, a two-convolution RPN head, a four-convolution box head) with their
COCO weights, the same settings, class convention, heads replaced and default freezing as the v1 models.
Their trunk's batch norm is trainable (``bn1`` has parameters, so it joins the ``conv1`` layer group) and
keeps eps 1e-5, as the v2 weights were trained.
"""
from __future__ import annotations

import copy
from typing import Any

import torchvision.models as tvm
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone as _torchvision_resnet_fpn
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops.misc import FrozenBatchNorm2d

from visionsweep.models.inputs import IMAGENET_MEAN, IMAGENET_STD
from visionsweep.models.registry import register_model
from visionsweep.models.weights import WeightsSource

RESNET_DEPTHS = (18, 34, 50, 101, 152)
# layers_to_freeze groups of every R-CNN model (spec 2.12, "resnet_backbone").
RESNET_BACKBONE_GROUPS = tuple((f"backbone.body.{stage}.",) for stage in ("conv1", "layer1", "layer2", "layer3",
                                                                           "layer4"))
# Without layers_to_freeze, the reference trains the last three stages: layer2, layer3, layer4.
DEFAULT_TRAINABLE_STAGES = 3
FASTER_RCNN_HEAD = ("roi_heads.box_predictor.",)
# The reference replaces the whole mask predictor (its upsampling deconvolution too), not only the logits.
MASK_RCNN_HEAD = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.")
# Hidden width of the mask predictor; the reference's setting for it is never read, so it is always 256.
MASK_PREDICTOR_HIDDEN = 256
RETINANET_HEAD = ("head.classification_head.cls_logits.",)
# The v2 models' trunk has ordinary batch norm, so the stem's bn1 has parameters; it belongs with conv1.
RESNET_V2_BACKBONE_GROUPS = (("backbone.body.conv1.", "backbone.body.bn1."),) + RESNET_BACKBONE_GROUPS[1:]

_LABEL_OFFSETS: dict[str, int] = {}


def label_offset(model_name: str) -> int:
    """The model label of dataset class 0: 1 for Faster and Mask R-CNN (0 is the background), 0 for
    RetinaNet.

    Raises ``KeyError`` for a model that is not an R-CNN-family detector.
    """
    return _LABEL_OFFSETS[model_name]


def resnet_fpn_backbone(depth: int, *, trainable_stages: int, returned_stages: tuple[int, ...] = (1, 2, 3, 4),
                        extra_blocks: nn.Module | None = None) -> BackboneWithFPN:
    """A ResNet trunk with frozen batch norm and a 256-channel FPN over ``returned_stages``.

    ``trainable_stages`` (0-5) counts from layer4 backwards (3: layer2-layer4 train). The FPN's input
    channels are [64, 128, 256, 512] for ResNet-18/34 and [256, 512, 1024, 2048] for 50/101/152 (per
    returned stage). Without ``extra_blocks`` a max-pooled extra level is added (Faster R-CNN's "pool").
    The last convolution of every residual branch starts at zero (see below).
    """
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"ResNet depth must be one of {RESNET_DEPTHS}, got {depth}")
    backbone = _torchvision_resnet_fpn(backbone_name=f"resnet{depth}", weights=None, norm_layer=FrozenBatchNorm2d,
                                       trainable_layers=trainable_stages, returned_layers=list(returned_stages),
                                       extra_blocks=extra_blocks)
    # Frozen batch norm with no weights loaded is the identity, so nothing keeps a deep trunk's activations
    # in range when training from scratch (ResNet-101 losses start in the tens of thousands). Zeroing the
    # last convolution of every residual branch makes each block start as the identity, as Fixup does;
    # pretrained weights overwrite these zeros.
    for module in backbone.body.modules():
        if isinstance(module, BasicBlock):
            nn.init.zeros_(module.conv2.weight)
        elif isinstance(module, Bottleneck):
            nn.init.zeros_(module.conv3.weight)
    return backbone


def build_faster_rcnn(depth: int, num_classes: int, *, min_size: int = 600, max_size: int = 1333,
                      box_score_thresh: float = 0.3, nms_iou_thresh: float = 0.5, box_detections_per_img: int = 100,
                      trainable_stages: int = DEFAULT_TRAINABLE_STAGES) -> FasterRCNN:
    """Faster R-CNN ResNet-``depth`` FPN for ``num_classes`` dataset classes (the model gets one more,
    the background). Everything else is torchvision's default configuration (anchors 32-512 x ratios
    0.5/1/2, RPN and RoI sampling, RoIAlign 7x7, a 1024-wide two-layer box head)."""
    model = FasterRCNN(resnet_fpn_backbone(depth, trainable_stages=trainable_stages), num_classes=num_classes + 1,
                       min_size=min_size, max_size=max_size, box_score_thresh=box_score_thresh,
                       box_nms_thresh=nms_iou_thresh, box_detections_per_img=box_detections_per_img)
    return _prepared_outside(model, depth)


def build_mask_rcnn(depth: int, num_classes: int, *, min_size: int = 600, max_size: int = 1333,
                    box_score_thresh: float = 0.3, nms_iou_thresh: float = 0.5, box_detections_per_img: int = 100,
                    trainable_stages: int = DEFAULT_TRAINABLE_STAGES) -> MaskRCNN:
    """Mask R-CNN ResNet-``depth`` FPN for ``num_classes`` dataset classes (plus the background): the
    Faster R-CNN of ``build_faster_rcnn`` with torchvision's mask branch (RoIAlign 14x14 over levels
    "0".."3", four 3x3 convolutions of 256 channels, 28x28 mask logits per class) and a fresh
    ``MaskRCNNPredictor(256, 256, num_classes + 1)`` (spec 2.4)."""
    model = MaskRCNN(resnet_fpn_backbone(depth, trainable_stages=trainable_stages), num_classes=None,
                     min_size=min_size, max_size=max_size, box_score_thresh=box_score_thresh,
                     box_nms_thresh=nms_iou_thresh, box_detections_per_img=box_detections_per_img,
                     box_predictor=FastRCNNPredictor(1024, num_classes + 1),
                     mask_predictor=MaskRCNNPredictor(256, MASK_PREDICTOR_HIDDEN, num_classes + 1))
    return _prepared_outside(model, depth)


def build_retinanet(num_classes: int, *, min_size: int = 600, max_size: int = 1333, box_score_thresh: float = 0.3,
                    nms_iou_thresh: float = 0.5, box_detections_per_img: int = 100,
                    trainable_stages: int = DEFAULT_TRAINABLE_STAGES) -> RetinaNet:
    """RetinaNet ResNet-50 FPN (levels P3-P7, P6/P7 from P5's FPN output) for ``num_classes`` classes,
    no background class; torchvision's anchors, focal loss and top-k 1000 candidates per level, with the
    reference's 100 detections per image instead of torchvision's 300."""
    backbone = resnet_fpn_backbone(50, trainable_stages=trainable_stages, returned_stages=(2, 3, 4),
                                   extra_blocks=LastLevelP6P7(256, 256))
    model = RetinaNet(backbone, num_classes, min_size=min_size, max_size=max_size, score_thresh=box_score_thresh,
                      nms_thresh=nms_iou_thresh, detections_per_img=box_detections_per_img)
    return _prepared_outside(model, 50)


def build_rcnn_v2(mask: bool, num_classes: int, *, min_size: int = 600, max_size: int = 1333,
                  box_score_thresh: float = 0.3, nms_iou_thresh: float = 0.5, box_detections_per_img: int = 100,
                  trainable_stages: int = DEFAULT_TRAINABLE_STAGES) -> FasterRCNN:
    """torchvision's ``fasterrcnn_resnet50_fpn_v2`` (``mask``: ``maskrcnn_resnet50_fpn_v2``) for
    ``num_classes`` dataset classes plus the background, built without weights: its box predictor
    ``FastRCNNPredictor(1024, num_classes + 1)`` and mask predictor ``MaskRCNNPredictor(256, 256,
    num_classes + 1)`` are the fresh heads the v1 models get. ``trainable_stages`` counts from layer4
    backwards, as in ``resnet_fpn_backbone`` (torchvision ignores its own argument without weights)."""
    builder = tvm.detection.maskrcnn_resnet50_fpn_v2 if mask else tvm.detection.fasterrcnn_resnet50_fpn_v2
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes + 1, min_size=min_size,
                    max_size=max_size, box_score_thresh=box_score_thresh, box_nms_thresh=nms_iou_thresh,
                    box_detections_per_img=box_detections_per_img)
    frozen = RESNET_V2_BACKBONE_GROUPS[:len(RESNET_V2_BACKBONE_GROUPS) - trainable_stages]
    prefixes = tuple(prefix for group in frozen for prefix in group)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(prefixes))
    return _padding_only(model)


def with_prediction_limits(model: nn.Module, *, box_score_thresh: float, nms_iou_thresh: float,
                           box_detections_per_img: int) -> nn.Module:
    """``model`` predicting with these limits: ``model`` itself when they are its own, else a shallow copy
    that shares its weights. torchvision reads the limits from plain attributes at every forward, so a
    prediction's settings (a scoring request's threshold) apply without rebuilding the model and without
    changing it for the predictions that share it."""
    limits = {"score_thresh": box_score_thresh, "nms_thresh": nms_iou_thresh,
              "detections_per_img": box_detections_per_img}
    if isinstance(model, RetinaNet):  # RetinaNet holds them itself; Faster and Mask R-CNN in their RoI heads
        return _with_attributes(model, limits)
    heads = _with_attributes(model.roi_heads, limits)
    if heads is model.roi_heads:
        return model
    limited = copy.copy(model)
    limited._modules = {**model._modules, "roi_heads": heads}  # a dict of its own: the original keeps its heads
    return limited


def _with_attributes(module: nn.Module, values: dict[str, Any]) -> nn.Module:
    """``module`` when it has ``values`` already, else a shallow copy of it with them set (a copy has its
    own attribute dict and the same submodules and parameters)."""
    if all(getattr(module, name) == value for name, value in values.items()):
        return module
    changed = copy.copy(module)
    for name, value in values.items():
        setattr(changed, name, value)
    return changed


def backbone_state(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Map an ImageNet ResNet state dict (``conv1.weight``, ``layer1.0...``) onto the detector's trunk
    (``backbone.body.conv1.weight`` ...). Keys the model already has (a detector checkpoint) are kept as
    they are, so this also passes full detector weights through unchanged."""
    own = model.state_dict()
    return {(f"backbone.body.{key}" if key not in own and f"backbone.body.{key}" in own else key): value
            for key, value in state.items()}


# --- registration -----------------------------------------------------------------------------------


def _trainable_stages(layers_to_freeze: int | None) -> int:
    # With layers_to_freeze set, everything is built trainable and the registry then freezes exactly the
    # first k groups, so k = 0 unfreezes even the stages frozen by default (the reference's rule).
    return DEFAULT_TRAINABLE_STAGES if layers_to_freeze is None else 5


def _imagenet(depth: int) -> WeightsSource:
    weights = getattr(tvm, f"ResNet{depth}_Weights").IMAGENET1K_V1
    return WeightsSource(filename=weights.url.rsplit("/", 1)[-1], url=weights.url)


def _coco(weights: Any) -> WeightsSource:
    return WeightsSource(filename=weights.url.rsplit("/", 1)[-1], url=weights.url)


def _faster_rcnn_builder(depth: int):
    def build(num_classes: int, *, min_size: int = 600, max_size: int = 1333, box_score_thresh: float = 0.3,
              nms_iou_thresh: float = 0.5, box_detections_per_img: int = 100,
              layers_to_freeze: int | None = None) -> FasterRCNN:
        return build_faster_rcnn(depth, num_classes, min_size=min_size, max_size=max_size,
                                 box_score_thresh=box_score_thresh, nms_iou_thresh=nms_iou_thresh,
                                 box_detections_per_img=box_detections_per_img,
                                 trainable_stages=_trainable_stages(layers_to_freeze))

    build.__name__ = build.__qualname__ = f"fasterrcnn_resnet{depth}_fpn"
    build.__doc__ = f"Faster R-CNN ResNet-{depth} FPN; see ``build_faster_rcnn``."
    return build


for _depth in RESNET_DEPTHS:
    _name = f"fasterrcnn_resnet{_depth}_fpn"
    _source = _coco(tvm.detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1) if _depth == 50 else _imagenet(_depth)
    register_model(_name, layer_groups=RESNET_BACKBONE_GROUPS, weights=_source,
                   head_prefixes=FASTER_RCNN_HEAD, adapt_pretrained=backbone_state)(_faster_rcnn_builder(_depth))
    _LABEL_OFFSETS[_name] = 1


def _mask_rcnn_builder(depth: int):
    def build(num_classes: int, *, min_size: int = 600, max_size: int = 1333, box_score_thresh: float = 0.3,
              nms_iou_thresh: float = 0.5, box_detections_per_img: int = 100,
              layers_to_freeze: int | None = None) -> MaskRCNN:
        return build_mask_rcnn(depth, num_classes, min_size=min_size, max_size=max_size,
                               box_score_thresh=box_score_thresh, nms_iou_thresh=nms_iou_thresh,
                               box_detections_per_img=box_detections_per_img,
                               trainable_stages=_trainable_stages(layers_to_freeze))

    build.__name__ = build.__qualname__ = f"maskrcnn_resnet{depth}_fpn"
    build.__doc__ = f"Mask R-CNN ResNet-{depth} FPN; see ``build_mask_rcnn``."
    return build


for _depth in RESNET_DEPTHS:
    _name = f"maskrcnn_resnet{_depth}_fpn"
    _source = _coco(tvm.detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1) if _depth == 50 else _imagenet(_depth)
    register_model(_name, layer_groups=RESNET_BACKBONE_GROUPS, weights=_source,
                   head_prefixes=MASK_RCNN_HEAD, adapt_pretrained=backbone_state)(_mask_rcnn_builder(_depth))
    _LABEL_OFFSETS[_name] = 1


@register_model("retinanet_resnet50_fpn", layer_groups=RESNET_BACKBONE_GROUPS,
                weights=_coco(tvm.detection.RetinaNet_ResNet50_FPN_Weights.COCO_V1), head_prefixes=RETINANET_HEAD,
                adapt_pretrained=backbone_state)
def retinanet_resnet50_fpn(num_classes: int, *, min_size: int = 600, max_size: int = 1333,
                           box_score_thresh: float = 0.3, nms_iou_thresh: float = 0.5,
                           box_detections_per_img: int = 100, layers_to_freeze: int | None = None) -> RetinaNet:
    """RetinaNet ResNet-50 FPN; see ``build_retinanet``."""
    return build_retinanet(num_classes, min_size=min_size, max_size=max_size, box_score_thresh=box_score_thresh,
                           nms_iou_thresh=nms_iou_thresh, box_detections_per_img=box_detections_per_img,
                           trainable_stages=_trainable_stages(layers_to_freeze))


_LABEL_OFFSETS["retinanet_resnet50_fpn"] = 0


def _rcnn_v2_builder(mask: bool):
    def build(num_classes: int, *, min_size: int = 600, max_size: int = 1333, box_score_thresh: float = 0.3,
              nms_iou_thresh: float = 0.5, box_detections_per_img: int = 100,
              layers_to_freeze: int | None = None) -> FasterRCNN:
        return build_rcnn_v2(mask, num_classes, min_size=min_size, max_size=max_size,
                             box_score_thresh=box_score_thresh, nms_iou_thresh=nms_iou_thresh,
                             box_detections_per_img=box_detections_per_img,
                             trainable_stages=_trainable_stages(layers_to_freeze))

    kind = "Mask" if mask else "Faster"
    build.__name__ = build.__qualname__ = f"{kind.lower()}rcnn_resnet50_fpn_v2"
    build.__doc__ = f"{kind} R-CNN ResNet-50 FPN v2 (torchvision's); see ``build_rcnn_v2``."
    return build


for _mask, _weights, _head in ((False, tvm.detection.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1, FASTER_RCNN_HEAD),
                               (True, tvm.detection.MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1, MASK_RCNN_HEAD)):
    _name = f"{'mask' if _mask else 'faster'}rcnn_resnet50_fpn_v2"
    register_model(_name, layer_groups=RESNET_V2_BACKBONE_GROUPS, weights=_coco(_weights), head_prefixes=_head,
                   adapt_pretrained=backbone_state)(_rcnn_v2_builder(_mask))
    _LABEL_OFFSETS[_name] = 1


# --- helpers ------------------------------------------------------------------------------------------


class _PaddingOnlyTransform(GeneralizedRCNNTransform):
    """torchvision's input transform without its resize and normalisation (the data loader does both, so
    workers share the work and the device receives resized images); batching with zero padding to a
    multiple of 32 stays. Predictions therefore come back in the frame of the input tensors."""

    def normalize(self, image: Tensor) -> Tensor:
        return image

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target


def _padding_only(model: nn.Module) -> nn.Module:
    old = model.transform
    model.transform = _PaddingOnlyTransform(old.min_size, old.max_size, list(IMAGENET_MEAN), list(IMAGENET_STD))
    return model


def _prepared_outside(model: nn.Module, depth: int) -> nn.Module:
    _padding_only(model)
    if depth == 50:
        # The COCO weights the ResNet-50 detectors start from were trained with eps 0 in the frozen batch
        # norm (torchvision sets the same); eps is not in the state dict, so it is fixed at build time.
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = 0.0
    return model
