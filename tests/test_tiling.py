"""Tiling: the tile layout, which tiles hold which objects and how they are cut, mapping tile boxes back
to the image, merging duplicates across tiles, and the datasets, batches and the tiled R-CNN family
(``TiledDetection`` over ``RcnnFamily``) that put them together."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.data.tiling import Tiling, all_tiles, objects_in_tiles, tiles_with_objects
from visionsweep.families.rcnn import RcnnFamily
from visionsweep.families.rcnn.dataset import DetectionBatch, DetectionDataset
from visionsweep.families.selection import family_for
from visionsweep.families.tiling import TiledDetection, TileGroups, training_elements
from visionsweep.geometry.tile_layout import Tile, cut_boxes, tile_layout
from visionsweep.geometry.tile_merge import (
    TilePredictions,
    duplicate_flags,
    merge_tile_predictions,
    tile_boxes_to_image,
)
from visionsweep.settings import resolve_settings
from visionsweep.tasks import Task


def _ints(tiles):
    return [tuple(int(v) for v in tile) for tile in tiles]


# --- layout -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width, height, grid, overlap, expected", [
    (640, 480, (3, 2), 0.25, [(0, 0, 256, 274), (0, 206, 256, 480), (192, 0, 448, 274), (192, 206, 448, 480),
                              (384, 0, 640, 274), (384, 206, 640, 480)]),
    (1920, 1080, (3, 2), 0.25, [(0, 0, 768, 617), (0, 463, 768, 1080), (576, 0, 1344, 617),
                                (576, 463, 1344, 1080), (1152, 0, 1920, 617), (1152, 463, 1920, 1080)]),
    (768, 1024, (2, 2), 0.0, [(0, 0, 384, 512), (0, 512, 384, 1024), (384, 0, 768, 512), (384, 512, 768, 1024)]),
    (640, 480, (2, 1), 0.0, [(0, 0, 320, 480), (320, 0, 640, 480)]),
    (1080, 1080, (2, 3), 0.25, [(0, 0, 617, 432), (0, 324, 617, 756), (0, 648, 617, 1080), (463, 0, 1080, 432),
                                (463, 324, 1080, 756), (463, 648, 1080, 1080)]),
    (1280, 720, (4, 3), 0.5, [(x, y, x + 512, y + 360) for x in (0, 256, 512, 768) for y in (0, 180, 360)]),
])
def test_layout_of_the_reference(width, height, grid, overlap, expected):
    tiles = tile_layout(width, height, grid, overlap)
    assert _ints(tiles) == expected
    assert all(isinstance(t, Tile) and all(float(v).is_integer() for v in t) for t in tiles)


@pytest.mark.parametrize("width, height", [(1920, 1080), (1000, 999), (333, 777), (4000, 500), (37, 23)])
@pytest.mark.parametrize("grid", [(2, 1), (1, 3), (3, 2), (5, 4)])
@pytest.mark.parametrize("overlap", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_layout_properties(width, height, grid, overlap):
    columns, rows = grid
    tiles = np.array(tile_layout(width, height, grid, overlap))
    assert tiles.shape == (columns * rows, 4)
    # Column-major: tile index = column x rows + row, so x0 ascends by column and y0 by row within one.
    x0 = tiles[:, 0].reshape(columns, rows)
    y0 = tiles[:, 1].reshape(columns, rows)
    assert (x0 == x0[:, :1]).all() and (y0 == y0[:1, :]).all()
    assert (np.diff(x0[:, 0]) > 0).all() and (np.diff(y0[0]) > 0).all()
    assert list(map(tuple, tiles)) == sorted(map(tuple, tiles))  # the tuple order is the layout order
    assert tiles[:, :2].min() == 0
    assert tiles[:, 2].max() == width and tiles[:, 3].max() == height  # the last tile ends at the edge
    assert (tiles[-1, 2:] == (width, height)).all()
    # Equal sizes up to one pixel of rounding, and the float tile size times the grid formula is the image.
    tile_width = width / (overlap + (1 - overlap) * columns)
    assert np.abs((tiles[:, 2] - tiles[:, 0]) - tile_width).max() <= 1.0
    if columns > 1:  # neighbours overlap by the ratio, up to rounding
        assert abs((tiles[rows, 0] - 0) - (1 - overlap) * tile_width) <= 0.5


def test_tiling_from_settings_and_its_checks():
    settings = resolve_settings(Task.OBJECT_DETECTION, {"tile_grid_size": "(3, 2)", "tile_overlap_ratio": 0.1,
                                                        "tile_predictions_nms_thresh": 0.4})
    assert Tiling.from_settings(settings) == Tiling((3, 2), 0.1, 0.4)
    assert Tiling.from_settings(resolve_settings(Task.OBJECT_DETECTION, {})) is None
    assert Tiling((2, 1)).layout(640, 480) == tile_layout(640, 480, (2, 1), 0.25)
    for bad in ({"grid": (1, 1)}, {"grid": (0, 2)}, {"grid": (2, 2), "overlap": 1.0},
                {"grid": (2, 2), "nms_threshold": 1.5}):
        with pytest.raises(ValueError):
            Tiling(**bad)


# --- which tiles hold which objects --------------------------------------------------------------------

def test_boxes_around_a_border_on_whole_and_fractional_pixels():
    # 640 x 480, grid (2, 1), no overlap: tiles (0, 0, 320, 480) and (320, 0, 640, 480).
    tiles = np.array(tile_layout(640, 480, (2, 1), 0.0))
    spans = [(0, 319), (0, 319.3), (0, 320), (0, 320.7), (0, 321),
             (319, 400), (319.3, 400), (320, 400), (320.7, 400), (321, 400)]
    boxes = np.array([(a, 100, b, 200) for a, b in spans])
    inside, relative = cut_boxes(boxes, tiles)
    assert inside[0].tolist() == [True] * 7 + [False] * 3
    assert inside[1].tolist() == [False] * 4 + [True] * 6
    # The relative box uses the un-floored intersection: [319.3, 400] in tile 0 is [319.3, 320] / 320.
    np.testing.assert_allclose(relative[0, 6], [319.3 / 320, 100 / 480, 1.0, 200 / 480])
    np.testing.assert_allclose(relative[1, 8], [0.7 / 320, 100 / 480, 80 / 320, 200 / 480])


def test_box_whose_right_edge_is_the_tile_start_is_not_in_the_tile():
    tiles = np.array(tile_layout(640, 480, (3, 2), 0.25))  # the second column starts at x = 192
    inside, _ = cut_boxes(np.array([[100, 10, 192, 50], [100, 10, 193, 50]]), tiles)
    assert inside[:, 0].tolist() == [True, False, False, False, False, False]
    assert inside[:, 1].tolist() == [True, False, True, False, False, False]


@pytest.mark.parametrize("box, count", [((0, 0, 0.1, 0.1), 1), ((0, 0, 0.5, 0.5), 4), ((0.5, 0.5, 1, 1), 4),
                                        ((0, 0, 1, 1), 6)])
def test_how_many_tiles_hold_a_box(box, count):
    tiles = tile_layout(640, 480, (3, 2), 0.25)
    cut = objects_in_tiles([ObjectAnnotation("car", box)], tiles, 640, 480)
    assert sum(1 for objects in cut if objects) == count


def test_boxes_cut_to_one_two_and_four_tiles():
    # 768 x 1024, grid (2, 2), no overlap: tiles of 384 x 512, column-major.
    objects = [ObjectAnnotation("car", (0.05, 0.05, 0.2, 0.2)),  # inside tile 0 only
               ObjectAnnotation("bus", (0.0, 0.25, 0.25, 0.75), is_crowd=True),  # across tiles 0 and 1 (rows)
               ObjectAnnotation("car", (0.25, 0.0, 0.75, 0.25)),  # across tiles 0 and 2 (columns)
               ObjectAnnotation("van", (0.4, 0.4, 0.6, 0.6), polygons=((0.4, 0.4, 0.6, 0.4, 0.6, 0.6),))]  # all four
    tiles = tile_layout(768, 1024, (2, 2), 0.0)
    cut = objects_in_tiles(objects, tiles, 768, 1024)
    assert [[o.label for o in objects] for objects in cut] == [["car", "bus", "car", "van"], ["bus", "van"],
                                                               ["car", "van"], ["van"]]
    box = {(t, o.label): o.box for t, objects in enumerate(cut) for o in objects if o.label != "car"}
    np.testing.assert_allclose(cut[0][0].box, (0.1, 0.1, 0.4, 0.4))
    np.testing.assert_allclose(box[0, "bus"], (0.0, 0.5, 0.5, 1.0))
    np.testing.assert_allclose(box[1, "bus"], (0.0, 0.0, 0.5, 0.5))
    np.testing.assert_allclose(cut[0][2].box, (0.5, 0.0, 1.0, 0.5))
    np.testing.assert_allclose(cut[2][0].box, (0.0, 0.0, 0.5, 0.5))
    # The van is 153.6 x 204.8 pixels around the centre; each quarter is a quarter of it.
    np.testing.assert_allclose(box[0, "van"], (307.2 / 384, 409.6 / 512, 1.0, 1.0))
    np.testing.assert_allclose(box[3, "van"], (0.0, 0.0, 76.8 / 384, 102.4 / 512))
    assert cut[1][0].is_crowd and all(o.polygons == () for objects in cut for o in objects)
    # Tiles used in training: only those holding objects, here all four; without the van tile 3 goes.
    assert [t for t, _ in tiles_with_objects(objects[:3], Tiling((2, 2), 0.0), 768, 1024)] == tiles[:3]
    assert tiles_with_objects([], Tiling((2, 2), 0.0), 768, 1024) == []
    assert [t for t, _ in all_tiles([], Tiling((2, 2), 0.0), 768, 1024)] == tiles


# --- mapping back and merging --------------------------------------------------------------------------

def test_tile_boxes_back_to_the_image_frame():
    # A 600 x 400 image fed at 900 x 600 (x1.5), tiles of 300 x 200 fed at 900 x 600 (x3).
    box = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    common = dict(tile_frame=(900, 600), image_frame=(900, 600), image_size=(600, 400))
    assert tile_boxes_to_image(box, Tile(0, 0, 300, 200), **common).tolist() == [[0, 0, 50, 50]]
    assert tile_boxes_to_image(box, Tile(300, 0, 600, 200), **common).tolist() == [[450, 0, 500, 50]]
    assert tile_boxes_to_image(box, Tile(300, 200, 600, 400), **common).tolist() == [[450, 300, 500, 350]]


def test_cut_then_mapped_back_is_the_intersection():
    rng = np.random.default_rng(0)
    width, height = 1920, 1080
    tiles = tile_layout(width, height, (3, 2), 0.25)
    x = np.sort(rng.uniform(0, width, (50, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, (50, 2)), axis=1)
    boxes = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    inside, relative = cut_boxes(boxes, np.array(tiles))
    for t, tile in enumerate(tiles):
        frame = (round(tile.width * 0.97), round(tile.height * 0.97))  # the tile as resized for the model
        in_tile_frame = torch.tensor(relative[t][inside[t]] * np.array(frame * 2))
        mapped = tile_boxes_to_image(in_tile_frame, tile, tile_frame=frame, image_frame=(1066, 600),
                                     image_size=(width, height)).numpy()
        expected = np.concatenate([np.maximum(boxes[inside[t], :2], tile[:2]),
                                   np.minimum(boxes[inside[t], 2:], tile[2:])], axis=1)
        np.testing.assert_allclose(mapped, expected * np.array([1066 / width, 600 / height] * 2), rtol=1e-9)


def _flags(boxes, scores, labels, sources, threshold=0.25):
    return duplicate_flags(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores), torch.tensor(labels),
                           torch.tensor(sources), threshold).tolist()


FULL, T0, T1 = 0, 1, 2


def test_duplicates_across_tiles_are_removed_with_the_reference_rules():
    box = [0, 100, 100, 200]
    assert _flags([box, box], [0.9, 0.8], [1, 2], [T0, T1]) == [False, False]  # different labels kept
    assert _flags([box, box], [0.9, 0.8], [1, 1], [T0, T0]) == [False, False]  # same tile never suppressed
    assert _flags([box, box], [0.9, 0.8], [1, 1], [FULL, FULL]) == [False, False]
    assert _flags([box, [0, 175, 100, 275]], [0.9, 0.8], [1, 1], [T0, T1]) == [False, False]  # IoU 0.14
    assert _flags([box, box], [0.9, 0.8], [1, 1], [T0, T1]) == [False, True]
    assert _flags([box, box], [0.8, 0.9], [1, 1], [T0, T1]) == [True, False]
    assert _flags([box, box], [0.9, 0.8], [1, 1], [T0, FULL]) == [False, True]  # the full image's box goes
    assert _flags([[0, 90, 100, 190], [0, 100, 100, 190]], [0.9, 0.8], [1, 1], [T0, T1]) == [False, True]
    halves = [[0, 100, 50, 200], [50, 100, 100, 200], box]
    assert _flags(halves, [0.9, 0.9, 0.8], [1, 1, 1], [T0, T0, FULL]) == [False, False, True]
    assert _flags(halves, [0.7, 0.8, 0.9], [1, 1, 1], [T0, T0, FULL]) == [True, True, False]


def test_iou_must_be_strictly_above_the_threshold_and_marked_boxes_mark_nothing():
    # IoU of these two is exactly 0.5.
    pair = [[0, 0, 100, 100], [0, 0, 100, 50]]
    assert _flags(pair, [0.9, 0.8], [1, 1], [T0, T1], threshold=0.5) == [False, False]
    assert _flags(pair, [0.9, 0.8], [1, 1], [T0, T1], threshold=0.49) == [False, True]
    # A chain: A marks B, B (marked) does not mark C although C overlaps B and not A.
    chain = [[0, 0, 100, 100], [50, 0, 150, 100], [100, 0, 200, 100]]
    assert _flags(chain, [0.9, 0.8, 0.7], [1, 1, 1], [T0, T1, FULL], threshold=0.3) == [False, True, False]
    assert _flags([], [], [], []) == [] and _flags([[0, 0, 1, 1]], [0.5], [0], [T0]) == [False]


def test_merge_maps_tiles_drops_duplicates_and_sorts_by_score():
    # Image 600 x 400 fed at its own size; two tiles fed at twice their size.
    full = {"boxes": torch.tensor([[10.0, 10, 60, 60], [300, 300, 320, 320]]), "scores": torch.tensor([0.6, 0.4]),
            "labels": torch.tensor([0, 1])}
    left = TilePredictions(Tile(0, 0, 400, 300), {"boxes": torch.tensor([[20.0, 20, 120, 120], [700, 500, 780, 580]]),
                                                  "scores": torch.tensor([0.9, 0.5]), "labels": torch.tensor([0, 1])},
                           (800, 600))
    right = TilePredictions(Tile(200, 100, 600, 400), {"boxes": torch.tensor([[200.0, 400, 240, 440]]),
                                                       "scores": torch.tensor([0.3]), "labels": torch.tensor([1])},
                            (800, 600))
    merged = merge_tile_predictions(full, [left, right], frame_size=(600, 400), original_size=(600, 400),
                                    nms_threshold=0.25)
    # left's first box is (10, 10, 60, 60) in the image: it replaces the full image's copy (higher score);
    # left's second (350, 250, 390, 290) and right's (300, 300, 320, 320) do not overlap each other enough.
    # right's box equals the full image's second box, which scores higher: right's box goes.
    assert merged["boxes"].tolist() == [[10, 10, 60, 60], [350, 250, 390, 290], [300, 300, 320, 320]]
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.5, 0.4])
    assert merged["labels"].tolist() == [0, 1, 1]
    nothing = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    empty = merge_tile_predictions(nothing, [TilePredictions(Tile(0, 0, 400, 300), nothing, (800, 600))],
                                   frame_size=(600, 400), original_size=(600, 400), nms_threshold=0.25)
    assert empty["boxes"].shape == (0, 4) and len(empty["scores"]) == 0


# --- datasets, batches and the tiled family -----------------------------------------------------------

def _image(folder, name, width=200, height=100):
    """An image whose pixel (x, y) has red = x and green = y (mod 256), so crops can be located."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([x % 256, y % 256, np.full_like(x, 7)], axis=-1).astype(np.uint8)
    path = folder / name
    Image.fromarray(pixels).save(path)
    return path


