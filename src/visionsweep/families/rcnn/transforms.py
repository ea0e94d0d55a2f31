"""The R-CNN family's input transforms: the reference's training augmentations, then the resize and
normalisation the detector expects.

Coordinates: targets hold boxes in pixels of the decoded (upright) image; augmentations work there, then
the image is resized with torchvision's rule (shorter side to ``min_size``, longer side at most
``max_size``) and the boxes are scaled by the exact per-axis ratio. Targets and predictions live in
that resized "model frame". Instance segmentation adds ``polygons`` to the target: per object a list of
(K, 2) float64 arrays of (x, y) pixel-corner coordinates (pixel column c spans [c, c + 1)). Every
geometric step moves them with the boxes, so masks can be rasterised once, in the final frame.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from visionsweep.families.detection import Target
from visionsweep.models.inputs import IMAGENET_MEAN, IMAGENET_STD

# Probability of each augmentation decision (spec 3.7).
AUGMENT_PROBABILITY = 0.5
CROP_TRIALS = 50
CROP_MIN_AREA = 0.6  # of the image's area
CROP_ASPECT = (0.5, 2.0)  # open interval of crop height / width
EXPAND_RATIO = (1.0, 2.0)
# The canvas of "expand" is the ImageNet mean colour, i.e. zero after normalisation.
MEAN_COLOUR = tuple(round(255 * m) for m in IMAGENET_MEAN)


def prepare_image(image: Tensor, target: Target, *, min_size: int, max_size: int, augment: bool,
                  rng: np.random.Generator | None = None) -> tuple[Tensor, Target]:
    """Turn a decoded image into model input: optional augmentation, resize, normalisation.

    ``image`` is (3, H, W) uint8 RGB; ``target`` boxes are pixels of that image. Returns a (3, H', W')
    float32 tensor normalised with the ImageNet mean and std, and the target in the resized frame,
    keeping only objects whose box is still valid (x0 < x1, y0 < y1, inside the image) with their
    labels, crowd flags and masks in step.
    """
    if augment:
        if rng is None:
            raise ValueError("augmentation needs a random generator (rng)")
        image, target = random_augment(image, target, rng)
    image, target = resize_for_model(image.float().div_(255.0), target, min_size=min_size, max_size=max_size)
    mean = image.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = image.new_tensor(IMAGENET_STD)[:, None, None]
    return (image - mean) / std, target


def random_augment(image: Tensor, target: Target, rng: np.random.Generator) -> tuple[Tensor, Target]:
    """The reference's R-CNN training augmentation: with probability 0.5 either (half of the time each)
    a random crop around the boxes or an expansion onto a larger canvas; independently, with probability
    0.5, a horizontal flip. No photometric change. Invalid boxes are dropped at the end."""
    if rng.random() < AUGMENT_PROBABILITY:
        if rng.random() < AUGMENT_PROBABILITY:
            image, target = crop_around_boxes(image, target, rng)
        else:
            image, target = expand(image, target, rng)
    if rng.random() < AUGMENT_PROBABILITY:
        image, target = horizontal_flip(image, target)
    return image, keep_valid_objects(target, width=image.shape[-1], height=image.shape[-2])


def expand(image: Tensor, target: Target, rng: np.random.Generator) -> tuple[Tensor, Target]:
    """Paste the image at a random integer offset on a canvas ``r`` times its size, r ~ U(1, 2), filled
    with the mean colour; boxes and polygons shift with it, masks are zero-padded."""
    _, height, width = image.shape
    ratio = rng.uniform(*EXPAND_RATIO)
    new_height, new_width = int(height * ratio), int(width * ratio)
    top = int(rng.integers(0, new_height - height, endpoint=True))
    left = int(rng.integers(0, new_width - width, endpoint=True))
    canvas = image.new_empty((image.shape[0], new_height, new_width))
    canvas[:] = torch.tensor(MEAN_COLOUR, dtype=image.dtype)[:, None, None]
    canvas[:, top:top + height, left:left + width] = image
    target = dict(target, boxes=target["boxes"] + target["boxes"].new_tensor([left, top, left, top]))
    if "masks" in target:
        masks = target["masks"].new_zeros((len(target["masks"]), new_height, new_width))
        masks[:, top:top + height, left:left + width] = target["masks"]
        target["masks"] = masks
    if "polygons" in target:
        target["polygons"] = _move_polygons(target["polygons"], lambda p: p + (left, top))
    return canvas, target


def crop_around_boxes(image: Tensor, target: Target, rng: np.random.Generator) -> tuple[Tensor, Target]:
    """Crop to a random window that contains every box (the union rectangle, integer-truncated).

    Up to 50 candidate windows are drawn: left ~ U{0..x_min}, right ~ U{x_max..W}, top ~ U{0..y_min},
    bottom ~ U{y_max..H} (swapped into order when needed; without boxes the whole image bounds both).
    The first with area >= 0.6 of the image and 0.5 < height / width < 2 is taken; when none qualifies
    the image is left as it is. Boxes are shifted and clipped to the window (clipping only trims the
    fraction of a pixel lost to the truncation of the union rectangle); polygons are shifted only, the
    rasteriser cuts them at the frame.
    """
    _, height, width = image.shape
    boxes = target["boxes"]
    if len(boxes):
        x_min, y_min = int(boxes[:, 0].min()), int(boxes[:, 1].min())
        x_max, y_max = int(boxes[:, 2].max()), int(boxes[:, 3].max())
    else:
        x_min, y_min, x_max, y_max = width, height, 0, 0
    a = rng.integers(0, x_min, size=CROP_TRIALS, endpoint=True)
    b = rng.integers(x_max, width, size=CROP_TRIALS, endpoint=True)
    c = rng.integers(0, y_min, size=CROP_TRIALS, endpoint=True)
    d = rng.integers(y_max, height, size=CROP_TRIALS, endpoint=True)
    left, right = np.minimum(a, b), np.maximum(a, b)
    top, bottom = np.minimum(c, d), np.maximum(c, d)
    crop_width, crop_height = right - left, bottom - top
    good = ((crop_width * crop_height >= CROP_MIN_AREA * width * height)
            & (crop_height > CROP_ASPECT[0] * crop_width) & (crop_height < CROP_ASPECT[1] * crop_width))
    if not good.any():
        return image, target
    k = int(np.argmax(good))
    x0, y0, x1, y1 = int(left[k]), int(top[k]), int(right[k]), int(bottom[k])
    shifted = boxes - boxes.new_tensor([x0, y0, x0, y0])
    limit = boxes.new_tensor([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
    target = dict(target, boxes=torch.minimum(shifted.clamp(min=0), limit))
    if "masks" in target:
        target["masks"] = target["masks"][:, y0:y1, x0:x1]
    if "polygons" in target:
        target["polygons"] = _move_polygons(target["polygons"], lambda p: p - (x0, y0))
    return image[:, y0:y1, x0:x1], target


def horizontal_flip(image: Tensor, target: Target) -> tuple[Tensor, Target]:
    """Mirror left-right: x0' = W - x1, x1' = W - x0."""
    width = image.shape[-1]
    boxes = target["boxes"]
    target = dict(target, boxes=torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1))
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    if "polygons" in target:
        target["polygons"] = _move_polygons(target["polygons"], lambda p: np.column_stack([width - p[:, 0], p[:, 1]]))
    return image.flip(-1), target


def keep_valid_objects(target: Target, *, width: int, height: int) -> Target:
    """Keep the objects whose box satisfies 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height; every
    per-object field (labels, crowd flags, masks, polygons) is filtered in step."""
    x0, y0, x1, y1 = target["boxes"].unbind(1)
    keep = (x0 < x1) & (y0 < y1) & (x0 >= 0) & (y0 >= 0) & (x1 <= width) & (y1 <= height)
    if bool(keep.all()):
        return target
    flags = keep.tolist()
    return {key: [v for v, k in zip(value, flags) if k] if isinstance(value, list) else value[keep]
            for key, value in target.items()}


def resize_for_model(image: Tensor, target: Target, *, min_size: int, max_size: int) -> tuple[Tensor, Target]:
    """torchvision's detection resize: scale = min(min_size / shorter side, max_size / longer side),
    bilinear, output size floor(size x scale); boxes and polygons scaled by the exact ratios new / old
    per axis and masks resized with nearest neighbour. ``image`` is (3, H, W) float."""
    height, width = image.shape[-2:]
    scale = min(min_size / min(height, width), max_size / max(height, width))
    resized = F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                            align_corners=False)[0]
    new_height, new_width = resized.shape[-2:]
    ratios = target["boxes"].new_tensor([new_width / width, new_height / height] * 2)
    target = dict(target, boxes=target["boxes"] * ratios)
    if "masks" in target and len(target["masks"]):
        target["masks"] = F.interpolate(target["masks"][:, None].float(), size=(new_height, new_width))[:, 0].byte()
    if "polygons" in target:
        factors = (new_width / width, new_height / height)
        target["polygons"] = _move_polygons(target["polygons"], lambda p: p * factors)
    return resized, target


def _move_polygons(polygons: list[list[np.ndarray]],
                   move: Callable[[np.ndarray], np.ndarray]) -> list[list[np.ndarray]]:
    return [[move(segment) for segment in segments] for segments in polygons]
