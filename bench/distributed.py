"""1 -> N process scaling of one training run (PyTorch DDP), written up in bench/distributed.md.

Trains the same model on the same data as one process and as N processes (``visionsweep train
--nproc-per-node N``), with the same images per optimizer step (one process: batch B; N processes: B / N
each), in turn, and reads each run's metrics.jsonl: the training seconds of every epoch after the first
(the first pays for start-up and, on a GPU, kernel selection). Scaling efficiency = (1-process seconds /
N-process seconds) / N: 1.0 is perfect, and on a CPU the N processes share the same cores.

    python bench/distributed.py                       # resnet18 on the fridge objects, CPU, 2 processes
    python bench/distributed.py --model yolov5 --processes 4 --device cuda   # a GPU machine
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CLASSIFICATION = DATASETS / "fridgeObjects_cls" / "mltable_cls_train"
DETECTION = DATASETS / "odFridgeObjects_FairMOTformat" / "mltable_od_train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="resnet18, resnet50 or yolov5 (default: %(default)s)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32, help="images per optimizer step, over all processes")
    parser.add_argument("--size", type=int, default=128, help="crop size (classification) or img_size (yolov5)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating")
    args = parser.parse_args()
    detection = args.model == "yolov5"
    settings = {"model_name": args.model, "pretrained": False, "number_of_epochs": args.epochs, "num_workers": 2,
                "seed": 0, "device": args.device, "early_stopping": False, "export_onnx": False,
                "save_mlflow": False, "validation_batch_size": 32}
    if detection:
        settings.update(img_size=args.size, model_size="small")
    else:
        settings.update(train_crop_size=args.size, valid_crop_size=args.size, valid_resize_size=args.size)
    task, data = ("image_object_detection", DETECTION) if detection else ("image_classification", CLASSIFICATION)
    cores = os.cpu_count() or 1
    seconds: dict[int, list[float]] = {1: [], args.processes: []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for processes in (1, args.processes):
                run = Path(folder) / f"run-{processes}-{repeat}"
                per_process = {**settings, "training_batch_size": args.batch // processes}
                command = [sys.executable, "-m", "visionsweep", "train", "--task", task, "--data", str(data),
                           "--output", str(run), "--no-progress", "--nproc-per-node", str(processes)]
                for key, value in per_process.items():
                    command += ["--set", f"{key}={value}"]
                # One process uses every core; N processes share them (torchrun would give each 1 thread).
                env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // processes)))
                started = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True, env=env)
                epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
                train_s = sum(e["train_duration_s"] for e in epochs[1:])
                seconds[processes].append(train_s)
                print(f"{processes} process(es), repeat {repeat + 1}: {train_s:.1f} s of training in epochs "
                      f"2-{args.epochs} ({time.perf_counter() - started:.0f} s in all)", flush=True)
    one, many = statistics.median(seconds[1]), statistics.median(seconds[args.processes])
    print(f"\nmedian: 1 process {one:.1f} s, {args.processes} processes {many:.1f} s; speed-up {one / many:.2f}x, "
          f"scaling efficiency {one / many / args.processes:.2f}")


if __name__ == "__main__":
    main()
