"""Training throughput of ResNet-18 on the fridge images: visionsweep against a bare PyTorch loop.

Both train from scratch on the same images, with the same batch size, transforms, worker count and
optimizer; the first epoch of each is a warm-up and is not timed. The two alternate, repeat times
each, and the medians are compared as a ratio (visionsweep / bare), since these machines are shared.

    python bench/classification_throughput.py --epochs 3 --repeat 2 --copies 8
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from visionsweep.families.classification.transforms import training_transform
from visionsweep.training import train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fridgeObjects_cls" / "cls_train.jsonl"


class _Images(Dataset):
    def __init__(self, jsonl: Path, crop: int):
        lines = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        self.paths = [jsonl.parent / line["image_url"] for line in lines]
        classes = sorted({line["label"] for line in lines})
        self.targets = [classes.index(line["label"]) for line in lines]
        self.num_classes = len(classes)
        self.transform = training_transform(crop)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.targets[i]


def bare_loop(data: Path, *, epochs: int, batch_size: int, crop: int, workers: int, device: torch.device) -> list[float]:
    """Images per second of each epoch after the first."""
    dataset = _Images(data, crop)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    model = torchvision.models.resnet18(num_classes=dataset.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    criterion = nn.CrossEntropyLoss()
    rates = []
    for epoch in range(epochs):
        model.train()
        started = time.perf_counter()
        for images, targets in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if epoch > 0:
            rates.append(len(dataset) / (time.perf_counter() - started))
    return rates


def through_visionsweep(data: Path, *, epochs: int, batch_size: int, crop: int, workers: int,
                        device: torch.device) -> list[float]:
    with tempfile.TemporaryDirectory() as folder:
        result = train("image_classification", data, data, output=folder, progress=False, settings={
            "model_name": "resnet18", "pretrained": False, "number_of_epochs": epochs,
            "training_batch_size": batch_size, "validation_batch_size": batch_size, "train_crop_size": crop,
            "num_workers": workers, "device": str(device), "early_stopping": False, "evaluation_frequency": 1000,
            "seed": 0})
        lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        images = sum(1 for line in (result.run_dir / "train.jsonl").read_text().splitlines() if line.strip())
    return [images / line["train_duration_s"] for line in lines[1:]]


def replicate(data: Path, copies: int, folder: Path) -> Path:
    """A JSONL file listing ``copies`` copies of every image (as distinct files), for longer epochs."""
    lines = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    out = []
    for copy in range(copies):
        for line in lines:
            source = data.parent / line["image_url"]
            target = folder / f"{copy}_{source.name}"
            shutil.copyfile(source, target)
            out.append({"image_url": target.name, "label": line["label"]})
    (folder / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in out))
    return folder / "data.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--copies", type=int, default=8, help="copies of each image, so an epoch has many batches")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    options = dict(epochs=args.epochs, batch_size=args.batch_size, crop=args.crop, workers=args.workers, device=device)
    bare, ours = [], []
    with tempfile.TemporaryDirectory() as folder:
        data = replicate(args.data, args.copies, Path(folder))
        images_per_epoch = len(data.read_text().splitlines())
        for _ in range(args.repeat):
            bare += bare_loop(data, **options)
            ours += through_visionsweep(data, **options)
    bare_rate, our_rate = statistics.median(bare), statistics.median(ours)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}"
    print(json.dumps({"machine": machine, "cpus": torch.get_num_threads(), "device": str(device),
                      "images_per_epoch": images_per_epoch,
                      "batch_size": args.batch_size, "crop": args.crop, "workers": args.workers,
                      "bare_images_per_s": round(bare_rate, 2), "visionsweep_images_per_s": round(our_rate, 2),
                      "ratio": round(our_rate / bare_rate, 3), "bare_epochs": [round(r, 2) for r in bare],
                      "visionsweep_epochs": [round(r, 2) for r in ours]}, indent=2))


if __name__ == "__main__":
    main()
