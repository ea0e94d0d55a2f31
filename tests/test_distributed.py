"""Distributed training (PyTorch DDP) on the CPU with gloo and 2 processes: the exchange format, each
process's share, equivalence with one process, gathered validation metrics, rank 0 writing alone, a dying
rank, and the launcher's errors. docs/distributed.md says what these numbers mean.

Equivalence: 2 processes with batch b and learning rate r (which the run scales to 2r, the linear scaling
rule) take the steps of 1 process with batch 2b and learning rate 2r, because DDP averages the processes'
gradients and each family's loss is a mean over its images (YOLOv5's is a sum, which the loop scales by the
number of processes). That holds exactly when nothing random or per-process is left: augmentation off,
batch-norm statistics fixed (each process would normalise its own share; SyncBatchNorm needs CUDA), and for
R-CNN every anchor and proposal sampled (torchvision draws a random subset, and normalises by the number
drawn over the batch, which is a per-image mean only when every image has as many). What differs is the
order of floating-point sums, so weights agree to 1e-4 of the change training made to them.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_SETTINGS, write_color_dataset
from visionsweep.distributed import Ranks, decode_plain, encode_plain
from visionsweep.families.loaders import ContiguousShard, make_loader

HELPERS = Path(__file__).with_name("distributed_helpers.py")
TIMEOUT_S = 240


def _torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               str(HELPERS), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)


def _single(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPERS), *args], capture_output=True, text=True, timeout=TIMEOUT_S)


def _spec(tmp_path: Path, name: str, **spec) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return str(path)


def _ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# --- the exchange format and the shares ------------------------------------------------------------------

def test_gathered_values_round_trip_without_pickle():
    value = {"images": 3, "loss": 0.25, "name": "voc", "none": None, "nested": [{"counts": b"\x00ab"}, (1, 2)],
             "arrays": [np.arange(5, dtype=np.int64), np.ones((2, 3), np.float32), np.zeros(0, np.int8)]}
    data = encode_plain(value)
    assert b"pickle" not in data and not data.startswith(b"\x80")  # JSON and safetensors, no pickle protocol
    back = decode_plain(data)
    assert back["images"] == 3 and back["loss"] == 0.25 and back["none"] is None
    assert back["nested"] == [{"counts": b"\x00ab"}, [1, 2]]
    for sent, received in zip(value["arrays"], back["arrays"]):
        assert received.dtype == sent.dtype and np.array_equal(received, sent)
    with pytest.raises(TypeError, match="cannot exchange a object"):
        encode_plain({"thing": object()})


@pytest.mark.parametrize("length, world", [(7, 2), (5, 3), (2, 4), (0, 2)])
def test_validation_shares_are_contiguous_and_cover_every_item_once(length, world):
    shares = [list(ContiguousShard(length, Ranks(rank=r, world_size=world))) for r in range(world)]
    assert [i for share in shares for i in share] == list(range(length))  # in order, nothing repeated


def test_two_training_shares_make_the_one_process_batches():
    """Epoch e's order is drawn from seed + e whatever the number of processes; with batch b each, the two
    processes' k-th batches together are the one process's k-th batch of 2b."""
    dataset = list(range(8))
    one = make_loader(dataset, 4, shuffle=True, num_workers=0, collate_fn=list, device=torch.device("cpu"), seed=5)
    two = [make_loader(dataset, 2, shuffle=True, num_workers=0, collate_fn=list, device=torch.device("cpu"), seed=5,
                       ranks=Ranks(rank=r, world_size=2)) for r in range(2)]
    orders = []
    for epoch in (1, 2):
        for loader in (one, *two):
            loader.sampler.set_epoch(epoch)
        batches = list(one)
        for k, (first, second) in enumerate(zip(*two)):
            assert sorted(first + second) == sorted(batches[k])
        orders.append([i for batch in batches for i in batch])
    assert orders[0] != orders[1]  # a new order every epoch


# --- equivalence with one process ------------------------------------------------------------------------

def _one_object_scenes(folder: Path, count: int = 8, size: int = 64) -> Path:
    """Scenes alike in geometry (one red square at the same place, so every image has as many anchors
    and targets of each kind) and different in their noise."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        pixels = rng.integers(60, 140, (size, size, 3), dtype=np.uint8)
        pixels[16:44, 12:40] = (230, 30, 30)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        lines.append({"image_url": f"{i}.png", "label": [{"label": "red", "topX": 12 / size, "topY": 16 / size,
                                                           "bottomX": 40 / size, "bottomY": 44 / size}]})
    (folder / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder / "data.jsonl"


_DETECTION_BASE = {key: value for key, value in TINY_SETTINGS.items()
                   if not key.endswith(("_resize_size", "_crop_size"))}
_EQUIVALENCE = {  # case: (task, settings, changes to the built model: see distributed_helpers)
    "classification": ("image_classification", TINY_SETTINGS, {"freeze_batch_norm": True}),
    "faster_rcnn": ("image_object_detection",
                    {"model_name": "fasterrcnn_resnet18_fpn", "min_size": 64, "max_size": 64,
                     "validation_metric_type": "none"},  # the weights are compared, not the (slow) validation
                    {"rcnn_every_sample": True}),
    "yolov5": ("image_object_detection", {"model_name": "yolov5", "model_size": "small", "img_size": 64,
                                          "apply_mosaic_for_yolo": False, "validation_metric_type": "none"},
               {"freeze_batch_norm": True}),
}


def test_two_processes_take_the_steps_of_one_with_twice_the_batch(tmp_path):
    """A classifier, Faster R-CNN and YOLOv5, each trained two steps (8 images) by 2 processes with batch 2 and
    by 1 with batch 4 (one launch of each, training the three in turn)."""
    classification = write_color_dataset(tmp_path / "classification", per_class=5)  # 8 training, 2 validation
    detection = _one_object_scenes(tmp_path / "detection", count=10)
    runs: dict[str, list[dict]] = {"two": [], "one": []}
    for case, (task, values, tweaks) in sorted(_EQUIVALENCE.items()):
        classifier = task == "image_classification"
        common = {**(TINY_SETTINGS if classifier else _DETECTION_BASE), **values, "number_of_epochs": 1,
                  "apply_automl_train_augmentations": False, "early_stopping": False, "seed": 3,
                  "validation_batch_size": 2}
        for name, batch, rate in (("two", 2, 0.005), ("one", 4, 0.01)):
            runs[name].append({"task": task, "data": str(classification if classifier else detection),
                               "output": str(tmp_path / f"{case}-{name}"),
                               "settings": {**common, "training_batch_size": batch, "learning_rate": rate},
                               "initial_weights": str(tmp_path / f"{case}-{name}-initial.pt"), **tweaks})
    _ok(_torchrun("train", _spec(tmp_path, "two", runs=runs["two"])))
    _ok(_single("train", _spec(tmp_path, "one", runs=runs["one"])))
    for case in _EQUIVALENCE:
        two, one = (torch.load(tmp_path / f"{case}-{name}" / "model" / "model.pt", weights_only=True)["model_state"]
                    for name in ("two", "one"))
        initial = torch.load(tmp_path / f"{case}-one-initial.pt", weights_only=True)
        changed = 0
        for key, weights in one.items():
            if not weights.is_floating_point():
                continue
            moved = (weights - initial[key]).norm()
            if moved > 0:
                changed += 1
                assert (two[key] - weights).norm() <= 1e-4 * moved + 1e-7, (case, key)
        assert changed > 10, case  # the comparison is about weights that training moved
        log = (tmp_path / f"{case}-two" / "train.log").read_text()
        assert "distributed over 2 processes (gloo)" in log and "x 2 = 0.01" in log, case


# --- validation metrics over the processes ----------------------------------------------------------------

def test_distributed_validation_gives_the_one_process_metrics(tmp_path):
    """Five images on two processes (3 + 2, nothing repeated), for a classifier, a detector scored with VOC
    and COCO, and a tiling detector: every metric equal (the classifier's log loss to 1e-6)."""
    classification = write_color_dataset(tmp_path / "cls", per_class=3)
    lines = classification.read_text().splitlines()[:5]
    classification.write_text("\n".join(lines) + "\n")
    detection = _one_object_scenes(tmp_path / "det", count=5)
    detector = {"model_name": "fasterrcnn_resnet18_fpn", "min_size": 64, "max_size": 64, "box_score_thresh": 0.0,
                "validation_metric_type": "coco_voc", "validation_batch_size": 2, "num_workers": 0,
                # the validation loss samples anchors at random, as in training: not comparable run to run
                "log_validation_loss": "Disable"}
    cases = {
        "classification": {"task": "image_classification", "data": str(classification),
                           "settings": {**TINY_SETTINGS, "validation_batch_size": 2}},
        "detection": {"task": "image_object_detection", "data": str(detection), "settings": detector},
        "tiling": {"task": "image_object_detection", "data": str(detection),
                   "settings": {**detector, "tile_grid_size": "2x1", "tile_overlap_ratio": 0.25}},
    }
    output = tmp_path / "metrics.json"
    _ok(_torchrun("evaluate", _spec(tmp_path, "evaluate", cases=cases, output=str(output))))
    written = json.loads(output.read_text())
    assert written["shares"] == [{name: 3 for name in cases}, {name: 2 for name in cases}]
    for name, result in written["results"].items():
        # The log loss comes from probabilities, which the network computes a little differently in batches of
        # another make-up (3 + 2 images against 5): equal to 1e-6. Everything counted from them is equal.
        gathered, single = dict(result["gathered"]), dict(result["single"])
        if name == "classification":
            assert gathered.pop("log_loss") == pytest.approx(single.pop("log_loss"), rel=1e-6)
        assert gathered == single, name
    assert written["results"]["detection"]["single"]["coco_metrics"]  # COCO ran too
    assert written["results"]["classification"]["single"]["accuracy"] in (0.4, 0.6, 0.2, 0.8, 0.0, 1.0)


# --- rank 0 writes, a dying rank stops the run -------------------------------------------------------------

def test_the_cli_starts_the_processes_and_only_rank_0_writes(tmp_path):
    data = write_color_dataset(tmp_path / "data", per_class=4)
    command = [sys.executable, "-m", "visionsweep", "train", "--task", "image_classification", "--data", str(data),
               "--output", str(tmp_path / "run"), "--no-progress", "--nproc-per-node", "2"]
    for key, value in {**TINY_SETTINGS, "number_of_epochs": 1}.items():
        command += ["--set", f"{key}={value}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    _ok(result)
    summary = json.loads(result.stdout)  # one summary, from rank 0
    assert summary["status"] == "completed" and summary["epochs_run"] == 1
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "data_report.json", "metrics.jsonl", "model",
                                                     "settings.json", "train-1.log", "train.jsonl", "train.log",
                                                     "validation.jsonl"]
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # one writer
    assert "training resnet18 on cpu" in (run / "train-1.log").read_text()
    assert json.loads((run / "settings.json").read_text())["seed"] == 0


def test_a_rank_that_dies_fails_the_run_with_a_clear_error(tmp_path):
    data = write_color_dataset(tmp_path / "data", per_class=4)
    spec = _spec(tmp_path, "die", task="image_classification", data=str(data), output=str(tmp_path / "run"),
                 settings={**TINY_SETTINGS, "number_of_epochs": 1}, die_on_rank=1)
    from visionsweep.training.launcher import Launch, launch_processes
    from visionsweep.distributed import DistributedError

    started = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank 1 exited with status 3.*other processes were stopped"):
        launch_processes(Launch(nproc_per_node=2), ["--no-python", sys.executable, str(HELPERS), "die", spec])
    assert time.monotonic() - started < TIMEOUT_S  # stopped, not left waiting for the dead rank


def test_a_sweep_trial_trains_on_two_processes_and_one_that_loses_a_rank_fails_alone(tmp_path):
    from distributed_helpers import DIES
    from sweep_helpers import study_trials
    from visionsweep.sweep import attrs
    from visionsweep.sweep.job import load_job
    from visionsweep.sweep.runner import run_sweep

    job = _classification_job(tmp_path, f'    learning_rate: "choice({DIES}, 0.01)"\n')
    lines: list[str] = []
    result = run_sweep(load_job(job), tmp_path / "sweep", trainer="distributed_helpers:train_or_die", devices=[],
                       processes_per_trial=2, progress=lines.append, poll_interval_s=0.1)
    assert any("(2 processes)" in line for line in lines)
    trials = {t.user_attrs[attrs.CONFIG]["learning_rate"]: t for t in study_trials(tmp_path / "sweep")}
    assert trials[0.01].user_attrs[attrs.STATUS] == "completed"
    good = Path(trials[0.01].user_attrs[attrs.TRIAL_DIR])
    assert (good / "train-1.log").is_file() and (good / "model" / "model.pt").is_file()
    assert "distributed over 2 processes" in (good / "train.log").read_text()
    failed = trials[DIES]
    assert failed.user_attrs[attrs.STATUS] == "failed"
    log = (Path(failed.user_attrs[attrs.TRIAL_DIR]) / "process.log").read_text()
    assert "rank 1 exited with status 3" in log
    assert result.best is not None and result.best.trial == trials[0.01].number


def _classification_job(tmp_path: Path, search_space: str, **settings) -> Path:
    data = write_color_dataset(tmp_path / "data", per_class=4)
    values = {**TINY_SETTINGS, "number_of_epochs": 1, **settings}
    lines = "".join(f"  {key}: {str(value).lower() if isinstance(value, bool) else value}\n"
                    for key, value in values.items() if key != "model_name")
    job = tmp_path / "job.yml"
    job.write_text(f"""type: automl
task: image_classification
training_data: {{path: {data}, type: uri_file}}
limits: {{max_trials: 2, max_concurrent_trials: 1}}
training_parameters:
{lines}sweep: {{sampling_algorithm: grid}}
search_space:
  - model_name: "choice('resnet18')"
{search_space}""")
    return job


def test_a_trial_out_of_memory_retries_with_half_the_batch_and_twice_the_accumulation(tmp_path):
    from sweep_helpers import study_trials
    from visionsweep.sweep import attrs
    from visionsweep.sweep.job import load_job
    from visionsweep.sweep.runner import run_sweep

    job = _classification_job(tmp_path, '    learning_rate: "choice(0.01)"\n', training_batch_size=8)
    run_sweep(load_job(job), tmp_path / "sweep", trainer="distributed_helpers:train_in_little_memory", devices=[],
              progress=lambda line: None, poll_interval_s=0.1)
    (trial,) = study_trials(tmp_path / "sweep")
    assert trial.user_attrs[attrs.STATUS] == "completed"
    assert trial.user_attrs[attrs.RETRIES] == [
        "out of memory at training_batch_size 8: retrying with training_batch_size 4 and grad_accumulation_step 2 "
        "(the same images per step)",
        "out of memory at training_batch_size 4: retrying with training_batch_size 2 and grad_accumulation_step 4 "
        "(the same images per step)"]
    trial_dir = Path(trial.user_attrs[attrs.TRIAL_DIR])
    used = json.loads((trial_dir / "settings.json").read_text())
    assert (used["training_batch_size"], used["grad_accumulation_step"]) == (2, 4)
    assert "retrying the trial: out of memory at training_batch_size 4" in (trial_dir / "process.log").read_text()


def test_an_interrupted_trial_resumes_from_its_last_epoch_when_the_sweep_is_resumed(tmp_path):
    import os
    import signal

    import optuna

    from distributed_helpers import SLOW
    from sweep_helpers import study_trials, wait_for
    from visionsweep.sweep import attrs
    from visionsweep.sweep.job import load_job
    from visionsweep.sweep.launch import WORKER_ENTRY, python_command
    from visionsweep.sweep.runner import run_sweep

    job = _classification_job(tmp_path, '    learning_rate: "choice(0.01)"\n', number_of_epochs=3)
    run_dir = tmp_path / "sweep"
    trial_dir = run_dir / "trials" / "trial_0000"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), **{SLOW: "30"})
    worker = subprocess.Popen(python_command(WORKER_ENTRY, ["run", str(job), "--run-dir", str(run_dir), "--trainer",
                                                            "distributed_helpers:train_slowly", "--devices", "cpu"]),
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (trial_dir / "checkpoints" / "last.pt").is_file(), timeout=120)  # epoch 1 saved
    finally:
        worker.send_signal(signal.SIGKILL)  # the trial process dies with it, in its pause after epoch 1
        worker.wait()
    run_sweep(load_job(job), run_dir, trainer="distributed_helpers:train_slowly", devices=[],
              progress=lambda line: None, poll_interval_s=0.1)
    trials = {t.number: t for t in study_trials(run_dir)}
    assert trials[0].user_attrs[attrs.STATUS] == "interrupted"
    rerun = trials[1]
    assert rerun.user_attrs[attrs.RETRY_OF] == 0 and rerun.state == optuna.trial.TrialState.COMPLETE
    folder = Path(rerun.user_attrs[attrs.TRIAL_DIR])
    assert "resuming the interrupted trial's run from" in (folder / "process.log").read_text()
    epochs = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]  # epoch 1 once: taken over, not trained again
    assert [rerun.intermediate_values[i] for i in (1, 2, 3)] == [e["primary_value"] for e in epochs]  # all of it


