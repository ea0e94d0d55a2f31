"""The inputs of detection evaluation: one image's predictions and ground truth, read from the dicts a
torchvision detector returns, and the IoU of every prediction with every object, for blocks of images.

Inputs, per image, in the frame the model predicted in (pixels; any frame works for VOC since IoU is
unchanged by scaling each axis):

* predictions: ``{"boxes": (N, 4) x0, y0, x1, y1, "labels": (N,) class indices, "scores": (N,)}``, the
  dict a torchvision detector returns (tensors or numpy arrays), optionally ``"masks"``;
* ground truth: ``{"boxes": (M, 4), "labels": (M,), "iscrowd": (M,)}`` (``is_crowd`` is accepted too),
  optionally ``"masks"``.

Class indices point into ``class_names``; callers map a model's background index away first (a Faster
R-CNN label ``k`` is ``class_names[k - 1]``). Masks are binary (N, H, W) arrays (soft masks are cut at
0.5; (N, 1, H, W) is accepted) or lists of COCO RLE dicts, used only when ``iou_type="segm"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

IouType = Literal["bbox", "segm"]


@dataclass(frozen=True)
class Detections:
    """Predictions of one image: ``boxes`` (N, 4) float pixels x0, y0, x1, y1; ``labels`` (N,) int class
    indices; ``scores`` (N,) float; ``masks`` a list of N COCO RLE dicts, or None."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: list[dict] | None = None


@dataclass(frozen=True)
class GroundTruth:
    """Labelled objects of one image: ``boxes`` (M, 4), ``labels`` (M,), ``is_crowd`` (M,) bool, ``masks``
    a list of M COCO RLE dicts, or None."""

    boxes: np.ndarray
    labels: np.ndarray
    is_crowd: np.ndarray
    masks: list[dict] | None = None


def read_detections(value: Detections | Mapping[str, Any], *, with_masks: bool = False) -> Detections:
    """Predictions of one image from a torchvision-style dict (tensors, arrays or lists) or ``Detections``."""
    if isinstance(value, Detections):
        if with_masks and value.masks is None:
            raise ValueError("segm evaluation needs predicted masks; this image's predictions have none")
        return value
    boxes = _boxes(value.get("boxes"))
    labels = _array(value.get("labels"), np.int64, len(boxes), "labels")
    scores = _array(value.get("scores"), np.float64, len(boxes), "scores")
    masks = _masks(value.get("masks"), len(boxes), "predicted") if with_masks else None
    return Detections(boxes, labels, scores, masks)


def read_ground_truth(value: GroundTruth | Mapping[str, Any], *, with_masks: bool = False) -> GroundTruth:
    """Ground truth of one image from a dict with boxes, labels and iscrowd (or is_crowd), or ``GroundTruth``."""
    if isinstance(value, GroundTruth):
        if with_masks and value.masks is None:
            raise ValueError("segm evaluation needs ground-truth masks; this image has none")
        return value
    boxes = _boxes(value.get("boxes"))
    labels = _array(value.get("labels"), np.int64, len(boxes), "labels")
    crowd = value.get("iscrowd", value.get("is_crowd"))
    is_crowd = np.zeros(len(boxes), bool) if crowd is None else _array(crowd, bool, len(boxes), "iscrowd")
    masks = _masks(value.get("masks"), len(boxes), "ground-truth") if with_masks else None
    return GroundTruth(boxes, labels, is_crowd, masks)


def box_iou_block(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray], crowd: Sequence[np.ndarray],
                  shape: tuple[int, int]) -> np.ndarray:
    """IoU of every prediction with every object of the same image, for a block of images.

    ``predicted[i]`` (P_i, 4) and ``truth[i]`` (G_i, 4) are x0, y0, x1, y1 boxes; ``crowd[i]`` (G_i,) marks
    crowd objects, whose "IoU" is intersection over the prediction's area (as pycocotools). Returns
    (B, P, G) with ``shape`` = (P, G) >= every (P_i, G_i); padding cells are -1. Boxes of zero area
    give IoU 0. torchvision's box_iou has no crowd rule and no batching, hence this version.
    """
    p = pad_arrays(predicted, shape[0], 4)
    g = pad_arrays(truth, shape[1], 4)
    is_crowd = pad_arrays([c.astype(bool) for c in crowd], shape[1], None, fill=False)
    width = np.minimum(p[:, :, None, 2], g[:, None, :, 2]) - np.maximum(p[:, :, None, 0], g[:, None, :, 0])
    height = np.minimum(p[:, :, None, 3], g[:, None, :, 3]) - np.maximum(p[:, :, None, 1], g[:, None, :, 1])
    intersection = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_p = ((p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1]))[:, :, None]
    area_g = ((g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1]))[:, None, :]
    union = np.where(is_crowd[:, None, :], area_p, area_p + area_g - intersection)
    iou = np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)
    return _mark_padding(iou, [len(b) for b in predicted], [len(b) for b in truth])


