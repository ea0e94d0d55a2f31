"""Tiling on the aerial cars (1920 x 1080 drone photos, small vehicles): accuracy with and without tiles,
and the throughput of tiled inference against SAHI on the same model, tiles and images.

Two steps, because training on a CPU takes a while:

    python bench/tiling.py train --output /tmp/tiling-run            # train one detector with tiling
    python bench/tiling.py measure /tmp/tiling-run                    # accuracy and throughput

``train`` converts the YOLO labels, holds out every fifth image (sorted by name) as the test set, and
trains ``fasterrcnn_resnet18_fpn`` from scratch with a 3 x 2 grid (training on full images plus tiles
with objects). ``measure`` evaluates that one detector on the test images at the same ``min_size``
twice, without tiles (full image only) and with tiles (full image plus the 6 tiles, merged), reporting
VOC mAP and recall at IoU 0.5 and each mode's throughput; then it runs SAHI's ``get_sliced_prediction``
with the same network, the same six tiles (768 x 617 slices with 0.25 overlap land exactly on our
layout), the same pre-processing per slice, the full-image pass included and NMS merging at the same
IoU, and scores its output the same way. The modes take turns image by image (in an order
that rotates), over ``--repeat`` rounds, and the medians of the rounds' totals are compared as ratios,
since these machines are shared. SAHI (``pip install sahi``) is used here only.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "aerial-cars"
TEST_EVERY = 5


def split(converted: Path, folder: Path) -> tuple[Path, Path]:
    """Every fifth image (by name) to test.jsonl, the others to train.jsonl."""
    lines = sorted(converted.read_text().splitlines(), key=lambda line: json.loads(line)["image_url"])
    test = [line for i, line in enumerate(lines) if i % TEST_EVERY == TEST_EVERY - 1]
    train = [line for i, line in enumerate(lines) if i % TEST_EVERY != TEST_EVERY - 1]
    (folder / "train.jsonl").write_text("\n".join(train) + "\n")
    (folder / "test.jsonl").write_text("\n".join(test) + "\n")
    return folder / "train.jsonl", folder / "test.jsonl"


def train_detector(args: argparse.Namespace) -> None:
    from visionsweep.api import convert
    from visionsweep.training import train

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    convert("yolo", args.dataset, output / "all.jsonl")
    train_file, test_file = split(output / "all.jsonl", output)
    settings = {"model_name": "fasterrcnn_resnet18_fpn", "pretrained": False, "number_of_epochs": args.epochs,
                "min_size": args.min_size, "max_size": args.max_size, "tile_grid_size": "3x2",
                "tile_overlap_ratio": 0.25, "num_workers": args.workers, "seed": 0,
                "warmup_cosine_lr_warmup_epochs": 0, "early_stopping": False,
                "evaluation_frequency": args.epochs, "log_validation_loss": "Disable",
                "learning_rate": args.learning_rate}
    started = time.perf_counter()
    result = train("image_object_detection", train_file, test_file, settings=settings, output=output / "run",
                   progress=False, overwrite=True)  # a rerun of the benchmark replaces its run
    print(json.dumps({"run": str(result.run_dir), "best_score": result.best_score,
                      "train_minutes": round((time.perf_counter() - started) / 60, 1)}))


class _Preprocessed(torch.nn.Module):
    """Our trained network behind the input contract SAHI's torchvision wrapper uses: a list of float
    (3, H, W) images in [0, 1], boxes back in their pixels. The resize and normalisation are the ones
    visionsweep's loader applies (``prepare_image``), so both tools feed the network the same tensors."""

    def __init__(self, model: torch.nn.Module, min_size: int, max_size: int):
        super().__init__()
        self.model, self.min_size, self.max_size = model, min_size, max_size

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        from visionsweep.families.rcnn.transforms import prepare_image

        prepared, scales = [], []
        for image in images:
            height, width = image.shape[-2:]
            empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
            tensor, _ = prepare_image((image * 255).round().to(torch.uint8), empty, min_size=self.min_size,
                                      max_size=self.max_size, augment=False)
            prepared.append(tensor)
            scales.append(torch.tensor([width / tensor.shape[-1], height / tensor.shape[-2]] * 2))
        outputs = self.model(prepared)
        return [dict(o, boxes=o["boxes"] * scale) for o, scale in zip(outputs, scales)]


def _ours(trained, records, tiled: bool):
    """Predictions of visionsweep's own path (``detect``) in original pixels, and the seconds it took."""
    from visionsweep.data.report import DataReport
    from visionsweep.inference.detection import detect

    started = time.perf_counter()
    found = list(detect(trained, records, DataReport(source="bench")))
    seconds = time.perf_counter() - started
    predictions = []
    for item in found:
        (fw, fh), (ow, oh) = item.frame_size, item.original_size
        scale = torch.tensor([ow / fw, oh / fh] * 2)
        predictions.append({"boxes": item.predictions["boxes"] * scale, "scores": item.predictions["scores"],
                            "labels": item.predictions["labels"]})
    return predictions, seconds


