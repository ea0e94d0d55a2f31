"""A small end-to-end example that needs no download: scikit-learn's bundled handwritten digits."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visionsweep.data.records import ImageRecord
from visionsweep.data.split import split_train_validation
from visionsweep.data.jsonl import write_jsonl
from visionsweep.tasks import Task


def write_digits_dataset(folder: Path, *, size: int = 32, seed: int = 0) -> tuple[Path, Path]:
    """Write the 1,797 8x8 digit images as ``size``-pixel PNGs in one folder per class, plus
    ``train.jsonl`` and ``validation.jsonl`` (a stratified 80/20 split). Returns the two files."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    records = []
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        path = folder / "images" / str(target) / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        gray = (pixels * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(gray).resize((size, size), Image.BILINEAR).convert("RGB").save(path)
        records.append(ImageRecord(image_path=path, image_url=str(path), labels=(str(target),),
                                   width=size, height=size))
    train, validation = split_train_validation(records, 0.2, seed)
    return (write_jsonl(train, folder / "train.jsonl", Task.CLASSIFICATION),
            write_jsonl(validation, folder / "validation.jsonl", Task.CLASSIFICATION))


def run_digits_example(folder: Path, *, epochs: int = 4, overwrite: bool = False) -> dict[str, Any]:
    """Write the digits data, train a ResNet-18 from scratch on the CPU, predict and evaluate.

    The run goes to ``folder/run``; a run already there is refused unless ``overwrite``."""
    from visionsweep.api import evaluate, predict
    from visionsweep.settings import resolve_settings
    from visionsweep.training import train
    from visionsweep.training.run_folder import check_run_folder

    settings = {
        "model_name": "resnet18", "pretrained": False, "number_of_epochs": epochs, "training_batch_size": 64,
        "validation_batch_size": 128, "train_crop_size": 32, "valid_crop_size": 32, "valid_resize_size": 32,
        "warmup_cosine_lr_warmup_epochs": 1, "learning_rate": 0.05, "seed": 0,
        # Random crops and flips turn digits into other digits; frame them like validation images.
        "apply_automl_train_augmentations": False,
    }
    # Settings and the run folder are checked before the data is written, so a mistake writes nothing.
    resolve_settings(Task.CLASSIFICATION, settings)
    check_run_folder(folder / "run", overwrite=overwrite)
    train_file, validation_file = write_digits_dataset(folder / "data")
    result = train(Task.CLASSIFICATION, train_file, validation_file, settings=settings, output=folder / "run",
                   overwrite=overwrite)
    predictions = predict(result.run_dir, validation_file, output=folder / "predictions.jsonl")
    metrics, _ = evaluate(result.run_dir, data=validation_file)
    return {"run_dir": result.run_dir, "best_epoch": result.best_epoch, "accuracy": metrics["accuracy"],
            "predictions": predictions.output, "predicted_images": predictions.images}
