"""Classification datasets and batching.

An image that fails to decode while training does not stop the run: the dataset hands back the
failure, the batch carries it to the main process, and the run reports it (or stops, when
``ignore_data_errors`` is false).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch.utils.data import Dataset

from visionsweep.data.images import DECODE_ERRORS, describe_decode_error, load_record_rgb
from visionsweep.data.records import ImageRecord


class ClassificationBatch(NamedTuple):
    images: torch.Tensor  # (N, 3, H, W), normalised
    targets: torch.Tensor  # (N,) class indices, or (N, C) multi-hot floats for multi-label
    indices: torch.Tensor  # (N,) positions of the images in the dataset
    failures: list[tuple[int, str]]  # (dataset index, error) of images of this batch that could not be read


class ClassificationDataset(Dataset):
    """Images and their class targets. ``classes`` fixes the index of each class name."""

    def __init__(self, records: Sequence[ImageRecord], classes: Sequence[str], transform: Callable,
                 multilabel: bool):
        self.records = list(records)
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.transform = transform
        self.multilabel = multilabel

    def __len__(self) -> int:
        return len(self.records)

    def target(self, index: int) -> torch.Tensor:
        """Class index (multi-class; -1 for an unlabelled image) or multi-hot vector (multi-label)."""
        labels = self.records[index].labels
        if not labels and not self.multilabel:
            return torch.tensor(-1)
        if self.multilabel:
            target = torch.zeros(len(self.class_index))
            target[[self.class_index[name] for name in labels]] = 1.0
            return target
        return torch.tensor(self.class_index[labels[0]])

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, torch.Tensor | None, str | None]:
        try:
            image = load_record_rgb(self.records[index])
        except DECODE_ERRORS as error:
            return index, None, None, describe_decode_error(error)
        return index, self.transform(image), self.target(index), None


def collate_classification(items: list[tuple]) -> ClassificationBatch:
    """Stack the readable images of a batch; keep the unreadable ones as failures."""
    good = [(i, image, target) for i, image, target, error in items if error is None]
    failures = [(i, error) for i, _, _, error in items if error is not None]
    if not good:
        return ClassificationBatch(torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.long), failures)
    indices, images, targets = zip(*good)
    return ClassificationBatch(torch.stack(images), torch.stack(targets), torch.tensor(indices), failures)
