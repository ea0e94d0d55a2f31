"""The R-CNN family: Faster R-CNN, RetinaNet and (as its instance-segmentation variant) Mask R-CNN."""
from visionsweep.families.rcnn.family import MaskRcnnFamily, RcnnFamily

__all__ = ["MaskRcnnFamily", "RcnnFamily"]