def _record(path, objects=(), width=200, height=100):
    return ImageRecord(image_path=path, image_url=path.name, objects=tuple(objects), width=width, height=height)


def test_training_elements_are_images_and_tiles_with_objects(tmp_path):
    tiling = Tiling((2, 1), 0.0)  # tiles (0, 0, 100, 100) and (100, 0, 200, 100)
    records = [_record(_image(tmp_path, "a.png"), [ObjectAnnotation("car", (0.1, 0.1, 0.2, 0.2))]),
               _record(_image(tmp_path, "b.png")),  # background: no tiles
               _record(_image(tmp_path, "c.png"), [ObjectAnnotation("car", (0.4, 0.1, 0.6, 0.2))])]
    elements = training_elements(records, tiling)
    assert [(e.index, e.tile) for e in elements] == [(0, None), (0, Tile(0, 0, 100, 100)), (1, None), (2, None),
                                                     (2, Tile(0, 0, 100, 100)), (2, Tile(100, 0, 200, 100))]
    assert elements[1].objects[0].box == pytest.approx((0.2, 0.1, 0.4, 0.2))
    dataset = DetectionDataset(records, ["car"], min_size=50, max_size=400, augment=False, elements=elements)
    assert len(dataset) == 6
    item = dataset[5]  # the right half of c.png: 100 x 100, fed at 50 x 50
    assert item.index == 2 and item.original_size == (100, 100) and tuple(item.image.shape) == (3, 50, 50)
    np.testing.assert_allclose(item.target["boxes"].tolist(), [[0, 5, 10, 10]], atol=1e-4)


