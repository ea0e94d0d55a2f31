"""The one place that decides which family's code a run or a trained model uses, and whether it tiles.

The model's family comes from the catalog (``visionsweep.model_catalog``); tiling wraps the family when
``tile_grid_size`` is set. Training (``visionsweep.training.run``) and inference
(``visionsweep.inference``) both ask here; nothing else compares task or model names to choose code.
"""
from __future__ import annotations

from typing import Sequence

import torch

from visionsweep import model_catalog
from visionsweep.data.tiling import Tiling
from visionsweep.distributed import SINGLE_PROCESS, Ranks
from visionsweep.errors import SettingsError
from visionsweep.families.base import FailureSink, ModelFamily
from visionsweep.families.classification import ClassificationFamily
from visionsweep.families.detection import ElementDetectionFamily
from visionsweep.families.rcnn import MaskRcnnFamily, RcnnFamily
from visionsweep.families.tiling import TiledDetection
from visionsweep.families.yolo import YoloFamily
from visionsweep.settings import Settings

# catalog family -> the code that feeds, trains and runs its models
FAMILIES: dict[str, type[ModelFamily]] = {
    model_catalog.CLASSIFICATION: ClassificationFamily,
    model_catalog.RCNN: RcnnFamily,
    model_catalog.MASK_RCNN: MaskRcnnFamily,
    model_catalog.YOLOV5: YoloFamily,
}


def family_for(settings: Settings, classes: Sequence[str], device: torch.device,
               on_failures: FailureSink, ranks: Ranks = SINGLE_PROCESS) -> ModelFamily:
    """The family object of a run (or of a trained model's settings): ``settings.model_name`` 's family,
    wrapped in ``TiledDetection`` when the settings tile. ``ranks``: the processes training the run together."""
    family = FAMILIES[model_catalog.family_of(settings.model_name)](settings, classes, device, on_failures, ranks)
    tiling = Tiling.from_settings(settings)
    if tiling is None:
        return family
    if not isinstance(family, ElementDetectionFamily):
        raise SettingsError([f"tile_grid_size: {settings.model_name} is not a detector; tiling cuts images for "
                             "object detection only"])
    return TiledDetection(family, tiling)