@pytest.mark.parametrize("concurrent, gpus, asked, expected", [
    (1, 4, None, (1, 4)),  # one trial at a time gets every GPU, as the reference
    (2, 4, None, (2, 2)),
    (4, 4, None, (4, 1)),
    (3, 4, 2, (2, 2)),  # 3 x 2 GPUs do not fit on 4: two trials at a time
    (2, 0, None, (2, 1)),  # the CPU: one process per trial unless asked
    (2, 0, 2, (2, 2)),
])
def test_trials_share_the_gpus_out(concurrent, gpus, asked, expected):
    from visionsweep.sweep.runner import trial_width

    width, processes, message = trial_width(concurrent, gpus, asked)
    assert (width, processes) == expected
    assert (message is not None) == (width < concurrent)


def test_a_trial_cannot_ask_for_more_gpus_than_there_are():
    from visionsweep.errors import SettingsError
    from visionsweep.sweep.runner import trial_width

    with pytest.raises(SettingsError, match="there are 2 GPU"):
        trial_width(1, 2, 3)


def test_a_job_asking_for_multi_node_trials_is_refused_with_the_way_to_do_it(tmp_path):
    from visionsweep.errors import SettingsError
    from visionsweep.sweep.job import load_job

    (tmp_path / "train.jsonl").write_text('{"image_url": "a.jpg", "label": "can"}\n')
    job = tmp_path / "job.yml"
    job.write_text("type: automl\ntask: image_classification\ntraining_data: {path: train.jsonl, type: uri_file}\n"
                   "properties: {node_count_per_trial: '2'}\n")
    with pytest.raises(SettingsError, match=r"node_count_per_trial: got '2'.*--storage.*--nnodes"):
        load_job(job)
    job.write_text(job.read_text().replace("'2'", "'1'"))
    assert load_job(job).task.value == "image_classification"


