"""Devices and seeds: which device a run uses, and seeding every random generator from the run's seed."""
from __future__ import annotations

import random

import numpy as np
import torch

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
