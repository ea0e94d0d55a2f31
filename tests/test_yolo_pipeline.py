"""YOLOv5 data pipeline and post-processing: letterbox round trip, mosaic and affine consistency,
flip, multi-scale sizes, batching, and score filtering / NMS / un-letterboxing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from visionsweep.data.records import ImageRecord, ObjectAnnotation
from visionsweep.families.yolo.pipeline import (
    PAD_VALUE, AffineParams, LetterboxInfo, YoloDataset, YoloSample, YoloTrainTransform, letterbox,
    letterbox_for_inference, load_sample, mosaic, multi_scale_size, random_affine, random_hflip, random_hsv,
    resize_batch,
    resize_longest, yolo_collate,
)
from visionsweep.families.yolo.dataset import YoloElementDataset, collate_yolo
from visionsweep.geometry.yolo_boxes import postprocess, unletterbox_boxes

COLOURS = np.array([[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20],
                    [230, 20, 230], [20, 230, 230], [250, 250, 250], [120, 20, 60]], dtype=np.uint8)
BACKGROUND = (0, 0, 0)


def _scene(width: int, height: int, rects: list[tuple[int, int, int, int]], first_class: int) -> YoloSample:
    """A black image with solid rectangles; object k has class first_class + k and colour COLOURS[class]."""
    image = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    classes = np.arange(first_class, first_class + len(rects), dtype=np.int64)
    for (x0, y0, x1, y1), c in zip(rects, classes):
        image[y0:y1, x0:x1] = COLOURS[c]
    return YoloSample(image, np.array(rects, dtype=np.float32).reshape(-1, 4), classes)


def _is_colour(pixels: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return (np.abs(pixels.astype(int) - colour.astype(int)) <= 12).all(axis=-1)


def _assert_boxes_match_pixels(sample: YoloSample) -> None:
    """Each box is inside the image, filled with its object's colour, and that colour stops at its edges."""
    height, width = sample.image.shape[:2]
    assert ((sample.boxes >= 0) & (sample.boxes <= [width, height, width, height])).all()
    for box, c in zip(sample.boxes, sample.classes):
        x0, y0, x1, y1 = box
        inner = sample.image[int(np.ceil(y0)) + 2:int(y1) - 2, int(np.ceil(x0)) + 2:int(x1) - 2]
        assert inner.size and _is_colour(inner, COLOURS[c]).mean() > 0.97, (box, c)
        ring = np.zeros((height, width), dtype=bool)
        ring[max(0, int(y0) - 5):int(y1) + 5, max(0, int(x0) - 5):int(x1) + 5] = True
        ring[max(0, int(y0) - 2):int(np.ceil(y1)) + 2, max(0, int(x0) - 2):int(np.ceil(x1)) + 2] = False
        assert not _is_colour(sample.image[ring], COLOURS[c]).any(), (box, c)


def _four_scenes() -> list[YoloSample]:
    return [
        _scene(200, 150, [(20, 30, 80, 120), (120, 10, 190, 60)], 0),
        _scene(160, 240, [(10, 10, 70, 90), (60, 150, 150, 230)], 2),
        _scene(240, 120, [(100, 20, 200, 100)], 4),
        _scene(130, 130, [(0, 0, 60, 60), (70, 70, 130, 130)], 5),
    ]


# --- letterbox ---------------------------------------------------------------------------------

def test_letterbox_of_a_portrait_image_pads_left_and_right_and_round_trips_boxes():
    original = _scene(499, 666, [(50, 100, 200, 400), (300, 500, 480, 650)], 0)
    padded, info = letterbox_for_inference(original, 320)
    assert padded.image.shape == (320, 320, 3)
    # 499 x 666 -> 240 x 320 (499 * 320 / 666 = 239.76), 80 columns of padding split 40 / 40.
    assert info == LetterboxInfo((499, 666), (240 / 499, 320 / 666), (40, 0))
    assert (padded.image[:, :40] == PAD_VALUE).all() and (padded.image[:, 280:] == PAD_VALUE).all()
    assert not (padded.image[:, 40] == PAD_VALUE).all()
    back = unletterbox_boxes(torch.from_numpy(padded.boxes), info)
    assert torch.allclose(back, torch.from_numpy(original.boxes), atol=1e-3)
    _assert_boxes_match_pixels(padded)


