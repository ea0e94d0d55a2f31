"""Mask R-CNN models: registration for instance segmentation, the reference's construction (spec 2.4), a
training step with masks and a prediction with soft masks, thresholds, freezing and pretrained weights."""
from __future__ import annotations

import pytest
import torch
import torchvision

from visionsweep.errors import SettingsError
from visionsweep.models import create_model, get_model_spec, list_models
from visionsweep.models.detection import build_mask_rcnn, build_rcnn_v2, label_offset
from visionsweep.tasks import Task

# Azure's instance-segmentation model names (docs/models.md)
SEGMENTATION_MODELS = (
    "maskrcnn_resnet18_fpn", "maskrcnn_resnet34_fpn", "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet101_fpn", "maskrcnn_resnet152_fpn",
)
# Beyond the reference: torchvision's v2 Mask R-CNN (docs/models.md)
V2_SEGMENTATION_MODELS = ("maskrcnn_resnet50_fpn_v2",)

SMALL = {"pretrained": False, "min_size": 64, "max_size": 96}


def _fewer_rois(model):
    """Wiring, not the RoI budget: 32 proposals and sampled RoIs per image make a step far cheaper on a CPU
    (the mask head runs four 256-channel convolutions per positive RoI)."""
    model.rpn._pre_nms_top_n = model.rpn._post_nms_top_n = {"training": 32, "testing": 32}
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 32
    return model


