"""Devices, seeds and data loaders."""
from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from visionsweep.errors import SettingsError


def select_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise SettingsError([f"device: got {device!r}; use auto, cpu, cuda or cuda:N"]) from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError([f"device: got {device!r} but no CUDA GPU is available; use auto or cpu"])
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise SettingsError([f"device: got {device!r} but only {torch.cuda.device_count()} GPU(s) exist"])
    return chosen


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch; optionally ask PyTorch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int, collate_fn: Callable,
                device: torch.device, seed: int | None) -> DataLoader:
    """A DataLoader whose shuffling follows ``seed`` and whose workers live across epochs."""
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    options: dict[str, Any] = {}
    if num_workers > 0:
        options.update(persistent_workers=True, worker_init_fn=_seed_worker)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate_fn, pin_memory=device.type == "cuda", drop_last=False,
                      generator=generator, **options)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive the other libraries from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