def test_letterbox_splits_odd_padding_and_only_enlarges_when_asked():
    wide = _scene(101, 64, [(10, 10, 90, 60)], 1)
    padded, scale, pad = letterbox(wide, 64)
    # 101 x 64 -> 64 x 41 (64 * 64 / 101 = 40.55); 23 rows of padding split 11 above, 12 below.
    assert padded.image.shape == (64, 64, 3) and pad == (0, 11) and scale == (64 / 101, 41 / 64)
    assert (padded.image[:11] == PAD_VALUE).all() and (padded.image[52:] == PAD_VALUE).all()
    assert not (padded.image[11] == PAD_VALUE).all() and not (padded.image[51] == PAD_VALUE).all()

    small = _scene(40, 20, [(5, 5, 35, 15)], 0)
    kept, scale, pad = letterbox(small, 64, scale_up=False)
    assert scale == (1.0, 1.0) and pad == (12, 22)
    assert (kept.image[22:42, 12:52] == small.image).all()
    # The inference path enlarges small images to the input size first, as the reference does.
    enlarged, info = letterbox_for_inference(small, 64)
    assert info.scale == (64 / 40, 32 / 20) and info.pad == (0, 16)
    back = unletterbox_boxes(torch.from_numpy(enlarged.boxes), info)
    assert torch.allclose(back, torch.from_numpy(small.boxes), atol=1e-4)


def test_resize_longest_scales_boxes_with_the_pixels():
    sample = _scene(300, 200, [(30, 40, 150, 160)], 3)
    resized = resize_longest(sample, 120, augment=False)
    assert resized.size == (120, 80)
    assert resized.boxes.tolist() == [[12.0, 16.0, 60.0, 64.0]]
    _assert_boxes_match_pixels(resized)


# --- mosaic, affine, flip ------------------------------------------------------------------------

def test_mosaic_places_four_images_around_the_centre():
    rng = np.random.default_rng(3)
    samples = [resize_longest(s, 128, augment=True) for s in _four_scenes()]
    canvas = mosaic(samples, 128, rng)
    assert canvas.image.shape == (256, 256, 3)
    assert sorted(canvas.classes.tolist()) == list(range(7))
    # Boxes cut by the canvas edge are clipped; drop the ones clipped to nothing before checking pixels.
    visible = (canvas.boxes[:, 2] - canvas.boxes[:, 0] > 6) & (canvas.boxes[:, 3] - canvas.boxes[:, 1] > 6)
    _assert_boxes_match_pixels(YoloSample(canvas.image, canvas.boxes[visible], canvas.classes[visible]))
    assert visible.sum() >= 4


@pytest.mark.parametrize("seed", range(6))
def test_mosaic_training_sample_keeps_boxes_inside_and_on_their_pixels(seed):
    transform = YoloTrainTransform(128, mosaic=True, augment=True, affine=AffineParams(scale=0.5, translate=0.1))
    out = transform(_four_scenes(), np.random.default_rng(seed))
    assert out.image.shape == (128, 128, 3)
    _assert_boxes_match_pixels(out)


def test_mosaic_training_keeps_most_objects_over_many_draws():
    transform = YoloTrainTransform(128)
    kept = [len(transform(_four_scenes(), np.random.default_rng(seed)).boxes) for seed in range(20)]
    assert sum(kept) > 20 and max(kept) >= 3


@pytest.mark.parametrize("seed", range(4))
def test_letterbox_training_sample_with_affine_and_flip_stays_consistent(seed):
    transform = YoloTrainTransform(128, mosaic=False, augment=True, affine=AffineParams(scale=0.3, translate=0.1))
    out = transform([_four_scenes()[1]], np.random.default_rng(seed))
    assert out.image.shape == (128, 128, 3)
    _assert_boxes_match_pixels(out)


