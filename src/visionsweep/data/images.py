"""Reading image files: the one place visionsweep opens an image.

``probe_image`` checks a file before training or prediction (its header, or a full decode), and
``load_rgb`` / ``load_record_rgb`` decode it for a model. All of them refuse an image of more pixels
than a limit from its header, before a pixel is decoded: a small file can declare a huge size (a
decompression bomb: 30000 x 30000 pixels in 100 KB) and would otherwise take gigabytes to decode.
Every image comes out as 8-bit RGB, whatever its mode (16-bit, float, palette, with alpha).
"""
from __future__ import annotations

import logging
import re
import struct
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

from visionsweep.data import report as reasons
from visionsweep.data.records import ImageRecord

log = logging.getLogger("visionsweep")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})

# PIL's own default Image.MAX_IMAGE_PIXELS (a quarter GiB of 32-bit pixels), the default of the
# max_image_pixels setting.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

# What reading a damaged or hostile file can raise, in PIL or here: not an image or cut short (OSError,
# UnidentifiedImageError, EOFError), malformed fields or chunks (ValueError, SyntaxError, struct.error,
# zlib.error), a variant PIL's plugin does not decode (NotImplementedError: a DDS pixel format, whatever
# the file's name says), too many pixels (ImageTooLarge, a ValueError; PIL's DecompressionBombError, not
# an OSError). Every reader catches exactly these: an image that raises one is a bad record.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, NotImplementedError,
    Image.DecompressionBombError)


def describe_decode_error(error: BaseException) -> str:
    """How a decoding failure is reported: the error's type and message."""
    return f"{type(error).__name__}: {error}"


class ImageTooLarge(ValueError):
    """An image has more pixels than ``limit``, the value of the setting ``limit_name``; raised before it
    is decoded. ``size`` is None when PIL refused to open it at all."""

    def __init__(self, pixels: int, size: tuple[int, int] | None, limit: int, limit_name: str = "max_image_pixels",
                 message: str | None = None):
        self.pixels, self.size, self.limit, self.limit_name = pixels, size, limit, limit_name
        dimensions = f" ({size[0]}x{size[1]})" if size else ""
        super().__init__(message or f"has {pixels:,} pixels{dimensions}, more than {limit_name} ({limit:,})")


@dataclass(frozen=True)
class ImageProblem:
    """Why an image cannot be used: ``reason`` is one of the data report's reasons, ``detail`` a sentence
    about the file (to follow its path)."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return self.detail


def probe_image(path: Path, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                decode: bool = False) -> tuple[int, int] | ImageProblem:
    """Return (width, height) of an upright image, or the problem that keeps it from being used.

    Without ``decode`` it reads the header and checks the file's structure without decoding every
    pixel (PNG checksums; a JPEG cut short is not found this way), cheap enough to run on every record
    before training. With ``decode`` it decodes the image exactly as training does, so any image that
    passes can be read. An image of more than ``max_pixels`` pixels is a problem either way.
    """
    try:
        if decode:
            return load_rgb(path, max_pixels=max_pixels).size
        with _open(path, max_pixels) as image:
            image.verify()  # must come straight after open; the file is opened again to read the size
        with _open(path, max_pixels) as image:
            size = image.size
            orientation = image.getexif().get(0x0112, 1)
    except ImageTooLarge as error:
        return ImageProblem(reasons.IMAGE_TOO_LARGE,
                            f"{error}: a file this large may be a decompression bomb. If it is a genuine image, "
                            f"raise {error.limit_name} to at least {error.pixels:,}")
    except DECODE_ERRORS as error:
        return ImageProblem(reasons.UNREADABLE_IMAGE,
                            f"cannot be decoded as an image ({type(error).__name__}: {error})")
    if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
        size = (size[1], size[0])
    return size


def load_rgb(path: str | Path, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image as 8-bit RGB, upright: the EXIF orientation tag is applied, as photo viewers and
    labelling tools do, so that pixels line up with what the annotator saw.

    Raises ``ImageTooLarge`` (a ``ValueError``) for more than ``max_pixels`` pixels, before decoding;
    ``OSError`` or ``ValueError`` for a file that is not a readable image. Modes: 16-bit (``I;16*``)
    and 32-bit integer (``I``) images are taken as 0..65535 (values outside clipped) and keep their
    high byte, as PIL does for 16-bit colour; float (``F``) images are taken as 0..1 (clipped, NaN 0)
    and scaled by 255; images with transparency (``RGBA``, ``LA``, ``PA``, palette or single-colour
    transparency) are composited onto black.
    """
    with _open(path, max_pixels) as image:
        return _to_rgb(ImageOps.exif_transpose(image))


