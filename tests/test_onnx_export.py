"""ONNX export (``visionsweep.exporting``): every family's file gives the numbers of its torch model in
ONNX Runtime, at any batch size, carries its metadata, and refuses settings its graph cannot honour.

Fresh detectors barely react to their input (the signal fades through untrained layers and the heads
start at their priors), so their scores nearly tie and the order of top-k and NMS would hang on
rounding. ``_lively`` gives a fresh model the spread of a trained one before it is exported, and
every detector comparison asserts that there are detections to compare.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from visionsweep.errors import ExportError, SettingsError
from visionsweep.exporting.graph import MAX_OPSET, MIN_OPSET, ExportOptions
from visionsweep.exporting.onnx_file import export_onnx
from visionsweep.exporting.runtime import OnnxSession
from visionsweep.families.selection import family_for
from visionsweep.geometry.yolo_boxes import postprocess
from visionsweep.models import build_model, get_model_spec
from visionsweep.models.inputs import IMAGENET_MEAN, IMAGENET_STD
from visionsweep.settings import resolve_settings

LABELS = ["cat", "dog", "bird"]
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)

# Tiny inputs. The R-CNN thresholds are above 0 so that a lower one can be refused.
MODELS = {
    "classifier": ("image_classification", {"model_name": "resnet18", "valid_resize_size": 36, "valid_crop_size": 32}),
    "yolo": ("image_object_detection", {"model_name": "yolov5", "model_size": "small", "img_size": 64,
                                        "box_score_thresh": 0.001}),
    "faster": ("image_object_detection", {"model_name": "fasterrcnn_resnet18_fpn", "min_size": 64, "max_size": 96,
                                          "box_score_thresh": 0.05}),
    "retina": ("image_object_detection", {"model_name": "retinanet_resnet50_fpn", "min_size": 64, "max_size": 96,
                                          "box_score_thresh": 0.05}),
    "mask": ("image_instance_segmentation", {"model_name": "maskrcnn_resnet18_fpn", "min_size": 64, "max_size": 96,
                                             "box_score_thresh": 0.05, "box_detections_per_img": 20}),
}
RCNN_OUTPUTS = {"faster": ["boxes", "labels", "scores", "batch_index"],
                "retina": ["boxes", "scores", "labels", "batch_index"],
                "mask": ["boxes", "labels", "scores", "masks", "batch_index"]}
SLOW = {"retina", "mask"}  # ResNet-50 and mask pasting: seconds per call on a busy machine
SCORE_TOLERANCE = 1e-4


# --- helpers -------------------------------------------------------------------------------------------

def _settings(kind: str, **overrides):
    task, values = MODELS[kind]
    return resolve_settings(task, {**values, "pretrained": False, **overrides})


def _rgb(seed: int, *shape: int) -> torch.Tensor:
    """Seeded RGB in 0..1."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _normalized(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - MEAN) / STD


@torch.no_grad()
def _lively(model: nn.Module, example) -> None:
    """Give a fresh ``model`` the spread of a trained one: weights left at zero (residual branches) get
    seeded random values, then, on one pass over ``example``, each convolution's and linear layer's
    weights are scaled so that its output has unit spread about its bias, which is moved to the mean
    output. The outputs then vary with the image; the heads' priors (their biases) stay."""
    generator = torch.Generator().manual_seed(0)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers:
        if not layer.weight.any():
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
    seen: set[nn.Module] = set()

    def unit_spread(module, inputs, output):
        if module in seen:  # a head shared by the pyramid levels is scaled on the first
            return None
        seen.add(module)
        if module.bias is None:  # a batch norm follows
            spread = output.std()
            module.weight.div_(spread)
            return output / spread
        channels = [d for d in range(output.dim()) if d != 1]
        shape = (1, -1, *[1] * (output.dim() - 2))
        bias = module.bias.view(shape)
        centred = output - output.mean(dim=channels, keepdim=True)
        spread = centred.std()
        module.weight.div_(spread)
        module.bias.sub_((output - bias).mean(dim=channels) / spread)  # the bias stays the mean output
        return centred / spread + bias

    hooks = [layer.register_forward_hook(unit_spread) for layer in layers]
    try:
        model(example)
    finally:
        for hook in hooks:
            hook.remove()