def test_affine_with_zero_ranges_is_the_identity_and_filters_tiny_boxes():
    sample = _scene(64, 64, [(10, 10, 40, 50)], 0)
    same = random_affine(sample, np.random.default_rng(0), AffineParams(scale=0.0))
    assert same.image is sample.image and np.array_equal(same.boxes, sample.boxes)
    # A 3-pixel-wide box survives a scale s only while 3 s > 2; the 30-pixel box shows which s was drawn.
    tiny = _scene(100, 100, [(48, 30, 51, 60), (20, 40, 50, 70)], 0)
    outcomes = set()
    for seed in range(30):
        out = random_affine(tiny, np.random.default_rng(seed), AffineParams(scale=0.5))
        big = out.boxes[out.classes == 1]
        s = (big[0, 2] - big[0, 0]) / 30
        assert (0 in out.classes) == (3 * s > 2)
        outcomes.add(bool(3 * s > 2))
    assert outcomes == {True, False}


def test_horizontal_flip_mirrors_pixels_and_boxes():
    sample = _scene(100, 50, [(10, 5, 30, 45)], 2)
    flipped = random_hflip(sample, np.random.default_rng(0), p=1.0)
    assert flipped.boxes.tolist() == [[70.0, 5.0, 90.0, 45.0]]
    assert np.array_equal(flipped.image, sample.image[:, ::-1])
    _assert_boxes_match_pixels(flipped)
    assert random_hflip(sample, np.random.default_rng(0), p=0.0) is sample


def test_hsv_jitter_changes_colours_within_its_gains_and_never_moves_boxes():
    sample = _scene(64, 48, [(8, 8, 40, 40)], 0)  # a red square (230, 20, 20) on black
    assert random_hsv(sample, np.random.default_rng(0), (0.0, 0.0, 0.0)) is sample
    values = []
    for seed in range(6):
        jittered = random_hsv(sample, np.random.default_rng(seed), (0.0, 0.0, 0.4))
        assert np.array_equal(jittered.boxes, sample.boxes) and jittered.image.shape == sample.image.shape
        values.append(int(jittered.image[20, 20].max()))  # value = the largest channel
        assert (jittered.image[0, 0] == 0).all()  # black stays black
    # Value scaled by factors in [0.6, 1.4], clipped at 255: the red channel lands in [138, 255].
    assert len(set(values)) > 2 and all(138 - 2 <= v <= 255 for v in values)
    hue_only = random_hsv(sample, np.random.default_rng(1), (0.5, 0.0, 0.0)).image[20, 20]
    assert not np.array_equal(hue_only, sample.image[20, 20]) and abs(int(hue_only.max()) - 230) <= 2


def _record(path: Path, sample: YoloSample) -> ImageRecord:
    """``sample`` saved as a PNG, as a record whose objects are its boxes (all of class c0)."""
    from PIL import Image

    Image.fromarray(sample.image).save(path)
    height, width = sample.image.shape[:2]
    boxes = sample.boxes / np.array([width, height, width, height], dtype=np.float32)
    return ImageRecord(path, path.name, objects=tuple(ObjectAnnotation("c0", tuple(map(float, b))) for b in boxes))


def test_closed_mosaic_reaches_loader_workers(tmp_path):
    records = [_record(tmp_path / "whole.png", _scene(64, 64, [(0, 0, 64, 64)], 0))]
    dataset = YoloElementDataset(records * 8, ["c0"], 64, YoloTrainTransform(64, augment=False))
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=1, persistent_workers=True,
                                         collate_fn=collate_yolo)
    mosaics = next(iter(loader))  # the worker starts, with its copy of the dataset
    dataset.close_mosaic()  # in this process, after the worker started
    singles = next(iter(loader))
    per_image = [torch.bincount(b.targets[:, 0].long(), minlength=8).tolist() for b in (mosaics, singles)]
    assert any(count != 1 for count in per_image[0])  # four copies of the image around a random centre
    assert per_image[1] == [1] * 8  # the image alone, letterboxed


