"""Benchmark: YOLOv5 small on the fridge images: training and inference throughput, and mAP from scratch.

``throughput`` times, for each img_size and on the same images, in one run:
  * visionsweep training: ``training.loop.fit`` over ``YoloFamily`` (mosaic + affine + flip in the
    loader, the family's loss, EMA update per step, SGD with the run's groups, clipping and schedule);
  * the plain alternative: the same network, loss, dataset and EMA in a bare loop (forward, loss,
    backward, clip, SGD step, EMA update);
  * visionsweep inference: ``inference.detection.predict_lines`` (the code behind ``visionsweep predict``) on
    a loaded model folder, each image in its own frame; plain inference: the network in eval mode plus
    ``postprocess`` on the img_size-square letterboxed batches of a bare DataLoader;
  * with ``--peer-python``: Ultralytics' ``yolov5s.yaml`` (its anchor-free "v5u" variant, 9.1 M
    parameters) trained and run by that interpreter, in its own process (AGPL code, never imported here).
  Training runs two epochs of batches of 16; the second is timed. Every loader has 0 workers (the peer
  forces 0 on a CPU) and torch runs ``--threads`` threads (default 1: on a shared 2-core machine more
  threads spin-wait and inflate even the CPU time), so the process CPU time covers all the work and is
  steadier than the wall time; both are reported. Each measurement runs ``--repeat`` times, the three
  contenders taking turns, and the run with the least CPU time is kept.

``accuracy`` trains from scratch for a fixed number of epochs on od_train (100 images) and scores the
28 od_val images with visionsweep's VOC evaluator at IoU 0.5 and score threshold 0.001, for visionsweep,
(with ``--peer-python``) the Ultralytics peer and (with ``--yolov5-python``) the ``yolov5`` package 7.0.14,
which packages the original anchor-based YOLOv5 repository (the architecture the reference uses), trained
with its own defaults; all run at the same time, one thread each, with the same ``--seed``.

Usage:
  python bench/yolo_throughput.py throughput [--sizes 320 640] [--train-images 32] [--repeat 2] [--peer-python PATH]
  python bench/yolo_throughput.py accuracy [--img-size 160] [--epochs 30] [--seed 0] [--peer-python PATH]
      [--yolov5-python PATH] [--reference-recipe] [--recipe FIELD=VALUE ...] [--set KEY=VALUE ...]
  python bench/yolo_throughput.py frames --run RUN_FOLDER

``frames`` compares a trained run's boxes on the validation images in each image's own frame (as visionsweep
predicts) with those in the img_size square (the reference's letterbox).

The ablations of bench/yolo_throughput.md are ``accuracy`` runs with one ``--recipe`` field (the YOLOv5
family's ``YoloRecipe``) or ``--set`` setting changed from the reference's recipe (``--reference-recipe``).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.ops import box_iou

from visionsweep import model_catalog
from visionsweep.api import evaluate
from visionsweep.data.jsonl import read_labeled_data
from visionsweep.data.report import DataReport
from visionsweep.families.yolo.pipeline import (
    YoloDataset, YoloTrainTransform, letterbox_for_inference, load_sample, yolo_collate,
)
from visionsweep.families.selection import FAMILIES, family_for
from visionsweep.families.yolo import YoloFamily
from visionsweep.families.yolo.recipe import DEFAULT_RECIPE, REFERENCE_RECIPE
from visionsweep.inference import detection as detection_inference
from visionsweep.inference.model_folder import load_trained_model
from visionsweep.inference.predictor import Predictor
from visionsweep.geometry.yolo_boxes import postprocess
from visionsweep.models import build_model, get_model_spec
from visionsweep.models.yolo import ModelEMA, YoloLoss, build_yolov5
from visionsweep.settings import resolve_settings
from visionsweep.tasks import Task
from visionsweep.training import train
from visionsweep.checkpoint import save_checkpoint
from visionsweep.training.loop import LoopConfig, fit
from visionsweep.training.optim import build_optimizer
from visionsweep.training.schedulers import Schedule

FRIDGE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "odFridgeObjects_FairMOTformat"
OD = Task.OBJECT_DETECTION
BATCH = 16
CPU = torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("throughput", "accuracy", "frames"))
    parser.add_argument("--data", type=Path, default=FRIDGE)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--train-images", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--peer-python", help="a Python interpreter with ultralytics installed")
    parser.add_argument("--yolov5-python", help="accuracy: a Python interpreter with the yolov5 package (7.0.14) "
                                                "installed: the original YOLOv5 repository's anchor-based model")
    parser.add_argument("--seed", type=int, default=0, help="accuracy: the seed of every contender")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", type=_setting,
                        help="accuracy: a visionsweep setting for this run (VALUE read as JSON, else as text), "
                             "for ablations: --set optimizer=adamw learning_rate=0.001")
    parser.add_argument("--recipe", nargs="+", default=[], metavar="FIELD=VALUE", type=_setting,
                        help="accuracy: a field of the YOLOv5 family's recipe (DEFAULT_RECIPE) for this run, for "
                             "ablations: "
                             "--recipe close_mosaic_epochs=10 hsv_gains=[0.015,0.7,0.4]")
    parser.add_argument("--reference-recipe", action="store_true",
                        help="accuracy: start from the reference's recipe (REFERENCE_RECIPE) instead of the family's")
    parser.add_argument("--run", type=Path, help="frames: a trained yolov5 run folder (an accuracy run's --work "
                                                  "folder holds one: visionsweep_run)")
    parser.add_argument("--work", type=Path, help="folder for runs and converted data (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        result = {"throughput": throughput, "accuracy": accuracy, "frames": frames}[args.mode](args, work)
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                         "torch": torch.__version__, "threads": args.threads, "load_average": os.getloadavg()}
    print(json.dumps(result, indent=2))


# --- throughput ----------------------------------------------------------------------------------------


def throughput(args: argparse.Namespace, work: Path) -> dict:
    train_file = _subset(args.data / "od_train.jsonl", args.train_images, work / "train.jsonl")
    val_file = _subset(args.data / "od_val.jsonl", 28, work / "val.jsonl")
    results = {"train_images": args.train_images, "val_images": 28, "batch": BATCH, "repeat": args.repeat,
               "sizes": {}}
    peer_data = _peer_dataset(work / "peer", train_file, val_file) if args.peer_python else None
    for size in args.sizes:
        model_dir = _untrained_model_folder(work / f"model{size}", size)
        contenders = {
            "train_visionsweep": lambda: _train_visionsweep(train_file, size),
            "train_bare": lambda: _train_bare(train_file, size),
            "predict_visionsweep": lambda: _predict_visionsweep(model_dir, val_file),
            "predict_bare": lambda: _predict_bare(val_file, size),
        }
        if args.peer_python:
            options = {"mode": "throughput", "data": str(peer_data), "imgsz": size, "batch": BATCH,
                       "project": str(work / "peer_runs"), "threads": args.threads,
                       "val_images": str(peer_data.parent / "val" / "images")}
            contenders["peer"] = lambda: _run_peer(args.peer_python, options)
        runs: dict[str, list[dict]] = {name: [] for name in contenders}
        for _ in range(args.repeat):  # the contenders take turns, so a busy spell hits them all
            for name, measure in contenders.items():
                runs[name].append(measure())
        row = {name: min(found, key=_cpu_seconds) for name, found in runs.items()}
        for kind in ("train", "predict"):
            ours, bare = row[f"{kind}_visionsweep"], row[f"{kind}_bare"]
            row[f"{kind}_ratio_wall"] = round(ours["images_per_s"] / bare["images_per_s"], 3)
            row[f"{kind}_ratio_cpu"] = round(ours["images_per_cpu_s"] / bare["images_per_cpu_s"], 3)
        results["sizes"][size] = row
        print(json.dumps({size: row}), file=sys.stderr)
    return results


def _train_visionsweep(train_file: Path, size: int) -> dict:
    settings = _settings(size, number_of_epochs=2)
    data = read_labeled_data(train_file, OD)
    torch.manual_seed(0)
    model = build_model(get_model_spec("yolov5"), len(data.classes), settings.model_dump(), pretrained=False,
                        pretrained_weights=None, layers_to_freeze=None)
    family = family_for(settings, data.classes, CPU, _fail)
    train_loader = family.training_loaders(data.records, data.records).train
    optimizer = build_optimizer(model, "sgd", learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
                                momentum=settings.momentum, nesterov=True, beta1=0.9, beta2=0.999, amsgrad=False)
    schedule = Schedule(optimizer, settings.lr_scheduler, steps_per_epoch=len(train_loader), epochs=2,
                        warmup_epochs=settings.warmup_cosine_lr_warmup_epochs, cycles=settings.warmup_cosine_lr_cycles,
                        step_size=settings.step_lr_step_size, gamma=settings.step_lr_gamma)
    config = LoopConfig(number_of_epochs=2, primary_metric="mean_average_precision", early_stopping=False,
                        progress=False)
    marks = [(time.perf_counter(), time.process_time())]
    # No validation images: the loop still "evaluates" (nothing), so the epoch times are training alone.
    fit(model, family, train_loader, [], optimizer, schedule, config, device=CPU,
        on_epoch_end=lambda report, kept: marks.append((time.perf_counter(), time.process_time())) and False)
    return _rate(len(data.records), marks[2][0] - marks[1][0], marks[2][1] - marks[1][1])


def _train_bare(train_file: Path, size: int) -> dict:
    data = read_labeled_data(train_file, OD)
    torch.manual_seed(0)
    model = build_yolov5(len(data.classes), "small")
    dataset = YoloDataset(data.records, data.classes, size, YoloTrainTransform(size))
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0, collate_fn=yolo_collate)
    loss_fn = YoloLoss(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    ema = ModelEMA(model)
    timed = None
    for epoch in range(2):
        model.train()
        started = (time.perf_counter(), time.process_time())
        for images, targets, _ in loader:
            loss, _ = loss_fn(model(images.float() / 255), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), 5.0)
            optimizer.step()
            ema.update(model)
        timed = (time.perf_counter() - started[0], time.process_time() - started[1])
    return _rate(len(data.records), *timed)


def _untrained_model_folder(folder: Path, size: int) -> Path:
    """A model folder holding a freshly initialised network: weights do not change the cost of inference."""
    settings = _settings(size)
    model = build_yolov5(4, "small")
    save_checkpoint(folder / "model.pt", model=model, task=OD.value, model_name="yolov5",
                    labels=["can", "carton", "milk_bottle", "water_bottle"], settings=settings.to_dict(), epoch=0,
                    score=None, metrics={})
    return folder


def _predict_visionsweep(model_dir: Path, val_file: Path) -> dict:
    """``predict_lines`` with its Predictor built (the network fused) before the clock starts, as a server
    does once: the steady state, as the peer's repeated predict calls measure it."""
    trained = load_trained_model(model_dir, device="cpu")
    records = read_labeled_data(val_file, OD).records
    predictor = Predictor(trained, records, DataReport(source="bench"))
    started = (time.perf_counter(), time.process_time())
    lines = [detection_inference.prediction_line(records[found.index].image_url, found.predictions, trained.labels,
                                                 found.frame_size) for found in predictor]
    return _rate(len(lines), time.perf_counter() - started[0], time.process_time() - started[1])


