"""The YOLOv5 release 3.0 network: backbone, PANet neck and the Detect head, for every model_size.

Layer numbering follows the reference: ``model.0.`` ... ``model.9.`` are the backbone (what
``layers_to_freeze`` counts), ``model.10.`` ... ``model.23.`` the neck and ``model.24.`` the Detect
head. Parameter and buffer names are those of the published v3.0 checkpoints (``yolov5s.pt``,
``yolov5m.pt``, ``yolov5l.pt``, ``yolov5x.pt`` of release v3.0, which the reference re-hosts as
``yolov5.3.0s`` ... ``yolov5.3.0x``), so their ``model.state_dict()`` loads into ``build_yolov5``
of the same size with the keys matched by name and shape: everything loads except the Detect convs
``model.24.m.*`` when ``num_classes`` is not 80. Checkpoints of later releases (v4.0 and on use SiLU
and C3 blocks) do not fit.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from visionsweep.errors import SettingsError
from visionsweep.models.yolo.layers import SPP, BottleneckCSP, Concat, Conv, Focus

# depth_multiple, width_multiple
MODEL_SIZES: dict[str, tuple[float, float]] = {
    "small": (0.33, 0.50),
    "medium": (0.67, 0.75),
    "large": (1.00, 1.00),
    "xlarge": (1.33, 1.25),
    "extra_large": (1.33, 1.25),
}
# Anchor (width, height) in input pixels, three per output level P3/8, P4/16, P5/32.
ANCHORS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
NUM_BACKBONE_LAYERS = 10
# Ordered groups for layers_to_freeze: k freezes model.0. ... model.{k-1}.
BACKBONE_LAYER_GROUPS: tuple[tuple[str, ...], ...] = tuple((f"model.{i}.",) for i in range(NUM_BACKBONE_LAYERS))
# The class-dependent layers: pretrained weights fill them only when num_classes is 80.
HEAD_PREFIXES: tuple[str, ...] = ("model.24.m.",)
MAX_STRIDE = 32

# (from, repeats, module, base arguments); "from" -1 is the previous layer. Channel arguments are at
# width 1.0 and repeats at depth 1.0; _scaled_layers applies the model size.
_LAYOUT: tuple[tuple[int | tuple[int, ...], int, str, tuple], ...] = (
    # backbone
    (-1, 1, "Focus", (64, 3)),             # 0  P1/2
    (-1, 1, "Conv", (128, 3, 2)),          # 1  P2/4
    (-1, 3, "BottleneckCSP", (128,)),      # 2
    (-1, 1, "Conv", (256, 3, 2)),          # 3  P3/8
    (-1, 9, "BottleneckCSP", (256,)),      # 4
    (-1, 1, "Conv", (512, 3, 2)),          # 5  P4/16
    (-1, 9, "BottleneckCSP", (512,)),      # 6
    (-1, 1, "Conv", (1024, 3, 2)),         # 7  P5/32
    (-1, 1, "SPP", (1024, (5, 9, 13))),    # 8
    (-1, 3, "BottleneckCSP", (1024, False)),  # 9
    # neck
    (-1, 1, "Conv", (512, 1, 1)),          # 10
    (-1, 1, "Upsample", ()),               # 11
    ((-1, 6), 1, "Concat", ()),            # 12
    (-1, 3, "BottleneckCSP", (512, False)),  # 13
    (-1, 1, "Conv", (256, 1, 1)),          # 14
    (-1, 1, "Upsample", ()),               # 15
    ((-1, 4), 1, "Concat", ()),            # 16
    (-1, 3, "BottleneckCSP", (256, False)),  # 17 P3 output
    (-1, 1, "Conv", (256, 3, 2)),          # 18
    ((-1, 14), 1, "Concat", ()),           # 19
    (-1, 3, "BottleneckCSP", (512, False)),  # 20 P4 output
    (-1, 1, "Conv", (512, 3, 2)),          # 21
    ((-1, 10), 1, "Concat", ()),           # 22
    (-1, 3, "BottleneckCSP", (1024, False)),  # 23 P5 output
)
_DETECT_FROM = (17, 20, 23)


def build_yolov5(num_classes: int, model_size: str = "medium") -> "YoloV5":
    """Return a freshly initialised YOLOv5 v3.0 network for ``num_classes`` classes.

    ``model_size`` is small, medium, large, xlarge or extra_large (the same as xlarge). Input:
    float (B, 3, H, W) RGB in [0, 1], H and W multiples of 32. See ``YoloV5.forward`` for outputs.
    """
    if num_classes < 1:
        raise SettingsError([f"num_classes: got {num_classes}; YOLOv5 needs at least one class"])
    if model_size not in MODEL_SIZES:
        raise SettingsError([f"model_size: got {model_size!r}; allowed: {', '.join(MODEL_SIZES)}"])
    depth, width = MODEL_SIZES[model_size]
    return YoloV5(num_classes, depth_multiple=depth, width_multiple=width)


class Detect(nn.Module):
    """Per level a 1x1 conv (with bias) to ``3 * (num_classes + 5)`` channels, and the box decoding.

    Buffers: ``anchors`` (levels, 3, 2) in grid units of each level (pixels / stride), as the loss
    uses them; ``anchor_grid`` (levels, 1, 3, 1, 1, 2) in input pixels, as decoding uses them;
    ``stride`` (levels,) in pixels (not saved: it follows from the architecture).
    """

    def __init__(self, num_classes: int, anchors: Sequence[Sequence[tuple[int, int]]], channels: Sequence[int]):
        super().__init__()
        self.nc = num_classes
        self.no = num_classes + 5
        self.nl = len(anchors)
        self.na = len(anchors[0])
        pixels = torch.tensor(anchors, dtype=torch.float32).view(self.nl, self.na, 2)
        self.register_buffer("anchors", pixels.clone())
        self.register_buffer("anchor_grid", pixels.clone().view(self.nl, 1, self.na, 1, 1, 2))
        self.register_buffer("stride", torch.ones(self.nl), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        raw = []
        for conv, x in zip(self.m, features):
            b, _, ny, nx = x.shape
            raw.append(conv(x).view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        if self.training:
            return raw
        return torch.cat([self._decode(level, out) for level, out in enumerate(raw)], dim=1), raw

    def _decode(self, level: int, out: torch.Tensor) -> torch.Tensor:
        """(B, 3, ny, nx, no) raw logits -> (B, 3*ny*nx, no): box (cx, cy, w, h) in input pixels, then sigmoids."""
        b, _, ny, nx, _ = out.shape
        y = out.sigmoid()
        rows, cols = torch.meshgrid(torch.arange(ny, device=out.device), torch.arange(nx, device=out.device),
                                    indexing="ij")
        grid = torch.stack((cols, rows), dim=-1).view(1, 1, ny, nx, 2).to(y.dtype)
        xy = (y[..., 0:2] * 2.0 - 0.5 + grid) * self.stride[level]
        wh = (y[..., 2:4] * 2.0) ** 2 * self.anchor_grid[level]
        return torch.cat((xy, wh, y[..., 4:]), dim=-1).view(b, -1, self.no)


class YoloV5(nn.Module):
    """YOLOv5 v3.0: ``self.model`` is an ``nn.Sequential`` of 25 numbered layers (see module docstring).

    ``forward(images)`` takes float (B, 3, H, W) in [0, 1] with H, W multiples of 32. In training
    mode it returns the raw per-level maps, a list of three (B, 3, H/s, W/s, num_classes + 5)
    logit tensors for strides s = 8, 16, 32, last axis (x, y, w, h, objectness, classes...). In
    eval mode it returns ``(decoded, raw)``: decoded is (B, N, num_classes + 5) with boxes as
    (cx, cy, w, h) in input pixels followed by the objectness and class probabilities, and raw is
    the training-mode list (for a validation loss).
    """

    def __init__(self, num_classes: int, *, depth_multiple: float, width_multiple: float, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        layers, channels = _scaled_layers(in_channels, depth_multiple, width_multiple)
        detect = Detect(num_classes, ANCHORS, [channels[i] for i in _DETECT_FROM])
        detect.i, detect.f = len(layers), _DETECT_FROM
        layers.append(detect)
        self.model = nn.Sequential(*layers)
        self.save = sorted({j for layer in layers for j in _sources(layer.f) if j != -1})
        strides = self._measure_strides(in_channels)
        _set_anchor_units(detect, strides)
        _init_detect_biases(detect, strides)

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    def forward(self, x: torch.Tensor):
        outputs: list[torch.Tensor | None] = []
        for layer in self.model:
            if layer.f != -1:
                x = outputs[layer.f] if isinstance(layer.f, int) else [x if j == -1 else outputs[j] for j in layer.f]
            x = layer(x)
            outputs.append(x if layer.i in self.save else None)
        return x

    def _measure_strides(self, in_channels: int) -> list[float]:
        """Each output level's stride, from the map sizes of a 128x128 forward (BatchNorm statistics
        untouched; on the meta device only shapes are computed, so counting parameters stays cheap)."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            _, raw = self(torch.zeros(1, in_channels, 128, 128, device=self.detect.anchors.device))
        self.train(was_training)
        return [128.0 / r.shape[2] for r in raw]


