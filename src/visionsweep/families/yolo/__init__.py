"""The YOLOv5 family."""
from visionsweep.families.yolo.family import YoloFamily

__all__ = ["YoloFamily"]