def _build(settings) -> nn.Module:
    torch.manual_seed(0)
    return build_model(get_model_spec(settings.model_name), 3, settings.model_dump(), pretrained=False,
                       pretrained_weights=None, layers_to_freeze=None).eval()


@functools.cache
def _weights(kind: str) -> dict[str, torch.Tensor]:
    """The seeded weights of every model of ``kind``, whatever its other settings (thresholds)."""
    model = _build(_settings(kind))
    if kind == "yolo":
        _lively(model, _rgb(100, 2, 3, 64, 64))
    elif kind != "classifier":
        _lively(model, [_normalized(_rgb(100, 3, 64, 96))])
    return model.state_dict()


def _fresh_model(kind: str, settings) -> nn.Module:
    model = _build(settings)
    model.load_state_dict(_weights(kind))
    return model


@dataclass
class Exported:
    """A fresh model, its file and the file loaded in ONNX Runtime."""

    kind: str
    overrides: dict
    settings: object
    family: object
    inference: nn.Module  # the family's inference model: what the stand-in replaces
    path: Path
    session: OnnxSession

    def stand_in(self, **settings) -> nn.Module:
        """The family's ONNX stand-in, for the exported settings or these changed."""
        family = self.family
        if settings:
            family = family_for(_settings(self.kind, **{**self.overrides, **settings}), LABELS,
                                torch.device("cpu"), None)
        return family.onnx_model(self.session)

    def raw(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        """The file's outputs by name, run by onnxruntime itself on ``batch``."""
        outputs = self.session.session.run(None, {self.session.metadata.input_name: batch.numpy()})
        return dict(zip(self.session.output_names, outputs))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(kind, options, **settings)``: the model of ``MODELS[kind]`` with these settings changed,
    written and loaded once for the module (every variant of a kind has the same weights)."""
    cache: dict = {}

    def export(kind: str, options: ExportOptions = ExportOptions(), **overrides) -> Exported:
        key = (kind, options, tuple(sorted(overrides.items())))
        if key not in cache:
            settings = _settings(kind, **overrides)
            model = _fresh_model(kind, settings)
            path = tmp_path_factory.mktemp(kind) / "model.onnx"
            export_onnx(model, settings, LABELS, path, options)
            family = family_for(settings, LABELS, torch.device("cpu"), None)
            inference = family.inference_model(model).eval()
            cache[key] = Exported(kind, overrides, settings, family, inference, path, OnnxSession(path))
        return cache[key]

    return export


def _as_numpy(detections: dict) -> dict[str, np.ndarray]:
    return {name: value.detach().numpy() if torch.is_tensor(value) else value for name, value in detections.items()}


def _yolo_detections(decoded: torch.Tensor, settings) -> list[dict[str, np.ndarray]]:
    found = postprocess(decoded, score_thresh=settings.box_score_thresh, iou_thresh=settings.nms_iou_thresh)
    return [_as_numpy(d._asdict()) for d in found]


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _same_order(actual: dict, expected: dict, box_tolerance: float) -> np.ndarray:
    """The rows of ``actual`` in the order of ``expected``: the same where two detections whose scores
    differ by less than the tolerance came in the other order (rounding decides between them)."""
    order, free = [], list(range(len(actual["scores"])))
    for row in range(len(expected["scores"])):
        twins = [j for j in free if actual["labels"][j] == expected["labels"][row]
                 and abs(actual["scores"][j] - expected["scores"][row]) <= SCORE_TOLERANCE
                 and np.abs(actual["boxes"][j] - expected["boxes"][row]).max() <= box_tolerance]
        pick = row if row in twins or not twins else twins[0]  # no twin: the mismatch shows below
        order.append(pick)
        if pick in free:
            free.remove(pick)
    return np.array(order, dtype=np.int64)


def assert_same_detections(actual: dict, expected: dict, image_side: int, what: str) -> None:
    """The same detections, best first: boxes within 1e-3 of the image side, the same labels, scores
    within 1e-4, masks binarised at 0.5 overlapping by 99 % or more."""
    actual, expected = _as_numpy(actual), _as_numpy(expected)
    assert len(expected["boxes"]) > 0, f"{what}: no detection to compare (the comparison would prove nothing)"
    assert len(actual["boxes"]) == len(expected["boxes"]), what
    assert np.all(np.diff(actual["scores"]) <= 0), f"{what}: not best first"
    box_tolerance = 1e-3 * image_side
    actual = {name: value[_same_order(actual, expected, box_tolerance)] for name, value in actual.items()}
    np.testing.assert_array_equal(actual["labels"], expected["labels"], err_msg=what)
    np.testing.assert_allclose(actual["boxes"], expected["boxes"], rtol=0, atol=box_tolerance, err_msg=what)
    np.testing.assert_allclose(actual["scores"], expected["scores"], rtol=0, atol=SCORE_TOLERANCE, err_msg=what)
    if "masks" in expected:
        assert actual["masks"].shape == expected["masks"].shape, what
        ious = [_mask_iou(a, e) for a, e in zip(actual["masks"], expected["masks"])]
        assert min(ious) >= 0.99, f"{what}: mask IoU {min(ious):.4f}"
        assert any((e > 0.5).any() for e in expected["masks"]), f"{what}: every mask is empty"


def _rcnn_torch_rows(exp: Exported, image: torch.Tensor) -> dict[str, np.ndarray]:
    """The torch detector's detections of one normalised image, labels as the file gives them."""
    with torch.no_grad():
        found = _as_numpy(exp.inference([image])[0])
    found["labels"] = found["labels"] - exp.family.label_offset
    return found


def _rows_of(outputs: dict[str, np.ndarray], image: int) -> dict[str, np.ndarray]:
    """The rows of ``image`` in a batched R-CNN (or YOLO with NMS) file's outputs."""
    keep = outputs["batch_index"] == image
    return {name: value[keep] for name, value in outputs.items() if name != "batch_index"}


def _slow_if(kinds: list[str]) -> list:
    return [pytest.param(kind, marks=pytest.mark.slow) if kind in SLOW else kind for kind in kinds]


# --- parity: ONNX Runtime gives the torch model's numbers ---------------------------------------------

@pytest.mark.parametrize("in_graph_normalization", [False, True])
def test_classifier_stand_in_gives_the_torch_logits(exported, in_graph_normalization):
    exp = exported("classifier", enable_onnx_normalization=in_graph_normalization)
    images = _normalized(_rgb(1, 3, 3, 32, 32))
    with torch.no_grad():
        expected = exp.inference(images).numpy()
    actual = exp.stand_in()(images).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-5)


