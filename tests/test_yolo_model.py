"""YOLOv5 network: sizes and parameter counts, layer names, decoding, freezing, EMA, fusion for inference."""
from __future__ import annotations

import math

import pytest
import torch

from visionsweep.errors import SettingsError
from visionsweep.models.freezing import freeze_layer_groups, train_mode
from visionsweep.models.yolo import BACKBONE_LAYER_GROUPS, ModelEMA, YoloLoss, build_yolov5, fused_for_inference
from visionsweep.models.yolo.layers import SPP, Conv

# Trainable parameters of the reference v3.0 models (spec 2.7), at 80 and at 1 class.
REFERENCE_PARAMETERS = {
    "small": (7_468_157, 7_255_094),
    "medium": (21_805_053, 21_485_814),
    "large": (47_818_749, 47_393_334),
    "xlarge": (88_965_245, 88_433_654),
    "extra_large": (88_965_245, 88_433_654),
}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _shapes_only(num_classes: int, size: str):
    """The network on the meta device: the same modules and shapes, no memory or initialisation cost."""
    with torch.device("meta"):
        return build_yolov5(num_classes, size)


@pytest.mark.parametrize("size", sorted(REFERENCE_PARAMETERS))
def test_parameter_counts_match_the_reference_table(size):
    coco, single = REFERENCE_PARAMETERS[size]
    assert _count(_shapes_only(80, size)) == coco
    assert _count(_shapes_only(1, size)) == single


def test_meta_and_real_builds_have_the_same_parameters():
    real = build_yolov5(3, "small")
    meta = _shapes_only(3, "small")
    assert [(n, p.shape) for n, p in real.named_parameters()] == [(n, p.shape) for n, p in meta.named_parameters()]


def test_layer_numbering_and_checkpoint_names_follow_v3():
    model = build_yolov5(80, "small")
    kinds = [type(layer).__name__ for layer in model.model]
    assert len(kinds) == 25
    assert kinds[0] == "Focus" and kinds[8] == "SPP" and kinds[24] == "Detect"
    assert [kinds[i] for i in (2, 4, 6, 9, 13, 17, 20, 23)] == ["BottleneckCSP"] * 8
    state = model.state_dict()
    # Shapes of a few keys as in the published yolov5s v3.0 checkpoint (P3/P4/P5 at 128/256/512 channels).
    assert state["model.0.conv.conv.weight"].shape == (32, 12, 3, 3)
    assert state["model.2.cv2.weight"].shape == (32, 64, 1, 1)
    assert state["model.8.cv1.conv.weight"].shape == (256, 512, 1, 1)
    assert state["model.24.m.0.weight"].shape == (255, 128, 1, 1)
    assert state["model.24.m.2.weight"].shape == (255, 512, 1, 1)
    assert state["model.24.anchors"].shape == (3, 3, 2)
    assert state["model.24.anchor_grid"].shape == (3, 1, 3, 1, 1, 2)
    assert "model.24.stride" not in state
    # Every backbone parameter belongs to exactly one of the ten freezing groups, and none of the neck's.
    prefixes = [group[0] for group in BACKBONE_LAYER_GROUPS]
    assert prefixes == [f"model.{i}." for i in range(10)]
    names = [name for name, _ in model.named_parameters()]
    assert all(sum(name.startswith(p) for p in prefixes) <= 1 for name in names)
    assert not any(name.startswith(tuple(prefixes)) for name in names if int(name.split(".")[1]) >= 10)


def test_depth_of_csp_blocks_per_size():
    repeats = {"small": [1, 3, 3, 1, 1, 1, 1, 1], "medium": [2, 6, 6, 2, 2, 2, 2, 2],
               "large": [3, 9, 9, 3, 3, 3, 3, 3], "xlarge": [4, 12, 12, 4, 4, 4, 4, 4]}
    for size, expected in repeats.items():
        model = _shapes_only(2, size)
        assert [len(model.model[i].m) for i in (2, 4, 6, 9, 13, 17, 20, 23)] == expected


def test_strides_anchors_and_output_shapes():
    model = build_yolov5(3, "small")
    detect = model.detect
    assert detect.stride.tolist() == [8.0, 16.0, 32.0]
    assert detect.anchors[0, 0].tolist() == [10 / 8, 13 / 8]
    assert detect.anchors[2, 2].tolist() == [373 / 32, 326 / 32]
    assert detect.anchor_grid[1, 0, 2, 0, 0].tolist() == [59.0, 119.0]
    x = torch.rand(2, 3, 64, 96)
    raw = model.train()(x)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 8, 12, 8), (2, 3, 4, 6, 8), (2, 3, 2, 3, 8)]
    with torch.no_grad():
        decoded, raw_eval = model.eval()(x)
    assert decoded.shape == (2, 3 * (96 + 24 + 6), 8)
    assert len(raw_eval) == 3