def load_record_rgb(record: ImageRecord) -> Image.Image:
    """Decode a checked record's image. Its check held it to the run's ``max_image_pixels`` and noted its
    size, so the file may have at most that many pixels now: a file replaced by a larger one since is
    refused, and an image allowed by a raised setting is not refused here. A record whose size was
    never checked gets the default limit."""
    if not (record.width and record.height):
        return load_rgb(record.image_path)
    checked = record.width * record.height
    try:
        return load_rgb(record.image_path, max_pixels=checked)
    except ImageTooLarge as error:
        raise ImageTooLarge(error.pixels, error.size, checked, message=(
            f"has {error.pixels:,} pixels now, more than the {checked:,} it had when the data was checked; "
            "the file changed since")) from None


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


@contextmanager
def _open(path: str | Path, max_pixels: int) -> Iterator[Image.Image]:
    """Open an image lazily (header only), refusing it when it has more than ``max_pixels`` pixels."""
    _allow_in_pil(max_pixels)
    try:
        image = Image.open(path)
    except Image.DecompressionBombError as error:  # PIL's own limit, above which it will not even open
        raise _refused_by_pil(error, max_pixels) from None
    with image:
        pixels = image.width * image.height
        if pixels > max_pixels:
            raise ImageTooLarge(pixels, image.size, max_pixels)
        try:
            yield image
        except Image.DecompressionBombError as error:  # checked again on a later frame or tile, not an OSError
            raise _refused_by_pil(error, max_pixels) from None


_PIL_LIMIT_LOCK = threading.Lock()


def _allow_in_pil(max_pixels: int) -> None:
    """Let PIL open images of up to ``max_pixels`` pixels.

    PIL keeps its own process-wide limit, ``Image.MAX_IMAGE_PIXELS``: it warns above it and refuses to
    open twice as many pixels. visionsweep's limit is checked here per call, so it leaves PIL's alone:
    it never lowers or removes it, and at its default (PIL's default) never touches it. Only a user who
    raises max_image_pixels above PIL's limit asks for larger images than PIL allows; then PIL's limit
    is raised to match, once and logged, or PIL would refuse what the setting allows. Raised here, at
    each open, so that data loader workers started afresh (spawn) raise it too.
    """
    if max_pixels <= DEFAULT_MAX_IMAGE_PIXELS:
        return
    with _PIL_LIMIT_LOCK:
        current = Image.MAX_IMAGE_PIXELS
        if current is not None and current < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels
            log.info("max_image_pixels is %s: PIL.Image.MAX_IMAGE_PIXELS raised from %s to match", f"{max_pixels:,}",
                     f"{current:,}")


def _refused_by_pil(error: Image.DecompressionBombError, max_pixels: int) -> ImageTooLarge:
    """PIL's refusal as ours. Its message reads 'Image size (900000000 pixels) exceeds limit of ...'."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    pixels = int(found.group(1)) if found else None
    if pixels is not None and pixels > max_pixels:
        return ImageTooLarge(pixels, None, max_pixels)
    # PIL's limit was lowered below ours in this process (by the code that uses visionsweep)
    return ImageTooLarge(pixels or 0, None, Image.MAX_IMAGE_PIXELS or 0, "PIL.Image.MAX_IMAGE_PIXELS",
                         message=f"was refused by PIL: {error}")


_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})  # premultiplied RGBa is already composited onto black


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any mode. PIL's ``convert("RGB")`` clips 16-bit and float values to 255 (a white image)
    and drops alpha, leaving whatever colour transparent pixels happen to hold."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":  # 16-bit samples; "I" is how PIL long stored 16-bit PNGs
        # The high byte, as PIL itself reads 16-bit RGB and RGBA files: a 16-bit grey image and the same
        # image in 16-bit colour give the same pixels, and v * 257 (8-bit widened to 16) gives v back.
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return Image.fromarray((values >> 8).astype(np.uint8)).convert("RGB")
    if mode == "F":
        values = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0)
        return Image.fromarray(np.rint(values * 255.0).astype(np.uint8)).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")
