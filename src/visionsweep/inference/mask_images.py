"""Writing predicted masks as image files (``export_as_image``), named as the reference names them."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
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


def export_mask_images(folder: str | Path, filename: str, binary_masks: np.ndarray, labels: Sequence[str],
                       scores: Sequence[float], image_type: str) -> list[Path]:
    """Write each (H, W) mask of ``binary_masks`` (K, H, W) as an 8-bit single-channel image, 255 for the
    object and 0 elsewhere, at the resolution given (the model frame), named by ``mask_image_path``.
    JPEG is lossy, so pixels near the edges of a jpg mask are not exactly 0 or 255; png and bmp are
    exact. Returns the paths written."""
    if image_type not in _PIL_FORMATS:
        raise ValueError(f"image_type must be one of {', '.join(_PIL_FORMATS)}, got {image_type!r}")
    paths = []
    for index, (mask, label, score) in enumerate(zip(squeeze_masks(binary_masks), labels, scores)):
        path = mask_image_path(folder, filename, index, label, score, image_type)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(np.asarray(mask).astype(bool), 255, 0).astype(np.uint8), mode="L").save(
            path, format=_PIL_FORMATS[image_type])
        paths.append(path)
    return paths
