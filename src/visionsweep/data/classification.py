"""Classification datasets, transforms and batching.

An image that fails to decode while training does not stop the run: the dataset hands back the
failure, the batch carries it to the main process, and the run reports it (or stops, when
``ignore_data_errors`` is false).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch.utils.data import Dataset
from torchvision import transforms as T

from visionsweep.data.images import DECODE_ERRORS, load_record_rgb
from visionsweep.data.records import ImageRecord

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def training_transform(train_crop_size: int, *, augment: bool = True, resize_ratio: float = 256 / 224) -> Callable:
    """Random resized crop, horizontal flip and, half of the time, colour jitter; then normalise.

    With ``augment=False`` (``apply_automl_train_augmentations: false``) training images are framed
    like validation images: the shorter side resized to ``resize_ratio * train_crop_size``, then
    centre-cropped to ``train_crop_size``.
    """
    if not augment:
        return T.Compose([T.Resize(round(train_crop_size * resize_ratio)), T.CenterCrop(train_crop_size),
                          *_to_tensor()])
    jitter = T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4)
    return T.Compose([
        T.RandomResizedCrop(train_crop_size),
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([jitter], p=0.5),
        *_to_tensor(),
    ])


def validation_transform(valid_resize_size: int, valid_crop_size: int) -> Callable:
    """Resize the shorter side, centre-crop, normalise: validation, evaluation and prediction."""
    return T.Compose([T.Resize(valid_resize_size), T.CenterCrop(valid_crop_size), *_to_tensor()])


def _to_tensor() -> list[Callable]:
    return [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


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
            return index, None, None, f"{type(error).__name__}: {error}"
        return index, self.transform(image), self.target(index), None


def collate_classification(items: list[tuple]) -> ClassificationBatch:
    """Stack the readable images of a batch; keep the unreadable ones as failures."""
    good = [(i, image, target) for i, image, target, error in items if error is None]
    failures = [(i, error) for i, _, _, error in items if error is not None]
    if not good:
        return ClassificationBatch(torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.long), failures)
    indices, images, targets = zip(*good)
    return ClassificationBatch(torch.stack(images), torch.stack(targets), torch.tensor(indices), failures)