def _predict_bare(val_file: Path, size: int) -> dict:
    data = read_labeled_data(val_file, OD)
    model = build_yolov5(4, "small").eval()
    loader = DataLoader(YoloDataset(data.records, data.classes, size), batch_size=BATCH, num_workers=0,
                        collate_fn=yolo_collate)
    started = (time.perf_counter(), time.process_time())
    count = 0
    with torch.no_grad():
        for images, _, infos in loader:
            decoded, _ = model(images.float() / 255)
            count += len(postprocess(decoded, score_thresh=0.1, iou_thresh=0.5, letterbox=infos))
    return _rate(count, time.perf_counter() - started[0], time.process_time() - started[1])


# --- accuracy ------------------------------------------------------------------------------------------


def accuracy(args: argparse.Namespace, work: Path) -> dict:
    train_file = _subset(args.data / "od_train.jsonl", 100, work / "train.jsonl")
    val_file = _subset(args.data / "od_val.jsonl", 28, work / "val.jsonl")
    result = {"img_size": args.img_size, "epochs": args.epochs, "train_images": 100, "val_images": 28}
    result["seed"] = args.seed
    result["settings"] = dict(args.set)
    base = REFERENCE_RECIPE if args.reference_recipe else DEFAULT_RECIPE
    recipe = dataclasses.replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in args.recipe})
    result["recipe"] = dataclasses.asdict(recipe)
    FAMILIES[model_catalog.YOLOV5] = functools.partial(YoloFamily, recipe=recipe)
    peers = {}
    for name, python, program in (("peer", args.peer_python, _PEER_PROGRAM),
                                  ("yolov5_package", args.yolov5_python, _YOLOV5_PACKAGE_PROGRAM)):
        if python:  # each peer trains in its own process while visionsweep trains in this one
            peer_data = _peer_dataset(work / "peer", train_file, val_file)
            peers[name] = _start_peer(python, {
                "mode": "accuracy", "data": str(peer_data), "imgsz": args.img_size, "batch": BATCH,
                "epochs": args.epochs, "project": str(work / f"{name}_runs"), "threads": 1, "seed": args.seed,
                "val_images": str(peer_data.parent / "val" / "images"),
                "predictions": str(work / f"{name}_predictions.jsonl")}, program)
    torch.set_num_threads(1)
    started = time.perf_counter()
    run = train(OD, train_file, val_file, output=work / "visionsweep_run", progress=False, overwrite=True,
                settings=_settings(args.img_size, number_of_epochs=args.epochs, early_stopping=False,
                                   validation_metric_type="coco_voc", seed=args.seed, **dict(args.set)))
    ours = {"train_wall_s": round(time.perf_counter() - started, 1), "best_epoch": run.best_epoch,
            "best_validation_map50_at_0.1": run.best_score}
    epochs = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    ours["last_validation_map50_at_0.1"] = epochs[-1]["validation"]["mean_average_precision"]
    metrics, _ = evaluate(run.run_dir, data=val_file, settings={"box_score_thresh": 0.001})
    ours.update(voc_map50=metrics["mean_average_precision"], coco_ap50=metrics["coco_metrics"]["AP50"],
                coco_ap=metrics["coco_metrics"]["AP"])
    result["visionsweep"] = ours
    for name, process in peers.items():
        peer_result = _finish_peer(process)
        if "error" not in peer_result:
            scored, _ = evaluate(data=val_file, task=OD, predictions=work / f"{name}_predictions.jsonl")
            peer_result["voc_map50_by_visionsweep"] = scored["mean_average_precision"]
        result[name] = peer_result
    return result


