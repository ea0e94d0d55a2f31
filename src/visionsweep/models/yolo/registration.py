"""``model_name: yolov5`` in the model registry: built for the settings' ``model_size``, with the
COCO weights of that size, the backbone layers ``model.0`` ... ``model.9`` as ``layers_to_freeze``
groups and the class-dependent Detect convs as the head."""
from __future__ import annotations

from visionsweep.models.registry import register_model
from visionsweep.models.yolo.model import BACKBONE_LAYER_GROUPS, HEAD_PREFIXES, YoloV5, build_yolov5
from visionsweep.models.yolo.weights import check_release_3_layout, weights_for_settings

MODEL_NAME = "yolov5"


@register_model(MODEL_NAME, layer_groups=BACKBONE_LAYER_GROUPS,
                weights=weights_for_settings, head_prefixes=HEAD_PREFIXES,
                adapt_pretrained=check_release_3_layout)
def yolov5(num_classes: int, model_size: str = "medium") -> YoloV5:
    """YOLOv5 release 3.0 of ``model_size``; see ``build_yolov5`` for the input and output contract."""
    return build_yolov5(num_classes, model_size)