def fused_for_inference(model: YoloV5) -> YoloV5:
    """A copy of ``model`` in eval mode with each Conv's BatchNorm folded into its convolution and the
    weights in channels-last layout: the same outputs (to float rounding) with one operation fewer per layer,
    and convolutions that run faster on that layout (about 1.3 times on this project's CPUs, whatever layout
    the input has; bench/yolo_throughput.md). The copy is for prediction only; its state dict no longer
    matches a checkpoint's, and the original is left as it was. A model fused already (in eval mode) is
    returned as it is: a server fuses once, then predicts with it many times."""
    if not model.training and not any(isinstance(module, Conv) and isinstance(module.bn, nn.BatchNorm2d)
                                      for module in model.modules()):
        return model
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, Conv) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return fused.to(memory_format=torch.channels_last)


def _scaled_layers(in_channels: int, depth: float, width: float) -> tuple[list[nn.Module], list[int]]:
    """Instantiate the layout at this depth and width; return the layers and each layer's output channels."""
    layers: list[nn.Module] = []
    channels: list[int] = []
    for index, (source, repeats, kind, args) in enumerate(_LAYOUT):
        n = max(round(repeats * depth), 1) if repeats > 1 else repeats
        c_in = channels[-1] if index else in_channels
        if kind in ("Conv", "Focus", "SPP", "BottleneckCSP"):
            c_out = _make_divisible(args[0] * width, 8)
            if kind == "Conv":
                layer = Conv(c_in, c_out, *args[1:])
            elif kind == "Focus":
                layer = Focus(c_in, c_out, *args[1:])
            elif kind == "SPP":
                layer = SPP(c_in, c_out, *args[1:])
            else:
                layer = BottleneckCSP(c_in, c_out, n, *args[1:])
        elif kind == "Upsample":
            layer, c_out = nn.Upsample(scale_factor=2.0, mode="nearest"), c_in
        else:  # Concat
            layer = Concat(1)
            c_out = sum(channels[-1] if j == -1 else channels[j] for j in source)
        layer.i, layer.f = index, source
        layers.append(layer)
        channels.append(c_out)
    return layers, channels


