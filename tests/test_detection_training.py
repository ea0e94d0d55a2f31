"""Detection training data: augmentations keep boxes on their pixels, the resize rule, batching of
images of different sizes, unreadable images, and the R-CNN family (label offset, metrics, validation
loss, prediction records, loaders) and how a run's family is chosen."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from visionsweep.data.jsonl import read_labeled_data
from visionsweep.errors import DataError, SettingsError
from visionsweep.families.classification import ClassificationFamily
from visionsweep.families.detection import ImageDetections
from visionsweep.families.rcnn import MaskRcnnFamily, RcnnFamily
from visionsweep.families.rcnn.dataset import DetectionDataset, collate_detection
from visionsweep.families.rcnn.transforms import (
    MEAN_COLOUR,
    crop_around_boxes,
    expand,
    horizontal_flip,
    keep_valid_objects,
    prepare_image,
    random_augment,
    resize_for_model,
)
from visionsweep.families.selection import family_for
from visionsweep.families.yolo import YoloFamily
from visionsweep.settings import resolve_settings
from visionsweep.tasks import Task

GREEN, COLOURS = (0, 160, 0), ((255, 0, 0), (0, 0, 255), (255, 255, 0))


def _scene(width=120, height=90, boxes=((10, 12, 50, 40), (60, 30, 110, 85), (30, 50, 45, 70))):
    """A green image with one solid rectangle per box, each in its own colour; integer pixel boxes."""
    image = torch.tensor(GREEN, dtype=torch.uint8)[:, None, None].repeat(1, height, width)
    for (x0, y0, x1, y1), colour in zip(boxes, COLOURS):
        image[:, y0:y1, x0:x1] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32),
              "labels": torch.arange(len(boxes)), "iscrowd": torch.tensor([False, True, False][:len(boxes)])}
    return image, target


def _colour_box(image, colour):
    """The pixel box (x0, y0, x1, y1) around every pixel of exactly ``colour``, or None."""
    hit = (image == torch.tensor(colour, dtype=image.dtype)[:, None, None]).all(0)
    if not hit.any():
        return None
    ys, xs = torch.nonzero(hit, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_horizontal_flip_by_hand():
    image, target = _scene()
    flipped, out = horizontal_flip(image, target)
    assert out["boxes"][0].tolist() == [70, 12, 110, 40]  # x0' = 120 - 50, x1' = 120 - 10
    assert _colour_box(flipped, COLOURS[0]) == [70, 12, 110, 40]
    assert torch.equal(out["labels"], target["labels"]) and torch.equal(out["iscrowd"], target["iscrowd"])


def test_expand_pastes_the_image_and_shifts_the_boxes():
    image, target = _scene()
    for seed in range(20):
        canvas, out = expand(image, target, np.random.default_rng(seed))
        height, width = canvas.shape[-2:]
        assert 90 <= height < 180 and 120 <= width < 240
        for colour, box in zip(COLOURS, out["boxes"].tolist()):
            assert _colour_box(canvas, colour) == box
        corners = canvas[:, [0, 0, -1, -1], [0, -1, 0, -1]]
        shift = out["boxes"][0] - target["boxes"][0]
        assert int(shift[0]) + 120 <= width and int(shift[1]) + 90 <= height
        if width > 120 and height > 90:  # some corner lies on the canvas, in the mean colour
            assert any(tuple(corners[:, i].tolist()) == MEAN_COLOUR for i in range(4))


def test_crop_keeps_every_box_and_the_reference_limits():
    image, target = _scene()
    cropped_any = False
    for seed in range(30):
        cropped, out = crop_around_boxes(image, target, np.random.default_rng(seed))
        height, width = cropped.shape[-2:]
        assert len(out["boxes"]) == 3
        for colour, box in zip(COLOURS, out["boxes"].tolist()):
            assert _colour_box(cropped, colour) == box
        if (height, width) != (90, 120):
            cropped_any = True
            assert height * width >= 0.6 * 90 * 120 and 0.5 < height / width < 2
    assert cropped_any


def test_crop_of_an_image_without_boxes():
    image, _ = _scene(boxes=())
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
              "iscrowd": torch.zeros(0, dtype=torch.bool)}
    sizes = {crop_around_boxes(image, target, np.random.default_rng(s))[0].shape[-2:] for s in range(10)}
    assert len(sizes) > 1


@pytest.mark.parametrize("seed", range(40))
def test_random_augment_keeps_boxes_on_their_pixels(seed):
    image, target = _scene()
    augmented, out = random_augment(image, target, np.random.default_rng(seed))
    assert len(out["boxes"]) == 3  # crop keeps every box, expand and flip lose none
    for label, box in zip(out["labels"].tolist(), out["boxes"].tolist()):
        assert _colour_box(augmented, COLOURS[label]) == box
    assert out["iscrowd"].tolist() == [False, True, False]  # flags travel with their boxes


def test_keep_valid_objects_filters_every_field_in_step():
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10], [5, 5, 5, 9], [-1, 0, 4, 4], [90, 2, 101, 9], [1, 1, 100, 50]]),
              "labels": torch.arange(5), "iscrowd": torch.tensor([0, 1, 0, 1, 1], dtype=torch.bool),
              "masks": torch.arange(5)[:, None, None].repeat(1, 2, 2)}
    kept = keep_valid_objects(target, width=100, height=50)
    assert kept["labels"].tolist() == [0, 4]
    assert kept["iscrowd"].tolist() == [False, True]
    assert kept["masks"][:, 0, 0].tolist() == [0, 4]


@pytest.mark.parametrize("size, expected", [((640, 480), (800, 600)), ((1920, 1080), (1066, 600)),
                                            ((4000, 500), (1333, 166)), ((499, 666), (600, 800))])
def test_resize_rule_of_torchvision(size, expected):
    width, height = size
    image = torch.zeros(3, height, width)
    target = {"boxes": torch.tensor([[0.0, 0.0, width, height], [width / 4, height / 2, width / 2, height]])}
    resized, out = resize_for_model(image, target, min_size=600, max_size=1333)
    new_height, new_width = resized.shape[-2:]
    assert abs(new_width - expected[0]) <= 1 and abs(new_height - expected[1]) <= 1
    assert out["boxes"][0].tolist() == pytest.approx([0, 0, new_width, new_height])
    assert out["boxes"][1].tolist() == pytest.approx([new_width / 4, new_height / 2, new_width / 2, new_height])


def test_prepare_image_normalises_and_resizes_boxes_with_the_pixels():
    image, target = _scene(width=160, height=120, boxes=((40, 20, 120, 100),))
    image[:, :10, :10] = torch.tensor(MEAN_COLOUR, dtype=torch.uint8)[:, None, None]
    prepared, out = prepare_image(image, target, min_size=60, max_size=100, augment=False)
    assert prepared.shape == (3, 60, 80) and prepared.dtype == torch.float32
    assert prepared[:, :4, :4].abs().max() < 0.01  # the mean colour is zero after normalisation
    assert out["boxes"].tolist() == [[20, 10, 60, 50]]
    red = prepared[0] > 1.5  # ImageNet-normalised pure red
    ys, xs = torch.nonzero(red, as_tuple=True)
    assert [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] == [20, 10, 60, 50]


def _write_images(folder, count=3):
    """``count`` PNGs 80 pixels high and 100, 120, 140 ... wide; even ones hold one red object, odd ones
    are background images. Returns the JSONL file."""
    lines = []
    for i in range(count):
        path = folder / f"{i}.png"
        width, height = 100 + 20 * i, 80
        pixels = np.zeros((height, width, 3), np.uint8)
        pixels[:] = GREEN
        if i % 2 == 0:  # odd images are background images: no object, no red
            pixels[20:60, 10:50] = COLOURS[0]
        Image.fromarray(pixels).save(path)
        lines.append({"image_url": path.name,
                      "label": [{"label": "red", "topX": 10 / width, "topY": 0.25, "bottomX": 50 / width,
                                 "bottomY": 0.75}] if i % 2 == 0 else []})
    jsonl = folder / "data.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return jsonl


def test_dataset_and_collation_of_images_of_different_sizes(tmp_path):
    records = read_labeled_data(_write_images(tmp_path), Task.OBJECT_DETECTION).records
    dataset = DetectionDataset(records, ["red"], min_size=40, max_size=200, augment=False)
    batch = collate_detection([dataset[i] for i in range(3)])
    assert [tuple(image.shape) for image in batch.images] == [(3, 40, 50), (3, 40, 60), (3, 40, 70)]
    assert batch.image_sizes == [(50, 40), (60, 40), (70, 40)]
    assert batch.original_sizes == [(100, 80), (120, 80), (140, 80)]
    assert batch.indices.tolist() == [0, 1, 2] and batch.failures == []
    assert batch.targets[0]["boxes"].tolist() == [pytest.approx([5, 10, 25, 30])]
    assert batch.targets[1]["boxes"].shape == (0, 4)  # a background image
    assert batch.targets[0]["labels"].tolist() == [0]  # dataset class index: no background offset here


def test_unreadable_images_become_failures_not_exceptions(tmp_path):
    records = read_labeled_data(_write_images(tmp_path), Task.OBJECT_DETECTION).records
    (tmp_path / "1.png").write_bytes(b"broken after the up-front check")
    dataset = DetectionDataset(records, ["red"], min_size=40, max_size=200, augment=True)
    batch = collate_detection([dataset[i] for i in range(3)])
    assert batch.indices.tolist() == [0, 2] and len(batch.images) == 2
    assert [index for index, _ in batch.failures] == [1]
    empty = collate_detection([dataset[1]])
    assert empty.images == [] and empty.indices.tolist() == []


def test_augmentation_is_seeded_and_can_be_switched_off(tmp_path):
    records = read_labeled_data(_write_images(tmp_path), Task.OBJECT_DETECTION).records
    plain = DetectionDataset(records, ["red"], min_size=40, max_size=200, augment=False)
    assert torch.equal(plain[0].image, plain[0].image)
    torch.manual_seed(3)
    first = DetectionDataset(records, ["red"], min_size=40, max_size=200, augment=True)[0]
    torch.manual_seed(3)
    again = DetectionDataset(records, ["red"], min_size=40, max_size=200, augment=True)[0]
    assert torch.equal(first.image, again.image) and torch.equal(first.target["boxes"], again.target["boxes"])
    augmented = DetectionDataset(records, ["red"], min_size=40, max_size=200, augment=True)
    shapes = {tuple(augmented[0].image.shape) for _ in range(12)}
    assert len(shapes) > 1  # crops and expansions change the frame


class _RedFinder(nn.Module):
    """A stand-in detector: in eval mode it reports the box around the strongly red pixels of each
    (normalised) image, with the given model label; in training mode it returns a loss dict and
    remembers the targets it was given."""

    def __init__(self, model_label: int):
        super().__init__()
        self.model_label = model_label
        self.weight = nn.Parameter(torch.ones(()))
        self.seen_targets = []

    def forward(self, images, targets=None):
        if self.training:
            self.seen_targets.append(targets)
            return {"loss_a": self.weight * 0.5, "loss_b": self.weight * 0.25}
        outputs = []
        for image in images:
            ys, xs = torch.nonzero(image[0] > 1.5, as_tuple=True)
            if len(xs) == 0:
                outputs.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                                "scores": torch.zeros(0)})
                continue
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            outputs.append({"boxes": box, "labels": torch.tensor([self.model_label]), "scores": torch.tensor([0.9])})
        return outputs


# The R-CNN model of each label offset: RetinaNet has no background class, Faster R-CNN keeps label 0 for it.
_MODEL_OF_OFFSET = {0: "retinanet_resnet50_fpn", 1: "fasterrcnn_resnet18_fpn"}


def _family(offset, **values):
    """The R-CNN family of a run with the default settings (VOC at IoU 0.5, validation loss on, training
    metrics off) of the model with this label offset, ``values`` overriding them."""
    settings = resolve_settings(Task.OBJECT_DETECTION, {"model_name": _MODEL_OF_OFFSET[offset], "num_workers": 0,
                                                        **values})
    family = RcnnFamily(settings, ["red"], torch.device("cpu"), None)
    assert family.label_offset == offset
    return family


@pytest.mark.parametrize("offset", [0, 1])
def test_family_adds_the_label_offset_and_scores_in_the_model_frame(tmp_path, offset):
    records = read_labeled_data(_write_images(tmp_path, count=4), Task.OBJECT_DETECTION).records
    dataset = DetectionDataset(records, ["red"], min_size=40, max_size=200, augment=False)
    batch = collate_detection([dataset[i] for i in range(4)])
    model = _RedFinder(model_label=offset)
    family = _family(offset)
    loss, count = family.train_step(model.train(), batch)
    assert loss.item() == pytest.approx(0.75) and count == 4
    assert [t["labels"].tolist() for t in model.seen_targets[0]] == [[offset], [], [offset], []]
    model.eval()
    with torch.no_grad():
        metrics = family.evaluate(model, [batch])
    # Both labelled images found exactly (boxes in the resized frame, labels mapped back), nothing on the
    # background images.
    red = metrics["per_label_metrics"]["red"]
    assert [red[key] for key in ("precision", "recall", "average_precision")] == pytest.approx([1.0, 1.0, 1.0])
    assert metrics["log_loss"] == pytest.approx(0.75)
    assert not model.training  # the validation-loss pass puts the model back in eval mode


def test_family_predicts_one_record_per_image_in_the_model_frame(tmp_path):
    records = read_labeled_data(_write_images(tmp_path, count=3), Task.OBJECT_DETECTION).records
    (tmp_path / "1.png").write_bytes(b"broken after the up-front check")
    dataset = DetectionDataset(records, ["red"], min_size=40, max_size=200, augment=False)
    batch = collate_detection([dataset[i] for i in range(3)])
    failures = []
    settings = resolve_settings(Task.OBJECT_DETECTION, {"model_name": "fasterrcnn_resnet18_fpn", "num_workers": 0})
    family = RcnnFamily(settings, ["red"], torch.device("cpu"), lambda failed, stage: failures.append((failed, stage)))
    with torch.no_grad():
        found = list(family.predict(_RedFinder(model_label=1).eval(), [batch], "prediction"))
    assert all(isinstance(image, ImageDetections) for image in found)
    assert [image.index for image in found] == [0, 2]  # the unreadable image went to the failure sink
    ((failed, stage),) = failures
    assert [index for index, _ in failed] == [1] and stage == "prediction"
    assert [(image.frame_size, image.original_size) for image in found] == [((50, 40), (100, 80)),
                                                                             ((70, 40), (140, 80))]
    assert found[0].predictions["boxes"].tolist() == [pytest.approx([5, 10, 25, 30])]  # the model frame
    assert found[0].predictions["labels"].tolist() == [0]  # the dataset class index, the offset removed
    assert found[0].target["boxes"].tolist() == [pytest.approx([5, 10, 25, 30])]
    assert found[1].predictions["boxes"].tolist() == [pytest.approx([5, 10, 25, 30])]
    assert found[0].predictions["scores"].tolist() == [pytest.approx(0.9)]


def test_family_without_metrics_and_with_training_metrics(tmp_path):
    records = read_labeled_data(_write_images(tmp_path, count=2), Task.OBJECT_DETECTION).records
    batch = collate_detection([DetectionDataset(records, ["red"], min_size=40, max_size=200, augment=False)[i]
                               for i in range(2)])
    model = _RedFinder(model_label=1)
    assert _family(1, validation_metric_type="none").evaluate(model.eval(), [batch]) == {"mean_average_precision": 0.0}
    family = _family(1, log_training_metrics="Enable")
    family.train_step(model.train(), batch)
    assert model.training
    assert family.training_metrics() == {"mean_average_precision_train": pytest.approx(1.0)}
    assert family.training_metrics() == {}  # reset for the next epoch


def test_training_loaders_check_the_data(tmp_path):
    records = read_labeled_data(_write_images(tmp_path, count=2), Task.OBJECT_DETECTION).records
    settings = resolve_settings(Task.OBJECT_DETECTION, {"model_name": "fasterrcnn_resnet18_fpn", "num_workers": 0})
    cpu = torch.device("cpu")
    family = RcnnFamily(settings, ["red"], cpu, None)
    loaders = family.training_loaders(records, records)
    assert family.label_offset == 1 and family.validation_loss and family.new_evaluation().metric_type == "voc"
    assert loaders.train.dataset.augment and not loaders.validation.dataset.augment
    assert (loaders.train.batch_size, loaders.validation.batch_size) == (2, 1)  # the reference's R-CNN defaults
    with pytest.raises(DataError, match="no objects in the training data"):
        family.training_loaders(records[1:], records)


def test_the_model_name_picks_the_family():
    cpu = torch.device("cpu")
    rcnn = resolve_settings(Task.OBJECT_DETECTION, {"model_name": "fasterrcnn_resnet18_fpn"})
    assert type(family_for(rcnn, ["red"], cpu, None)) is RcnnFamily
    yolo = resolve_settings(Task.OBJECT_DETECTION, {"model_name": "yolov5"})
    assert type(family_for(yolo, ["red"], cpu, None)) is YoloFamily
    mask = resolve_settings(Task.INSTANCE_SEGMENTATION, {"model_name": "maskrcnn_resnet18_fpn"})
    assert type(family_for(mask, ["red"], cpu, None)) is MaskRcnnFamily
    classifier = resolve_settings(Task.CLASSIFICATION, {"model_name": "resnet18"})
    assert type(family_for(classifier, ["red", "blue"], cpu, None)) is ClassificationFamily
    # The settings refuse tiling for a classifier; the family choice refuses it too, whatever made the settings.
    with pytest.raises(SettingsError, match="resnet18 is not a detector"):
        family_for(classifier.model_copy(update={"tile_grid_size": (2, 2)}), ["red", "blue"], cpu, None)
