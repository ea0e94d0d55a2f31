"""Masks and polygons of instance segmentation: rasterising polygons, tracing masks back into polygons
with a guaranteed point cap.

Coordinates. Polygons here are in PIXEL-CORNER coordinates: pixel (row r, column c) is the unit square
[c, c + 1) x [r, r + 1), so a frame of width W and height H spans [0, W] x [0, H] and normalising is a
plain division by W and H. Each object is a list of segments, each segment a (K, 2) float array of
(x, y) points that does not repeat its first point. Masks are (H, W) or (N, H, W) uint8/bool arrays.

Several segments of one object are combined by XOR when rasterised, as the reference does (spec 3.2):
an inner segment cuts a hole. ``mask_to_polygons`` traces holes as separate segments, so a mask with a
hole survives the round trip.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pycocotools import mask as mask_utils
import shapely
from skimage.measure import find_contours

Segments = list[np.ndarray]  # one object's segments, each (K, 2) x, y in pixel-corner coordinates

# Ramer-Douglas-Peucker at this tolerance (pixels) only removes points that lie on a straight line
# between their neighbours (the long straight runs of a traced pixel outline), at no cost in shape.
LOSSLESS_TOLERANCE = 1e-6
# Bisection steps on the tolerance once doubling has found a value that meets the cap; the interval
# then holds the smallest meeting tolerance to within 1/256 of its size.
_BISECTION_STEPS = 8


def polygons_to_masks(objects: Sequence[Segments], height: int, width: int) -> np.ndarray:
    """Rasterise objects into a (N, height, width) uint8 array (1 inside, 0 outside).

    A pixel is inside a segment when its centre is (pycocotools' polygon rasteriser); the segments of
    an object are XOR-combined; parts of a polygon outside the frame are cut off. An object without
    segments, or whose segments have fewer than 3 points, gives an empty mask. Memory is the output
    plus one (height, width) mask at a time.
    """
    masks = np.zeros((len(objects), height, width), np.uint8)
    for index, segments in enumerate(objects):
        for rle in _segment_rles(segments, height, width):
            masks[index] ^= mask_utils.decode(rle)
    return masks


def polygons_to_rles(objects: Sequence[Segments], height: int, width: int) -> list[dict]:
    """One COCO RLE per object, with the rules of ``polygons_to_masks``; only one object's dense mask
    exists at a time (none for single-segment objects), so any number of objects fits in memory."""
    rles = []
    for segments in objects:
        parts = _segment_rles(segments, height, width)
        if len(parts) == 1:
            rles.append(parts[0])
            continue
        mask = np.zeros((height, width), np.uint8)
        for rle in parts:
            mask ^= mask_utils.decode(rle)
        rles.append(mask_utils.encode(np.asfortranarray(mask)))
    return rles


def mask_to_polygons(mask: np.ndarray, *, max_points: int | None = 100,
                     tolerance: float = LOSSLESS_TOLERANCE) -> Segments:
    """Trace a binary (H, W) mask into segments in pixel-corner coordinates.

    Contours are marching-squares iso-lines at 0.5 (scikit-image ``find_contours``) of the mask padded
    by one pixel, so objects touching the border close along it; separate components and holes become
    separate segments. Each contour is simplified with Ramer-Douglas-Peucker (shapely's ``simplify``,
    GEOS) at ``tolerance`` pixels; when it still has more than ``max_points`` points, the smallest tolerance
    that meets the cap is searched for (doubling, then bisection), and if no tolerance does, points of
    the simplified contour are dropped evenly. So every segment has at most ``max_points`` points
    (``None``: no cap). Segments left with fewer than 3 points (specks) are dropped.
    """
    if max_points is not None and max_points < 3:
        raise ValueError(f"max_points must be at least 3 (a polygon needs three points), got {max_points}")
    binary = np.asarray(mask).astype(bool)
    if binary.ndim != 2:
        raise ValueError(f"mask must be a (H, W) array, got shape {binary.shape}")
    rows, cols = np.nonzero(binary.any(axis=1))[0], np.nonzero(binary.any(axis=0))[0]
    if not len(rows):
        return []
    # Trace only the region around the object: the cost is its box, not the whole frame.
    top, left = rows[0], cols[0]
    window = np.pad(binary[top:rows[-1] + 1, left:cols[-1] + 1], 1).astype(np.uint8)
    # (row, col) of the padded window, pixel centres at integers -> (x, y) pixel corners of the frame:
    # padded index p is frame index p - 1 + offset, whose centre is at corner coordinate p - 0.5 + offset.
    contours = [_closed(c[:, ::-1] + (left - 0.5, top - 0.5)) for c in find_contours(window, 0.5)]
    return [s for s in _simplify(contours, max_points, tolerance) if len(s) >= 3]


def mask_polygons(masks: np.ndarray, *, max_points: int, frame_size: tuple[int, int]) -> list[list[list[float]]]:
    """The ``polygon`` value of each predicted object: flat [x1, y1, x2, y2, ...] lists normalised by the
    (width, height) frame, at most ``max_points`` points each.

    ``masks`` is (K, H, W) or (K, 1, H, W) binary masks in the frame (a Mask R-CNN output cut at
    ``mask_pixel_score_threshold``). An object whose mask is empty gets an empty list.
    """
    width, height = frame_size
    return [[normalise_segment(segment, width, height) for segment in mask_to_polygons(mask, max_points=max_points)]
            for mask in squeeze_masks(masks)]


def normalise_segment(segment: np.ndarray, width: int, height: int) -> list[float]:
    """A (K, 2) pixel-corner segment as a flat [x1, y1, ...] list of fractions of the frame, in [0, 1]."""
    scaled = np.clip(np.asarray(segment, dtype=np.float64) / (width, height), 0.0, 1.0)
    return scaled.ravel().tolist()


def pixel_segments(polygons: Sequence[Sequence[float]], width: int, height: int) -> Segments:
    """Normalised flat segments (the JSONL ``polygon`` form) as (K, 2) pixel-corner arrays of a frame."""
    return [np.asarray(segment, dtype=np.float64).reshape(-1, 2) * (width, height) for segment in polygons]


# --- helpers ------------------------------------------------------------------------------------------


def _segment_rles(segments: Segments, height: int, width: int) -> list[dict]:
    # pycocotools reads a list whose first entry has exactly 4 values as boxes, so short segments must
    # never reach it; a segment needs 3 points to enclose anything anyway.
    flat = [np.asarray(s, dtype=np.float64).ravel().tolist() for s in segments if len(s) >= 3]
    return mask_utils.frPyObjects(flat, height, width) if flat else []


def _simplify(contours: list[np.ndarray], max_points: int | None, tolerance: float) -> list[np.ndarray]:
    """Ramer-Douglas-Peucker (shapely/GEOS, all contours in one call per step) on closed contours; the
    results do not repeat their first point and have at most ``max_points`` points each."""
    lines = shapely.linestrings(np.concatenate(contours),
                                indices=np.repeat(np.arange(len(contours)), [len(c) for c in contours]))
    tolerances = np.full(len(contours), float(tolerance))
    simplified = shapely.simplify(lines, tolerances, preserve_topology=False)
    if max_points is not None:
        over = _points(simplified) > max_points
        if over.any():
            # Per contour over the cap: double the tolerance until the cap holds, then bisect for the
            # smallest tolerance that meets it, so each outline keeps as much detail as the cap allows.
            low = tolerances.copy()
            high = np.where(over, np.maximum(tolerances, 0.5), tolerances)
            best = simplified.copy()
            extent = np.array([float(np.ptp(c, axis=0).max()) + 1.0 for c in contours])
            searching = over.copy()
            while searching.any():
                trial = shapely.simplify(lines[searching], high[searching], preserve_topology=False)
                meets = _points(trial) <= max_points
                found = np.flatnonzero(searching)
                best[found[meets]] = trial[meets]
                grow = found[~meets & (high[found] < extent[found])]
                low[grow], high[grow] = high[grow], high[grow] * 2
                searching[found[meets]] = False
                searching[found[~meets & (high[found] >= extent[found])]] = False
            for _ in range(_BISECTION_STEPS):
                middle = (low[over] + high[over]) / 2
                trial = shapely.simplify(lines[over], middle, preserve_topology=False)
                meets = _points(trial) <= max_points
                found = np.flatnonzero(over)
                best[found[meets]] = trial[meets]
                high[found[meets]] = middle[meets]
                low[found[~meets]] = middle[~meets]
            simplified = np.where(over, best, simplified)
    out = []
    for line in simplified:
        points = shapely.get_coordinates(line)[:-1]  # the closing point repeats the first
        if max_points is not None and len(points) > max_points:  # RDP is not guaranteed monotone; the cap is
            points = points[np.linspace(0, len(points) - 1, max_points).round().astype(int)]
        out.append(points)
    return out


def _points(lines: np.ndarray) -> np.ndarray:
    """Points of closed line strings, the repeated closing point not counted."""
    return shapely.get_num_coordinates(lines) - 1


def _closed(points: np.ndarray) -> np.ndarray:
    return points if np.array_equal(points[0], points[-1]) else np.vstack([points, points[:1]])


def squeeze_masks(masks: np.ndarray) -> np.ndarray:
    if hasattr(masks, "detach"):  # a torch tensor
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.ndim == 4:  # Mask R-CNN: (K, 1, H, W)
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W) or (K, 1, H, W), got shape {masks.shape}")
    return masks