def _sahi(sahi_model, records, label_offset: int, tiling):
    """SAHI's sliced prediction (slices equal to our tiles, full-image pass on, class-aware NMS at the
    same IoU) in original pixels, and the seconds it took (decoding included, as for ours)."""
    from sahi.predict import get_sliced_prediction

    from visionsweep.data.images import load_rgb

    started = time.perf_counter()
    predictions = []
    for record in records:
        image = np.asarray(load_rgb(record.image_path))
        height, width = image.shape[:2]
        first = tiling.layout(width, height)[0]
        result = get_sliced_prediction(
            image, sahi_model, slice_height=int(first.height), slice_width=int(first.width),
            overlap_height_ratio=tiling.overlap, overlap_width_ratio=tiling.overlap, perform_standard_pred=True,
            postprocess_type="NMS", postprocess_match_metric="IOU", postprocess_match_threshold=tiling.nms_threshold,
            postprocess_class_agnostic=False, verbose=0)
        objects = result.object_prediction_list
        predictions.append({
            "boxes": torch.tensor([o.bbox.to_xyxy() for o in objects], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor([o.score.value for o in objects], dtype=torch.float32),
            "labels": torch.tensor([o.category.id - label_offset for o in objects], dtype=torch.int64)})
    return predictions, time.perf_counter() - started


def _metrics(predictions, records, classes) -> dict[str, float]:
    from visionsweep.evaluation.detection import evaluate_detections

    index = {name: i for i, name in enumerate(classes)}
    truth = []
    for record in records:
        scale = np.array([record.width, record.height] * 2, dtype=np.float64)
        truth.append({"boxes": np.array([o.box for o in record.objects]).reshape(-1, 4) * scale,
                      "labels": np.array([index[o.label] for o in record.objects], dtype=np.int64),
                      "iscrowd": np.array([o.is_crowd for o in record.objects], dtype=bool)})
    metrics = evaluate_detections(predictions, truth, classes, metric_type="voc", iou_threshold=0.5)
    car = metrics["per_label_metrics"].get("car", {})
    return {"mAP": metrics["mean_average_precision"], "recall": metrics["recall"],
            "precision": metrics["precision"], "car_recall": car.get("recall"), "car_AP": car.get("average_precision"),
            "boxes_per_image": float(np.mean([len(p["scores"]) for p in predictions]))}


def measure(args: argparse.Namespace) -> None:
    from sahi.models.torchvision import TorchVisionDetectionModel

    from visionsweep.data.jsonl import read_labeled_data
    from visionsweep.data.tiling import Tiling
    from visionsweep.inference.model_folder import load_trained_model
    from visionsweep.models.detection import label_offset
    from visionsweep.tasks import Task

    run = Path(args.run)
    test_file = run.parent / "test.jsonl" if (run.parent / "test.jsonl").is_file() else Path(args.data)
    records = read_labeled_data(test_file, Task.OBJECT_DETECTION).records[:args.limit]
    overrides = {"num_workers": 0, "validation_batch_size": 1, "box_score_thresh": args.score_thresh}
    plain = load_trained_model(run, overrides={**overrides, "tile_grid_size": None})
    tiled = load_trained_model(run, overrides={**overrides, "tile_grid_size": "3x2", "tile_overlap_ratio": 0.25})
    tiling = Tiling.from_settings(tiled.settings)
    settings = plain.settings
    sahi_model = TorchVisionDetectionModel(
        model=_Preprocessed(plain.model, settings.min_size, settings.max_size), confidence_threshold=args.score_thresh,
        category_mapping={str(i): str(i) for i in range(len(plain.labels) + 1)}, device="cpu", load_at_init=True)
    modes = {"full image only": lambda chosen: _ours(plain, chosen, tiled=False),
             "visionsweep tiled": lambda chosen: _ours(tiled, chosen, tiled=True),
             "SAHI sliced": lambda chosen: _sahi(sahi_model, chosen, label_offset(plain.model_name), tiling)}
    names = list(modes)
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    results = {}
    with torch.no_grad():
        for round_ in range(args.repeat):
            # Image by image, the modes in an order that rotates with the image and the round, so that
            # changes in the load of this shared machine fall on every mode alike.
            took = dict.fromkeys(names, 0.0)
            found: dict[str, list] = {name: [] for name in names}
            for number, record in enumerate(records):
                shift = (round_ + number) % len(names)
                for name in names[shift:] + names[:shift]:
                    predictions, spent = modes[name]([record])
                    took[name] += spent
                    found[name].extend(predictions)
            for name in names:
                seconds[name].append(took[name])
                results[name] = _metrics(found[name], records, plain.labels)
                print(f"round {round_ + 1} {name}: {took[name]:.1f} s, {results[name]}", flush=True)
    rows = {name: {**results[name], "images_per_s": len(records) / statistics.median(seconds[name]),
                   "seconds": seconds[name]} for name in modes}
    sahi_rate = rows["SAHI sliced"]["images_per_s"]
    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                   f"torch {torch.__version__}", "images": len(records), "min_size": settings.min_size,
        "max_size": settings.max_size, "score_thresh": args.score_thresh, "modes": rows,
        "visionsweep tiled / SAHI (throughput)": rows["visionsweep tiled"]["images_per_s"] / sahi_rate,
        "visionsweep tiled / full image (throughput)": (rows["visionsweep tiled"]["images_per_s"]
                                                        / rows["full image only"]["images_per_s"]),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train")
    p.add_argument("--output", required=True)
    p.add_argument("--dataset", default=str(DATASET))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--min-size", type=int, default=320)
    p.add_argument("--max-size", type=int, default=576)
    p.add_argument("--learning-rate", type=float, default=0.01)
    p.add_argument("--workers", type=int, default=1)
    p = commands.add_parser("measure")
    p.add_argument("run", help="the run folder that 'train' wrote (its test.jsonl sits beside it)")
    p.add_argument("--data", help="labelled JSONL to measure on when no test.jsonl sits beside the run")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--limit", type=int, help="measure on the first N test images only")
    p.add_argument("--score-thresh", type=float, default=0.3)
    args = parser.parse_args()
    if args.command == "train":
        train_detector(args)
    else:
        measure(args)
