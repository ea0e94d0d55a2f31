"""YOLOv5 loss: anchor matching on hand-made targets, exact values for perfect predictions, training."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from visionsweep.models.yolo import ANCHORS, YoloLoss, build_yolov5, match_anchors


def _positives(level) -> set[tuple]:
    rows = zip(level.image.tolist(), level.anchor.tolist(), level.row.tolist(), level.col.tolist(),
               level.cls.tolist(), [tuple(round(v, 4) for v in box) for box in level.box.tolist()])
    return set(rows)


def test_anchor_matching_on_hand_made_targets():
    anchors = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [8.0, 8.0]]])  # one level, grid units
    targets = torch.tensor([
        [0, 1, 0.300, 0.650, 0.50, 0.50],  # x 1.2, y 2.6, 2x2: anchors 0 and 1; own, left and lower cells
        [1, 0, 0.200, 0.100, 0.25, 0.25],  # x 0.8, y 0.4, 1x1: anchors 0, 1; own and right (no upper: y < 1)
        [0, 2, 0.625, 0.625, 0.25, 1.00],  # x 2.5, y 2.5 (cell centre), 1x4: anchor 1 only; own cell only
        [1, 0, 0.900, 0.900, 0.10, 0.10],  # x 3.6, y 3.6 in the last cell: anchor 0; no neighbour off the grid
    ])
    (level,) = match_anchors(targets, anchors, [(4, 4)], anchor_t=4.0)
    expected = set()
    for a in (0, 1):
        expected |= {(0, a, 2, 1, 1, (0.2, 0.6, 2.0, 2.0)), (0, a, 2, 0, 1, (1.2, 0.6, 2.0, 2.0)),
                     (0, a, 3, 1, 1, (0.2, -0.4, 2.0, 2.0))}
        expected |= {(1, a, 0, 0, 0, (0.8, 0.4, 1.0, 1.0)), (1, a, 0, 1, 0, (-0.2, 0.4, 1.0, 1.0))}
    expected |= {(0, 1, 2, 2, 2, (0.5, 0.5, 1.0, 4.0)), (1, 0, 3, 3, 0, (0.6, 0.6, 0.4, 0.4))}
    assert _positives(level) == expected
    assert len(level.image) == len(expected)  # no duplicates
    assert level.anchor_wh.tolist() == anchors[0][level.anchor].tolist()


def test_anchor_matching_across_levels_with_the_reference_anchors():
    strides = torch.tensor([8.0, 16.0, 32.0])
    anchors = torch.tensor(ANCHORS, dtype=torch.float32) / strides.view(-1, 1, 1)
    # A 20x20 pixel object centred at (133.12, 120.32) in a 256x256 input.
    targets = torch.tensor([[0, 0, 0.52, 0.47, 20 / 256, 20 / 256]])
    levels = match_anchors(targets, anchors, [(32, 32), (16, 16), (8, 8)])
    # P3 (x 16.64, y 15.04): anchors 10x13, 16x30, 33x23 all within 4x; cells own, right, upper.
    assert {(a, r, c) for _, a, r, c, _, _ in _positives(levels[0])} == {
        (a, r, c) for a in range(3) for r, c in ((15, 16), (15, 17), (14, 16))}
    # P4 (x 8.32, y 7.52): 30x61 and 62x45 are within 4x of 20x20, 59x119 is not; cells own, left, lower.
    assert {(a, r, c) for _, a, r, c, _, _ in _positives(levels[1])} == {
        (a, r, c) for a in range(2) for r, c in ((7, 8), (7, 7), (8, 8))}
    # P5: every anchor is more than 4x larger.
    assert len(levels[2].image) == 0


def _stand_in(num_classes: int, anchors: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(detect=SimpleNamespace(anchors=anchors, nc=num_classes))


def _perfect_maps(targets, anchors, shapes, num_classes, batch):
    """Raw maps whose decoded boxes equal every assigned target, objectness and class logits +-30."""
    maps = [torch.full((batch, 3, ny, nx, 5 + num_classes), -30.0) for ny, nx in shapes]
    for raw, pos in zip(maps, match_anchors(targets, anchors, shapes)):
        xy = torch.logit((pos.box[:, :2] + 0.5) / 2)
        wh = torch.logit(torch.sqrt(pos.box[:, 2:] / pos.anchor_wh) / 2)
        logits = torch.full((len(pos.image), 5 + num_classes), -30.0)
        logits[:, :2], logits[:, 2:4], logits[:, 4] = xy, wh, 30.0
        logits[torch.arange(len(pos.image)), 5 + pos.cls] = 30.0
        raw[pos.image, pos.anchor, pos.row, pos.col] = logits
    return maps


def test_a_perfect_prediction_costs_nothing_and_a_shifted_one_does():
    strides = torch.tensor([8.0, 16.0, 32.0])
    anchors = torch.tensor(ANCHORS, dtype=torch.float32) / strides.view(-1, 1, 1)
    shapes = [(8, 8), (4, 4), (2, 2)]
    targets = torch.tensor([[0, 2, 0.30, 0.30, 0.2, 0.3], [1, 0, 0.70, 0.60, 0.6, 0.5]], dtype=torch.float32)
    loss_fn = YoloLoss(_stand_in(3, anchors))
    maps = _perfect_maps(targets, anchors, shapes, 3, batch=2)
    loss, parts = loss_fn(maps, targets)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)
    assert all(v.item() == pytest.approx(0.0, abs=1e-5) for v in parts.values())

    shifted = [m.clone() for m in maps]
    for m in shifted:
        m[..., 0] += 1.0  # every box moves right
    loss, parts = loss_fn(shifted, targets)
    assert parts["box"].item() > 1e-3
    assert loss.item() == pytest.approx(2 * sum(v.item() for v in parts.values()), rel=1e-5)  # x batch size


def test_targets_sharing_an_anchor_and_cell_do_not_depend_on_their_order():
    """Two objects with one centre claim the same anchors and cells; the better-fitting one sets objectness."""
    anchors = torch.tensor(ANCHORS, dtype=torch.float32) / torch.tensor([8.0, 16.0, 32.0]).view(-1, 1, 1)
    shapes = [(8, 8), (4, 4), (2, 2)]
    targets = torch.tensor([[0, 0, 0.40, 0.40, 0.30, 0.30], [0, 1, 0.40, 0.40, 0.34, 0.26]])
    cells = [{(a, r, c) for _, a, r, c, _, _ in _positives(level)}
             for level in (match_anchors(targets[i:i + 1], anchors, shapes)[0] for i in range(2))]
    assert cells[0] == cells[1] and len(cells[0]) >= 3
    maps = _perfect_maps(targets[:1], anchors, shapes, 2, batch=1)  # fits the first object exactly
    loss_fn = YoloLoss(_stand_in(2, anchors))
    _, forward = loss_fn(maps, targets)
    _, backward = loss_fn(maps, targets.flip(0))
    assert forward["obj"].item() == pytest.approx(backward["obj"].item(), rel=1e-6)
    # The shared cells take the first object's GIoU of 1, so objectness costs what it costs with it alone.
    _, alone = loss_fn(maps, targets[:1])
    assert forward["obj"].item() == pytest.approx(alone["obj"].item(), rel=1e-6, abs=1e-7)


def test_gains_and_single_class():
    anchors = torch.tensor(ANCHORS, dtype=torch.float32) / torch.tensor([8.0, 16.0, 32.0]).view(-1, 1, 1)
    torch.manual_seed(0)
    maps = [torch.randn(1, 3, n, n, 5 + 4) for n in (8, 4, 2)]
    targets = torch.tensor([[0, 3, 0.4, 0.4, 0.3, 0.3]])
    _, base = YoloLoss(_stand_in(4, anchors))(maps, targets)
    _, doubled = YoloLoss(_stand_in(4, anchors), giou=0.1, cls=1.16, obj=2.0)(maps, targets)
    for key in ("box", "obj", "cls"):
        assert doubled[key].item() == pytest.approx(2 * base[key].item(), rel=1e-5)
    # Class gain is 0.58 * nc / 80; a single class has no class loss.
    one_class_targets = torch.tensor([[0, 0, 0.4, 0.4, 0.3, 0.3]])
    _, single = YoloLoss(_stand_in(1, anchors))([m[..., :6] for m in maps], one_class_targets)
    assert single["cls"].item() == 0.0 and single["box"].item() > 0
    _, focal = YoloLoss(_stand_in(4, anchors), fl_gamma=1.5)(maps, targets)
    assert 0 < focal["obj"].item() < base["obj"].item()


def test_level_balance_weighs_each_levels_objectness_and_label_smoothing_softens_class_targets():
    anchors = torch.tensor(ANCHORS, dtype=torch.float32) / torch.tensor([8.0, 16.0, 32.0]).view(-1, 1, 1)
    maps = [torch.zeros(1, 3, n, n, 5 + 4) for n in (8, 4, 2)]
    no_targets = torch.zeros((0, 6))
    _, even = YoloLoss(_stand_in(4, anchors))(maps, no_targets)
    _, balanced = YoloLoss(_stand_in(4, anchors), balance=(4.0, 1.0, 0.4))(maps, no_targets)
    softplus0 = torch.nn.functional.softplus(torch.tensor(0.0)).item()  # BCE of logit 0 against target 0
    assert even["obj"].item() == pytest.approx(3 * softplus0)
    assert balanced["obj"].item() == pytest.approx((4.0 + 1.0 + 0.4) * softplus0)
    with pytest.raises(ValueError, match="balance has 2 weights for 3 output levels"):
        YoloLoss(_stand_in(4, anchors), balance=(1.0, 1.0))(maps, no_targets)
    # Every class probability at 0.8; d BCE / d logit = p - target, so the true class's gradient over another's
    # is (0.8 - 1) / (0.8 - 0) = -1/4 with hard targets and (0.8 - 0.9) / (0.8 - 0.1) = -1/7 with eps 0.2.
    targets = torch.tensor([[0, 2, 0.4, 0.4, 0.3, 0.3]])
    for eps, expected in ((0.0, -1 / 4), (0.2, -1 / 7)):
        logits = [m.clone() for m in maps]
        for m in logits:
            m[..., 5:] = torch.log(torch.tensor(4.0))
            m.requires_grad_(True)
        YoloLoss(_stand_in(4, anchors), label_smoothing=eps)(logits, targets)[0].backward()
        grads = torch.cat([m.grad[..., 5:][m.grad[..., 5:].abs().sum(-1) > 0] for m in logits])  # the positives'
        assert len(grads) and torch.allclose(grads[:, 2] / grads[:, 0], torch.full((len(grads),), expected))


def test_no_targets_gives_objectness_loss_only():
    anchors = torch.tensor(ANCHORS, dtype=torch.float32) / torch.tensor([8.0, 16.0, 32.0]).view(-1, 1, 1)
    maps = [torch.zeros(2, 3, n, n, 7, requires_grad=True) for n in (8, 4, 2)]
    loss, parts = YoloLoss(_stand_in(2, anchors))(maps, torch.zeros((0, 6)))
    loss.backward()
    assert parts["box"].item() == 0.0 and parts["cls"].item() == 0.0
    assert parts["obj"].item() == pytest.approx(3 * torch.nn.functional.softplus(torch.tensor(0.0)).item())
    assert torch.isfinite(maps[0].grad).all()


@pytest.mark.slow
def test_loss_is_finite_and_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    model = build_yolov5(3, "small").train()
    images = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.4], [0, 2, 0.2, 0.3, 0.1, 0.1], [1, 1, 0.7, 0.6, 0.5, 0.2]])
    loss_fn = YoloLoss(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(15):
        loss, parts = loss_fn(model(images), targets)
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-3:]) < 0.8 * sum(history[:3]), history
