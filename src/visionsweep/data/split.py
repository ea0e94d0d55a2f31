"""Holding out validation data when none is given: stratified by class and seeded."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from visionsweep.data.records import ImageRecord


def split_train_validation(
    records: list[ImageRecord], validation_size: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Split records so that each class keeps about ``validation_size`` of its images in validation.

    Each record is stratified by its rarest class (the label of a multi-class image, the rarest
    label of a multi-label image, the rarest object class of a detection image); images without
    any class form their own stratum. Strata too small to split (one image) go to training.
    Every stratum contributes round(validation_size * n) images, so the result is the same for the
    same records, fraction and seed.
    """
    if not 0.0 < validation_size < 1.0:
        raise ValueError(f"validation_size must be in (0, 1), got {validation_size}")
    frequency = Counter(name for r in records for name in set(r.class_names()))
    strata: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        names = set(record.class_names())
        key = min(names, key=lambda n: (frequency[n], n)) if names else ""
        strata.setdefault(key, []).append(index)
    rng = np.random.default_rng(seed)
    validation: set[int] = set()
    for key in sorted(strata):
        members = strata[key]
        if len(members) < 2:
            continue
        count = min(len(members) - 1, math.floor(validation_size * len(members) + 0.5))
        chosen = rng.choice(len(members), size=count, replace=False)
        validation.update(members[i] for i in chosen)
    train = [r for i, r in enumerate(records) if i not in validation]
    held_out = [r for i, r in enumerate(records) if i in validation]
    return train, held_out
