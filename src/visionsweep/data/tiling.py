"""Tiling for small-object detection: where the tiles of an image lie, and which objects each tile holds.

Coordinates: a ``Tile`` is a pixel box of the original (decoded, upright) image, (x0, y0, x1, y1) with
x1 and y1 exclusive, so the tile's pixels are ``image[y0:y1, x0:x1]``; its values are whole numbers
held as floats. Object boxes in records are fractions of the image (x0, y0, x1, y1); objects cut to a
tile are fractions of the tile.

The layout and the cutting rules are the reference's (spec section 4.1 and 4.3):

* a grid of (columns, rows) tiles with overlap ratio ``o`` has tiles of
  ``W / (o + (1 - o) columns)`` by ``H / (o + (1 - o) rows)`` pixels, starting every ``(1 - o)`` tile
  size, so that neighbours overlap by ``o`` of a tile and the last tile ends at the image edge; corners
  are rounded to whole pixels (half to even); tiles come column by column (tile index =
  column x rows + row);
* an object belongs to a tile when its intersection with the tile is at least one pixel wide and high
  after flooring both ends (any sliver counts, there is no minimum visible fraction); its box in the
  tile is the un-floored intersection;
* training and validation use the full images plus the tiles that hold at least one object (an
  image without objects gets no tiles); prediction uses the full images plus every tile.

Ours: a tile must be at least ``MIN_TILE_SIDE`` pixels wide and high. Training and validation images
whose grid gives smaller tiles are skipped as bad records when the data is read (``too_small``), so
a grid too fine for the data is reported before training starts instead of training on slivers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

import numpy as np

from visionsweep.data.records import ObjectAnnotation
from visionsweep.geometry.tile_layout import Tile, cut_boxes, tile_layout

if TYPE_CHECKING:
    from visionsweep.settings import Settings

# Smallest tile side in pixels. Each tile is resized up to the model's input (min_size, img_size), so a
# tile of a few pixels would become a blur of a few pixels' content; 32 is also the coarsest stride of
# the detectors' feature maps (FPN level 5, YOLOv5 P5).
MIN_TILE_SIDE = 32


@dataclass(frozen=True)
class Tiling:
    """The tiling settings of a run: ``grid`` (columns, rows), ``overlap`` ratio in [0, 1) and the IoU
    above which predictions of different tiles are duplicates (``nms_threshold``)."""

    grid: tuple[int, int]
    overlap: float = 0.25
    nms_threshold: float = 0.25

    def __post_init__(self) -> None:
        columns, rows = self.grid
        if columns < 1 or rows < 1 or (columns, rows) == (1, 1):
            raise ValueError(f"tile_grid_size must be two whole numbers >= 1 and not (1, 1), got {self.grid}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"tile_overlap_ratio must be in [0, 1), got {self.overlap}")
        if not 0.0 <= self.nms_threshold <= 1.0:
            raise ValueError(f"tile_predictions_nms_thresh must be in [0, 1], got {self.nms_threshold}")

    @classmethod
    def from_settings(cls, settings: Settings) -> Tiling | None:
        """The tiling of ``settings``, or None when ``tile_grid_size`` is unset (tiling off)."""
        if settings.tile_grid_size is None:
            return None
        columns, rows = settings.tile_grid_size
        return cls((int(columns), int(rows)), float(settings.tile_overlap_ratio),
                   float(settings.tile_predictions_nms_thresh))

    def layout(self, width: int, height: int) -> list[Tile]:
        """``tile_layout`` of a (width x height) image with this grid and overlap."""
        return tile_layout(width, height, self.grid, self.overlap)

    def tile_size(self, width: int, height: int) -> tuple[float, float]:
        """Width and height in pixels of the tiles of a (width x height) image (before rounding)."""
        columns, rows = self.grid
        return (width / (self.overlap + (1.0 - self.overlap) * columns),
                height / (self.overlap + (1.0 - self.overlap) * rows))

    def too_small(self, width: int, height: int) -> str | None:
        """Why a (width x height) image cannot be tiled with this grid (tiles under ``MIN_TILE_SIDE``
        pixels), with the largest grid that would fit it; None when it can."""
        tile_width, tile_height = self.tile_size(width, height)
        if min(tile_width, tile_height) >= MIN_TILE_SIDE:
            return None
        fits = [max(0, math.floor((side / MIN_TILE_SIDE - self.overlap) / (1.0 - self.overlap)))
                for side in (width, height)]
        hint = (f"a grid of at most {fits[0]}x{fits[1]} fits it" if min(fits) >= 1 and max(fits) >= 2
                else "the image is too small to be cut into tiles")
        return (f"{width} x {height} pixels: tile_grid_size {self.grid[0]}x{self.grid[1]} with overlap {self.overlap} "
                f"gives tiles of {tile_width:.1f} x {tile_height:.1f} pixels, under the {MIN_TILE_SIDE} a tile needs; "
                f"{hint}")

    @property
    def tiles_per_image(self) -> int:
        return self.grid[0] * self.grid[1]

    def images_per_batch(self, batch_size: int) -> int:
        """How many images (each with all its tiles) make a batch of about ``batch_size`` model inputs,
        as the reference counts tiles in its batches; at least one, since an image stays with its tiles."""
        return max(1, batch_size // (1 + self.tiles_per_image))


def objects_in_tiles(objects: Sequence[ObjectAnnotation], tiles: Sequence[Tile], width: int,
                     height: int) -> list[tuple[ObjectAnnotation, ...]]:
    """Per tile, the objects of a (width x height) image cut to it, with boxes as fractions of the tile.

    Labels and crowd flags are kept; polygons are dropped (tiling is for boxes only).
    """
    if not objects or not tiles:
        return [() for _ in tiles]
    scale = np.array([width, height, width, height], dtype=np.float64)
    pixels = np.array([o.box for o in objects], dtype=np.float64) * scale
    inside, relative = cut_boxes(pixels, np.array(tiles, dtype=np.float64))
    return [tuple(replace(objects[n], box=tuple(float(v) for v in relative[t, n]), polygons=())
                  for n in np.flatnonzero(inside[t]))
            for t in range(len(tiles))]


def tiles_with_objects(objects: Sequence[ObjectAnnotation], tiling: Tiling, width: int,
                       height: int) -> list[tuple[Tile, tuple[ObjectAnnotation, ...]]]:
    """The tiles of an image that hold at least one object, each with its objects cut to it (the tiles
    that training and validation use); an image without objects has none."""
    if not objects:
        return []
    tiles = tiling.layout(width, height)
    return [(tile, cut) for tile, cut in zip(tiles, objects_in_tiles(objects, tiles, width, height)) if cut]


def all_tiles(objects: Sequence[ObjectAnnotation], tiling: Tiling, width: int,
              height: int) -> list[tuple[Tile, tuple[ObjectAnnotation, ...]]]:
    """Every tile of an image (the tiles that prediction uses), each with its objects cut to it."""
    tiles = tiling.layout(width, height)
    return list(zip(tiles, objects_in_tiles(objects, tiles, width, height)))
