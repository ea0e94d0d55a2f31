"""Shared test fixtures."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

# Tests run tiny tensors: one intra-op thread avoids OpenMP spin-waiting, which makes a busy 2-core
# machine up to ten times slower, and costs little on an idle one.
torch.set_num_threads(1)

# CI and development checkouts sit beside ../shared/datasets; VISIONSWEEP_DATASETS overrides.
DATASETS = Path(os.environ.get("VISIONSWEEP_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))


def slow_variants(values: Sequence[str], slow: set[str]) -> list[object]:
    """``values`` for ``pytest.mark.parametrize`` with those in ``slow`` (large models that take
    seconds each to build) marked slow: the fast tier keeps a small variant of the same code."""
    assert slow <= set(values), slow - set(values)
    return [pytest.param(value, marks=pytest.mark.slow) if value in slow else value for value in values]


@pytest.fixture
def datasets() -> Path:
    """The shared real datasets folder; tests that need it skip when it is absent."""
    if not DATASETS.is_dir():
        pytest.skip(f"shared datasets folder {DATASETS} is absent (set VISIONSWEEP_DATASETS to its path)")
    return DATASETS


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """Empty torch and Hugging Face caches, and no network; model specs derived from one test's cache
    (timm and Hugging Face names) stay in that test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VISIONSWEEP_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    from visionsweep.models import open_models

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(open_models, "_SPECS", {})
    return tmp_path


def write_color_dataset(folder: Path, per_class: int = 6, size: int = 24, multilabel: bool = False) -> Path:
    """A learnable toy set: reddish images are 'red', bluish ones 'blue' (multi-label: a green
    stripe adds 'striped'). Returns the JSONL file."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = []
    for name, channel in (("red", 0), ("blue", 2)):
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            pixels[..., channel] += 150
            labels = [name]
            if multilabel and i % 2:
                pixels[size // 3: size // 2, :, 1] = 255
                labels.append("striped")
            path = folder / "images" / f"{name}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            lines.append({"image_url": f"images/{path.name}", "label": labels if multilabel else name})
    jsonl = folder / "data.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return jsonl


TINY_SETTINGS = {
    "model_name": "resnet18", "pretrained": False, "number_of_epochs": 2, "training_batch_size": 4,
    "validation_batch_size": 4, "valid_resize_size": 32, "valid_crop_size": 32, "train_crop_size": 32,
    "num_workers": 0, "seed": 0,
    # The exports and the report cost a run about a second each; the tests of model.onnx, mlflow-model/ and
    # report.html turn them on.
    "export_onnx": False, "save_mlflow": False, "write_report": False,
}
