"""Every job in examples/ loads, plans, and draws settings that the schema accepts (no training).

The Azure examples are checked against the facts of their current originals (limits, sampling,
policy, sub-spaces, source link), so that an edit that drifts from Azure's job shows up here. Their data paths are
checked against the shared datasets when those are present, and the conversion that examples/README.md
documents for coco128-seg is run as written.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import optuna
import pytest
import yaml

from visionsweep.cli import main
from visionsweep.data.jsonl import read_labeled_data
from visionsweep.model_catalog import model_names
from visionsweep.settings import merge_settings, resolve_settings
from visionsweep.sweep import attrs
from visionsweep.sweep.automode import Hardware
from visionsweep.sweep.job import DEFAULT_TIMEOUT_MINUTES, load_job, parse_job
from visionsweep.sweep.plan import plan_sweep
from visionsweep.sweep.sampling import make_sampler
from visionsweep.sweep.space import suggest
from visionsweep.tasks import Task

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yml"))
AZURE_FILES = [p for p in EXAMPLE_FILES if p.stem.startswith("cli-automl-img-")]
AZURE_SOURCE = "https://github.com/Azure/azureml-examples/blob/main/cli/jobs/automl-standalone-jobs/"
CPU = Hardware(gpus=0, gpu_memory_gib=0.0, cpus=2)
BIG_GPU = Hardware(gpus=1, gpu_memory_gib=80.0, cpus=16)
AZURE_BANDIT = {"type": "bandit", "slack_factor": 0.2, "evaluation_interval": 2, "delay_evaluation": 6}
GENERATED = "data/coco128-seg.jsonl"  # written by the convert command of examples/README.md

# file stem -> (task, mode, models the search space may pick, or None for AutoMode)
EXPECTED = {
    "cli-automl-img-cls-mc-task-fridge-items":
        (Task.CLASSIFICATION, "sweep", {"vitb16r224", "vits16r224", "seresnext", "resnet50"}),
    "cli-automl-img-cls-mc-task-fridge-items-automode": (Task.CLASSIFICATION, "automode", None),
    "cli-automl-img-cls-ml-task-fridge-items":
        (Task.MULTILABEL, "sweep", {"vitb16r224", "seresnext"}),
    "cli-automl-img-cls-ml-task-fridge-items-automode": (Task.MULTILABEL, "automode", None),
    "cli-automl-img-od-task-fridge-items":
        (Task.OBJECT_DETECTION, "sweep", {"yolov5", "fasterrcnn_resnet50_fpn"}),
    "cli-automl-img-od-task-fridge-items-automode": (Task.OBJECT_DETECTION, "automode", None),
    "cli-automl-img-ins-seg-task-coco128-seg":
        (Task.INSTANCE_SEGMENTATION, "sweep", {"maskrcnn_resnet50_fpn"}),
    "cli-automl-img-ins-seg-task-coco128-seg-automode": (Task.INSTANCE_SEGMENTATION, "automode", None),
    "fridge-multiclass-cpu-quick": (Task.CLASSIFICATION, "sweep", {"resnet18", "mobilenetv2"}),
}


def test_every_example_is_listed_and_expected():
    assert {p.stem for p in EXAMPLE_FILES} == set(EXPECTED)
    readme = (EXAMPLES / "README.md").read_text()
    missing = [p.name for p in EXAMPLE_FILES if p.name not in readme]
    assert not missing, f"examples/README.md does not describe {missing}"


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_example_loads_plans_and_every_trial_validates(path):
    task, mode, models = EXPECTED[path.stem]
    job = load_job(path, check_files=False)
    assert (job.task, job.mode) == (task, mode)
    hardware_choices = (CPU, BIG_GPU) if mode == "automode" else (CPU,)
    for hardware in hardware_choices:
        plan = plan_sweep(job, hardware)
        assert plan.budget == job.limits.max_trials
        drawn = _draw_every_trial(job, plan)
        assert len(drawn) == plan.budget
        # Each drawn configuration resolves with the schema into settings for one of the allowed models.
        picked = {resolve_settings(task, settings).model_name for settings in drawn}
        assert picked <= (models or set(model_names(task))) and picked
        if models is not None and plan.sampling.seed is not None:
            assert picked == models  # the seeded quick sweep tries both families


@pytest.mark.parametrize("path", AZURE_FILES, ids=lambda p: p.stem)
def test_azure_examples_keep_azures_limits_sampling_and_policy(path):
    raw = yaml.safe_load(path.read_text())
    job = load_job(path, check_files=False)
    assert (job.limits.max_trials, job.limits.max_concurrent_trials) == (10, 2)
    assert raw["log_verbosity"] == "debug" and raw["target_column_name"] == "label"
    assert raw["compute"] == "azureml:gpu-cluster"
    assert any(note.startswith("compute is ignored") for note in job.notes)
    assert not any("older location" in note for note in job.notes)  # Azure moved sweep.limits to limits in 2022
    if job.mode == "sweep":
        assert job.limits.timeout_minutes == 60
        assert job.sampling.algorithm == "random" and job.sampling.seed is None
        assert raw["sweep"]["early_termination"] == AZURE_BANDIT
        assert dict(job.training_parameters) == {"early_stopping": True, "evaluation_frequency": 1}
        # Azure's current files spell every distribution as an object ({type: choice, values: [...]})
        assert all(isinstance(value, dict) for sub in raw["search_space"] for key, value in sub.items())
    else:
        # Azure removed the AutoMode jobs' timeout (azureml-examples #1968): the reference default applies
        assert "timeout_minutes" not in raw["limits"] and job.limits.timeout_minutes == DEFAULT_TIMEOUT_MINUTES
        assert "sweep" not in raw and "search_space" not in raw and "training_parameters" not in raw


@pytest.mark.parametrize("path", AZURE_FILES, ids=lambda p: p.stem)
def test_azure_examples_link_their_source_by_its_current_name(path):
    """Azure renamed its files in 2024 (cli-automl-image-... to cli-automl-img-...); ours carry the
    current names, so that the link in each file's header is the file's own name in Azure's folder."""
    links = re.findall(r"^# (https://\S+)$", path.read_text(), flags=re.MULTILINE)
    assert len(links) == 1, f"{path.name} should name its one source"
    folder, name = links[0].removeprefix(AZURE_SOURCE).split("/")
    azure_stem = path.stem.replace("coco128-seg", "fridge-items")  # the data ours uses instead
    assert name == f"{azure_stem}.yml"
    short = re.match(r"cli-automl-img-(.+)-task", name)[1]
    task = {"cls-mc": "classification-multiclass", "cls-ml": "classification-multilabel",
            "od": "object-detection", "ins-seg": "instance-segmentation"}[short]
    assert folder == f"cli-automl-image-{task}-task-fridge-items"


