"""R-CNN-family detectors: construction, a training step and a prediction each, the class-index
convention, thresholds, freezing groups and pretrained weights from a file or the cache."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from conftest import slow_variants
from visionsweep.errors import SettingsError, WeightsUnavailableError
from visionsweep.models import create_model, get_model_spec, list_models
from visionsweep.models.detection import build_faster_rcnn, build_rcnn_v2, label_offset
from visionsweep.tasks import Task

# Azure's R-CNN-family detector names (docs/models.md)
RCNN_DETECTION_MODELS = (
    "fasterrcnn_resnet18_fpn", "fasterrcnn_resnet34_fpn", "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet101_fpn", "fasterrcnn_resnet152_fpn", "retinanet_resnet50_fpn",
)

# Beyond the reference: torchvision's v2 Faster R-CNN (docs/models.md)
V2_DETECTION_MODELS = ("fasterrcnn_resnet50_fpn_v2",)

SMALL = {"pretrained": False, "min_size": 64, "max_size": 96}
FASTER = [name for name in RCNN_DETECTION_MODELS if name.startswith("fasterrcnn")]


def _batch():
    torch.manual_seed(0)
    images = [torch.randn(3, 64, 80), torch.randn(3, 72, 64)]  # already resized and normalised inputs
    targets = [{"boxes": torch.tensor([[8.0, 6.0, 50.0, 40.0], [30.0, 30.0, 60.0, 62.0]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # a background image
    return images, targets


def _fewer_rois(model):
    """This file checks wiring, not the RoI budget: 64 proposals and sampled RoIs per image instead of
    1000-2000 and 512 make a Faster R-CNN step about ten times cheaper on a CPU."""
    if hasattr(model, "rpn"):
        model.rpn._pre_nms_top_n = model.rpn._post_nms_top_n = {"training": 64, "testing": 64}
        model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    return model


def test_every_rcnn_detector_is_registered_for_detection_only():
    names = RCNN_DETECTION_MODELS + V2_DETECTION_MODELS
    assert set(names) <= set(list_models(Task.OBJECT_DETECTION))
    assert not set(names) & set(list_models(Task.INSTANCE_SEGMENTATION))
    assert all(get_model_spec(name).family == "rcnn" for name in names)


@pytest.mark.parametrize("name", slow_variants(RCNN_DETECTION_MODELS + V2_DETECTION_MODELS,
                                              {"fasterrcnn_resnet101_fpn", "fasterrcnn_resnet152_fpn"}))
def test_train_step_then_predict(name):
    model = _fewer_rois(create_model(name, 3, **SMALL, box_score_thresh=0.0, box_detections_per_img=7))
    offset = label_offset(name)
    images, targets = _batch()
    model.train()
    losses = model(images, [{**t, "labels": t["labels"] + offset} for t in targets])
    loss = sum(losses.values())
    # Frozen batch norm is the identity without weights; the zero-initialised residual branches keep even
    # ResNet-152 from starting with an exploding loss (it started near 1e7 without them).
    assert torch.isfinite(loss) and 0.1 < loss.item() < 10
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for output, image in zip(outputs, images):
        boxes = output["boxes"]
        assert 0 < len(boxes) <= 7 and output["labels"].shape == output["scores"].shape == (len(boxes),)
        # boxes are in the frame of the input tensor: the model does not resize
        height, width = image.shape[-2:]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert output["labels"].min() >= offset and output["labels"].max() < 3 + offset
        assert (output["scores"][:-1] >= output["scores"][1:]).all()


def test_class_index_convention():
    assert [label_offset(n) for n in RCNN_DETECTION_MODELS] == [1, 1, 1, 1, 1, 0]
    faster = create_model("fasterrcnn_resnet18_fpn", 4, **SMALL)
    # background at index 0: one output more than the data has classes
    assert faster.roi_heads.box_predictor.cls_score.out_features == 5
    assert faster.roi_heads.box_predictor.bbox_pred.out_features == 20
    retina = create_model("retinanet_resnet50_fpn", 4, **SMALL)
    assert retina.head.classification_head.num_classes == 4
    assert retina.head.classification_head.cls_logits.out_channels == 9 * 4  # 9 anchors per location


def test_thresholds_reach_the_torchvision_modules():
    values = {"box_score_thresh": 0.42, "nms_iou_thresh": 0.33, "box_detections_per_img": 7, "min_size": 96,
              "max_size": 160, "pretrained": False}
    faster = create_model("fasterrcnn_resnet34_fpn", 2, **values)
    assert (faster.roi_heads.score_thresh, faster.roi_heads.nms_thresh, faster.roi_heads.detections_per_img) == (
        0.42, 0.33, 7)
    retina = create_model("retinanet_resnet50_fpn", 2, **values)
    assert (retina.score_thresh, retina.nms_thresh, retina.detections_per_img) == (0.42, 0.33, 7)
    for model in (faster, retina):
        assert model.transform.min_size == (96,) and model.transform.max_size == 160


def test_reference_defaults():
    model = create_model("retinanet_resnet50_fpn", 2, pretrained=False)
    assert (model.score_thresh, model.nms_thresh, model.detections_per_img) == (0.3, 0.5, 100)
    assert model.transform.min_size == (600,) and model.transform.max_size == 1333


def test_the_model_neither_resizes_nor_normalises():
    model = create_model("fasterrcnn_resnet18_fpn", 2, **SMALL).eval()
    image = torch.rand(3, 50, 70)
    batched, _ = model.transform([image])
    assert batched.image_sizes == [(50, 70)]
    assert batched.tensors.shape == (1, 3, 64, 96)  # zero padding to a multiple of 32 only
    assert torch.equal(batched.tensors[0, :, :50, :70], image)


def test_backbone_construction():
    r18 = create_model("fasterrcnn_resnet18_fpn", 2, **SMALL)
    r101 = create_model("fasterrcnn_resnet101_fpn", 2, **SMALL)
    retina = create_model("retinanet_resnet50_fpn", 2, **SMALL)
    channels = lambda m: [block[0].in_channels for block in m.backbone.fpn.inner_blocks]  # noqa: E731
    assert channels(r18) == [64, 128, 256, 512]
    assert channels(r101) == [256, 512, 1024, 2048]
    assert channels(retina) == [512, 1024, 2048]  # stages 2-4, then P6 and P7
    assert isinstance(r18.backbone.fpn.extra_blocks, LastLevelMaxPool)
    assert isinstance(retina.backbone.fpn.extra_blocks, LastLevelP6P7)
    assert r18.backbone.out_channels == retina.backbone.out_channels == 256
    for model in (r18, r101, retina):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.body.modules()) > 0
    # The ResNet-50 detectors use eps 0 like the COCO weights they start from; the others keep 1e-5.
    assert {m.eps for m in retina.modules() if isinstance(m, FrozenBatchNorm2d)} == {0.0}
    assert {m.eps for m in r18.modules() if isinstance(m, FrozenBatchNorm2d)} == {1e-5}


def _frozen_prefixes(model):
    frozen = {name.split(".")[2] for name, p in model.named_parameters()
              if not p.requires_grad and name.startswith("backbone.body.")}
    outside = [name for name, p in model.named_parameters()
               if not p.requires_grad and not name.startswith("backbone.body.")]
    assert not outside  # only trunk stages are ever frozen
    return frozen


@pytest.mark.parametrize("count, frozen", [
    (None, {"conv1", "layer1"}),  # the reference's default: layer2-layer4 train
    (0, set()),  # nothing frozen, not even the default stages
    (1, {"conv1"}),  # layer1 becomes trainable
    (3, {"conv1", "layer1", "layer2"}),
    (5, {"conv1", "layer1", "layer2", "layer3", "layer4"}),
])
def test_layers_to_freeze(count, frozen):
    settings = dict(SMALL) if count is None else {**SMALL, "layers_to_freeze": count}
    for name in ("fasterrcnn_resnet18_fpn", "retinanet_resnet50_fpn"):
        assert _frozen_prefixes(create_model(name, 2, **settings)) == frozen


def test_layer_groups_and_too_many():
    spec = get_model_spec("fasterrcnn_resnet50_fpn")
    assert [g[0] for g in spec.layer_groups] == [f"backbone.body.{s}." for s in
                                                 ("conv1", "layer1", "layer2", "layer3", "layer4")]
    with pytest.raises(SettingsError, match="layers_to_freeze: got 6; fasterrcnn_resnet18_fpn has 5 layer groups"):
        create_model("fasterrcnn_resnet18_fpn", 2, **SMALL, layers_to_freeze=6)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VISIONSWEEP_OFFLINE", "1")
    return tmp_path


def test_imagenet_backbone_from_the_torch_cache(offline_cache):
    # The ResNet-18 detector has no public COCO weights: it starts from the classification ResNet-18 file.
    imagenet = torchvision.models.resnet18(num_classes=1000)
    source = get_model_spec("fasterrcnn_resnet18_fpn").weights
    assert source.filename == "resnet18-f37072fd.pth"
    path = offline_cache / "torch" / "hub" / "checkpoints" / source.filename
    path.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), path)
    model = create_model("fasterrcnn_resnet18_fpn", 3, min_size=64, max_size=96)
    assert torch.equal(model.backbone.body.conv1.weight, imagenet.conv1.weight)
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert torch.equal(model.backbone.body.layer3[0].bn1.running_var, imagenet.layer3[0].bn1.running_var)
    fresh = create_model("fasterrcnn_resnet18_fpn", 3, **SMALL)
    assert not torch.equal(model.backbone.body.conv1.weight, fresh.backbone.body.conv1.weight)


def test_coco_detector_weights_from_a_file_keep_a_fresh_class_layer(tmp_path, offline_cache):
    torch.manual_seed(1)
    coco = build_faster_rcnn(50, 90)  # 91 outputs, like torchvision's COCO weights
    torch.save(coco.state_dict(), tmp_path / "coco.pth")
    model = create_model("fasterrcnn_resnet50_fpn", 3, min_size=64, max_size=96,
                         pretrained_weights=str(tmp_path / "coco.pth"))
    ours, theirs = model.state_dict(), coco.state_dict()
    differing = sorted(k for k in ours if not torch.equal(ours[k], theirs[k]))
    assert differing == ["roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.weight",
                         "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.cls_score.weight"]
    assert model.roi_heads.box_predictor.cls_score.out_features == 4


def test_missing_weights_name_the_cache_and_the_way_out(offline_cache):
    with pytest.raises(WeightsUnavailableError, match=r"resnet34-b627a593\.pth.*pretrained=false"):
        create_model("fasterrcnn_resnet34_fpn", 2, min_size=64, max_size=96)


# --- the v2 model (torchvision's fasterrcnn_resnet50_fpn_v2, beyond the reference) ---------------------


def test_v2_is_torchvisions_v2_network_with_the_settings_and_a_fresh_class_layer():
    model = create_model("fasterrcnn_resnet50_fpn_v2", 4, pretrained=False, min_size=96, max_size=160,
                         box_score_thresh=0.42, nms_iou_thresh=0.33, box_detections_per_img=7)
    reference = torchvision.models.detection.fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None,
                                                                        num_classes=91)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert sorted(k for k in ours if ours[k].shape != theirs[k].shape) == [
        "roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.cls_score.weight"]
    assert model.roi_heads.box_predictor.cls_score.out_features == 5  # 4 classes + background
    assert label_offset("fasterrcnn_resnet50_fpn_v2") == 1
    assert (model.roi_heads.score_thresh, model.roi_heads.nms_thresh, model.roi_heads.detections_per_img) == (
        0.42, 0.33, 7)
    assert model.transform.min_size == (96,) and model.transform.max_size == 160
    image = torch.rand(3, 50, 70)
    batched, _ = model.eval().transform([image])
    assert batched.tensors.shape == (1, 3, 64, 96) and torch.equal(batched.tensors[0, :, :50, :70], image)
    # ordinary batch norm with eps 1e-5, as the v2 weights were trained
    assert {m.eps for m in model.backbone.body.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-5}
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("count, frozen", [(None, {"conv1", "bn1", "layer1"}), (0, set()), (1, {"conv1", "bn1"}),
                                           (5, {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"})])
def test_v2_layers_to_freeze(count, frozen):
    settings = dict(SMALL) if count is None else {**SMALL, "layers_to_freeze": count}
    assert _frozen_prefixes(create_model("fasterrcnn_resnet50_fpn_v2", 2, **settings)) == frozen


def test_v2_coco_weights_from_a_file_keep_a_fresh_class_layer(tmp_path, offline_cache):
    source = get_model_spec("fasterrcnn_resnet50_fpn_v2").weights
    assert source.filename == "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth"
    assert source.url == torchvision.models.detection.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url
    torch.manual_seed(1)
    coco = build_rcnn_v2(False, 90)  # 91 outputs, like torchvision's COCO weights
    torch.save(coco.state_dict(), tmp_path / "coco.pth")
    model = create_model("fasterrcnn_resnet50_fpn_v2", 3, min_size=64, max_size=96,
                         pretrained_weights=str(tmp_path / "coco.pth"))
    ours, theirs = model.state_dict(), coco.state_dict()
    differing = sorted(k for k in ours if ours[k].shape != theirs[k].shape or not torch.equal(ours[k], theirs[k]))
    assert differing == ["roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.weight",
                         "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.cls_score.weight"]
    assert model.roi_heads.box_predictor.cls_score.out_features == 4


def test_v2_coco_weights_from_the_torch_cache(offline_cache):
    source = get_model_spec("fasterrcnn_resnet50_fpn_v2").weights
    torch.manual_seed(2)
    coco = build_rcnn_v2(False, 90)
    path = offline_cache / "torch" / "hub" / "checkpoints" / source.filename
    path.parent.mkdir(parents=True)
    torch.save(coco.state_dict(), path)
    model = create_model("fasterrcnn_resnet50_fpn_v2", 3, min_size=64, max_size=96)
    assert torch.equal(model.backbone.body.layer4[2].conv3.weight, coco.backbone.body.layer4[2].conv3.weight)
    assert torch.equal(model.roi_heads.box_head[0][0].weight, coco.roi_heads.box_head[0][0].weight)
