"""Segmentation training data and the Mask R-CNN family: polygons move with the boxes through crop,
expand, flip and resize, masks are rasterised in the model frame (bounded memory), validation scores
masks, and prediction lines carry polygons; scoring a predictions file on masks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from visionsweep.data.jsonl import read_labeled_data
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError, SettingsError
from visionsweep.families.rcnn import MaskRcnnFamily, RcnnFamily
from visionsweep.families.rcnn.dataset import SegmentationDataset, collate_detection, mask_frame_limits
from visionsweep.families.rcnn.transforms import (
    MEAN_COLOUR,
    crop_around_boxes,
    expand,
    horizontal_flip,
    keep_valid_objects,
    resize_for_model,
)
from visionsweep.families.selection import family_for
from visionsweep.geometry.masks import pixel_segments, polygons_to_masks
from visionsweep.inference.detection import BOX_KEYS, score_prediction_file
from visionsweep.settings import resolve_settings
from visionsweep.tasks import Task

TASK = Task.INSTANCE_SEGMENTATION
COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
# Normalised polygons of a 120 x 90 scene: a triangle, a square with a square hole, an L shape.
SHAPES = {
    "red": [[10 / 120, 10 / 90, 50 / 120, 10 / 90, 10 / 120, 50 / 90]],
    "blue": [[60 / 120, 20 / 90, 110 / 120, 20 / 90, 110 / 120, 70 / 90, 60 / 120, 70 / 90],
             [75 / 120, 35 / 90, 95 / 120, 35 / 90, 95 / 120, 55 / 90, 75 / 120, 55 / 90]],
    "yellow": [[20 / 120, 60 / 90, 50 / 120, 60 / 90, 50 / 120, 85 / 90, 40 / 120, 85 / 90, 40 / 120, 70 / 90,
                20 / 120, 70 / 90]],
}


def _scene(folder, name="scene.png", width=120, height=90):
    """A green image with each shape painted in its colour (with the same rasteriser), and its JSONL."""
    from PIL import Image

    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:] = (0, 160, 0)
    masks = polygons_to_masks([pixel_segments(p, width, height) for p in SHAPES.values()], height, width)
    for mask, colour in zip(masks, COLOURS.values()):
        pixels[mask.astype(bool)] = colour
    Image.fromarray(pixels).save(folder / name)
    line = {"image_url": name, "label": [{"label": k, "isCrowd": 0, "polygon": p} for k, p in SHAPES.items()]}
    (folder / "data.jsonl").write_text(json.dumps(line) + "\n")
    return read_labeled_data(folder / "data.jsonl", TASK).records


def _denormalise(image):
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return ((image * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)


def _polygon_target():
    square = np.array([[10.0, 20.0], [30.0, 20.0], [30.0, 40.0], [10.0, 40.0]])
    return {"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0], [50.0, 5.0, 60.0, 15.0]]),
            "labels": torch.tensor([0, 1]), "iscrowd": torch.tensor([False, False]),
            "polygons": [[square], [np.array([[50.0, 5.0], [60.0, 5.0], [55.0, 15.0]])]]}


def test_geometric_steps_move_polygons_with_the_boxes():
    image = torch.zeros(3, 50, 80, dtype=torch.uint8)
    _, flipped = horizontal_flip(image, _polygon_target())
    assert flipped["polygons"][0][0][:, 0].tolist() == [70, 50, 50, 70]  # x' = 80 - x
    assert flipped["boxes"][0].tolist() == [50, 20, 70, 40]
    canvas, expanded = expand(image, _polygon_target(), np.random.default_rng(0))
    offset = expanded["boxes"][0, :2] - torch.tensor([10.0, 20.0])
    assert np.allclose(expanded["polygons"][0][0], _polygon_target()["polygons"][0][0] + offset.numpy())
    cropped_image, cropped = crop_around_boxes(image, _polygon_target(), np.random.default_rng(1))
    shift = torch.tensor([10.0, 20.0]) - cropped["boxes"][0, :2]
    assert np.allclose(cropped["polygons"][0][0], _polygon_target()["polygons"][0][0] - shift.numpy())
    _, resized = resize_for_model(image.float(), _polygon_target(), min_size=100, max_size=1000)
    assert np.allclose(resized["polygons"][0][0], _polygon_target()["polygons"][0][0] * 2)
    kept = keep_valid_objects({**_polygon_target(), "boxes": torch.tensor([[10.0, 20, 30, 40], [50, 5, 50, 15]])},
                              width=80, height=50)
    assert len(kept["polygons"]) == 1 and kept["labels"].tolist() == [0]


@pytest.mark.parametrize("seed", range(10))
def test_masks_stay_on_their_objects_through_the_augmentations(tmp_path, seed):
    records = _scene(tmp_path)
    torch.manual_seed(seed)
    item = SegmentationDataset(records, list(COLOURS), min_size=60, max_size=400, augment=True)[0]
    image, target = _denormalise(item.image), item.target
    height, width = image.shape[-2:]
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (len(target["boxes"]), height, width)
    for mask, box, label in zip(target["masks"], target["boxes"], target["labels"].tolist()):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        # the mask fills its box (up to the pixel centres a triangle's sharp tips miss) ...
        found = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.allclose(found, box, atol=1.5), (found, box)
        # ... and covers pixels of the object's colour (bilinear resizing blurs only the edges)
        colour = torch.tensor(list(COLOURS.values())[label], dtype=torch.int16)[:, None]
        close = (image[:, ys, xs].to(torch.int16) - colour).abs().max(0).values < 40
        assert close.float().mean() > 0.8
    # the blue square keeps its hole: its centre shows the background or mean colour, not blue
    blue = target["labels"].tolist().index(1)
    assert target["masks"][blue].sum() < (target["boxes"][blue, 2:] - target["boxes"][blue, :2]).prod() * 0.9


def test_expanded_canvas_is_outside_every_mask(tmp_path):
    records = _scene(tmp_path)
    for seed in range(20):
        torch.manual_seed(seed)
        item = SegmentationDataset(records, list(COLOURS), min_size=90, max_size=400, augment=True)[0]
        if item.image.shape[-1] > 125:  # an expansion happened
            image = _denormalise(item.image)
            canvas = (image.to(torch.int16) - torch.tensor(MEAN_COLOUR, dtype=torch.int16)[:, None, None]).abs()
            canvas = canvas.max(0).values <= 1
            assert not (item.target["masks"].bool() & canvas).any()
            return
    pytest.fail("no expansion in 20 seeds")


def test_a_budget_shrinks_the_frame_of_an_image_with_many_objects(tmp_path):
    records = _scene(tmp_path)
    plain = SegmentationDataset(records, list(COLOURS), min_size=90, max_size=400, augment=False)[0]
    assert plain.image.shape[-2:] == (90, 120)
    small = SegmentationDataset(records, list(COLOURS), min_size=90, max_size=400, augment=False,
                                mask_pixel_budget=3 * 45 * 60)[0]
    masks = small.target["masks"]
    assert small.image.shape[-2:] == masks.shape[-2:] == (45, 60) and masks.numel() <= 3 * 45 * 60
    assert torch.allclose(small.target["boxes"], plain.target["boxes"] / 2)
    assert mask_frame_limits(3, 900, 1200, 600, 1333) == (600, 1333)  # 3 x 600 x 800 fits the default budget
    min_size, max_size = mask_frame_limits(1000, 900, 1200, 600, 1333, budget=10_000_000)
    assert 1000 * int(900 * min_size / 900) * int(1200 * min_size / 900) <= 10_000_000
    assert min_size / 600 == pytest.approx(max_size / 1333)


class _MaskFinder(nn.Module):
    """A stand-in Mask R-CNN: in eval mode one detection per image with the given box and a mask that is
    the box filled (``solid``) or only its left quarter; in training mode a loss, remembering targets."""

    def __init__(self, box, solid):
        super().__init__()
        self.box, self.solid = box, solid
        self.weight = nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, images, targets=None):
        if self.training:
            self.seen.append(targets)
            return {"loss_mask": self.weight * 0.5}
        outputs = []
        for image in images:
            x0, y0, x1, y1 = self.box
            mask = torch.zeros(1, 1, *image.shape[-2:])
            mask[..., y0:y1, x0:x1 if self.solid else x0 + (x1 - x0) // 4] = 0.9
            outputs.append({"boxes": torch.tensor([self.box], dtype=torch.float32), "labels": torch.tensor([1]),
                            "scores": torch.tensor([0.8]), "masks": mask})
        return outputs


def _family(family_type=MaskRcnnFamily, **values):
    """A Mask R-CNN run's family with VOC at IoU 0.5 and no validation loss, ``values`` overriding the
    settings; ``RcnnFamily`` scores the same model's predictions on their boxes."""
    settings = resolve_settings(TASK, {"model_name": "maskrcnn_resnet18_fpn", "num_workers": 0,
                                       "validation_metric_type": "voc", "validation_iou_threshold": 0.5,
                                       "log_validation_loss": "Disable", "log_training_metrics": "Disable", **values})
    family = family_type(settings, ["square"], torch.device("cpu"), None)
    assert family.label_offset == 1
    return family


