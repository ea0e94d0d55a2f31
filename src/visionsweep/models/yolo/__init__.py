"""YOLOv5 (release 3.0 architecture), written in the project: network, loss and weight averaging.

The data pipeline is ``visionsweep.families.yolo.pipeline``; decoding of boxes happens in the Detect
head, score filtering, NMS and un-letterboxing in ``visionsweep.geometry.yolo_boxes``.
"""
from visionsweep.models.yolo.ema import ModelEMA
from visionsweep.models.yolo.loss import LevelTargets, YoloLoss, match_anchors
from visionsweep.models.yolo.model import (
    ANCHORS, BACKBONE_LAYER_GROUPS, HEAD_PREFIXES, MAX_STRIDE, MODEL_SIZES, Detect, YoloV5, build_yolov5,
    fused_for_inference,
)

__all__ = [
    "ANCHORS", "BACKBONE_LAYER_GROUPS", "Detect", "HEAD_PREFIXES", "LevelTargets", "MAX_STRIDE", "MODEL_SIZES",
    "ModelEMA", "YoloLoss", "YoloV5", "build_yolov5", "fused_for_inference", "match_anchors",
]
