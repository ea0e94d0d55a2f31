"""The data loaders of every family: seeded shuffling, workers that live across epochs."""
from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


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