def _batch():
    torch.manual_seed(0)
    images = [torch.randn(3, 64, 80), torch.randn(3, 72, 64)]
    masks = torch.zeros(2, 64, 80, dtype=torch.uint8)
    masks[0, 6:40, 8:50] = 1
    masks[1, 30:62, 30:60] = 1
    targets = [{"boxes": torch.tensor([[8.0, 6.0, 50.0, 40.0], [30.0, 30.0, 60.0, 62.0]]),
                "labels": torch.tensor([0, 2]), "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 72, 64, dtype=torch.uint8)}]  # a background image
    return images, targets


def test_the_mask_rcnn_models_serve_instance_segmentation_only():
    names = SEGMENTATION_MODELS + V2_SEGMENTATION_MODELS
    assert list_models(Task.INSTANCE_SEGMENTATION) == sorted(names)
    assert not set(names) & set(list_models(Task.OBJECT_DETECTION))
    assert all(label_offset(name) == 1 for name in names)  # background at index 0
    assert all(get_model_spec(name).family == "mask_rcnn" for name in names)
    with pytest.raises(SettingsError, match="model_name"):
        create_model("fasterrcnn_resnet18_fpn", 2, task=Task.INSTANCE_SEGMENTATION, **SMALL)


@pytest.mark.parametrize("name", ["maskrcnn_resnet18_fpn", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_train_step_with_masks_then_predict_soft_masks(name):
    model = _fewer_rois(create_model(name, 3, **SMALL, box_score_thresh=0.0, box_detections_per_img=5))
    images, targets = _batch()
    model.train()
    losses = model(images, [{**t, "labels": t["labels"] + 1} for t in targets])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    loss = sum(losses.values())
    assert torch.isfinite(loss) and 0.1 < loss.item() < 10
    loss.backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is not None
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    for output, image in zip(outputs, images):
        count = len(output["boxes"])
        assert 0 < count <= 5
        # soft masks pasted into the frame of the input tensor (the model does not resize)
        assert output["masks"].shape == (count, 1, *image.shape[-2:])
        assert output["masks"].min() >= 0 and output["masks"].max() <= 1


def test_construction_follows_the_reference():
    model = create_model("maskrcnn_resnet34_fpn", 4, **SMALL)
    assert model.roi_heads.box_predictor.cls_score.out_features == 5  # 4 classes + background
    predictor = model.roi_heads.mask_predictor
    assert (predictor.conv5_mask.in_channels, predictor.conv5_mask.out_channels) == (256, 256)
    assert predictor.mask_fcn_logits.out_channels == 5
    assert model.roi_heads.mask_roi_pool.output_size == (14, 14)
    assert len(model.roi_heads.mask_head) == 4
    assert [block[0].in_channels for block in model.backbone.fpn.inner_blocks] == [64, 128, 256, 512]
    defaults = create_model("maskrcnn_resnet50_fpn", 2, pretrained=False)
    assert (defaults.roi_heads.score_thresh, defaults.roi_heads.nms_thresh,
            defaults.roi_heads.detections_per_img) == (0.3, 0.5, 100)
    assert defaults.transform.min_size == (600,) and defaults.transform.max_size == 1333
    tuned = create_model("maskrcnn_resnet18_fpn", 2, **SMALL, box_score_thresh=0.42, nms_iou_thresh=0.33,
                         box_detections_per_img=7)
    assert (tuned.roi_heads.score_thresh, tuned.roi_heads.nms_thresh, tuned.roi_heads.detections_per_img) == (
        0.42, 0.33, 7)


@pytest.mark.parametrize("count, frozen", [(None, {"conv1", "layer1"}), (0, set()), (2, {"conv1", "layer1"}),
                                           (4, {"conv1", "layer1", "layer2", "layer3"})])
def test_layers_to_freeze_uses_the_resnet_groups(count, frozen):
    settings = dict(SMALL) if count is None else {**SMALL, "layers_to_freeze": count}
    model = create_model("maskrcnn_resnet18_fpn", 2, **settings)
    found = {name.split(".")[2] for name, p in model.named_parameters() if not p.requires_grad}
    assert found == frozen
    assert all(p.requires_grad for name, p in model.named_parameters() if name.startswith("roi_heads."))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VISIONSWEEP_OFFLINE", "1")
    return tmp_path


def test_coco_mask_rcnn_weights_keep_a_fresh_box_and_mask_predictor(tmp_path, offline_cache):
    assert get_model_spec("maskrcnn_resnet50_fpn").weights.filename == "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    torch.manual_seed(1)
    coco = build_mask_rcnn(50, 90)  # 91 outputs, like torchvision's COCO weights
    torch.save(coco.state_dict(), tmp_path / "coco.pth")
    model = create_model("maskrcnn_resnet50_fpn", 3, min_size=64, max_size=96,
                         pretrained_weights=str(tmp_path / "coco.pth"))
    ours, theirs = model.state_dict(), coco.state_dict()
    differing = sorted(k for k in ours if ours[k].shape != theirs[k].shape or not torch.equal(ours[k], theirs[k]))
    assert differing == sorted(k for k in ours if k.startswith(("roi_heads.box_predictor.",
                                                                "roi_heads.mask_predictor.")))
    assert "roi_heads.mask_predictor.conv5_mask.weight" in differing  # the whole predictor is replaced
    assert torch.equal(ours["roi_heads.mask_head.0.0.weight"], theirs["roi_heads.mask_head.0.0.weight"])


def test_the_small_and_deep_models_start_from_imagenet_backbones(offline_cache):
    imagenet = torchvision.models.resnet18(num_classes=1000)
    source = get_model_spec("maskrcnn_resnet18_fpn").weights
    assert source.filename == "resnet18-f37072fd.pth"  # shared with the classification ResNet-18
    path = offline_cache / "torch" / "hub" / "checkpoints" / source.filename
    path.parent.mkdir(parents=True)
    torch.save(imagenet.state_dict(), path)
    model = create_model("maskrcnn_resnet18_fpn", 3, min_size=64, max_size=96)
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert get_model_spec("maskrcnn_resnet152_fpn").weights.filename.startswith("resnet152-")


def test_v2_is_torchvisions_v2_network_with_fresh_predictors():
    model = create_model("maskrcnn_resnet50_fpn_v2", 4, **SMALL, box_score_thresh=0.42, nms_iou_thresh=0.33,
                         box_detections_per_img=7)
    reference = torchvision.models.detection.maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None,
                                                                      num_classes=91)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert sorted(k for k in ours if ours[k].shape != theirs[k].shape) == [
        "roi_heads.box_predictor.bbox_pred.bias", "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.mask_predictor.mask_fcn_logits.bias", "roi_heads.mask_predictor.mask_fcn_logits.weight"]
    predictor = model.roi_heads.mask_predictor
    assert (predictor.conv5_mask.in_channels, predictor.conv5_mask.out_channels) == (256, 256)
    assert predictor.mask_fcn_logits.out_channels == model.roi_heads.box_predictor.cls_score.out_features == 5
    assert (model.roi_heads.score_thresh, model.roi_heads.nms_thresh, model.roi_heads.detections_per_img) == (
        0.42, 0.33, 7)
    assert model.transform.min_size == (64,) and model.transform.max_size == 96
    found = {name.split(".")[2] for name, p in model.named_parameters() if not p.requires_grad}
    assert found == {"conv1", "bn1", "layer1"}  # the default: layer2-layer4 train, as for v1


def test_v2_coco_weights_keep_a_fresh_box_and_mask_predictor(tmp_path, offline_cache):
    source = get_model_spec("maskrcnn_resnet50_fpn_v2").weights
    assert source.filename == "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
    assert source.url == torchvision.models.detection.MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url
    torch.manual_seed(1)
    coco = build_rcnn_v2(True, 90)  # 91 outputs, like torchvision's COCO weights
    torch.save(coco.state_dict(), tmp_path / "coco.pth")
    model = create_model("maskrcnn_resnet50_fpn_v2", 3, min_size=64, max_size=96,
                         pretrained_weights=str(tmp_path / "coco.pth"))
    ours, theirs = model.state_dict(), coco.state_dict()
    differing = sorted(k for k in ours if ours[k].shape != theirs[k].shape or not torch.equal(ours[k], theirs[k]))
    assert differing == sorted(k for k in ours if k.startswith(("roi_heads.box_predictor.",
                                                                "roi_heads.mask_predictor.")))
    assert "roi_heads.mask_predictor.conv5_mask.weight" in differing  # the whole predictor is replaced
    assert torch.equal(ours["roi_heads.mask_head.0.0.weight"], theirs["roi_heads.mask_head.0.0.weight"])