def mask_iou_block(predicted: Sequence[list[dict]], truth: Sequence[list[dict]], crowd: Sequence[np.ndarray],
                   shape: tuple[int, int]) -> np.ndarray:
    """Mask IoU (pycocotools, on RLEs) with the same contract as ``box_iou_block``."""
    iou = np.zeros((len(predicted), *shape))
    for i, (p, g, c) in enumerate(zip(predicted, truth, crowd)):
        if p and g:
            iou[i, :len(p), :len(g)] = np.asarray(mask_utils.iou(p, g, [int(v) for v in c])).reshape(len(p), len(g))
    return _mark_padding(iou, [len(p) for p in predicted], [len(g) for g in truth])


# box_iou_block and mask_iou_block: (predicted, truth, crowd, shape) -> (B, P, G) IoU.
IouBlock = Callable[[Sequence[Any], Sequence[Any], Sequence[np.ndarray], tuple[int, int]], np.ndarray]


def pad_arrays(arrays: Sequence[np.ndarray], length: int, width: int | None, fill: Any = 0.0) -> np.ndarray:
    """Stack variable-length arrays into (B, length[, width]), filling the tail with ``fill``."""
    dtype = np.result_type(*[a.dtype for a in arrays]) if arrays else np.float64
    shape = (len(arrays), length) if width is None else (len(arrays), length, width)
    out = np.full(shape, fill, dtype=dtype if width is None else np.float64)
    for i, a in enumerate(arrays):
        out[i, :len(a)] = a
    return out


def _mark_padding(iou: np.ndarray, predicted: list[int], truth: list[int]) -> np.ndarray:
    p_index = np.arange(iou.shape[1])[None, :, None]
    g_index = np.arange(iou.shape[2])[None, None, :]
    real = (p_index < np.asarray(predicted)[:, None, None]) & (g_index < np.asarray(truth)[:, None, None])
    return np.where(real, iou, -1.0)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly on the GPU
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _boxes(value: Any) -> np.ndarray:
    if value is None:
        return np.zeros((0, 4))
    boxes = _to_numpy(value).astype(np.float64, copy=False)
    if boxes.size == 0:
        return np.zeros((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as x0, y0, x1, y1 pixels, got {boxes.shape}")
    return boxes


def _array(value: Any, dtype: Any, length: int, name: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"'{name}' is missing; predictions need boxes, labels and scores, ground truth boxes and "
                         "labels")
    array = _to_numpy(value).reshape(-1).astype(dtype, copy=False)
    if len(array) != length:
        raise ValueError(f"'{name}' has {len(array)} values for {length} boxes")
    return array


def _masks(value: Any, length: int, kind: str) -> list[dict]:
    if value is None:
        raise ValueError(f"segm evaluation needs {kind} masks, and this image has none")
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        rles = value
    else:
        masks = _to_numpy(value)
        if masks.ndim == 4:  # torchvision Mask R-CNN: (N, 1, H, W) soft masks
            masks = masks[:, 0]
        if masks.ndim != 3:
            raise ValueError(f"{kind} masks must be (N, H, W) arrays or lists of RLE dicts, got shape {masks.shape}")
        binary = masks > 0.5 if masks.dtype.kind == "f" else masks.astype(bool)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0).astype(np.uint8))) if len(binary) else []
    if len(rles) != length:
        raise ValueError(f"{len(rles)} {kind} masks for {length} boxes")
    return list(rles)
