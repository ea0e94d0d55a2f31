"""Benchmark: what each early-termination policy saves on one small real sweep, and what it costs.

The same sweep runs four times on the fridge classification set: without early termination, then
with bandit, median_stopping and truncation_selection. Everything else is fixed, so the runs are
comparable trial by trial:

* random sampling with a fixed seed: samplers are seeded per slot, so slot k trains the same model
  and learning rate in every run;
* ``seed`` fixed in the training parameters and ``max_concurrent_trials: 1``: a trial that no
  policy stops reports the same metrics in every run, and each trial is judged against the full
  histories of the trials before it (as a sequential sweep on one machine would be);
* the trainer's own early stopping is off, so every saved epoch is the policy's doing.

It records, per run, the compute spent (trial-epochs, the sum of the trials' durations and the wall
clock of the sweep) and the best primary metric reached, and prints each against the run without
a policy as a ratio. Results and the machine go in bench/sweep_policies.md.

Usage (from the repository root, with the shared datasets beside it):

    OMP_NUM_THREADS=1 python bench/sweep_policies.py [--trials 8] [--epochs 6] [--crop 64] \
        [--data ../shared/datasets/fridgeObjects_cls] [--work runs/bench-sweep-policies]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
import yaml

from visionsweep.sweep import attrs
from visionsweep.sweep.job import load_job
from visionsweep.sweep.runner import run_sweep
from visionsweep.sweep.storage import open_storage

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "fridgeObjects_cls"

# One interval is one validation pass, here one per epoch. The Azure examples' bandit
# (interval 2, delay 6) is scaled down to a 6-epoch budget: every policy may act from epoch 2.
POLICIES: dict[str, dict | None] = {
    "none": None,
    "bandit": {"type": "bandit", "slack_factor": 0.2, "evaluation_interval": 1, "delay_evaluation": 2},
    "median_stopping": {"type": "median_stopping", "evaluation_interval": 1, "delay_evaluation": 2},
    "truncation_selection": {"type": "truncation_selection", "truncation_percentage": 25,
                             "evaluation_interval": 1, "delay_evaluation": 2},
}


@dataclass
class PolicyRun:
    policy: str
    trials: int
    cancelled: int
    failed: int
    trial_epochs: int
    trial_seconds: float
    wall_seconds: float | None
    best_score: float | None
    best_slot: int | None
    best_config: dict
    scores_by_slot: list[float | None]
    epochs_by_slot: list[int]
    epoch_seconds_by_slot: list[list[float]]  # duration_s of each epoch the trial ran (metrics.jsonl)


def job_for(policy: str, data: Path, trials: int, epochs: int, crop: int, seed: int) -> dict:
    """The job YAML (as a mapping) of one run; only ``sweep.early_termination`` differs between runs."""
    sweep: dict = {"sampling_algorithm": {"type": "random", "seed": seed}}
    if POLICIES[policy] is not None:
        sweep["early_termination"] = POLICIES[policy]
    return {
        "type": "automl", "task": "image_classification", "primary_metric": "accuracy", "name": f"policy-{policy}",
        "training_data": {"type": "mltable", "path": str(data / "mltable_cls_train")},
        "validation_data": {"type": "mltable", "path": str(data / "mltable_cls_val")},
        "limits": {"max_trials": trials, "max_concurrent_trials": 1},
        "training_parameters": {
            "pretrained": False, "number_of_epochs": epochs, "early_stopping": False, "evaluation_frequency": 1,
            "training_crop_size": crop, "validation_crop_size": crop, "validation_resize_size": crop + crop // 8,
            "training_batch_size": 16, "validation_batch_size": 16, "num_workers": 0, "seed": 0,
        },
        "sweep": sweep,
        "search_space": [{"model_name": "choice('resnet18', 'mobilenetv2')",
                          "learning_rate": "loguniform(-6.9, -2.3)"}],  # 0.001 .. 0.1
    }


def run_policy(policy: str, work: Path, data: Path, trials: int, epochs: int, crop: int, seed: int) -> None:
    """Run one policy's sweep in a fresh folder ``work/policy`` (job.yml, run/, wall.json)."""
    folder = work / policy
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    job_path = folder / "job.yml"
    job_path.write_text(yaml.safe_dump(job_for(policy, data, trials, epochs, crop, seed), sort_keys=False))
    started = time.perf_counter()
    run_sweep(load_job(job_path), folder / "run", devices=[],
              progress=lambda line: print(f"[{policy}] {line}", flush=True))
    (folder / "wall.json").write_text(json.dumps({"wall_seconds": time.perf_counter() - started}))