def test_classifier_with_in_graph_normalization_takes_0_255_rgb(exported):
    exp = exported("classifier", enable_onnx_normalization=True)
    rgb = _rgb(2, 2, 3, 32, 32)
    with torch.no_grad():
        expected = exp.inference(_normalized(rgb)).numpy()
    np.testing.assert_allclose(exp.raw(rgb * 255)["output1"], expected, rtol=1e-3, atol=1e-5)


# In-graph normalisation is one wrapper for every R-CNN graph: Faster R-CNN checks it, the others need
# not export twice more.
@pytest.mark.parametrize("kind,in_graph_normalization", [
    ("faster", False), ("faster", True),
    pytest.param("retina", False, marks=pytest.mark.slow), pytest.param("mask", False, marks=pytest.mark.slow)])
def test_rcnn_stand_in_gives_the_torch_detections(exported, kind, in_graph_normalization):
    exp = exported(kind, enable_onnx_normalization=in_graph_normalization)
    # Another size than the traced 64 x 64 too: the graph's height and width are dynamic.
    images = [_normalized(_rgb(3, 3, 64, 96)), _normalized(_rgb(4, 3, 64, 64))]
    with torch.no_grad():  # one at a time: torch pads the images of a batch to one size, the stand-in does not
        expected = [exp.inference([image])[0] for image in images]
    actual = exp.stand_in()(images)
    assert len(actual) == len(images)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert set(a) == set(e)
        assert_same_detections(a, e, 96, f"{kind} image {i}")


def test_rcnn_with_in_graph_normalization_takes_0_255_rgb(exported):
    exp = exported("faster", enable_onnx_normalization=True)
    rgb = _rgb(5, 3, 64, 96)
    assert_same_detections(_rows_of(exp.raw(rgb[None] * 255), 0), _rcnn_torch_rows(exp, _normalized(rgb)), 96,
                           "0-255 input")


