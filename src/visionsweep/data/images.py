"""Reading image files."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image as RGB, upright: the EXIF orientation tag is applied, as photo viewers and
    labelling tools do, so that pixels line up with what the annotator saw."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")


def probe_image(path: Path) -> tuple[int, int] | str:
    """Return (width, height) of an upright image, or a sentence saying why it cannot be read.

    Reads the header and checks the file's structure without decoding every pixel, so it is cheap
    enough to run on every record before training.
    """
    try:
        with Image.open(path) as image:
            image.verify()  # must come straight after open; the file is opened again to read the size
        with Image.open(path) as image:
            size = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return f"cannot be decoded as an image ({type(error).__name__}: {error})"
    if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
        size = (size[1], size[0])
    return size


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS
