"""Where the tiles of an image lie, and which pixel boxes each tile cuts (spec sections 4.1 and 4.3).

A ``Tile`` is a pixel box of the original (decoded, upright) image, (x0, y0, x1, y1) with x1 and y1
exclusive, so the tile's pixels are ``image[y0:y1, x0:x1]``; its values are whole numbers held as
floats. ``visionsweep.data.tiling`` applies this to records (the ``Tiling`` settings, objects per tile);
``tile_merge`` folds the predictions of the tiles back into their image.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Tile(NamedTuple):
    """A tile's pixel box in its image: left, top, right, bottom (right and bottom exclusive), whole
    numbers held as floats. Tiles compare, hash and sort as that tuple."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def pixels(self) -> tuple[int, int, int, int]:
        """The box as ints, for slicing ``image[:, y0:y1, x0:x1]``."""
        return int(self.x0), int(self.y0), int(self.x1), int(self.y1)


def tile_layout(width: int, height: int, grid: tuple[int, int], overlap: float) -> list[Tile]:
    """The tiles of a (width x height) image for a (columns, rows) grid, column by column.

    Tiles are ``width / (overlap + (1 - overlap) columns)`` wide (rows alike), start every
    ``(1 - overlap)`` tile width from 0, and have their corners rounded half to even; the last column
    ends at ``width`` and the last row at ``height``. Arithmetic is float32, as the reference's, so
    that corners round the same way. Example: 640 x 480, grid (3, 2), overlap 0.25 gives (0, 0, 256,
    274), (0, 206, 256, 480), (192, 0, 448, 274), ... (384, 206, 640, 480).
    """
    columns, rows = grid
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    x0, x1 = _axis(width, columns, overlap)
    y0, y1 = _axis(height, rows, overlap)
    return [Tile(float(a), float(c), float(b), float(d)) for a, b in zip(x0, x1) for c, d in zip(y0, y1)]


def cut_boxes(boxes: np.ndarray, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut pixel boxes to tiles.

    ``boxes`` (N, 4) and ``tiles`` (T, 4) are (x0, y0, x1, y1) pixels of the same image. Returns
    ``inside`` (T, N) bool, true where box n belongs to tile t (floor(x1') - floor(x0') > 0 and the same
    for y, with (x0', y0', x1', y1') the intersection), and ``relative`` (T, N, 4), each intersection
    relative to its tile's top-left corner and divided by the tile's size (meaningful where ``inside``).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    tiles = np.asarray(tiles, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(boxes[None, :, :2], tiles[:, None, :2])
    bottom_right = np.minimum(boxes[None, :, 2:], tiles[:, None, 2:])
    # Floors: a box that would be zero pixels wide once its coordinates are truncated is not in the tile.
    inside = ((np.floor(bottom_right) - np.floor(top_left)) > 0).all(axis=2)
    origin = tiles[:, None, :2]
    size = tiles[:, None, 2:] - tiles[:, None, :2]
    relative = np.concatenate([(top_left - origin) / size, (bottom_right - origin) / size], axis=2)
    return inside, relative


# --- helpers ------------------------------------------------------------------------------------------


def _axis(length: int, count: int, overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """Rounded (starts, ends) of ``count`` tiles along an axis of ``length`` pixels."""
    size = length / (overlap + (1.0 - overlap) * count)
    starts = (np.arange(count, dtype=np.float64) * ((1.0 - overlap) * size)).astype(np.float32)
    ends = starts + np.float32(size)
    # The last end is ``length`` up to float32 rounding; the cap keeps it there for any image size.
    return np.rint(starts), np.minimum(np.rint(ends), np.float32(length))