def test_a_busy_rendezvous_port_is_a_clear_error():
    import socket

    from visionsweep.distributed import DistributedError
    from visionsweep.training.launcher import Launch, launch_processes

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(DistributedError, match="rendezvous port is in use.*give this one another port"):
            launch_processes(Launch(nproc_per_node=2, master_port=port),
                             ["--no-python", sys.executable, "-c", "print('never started')"])
    # A machine that never joins: the rendezvous times out, and the error says what to check.
    from visionsweep.distributed import rendezvous_error

    error = rendezvous_error(RuntimeError("Socket Timeout: connect() timed out"), rank=1)
    assert "(rank 1)" in str(error) and "same --nnodes, --master-addr and --master-port" in str(error)


def test_launch_settings_are_checked_before_anything_starts():
    from visionsweep.errors import SettingsError
    from visionsweep.training.launcher import Launch, launch_processes, processes_per_node

    with pytest.raises(SettingsError) as error:
        launch_processes(Launch(nproc_per_node=0, nnodes=2, node_rank=2), ["--module", "visionsweep"])
    text = str(error.value)
    assert "--nproc-per-node: got 0" in text and "--node-rank: got 2" in text and "--master-addr" in text
    with pytest.raises(SettingsError, match="distributed: false"):
        processes_per_node(2, distributed=False, device="auto", gpus=0)
    assert processes_per_node(None, distributed=True, device="auto", gpus=4) == 4
    assert processes_per_node(None, distributed=False, device="auto", gpus=4) == 1
    assert processes_per_node(None, distributed=True, device="cpu", gpus=4) == 1
    assert processes_per_node(None, distributed=True, device="cuda:1", gpus=4) == 1  # the GPU asked for
