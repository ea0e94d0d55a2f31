"""The YOLOv5 family's training recipe: what shapes its training and has no setting of its own.

Settings (``img_size``, the loss gains, the affine ranges, ``apply_mosaic_for_yolo``, the optimizer and its
schedule) keep the reference's names, defaults and ranges. The recipe holds the rest, each choice measured
one change at a time against the reference's in bench/yolo_throughput.md ("Ablations").
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class YoloRecipe:
    """How the family trains beyond the settings; the field defaults are the reference's recipe
    (``REFERENCE_RECIPE``), the family trains with ``DEFAULT_RECIPE``.

    ``hsv_gains``: the largest relative change of hue, saturation and value in the training colour jitter
    (the reference has none; the original YOLOv5 repository draws each within 0.015, 0.7 and 0.4).
    ``level_balance``: the objectness loss weight of each output level, P3 to P5 (the reference 1, 1, 1;
    the original 4, 1, 0.4). ``obj_gain_per_pixel``: scale the objectness gain by (img_size / 640)^2 (the
    original does, the reference does not). ``label_smoothing``: class targets 1 - eps / 2 and eps / 2
    (the reference 0). ``close_mosaic_epochs``: the last epochs (at most half the run) train on
    single letterboxed images instead of mosaics (the reference 0; Ultralytics 10). ``ema_ramp``: updates
    over which the moving average's decay ramps up to 0.9999 (the reference 2000). ``warmup_bias_lr`` and
    ``warmup_momentum``:
    where the warm-up starts the biases' learning rate and the momentum, both going linearly to the
    schedule's values (the reference: None, the biases start at 0 like every weight and the momentum stays
    at the setting; the original 0.1 and 0.8).
    """

    hsv_gains: tuple[float, float, float] = (0.0, 0.0, 0.0)
    level_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    obj_gain_per_pixel: bool = False
    label_smoothing: float = 0.0
    close_mosaic_epochs: int = 0
    ema_ramp: float = 2000.0
    warmup_bias_lr: float | None = None
    warmup_momentum: float | None = None


REFERENCE_RECIPE = YoloRecipe()
# The reference's recipe with what paid in the ablations (see the bench): the original
# YOLOv5's objectness balance, which weighs the finest level (most cells, small objects) four times, and the
# last 15 epochs (at most half the run) on single images, which look like what the model will predict on
# (Ultralytics closes the last 10; 15 of 30 scored higher on average, six of nine paired seeds).
DEFAULT_RECIPE = replace(REFERENCE_RECIPE, level_balance=(4.0, 1.0, 0.4), close_mosaic_epochs=15)
