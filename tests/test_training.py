"""The training loop: schedules, early stopping, accumulation, weighted loss, optimizer groups,
checkpoints and incremental training."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_SETTINGS, write_color_dataset
from visionsweep.checkpoint import load_checkpoint, load_for_incremental_training
from visionsweep.errors import CheckpointError
from visionsweep.families.base import ModelFamily
from visionsweep.families.classification.family import class_weights
from visionsweep.models import create_model
from visionsweep.training import train
from visionsweep.training.early_stopping import EarlyStopping
from visionsweep.training.loop import LoopConfig, fit
from visionsweep.training.optim import build_optimizer, parameter_groups
from visionsweep.training.schedulers import Schedule, step_factor, warmup_cosine_factor


# --- learning-rate schedules -------------------------------------------------------------------

def test_warmup_cosine_values_of_the_reference():
    # base 0.01, 10 batches per epoch, 15 epochs, 2 warmup epochs, 0.45 cycles
    lr = [0.01 * warmup_cosine_factor(s, 20, 150, 0.45) for s in range(151)]
    assert lr[0] == 0.0
    assert lr[1] == pytest.approx(0.0005)
    assert lr[19] == pytest.approx(0.0095)
    assert lr[20] == pytest.approx(0.01)
    assert lr[149] == pytest.approx(2.79e-4, abs=5e-6)
    assert lr[150] / 0.01 == pytest.approx(0.5 * (1 + math.cos(0.9 * math.pi)))  # about 0.02447
    assert lr[85] / 0.01 == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.45)), abs=1e-9)  # mid-way, about 0.578
    assert warmup_cosine_factor(150, 20, 150, 0.5) == pytest.approx(0.0)


def test_schedule_object_uses_the_factor_after_each_step():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    schedule = Schedule(optimizer, "warmup_cosine", steps_per_epoch=10, epochs=15, warmup_epochs=2, cycles=0.45)
    seen = []
    for _ in range(150):
        seen.append(optimizer.param_groups[0]["lr"])
        schedule.after_optimizer_step()
    assert seen[0] == pytest.approx(0.0005)  # the first step is not wasted at lr 0
    assert seen[19] == pytest.approx(0.01)
    assert seen[-1] == pytest.approx(0.01 * warmup_cosine_factor(150, 20, 150, 0.45))


def test_warmup_can_start_the_biases_and_the_momentum_elsewhere():
    model = nn.Linear(2, 1)
    optimizer = build_optimizer(model, "sgd", learning_rate=0.01, weight_decay=0.0, momentum=0.9, nesterov=True,
                                beta1=0.9, beta2=0.999, amsgrad=False)
    schedule = Schedule(optimizer, "warmup_cosine", steps_per_epoch=5, epochs=4, warmup_epochs=2,
                        warmup_bias_lr=0.1, warmup_momentum=0.8)
    weights, biases = (next(g for g in optimizer.param_groups if g["name"] == name) for name in ("decay", "bias"))
    seen = []
    for _ in range(20):
        seen.append((weights["lr"], biases["lr"], weights["momentum"], biases["momentum"]))
        schedule.after_optimizer_step()
    # Step k of the 10 warm-up steps is (k + 1) / 10 of the way: weights 0 -> 0.01, biases 0.1 -> 0.01.
    assert seen[0] == pytest.approx((0.001, 0.1 * 0.9 + 0.001, 0.8 + 0.1 * 0.1, 0.8 + 0.1 * 0.1))
    assert seen[4] == pytest.approx((0.005, 0.05 + 0.005, 0.85, 0.85))
    assert seen[9][:2] == pytest.approx((0.01, 0.01)) and seen[9][2] == pytest.approx(0.9)
    assert seen[15][0] == seen[15][1] and seen[15][2] == pytest.approx(0.9)  # after the warm-up: the settings'
    plain = build_optimizer(model, "adam", learning_rate=0.01, weight_decay=0.0, momentum=0.9, nesterov=True,
                            beta1=0.9, beta2=0.999, amsgrad=False)
    Schedule(plain, "warmup_cosine", steps_per_epoch=5, epochs=4, warmup_epochs=2, warmup_momentum=0.5)
    assert plain.param_groups[0]["betas"] == pytest.approx((0.5 + 0.4 * 0.1, 0.999))  # Adam: beta1 warms up


def test_step_schedule_per_epoch():
    assert [step_factor(e, 5, 0.5) for e in (0, 4, 5, 9, 10, 14)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    schedule = Schedule(optimizer, "step", steps_per_epoch=3, epochs=10, step_size=3, gamma=0.1)
    per_epoch = []
    for _ in range(7):
        for _ in range(3):
            schedule.after_optimizer_step()  # batches do not move the step schedule
        per_epoch.append(round(schedule.learning_rate, 10))
        schedule.after_epoch()
    assert per_epoch == [0.2, 0.2, 0.2, 0.02, 0.02, 0.02, 0.002]


# --- early stopping ----------------------------------------------------------------------------

def _run_stopper(scores, patience=5, delay=5):
    stopper = EarlyStopping(patience=patience, delay=delay)
    for epoch, score in enumerate(scores, start=1):
        stopper.update(epoch, score)
        if stopper.should_stop:
            return epoch, stopper
    return None, stopper


def test_early_stopping_earliest_stop_with_defaults():
    stop, stopper = _run_stopper([0.5] * 30)
    # the first 5 epochs do not count towards patience; epochs 6 to 10 do
    assert stop == 10 and stopper.best_epoch == 10  # ties move the best to the later epoch


def test_improvement_pushes_the_stop():
    scores = [0.1, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3, 0.9] + [0.5] * 20
    stop, stopper = _run_stopper(scores)
    assert stop == 13 and stopper.best_epoch == 8


def test_delay_and_patience_units():
    stop, _ = _run_stopper([0.5] * 10, patience=2, delay=0)
    assert stop == 3  # epoch 1 sets the first best; epochs 2 and 3 bring no improvement
    stop, _ = _run_stopper([0.5] * 10, patience=1, delay=3)
    assert stop == 4  # epochs 1 to 3 are the delay; epoch 4 is the first that counts


def test_nan_is_never_best():
    stopper = EarlyStopping(patience=5, delay=0)
    assert not stopper.update(1, float("nan"))
    assert stopper.best_epoch is None
    assert stopper.update(2, 0.0)  # unlike the reference, a score of 0 can be the best


# --- the loop on a toy problem ------------------------------------------------------------------

class _ToyFamily(ModelFamily):
    """Linear regression; ``scores`` scripts the validation metric per evaluation. The loop is handed its
    loaders and never predicts, so the family builds no loaders and makes no predictions."""

    def __init__(self, scores=None):
        self.scores = list(scores or [])
        self.evaluated_at = []

    def training_loaders(self, train, validation):
        raise NotImplementedError

    def prediction_loader(self, records):
        raise NotImplementedError

    def predict_batch(self, model, batch, stage):
        raise NotImplementedError

    def train_step(self, model, batch):
        x, y = batch
        return nn.functional.mse_loss(model(x), y), len(x)

    def evaluate(self, model, loader):
        self.evaluated_at.append(len(self.evaluated_at))
        return {"score": self.scores.pop(0) if self.scores else 0.0}


def _toy_data(n=8):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=generator)
    return [(x, x @ torch.tensor([[1.0], [-2.0], [0.5]]))]


def _fit(model, batch_size, accumulation, epochs=1, scores=None, on_epoch_end=None, **config):
    x, y = _toy_data()[0]
    loader = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = Schedule(optimizer, "step", steps_per_epoch=1, epochs=epochs, step_size=1000)
    family = _ToyFamily(scores)
    result = fit(model, family, loader, [None], optimizer, schedule,
                 LoopConfig(number_of_epochs=epochs, primary_metric="score", grad_accumulation_step=accumulation,
                            progress=False, **config),
                 device=torch.device("cpu"), on_epoch_end=on_epoch_end)
    return result, family


def test_gradient_accumulation_matches_a_larger_batch():
    torch.manual_seed(0)
    big, small = nn.Linear(3, 1), nn.Linear(3, 1)
    small.load_state_dict(big.state_dict())
    _fit(big, batch_size=4, accumulation=1)
    _fit(small, batch_size=2, accumulation=2)
    assert torch.allclose(big.weight, small.weight, atol=1e-6)
    assert torch.allclose(big.bias, small.bias, atol=1e-6)


def test_evaluation_frequency_and_early_stop_in_the_loop():
    result, family = _fit(nn.Linear(3, 1), 4, 1, epochs=20, scores=[0.5, 0.6, 0.6, 0.4, 0.4, 0.4],
                          evaluation_frequency=3, early_stopping_patience=2, early_stopping_delay=0)
    # evaluated at epochs 1, 4, 7, 10: the tie at 7 becomes the best without resetting patience, and
    # the drop at 10 is the second evaluation without improvement
    assert result.status == "early_stopped"
    assert (result.epochs_run, result.best_epoch, result.best_score) == (10, 7, 0.6)
    assert len(family.evaluated_at) == 4


def test_cancel_from_the_epoch_callback_keeps_the_best_weights():
    model = nn.Linear(3, 1)
    snapshots = {}

    def on_epoch_end(report, model):
        snapshots[report.epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return report.epoch == 3

    result, _ = _fit(model, 4, 1, epochs=10, scores=[0.1, 0.9, 0.2], on_epoch_end=on_epoch_end,
                     early_stopping=False)
    assert (result.status, result.epochs_run, result.best_epoch) == ("cancelled", 3, 2)
    assert torch.equal(model.weight, snapshots[2]["weight"])


def test_hooks_for_a_moving_average_of_weights():
    class AveragingFamily(_ToyFamily):
        """Keeps a copy of the weights updated after every optimizer step, evaluated instead of the model."""

        def __init__(self, scores):
            super().__init__(scores)
            self.average = nn.Linear(3, 1)
            self.steps = 0

        def after_optimizer_step(self, model):
            self.steps += 1
            with torch.no_grad():
                for mine, theirs in zip(self.average.parameters(), model.parameters()):
                    mine.mul_(0.5).add_(theirs, alpha=0.5)

        def weights_to_keep(self, model):
            return self.average

    model = nn.Linear(3, 1)
    family = AveragingFamily([0.9, 0.1])
    x, y = _toy_data()[0]
    loader = [(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    kept_at_best = {}

    def on_epoch_end(report, kept):
        if report.is_best:
            kept_at_best.update({k: v.clone() for k, v in kept.state_dict().items()})

    fit(model, family, loader, [None], optimizer, Schedule(optimizer, "step", steps_per_epoch=4, epochs=2, step_size=9),
        LoopConfig(number_of_epochs=2, primary_metric="score", progress=False), device=torch.device("cpu"),
        on_epoch_end=on_epoch_end)
    assert family.steps == 8  # one call per optimizer step
    assert torch.equal(model.weight, kept_at_best["weight"])  # the model ends with the kept weights of epoch 1


# --- class weights and optimizer groups ----------------------------------------------------------

def test_class_weights_of_the_reference():
    freq = np.array([10, 40])
    multiclass = dict(num_images=50, multilabel=False, imbalance_rate_threshold=2)
    assert class_weights(freq, weighted_loss=1, **multiclass).tolist() == pytest.approx([0.31623, 0.15811], abs=1e-5)
    assert class_weights(freq, weighted_loss=2, **multiclass).tolist() == pytest.approx([0.1, 0.025])
    multilabel = dict(num_images=50, multilabel=True, imbalance_rate_threshold=2)
    assert class_weights(freq, weighted_loss=2, **multilabel).tolist() == pytest.approx([4.0, 0.25])
    assert class_weights(freq, weighted_loss=1, **multilabel).tolist() == pytest.approx([2.0, 0.5])
    assert class_weights(freq, weighted_loss=0, **multiclass) is None
    assert class_weights(np.array([10, 29]), weighted_loss=1, **multiclass) is None  # rate 29 // 10 = 2 is not > 2
    assert class_weights(np.array([10, 30]), weighted_loss=1, **multiclass) is not None  # rate 3 is
    assert class_weights(np.array([10, 30, 0]), weighted_loss=2, num_images=40, multilabel=False,
                         imbalance_rate_threshold=2).tolist() == pytest.approx([0.1, 1 / 30, 0.0])


def test_no_weight_decay_on_biases_norms_and_vit_tokens():
    vit = create_model("vits16r224", 3, pretrained=False, valid_crop_size=32, valid_resize_size=40)
    decay, biases, no_decay = parameter_groups(vit, 0.01)
    names = {id(p): n for n, p in vit.named_parameters()}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "pos_embed", "norm.weight", "blocks.0.norm1.weight"} <= undecayed
    assert {"head.bias", "blocks.0.attn.qkv.bias"} <= {names[id(p)] for p in biases["params"]}
    assert (biases["name"], biases["weight_decay"], no_decay["weight_decay"]) == ("bias", 0.0, 0.0)
    assert "blocks.0.attn.qkv.weight" in {names[id(p)] for p in decay["params"]}
    optimizer = build_optimizer(vit, "adamw", learning_rate=0.01, weight_decay=0.01, momentum=0.9, nesterov=True,
                                beta1=0.9, beta2=0.999, amsgrad=False)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(vit.cls_token) in optimized and id(vit.pos_embed) in optimized  # trained, unlike the reference


# --- checkpoints and incremental training -------------------------------------------------------

@pytest.mark.slow
def test_checkpoints_and_incremental_training(tmp_path):
    data = write_color_dataset(tmp_path / "data")
    first = train("image_classification", data, settings={**TINY_SETTINGS, "checkpoint_frequency": 1},
                  output=tmp_path / "first", progress=False)
    assert sorted(p.name for p in (tmp_path / "first" / "checkpoints").iterdir()) == ["epoch_1.pt", "epoch_2.pt",
                                                                                    "last.pt"]  # last.pt: resume
    periodic = load_checkpoint(tmp_path / "first" / "checkpoints" / "epoch_2.pt")
    assert "optimizer_state" in periodic and periodic["epoch"] == 2
    best = load_checkpoint(first.model_dir / "model.pt")
    assert best["epoch"] == first.best_epoch and best["labels"] == ["blue", "red"]

    model = create_model("resnet18", 2, **{k: v for k, v in TINY_SETTINGS.items() if k != "model_name"})
    loaded = load_for_incremental_training(model, "resnet18", first.model_dir / "model.pt")
    assert "fc.weight" in loaded and torch.equal(model.conv1.weight, best["model_state"]["conv1.weight"])
    three_classes = create_model("resnet18", 3, pretrained=False)
    loaded = load_for_incremental_training(three_classes, "resnet18", first.model_dir / "model.pt")
    assert "fc.weight" not in loaded and "conv1.weight" in loaded  # a head of another size starts fresh
    with pytest.raises(CheckpointError, match="holds a resnet18 model"):
        load_for_incremental_training(create_model("resnet34", 2, pretrained=False), "resnet34",
                                      first.model_dir / "model.pt")

    second = train("image_classification", data, settings={**TINY_SETTINGS, "checkpoint_run_id": str(first.run_dir),
                                                          "number_of_epochs": 1},
                   output=tmp_path / "second", progress=False)
    assert "incremental training" in (second.run_dir / "train.log").read_text()
    with pytest.raises(CheckpointError, match="does not exist"):
        train("image_classification", data, settings={**TINY_SETTINGS, "checkpoint_run_id": str(tmp_path / "none")},
              output=tmp_path / "third", progress=False)


@pytest.mark.slow
def test_metrics_file_has_one_line_per_epoch(tmp_path):
    data = write_color_dataset(tmp_path / "data")
    result = train("image_classification", data, settings={**TINY_SETTINGS, "number_of_epochs": 3,
                                                          "evaluation_frequency": 2}, output=tmp_path / "run",
                   progress=False)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert [line["evaluated"] for line in lines] == [True, False, True]  # the last epoch is always evaluated
    assert lines[1]["validation"] == {} and "accuracy" in lines[2]["validation"]
    settings = json.loads((result.run_dir / "settings.json").read_text())
    assert settings["seed"] == 0 and settings["model_name"] == "resnet18"


@pytest.mark.slow
def test_epochs_are_counted_from_one_wherever_a_person_reads_them(tmp_path):
    data = write_color_dataset(tmp_path / "data")
    result = train("image_classification", data, settings=TINY_SETTINGS, output=tmp_path / "run", progress=False)
    assert result.epochs_run == 2 and result.best_epoch in (1, 2)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2] and {line["epochs_count_from"] for line in lines} == {1}
    assert [line["epoch"] for line in lines if line["is_best"]][-1] == result.best_epoch == lines[-1]["best_epoch"]
    log = (result.run_dir / "train.log").read_text()
    assert "epoch 1/2: " in log and "epoch 2/2: " in log and "epoch 0" not in log and "epoch 3" not in log
    assert f"(best {lines[0]['best_score']:.4f} at epoch 1)" in log
    assert log.rstrip().endswith(f"at epoch {result.best_epoch}")
    best = json.loads((result.model_dir / "metrics.json").read_text())
    assert (best["epoch"], best["epochs_run"], best["epochs_count_from"]) == (result.best_epoch, 2, 1)
    assert load_checkpoint(result.model_dir / "model.pt")["epoch"] == result.best_epoch
