"""Tiling with YOLOv5: training samples of images and tiles (mosaic partners from both), validation and
prediction items of an image with its letterboxed tiles, folding a batch back to its images, and a short
run through ``train`` and ``predict`` with a tile grid."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from torch import nn

from visionsweep import api
from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.data.tiling import Tiling
from visionsweep.families.selection import family_for
from visionsweep.families.tiling import TiledBatch, TiledDetection, TileGroups, training_elements
from visionsweep.families.yolo import YoloFamily
from visionsweep.families.yolo.dataset import YoloBatch, YoloElementDataset
from visionsweep.families.yolo.pipeline import LetterboxInfo, YoloTrainTransform
from visionsweep.geometry.tile_layout import Tile
from visionsweep.settings import resolve_settings
from visionsweep.tasks import Task
from visionsweep.training.run import train

OD = Task.OBJECT_DETECTION
CLASSES = ["blue", "red"]
CPU = torch.device("cpu")
TILING = Tiling((2, 1), 0.0)  # on 200 x 100: tiles (0, 0, 100, 100) and (100, 0, 200, 100)


def _scene(folder, name, width=200, height=100):
    """Grey with a red square in the left half (20..60 x 20..60) and a blue one across the middle
    (90..130 x 40..80)."""
    pixels = np.full((height, width, 3), 128, np.uint8)
    pixels[20:60, 20:60] = (255, 0, 0)
    pixels[40:80, 90:130] = (0, 0, 255)
    path = folder / name
    Image.fromarray(pixels).save(path)
    objects = (ObjectAnnotation("red", (20 / width, 20 / height, 60 / width, 60 / height)),
               ObjectAnnotation("blue", (90 / width, 40 / height, 130 / width, 80 / height)))
    return ImageRecord(image_path=path, image_url=name, objects=objects, width=width, height=height)


def _boxes(labels, size):
    """YOLO rows (.., class, cx, cy, w, h) normalised to ``size`` -> sorted pixel (class, x0, y0, x1, y1)."""
    rows = labels.numpy().astype(np.float64)
    cx, cy, w, h = (rows[:, 2:] * size).T
    return sorted(np.round(np.stack([rows[:, 1], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), 3).tolist())


def test_training_samples_are_images_and_tiles_cut_with_their_objects(tmp_path):
    records = [_scene(tmp_path, "a.png")]
    plain = YoloTrainTransform(64, mosaic=False, augment=False)
    dataset = YoloElementDataset(records, CLASSES, 64, plain, training_elements(records, TILING))
    assert [(e.index, e.tile) for e in dataset.elements] == [(0, None), (0, Tile(0, 0, 100, 100)),
                                                             (0, Tile(100, 0, 200, 100))]
    assert len(dataset) == 3
    full, left, right = dataset[0], dataset[1], dataset[2]
    assert full.index == left.index == right.index == 0 and tuple(left.image.shape) == (3, 64, 64)
    # The full image is letterboxed as 200 x 100 -> 64 x 32 (x0.32) with 16 pixels above.
    assert _boxes(full.labels, 64) == [[0, 28.8, 28.8, 41.6, 41.6], [1, 6.4, 22.4, 19.2, 35.2]]
    # The left tile (100 x 100 -> 64 x 64, x0.64) holds the red square and 10 pixels of the blue one.
    assert _boxes(left.labels, 64) == [[0, 57.6, 25.6, 64.0, 51.2], [1, 12.8, 12.8, 38.4, 38.4]]
    # The right tile holds the rest of the blue square: 100..130 -> 0..30.
    assert _boxes(right.labels, 64) == [[0, 0.0, 25.6, 19.2, 51.2]]
    # Its pixels are the tile's: blue where the square was cut, grey elsewhere.
    assert right.image[:, 40, 5].tolist() == [0, 0, 255] and right.image[:, 5, 40].tolist() == [128, 128, 128]
    mosaic = YoloElementDataset(records, CLASSES, 64, YoloTrainTransform(64), training_elements(records, TILING))
    assert all(tuple(mosaic[i].image.shape) == (3, 64, 64) for i in range(3))


def test_group_items_resize_each_tile_with_its_own_size(tmp_path):
    record = _scene(tmp_path, "a.png", width=300)  # tiles (0, 0, 150, 100) and (150, 0, 300, 100)
    items = YoloElementDataset([record], CLASSES, 64)
    every = TileGroups(items, TILING, every_tile=True)[0]
    with_objects = TileGroups(items, TILING, every_tile=False)[0]
    assert [e.tile for e in every] == [None, Tile(0, 0, 150, 100), Tile(150, 0, 300, 100)]
    assert [e.tile for e in with_objects] == [None, Tile(0, 0, 150, 100)]
    infos = [e.item.info for e in every]
    assert [i.original_size for i in infos] == [(300, 100), (150, 100), (150, 100)]
    # Each element resized alone (longer side 64); the batch pads them to one frame.
    assert [tuple(e.item.image.shape) for e in every] == [(3, 21, 64), (3, 43, 64), (3, 43, 64)]
    # Ground truth in each element's own pixels: the full image's objects, then the tile's.
    np.testing.assert_allclose(every[1].item.target["boxes"], [[20, 20, 60, 60], [90, 40, 130, 80]], atol=1e-4)
    assert every[2].item.target["boxes"].shape == (0, 4)
    batch = _family().collate([every, [every[0]]])
    assert batch.tiles == [None, Tile(0, 0, 150, 100), Tile(150, 0, 300, 100), None]
    assert tuple(batch.batch.images.shape) == (4, 3, 64, 64)


def _settings(**values):
    base = {"model_name": "yolov5", "model_size": "small", "pretrained": False, "img_size": 64,
            "training_batch_size": 2, "validation_batch_size": 6, "num_workers": 0, "seed": 0,
            "tile_grid_size": "2x1", "tile_overlap_ratio": 0.0}
    return resolve_settings(OD, {**base, **values})


def _family(**values):
    """The family ``family_for`` picks for ``_settings(**values)``: YOLOv5 wrapped in ``TiledDetection``."""
    return family_for(_settings(**values), CLASSES, CPU, lambda found, stage: None)


def _info(width, height):
    return LetterboxInfo((width, height), (1.0, 1.0), (0, 0))


def _cxcywh(box):
    x0, y0, x1, y1 = box
    return [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]


class _TableDetector(nn.Module):
    """Eval-mode stand-in for YOLOv5 on inputs whose pixels all hold their batch position / 255: element i
    finds ``boxes[i]`` (input pixels, class 'red') scoring ``scores[i]``; the raw maps are i and 10 i."""

    def __init__(self, boxes, scores):
        super().__init__()
        self.rows = torch.tensor([[*_cxcywh(box), score, 0.0, 1.0] for box, score in zip(boxes, scores)])

    def forward(self, images):
        element = (images[:, 0, 0, 0] * 255).round().long()
        return self.rows[element][:, None], [element[:, None].float(), element[:, None].float() * 10]


def test_detect_folds_tiles_into_images_and_the_loss_sees_the_images_alone():
    tiles = [None, Tile(0, 0, 100, 100), Tile(100, 0, 200, 100), None]
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.1, 0.1], [1, 0, 0.2, 0.2, 0.1, 0.1], [2, 0, 0.3, 0.3, 0.1, 0.1],
                            [3, 1, 0.7, 0.7, 0.1, 0.1], [3, 0, 0.4, 0.4, 0.1, 0.1]])
    batch = YoloBatch(images=torch.arange(4, dtype=torch.uint8)[:, None, None, None].expand(4, 3, 8, 8),
                      targets=targets, infos=[_info(200, 100), _info(100, 100), _info(100, 100), _info(50, 50)],
                      ground_truth=["gt0", "tile", "tile", "gt3"], indices=torch.tensor([4, 4, 4, 9]), failures=[],
                      frames=[(8, 8)] * 4)
    # The batch of the whole images alone: targets renumbered, everything else taken at the images' positions.
    full = batch.subset([0, 3])
    assert full.indices.tolist() == [4, 9] and full.images[:, 0, 0, 0].tolist() == [0, 3]
    assert full.ground_truth == ["gt0", "gt3"] and [i.original_size for i in full.infos] == [(200, 100), (50, 50)]
    assert full.targets[:, :2].tolist() == [[0, 1], [1, 1], [1, 0]]

    # Boxes in each element's original pixels; the right tile's box is the image's (120, 10, 140, 30).
    model = _TableDetector([[0, 0, 10, 10], [50, 50, 60, 60], [20, 10, 40, 30], [1, 1, 2, 2]], [0.5, 0.6, 0.7, 0.9])
    family = _family(tile_predictions_nms_thresh=0.25)
    loss_batches, loss_raw = [], []

    def validation_loss_sum(network, loss_batch):  # YoloFamily's feeds the network's raw maps to the loss
        loss_batches.append(loss_batch)
        loss_raw.extend(network(loss_batch.images.float() / 255)[1])
        return 1.5 * len(loss_batch.images)

    family.family.validation_loss_sum = validation_loss_sum
    detected = family.detect(model, TiledBatch(batch, tiles), "validation", with_loss=True)
    merged = [found.predictions for found in detected.images]
    assert [found.index for found in detected.images] == [4, 9]
    assert [found.target for found in detected.images] == ["gt0", "gt3"]
    assert [found.original_size for found in detected.images] == [(200, 100), (50, 50)]
    assert merged[0]["boxes"].tolist() == [[120, 10, 140, 30], [50, 50, 60, 60], [0, 0, 10, 10]]
    assert merged[1]["boxes"].tolist() == [[1, 1, 2, 2]]
    # The validation loss is that of the whole images: the loss pass gets their batch and raw maps.
    [loss_batch] = loss_batches
    assert loss_batch.images[:, 0, 0, 0].tolist() == [0, 3]
    assert loss_batch.targets[:, :2].tolist() == [[0, 1], [1, 1], [1, 0]]
    assert [r[:, 0].tolist() for r in loss_raw] == [[0, 3], [0, 30]]
    assert detected.loss_sum == 3.0


class _WholeInputDetector(nn.Module):
    """Eval-mode stand-in for YOLOv5: one box covering the whole network input (class 'red', score 0.9)
    per image, which un-letterboxes to the whole of each image or tile."""

    def forward(self, images):
        size = images.shape[-1]
        row = torch.tensor([size / 2, size / 2, size, size, 0.9, 0.0, 1.0])
        return row.expand(len(images), 1, 7).clone(), [torch.zeros(len(images), 1)]


def test_tiled_family_merges_each_image_with_its_tiles(tmp_path):
    records = [_scene(tmp_path, "a.png"), _scene(tmp_path, "b.png", width=300)]
    options = dict(box_score_thresh=0.1, nms_iou_thresh=0.5, validation_metric_type="voc",
                   validation_iou_threshold=0.5, log_validation_loss="Disable", log_training_metrics="Enable")
    family = _family(tile_predictions_nms_thresh=0.6, **options)
    assert family.tiling == Tiling((2, 1), 0.0, nms_threshold=0.6)
    assert isinstance(family.family, YoloFamily) and not family.family.track_training_metrics
    dataset = TileGroups(family.family.evaluation_dataset(records), family.tiling, every_tile=True)
    loader = [family.collate([dataset[0], dataset[1]])]
    found = list(family.predict(_WholeInputDetector(), loader, stage="prediction"))
    assert [f.index for f in found] == [0, 1]
    assert [f.predictions["boxes"].tolist() for f in found] == [
        [[0, 0, 200, 100], [0, 0, 100, 100], [100, 0, 200, 100]],
        [[0, 0, 300, 100], [0, 0, 150, 100], [150, 0, 300, 100]]]
    # Scored against the full images' ground truth (two objects each): no box matches a square.
    metrics = family.evaluate(_WholeInputDetector(), loader)
    assert metrics["per_label_metrics"]["red"]["recall"] == 0.0
    # At the default 0.25 each tile box (half the image) is a duplicate of the image's box.
    family = _family(**options)
    found = list(family.predict(_WholeInputDetector(), loader, stage="prediction"))
    assert [len(f.predictions["boxes"]) for f in found] == [1, 1]


def test_family_for_batches_images_with_their_tiles(tmp_path):
    records = [_scene(tmp_path, f"{i}.png") for i in range(3)]
    family = _family()
    loaders = family.training_loaders(records, records)
    assert isinstance(family, TiledDetection) and isinstance(family.family, YoloFamily)
    assert len(loaders.train.dataset) == 9  # each image, its left tile and its right tile
    # validation_batch_size 6 counts model inputs: 6 // (1 + 2 tiles) = 2 images per batch.
    assert [len(b.tiles) for b in loaders.validation] == [6, 3]


def test_train_and_predict_with_tiles(tmp_path):
    records = [_scene(tmp_path, f"{i}.png") for i in range(2)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"image_url": r.image_url, "label": [
        {"label": o.label, "topX": o.box[0], "topY": o.box[1], "bottomX": o.box[2], "bottomY": o.box[3]}
        for o in r.objects]}) + "\n" for r in records))
    result = train(OD, data, data, settings=_settings(number_of_epochs=1, log_training_metrics="Enable"),
                   output=tmp_path / "run", progress=False)
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert "mean_average_precision_train" not in line and line["validation"]["log_loss"] > 0
    assert result.settings.tile_grid_size == (2, 1)
    out = api.predict(tmp_path / "run", data, output=tmp_path / "p.jsonl", settings={"box_score_thresh": 0.001})
    lines = [json.loads(text) for text in out.output.read_text().splitlines()]
    assert out.images == 2 and [x["filename"] for x in lines] == ["0.png", "1.png"]
    for x in lines:
        assert all(0.0 <= v <= 1.0 for item in x["boxes"] for v in item["box"].values())
        scores = [item["score"] for item in x["boxes"]]
        assert scores == sorted(scores, reverse=True)
    # Every merged box is a box of the untiled prediction (the full image's) or lies inside one tile.
    plain = api.predict(tmp_path / "run", data, output=tmp_path / "plain.jsonl",
                        settings={"box_score_thresh": 0.001, "tile_grid_size": None})
    plain_lines = [json.loads(text) for text in plain.output.read_text().splitlines()]
    from_tiles = 0
    for tiled_line, plain_line in zip(lines, plain_lines):
        untiled = np.array([list(item["box"].values()) for item in plain_line["boxes"]]).reshape(-1, 4)
        for item in tiled_line["boxes"]:
            box = np.array(list(item["box"].values()))
            if len(untiled) and np.abs(untiled - box).max(axis=1).min() < 1e-4:
                continue
            from_tiles += 1
            assert box[2] <= 0.5 + 1e-6 or box[0] >= 0.5 - 1e-6  # inside the left or the right tile
    assert from_tiles > 0