def _beside_the_repository(datasets: Path) -> None:
    if datasets.resolve() != (REPO.parent / "shared" / "datasets").resolve():
        pytest.skip(f"the examples point at ../shared/datasets beside the repository; the datasets are at {datasets}")


def test_example_data_paths_exist_and_read(datasets):
    _beside_the_repository(datasets)
    counts = {}
    for path in EXAMPLE_FILES:
        raw = yaml.safe_load(path.read_text())
        if raw["training_data"]["path"] == GENERATED:
            continue  # checked below, from the documented command
        job = load_job(path)  # checks that the data paths exist
        for data in (job.training_data, job.validation_data):
            counts[(path.stem, data.path.name)] = len(read_labeled_data(data.path, job.task).records)
    assert counts[("cli-automl-img-cls-mc-task-fridge-items", "mltable_cls_train")] == 104
    assert counts[("cli-automl-img-cls-mc-task-fridge-items", "mltable_cls_val")] == 30
    assert counts[("cli-automl-img-cls-ml-task-fridge-items", "mltable_multilabel_train")] == 100
    assert counts[("cli-automl-img-od-task-fridge-items", "mltable_od_val")] == 28


def test_documented_conversion_feeds_the_instance_segmentation_examples(datasets, tmp_path, monkeypatch):
    _beside_the_repository(datasets)
    readme = (EXAMPLES / "README.md").read_text()
    (command,) = [line.strip() for line in readme.splitlines() if line.strip().startswith("visionsweep convert")]
    args = shlex.split(command)[1:]
    assert args[args.index("--output") + 1] == f"examples/{GENERATED}"
    output = tmp_path / "coco128-seg.jsonl"
    args[args.index("--output") + 1] = str(output)
    monkeypatch.chdir(REPO)  # the command is written for the repository root
    assert main(args) == 0
    records = read_labeled_data(output, Task.INSTANCE_SEGMENTATION).records
    # 941 polygons, less the 12 of the two label files that have no image
    assert len(records) == 128 and sum(len(r.objects) for r in records) == 929
    assert all(obj.polygons for r in records for obj in r.objects)
    for path in EXAMPLE_FILES:
        raw = yaml.safe_load(path.read_text())
        if raw["training_data"]["path"] != GENERATED:
            continue
        raw["training_data"]["path"] = str(output)
        job = parse_job(raw, base_dir=EXAMPLES, source=path)
        assert job.task is Task.INSTANCE_SEGMENTATION and job.validation_data is None
        assert job.training_data.path == output


def _draw_every_trial(job, plan) -> list[dict]:
    """The settings of every trial of ``plan``, drawn as the runner draws them (slot and assigned
    point set before sampling), without training. Nothing is told back, as when all run at once."""
    study = optuna.create_study(direction="maximize", sampler=make_sampler(plan.sampling, plan.points))
    drawn = []
    for slot in range(plan.budget):
        trial = study.ask()
        trial.set_user_attr(attrs.SLOT, slot)
        if slot < len(plan.points):
            trial.set_user_attr(attrs.POINT, slot)
        drawn.append(merge_settings(job.base_settings(), suggest(trial, plan.space).values))
    return drawn


def test_readme_times_name_every_example():
    """The README's table says how long each example takes here; keep a row per file."""
    readme = (EXAMPLES / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| [")]
    linked = {match for line in rows for match in re.findall(r"\[([^\]]+\.yml)\]", line)}
    assert linked == {p.name for p in EXAMPLE_FILES}