@pytest.mark.parametrize("in_graph_normalization", [False, True])
def test_yolo_stand_in_gives_the_torch_detections(exported, in_graph_normalization):
    exp = exported("yolo", enable_onnx_normalization=in_graph_normalization)
    images = _rgb(6, 3, 3, 64, 64)
    with torch.no_grad():
        decoded, _ = exp.inference(images)
    onnx_decoded, raw_maps = exp.stand_in()(images)
    assert raw_maps is None and onnx_decoded.shape == decoded.shape
    for i, (a, e) in enumerate(zip(_yolo_detections(onnx_decoded, exp.settings),
                                   _yolo_detections(decoded, exp.settings))):
        assert_same_detections(a, e, 64, f"yolo image {i}")


# --- dynamic batch: one file, any number of images ------------------------------------------------------

def test_classifier_file_runs_any_batch_size(exported):
    exp = exported("classifier")
    assert exp.session.session.get_inputs()[0].shape[0] == "batch"
    for size in (1, 2, 5):
        images = _normalized(_rgb(10 + size, size, 3, 32, 32))
        with torch.no_grad():
            expected = torch.cat([exp.inference(image[None]) for image in images]).numpy()
        np.testing.assert_allclose(exp.raw(images)["output1"], expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("kind", _slow_if(["faster", "retina", "mask"]))
def test_rcnn_file_runs_any_batch_size_with_rows_by_batch_index(exported, kind):
    exp = exported(kind)
    for size in (1, 2, 5):
        images = _normalized(_rgb(20 + size, size, 3, 64, 64))
        outputs = exp.raw(images)
        assert list(outputs) == RCNN_OUTPUTS[kind]
        assert outputs["batch_index"].dtype == np.int64
        assert np.all(np.diff(outputs["batch_index"]) >= 0), "rows grouped by image, in image order"
        for i, image in enumerate(images):
            assert_same_detections(_rows_of(outputs, i), _rcnn_torch_rows(exp, image), 64,
                                   f"{kind} batch {size} image {i}")


def test_rcnn_file_gives_no_rows_for_an_image_without_detections(exported):
    images = _normalized(_rgb(25, 3, 3, 64, 64))
    best = [float(_rcnn_torch_rows(exported("faster"), image)["scores"].max()) for image in images]
    empty = int(np.argmin(best))
    threshold = (best[empty] + sorted(best)[1]) / 2  # above the empty one's best, below another's
    exp = exported("faster", box_score_thresh=threshold)
    outputs = exp.raw(images)
    assert not np.any(outputs["batch_index"] == empty)
    for i in set(range(3)) - {empty}:
        expected = _rcnn_torch_rows(exp, images[i])
        if len(expected["scores"]):
            assert_same_detections(_rows_of(outputs, i), expected, 64, f"image {i}")
        else:
            assert not np.any(outputs["batch_index"] == i)
    assert len(outputs["batch_index"]) > 0


def test_yolo_file_runs_any_batch_size(exported):
    exp = exported("yolo")
    for size in (1, 2, 5):
        images = _rgb(30 + size, size, 3, 64, 64)
        decoded = exp.raw(images)["output"]
        assert decoded.shape[0] == size
        for i, image in enumerate(images):
            with torch.no_grad():
                alone = exp.inference(image[None])[0]
            np.testing.assert_allclose(decoded[i, :, :4], alone[0, :, :4].numpy(), rtol=0, atol=1e-3 * 64)
            np.testing.assert_allclose(decoded[i, :, 4:], alone[0, :, 4:].numpy(), rtol=0, atol=1e-4)
            assert_same_detections(_yolo_detections(torch.from_numpy(decoded[i:i + 1]), exp.settings)[0],
                                   _yolo_detections(alone, exp.settings)[0], 64, f"yolo batch {size} image {i}")


@pytest.mark.parametrize("kind", ["classifier", "yolo", pytest.param("faster", marks=pytest.mark.slow)])
def test_fixed_batch_file_declares_and_enforces_its_batch_size(exported, kind):
    exp = exported(kind, ExportOptions(batch=2))
    side = 32 if kind == "classifier" else 64
    assert exp.session.session.get_inputs()[0].shape[0] == 2
    assert exp.session.metadata.input_shape[0] == 2
    exp.raw(_rgb(40, 2, 3, side, side))  # two images run
    with pytest.raises(Exception, match="(?i)invalid dimensions"):
        exp.raw(_rgb(41, 3, 3, side, side))


# --- YOLOv5 with NMS in the graph -----------------------------------------------------------------------

def test_yolo_in_graph_nms_gives_postprocess_detections_per_image(exported):
    exp = exported("yolo", ExportOptions(nms=True))
    assert exp.session.metadata.nms_in_graph
    assert exp.session.output_names == ["boxes", "labels", "scores", "batch_index"]
    images = _rgb(50, 3, 3, 64, 64)
    outputs = exp.raw(images)
    assert np.all(np.diff(outputs["batch_index"]) >= 0), "rows grouped by image, in image order"
    with torch.no_grad():
        expected = _yolo_detections(exp.inference(images)[0], exp.settings)
    for i in range(3):
        rows = _rows_of(outputs, i)
        assert np.all(np.diff(rows["scores"]) <= 0), "best first"
        assert_same_detections(rows, expected[i], 64, f"image {i}")


def test_yolo_in_graph_nms_gives_no_rows_for_an_image_without_detections(exported):
    plain = exported("yolo")
    images = _rgb(51, 3, 3, 64, 64)
    with torch.no_grad():
        decoded = plain.inference(images)[0]
    best = (decoded[..., 5:] * decoded[..., 4:5]).amax(dim=(1, 2))  # each image's best score
    empty = int(best.argmin())
    threshold = float((best[empty] + best.sort().values[1]) / 2)  # above the empty one's best, below another's
    exp = exported("yolo", ExportOptions(nms=True), box_score_thresh=threshold)
    outputs = exp.raw(images)
    assert not np.any(outputs["batch_index"] == empty)
    assert len(outputs["batch_index"]) > 0 and np.all(outputs["scores"] > threshold)
    expected = _yolo_detections(decoded, exp.settings)
    assert len(expected[empty]["boxes"]) == 0
    for i in set(range(3)) - {empty}:
        if len(expected[i]["boxes"]):
            assert_same_detections(_rows_of(outputs, i), expected[i], 64, f"image {i}")
        else:
            assert not np.any(outputs["batch_index"] == i)


def test_yolo_stand_in_refuses_a_file_with_in_graph_nms(exported):
    exp = exported("yolo", ExportOptions(nms=True))
    with pytest.raises(ExportError, match="NMS in the graph"):
        exp.stand_in()


# --- metadata ---------------------------------------------------------------------------------------------

def _expected_metadata(kind: str, settings) -> dict:
    rcnn = kind in RCNN_OUTPUTS
    normalized = settings.enable_onnx_normalization
    expected = {"task": settings.task.value, "model_name": settings.model_name, "labels": LABELS,
                "input_name": "input1" if kind == "classifier" else "input",
                "normalized_in_graph": normalized, "nms_in_graph": rcnn,
                "box_score_thresh": getattr(settings, "box_score_thresh", None),
                "nms_iou_thresh": getattr(settings, "nms_iou_thresh", None)}
    if kind == "classifier":
        expected.update(input_shape=[None, 3, 32, 32], outputs=["output1"])
    elif kind == "yolo":
        expected.update(input_shape=[None, 3, None, None], outputs=["output"], normalization=None,
                        input_range="0-255" if normalized else "0-1")
    else:
        expected.update(input_shape=[None, 3, None, None], outputs=RCNN_OUTPUTS[kind])
    if kind != "yolo":
        expected.update(normalization={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
                        input_range="0-255" if normalized else "0-1, normalised with mean and std")
    return expected


@pytest.mark.parametrize("kind,in_graph_normalization", [
    ("classifier", False), ("classifier", True), ("yolo", False), ("yolo", True), ("faster", False),
    ("faster", True), pytest.param("retina", False, marks=pytest.mark.slow),
    pytest.param("mask", False, marks=pytest.mark.slow)])
def test_metadata_describes_the_file(exported, kind, in_graph_normalization):
    exp = exported(kind, enable_onnx_normalization=in_graph_normalization)
    expected = _expected_metadata(kind, exp.settings)
    from_session = exp.session.metadata
    props = {p.key: json.loads(p.value) for p in onnx.load(exp.path, load_external_data=False).metadata_props}
    for name, value in expected.items():
        got = getattr(from_session, name)
        if name == "outputs":
            got, props_value = list(got), list(props[f"visionsweep.{name}"])
        else:
            props_value = props[f"visionsweep.{name}"]
        assert got == value, name
        assert props_value == value, name
    assert list(from_session.outputs) == exp.session.output_names, "in the file's output order"
    assert all(from_session.outputs.values()), "every output says what it holds"
    assert from_session.settings == props["visionsweep.settings"]
    assert from_session.settings["model_name"] == exp.settings.model_name


def test_file_without_visionsweep_metadata_is_refused(tmp_path):
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "other",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"author": "someone else"})
    onnx.save(model, tmp_path / "other.onnx")
    with pytest.raises(ExportError, match="carries no visionsweep metadata.*export"):
        OnnxSession(tmp_path / "other.onnx")