# --- multi-scale and batching --------------------------------------------------------------------

def test_multi_scale_sizes_are_stride_multiples_within_half_to_one_and_a_half():
    rng = np.random.default_rng(0)
    sizes = {multi_scale_size(640, rng) for _ in range(2000)}
    assert sizes == set(range(320, 961, 32))
    assert {multi_scale_size(32, rng) for _ in range(200)} <= {32, 64}
    assert {multi_scale_size(320, rng) for _ in range(500)} == set(range(160, 481, 32))
    batch = torch.rand(2, 3, 64, 64)
    assert resize_batch(batch, 96).shape == (2, 3, 96, 96)
    assert resize_batch(batch, 64) is batch


def test_collate_numbers_images_in_the_first_target_column():
    labels = [torch.tensor([[0, 1, 0.5, 0.5, 0.2, 0.2]]), torch.zeros((0, 6)),
              torch.tensor([[0, 0, 0.1, 0.2, 0.1, 0.1], [0, 3, 0.6, 0.6, 0.3, 0.3]])]
    batch = [(torch.zeros(3, 32, 32, dtype=torch.uint8), lab, None) for lab in labels]
    images, targets, infos = yolo_collate(batch)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert targets[:, 0].tolist() == [0, 2, 2] and targets[:, 1].tolist() == [1, 0, 3]
    assert infos == [None, None, None]


# --- the real fridge images ------------------------------------------------------------------------

FRIDGE_CLASSES = ["milk_bottle", "water_bottle", "carton", "can"]  # FairMOT identity column order


def _fridge_records(datasets: Path, count: int) -> list[ImageRecord]:
    root = datasets / "odFridgeObjects_FairMOTformat"
    records = []
    for image in sorted((root / "images").glob("*.jpg"))[:count]:
        objects = []
        for line in (root / "labels_with_ids" / f"{image.stem}.txt").read_text().splitlines():
            if line.strip():
                _, identity, cx, cy, w, h = (float(v) for v in line.split())
                objects.append(ObjectAnnotation(FRIDGE_CLASSES[int(identity)],
                                                (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)))
        records.append(ImageRecord(image, image.name, objects=tuple(objects)))
    return records


def test_fridge_dataset_items_for_training_and_validation(datasets):
    records = _fridge_records(datasets, 6)
    classes = sorted(FRIDGE_CLASSES)
    torch.manual_seed(0)
    train = YoloDataset(records, classes, 128, YoloTrainTransform(128))
    image, labels, info = train[0]
    assert image.shape == (3, 128, 128) and image.dtype == torch.uint8 and info is None
    assert labels.shape[1] == 6 and ((labels[:, 2:] >= 0) & (labels[:, 2:] <= 1)).all()
    assert set(labels[:, 1].long().tolist()) <= {0, 1, 2, 3}
    # Same torch seed, same augmentation; the next draw differs.
    again = YoloDataset(records, classes, 128, YoloTrainTransform(128))
    assert torch.equal(again[0][0], image)
    assert not torch.equal(again[0][0], image)

    valid = YoloDataset(records, classes, 128)
    image, labels, info = valid[1]
    assert image.shape == (3, 128, 128)
    assert info.original_size == (499, 666) and info.pad == (16, 0)
    assert len(labels) == len(records[1].objects)


