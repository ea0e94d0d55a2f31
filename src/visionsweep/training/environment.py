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
    gpus = visible_gpu_count()
    problem = device_problem(device, gpus)
    if problem is not None:
        raise SettingsError([problem])
    if device == "auto":
        return torch.device("cuda" if gpus else "cpu")
    return torch.device(device)


def device_problem(device: str, gpus: int) -> str | None:
    """Why ``device`` cannot be used by a process that sees ``gpus`` CUDA GPUs; None when it can.
    The one place that decides, for a run here and for the trials of a sweep (which see one GPU or none)."""
    if device == "auto":
        return None
    try:
        chosen = torch.device(device)
    except RuntimeError:
        return f"device: got {device!r}; use auto, cpu, cuda or cuda:N"
    if chosen.type == "cuda" and not gpus:
        return f"device: got {device!r} but no CUDA GPU is available; use auto or cpu"
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= gpus:
        return f"device: got {device!r} but only {gpus} GPU(s) exist"
    return None


def visible_gpu_count() -> int:
    """The CUDA GPUs this process can use (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


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