def test_decoding_of_a_known_output():
    """With zero weights and biases every sigmoid is 0.5: boxes sit on cell centres with anchor sizes."""
    model = build_yolov5(2, "small").eval()
    with torch.no_grad():
        for conv in model.detect.m:
            conv.weight.zero_()
            conv.bias.zero_()
        decoded, _ = model(torch.rand(1, 3, 64, 64))
    # Level 0: 8x8 grid of stride 8; anchor 1 of cell (row 2, col 5) is row (1 * 8 + 2) * 8 + 5.
    row = decoded[0, (1 * 8 + 2) * 8 + 5]
    assert row[:4].tolist() == pytest.approx([5.5 * 8, 2.5 * 8, 16.0, 30.0])
    assert row[4:].tolist() == pytest.approx([0.5, 0.5, 0.5])
    # Level 2 starts after 3*64 + 3*16 rows; its 2x2 grid, anchor 2, cell (1, 1), stride 32.
    row = decoded[0, 3 * 64 + 3 * 16 + 2 * 4 + 3]
    assert row[:4].tolist() == pytest.approx([1.5 * 32, 1.5 * 32, 373.0, 326.0])


def test_detect_bias_starts_at_the_reference_prior():
    model = build_yolov5(4, "small")
    for conv, stride in zip(model.detect.m, (8, 16, 32)):
        bias = conv.bias.detach().view(3, -1)
        bound = 1 / math.sqrt(conv.in_channels)  # PyTorch's default uniform bias range
        assert (bias[:, 4] - math.log(8 / (640 / stride) ** 2)).abs().max() <= bound
        assert (bias[:, 5:] - math.log(0.6 / (4 - 0.99))).abs().max() <= bound


def test_bad_size_or_class_count_is_a_settings_error():
    with pytest.raises(SettingsError, match="model_size"):
        build_yolov5(3, "huge")
    with pytest.raises(SettingsError, match="num_classes"):
        build_yolov5(0, "small")


def test_frozen_backbone_is_unchanged_after_a_step():
    torch.manual_seed(0)
    model = build_yolov5(2, "small")
    freeze_layer_groups(model, "yolov5", BACKBONE_LAYER_GROUPS, 10)
    train_mode(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                                weight_decay=1e-4)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.6], [1, 0, 0.3, 0.3, 0.2, 0.2]])
    loss, _ = YoloLoss(model)(model(torch.rand(2, 3, 64, 64)), targets)
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    backbone = [k for k in before if int(k.split(".")[1]) < 10]
    neck = [k for k in before if int(k.split(".")[1]) >= 10 and after[k].is_floating_point()]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # BN statistics included
    changed = [k for k in neck if not torch.equal(before[k], after[k])]
    assert len(changed) > 0.9 * len(neck)


def test_ema_follows_the_decay_ramp():
    torch.manual_seed(0)
    model = build_yolov5(1, "small")
    ema = ModelEMA(model, decay=0.9999, ramp=2000.0)
    key = "model.24.m.0.bias"
    start = ema.module.state_dict()[key].clone()
    with torch.no_grad():
        model.detect.m[0].bias.add_(1.0)
    target = model.state_dict()[key].clone()
    expected = start
    for update in range(1, 4):
        d = 0.9999 * (1 - math.exp(-update / 2000.0))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(model)
        expected = d * expected + (1 - d) * target
    assert ema.updates == 3
    assert torch.allclose(ema.module.state_dict()[key], expected, atol=1e-6)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training
    # Integer counters are not averaged.
    counter = "model.0.conv.bn.num_batches_tracked"
    model.state_dict()[counter].fill_(7)
    ema.update(model)
    assert ema.module.state_dict()[counter].item() == 0


def test_spp_pools_in_a_chain_give_the_maxima_of_each_kernel():
    torch.manual_seed(0)
    spp = SPP(8, 8, (5, 9, 13)).eval()
    plain = SPP(8, 8, (5, 9, 13)).eval()
    plain.load_state_dict(spp.state_dict())
    plain.chained = False  # each pool on the input, as the reference computes them
    assert spp.chained
    x = torch.randn(2, 8, 11, 7)
    with torch.no_grad():
        assert torch.equal(spp(x), plain(x))
    assert not SPP(8, 8, (3, 5, 9)).chained  # 3, 5, 7 would chain; 9 does not follow


def test_fused_model_predicts_what_the_model_predicts():
    torch.manual_seed(0)
    model = build_yolov5(3, "small")
    for module in model.modules():  # BatchNorm statistics far from the identity, so folding them matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    model.train()
    fused = fused_for_inference(model)
    images = torch.rand(2, 3, 96, 128)
    assert model.training and not fused.training  # the original is left as it was
    model.eval()
    with torch.no_grad():
        expected, _ = model(images)
        found, _ = fused(images)
    convs = [m for m in fused.modules() if isinstance(m, Conv)]
    assert convs and all(isinstance(m.bn, torch.nn.Identity) and m.conv.bias is not None for m in convs)
    assert all(isinstance(m.bn, torch.nn.BatchNorm2d) for m in model.modules() if isinstance(m, Conv))
    scale = expected.abs().max()
    assert torch.allclose(found, expected, atol=1e-4 * scale, rtol=1e-4)