# --- frames ----------------------------------------------------------------------------------------------


def frames(args: argparse.Namespace, work: Path) -> dict:
    """A trained model's boxes on the validation images in each image's own frame (as visionsweep predicts)
    against the img_size square (``letterbox_for_inference``, the reference's): the largest coordinate
    difference of matched boxes in original pixels, and the mAP of both."""
    val_file = _subset(args.data / "od_val.jsonl", 28, work / "val.jsonl")
    trained = load_trained_model(args.run / "model", device="cpu")
    records = read_labeled_data(val_file, OD).records
    family = family_for(trained.settings, trained.labels, trained.device, _fail)
    model = family.inference_model(trained.model).eval()
    size, classes = trained.settings.img_size, {name: i for i, name in enumerate(trained.labels)}
    with torch.no_grad():
        in_frames = {p.index: p.predictions for p in family.predict(model, family.prediction_loader(records))}
    differences, input_differences, unmatched, lines = [], [], 0, []
    for index, record in enumerate(records):
        square, info = letterbox_for_inference(load_sample(record, classes), size)
        with torch.no_grad():
            decoded, _ = model(torch.from_numpy(square.image.transpose(2, 0, 1).copy())[None].float() / 255)
        (found,) = postprocess(decoded, score_thresh=0.001, iou_thresh=trained.settings.nms_iou_thresh,
                               letterbox=[info])
        lines.append(detection_inference.prediction_line(record.image_url, found._asdict(), trained.labels,
                                                         info.original_size))
        confident = found.scores > 0.25
        theirs = in_frames[index]
        for box, label in zip(found.boxes[confident], found.labels[confident]):
            same = theirs["boxes"][(theirs["labels"] == label) & (theirs["scores"] > 0.1)]
            if not len(same):
                unmatched += 1
                continue
            iou = box_iou(box[None], same)[0]
            if iou.max() < 0.5:
                unmatched += 1
                continue
            differences.append(float((same[iou.argmax()] - box).abs().max()))
            input_differences.append(differences[-1] * info.scale[0])  # in pixels of the network input
    predictions = work / "square_predictions.jsonl"
    predictions.write_text("".join(json.dumps(line) + "\n" for line in lines))
    square_map, _ = evaluate(data=val_file, task=OD, predictions=predictions)
    frame_map, _ = evaluate(args.run, data=val_file, settings={"box_score_thresh": 0.001})
    spread, in_input = np.array(differences), np.array(input_differences)
    return {"run": str(args.run), "img_size": size, "boxes_above_0.25": len(differences) + unmatched,
            "unmatched": unmatched, "max_difference_px": round(float(spread.max()), 3),
            "median_difference_px": round(float(np.median(spread)), 3),
            "share_within_1px": round(float((spread < 1.0).mean()), 3),
            "share_within_1_input_px": round(float((in_input < 1.0).mean()), 3),
            "quantiles_90_99_px": [round(float(q), 2) for q in np.quantile(spread, [0.9, 0.99])],
            "voc_map50_frames": frame_map["mean_average_precision"],
            "voc_map50_square": square_map["mean_average_precision"]}