def _set_anchor_units(detect: Detect, strides: list[float]) -> None:
    """Store the strides, put the anchors in the same (ascending) order as the strides, and keep
    ``anchors`` in grid units of their level (``anchor_grid`` stays in pixels)."""
    areas = [sum(w * h for w, h in level) for level in ANCHORS]
    with torch.no_grad():
        if (areas[-1] > areas[0]) != (strides[-1] > strides[0]):
            detect.anchors.copy_(detect.anchors.flip(0))
            detect.anchor_grid.copy_(detect.anchor_grid.flip(0))
        stride = torch.tensor(strides, device=detect.stride.device)
        detect.stride.copy_(stride)
        detect.anchors.div_(stride.view(-1, 1, 1))


def _init_detect_biases(detect: Detect, strides: list[float]) -> None:
    """Start objectness at about 8 objects per 640x640 image and class probabilities at 0.6/(nc - 0.99).

    Applied once (the reference applies it twice for class counts other than 80, a slip we do not copy).
    """
    with torch.no_grad():
        for conv, stride in zip(detect.m, strides):
            bias = conv.bias.view(detect.na, -1)
            bias[:, 4] += math.log(8.0 / (640.0 / stride) ** 2)
            bias[:, 5:] += math.log(0.6 / (detect.nc - 0.99))


def _make_divisible(value: float, divisor: int) -> int:
    return math.ceil(value / divisor) * divisor


def _sources(source: int | tuple[int, ...]) -> tuple[int, ...]:
    return (source,) if isinstance(source, int) else tuple(source)
