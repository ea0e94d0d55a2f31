"""End to end: a real sweep on the fridge classification set through the command line.

Runs examples/fridge-multiclass-cpu-quick.yml as a user would (``visionsweep run``, then
``visionsweep status`` and ``visionsweep predict`` on the best model): two model families
(resnet18, mobilenetv2), seeded random sampling, bandit termination, four real
``visionsweep.train`` trials from scratch on 64-pixel crops, two at a time.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import optuna
import pytest

from visionsweep.cli import main
from visionsweep.sweep import attrs
from visionsweep.sweep.storage import open_storage

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fridge-multiclass-cpu-quick.yml"
LABELS = ["can", "carton", "milk_bottle", "water_bottle"]


def test_quick_example_sweeps_two_families_and_its_best_model_predicts(datasets, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", str(EXAMPLE), "--run-dir", str(run), "--devices", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "mode sweep, 4 trial(s), sampling random(seed=0), early termination bandit(" in printed

    # Every trial ran as a real training run and ended with a score; the bandit may cancel a poor
    # one, which still keeps its metrics and best model.
    study = optuna.load_study(study_name="fridge-multiclass-cpu-quick", storage=open_storage(None, run))
    trials = study.get_trials()
    assert len(trials) == 4
    statuses = [t.user_attrs[attrs.STATUS] for t in trials]
    assert set(statuses) <= {"completed", "cancelled"}, [(t.number, t.user_attrs.get(attrs.ERROR)) for t in trials]
    for trial in trials:
        trial_dir = Path(trial.user_attrs[attrs.TRIAL_DIR])
        epochs = [json.loads(line) for line in (trial_dir / "metrics.jsonl").read_text().splitlines()]
        expected = 3 if trial.user_attrs[attrs.STATUS] == "completed" else len(epochs)
        assert len(epochs) == trial.user_attrs[attrs.EPOCHS_RUN] == expected
        # The values reported to the study are the validation accuracies the trainer wrote.
        assert [trial.intermediate_values[i + 1] for i in range(len(epochs))] == [e["primary_value"] for e in epochs]
        assert trial.user_attrs[attrs.BEST_SCORE] == max(e["primary_value"] for e in epochs)
        assert (Path(trial.user_attrs[attrs.MODEL_DIR]) / "model.pt").is_file()
    assert {t.user_attrs[attrs.CONFIG]["model_name"] for t in trials} == {"resnet18", "mobilenetv2"}
    assert all(math.exp(-6.2) <= t.user_attrs[attrs.CONFIG]["learning_rate"] <= math.exp(-3.9) for t in trials)

    # The leaderboard file: every trial, best first, with its sampled values.
    rows = list(csv.DictReader((run / "leaderboard.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == set(statuses)
    scores = [float(r["accuracy"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    best = max(trials, key=lambda t: (t.user_attrs[attrs.BEST_SCORE], -t.number))
    assert rows[0]["trial"] == str(best.number) and rows[0]["model_name"] == best.user_attrs[attrs.CONFIG]["model_name"]
    record = json.loads((run / "best_trial.json").read_text())
    assert record["trial"] == best.number and record["score"] == pytest.approx(best.user_attrs[attrs.BEST_SCORE])

    # Status of the finished sweep.
    assert main(["status", str(run)]) == 0
    status = capsys.readouterr().out
    assert "4/4 trials ended" in status and f"best:       trial {best.number}, accuracy" in status

    # The best model folder predicts on its own, in the Azure scoring format.
    assert json.loads((run / "best_model" / "labels.json").read_text()) == LABELS
    predictions = tmp_path / "predictions.jsonl"
    validation = datasets / "fridgeObjects_cls" / "cls_val.jsonl"
    assert main(["predict", str(run / "best_model"), str(validation), "--output", str(predictions)]) == 0
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(lines) == 30 and all(line["labels"] == LABELS for line in lines)
    truth = [LABELS.index(line["filename"].split("/")[-1].rsplit("_", 1)[0]) for line in lines]
    accuracy = sum(max(range(4), key=line["probs"].__getitem__) == t for line, t in zip(lines, truth)) / 30
    assert accuracy == pytest.approx(best.user_attrs[attrs.BEST_SCORE])


def test_the_leaderboard_counts_epochs_from_one_as_the_trial_files_do(tmp_path, capsys):
    from conftest import TINY_SETTINGS, write_color_dataset

    data = write_color_dataset(tmp_path / "data")
    settings = ", ".join(f"{key}: {json.dumps(value)}" for key, value in TINY_SETTINGS.items())
    job = tmp_path / "job.yml"
    job.write_text(f"type: automl\ntask: image_classification\ntraining_data: {{path: {data}, type: uri_file}}\n"
                   f"limits: {{max_trials: 1}}\ntraining_parameters: {{{settings}}}\n")
    run = tmp_path / "run"
    assert main(["run", str(job), "--run-dir", str(run), "--devices", "cpu"]) == 0
    (row,) = csv.DictReader((run / "leaderboard.csv").open())
    trial_dir = Path(row["trial_dir"])
    epochs = [json.loads(line) for line in (trial_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2] and row["epochs_run"] == "2"
    assert row["best_epoch"] == str([e["epoch"] for e in epochs if e["is_best"]][-1])
    assert json.loads((run / "best_trial.json").read_text())["best_epoch"] == int(row["best_epoch"])
    table = capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("#  trial"))
    first = table.splitlines()[table.splitlines().index(header) + 2]
    assert header.split()[4:6] == ["best", "epoch"] and first.split()[4:6] == [row["best_epoch"], "2"]