def test_fridge_boxes_survive_letterbox_and_postprocess_back_to_original_pixels(datasets):
    record = _fridge_records(datasets, 42)[41]  # 00042.jpg: three objects
    sample = load_sample(record, {name: i for i, name in enumerate(sorted(FRIDGE_CLASSES))})
    padded, info = letterbox_for_inference(sample, 320)
    n = len(padded.boxes)
    assert n == 3
    boxes = torch.from_numpy(padded.boxes)
    # A fake model output: the letterboxed ground truth with objectness 0.9 and certain classes, plus noise.
    predictions = torch.zeros(1, n + 1, 5 + 4)
    predictions[0, :n, 0:2] = (boxes[:, :2] + boxes[:, 2:]) / 2
    predictions[0, :n, 2:4] = boxes[:, 2:] - boxes[:, :2]
    predictions[0, :n, 4] = torch.tensor([0.9, 0.8, 0.7])
    predictions[0, torch.arange(n), 5 + torch.from_numpy(sample.classes)] = 1.0
    predictions[0, n] = torch.tensor([160, 160, 50, 50, 0.05, 1.0, 0, 0, 0])  # objectness below 0.1
    (result,) = postprocess(predictions, score_thresh=0.1, iou_thresh=0.5, letterbox=[info])
    assert result.labels.tolist() == sample.classes.tolist()
    assert result.scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert torch.allclose(result.boxes, torch.from_numpy(sample.boxes), atol=1e-3)


# --- post-processing --------------------------------------------------------------------------------

def _prediction(cx, cy, w, h, obj, class_probs):
    return [cx, cy, w, h, obj, *class_probs]


def test_postprocess_thresholds_class_aware_nms_and_per_image_results():
    rows = [
        _prediction(50, 50, 40, 40, 0.9, [0.9, 0.1]),   # kept: 0.81 class 0
        _prediction(52, 50, 40, 40, 0.8, [0.9, 0.1]),   # same class, IoU ~0.9: suppressed
        _prediction(52, 50, 40, 40, 0.8, [0.1, 0.9]),   # other class: kept (0.72 class 1)
        _prediction(150, 150, 20, 20, 0.3, [0.3, 0.2]),  # score 0.09 <= 0.1: dropped
        _prediction(150, 150, 20, 20, 0.05, [1.0, 0.0]),  # objectness <= 0.1: dropped
    ]
    predictions = torch.tensor([rows, rows[::-1]], dtype=torch.float32)
    results = postprocess(predictions, score_thresh=0.1, iou_thresh=0.5)
    assert len(results) == 2
    for result in results:  # identical boxes in two images never suppress each other
        assert result.labels.tolist() == [0, 1]
        assert result.scores.tolist() == pytest.approx([0.81, 0.72])
    assert results[0].boxes[0].tolist() == pytest.approx([30, 30, 70, 70])
    # A looser IoU threshold keeps the overlapping same-class box too.
    assert len(postprocess(predictions, score_thresh=0.1, iou_thresh=0.95)[0].scores) == 3


def test_postprocess_caps_detections_per_image_and_uses_objectness_for_one_class():
    xs = torch.arange(10, dtype=torch.float32) * 30 + 15
    predictions = torch.zeros(1, 10, 6)
    predictions[0, :, 0], predictions[0, :, 1], predictions[0, :, 2:4] = xs, 15, 20
    predictions[0, :, 4] = torch.linspace(0.2, 0.65, 10)
    predictions[0, :, 5] = 0.01  # an untrained single-class probability does not matter
    (result,) = postprocess(predictions, score_thresh=0.1, iou_thresh=0.5, max_detections=4)
    assert result.scores.tolist() == pytest.approx([0.65, 0.6, 0.55, 0.5])
    assert result.boxes[:, 0].tolist() == pytest.approx((xs[[9, 8, 7, 6]] - 10).tolist())
    empty = postprocess(torch.zeros(2, 5, 7), score_thresh=0.1)
    assert [len(r.boxes) for r in empty] == [0, 0] and empty[0].boxes.shape == (0, 4)


def test_unletterbox_clips_to_the_original_image():
    info = LetterboxInfo((100, 50), (0.5, 0.5), (0, 7))
    boxes = torch.tensor([[-4.0, 0.0, 60.0, 40.0]])
    assert unletterbox_boxes(boxes, info).tolist() == [[0.0, 0.0, 100.0, 50.0]]
