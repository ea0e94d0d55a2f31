"""The YOLOv5 input pipeline: resize, letterbox, mosaic, random affine, flip, multi-scale and batching.

Conventions: an image is a (H, W, 3) uint8 RGB numpy array; boxes are float32 (n, 4) arrays of
(x0, y0, x1, y1) in continuous pixel coordinates of that image (pixel i covers [i, i + 1)), so a
box's edges move exactly as the image's pixels do under resizing, padding, flipping and warping.
Batches carry targets in the YOLO layout: (n, 6) rows (image index, class, cx, cy, w, h),
normalised by the network input width and height. Images leave as uint8 (B, 3, S, S); the model
takes ``images.float() / 255`` (no mean/std normalisation). Randomness comes from a
``numpy.random.Generator`` handed in, so every function is reproducible from a seed.

Pixels are resized and warped with Pillow (the reference uses OpenCV): Pillow's bilinear filter
averages over the source when shrinking, so small details alias less; geometry is identical.
Letterbox offsets are kept as the whole pixels actually padded (not half the padding as a float),
so that boxes map back to the original image exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from visionsweep.data.images import load_record_rgb
from visionsweep.data.records import ImageRecord
from visionsweep.devices import generator_from_state, generator_state

PAD_VALUE = 114  # grey of letterbox padding, the mosaic canvas and affine borders
STRIDE = 32      # the largest stride of the network: every input side is a multiple of it


@dataclass
class YoloSample:
    """One image with its objects. ``boxes`` (n, 4) float32 pixel (x0, y0, x1, y1); ``classes`` (n,) int64."""

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.image.shape[1], self.image.shape[0]


@dataclass(frozen=True)
class LetterboxInfo:
    """How an original image maps into the square network input, to undo it for predictions.

    A point (x, y) of the original image lands at (x * scale[0] + pad[0], y * scale[1] + pad[1]) in
    the network input. ``original_size`` is (width, height) of the original image in pixels.
    """

    original_size: tuple[int, int]
    scale: tuple[float, float]
    pad: tuple[int, int]


@dataclass(frozen=True)
class AffineParams:
    """Ranges of the random affine (the reference's ``degrees``, ``translate``, ``scale``, ``shear``)."""

    degrees: float = 0.0
    translate: float = 0.0
    scale: float = 0.5
    shear: float = 0.0


def load_sample(record: ImageRecord, class_index: Mapping[str, int]) -> YoloSample:
    """Read a detection record's image (RGB, EXIF-upright) and turn its normalised boxes into pixels."""
    image = np.asarray(load_record_rgb(record))
    height, width = image.shape[:2]
    boxes = np.array([o.box for o in record.objects], dtype=np.float32).reshape(-1, 4)
    boxes *= np.array([width, height, width, height], dtype=np.float32)
    classes = np.array([class_index[o.label] for o in record.objects], dtype=np.int64)
    return YoloSample(image, boxes, classes)


def resize_longest(sample: YoloSample, img_size: int, *, augment: bool) -> YoloSample:
    """Resize so that the longer side is ``img_size`` (smaller images are enlarged), boxes with it.

    Shrinking without augmentation uses area averaging (PIL's box filter); everything else bilinear.
    """
    width, height = sample.size
    ratio = img_size / max(width, height)
    if ratio == 1.0:
        return sample
    new_size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    resample = Image.Resampling.BOX if ratio < 1.0 and not augment else Image.Resampling.BILINEAR
    return _resized(sample, new_size, resample)


def letterbox(sample: YoloSample, size: int, *, scale_up: bool = True
              ) -> tuple[YoloSample, tuple[float, float], tuple[int, int]]:
    """Fit the image into a ``size`` x ``size`` square, keeping its aspect ratio, and pad with grey.

    The scale is min(size / h, size / w), capped at 1 unless ``scale_up``. The padding is split
    as left = round(dw / 2 - 0.1), right = round(dw / 2 + 0.1) (top/bottom likewise). Returns the
    padded sample, the (sx, sy) scale actually applied (after rounding to whole pixels) and the
    (left, top) padding.
    """
    width, height = sample.size
    ratio = min(size / height, size / width)
    if not scale_up:
        ratio = min(ratio, 1.0)
    new_size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    if new_size != (width, height):
        sample = _resized(sample, new_size, Image.Resampling.BILINEAR)
    left, top = centred_padding(new_size, (size, size))
    right, bottom = size - new_size[0] - left, size - new_size[1] - top
    image = np.pad(sample.image, ((top, bottom), (left, right), (0, 0)), constant_values=PAD_VALUE)
    boxes = sample.boxes + np.array([left, top, left, top], dtype=np.float32)
    return YoloSample(image, boxes, sample.classes), (new_size[0] / width, new_size[1] / height), (left, top)


def centred_padding(size: tuple[int, int], frame: tuple[int, int]) -> tuple[int, int]:
    """The (left, top) padding that centres a (width, height) image in a larger (width, height) frame:
    round(d / 2 - 0.1) of each side's total padding d (the rest goes right and below)."""
    return round((frame[0] - size[0]) / 2 - 0.1), round((frame[1] - size[1]) / 2 - 0.1)


def batch_frame(sizes: Iterable[tuple[int, int]], stride: int = STRIDE) -> tuple[int, int]:
    """The smallest (width, height), each a multiple of ``stride``, that holds every (width, height) of
    ``sizes``: the network input of a rectangular batch."""
    widths, heights = zip(*sizes)
    return math.ceil(max(widths) / stride) * stride, math.ceil(max(heights) / stride) * stride


def resize_for_inference(sample: YoloSample, img_size: int) -> tuple[YoloSample, LetterboxInfo]:
    """The validation / inference resize: the longer side to ``img_size`` (area averaging when shrinking).
    The padding comes with the batch (``dataset.collate_yolo``): the returned info's ``pad`` is (0, 0)
    until then. Padded to ``img_size`` x ``img_size`` this is ``letterbox_for_inference``."""
    original = sample.size
    resized = resize_longest(sample, img_size, augment=False)
    width, height = resized.size
    return resized, LetterboxInfo(original, (width / original[0], height / original[1]), (0, 0))


def letterbox_for_inference(sample: YoloSample, img_size: int) -> tuple[YoloSample, LetterboxInfo]:
    """The validation / inference path: resize the longer side to ``img_size`` (area averaging when
    shrinking) and letterbox without further enlarging. Returns the input sample and how to undo it."""
    resized, info = resize_for_inference(sample, img_size)
    padded, _, pad = letterbox(resized, img_size, scale_up=False)
    return padded, replace(info, pad=pad)


def mosaic(samples: Sequence[YoloSample], img_size: int, rng: np.random.Generator) -> YoloSample:
    """Tile four samples around a random centre of a 2S x 2S grey canvas (S = ``img_size``).

    The centre (xc, yc) is drawn uniformly in [S/2, 3S/2) on each axis. Sample 0 goes top-left of
    it (its bottom-right corner at the centre), 1 top-right, 2 bottom-left, 3 bottom-right; each
    is cut where it leaves the canvas, and boxes are shifted and clipped to the canvas.
    Samples should already be resized to a longer side of S (``resize_longest``).
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic takes 4 samples; got {len(samples)}")
    s2 = 2 * img_size
    xc, yc = (int(v) for v in rng.uniform(img_size / 2, 3 * img_size / 2, size=2))
    canvas = np.full((s2, s2, 3), PAD_VALUE, dtype=np.uint8)
    boxes, classes = [], []
    for corner, sample in enumerate(samples):
        w, h = sample.size
        # Where the sample sits on the canvas: (x0, y0) of its top-left corner, possibly off-canvas.
        x0 = xc - w if corner in (0, 2) else xc
        y0 = yc - h if corner in (0, 1) else yc
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, s2), min(y0 + h, s2)
        canvas[cy0:cy1, cx0:cx1] = sample.image[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        boxes.append(sample.boxes + np.array([x0, y0, x0, y0], dtype=np.float32))
        classes.append(sample.classes)
    all_boxes = np.clip(np.concatenate(boxes), 0, s2).astype(np.float32)
    return YoloSample(canvas, all_boxes, np.concatenate(classes))


def random_affine(sample: YoloSample, rng: np.random.Generator, params: AffineParams = AffineParams(),
                  *, border: int = 0) -> YoloSample:
    """Warp by Shear . Translate . (Rotate + Scale about the image centre), with a grey fill.

    Angle ~ U(-degrees, degrees), scale s ~ U(1 - scale, 1 + scale), translation ~ U(-translate,
    translate) x side + ``border``, shear ~ U(-shear, shear) degrees on each axis. The output is
    (H + 2 border) x (W + 2 border): a negative border crops (the mosaic uses -S/2 to go from 2S
    back to S). Boxes become the clipped axis-aligned hull of their moved corners and are kept if
    w > 2, h > 2, area / (area before x s) > 0.2 and aspect ratio < 20 (pixels after warping).
    """
    width, height = sample.size
    out_w, out_h = width + 2 * border, height + 2 * border
    angle = math.radians(rng.uniform(-params.degrees, params.degrees))
    s = rng.uniform(1 - params.scale, 1 + params.scale)
    rotate = _rotation_about(angle, s, width / 2, height / 2)
    translate = np.eye(3)
    translate[0, 2] = rng.uniform(-params.translate, params.translate) * width + border
    translate[1, 2] = rng.uniform(-params.translate, params.translate) * height + border
    shear = np.eye(3)
    shear[0, 1] = math.tan(math.radians(rng.uniform(-params.shear, params.shear)))
    shear[1, 0] = math.tan(math.radians(rng.uniform(-params.shear, params.shear)))
    matrix = shear @ translate @ rotate

    if border != 0 or not np.allclose(matrix, np.eye(3)):
        inverse = np.linalg.inv(matrix)[:2].ravel()
        warped = Image.fromarray(sample.image).transform(
            (out_w, out_h), Image.Transform.AFFINE, tuple(inverse), resample=Image.Resampling.BILINEAR,
            fillcolor=(PAD_VALUE,) * 3)
        image = np.asarray(warped)
    else:
        image = sample.image
    boxes, keep = _warp_boxes(sample.boxes, matrix, s, out_w, out_h)
    return YoloSample(image, boxes[keep], sample.classes[keep])


def random_hsv(sample: YoloSample, rng: np.random.Generator, gains: tuple[float, float, float]) -> YoloSample:
    """Scale hue, saturation and value by factors drawn in [1 - gain, 1 + gain] (hue wraps around).

    Pillow's HSV has all three channels in 0..255; the factors apply through one lookup table per channel.
    Boxes do not move. Gains of 0 return the sample as it is (and draw nothing)."""
    if not any(gains):
        return sample
    factors = rng.uniform(-1.0, 1.0, 3) * np.asarray(gains) + 1.0
    hsv = np.asarray(Image.fromarray(sample.image).convert("HSV"))
    levels = np.arange(256, dtype=np.float64)
    tables = (np.mod(levels * factors[0], 256.0), np.clip(levels * factors[1], 0, 255),
              np.clip(levels * factors[2], 0, 255))
    jittered = np.stack([table.astype(np.uint8)[hsv[..., c]] for c, table in enumerate(tables)], axis=-1)
    return YoloSample(np.asarray(Image.fromarray(jittered, "HSV").convert("RGB")), sample.boxes, sample.classes)


def random_hflip(sample: YoloSample, rng: np.random.Generator, p: float = 0.5) -> YoloSample:
    """Mirror left-right with probability ``p`` (x0' = W - x1, x1' = W - x0)."""
    if rng.random() >= p:
        return sample
    width = sample.size[0]
    boxes = sample.boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], dtype=np.float32)
    boxes += np.array([width, 0, width, 0], dtype=np.float32)
    return YoloSample(np.ascontiguousarray(sample.image[:, ::-1]), boxes, sample.classes)


class YoloTrainTransform:
    """Training augmentation of the reference: mosaic or letterbox, random affine, horizontal flip, and
    (the recipe's, see ``YoloRecipe.hsv_gains``) a colour jitter.

    With ``mosaic`` (``apply_mosaic_for_yolo``) a call takes 4 samples (the element and three drawn
    from the dataset) and the affine is always applied (border -S/2), whatever ``augment`` says.
    Without it a call takes one sample, which is letterboxed (enlarging allowed when ``augment``)
    and warped only when ``augment`` (``apply_automl_train_augmentations``). The colour jitter (``hsv_gains``)
    and the flip (p = 0.5) happen only when ``augment``. Samples come at their original size; the result is
    S x S.
    """

    def __init__(self, img_size: int, *, mosaic: bool = True, augment: bool = True,
                 affine: AffineParams = AffineParams(), flip_p: float = 0.5,
                 hsv_gains: tuple[float, float, float] = (0.0, 0.0, 0.0)):
        if img_size % STRIDE:
            raise ValueError(f"img_size must be a multiple of {STRIDE}; got {img_size}")
        self.img_size = img_size
        self.mosaic = mosaic
        self.augment = augment
        self.affine = affine
        self.flip_p = flip_p
        self.hsv_gains = hsv_gains

    @property
    def samples_needed(self) -> int:
        return 4 if self.mosaic else 1

    def without_mosaic(self) -> YoloTrainTransform:
        """The same augmentation of single images."""
        return YoloTrainTransform(self.img_size, mosaic=False, augment=self.augment, affine=self.affine,
                                  flip_p=self.flip_p, hsv_gains=self.hsv_gains)

    def __call__(self, samples: Sequence[YoloSample], rng: np.random.Generator) -> YoloSample:
        if len(samples) != self.samples_needed:
            raise ValueError(f"this transform takes {self.samples_needed} sample(s); got {len(samples)}")
        resized = [resize_longest(s, self.img_size, augment=True) for s in samples]
        if self.mosaic:
            sample = mosaic(resized, self.img_size, rng)
            sample = random_affine(sample, rng, self.affine, border=-(self.img_size // 2))
        else:
            sample, _, _ = letterbox(resized[0], self.img_size, scale_up=self.augment)
            if self.augment:
                sample = random_affine(sample, rng, self.affine)
        if self.augment:
            sample = random_hsv(sample, rng, self.hsv_gains)
            sample = random_hflip(sample, rng, self.flip_p)
        return sample


class YoloDataset(Dataset):
    """Detection records as YOLO inputs: ``dataset[i] -> (image, labels, info)``.

    ``image`` is uint8 (3, S, S); ``labels`` float32 (n, 6) rows (0, class, cx, cy, w, h) normalised
    by S (``yolo_collate`` fills the first column); ``info`` is the ``LetterboxInfo`` of the
    un-augmented path (None when training). With a ``transform`` the dataset trains: mosaic
    partners are drawn uniformly, with replacement, from the whole dataset. The random generator
    is re-seeded from ``torch.initial_seed()`` in each worker process, so a seeded DataLoader gives
    reproducible, per-epoch-different augmentation.
    """

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str], img_size: int,
                 transform: YoloTrainTransform | None = None):
        self.records = list(records)
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.img_size = img_size
        self.transform = transform
        self._rng: np.random.Generator | None = None
        self._rng_seed: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, LetterboxInfo | None]:
        sample = load_sample(self.records[index], self.class_index)
        info = None
        if self.transform is None:
            sample, info = letterbox_for_inference(sample, self.img_size)
        else:
            rng = self._generator()
            others = rng.integers(0, len(self.records), size=self.transform.samples_needed - 1)
            group = [sample, *(load_sample(self.records[i], self.class_index) for i in others)]
            sample = self.transform(group, rng)
        image = torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1)))
        return image, to_yolo_labels(sample), info

    def _generator(self) -> np.random.Generator:
        seed = torch.initial_seed()
        if self._rng is None or seed != self._rng_seed:
            self._rng, self._rng_seed = np.random.default_rng(seed), seed
        return self._rng

    def generator_state(self) -> dict[str, Any] | None:
        """This process's augmentation generator as plain data (None before its first draw): it runs on
        across epochs, so a resumed run restores it (``restore_generator_state``) to draw what the
        interrupted run would have drawn."""
        if self._rng is None:
            return None
        return {"seed": self._rng_seed, "state": generator_state(self._rng)}

    def restore_generator_state(self, state: dict[str, Any] | None) -> None:
        if state is None:
            self._rng, self._rng_seed = None, None
        else:
            self._rng, self._rng_seed = generator_from_state(state["state"]), state["seed"]


def to_yolo_labels(sample: YoloSample) -> torch.Tensor:
    """(n, 6) float32 rows (0, class, cx, cy, w, h), normalised by the sample's width and height."""
    width, height = sample.size
    b = sample.boxes
    rows = np.zeros((len(b), 6), dtype=np.float32)
    rows[:, 1] = sample.classes
    rows[:, 2] = (b[:, 0] + b[:, 2]) / 2 / width
    rows[:, 3] = (b[:, 1] + b[:, 3]) / 2 / height
    rows[:, 4] = (b[:, 2] - b[:, 0]) / width
    rows[:, 5] = (b[:, 3] - b[:, 1]) / height
    return torch.from_numpy(rows)


def yolo_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, LetterboxInfo | None]]
                 ) -> tuple[torch.Tensor, torch.Tensor, list[LetterboxInfo | None]]:
    """Stack images to uint8 (B, 3, S, S), concatenate labels to (n, 6) with column 0 = image index."""
    images, labels, infos = zip(*batch)
    targets = torch.cat([torch.cat((torch.full((len(l), 1), i, dtype=l.dtype), l[:, 1:]), dim=1)
                         for i, l in enumerate(labels)])
    return torch.stack(images), targets, list(infos)


