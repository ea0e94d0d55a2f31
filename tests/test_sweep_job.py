"""Job YAML parsing, the three modes, AutoMode's policy and the sweep plan."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from visionsweep.errors import SettingsError
from visionsweep.sweep.automode import Hardware, plan_automode
from visionsweep.sweep.job import DEFAULT_TIMEOUT_MINUTES, load_job, parse_job
from visionsweep.sweep.plan import SweepPlan, plan_sweep
from visionsweep.sweep.policies import PolicySpec
from visionsweep.sweep.sampling import SamplingSpec
from visionsweep.sweep.space import SUBSPACE_PARAM
from visionsweep.tasks import Task

CPU = Hardware(gpus=0, gpu_memory_gib=0, cpus=2)
BIG_GPU = Hardware(gpus=4, gpu_memory_gib=16, cpus=32)
SMALL_GPU = Hardware(gpus=1, gpu_memory_gib=8, cpus=8)


def _write(tmp_path: Path, text: str, name: str = "job.yml") -> Path:
    """A job file in tmp_path/jobs with the MLTable folders it points at in tmp_path/data."""
    for folder in ("train-mltable", "valid-mltable"):
        (tmp_path / "data" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / folder / "MLTable").write_text("paths: []\n")
    (tmp_path / "jobs").mkdir(exist_ok=True)
    path = tmp_path / "jobs" / name
    path.write_text(textwrap.dedent(text))
    return path


CLASSIFICATION_SWEEP = """\
    $schema: https://azuremlschemasprod.azureedge.net/latest/autoMLImageClassificationJob.schema.json
    type: automl
    task: image_classification
    name: fridge-sweep
    experiment_name: fridge
    description: two families
    tags: {owner: me}
    compute: azureml:gpu-cluster
    log_verbosity: debug
    primary_metric: accuracy
    target_column_name: label
    training_data: {type: mltable, path: ../data/train-mltable}
    validation_data:
      type: mltable
      path: ../data/valid-mltable
      mode: direct
    limits:
      timeout_minutes: 60
    training_parameters:
      early_stopping: True
      evaluation_frequency: 1
      weighted_loss: 1
    sweep:
      limits:
        max_trials: 10
        max_concurrent_trials: 2
      sampling_algorithm: random
      early_termination:
        type: bandit
        evaluation_interval: 2
        slack_factor: 0.2
        delay_evaluation: 6
    search_space:
      - model_name:
          type: choice
          values: [vits16r224, vitb16r224]
        learning_rate:
          type: uniform
          min_value: 0.005
          max_value: 0.02
        number_of_epochs: "choice(15, 25)"
        training_crop_size: 224
      - model_name: "choice('seresnext', 'resnet50')"
        learning_rate: "loguniform(-6.9, -3.0)"
        layers_to_freeze: "choice(0, 2)"
    outputs:
      best_model: {type: mlflow_model}
    """


def test_azure_classification_sweep_job(tmp_path):
    job = load_job(_write(tmp_path, CLASSIFICATION_SWEEP))
    assert job.task is Task.CLASSIFICATION and job.mode == "sweep"
    assert job.training_data.path == (tmp_path / "data" / "train-mltable").resolve()  # relative to the YAML
    assert job.validation_data.type == "mltable"
    # Both limits locations: timeout_minutes at the top, the rest under sweep.limits (older examples).
    assert (job.limits.max_trials, job.limits.max_concurrent_trials, job.limits.timeout_minutes) == (10, 2, 60)
    assert job.sampling == SamplingSpec("random")
    assert job.early_termination == PolicySpec("bandit", 2, 6, slack_factor=0.2)
    assert len(job.search_space.subspaces) == 2
    assert job.search_space.subspaces[0].fixed == {"training_crop_size": 224}
    assert job.base_settings() == {"early_stopping": True, "evaluation_frequency": 1, "weighted_loss": 1,
                                   "primary_metric": "accuracy"}
    assert job.study_name() == "fridge-sweep" and job.log_verbosity == "debug" and job.tags == {"owner": "me"}
    notes = "\n".join(job.notes)
    assert "compute is ignored" in notes and "outputs is ignored" in notes and "sweep.limits" in notes


def test_detection_job_with_string_spellings_and_held_out_validation(tmp_path):
    job = load_job(_write(tmp_path, """\
        type: automl
        task: image_object_detection
        primary_metric: mean_average_precision
        target_column_name: label
        training_data: {type: mltable, path: ../data/train-mltable}
        validation_data_size: 0.15
        limits: {timeout_minutes: 600, max_trials: 12, max_concurrent_trials: 3}
        training_parameters:
          validation_metric_type: coco_voc
          advanced_settings: '{"stream_image_files": true}'
        sweep:
          sampling_algorithm: random
          early_termination: {type: median_stopping, evaluation_interval: 1, delay_evaluation: 5}
        search_space:
          - model_name: yolov5
            model_size: "choice('small', 'medium')"
            learning_rate: "uniform(0.0005, 0.01)"
            image_size: "choice(640, 960)"
            tile_grid_size: "choice('2x1', '3x2')"
          - model_name: fasterrcnn_resnet50_fpn
            optimizer: "choice('sgd', 'adamw')"
            min_size: "choice(600, 800)"
            tile_grid_size: "choice('3x2', '5x3')"
            box_score_threshold: 0.3
        """))
    assert job.mode == "sweep" and job.validation_data is None
    assert job.base_settings()["validation_size"] == 0.15
    assert job.early_termination.type == "median_stopping"
    assert job.search_space.subspaces[1].fixed == {"model_name": "fasterrcnn_resnet50_fpn", "box_score_threshold": 0.3}


def test_segmentation_grid_job(tmp_path):
    job = load_job(_write(tmp_path, """\
        type: automl
        task: image_instance_segmentation
        training_data: {path: ../data/train-mltable}
        validation_data: {path: ../data/valid-mltable}
        limits: {max_trials: 8, max_concurrent_trials: 2}
        training_parameters: {number_of_epochs: 20}
        sweep:
          sampling_algorithm: grid
          early_termination: {type: truncation_selection, truncation_percentage: 25, evaluation_interval: 2,
                              delay_evaluation: 4}
        search_space:
          - model_name: {type: choice, values: [maskrcnn_resnet50_fpn, maskrcnn_resnet101_fpn]}
            learning_rate: {type: choice, values: [0.002, 0.005]}
            optimizer: {type: choice, values: [sgd, adamw]}
        """))
    assert job.primary_metric == "mean_average_precision"  # the task's only metric by default
    plan = plan_sweep(job)
    assert plan.budget == 8 and len(plan.points) == 8


def test_single_model_and_automode_jobs(tmp_path):
    single = load_job(_write(tmp_path, """\
        type: automl
        task: image_object_detection
        training_data: {path: ../data/train-mltable}
        training_parameters: {model_name: yolov5, model_size: small}
        """))
    assert single.mode == "single" and single.limits.max_trials == 1
    assert single.limits.timeout_minutes == DEFAULT_TIMEOUT_MINUTES
    plan = plan_sweep(single)
    assert plan.budget == 1 and plan.space.subspaces[0].keys() == []
    auto = load_job(_write(tmp_path, """\
        type: automl
        task: image_instance_segmentation
        training_data: {path: ../data/train-mltable}
        limits: {timeout_minutes: 60, max_trials: 10, max_concurrent_trials: 2}
        """, "auto.yml"))
    assert auto.mode == "automode"


def test_every_problem_is_reported_at_once(tmp_path):
    path = _write(tmp_path, """\
        type: automl_job
        task: image_clasification
        training_data: {type: mltable, path: ../data/missing}
        validation_data: {path: azureml:fridge-valid:1}
        limits: {max_trials: 0, max_concurent_trials: 2, timeout_minutes: -5}
        training_parameters: {learning_rat: 0.1}
        searchspace: []
        sweep: {sampling_algorithm: random}
        """)
    with pytest.raises(SettingsError) as error:
        load_job(path)
    text = "\n".join(error.value.problems)
    for fragment in ["type: got 'automl_job'", "task: got 'image_clasification'", "does not exist",
                     "points at cloud storage", "limits.max_trials: must be a whole number from 1 to 1000",
                     "limits.max_concurent_trials: unknown key; did you mean 'max_concurrent_trials'",
                     "limits.timeout_minutes", "searchspace: unknown key; did you mean 'search_space'",
                     "sweep.sampling_algorithm and sweep.early_termination need a search_space"]:
        assert fragment in text, fragment
    # The task is unreadable, but a name that no task knows is still reported.
    assert "training_parameters.learning_rat: unknown setting; did you mean 'learning_rate'?" in text
    assert str(error.value).startswith(f"{len(error.value.problems)} invalid job file values:")


def test_settings_problems_in_training_parameters_and_search_space(tmp_path):
    with pytest.raises(SettingsError) as error:
        load_job(_write(tmp_path, """\
            type: automl
            task: image_classification
            training_data: {path: ../data/train-mltable}
            limits: {max_trials: 4}
            training_parameters: {learning_rat: 0.1, min_size: 600, enable_code_generation: true}
            sweep: {sampling_algorithm: grid}
            search_space:
              - learning_rate: "uniform(0.001, 0.01)"
                optimizer: "choice('sgd', 'adamx')"
            """))
    text = "\n".join(error.value.problems)
    assert "training_parameters.learning_rat: unknown setting; did you mean 'learning_rate'?" in text
    assert "training_parameters.min_size: does not apply to image_classification" in text
    assert "enable_code_generation" not in text  # Azure-only: a note, not an error


def test_grid_job_rejects_ranges_and_schema_rejects_values(tmp_path):
    base = """\
        type: automl
        task: image_classification
        training_data: {path: ../data/train-mltable}
        limits: {max_trials: 4}
        sweep: {sampling_algorithm: %s}
        search_space:
          - learning_rate: "uniform(0.5, 2.0)"
            optimizer: "choice('sgd', 'adamx')"
        """
    with pytest.raises(SettingsError) as error:
        load_job(_write(tmp_path, base % "grid"))
    assert any("grid sampling takes only choice" in p for p in error.value.problems)
    with pytest.raises(SettingsError) as error:
        load_job(_write(tmp_path, base % "random"))
    text = "\n".join(error.value.problems)
    assert "learning_rate=2.0 (from uniform(0.5, 2.0)) is rejected" in text and "optimizer='adamx'" in text


def test_search_space_needs_a_sampling_algorithm(tmp_path):
    with pytest.raises(SettingsError, match="search_space needs sweep.sampling_algorithm"):
        load_job(_write(tmp_path, """\
            type: automl
            task: image_classification
            training_data: {path: ../data/train-mltable}
            limits: {max_trials: 4}
            search_space: [{learning_rate: "uniform(0.001, 0.01)"}]
            """))


def test_limits_in_both_places_must_agree_and_concurrency_is_capped(tmp_path):
    with pytest.raises(SettingsError, match="sweep.limits.max_trials .* contradicts limits.max_trials"):
        load_job(_write(tmp_path, """\
            type: automl
            task: image_classification
            training_data: {path: ../data/train-mltable}
            limits: {max_trials: 4}
            sweep: {limits: {max_trials: 5}}
            """))
    job = load_job(_write(tmp_path, """\
        type: automl
        task: image_classification
        training_data: {path: ../data/train-mltable}
        limits: {max_trials: 2, max_concurrent_trials: 4}
        """))
    assert job.limits.max_concurrent_trials == 2 and any("capped at max_trials 2" in n for n in job.notes)


def test_bayesian_job_notes_where_azure_would_refuse(tmp_path):
    job = load_job(_write(tmp_path, """\
        type: automl
        task: image_classification
        training_data: {path: ../data/train-mltable}
        limits: {max_trials: 20}
        sweep:
          sampling_algorithm: {type: bayesian, seed: 1}
          early_termination: {type: bandit, slack_amount: 0.05}
        search_space:
          - model_name: resnet18
            learning_rate: "loguniform(-7, -3)"
          - model_name: mobilenetv2
        """))
    notes = "\n".join(job.notes)
    assert "Azure accepts only choice, uniform and quniform" in notes
    assert "conditional spaces only with random and grid" in notes and "refuses the combination" in notes


def test_fingerprint_ignores_data_paths_and_worker_limits(tmp_path):
    first = load_job(_write(tmp_path, CLASSIFICATION_SWEEP))
    moved = CLASSIFICATION_SWEEP.replace("../data/train-mltable", str(tmp_path / "data" / "train-mltable"))
    moved = moved.replace("max_concurrent_trials: 2", "max_concurrent_trials: 1").replace("timeout_minutes: 60",
                                                                                            "timeout_minutes: 5")
    assert load_job(_write(tmp_path, moved, "moved.yml")).fingerprint() == first.fingerprint()
    changed = CLASSIFICATION_SWEEP.replace("max_value: 0.02", "max_value: 0.03")
    assert load_job(_write(tmp_path, changed, "changed.yml")).fingerprint() != first.fingerprint()


def test_parse_job_can_skip_the_data_check():
    job = parse_job({"type": "automl", "task": "image_classification", "training_data": {"path": "nowhere"}},
                    base_dir="/data", check_files=False)
    assert job.training_data.path == Path("/data/nowhere").resolve()


# --- AutoMode -------------------------------------------------------------------------------------------


def test_automode_on_cpu_trains_small_classifiers_defaults_first():
    plan = plan_automode(Task.CLASSIFICATION, 10, CPU)
    models = [sub.fixed["model_name"] for sub in plan.space.subspaces]
    assert models == ["mobilenetv2", "resnet18", "resnet34"]  # ceil(10 / 4) = 3 families
    assert plan.portfolio[0] == {SUBSPACE_PARAM: 0, "learning_rate@0": 0.01}  # the reference default
    lr = plan.space.subspaces[0].distributions["learning_rate"]
    assert math.isclose(math.exp(lr.params["min_value"]), 0.01 / 3) and math.isclose(math.exp(lr.params["max_value"]), 0.03)
    assert plan.policy == PolicySpec("median_stopping", 1, 5)
    assert plan.sampling == SamplingSpec("bayesian", seed=0, n_startup_trials=5)


def test_automode_scales_with_budget_and_hardware():
    small = plan_automode(Task.CLASSIFICATION, 3, BIG_GPU)
    assert [s.fixed["model_name"] for s in small.space.subspaces] == ["vitb16r224", "seresnext"]
    assert small.policy is None  # too few trials to compare
    assert small.portfolio[0]["learning_rate@0"] == 0.0125  # the ViT default
    large = plan_automode(Task.CLASSIFICATION, 24, BIG_GPU)
    assert len(large.space.subspaces) == 5
    assert large.space.subspaces[0].distributions["number_of_epochs"].values == (15, 23)
    detection = plan_automode(Task.OBJECT_DETECTION, 8, SMALL_GPU)
    assert [s.fixed for s in detection.space.subspaces] == [{"model_name": "yolov5", "model_size": "small"},
                                                           {"model_name": "fasterrcnn_resnet50_fpn"}]
    assert detection.portfolio[0]["learning_rate@0"] == 0.01 and detection.portfolio[1]["learning_rate@1"] == 0.005
    segmentation = plan_automode(Task.INSTANCE_SEGMENTATION, 2, CPU)
    assert [s.fixed["model_name"] for s in segmentation.space.subspaces] == ["maskrcnn_resnet18_fpn",
                                                                             "maskrcnn_resnet50_fpn"]


def test_automode_never_sweeps_what_the_job_fixes():
    plan = plan_automode(Task.CLASSIFICATION, 10, BIG_GPU, {"model_name": "resnet50", "learning_rate": 0.02})
    assert len(plan.space.subspaces) == 1 and plan.space.subspaces[0].fixed == {"model_name": "resnet50"}
    assert plan.space.subspaces[0].distributions == {}
    assert any("nothing is left to sweep" in r for r in plan.reasons)


def test_automode_plan_from_a_job_and_its_stored_form(tmp_path):
    job = load_job(_write(tmp_path, """\
        type: automl
        task: image_classification
        training_data: {path: ../data/train-mltable}
        limits: {max_trials: 10}
        """))
    plan = plan_sweep(job, CPU)
    assert plan.mode == "automode" and plan.budget == 10 and len(plan.points) == 3
    assert SweepPlan.from_dict(plan.to_dict()) == plan


def test_hardware_detection_reports_this_machine():
    hardware = Hardware.detect()
    assert hardware.cpus >= 1 and (hardware.gpus == 0) == (hardware.tier == "cpu")


# --- the checks of a single run, for every value a trial can draw -------------------------------------------

_RESNET_GROUPS = "5 layer groups (conv1+bn1, layer1, layer2, layer3, layer4), so use 0 to 5"


def _sweep(space, training_parameters=None, **extra):
    return {"type": "automl", "task": "image_classification", "training_data": {"path": "train.jsonl"},
            "limits": {"max_trials": 4}, "sweep": {"sampling_algorithm": "random"},
            "training_parameters": training_parameters or {}, "search_space": space, **extra}


def _job_problems(raw, **options):
    with pytest.raises(SettingsError) as raised:
        parse_job(raw, check_files=options.pop("check_files", False), **options)
    return raised.value.problems


def test_layers_to_freeze_is_checked_for_every_model_and_every_value_a_trial_can_draw():
    raw = _sweep([
        {"model_name": "choice('resnet18', 'mobilenetv2')", "layers_to_freeze": "choice(0, 6)"},
        {"model_name": "resnet50", "layers_to_freeze": "quniform(0, 7, 1)"},
        {"model_name": "choice('resnet18', 'mobilenetv2')"},  # layers_to_freeze 8 of training_parameters
        {"model_name": "mobilenetv2", "layers_to_freeze": "randint(20)"},  # 0 to 19 of its 19 groups: fine
    ], {"layers_to_freeze": 8})
    assert _job_problems(raw) == [
        "search_space[0] with model_name resnet18: layers_to_freeze=6 (from choice(0, 6)) is rejected: "
        f"layers_to_freeze: got 6; resnet18 has {_RESNET_GROUPS}",
        "search_space[1]: layers_to_freeze=7 (from quniform(0, 7, 1)) is rejected: "
        f"layers_to_freeze: got 7; resnet50 has {_RESNET_GROUPS}",
        f"search_space[2] with model_name resnet18: layers_to_freeze: got 8; resnet18 has {_RESNET_GROUPS}",
    ]
    # Fixed in training_parameters with the model: a problem of training_parameters.
    single = {"type": "automl", "task": "image_classification", "training_data": {"path": "train.jsonl"},
              "training_parameters": {"model_name": "resnet18", "layers_to_freeze": 6}}
    assert _job_problems(single) == [f"training_parameters.layers_to_freeze: got 6; resnet18 has {_RESNET_GROUPS}"]


def test_a_normal_distribution_that_reaches_past_the_layer_groups_only_in_its_tail_is_a_note():
    job = parse_job(_sweep([{"model_name": "resnet18", "layers_to_freeze": "normal(3, 1)"}]), check_files=False)
    assert ("search_space[0]: layers_to_freeze=6 (from normal(3, 1)) is rejected: layers_to_freeze: got 6; resnet18 "
            f"has {_RESNET_GROUPS}; such trials will be recorded failed") in job.notes


def test_automode_checks_layers_to_freeze_against_a_pinned_model_and_leaves_its_own_models_to_the_plan():
    automode = {"type": "automl", "task": "image_classification", "training_data": {"path": "train.jsonl"},
                "limits": {"max_trials": 4}, "training_parameters": {"layers_to_freeze": 6}}
    assert parse_job(automode, check_files=False).mode == "automode"  # the runner checks the models it picks
    pinned = {**automode, "training_parameters": {"layers_to_freeze": 6, "model_name": "resnet18"}}
    assert _job_problems(pinned) == [f"training_parameters.layers_to_freeze: got 6; resnet18 has {_RESNET_GROUPS}"]


def test_device_is_checked_as_the_runner_gives_it_to_the_trials():
    raw = _sweep([{"model_name": "resnet18", "device": "choice('cpu', 'cuda', 'cuda:1')"}])
    assert parse_job(raw, check_files=False).mode == "sweep"  # devices not known: left to the runner
    # --devices cpu (or no GPU found): the trials see no GPU.
    cpu = "in this sweep the trials run on the CPU and see no GPU (--devices cpu was given, or no GPU was found); " \
          "to train on GPUs, give them with --devices"
    assert _job_problems(raw, devices=[]) == [
        "search_space[0]: device='cuda' (from choice('cpu', 'cuda', 'cuda:1')) is rejected: device: got 'cuda' but no "
        f"CUDA GPU is available; use auto or cpu; {cpu}",
        "search_space[0]: device='cuda:1' (from choice('cpu', 'cuda', 'cuda:1')) is rejected: device: got 'cuda:1' but "
        f"no CUDA GPU is available; use auto or cpu; {cpu}",
    ]
    # GPUs 2 and 3: each trial sees its own as cuda:0, so cuda is fine and cuda:1 is not.
    assert _job_problems(raw, devices=["2", "3"]) == [
        "search_space[0]: device='cuda:1' (from choice('cpu', 'cuda', 'cuda:1')) is rejected: device: got 'cuda:1' but "
        "only 1 GPU(s) exist; in this sweep each trial sees one GPU of its own (one of 2, 3, through "
        "CUDA_VISIBLE_DEVICES), where it is cuda:0: remove device or use auto, and choose the GPUs with --devices 1"]
    assert parse_job(_sweep([{"device": "choice('cuda', 'cuda:0', 'auto')"}]), check_files=False,
                     devices=["2", "3"]).mode == "sweep"


def test_pretrained_weights_files_are_checked_for_every_choice(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"image_url": "a.png", "label": "can"}\n')
    (tmp_path / "imagenet.pth").write_bytes(b"")
    missing = tmp_path / "missing.pth"
    raw = _sweep([{"model_name": "resnet18", "pretrained_weights": f"choice('{tmp_path / 'imagenet.pth'}', "
                                                                   f"'{missing}')"}])
    raw["training_data"] = {"path": str(tmp_path / "train.jsonl"), "type": "uri_file"}
    assert _job_problems(raw, check_files=True) == [
        f"search_space[0]: pretrained_weights={str(missing)!r} (from choice({str(tmp_path / 'imagenet.pth')!r}, "
        f"{str(missing)!r})) is rejected: pretrained_weights: file {missing} does not exist"]
    assert parse_job(raw, check_files=False).mode == "sweep"


def test_model_and_machine_problems_come_in_the_same_one_pass_list():
    raw = _sweep([{"model_name": "choice('resnet18', 'mobilenetv2')", "layers_to_freeze": "choice(0, 99)",
                   "learning_rat": 0.01}], {"device": "cuda", "number_of_epochs": 0})
    assert _job_problems(raw, devices=[]) == [
        "training_parameters.number_of_epochs: got 0; Input should be greater than 0",
        "search_space[0].learning_rat: unknown setting; did you mean 'learning_rate'?",
        "training_parameters.device: got 'cuda' but no CUDA GPU is available; use auto or cpu; in this sweep the "
        "trials run on the CPU and see no GPU (--devices cpu was given, or no GPU was found); to train on GPUs, give "
        "them with --devices",
        "search_space[0] with model_name resnet18: layers_to_freeze=99 (from choice(0, 99)) is rejected: "
        f"layers_to_freeze: got 99; resnet18 has {_RESNET_GROUPS}",
        "search_space[0] with model_name mobilenetv2: layers_to_freeze=99 (from choice(0, 99)) is rejected: "
        "layers_to_freeze: got 99; mobilenetv2 has 19 layer groups (features.0, features.1, features.2, features.3, "
        "features.4, features.5, features.6, features.7, features.8, features.9, features.10, features.11, "
        "features.12, features.13, features.14, features.15, features.16, features.17, features.18), so use 0 to 19",
    ]


def test_pretrained_weights_with_pretrained_false_is_an_error_and_a_note_where_only_some_draws_break_it():
    single = {"type": "automl", "task": "image_classification", "training_data": {"path": "train.jsonl"},
              "training_parameters": {"pretrained": False, "pretrained_weights": "w.pth"}}
    assert _job_problems(single) == [
        "training_parameters.pretrained_weights: got 'w.pth' but pretrained is false, which trains from scratch; "
        "remove pretrained_weights, or set pretrained=true to start from the file"]
    job = parse_job(_sweep([{"pretrained": "choice(true, false)"}], {"pretrained_weights": "w.pth"}), check_files=False)
    assert ("search_space[0] with model_name vitb16r224: pretrained=False (from choice(true, false)) is rejected: "
            "pretrained_weights: got 'w.pth' but pretrained is false, which trains from scratch; remove "
            "pretrained_weights, or set pretrained=true to start from the file; such trials will be recorded "
            "failed") in job.notes