def summarise(work: Path, policy: str) -> PolicyRun:
    """Read back the run of ``policy`` from its study and its trials' metrics files."""
    folder = work / policy
    wall = folder / "wall.json"
    record = json.loads((folder / "run" / "sweep.json").read_text())
    study = optuna.load_study(study_name=record["study_name"], storage=open_storage(None, folder / "run"))
    trials = sorted((t for t in study.get_trials(deepcopy=False)
                     if t.user_attrs.get(attrs.STATUS) not in attrs.EXCLUDED), key=lambda t: t.user_attrs[attrs.SLOT])
    statuses = [t.user_attrs[attrs.STATUS] for t in trials]
    scores = [t.user_attrs.get(attrs.BEST_SCORE) for t in trials]
    seconds = []
    for trial in trials:
        metrics = Path(trial.user_attrs[attrs.TRIAL_DIR]) / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        seconds.append([json.loads(line)["duration_s"] for line in lines])
    scored = [k for k, score in enumerate(scores) if score is not None]
    best = min(scored, key=lambda k: (-scores[k], k)) if scored else None
    return PolicyRun(
        policy=policy, trials=len(trials), cancelled=statuses.count("cancelled"), failed=statuses.count("failed"),
        trial_epochs=sum(t.user_attrs.get(attrs.EPOCHS_RUN) or 0 for t in trials),
        trial_seconds=sum(t.user_attrs.get(attrs.DURATION) or 0.0 for t in trials),
        wall_seconds=json.loads(wall.read_text())["wall_seconds"] if wall.is_file() else None,
        best_score=scores[best] if best is not None else None, best_slot=best,
        best_config=trials[best].user_attrs[attrs.CONFIG] if best is not None else {},
        scores_by_slot=scores, epochs_by_slot=[t.user_attrs.get(attrs.EPOCHS_RUN) or 0 for t in trials],
        epoch_seconds_by_slot=seconds)


def markdown(runs: list[PolicyRun]) -> str:
    """The results tables; ratios are against the run without a policy.

    "Epoch seconds at the reference cost" prices every epoch a run spent at what the same epoch of
    the same slot cost in the run without a policy: the configurations are the same, so this
    removes the load of other work on the machine, which the measured seconds include.
    """
    base = next(r for r in runs if r.policy == "none")
    reference = base.epoch_seconds_by_slot

    def priced(run: PolicyRun) -> float:
        return sum(sum(reference[k][:epochs]) for k, epochs in enumerate(run.epochs_by_slot))

    lines = ["| policy | cancelled | trial-epochs | ratio | epoch seconds at the reference cost | ratio | "
             "measured trial seconds | measured wall seconds | best accuracy | best slot (config) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        config = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in run.best_config.items())
        lines.append(
            f"| {run.policy} | {run.cancelled}/{run.trials} | {run.trial_epochs} | "
            f"{run.trial_epochs / base.trial_epochs:.2f} | {priced(run):.0f} | {priced(run) / priced(base):.2f} | "
            f"{run.trial_seconds:.0f} | {_seconds(run.wall_seconds)} | {_score(run.best_score)} | "
            f"{run.best_slot} ({config}) |")
    slots = range(len(base.scores_by_slot))
    lines += ["", "Best accuracy / epochs run, per slot (the same configuration in every run):", "",
              "| policy | " + " | ".join(str(k) for k in slots) + " |", "|---|" + "---|" * len(slots)]
    for run in runs:
        cells = [f"{_score(s)} / {e}" for s, e in zip(run.scores_by_slot, run.epochs_by_slot)]
        lines.append(f"| {run.policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the fridgeObjects_cls folder")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-sweep-policies")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--seed", type=int, default=11, help="the sampler seed shared by all runs")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--summarise-only", action="store_true",
                        help="print the tables of the runs already in --work without running anything")
    args = parser.parse_args(argv)
    if not args.summarise_only and not (args.data / "mltable_cls_train").is_dir():
        parser.error(f"{args.data} has no mltable_cls_train folder; pass --data .../fridgeObjects_cls")
    policies = ["none"] + [p for p in args.policies if p != "none"]
    if not args.summarise_only:
        for policy in policies:
            run_policy(policy, args.work, args.data, args.trials, args.epochs, args.crop, args.seed)
    runs = [summarise(args.work, policy) for policy in policies]
    print()
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print()
    print(markdown(runs))
    return 0


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