def _square_records(folder):
    from PIL import Image

    Image.new("RGB", (40, 40)).save(folder / "a.png")
    polygon = [[0.25, 0.25, 0.75, 0.25, 0.75, 0.75, 0.25, 0.75]]
    (folder / "data.jsonl").write_text(json.dumps({"image_url": "a.png", "label": [
        {"label": "square", "polygon": polygon}]}) + "\n")
    return read_labeled_data(folder / "data.jsonl", TASK).records


@pytest.mark.parametrize("solid, mask_ap, box_ap", [(True, 1.0, 1.0), (False, 0.0, 1.0)])
def test_validation_scores_masks_not_boxes(tmp_path, solid, mask_ap, box_ap):
    records = _square_records(tmp_path)
    batch = collate_detection([SegmentationDataset(records, ["square"], min_size=40, max_size=40,
                                                   augment=False)[0]])
    model = _MaskFinder((10, 10, 30, 30), solid)
    for family_type, iou_type, expected in ((MaskRcnnFamily, "segm", mask_ap), (RcnnFamily, "bbox", box_ap)):
        family = _family(family_type, validation_metric_type="coco_voc")
        assert family.iou_type == iou_type
        metrics = family.evaluate(model.eval(), [batch])
        assert metrics["mean_average_precision"] == pytest.approx(expected)
        assert metrics["coco_metrics"]["AP50"] == pytest.approx(expected)
    _family().train_step(model.train(), batch)
    (targets,) = model.seen
    assert targets[0]["labels"].tolist() == [1] and targets[0]["masks"].shape == (1, 40, 40)
    assert targets[0]["masks"][0, 10:30, 10:30].all() and targets[0]["masks"].sum() == 400