# --- settings the graph holds fixed -----------------------------------------------------------------------

def test_classifier_file_refuses_another_crop_size(exported):
    exp = exported("classifier")
    with pytest.raises(SettingsError, match="valid_crop_size: got 64.*exported with 32"):
        exp.stand_in(valid_crop_size=64, valid_resize_size=72)


def test_rcnn_stand_in_applies_a_higher_score_threshold(exported):
    exp = exported("faster")
    images = [_normalized(_rgb(60, 3, 64, 64))]
    lower = exp.stand_in()(images)[0]
    threshold = float(lower["scores"].median())  # half the detections go
    higher = exp.stand_in(box_score_thresh=threshold)(images)[0]
    assert 0 < len(higher["scores"]) < len(lower["scores"])
    assert bool((higher["scores"] > threshold).all())
    kept = {name: value[lower["scores"] > threshold] for name, value in lower.items()}
    assert_same_detections(higher, kept, 64, "the exported detections above the higher threshold")


def test_rcnn_stand_in_refuses_a_lower_score_threshold(exported):
    exp = exported("faster")
    with pytest.raises(SettingsError, match="box_score_thresh: got 0.01, below the 0.05"):
        exp.stand_in(box_score_thresh=0.01)


def test_rcnn_stand_in_refuses_another_nms_iou_thresh(exported):
    exp = exported("faster")
    with pytest.raises(SettingsError, match="nms_iou_thresh: got 0.3.*exported with 0.5"):
        exp.stand_in(nms_iou_thresh=0.3)