# --- helpers ---------------------------------------------------------------------------------------------


def _settings(size: int, **values):
    return resolve_settings(OD, {"model_name": "yolov5", "model_size": "small", "pretrained": False,
                                 "img_size": size, "training_batch_size": BATCH, "validation_batch_size": BATCH,
                                 "num_workers": 0, "seed": 0, **values})


def _setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE; got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _subset(source: Path, count: int, output: Path) -> Path:
    lines = [json.loads(line) for line in source.read_text().splitlines() if line.strip()][:count]
    for line in lines:
        line["image_url"] = str(source.parent / line["image_url"])
    output.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return output


def _rate(images: int, wall: float, cpu: float) -> dict:
    return {"images": images, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "images_per_s": round(images / wall, 3), "images_per_cpu_s": round(images / cpu, 3)}


def _cpu_seconds(run: dict) -> float:
    """CPU time of a measurement (the peer's: of its training and prediction together)."""
    if "cpu_s" in run:
        return run["cpu_s"]
    return sum(part["cpu_s"] for part in run.values() if isinstance(part, dict) and "cpu_s" in part)


def _fail(failures, stage):
    raise RuntimeError(f"{stage} images could not be read: {failures}")


def _peer_dataset(folder: Path, train_file: Path, val_file: Path) -> Path:
    """The same images in the YOLO txt layout the peer reads (links to the images, class cx cy w h lines)."""
    classes = ["can", "carton", "milk_bottle", "water_bottle"]
    for split, jsonl in (("train", train_file), ("val", val_file)):
        (folder / split / "images").mkdir(parents=True, exist_ok=True)
        (folder / split / "labels").mkdir(parents=True, exist_ok=True)
        for line in (json.loads(text) for text in jsonl.read_text().splitlines()):
            image = Path(line["image_url"])
            link = folder / split / "images" / image.name
            if not link.exists():
                link.symlink_to(image)
            rows = [f"{classes.index(o['label'])} {(o['topX'] + o['bottomX']) / 2:.6f} "
                    f"{(o['topY'] + o['bottomY']) / 2:.6f} {o['bottomX'] - o['topX']:.6f} {o['bottomY'] - o['topY']:.6f}"
                    for o in line["label"]]
            (folder / split / "labels" / f"{image.stem}.txt").write_text("\n".join(rows) + "\n")
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(classes))
    (folder / "data.yaml").write_text(f"path: {folder}\ntrain: train/images\nval: val/images\nnames:\n{names}")
    return folder / "data.yaml"