def test_group_items_hold_the_image_and_its_tiles_cut_from_the_same_pixels(tmp_path):
    tiling = Tiling((2, 1), 0.0)
    record = _record(_image(tmp_path, "a.png"), [ObjectAnnotation("car", (0.1, 0.1, 0.2, 0.2))])
    items = DetectionDataset([record], ["car"], min_size=100, max_size=400, augment=False)
    every = TileGroups(items, tiling, every_tile=True)[0]
    with_objects = TileGroups(items, tiling, every_tile=False)[0]
    assert [e.tile for e in every] == [None, Tile(0, 0, 100, 100), Tile(100, 0, 200, 100)]
    assert [e.tile for e in with_objects] == [None, Tile(0, 0, 100, 100)]
    right = every[2].item
    assert right.original_size == (100, 100) and len(right.target["boxes"]) == 0
    # Undo the normalisation: the right tile's red channel starts at x = 100.
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = (right.image * std[:, None, None] + mean[:, None, None]) * 255
    assert pixels[0, 0, :3].round().tolist() == [100, 101, 102] and pixels[1, :3, 0].round().tolist() == [0, 1, 2]


def _family(tiling, failures, *, min_size=100, max_size=400):
    """The tiled Faster R-CNN family (label offset 1) of a one-class run, its failures collected."""
    settings = resolve_settings(Task.OBJECT_DETECTION, {
        "model_name": "fasterrcnn_resnet18_fpn", "min_size": min_size, "max_size": max_size,
        "validation_metric_type": "voc", "validation_iou_threshold": 0.5, "log_validation_loss": "Disable"})
    return TiledDetection(RcnnFamily(settings, ["car"], torch.device("cpu"), lambda f, stage: failures.extend(f)),
                          tiling)


