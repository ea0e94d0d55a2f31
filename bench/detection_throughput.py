"""Benchmark: training and inference throughput of fasterrcnn_resnet18_fpn on the fridge images.

For each min_size, in one run and on the same images, it times:
  * visionsweep training: ``training.loop.fit`` for one epoch over the ``image_object_detection`` pipeline
    (DetectionDataset with resize and normalisation in the loader, collation, RcnnFamily, SGD with the
    run's clipping and schedule); once without and once with the reference's augmentations;
  * the plain alternative: the same torchvision Faster R-CNN ResNet-18 FPN (frozen batch norm, layer2-4
    trainable) fed PIL images turned into tensors, with torchvision's own resize and normalisation
    inside the model, in a bare loop of forward, summed losses, backward and an SGD step;
  * visionsweep inference: ``inference.predictor.Predictor`` (the code behind ``visionsweep predict``);
  * plain inference: the torchvision model in eval mode on the same tensors.
Both models are built from scratch (no download); weights do not change the cost. Training runs
batches of 2 images (the reference's default), inference batches of 2. Each measurement is repeated
and the best (lowest CPU time) kept, so the first repeat doubles as a warm-up.

Usage: python bench/detection_throughput.py [--images 8] [--sizes 320 600] [--repeat 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.transforms.functional import pil_to_tensor

from visionsweep.data.images import load_rgb
from visionsweep.data.jsonl import read_labeled_data
from visionsweep.data.report import DataReport
from visionsweep.families.selection import family_for
from visionsweep.inference.predictor import Predictor
from visionsweep.inference.model_folder import TrainedModel
from visionsweep.models import create_model
from visionsweep.settings import resolve_settings
from visionsweep.tasks import Task
from visionsweep.training.loop import LoopConfig, fit
from visionsweep.training.optim import build_optimizer
from visionsweep.training.schedulers import Schedule

FRIDGE = Path(os.environ.get("VISIONSWEEP_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets")
              ) / "odFridgeObjects_FairMOTformat" / "od_train.jsonl"
CPU = torch.device("cpu")


def timed(function) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    function()
    return time.process_time() - cpu, time.perf_counter() - wall


def best(function, repeat: int) -> tuple[float, float]:
    return min((timed(function) for _ in range(repeat)), key=lambda t: t[0])


def ours_training(records, classes, min_size: int, augment: bool):
    settings = resolve_settings(Task.OBJECT_DETECTION, {
        "model_name": "fasterrcnn_resnet18_fpn", "pretrained": False, "min_size": min_size, "max_size": 1333,
        "num_workers": 0, "seed": 0, "validation_metric_type": "none", "apply_automl_train_augmentations": augment})
    model = create_model("fasterrcnn_resnet18_fpn", len(classes), pretrained=False, min_size=min_size, max_size=1333)
    family = family_for(settings, classes, CPU, None)
    loaders = family.training_loaders(records, records[:1])
    train_loader, val_loader = loaders.train, loaders.validation
    optimizer = build_optimizer(model, "sgd", learning_rate=0.005, weight_decay=1e-4, momentum=0.9, nesterov=True,
                                beta1=0.9, beta2=0.999, amsgrad=False)
    config = LoopConfig(number_of_epochs=1, primary_metric="mean_average_precision", early_stopping=False,
                        progress=False)

    def run():
        schedule = Schedule(optimizer, "warmup_cosine", steps_per_epoch=len(train_loader), epochs=1, warmup_epochs=0,
                            cycles=0.45, step_size=5, gamma=0.5)
        fit(model, family, train_loader, val_loader, optimizer, schedule, config, device=CPU)
    return model, run


def plain_model(num_classes: int, min_size: int) -> FasterRCNN:
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    return FasterRCNN(backbone, num_classes=num_classes + 1, min_size=min_size, max_size=1333, box_score_thresh=0.3,
                      box_nms_thresh=0.5, box_detections_per_img=100)


class PlainDataset(torch.utils.data.Dataset):
    def __init__(self, records, classes):
        self.records, self.index = records, {name: i for i, name in enumerate(classes)}

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        record = self.records[i]
        image = pil_to_tensor(load_rgb(record.image_path)).float() / 255
        height, width = image.shape[-2:]
        boxes = torch.tensor([o.box for o in record.objects]).reshape(-1, 4) * torch.tensor([width, height] * 2)
        return image, {"boxes": boxes, "labels": torch.tensor([self.index[o.label] + 1 for o in record.objects])}


def plain_training(records, classes, min_size: int):
    model = plain_model(len(classes), min_size)
    loader = DataLoader(PlainDataset(records, classes), batch_size=2, shuffle=True, collate_fn=lambda b: tuple(zip(*b)))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005, momentum=0.9,
                                nesterov=True, weight_decay=1e-4)

    def run():
        model.train()
        for images, targets in loader:
            loss = sum(model(list(images), list(targets)).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 600])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = read_labeled_data(FRIDGE, Task.OBJECT_DETECTION)
    records, classes = data.records[:args.images], data.classes
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({args.threads} threads), torchvision {torchvision.__version__}; {len(records)} fridge images "
          f"(499x666), load average {os.getloadavg()[0]:.1f}")
    print("| min_size | what | CPU s | wall s | images/s (CPU) | plain CPU / ours CPU |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        torch.manual_seed(0)
        rows = []
        # training: epochs over the same images (the first repeat also warms up; the best one counts)
        for name, make in (("plain torchvision loop", lambda: plain_training(records, classes, size)),
                           ("visionsweep fit, no augmentation", lambda: ours_training(records, classes, size, False)),
                           ("visionsweep fit, augmentations", lambda: ours_training(records, classes, size, True))):
            model, run = make()
            rows.append((f"train: {name}", *best(run, args.repeat), model))
        plain_train = rows[0][1]
        # inference with the trained models of the rows above
        plain = rows[0][3].eval()
        tensors = [pil_to_tensor(load_rgb(r.image_path)).float() / 255 for r in records]

        def plain_predict():
            with torch.no_grad():
                for start in range(0, len(tensors), 2):
                    plain(tensors[start:start + 2])

        settings = resolve_settings(Task.OBJECT_DETECTION, {
            "model_name": "fasterrcnn_resnet18_fpn", "min_size": size, "max_size": 1333, "num_workers": 0,
            "validation_batch_size": 2})
        trained = TrainedModel(Task.OBJECT_DETECTION, "fasterrcnn_resnet18_fpn", classes, settings,
                               rows[1][3].eval(), CPU, Path("-"))
        def ours_predict():
            for _ in Predictor(trained, records, DataReport(source="bench")):
                pass

        plain_predict()  # warm-up
        rows.append(("predict: plain torchvision (model resizes)", *best(plain_predict, args.repeat), None))
        rows.append(("predict: visionsweep detect (loader resizes)", *best(ours_predict, args.repeat), None))
        plain_predict_cpu = rows[3][1]
        for name, cpu, wall, _ in rows:
            reference = plain_train if name.startswith("train") else plain_predict_cpu
            print(f"| {size} | {name} | {cpu:.2f} | {wall:.2f} | {len(records) / cpu:.3f} | {reference / cpu:.2f} |")


if __name__ == "__main__":
    main()
