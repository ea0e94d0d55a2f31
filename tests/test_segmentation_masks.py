"""Masks and polygons: tracing known masks into polygons and rasterising them back, the point cap on a noisy
mask, XOR segments, normalised output, and the names and contents of exported mask images."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from visionsweep.inference.mask_images import export_mask_images, mask_image_path
from visionsweep.geometry.masks import (
    mask_polygons,
    mask_to_polygons,
    pixel_segments,
    polygons_to_masks,
    polygons_to_rles,
)

HEIGHT, WIDTH = 100, 150
ROWS, COLS = np.mgrid[:HEIGHT, :WIDTH]


def _iou(a, b):
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return (a & b).sum() / (a | b).sum()


def _round_trip(mask, **options):
    segments = mask_to_polygons(mask, **options)
    return segments, polygons_to_masks([segments], *mask.shape)[0]


def _square():
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[20:60, 30:90] = 1
    return mask


def _ring():
    distance = np.hypot(ROWS - 50, COLS - 75)
    return ((distance < 40) & (distance > 20)).astype(np.uint8)


def _two_blobs():
    return ((np.hypot(ROWS - 30, COLS - 30) < 15) | (np.hypot(ROWS - 70, COLS - 110) < 20)).astype(np.uint8)


def test_a_filled_square_becomes_its_exact_outline():
    segments, back = _round_trip(_square())
    (outline,) = segments
    # Pixel corners: the square covers columns 30-89 and rows 20-59, i.e. x in [30, 90], y in [20, 60].
    assert outline[:, 0].min() == 30 and outline[:, 0].max() == 90
    assert outline[:, 1].min() == 20 and outline[:, 1].max() == 60
    assert len(outline) <= 8  # straight runs collapse to their ends (the corners are cut by half a pixel)
    assert np.array_equal(back, _square())


@pytest.mark.parametrize("make, pieces", [(_square, 1), (_ring, 2), (_two_blobs, 2)])
def test_known_masks_come_back_from_their_polygons(make, pieces):
    mask = make()
    segments, back = _round_trip(mask)
    assert len(segments) == pieces  # a ring is an outline and a hole; two blobs are two outlines
    assert all(3 <= len(s) <= 100 for s in segments)
    assert _iou(back, mask) > 0.9
    assert _iou(back, mask) > 0.99  # in fact all but a few boundary pixels


def test_a_ring_keeps_its_hole_because_segments_combine_by_xor():
    segments, back = _round_trip(_ring())
    assert back[50, 75] == 0 and back[50, 75 + 30] == 1
    assert polygons_to_masks([segments[:1]], HEIGHT, WIDTH)[0][50, 75] == 1  # the outline alone is filled


def test_the_point_cap_always_holds_on_a_noisy_mask():
    rng = np.random.default_rng(0)
    noisy = rng.random((120, 160)) < 0.45
    noisy[20:100, 20:140] |= rng.random((80, 120)) < 0.8
    for cap in (3, 4, 10, 50, 100):
        segments = mask_to_polygons(noisy, max_points=cap)
        assert segments and max(len(s) for s in segments) <= cap
        assert min(len(s) for s in segments) >= 3
    uncapped = mask_to_polygons(noisy, max_points=None)
    assert max(len(s) for s in uncapped) > 100  # the cap had work to do


def test_the_cap_keeps_as_much_shape_as_it_allows():
    disk = np.hypot(*np.mgrid[-200:200, -300:300]) < 180
    (detailed,) = mask_to_polygons(disk, max_points=None)
    (capped,) = mask_to_polygons(disk, max_points=40)
    assert len(detailed) > 200 and 30 <= len(capped) <= 40
    assert _iou(polygons_to_masks([[capped]], *disk.shape)[0], disk) > 0.99


def test_unions_of_primitive_shapes_survive_the_round_trip():
    # As the reference's property test: combinations of grid rectangles and stripes, < 5% of the
    # foreground pixels differ after mask -> polygons -> mask.
    shapes = [((ROWS // 34 == r) & (COLS // 50 == c)) for r in range(3) for c in range(3)]
    shapes += [((ROWS + COLS) // 12) % 2 == 0, ((ROWS - COLS) // 9) % 3 == 0]
    shapes += [~shapes[0], ~shapes[-1]]
    for combination in list(itertools.combinations(range(len(shapes)), 3))[::7]:
        mask = np.logical_or.reduce([shapes[i] for i in combination])
        _, back = _round_trip(mask, max_points=None)
        assert (back.astype(bool) != mask).sum() < 0.05 * mask.sum(), combination


def test_edges_of_the_frame_and_empty_masks():
    full = np.ones((10, 20), bool)
    (outline,) = mask_to_polygons(full)
    assert outline.min(axis=0).tolist() == [0, 0] and outline.max(axis=0).tolist() == [20, 10]
    assert np.array_equal(polygons_to_masks([[outline]], 10, 20)[0], full)
    assert mask_to_polygons(np.zeros((10, 20), bool)) == []
    with pytest.raises(ValueError, match="at least 3"):
        mask_to_polygons(full, max_points=2)


def test_rasterising_cuts_at_the_frame_and_skips_segments_that_enclose_nothing():
    inside = np.array([[2.0, 2.0], [6.0, 2.0], [6.0, 6.0], [2.0, 6.0]])
    sticking_out = np.array([[-5.0, -5.0], [4.0, -5.0], [4.0, 4.0], [-5.0, 4.0]])
    masks = polygons_to_masks([[inside], [sticking_out], [], [inside[:2]]], 10, 10)
    assert masks.dtype == np.uint8 and masks.shape == (4, 10, 10)
    assert masks[0].sum() == 16 and masks[0][2:6, 2:6].all()
    assert masks[1].sum() == 16 and masks[1][:4, :4].all()
    assert masks[2].sum() == 0 and masks[3].sum() == 0
    # The same objects as RLEs, without dense masks for single segments.
    from pycocotools import mask as mask_utils
    rles = polygons_to_rles([[inside], [inside, inside + 1]], 10, 10)
    assert mask_utils.area(rles).tolist() == [16, 2 * (16 - 9)]  # two overlapping squares XOR: 7 + 7


def test_mask_polygons_are_normalised_flat_lists_per_object():
    masks = np.stack([_square(), np.zeros((HEIGHT, WIDTH), np.uint8), _two_blobs()])[:, None]  # (K, 1, H, W)
    polygons = mask_polygons(masks, max_points=6, frame_size=(WIDTH, HEIGHT))
    assert [len(p) for p in polygons] == [1, 0, 2]
    flat = polygons[0][0]
    assert isinstance(flat, list) and len(flat) % 2 == 0 and len(flat) <= 12
    xs, ys = flat[0::2], flat[1::2]
    assert min(xs) == pytest.approx(30 / WIDTH) and max(xs) == pytest.approx(90 / WIDTH)
    assert min(ys) == pytest.approx(20 / HEIGHT) and max(ys) == pytest.approx(60 / HEIGHT)
    back = polygons_to_masks([pixel_segments(polygons[0], WIDTH, HEIGHT)], HEIGHT, WIDTH)[0]
    assert _iou(back, _square()) > 0.95


@pytest.mark.parametrize("score, written", [(0.98765, "0987"), (0.5, "05"), (1.0, "10"), (0.1, "01"),
                                            (0.30000001, "0300")])
def test_mask_file_names_follow_the_reference(tmp_path, score, written):
    path = mask_image_path(tmp_path, "images/dogs/a.b.jpg", 3, "dog", score, "png")
    assert path == tmp_path / "a" / "dog" / f"a_3_label_dog_conf_{written}.png"


def test_a_class_name_cannot_write_outside_its_folder(tmp_path):
    path = mask_image_path(tmp_path, "x.jpg", 0, "../up/and/away", 0.5, "jpg")
    assert path.parent.parent == tmp_path / "x" and path.name == "x_0_label_.._up_and_away_conf_05.jpg"


@pytest.mark.parametrize("image_type, exact", [("png", True), ("bmp", True), ("jpg", False)])
def test_exported_masks_are_8_bit_images_of_the_frame(tmp_path, image_type, exact):
    masks = np.stack([_square(), _two_blobs()]).astype(bool)
    paths = export_mask_images(tmp_path, "pics/photo.jpg", masks, ["can", "can"], [0.9, 0.25], image_type)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        f"photo/can/photo_0_label_can_conf_09.{image_type}", f"photo/can/photo_1_label_can_conf_025.{image_type}"]
    for path, mask in zip(paths, masks):
        with Image.open(path) as image:
            assert image.mode == "L" and image.size == (WIDTH, HEIGHT)
            pixels = np.asarray(image)
        if exact:
            assert np.array_equal(pixels, np.where(mask, 255, 0))
        else:  # JPEG is lossy near the edges only
            assert ((pixels > 127) == mask).mean() > 0.99


def _soft_disc(width, height, cx, cy, radius, softness):
    """Mask probabilities of a disc sampled at pixel centres, falling from 1 to 0 over about ``softness``
    pixels at its edge (as a Mask R-CNN's soft mask does)."""
    rows, cols = np.mgrid[:height, :width] + 0.5
    return 1 / (1 + np.exp(-(radius - np.hypot(cols - cx, rows - cy)) / softness))


def _disc(width, height, cx, cy, radius):
    rows, cols = np.mgrid[:height, :width] + 0.5
    return np.hypot(cols - cx, rows - cy) < radius


def test_mask_images_are_written_at_the_original_size_with_edges_from_the_soft_mask(tmp_path):
    # A soft disc in a 50 x 40 model frame; the original image is 3x larger (150 x 120).
    soft = _soft_disc(50, 40, 25.3, 19.6, 12.4, 0.7).astype(np.float32)
    truth = _disc(150, 120, 3 * 25.3, 3 * 19.6, 3 * 12.4)  # the disc itself, at full size
    (path,) = export_mask_images(tmp_path, "photo.jpg", soft[None, None], ["cell"], [0.8], "png", threshold=0.5,
                                 size=(150, 120))
    with Image.open(path) as image:
        assert image.mode == "L" and image.size == (150, 120)
        written = np.asarray(image)
    assert set(np.unique(written)) == {0, 255}
    # Edges come from the soft mask, resized then cut: far closer than the frame's binary mask blown up.
    blocky = np.kron(soft > 0.5, np.ones((3, 3), bool))
    ours_wrong, blocky_wrong = ((written > 0) != truth).sum(), (blocky != truth).sum()
    assert _iou(written > 0, truth) > 0.99 and ours_wrong < blocky_wrong / 2, (ours_wrong, blocky_wrong)
    # The threshold applies before the cut: at 0.9 the disc shrinks by 0.7 * ln 9 = 1.54 frame pixels.
    (path,) = export_mask_images(tmp_path / "high", "photo.jpg", soft[None, None], ["cell"], [0.8], "png",
                                 threshold=0.9, size=(150, 120))
    smaller = _disc(150, 120, 3 * 25.3, 3 * 19.6, 3 * (12.4 - 0.7 * np.log(9)))
    with Image.open(path) as image:
        assert _iou(np.asarray(image) > 0, smaller) > 0.98
    # Without a size, the frame's resolution (the reference's), cut at the threshold.
    (path,) = export_mask_images(tmp_path / "frame", "photo.jpg", soft[None], ["cell"], [0.8], "bmp", threshold=0.5)
    with Image.open(path) as image:
        assert image.size == (50, 40) and np.array_equal(np.asarray(image) > 0, soft > 0.5)