def test_an_unreadable_image_is_one_failure_with_its_record_index(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    records = [_record(_image(tmp_path, "a.png")), _record(broken)]
    family = _family(Tiling((2, 1), 0.0), [])
    dataset = TileGroups(family.family.evaluation_dataset(records), family.tiling, every_tile=True)
    tiled = family.collate([dataset[0], dataset[1]])
    assert tiled.tiles == [None, Tile(0, 0, 100, 100), Tile(100, 0, 200, 100)]
    assert tiled.batch.indices.tolist() == [0, 0, 0]
    assert [index for index, _ in tiled.batch.failures] == [1]


class _FrameDetector(torch.nn.Module):
    """Stands in for an eval-mode detector: finds one box covering each input image, with a score that
    says which input it was (wider inputs score higher), and records the batches it was given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, images):
        self.calls.append([tuple(image.shape[-2:]) for image in images])
        return [{"boxes": torch.tensor([[0.0, 0.0, image.shape[-1], image.shape[-2]]]),
                 "scores": torch.tensor([image.shape[-1] / 1000]), "labels": torch.tensor([1])} for image in images]


def test_tiled_family_merges_tile_predictions_into_their_image(tmp_path):
    records = [_record(_image(tmp_path, "a.png")), _record(_image(tmp_path, "b.png", 300, 100), width=300)]
    # Threshold 0.6: each tile box covers half or a third of its image's box, so nothing is a duplicate.
    failures = []
    family = _family(Tiling((2, 1), 0.0, nms_threshold=0.6), failures, max_size=1000)
    dataset = TileGroups(family.family.evaluation_dataset(records), family.tiling, every_tile=True)
    loader = [family.collate([dataset[0], dataset[1]])]
    model = _FrameDetector()
    found = list(family.predict(model, loader, stage="validation"))
    assert failures == [] and [f.index for f in found] == [0, 1]
    assert [f.frame_size for f in found] == [(200, 100), (300, 100)]
    assert [f.original_size for f in found] == [(200, 100), (300, 100)]
    # In each image's frame: the full box, and each tile's box mapped to the tile's place; labels lose the offset.
    assert found[0].predictions["boxes"].tolist() == [[0, 0, 200, 100], [0, 0, 100, 100], [100, 0, 200, 100]]
    assert found[1].predictions["boxes"].tolist() == [[0, 0, 300, 100], [0, 0, 150, 100], [150, 0, 300, 100]]
    assert found[0].predictions["labels"].tolist() == [0, 0, 0]
    # One forward per padded size: the tiles of an image together, the full images (wider) apart.
    assert sorted(model.calls) == [[(100, 100), (100, 100)], [(100, 150), (100, 150)], [(100, 200)], [(100, 300)]]
    # With the default threshold the full image's box (scoring highest) removes every tile box.
    tight = _family(Tiling((2, 1), 0.0, nms_threshold=0.25), failures, max_size=1000)
    found = list(tight.predict(_FrameDetector(), loader, stage="validation"))
    assert [f.predictions["boxes"].tolist() for f in found] == [[[0, 0, 200, 100]], [[0, 0, 300, 100]]]


def test_rcnn_detection_runs_images_by_padded_size_and_keeps_the_input_order():
    model = _FrameDetector()
    images = [torch.zeros(3, 64, 64), torch.zeros(3, 64, 200), torch.zeros(3, 60, 50)]
    sizes = [(image.shape[-1], image.shape[-2]) for image in images]
    batch = DetectionBatch(images=images, targets=[{}, {}, {}], indices=torch.tensor([0, 1, 2]), image_sizes=sizes,
                           original_sizes=sizes, failures=[])
    found = _family(Tiling((2, 1)), []).family.detect(model, batch, "prediction").images
    assert [f.index for f in found] == [0, 1, 2]
    assert [f.predictions["boxes"][0].tolist() for f in found] == [[0, 0, 64, 64], [0, 0, 200, 64], [0, 0, 50, 60]]
    assert sorted(model.calls) == sorted([[(64, 64), (60, 50)], [(64, 200)]])


def test_family_for_trains_on_images_and_tiles_and_validates_per_image(tmp_path):
    objects = [ObjectAnnotation("car", (0.1, 0.1, 0.2, 0.2)), ObjectAnnotation("bus", (0.45, 0.5, 0.55, 0.7))]
    train = [_record(_image(tmp_path, f"t{i}.png"), objects) for i in range(3)]
    val = [_record(_image(tmp_path, "v.png"), objects[:1])]
    settings = resolve_settings(Task.OBJECT_DETECTION, {
        "model_name": "fasterrcnn_resnet18_fpn", "tile_grid_size": "2x1", "tile_overlap_ratio": 0.0,
        "training_batch_size": 4, "validation_batch_size": 2, "num_workers": 0, "min_size": 64, "max_size": 256,
        "log_training_metrics": "Enable", "seed": 0})
    family = family_for(settings, ["bus", "car"], torch.device("cpu"), lambda f, s: None)
    loaders = family.training_loaders(train, val)
    # Each training image: itself, its left tile (car, bus) and its right tile (bus).
    assert len(loaders.train.dataset) == 9 and len(loaders.train) == 3
    assert isinstance(family, TiledDetection) and isinstance(family.family, RcnnFamily)
    assert not family.family.track_training_metrics and family.family.label_offset == 1
    [tiled] = list(loaders.validation)
    assert tiled.tiles == [None, Tile(0, 0, 100, 100)]