def multi_scale_size(img_size: int, rng: np.random.Generator, stride: int = STRIDE) -> int:
    """A training side length drawn uniformly from [0.5 S, 1.5 S + stride) and floored to a multiple
    of ``stride`` (never below one stride): for S = 640, one of 320, 352, ..., 960."""
    side = int(rng.integers(int(img_size * 0.5), int(img_size * 1.5 + stride)))
    return max(stride, side // stride * stride)


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly resize a float (B, 3, S, S) batch to (B, 3, size, size). Normalised targets stay valid."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def _resized(sample: YoloSample, new_size: tuple[int, int], resample: Image.Resampling) -> YoloSample:
    width, height = sample.size
    image = np.asarray(Image.fromarray(sample.image).resize(new_size, resample))
    factors = np.array([new_size[0] / width, new_size[1] / height] * 2, dtype=np.float32)
    return YoloSample(image, sample.boxes * factors, sample.classes)


def _rotation_about(angle: float, scale: float, cx: float, cy: float) -> np.ndarray:
    """3x3 matrix rotating by ``angle`` radians (counter-clockwise on screen) and scaling about (cx, cy)."""
    a, b = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy], [0.0, 0.0, 1.0]])


def _warp_boxes(boxes: np.ndarray, matrix: np.ndarray, s: float, out_w: int, out_h: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Move the four corners of every box, take the clipped hull, and say which boxes survive."""
    n = len(boxes)
    if n == 0:
        return boxes.reshape(0, 4), np.zeros(0, dtype=bool)
    corners = np.ones((n * 4, 3))
    corners[:, :2] = boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(n * 4, 2)  # (x0,y0) (x1,y1) (x0,y1) (x1,y0)
    moved = (corners @ matrix.T)[:, :2].reshape(n, 4, 2)
    hull = np.concatenate((moved.min(axis=1), moved.max(axis=1)), axis=1)
    hull = np.clip(hull, 0, [out_w, out_h, out_w, out_h]).astype(np.float32)
    w, h = hull[:, 2] - hull[:, 0], hull[:, 3] - hull[:, 1]
    area_before = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    aspect = np.maximum(w / (h + 1e-16), h / (w + 1e-16))
    keep = (w > 2) & (h > 2) & (w * h / (area_before * s + 1e-16) > 0.2) & (aspect < 20)
    return hull, keep
