"""The YOLOv5 v3.0 loss: anchor matching (``match_anchors``) and ``YoloLoss`` (GIoU box, objectness, class).

Targets everywhere are a float tensor (n, 6) of rows (image index in the batch, class, cx, cy, w, h),
box coordinates normalised by the width and height of the (letterboxed) network input.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss

# Offsets (in cells) of the target's own cell and its four possible neighbours: left, up, right, down.
_NEIGHBOURS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))


@dataclass(frozen=True)
class LevelTargets:
    """Positives of one output level, one row per (target, anchor, cell) assignment.

    ``image``, ``anchor``, ``row``, ``col`` index the level's (B, 3, ny, nx, no) map; ``box`` is
    (n, 4): centre offset from the cell's top-left corner (in (-0.5, 1.5)) and width, height, in
    grid units; ``anchor_wh`` (n, 2) the assigned anchor in grid units; ``cls`` (n,) the class index.
    """

    image: torch.Tensor
    anchor: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    box: torch.Tensor
    anchor_wh: torch.Tensor
    cls: torch.Tensor


def match_anchors(
    targets: torch.Tensor,
    anchors: torch.Tensor,
    grid_shapes: list[tuple[int, int]],
    anchor_t: float = 4.0,
) -> list[LevelTargets]:
    """Assign targets to anchors and cells of every output level.

    ``anchors`` is (levels, anchors, 2) in grid units of each level; ``grid_shapes`` the (ny, nx) of
    each level. A (target, anchor) pair is eligible when max(w_t/w_a, w_a/w_t, h_t/h_a, h_a/h_t) <
    ``anchor_t``. Each eligible pair goes to the cell holding the target centre and also to the
    neighbour cells whose shared edge is nearer than half a cell: left when frac(x) < 0.5 and x > 1,
    up when frac(y) < 0.5 and y > 1, right when frac(x) > 0.5 and x < nx - 1, down when
    frac(y) > 0.5 and y < ny - 1 (x, y in grid units). So each pair yields up to three positives.
    """
    device = targets.device
    na = anchors.shape[1]
    nt = targets.shape[0]
    # (na * nt, 7): the target rows repeated for every anchor, with the anchor index appended.
    anchor_index = torch.arange(na, device=device, dtype=targets.dtype).repeat_interleave(nt)
    rows = torch.cat((targets.repeat(na, 1), anchor_index[:, None]), dim=1)
    neighbours = _neighbour_offsets(device, targets.dtype)
    result = []
    for level, (ny, nx) in enumerate(grid_shapes):
        # Scale with Python numbers: a tensor built from a list would be a blocking host-to-device copy.
        t = rows.clone()
        t[:, 2:6:2] *= nx
        t[:, 3:6:2] *= ny
        if nt:
            ratio = t[:, 4:6] / anchors[level][t[:, 6].long()]
            t = t[torch.max(ratio, 1.0 / ratio).amax(dim=1) < anchor_t]
        xy = t[:, 2:4]
        frac = xy % 1.0
        use = torch.stack((
            torch.ones_like(xy[:, 0], dtype=torch.bool),
            (frac[:, 0] < 0.5) & (xy[:, 0] > 1.0),
            (frac[:, 1] < 0.5) & (xy[:, 1] > 1.0),
            (frac[:, 0] > 0.5) & (xy[:, 0] < nx - 1.0),
            (frac[:, 1] > 0.5) & (xy[:, 1] < ny - 1.0),
        ))  # (5, n)
        which, member = use.nonzero(as_tuple=True)
        t = t[member]
        cell = (t[:, 2:4].floor() + neighbours[which]).long()
        cell[:, 0].clamp_(0, nx - 1)
        cell[:, 1].clamp_(0, ny - 1)
        anchor = t[:, 6].long()
        result.append(LevelTargets(
            image=t[:, 0].long(), anchor=anchor, row=cell[:, 1], col=cell[:, 0],
            box=torch.cat((t[:, 2:4] - cell, t[:, 4:6]), dim=1),
            anchor_wh=anchors[level][anchor], cls=t[:, 1].long(),
        ))
    return result


class YoloLoss:
    """``loss(raw_maps, targets) -> (loss, components)`` for a YOLOv5 model.

    ``model`` supplies the anchors (grid units) and the class count through its Detect head (a
    ``YoloV5`` or anything with a ``detect`` attribute, DDP-wrapped or not). Gains default to the
    reference values: ``giou`` box gain, ``obj`` objectness gain, ``cls`` class gain (used as
    ``cls * num_classes / 80``), ``cls_pw`` / ``obj_pw`` positive weights of the BCEs, ``anchor_t``
    the matching ratio, ``fl_gamma`` focal-loss gamma (0: plain BCE; alpha 0.25 otherwise), ``gr``
    the share of the predicted box's GIoU in the objectness target (1.0: the target is the GIoU
    clamped at 0; 0.0: the target is 1). ``balance`` weighs each level's objectness loss, finest level
    first (the reference 1 for each); ``label_smoothing`` eps makes the class targets 1 - eps / 2 and
    eps / 2 (the reference 0).

    ``raw_maps``: the training-mode model output (three (B, 3, ny, nx, nc + 5) logit maps).
    ``targets``: (n, 6) rows (image index, class, cx, cy, w, h) normalised to the network input.
    Returns the total loss times the batch size (a 0-d tensor that carries gradients), and the
    detached unscaled components ``{"box", "obj", "cls"}`` (each already multiplied by its gain).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        giou: float = 0.05,
        obj: float = 1.0,
        cls: float = 0.58,
        cls_pw: float = 1.0,
        obj_pw: float = 1.0,
        anchor_t: float = 4.0,
        fl_gamma: float = 0.0,
        gr: float = 1.0,
        balance: Sequence[float] = (1.0, 1.0, 1.0),
        label_smoothing: float = 0.0,
    ):
        # Keep the head, not its buffer: moving the model to another device replaces the buffer.
        self._detect = getattr(model, "module", model).detect
        self.num_classes = self._detect.nc
        self.box_gain = giou
        self.obj_gain = obj
        self.cls_gain = cls * self.num_classes / 80.0
        self.cls_pw = cls_pw
        self.obj_pw = obj_pw
        self.anchor_t = anchor_t
        self.fl_gamma = fl_gamma
        self.gr = gr
        self.balance = tuple(balance)
        self.positive_class_target = 1.0 - label_smoothing / 2
        self.negative_class_target = label_smoothing / 2

    def __call__(self, raw_maps: list[torch.Tensor], targets: torch.Tensor
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = raw_maps[0].device
        anchors = self._detect.anchors.to(device)
        targets = targets.to(device=device, dtype=torch.float32)
        matched = match_anchors(targets, anchors, [tuple(p.shape[2:4]) for p in raw_maps], self.anchor_t)
        box_loss = torch.zeros((), device=device)
        obj_loss = torch.zeros((), device=device)
        cls_loss = torch.zeros((), device=device)
        if len(self.balance) != len(raw_maps):
            raise ValueError(f"balance has {len(self.balance)} weights for {len(raw_maps)} output levels")
        for raw, pos, balance in zip(raw_maps, matched, self.balance):
            raw = raw.float()
            obj_target = torch.zeros_like(raw[..., 4])
            if pos.image.numel():
                logits = raw[pos.image, pos.anchor, pos.row, pos.col]  # (n, no)
                xy = logits[:, 0:2].sigmoid() * 2.0 - 0.5
                wh = (logits[:, 2:4].sigmoid() * 2.0) ** 2 * pos.anchor_wh
                pred = box_convert(torch.cat((xy, wh), dim=1), "cxcywh", "xyxy")
                target = box_convert(pos.box, "cxcywh", "xyxy")
                one_minus_giou = generalized_box_iou_loss(pred, target, reduction="none")
                box_loss = box_loss + one_minus_giou.mean()
                giou = (1.0 - one_minus_giou).detach().clamp(min=0).to(obj_target.dtype)
                # Where two targets share an anchor and cell, the better-fitting prediction sets the target
                # (a max is order-free, so CPU and GPU agree; a plain assignment keeps an arbitrary one).
                _, na, ny, nx = obj_target.shape
                flat = ((pos.image * na + pos.anchor) * ny + pos.row) * nx + pos.col
                obj_target.view(-1).scatter_reduce_(0, flat, (1.0 - self.gr) + self.gr * giou, reduce="amax")
                if self.num_classes > 1:
                    cls_target = torch.full_like(logits[:, 5:], self.negative_class_target)
                    cls_target[torch.arange(len(pos.cls), device=device), pos.cls] = self.positive_class_target
                    cls_loss = cls_loss + self._bce(logits[:, 5:], cls_target, self.cls_pw)
            obj_loss = obj_loss + self._bce(raw[..., 4], obj_target, self.obj_pw) * balance
        # The level-count factor 3 / levels is 1 for three levels.
        level_factor = 3.0 / len(raw_maps)
        box_loss = box_loss * self.box_gain * level_factor
        obj_loss = obj_loss * self.obj_gain * level_factor
        cls_loss = cls_loss * self.cls_gain * level_factor
        total = box_loss + obj_loss + cls_loss
        components = {"box": box_loss.detach(), "obj": obj_loss.detach(), "cls": cls_loss.detach()}
        return total * raw_maps[0].shape[0], components

    def _bce(self, logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
        """Mean BCE-with-logits; with ``fl_gamma`` > 0 each element is weighted as in focal loss (alpha 0.25)."""
        weight = logits.new_full((), pos_weight)  # filled on the device: no host-to-device copy
        loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="none")
        if self.fl_gamma > 0:
            p = logits.sigmoid()
            p_t = target * p + (1.0 - target) * (1.0 - p)
            alpha = target * 0.25 + (1.0 - target) * 0.75
            loss = loss * alpha * (1.0 - p_t) ** self.fl_gamma
        return loss.mean()


@lru_cache(maxsize=None)
def _neighbour_offsets(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(_NEIGHBOURS, dtype=dtype, device=device)