def test_yolo_file_refuses_another_img_size(exported):
    exp = exported("yolo")
    with pytest.raises(SettingsError, match="img_size: got 96.*exported with 64"):
        exp.stand_in(img_size=96)


# --- export options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", [MIN_OPSET - 1, MAX_OPSET + 1])
def test_export_options_refuse_an_opset_outside_the_supported_range(opset):
    with pytest.raises(SettingsError, match=f"opset: got {opset}.*opsets {MIN_OPSET} to {MAX_OPSET}"):
        ExportOptions(opset=opset)


@pytest.mark.parametrize("batch", [0, -1])
def test_export_options_refuse_a_batch_below_one(batch):
    with pytest.raises(SettingsError, match=f"batch: got {batch}; use a positive number"):
        ExportOptions(batch=batch)


@pytest.mark.parametrize("kind", ["classifier", "yolo", pytest.param("faster", marks=pytest.mark.slow)])
@pytest.mark.parametrize("opset", [MIN_OPSET, MAX_OPSET])  # the default opset is every other test's
def test_files_export_at_the_lowest_and_highest_opset(exported, kind, opset):
    exp = exported(kind, ExportOptions(opset=opset))
    model = onnx.load(exp.path, load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}[""] == opset
    side = 32 if kind == "classifier" else 64
    images = _rgb(70, 2, 3, side, side)
    default = exported(kind)
    if kind == "classifier":
        np.testing.assert_allclose(exp.raw(images)["output1"], default.raw(images)["output1"], rtol=1e-3, atol=1e-5)
    elif kind == "yolo":
        np.testing.assert_allclose(exp.raw(images)["output"], default.raw(images)["output"], rtol=1e-4, atol=1e-4)
    else:
        images = _normalized(images)
        for i in range(2):
            assert_same_detections(_rows_of(exp.raw(images), i), _rows_of(default.raw(images), i), 64, f"image {i}")