def test_family_builds_mask_loaders_and_scores_masks(tmp_path):
    records = _square_records(tmp_path)
    settings = resolve_settings(TASK, {"model_name": "maskrcnn_resnet18_fpn", "num_workers": 0})
    family = family_for(settings, ["square"], torch.device("cpu"), None)
    assert type(family) is MaskRcnnFamily
    loaders = family.training_loaders(records, records)
    assert isinstance(loaders.train.dataset, SegmentationDataset) and loaders.train.dataset.augment
    assert family.iou_type == "segm" and family.label_offset == 1
    assert (loaders.train.batch_size, loaders.validation.batch_size) == (2, 1)  # the reference's R-CNN defaults
    assert next(iter(loaders.validation)).targets[0]["masks"].shape[0] == 1
    # A box detector neither serves the task nor, when picked for boxes, gets the mask family.
    with pytest.raises(SettingsError, match="model_name: fasterrcnn_resnet18_fpn is a rcnn model, which does not serve "
                                            "image_instance_segmentation"):
        resolve_settings(TASK, {"model_name": "fasterrcnn_resnet18_fpn"})
    boxes = family_for(settings.model_copy(update={"model_name": "fasterrcnn_resnet18_fpn"}), ["square"],
                       torch.device("cpu"), None)
    assert type(boxes) is RcnnFamily and boxes.iou_type == "bbox"
    assert not isinstance(boxes.training_loaders(records, records).train.dataset, SegmentationDataset)


# --- scoring a predictions file -----------------------------------------------------------------------


def _line(filename, *objects):
    return {"filename": filename, "boxes": [
        {"box": dict(zip(BOX_KEYS, box)), "label": label, "score": score, "polygon": polygon}
        for label, box, score, polygon in objects]}


def _score(folder, lines):
    records = _square_records(folder)
    path = folder / "predictions.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = DataReport(source="test")
    return score_prediction_file(path, records, TASK, report, DataReport(source=str(path))), report


def test_scoring_a_file_matches_polygons_on_mask_iou(tmp_path):
    box = (0.25, 0.25, 0.75, 0.75)
    exact = [[0.25, 0.25, 0.75, 0.25, 0.75, 0.75, 0.25, 0.75]]
    metrics, _ = _score(tmp_path, [_line("a.png", ("square", box, 0.9, exact))])
    assert metrics["mean_average_precision"] == pytest.approx(1.0)
    # the same box with a polygon covering a third of the square: a false positive on masks
    sliver = [[0.25, 0.25, 0.4, 0.25, 0.4, 0.75, 0.25, 0.75]]
    metrics, _ = _score(tmp_path, [_line("a.png", ("square", box, 0.9, sliver))])
    assert metrics["mean_average_precision"] == 0.0 and metrics["precision"] == 0.0
    # a hole cut by a second segment (XOR) costs a quarter of the mask: IoU 0.75, still a match
    holed = exact + [[0.375, 0.375, 0.625, 0.375, 0.625, 0.625, 0.375, 0.625]]
    metrics, _ = _score(tmp_path, [_line("a.png", ("square", box, 0.9, holed))])
    assert metrics["mean_average_precision"] == pytest.approx(1.0)


def test_scoring_a_segmentation_file_needs_polygons(tmp_path):
    line = _line("a.png", ("square", (0.25, 0.25, 0.75, 0.75), 0.9, None))
    del line["boxes"][0]["polygon"]
    with pytest.raises(DataError, match="box 1 needs a 'polygon'"):
        _score(tmp_path, [line])
    odd = _line("a.png", ("square", (0.25, 0.25, 0.75, 0.75), 0.9, [[0.1, 0.2, 0.3]]))
    with pytest.raises(DataError, match="odd number of values"):
        _score(tmp_path, [odd])
