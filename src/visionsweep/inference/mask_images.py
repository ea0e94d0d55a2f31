"""Writing predicted masks as image files (``export_as_image``), named as the reference names them, at the
original image's resolution (the reference writes the model frame's; see ``export_mask_images``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from visionsweep.geometry.masks import squeeze_masks

_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "bmp": "BMP"}


def mask_image_path(folder: str | Path, filename: str, index: int, label: str, score: float,
                    image_type: str) -> Path:
    """Where ``export_mask_images`` writes one mask (the reference's naming, spec 6.5)::

        FOLDER/<root>/<label>/<root>_<index>_label_<label>_conf_<score>.<image_type>

    ``root`` is the image's file name up to its first dot (``images/a.b.jpg`` -> ``a``), ``index`` the
    position of the prediction in the image's line (0-based), ``score`` the first four characters of
    the score written as a decimal without its dot (0.98765 -> ``0987``, 0.5 -> ``05``, 1.0 -> ``10``).
    Path separators in a class name become ``_`` so that a class cannot write outside its folder.
    """
    root = Path(filename.replace("\\", "/")).name.split(".", 1)[0]
    safe_label = label.replace("/", "_").replace("\\", "_").replace(os.sep, "_")
    confidence = str(float(score)).replace(".", "")[:4]
    name = f"{root}_{index}_label_{safe_label}_conf_{confidence}.{image_type}"
    return Path(folder) / root / safe_label / name


def export_mask_images(folder: str | Path, filename: str, masks: np.ndarray, labels: Sequence[str],
                       scores: Sequence[float], image_type: str, *, threshold: float = 0.5,
                       size: tuple[int, int] | None = None) -> list[Path]:
    """Write each mask of ``masks`` as an 8-bit single-channel image, 255 for the object and 0 elsewhere,
    named by ``mask_image_path``. Returns the paths written.

    ``masks`` is (K, H, W) or (K, 1, H, W) in the model frame: mask probabilities (a Mask R-CNN's soft
    masks), an object wherever they are above ``threshold`` (``mask_pixel_score_threshold``), or binary
    masks (bool or integer), whose 0/1 values are treated as probabilities cut at 0.5.

    ``size`` (width, height), the original image's size, writes each mask at that resolution, so that it
    lies exactly over the photo: the probabilities are resized bilinearly (as torchvision pastes a mask
    into its box) and only then cut, so object edges fall on original pixels instead of being blocks of
    frame pixels. This differs from the reference, which writes masks at the model frame's resolution
    (spec 6.5); ``size=None`` does that. JPEG is lossy, so pixels near the edges of a jpg mask are not
    exactly 0 or 255; png and bmp are exact.
    """
    if image_type not in _PIL_FORMATS:
        raise ValueError(f"image_type must be one of {', '.join(_PIL_FORMATS)}, got {image_type!r}")
    frames = squeeze_masks(masks)
    cut = 0.5 if frames.dtype == bool or np.issubdtype(frames.dtype, np.integer) else float(threshold)
    paths = []
    for index, (mask, label, score) in enumerate(zip(frames, labels, scores)):
        path = mask_image_path(folder, filename, index, label, score, image_type)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(_resized(mask, size) > cut, 255, 0).astype(np.uint8), mode="L").save(
            path, format=_PIL_FORMATS[image_type])
        paths.append(path)
    return paths


def _resized(mask: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """One (H, W) mask as float32 probabilities, resized bilinearly to (width, height) ``size`` if given;
    one mask at a time, so memory is a single original-size mask however many objects there are."""
    probabilities = torch.from_numpy(np.asarray(mask, dtype=np.float32))
    if size is not None and tuple(size) != (probabilities.shape[1], probabilities.shape[0]):
        width, height = int(size[0]), int(size[1])
        if width < 1 or height < 1:
            raise ValueError(f"a mask image needs a positive width and height, got {width} x {height}")
        probabilities = F.interpolate(probabilities[None, None], size=(height, width), mode="bilinear",
                                      align_corners=False)[0, 0]
    return probabilities.numpy()
