"""The data loaders of every family: seeded shuffling, workers that live across epochs, and each
process's share of the data when several train one run (``visionsweep.distributed``)."""
from __future__ import annotations

import math
import random
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from visionsweep.distributed import SINGLE_PROCESS, Ranks


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int, collate_fn: Callable,
                device: torch.device, seed: int | None, ranks: Ranks = SINGLE_PROCESS,
                order: Sequence[int] | None = None) -> DataLoader:
    """A DataLoader over this process's share of ``dataset``, whose workers live across epochs.

    Shuffled (training) loaders draw the order of epoch ``e`` from ``seed + e`` (``start_epoch``), the
    same permutation for any number of processes, each taking every ``world_size``-th item of it (torch's
    ``DistributedSampler``, which repeats a few items so that every process gets as many). Unshuffled
    (validation) loaders give each process a contiguous block and repeat nothing (``ContiguousShard``), so
    results gathered in rank order are those of one process, in the same order. ``order`` (unshuffled
    loaders only) is the sequence of item positions to go through instead of 0, 1, 2, ...
    """
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    sampler: Sampler
    if shuffle:
        sampler = DistributedSampler(dataset, num_replicas=ranks.world_size, rank=ranks.rank, shuffle=True,
                                     seed=seed or 0, drop_last=False)
    else:
        sampler = ContiguousShard(len(dataset), ranks, order)
    options: dict[str, Any] = {}
    if num_workers > 0:
        options.update(persistent_workers=True, worker_init_fn=_seed_worker)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_fn, pin_memory=device.type == "cuda", drop_last=False,
                      generator=generator, **options)


def start_epoch(loader: Any, epoch: int) -> None:
    """Give a training loader the order of ``epoch`` (every process the same one)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


class ContiguousShard(Sampler[int]):
    """Items ``[r * ceil(n / W), (r + 1) * ceil(n / W))`` of ``n`` for rank ``r`` of ``W`` (fewer, maybe none,
    for the last ranks): every item exactly once over all ranks, in order, the order of ``order`` (a
    permutation of the n positions) when given."""

    def __init__(self, length: int, ranks: Ranks = SINGLE_PROCESS, order: Sequence[int] | None = None):
        if order is not None and sorted(order) != list(range(length)):
            raise ValueError(f"order must be a permutation of the {length} item positions")
        share = math.ceil(length / ranks.world_size) if length else 0
        self.start = min(length, ranks.rank * share)
        self.stop = min(length, self.start + share)
        self.order = list(order) if order is not None else range(length)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order[self.start:self.stop])

    def __len__(self) -> int:
        return self.stop - self.start


def aspect_ratio_order(sizes: Sequence[tuple[int, int] | None], window: int | None = None) -> list[int]:
    """Positions of ``sizes`` ((width, height), None when unknown: taken as square) sorted by height / width,
    within each run of ``window`` positions (all at once without one), so that a batch holds images of
    similar shape. The sort is stable: equal shapes keep their order."""
    def ratio(position: int) -> float:
        size = sizes[position]
        return size[1] / size[0] if size else 1.0

    step = window or max(1, len(sizes))
    return [position for start in range(0, len(sizes), step)
            for position in sorted(range(start, min(start + step, len(sizes))), key=ratio)]


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive the other libraries from it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