def _start_peer(python: str, options: dict, program: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, YOLO_OFFLINE="1", YOLO_CONFIG_DIR=str(Path(options["project"]) / "config"),
               OMP_NUM_THREADS=str(options.get("threads", 1)))
    log = Path(options["project"]) / "peer.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([python, "-c", program or _PEER_PROGRAM, json.dumps(options)], env=env,
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True)


def _finish_peer(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode:
        return {"error": f"the peer exited with status {process.returncode}"}
    return json.loads(out.strip().splitlines()[-1])


def _run_peer(python: str, options: dict) -> dict:
    return _finish_peer(_start_peer(python, options))


# Run by the peer's interpreter: Ultralytics builds "yolov5s.yaml" from scratch, trains, predicts; prints JSON.
_PEER_PROGRAM = r'''
import json, sys, time
from pathlib import Path
import torch
options = json.loads(sys.argv[1])
from ultralytics import YOLO
torch.set_num_threads(options.get("threads", 1))  # after the import, which sets its own count
model = YOLO("yolov5s.yaml")
marks = {}
def mark(name):
    def record(trainer):
        marks.setdefault(name, []).append((time.perf_counter(), time.process_time()))
    return record
model.add_callback("on_train_epoch_start", mark("start"))
model.add_callback("on_train_epoch_end", mark("end"))
common = dict(data=options["data"], imgsz=options["imgsz"], batch=options["batch"], device="cpu", workers=0,
              pretrained=False, amp=False, plots=False, project=options["project"], exist_ok=True, verbose=False,
              seed=options.get("seed", 0))
images = sorted(str(p) for p in Path(options["val_images"]).iterdir())
result = {"parameters": sum(p.numel() for p in model.model.parameters())}
if options["mode"] == "throughput":
    model.train(epochs=2, val=False, close_mosaic=0, name="throughput", **common)
    (start_wall, start_cpu), (end_wall, end_cpu) = marks["start"][1], marks["end"][1]
    count = len(list(Path(options["data"]).parent.joinpath("train", "images").iterdir()))
    result["train"] = {"images": count, "wall_s": round(end_wall - start_wall, 2), "cpu_s": round(end_cpu - start_cpu, 2),
                       "images_per_s": round(count / (end_wall - start_wall), 3),
                       "images_per_cpu_s": round(count / (end_cpu - start_cpu), 3)}
    best = None
    for _ in range(2):
        wall, cpu = time.perf_counter(), time.process_time()
        model.predict(images, imgsz=options["imgsz"], batch=options["batch"], device="cpu", verbose=False)
        run = (time.perf_counter() - wall, time.process_time() - cpu)
        best = run if best is None or run[1] < best[1] else best
    result["predict"] = {"images": len(images), "wall_s": round(best[0], 2), "cpu_s": round(best[1], 2),
                         "images_per_s": round(len(images) / best[0], 3),
                         "images_per_cpu_s": round(len(images) / best[1], 3)}
else:
    started = time.perf_counter()
    metrics = model.train(epochs=options["epochs"], val=False, name="accuracy", **common)
    result["train_wall_s"] = round(time.perf_counter() - started, 1)
    result["own_map50"] = float(metrics.results_dict["metrics/mAP50(B)"]) if metrics else None
    result["own_map50_95"] = float(metrics.results_dict["metrics/mAP50-95(B)"]) if metrics else None
    names = model.names
    with open(options["predictions"], "w") as out:
        for found in model.predict(images, imgsz=options["imgsz"], conf=0.001, device="cpu", verbose=False,
                                   stream=True):
            boxes = [{"box": dict(zip(("topX", "topY", "bottomX", "bottomY"), map(float, box))),
                      "label": names[int(label)], "score": float(score)}
                     for box, label, score in zip(found.boxes.xyxyn.tolist(), found.boxes.cls.tolist(),
                                                  found.boxes.conf.tolist())]
            out.write(json.dumps({"filename": str(Path(found.path).resolve()), "boxes": boxes}) + "\n")
print(json.dumps(result))
'''


# Run by the yolov5 package's interpreter (the original repository, release 7.0, packaged): yolov5s.yaml from
# scratch with its own defaults (hyp.scratch-low, autoanchor, its EMA and best-fitness checkpoint), then
# predictions of its best.pt at confidence 0.001; prints JSON. It checks for a font file, which it would
# download (no network here): matplotlib's DejaVu Sans stands in for it (only labels are drawn with it).
# NumPy 2 (which its pandas needs) renamed trapz, which its AP code calls: the new name stands in. Its code
# reloads its own checkpoints as pickled objects, which torch >= 2.6 refuses by default: allowed here, in the
# peer's own process, for the files it has just written (visionsweep never loads them).
_YOLOV5_PACKAGE_PROGRAM = r'''
import json, os, shutil, sys, time
from pathlib import Path
os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
import matplotlib
import numpy
import torch
numpy.trapz = getattr(numpy, "trapz", None) or numpy.trapezoid
options = json.loads(sys.argv[1])
config = Path(options["project"]) / "config"
config.mkdir(parents=True, exist_ok=True)
os.environ["YOLOV5_CONFIG_DIR"] = str(config)
shutil.copyfile(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", config / "Arial.ttf")
torch.set_num_threads(options.get("threads", 1))
import yolov5
from yolov5 import train as yolov5_train
started = time.perf_counter()
yolov5_train.run(data=options["data"], cfg="yolov5s.yaml", weights="", epochs=options["epochs"],
                 imgsz=options["imgsz"], batch_size=options["batch"], device="cpu", workers=0,
                 project=options["project"], name="accuracy", exist_ok=True, noplots=True, seed=options.get("seed", 0))
result = {"train_wall_s": round(time.perf_counter() - started, 1), "yolov5_version": yolov5.__version__}
model = yolov5.load(str(Path(options["project"]) / "accuracy" / "weights" / "best.pt"), device="cpu")
model.conf, model.iou, model.max_det = 0.001, 0.6, 300
result["parameters"] = sum(p.numel() for p in model.parameters())
names = model.names
images = sorted(str(p) for p in Path(options["val_images"]).iterdir())
with open(options["predictions"], "w") as out:
    for path in images:
        found = model(path, size=options["imgsz"]).xyxyn[0].tolist()
        boxes = [{"box": dict(zip(("topX", "topY", "bottomX", "bottomY"), row[:4])), "label": names[int(row[5])],
                  "score": row[4]} for row in found]
        out.write(json.dumps({"filename": str(Path(path).resolve()), "boxes": boxes}) + "\n")
print(json.dumps(result))
'''


if __name__ == "__main__":
    main()
