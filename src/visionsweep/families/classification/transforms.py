"""Classification transforms: the reference's training augmentation and the validation framing."""
from __future__ import annotations

from typing import Callable, Sequence

from torchvision import transforms as T

from visionsweep.models.inputs import IMAGENET_MEAN, IMAGENET_STD


def training_transform(train_crop_size: int, *, augment: bool = True, resize_ratio: float = 256 / 224,
                       mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Callable:
    """Random resized crop, horizontal flip and, half of the time, colour jitter; then normalise with the
    model's ``mean`` and ``std``.

    With ``augment=False`` (``apply_automl_train_augmentations: false``) training images are framed
    like validation images: the shorter side resized to ``resize_ratio * train_crop_size``, then
    centre-cropped to ``train_crop_size``.
    """
    if not augment:
        return T.Compose([T.Resize(round(train_crop_size * resize_ratio)), T.CenterCrop(train_crop_size),
                          *_to_tensor(mean, std)])
    jitter = T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4)
    return T.Compose([
        T.RandomResizedCrop(train_crop_size),
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([jitter], p=0.5),
        *_to_tensor(mean, std),
    ])


def validation_transform(valid_resize_size: int, valid_crop_size: int, *, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD) -> Callable:
    """Resize the shorter side, centre-crop, normalise: validation, evaluation and prediction."""
    return T.Compose([T.Resize(valid_resize_size), T.CenterCrop(valid_crop_size), *_to_tensor(mean, std)])


def _to_tensor(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [T.ToTensor(), T.Normalize(mean, std)]
