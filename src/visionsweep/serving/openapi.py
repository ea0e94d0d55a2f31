"""How ``POST /score`` and ``GET /ready`` are described on the OpenAPI page (``/docs``): the endpoint
reads its body itself (three forms, ``serving.requests``), so FastAPI cannot infer it."""
from __future__ import annotations

from typing import Any

from visionsweep.serving.requests import EXPLAINED_BODY, IMAGE_BODY, MANAGED_BODY, XAI_PARAMETERS
from visionsweep.serving.scoring import REQUEST_SETTINGS

_PARAMETERS = {"type": "object", "description": "Settings for this request (instead of query parameters): "
                                               + ", ".join(REQUEST_SETTINGS)}
_IMAGE = {"type": "object", "required": ["image"], "title": "One image",
          "description": f"{IMAGE_BODY}; explained (a classifier): {EXPLAINED_BODY}",
          "properties": {"image": {"type": "string", "description": "the image file's bytes, base64"},
                         "parameters": _PARAMETERS,
                         "model_explainability": {"description": "explain the prediction (classification; true, "
                                                                 "\"true\", 1 ...); docs/explainability.md"},
                         "xai_parameters": {"type": "object", "description": "explanation options: "
                                                                             + ", ".join(XAI_PARAMETERS)}}}
_MANAGED = {"type": "object", "required": ["input_data"], "title": "Managed online endpoint",
            "description": MANAGED_BODY,
            "properties": {"input_data": {"type": "object", "required": ["data"], "properties": {
                "columns": {"type": "array", "items": {"type": "string", "enum": ["image"]}},
                "index": {"type": "array", "items": {}},
                "data": {"type": "array", "minItems": 1, "items": {"type": "string"},
                         "description": "one base64 image file per entry, or a JSON string {\"image_base64\": ..., "
                                        "\"model_explainability\": ..., \"xai_parameters\": {...}} (the "
                                        "options are the first entry's)"}}},
                "parameters": _PARAMETERS}}
_RAW = {"schema": {"type": "string", "format": "binary"}}
_ERROR = {"content": {"application/json": {"example": {"error": "what is wrong, and what to change"}}}}

SCORE_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": {"oneOf": [_IMAGE, _MANAGED]}},
        "image/*": _RAW, "application/octet-stream": _RAW}},
    "parameters": [{"name": name, "in": "query", "required": False, "schema": {},
                    "description": f"{name} for this request, read like a --set value"} for name in REQUEST_SETTINGS],
}
SCORE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "One answer per image, in request order; the X-Batch-Size header gives the images "
                         "scored in the same forward",
          "content": {"application/json": {"examples": {
              "classification": {"value": [{"probs": [0.9, 0.1], "labels": ["can", "carton"]}]},
              "explained classification": {"value": [{"probs": [0.9, 0.1], "labels": ["can", "carton"],
                                                      "visualizations": "iVBORw0KGgoAAAANSUhEUgAA...",
                                                      "attributions": None}]},
              "detection": {"value": [{"boxes": [{"box": {"topX": 0.1, "topY": 0.2, "bottomX": 0.4,
                                                          "bottomY": 0.7}, "label": "can", "score": 0.93}]}]},
              "segmentation": {"value": [{"boxes": [{"box": {"topX": 0.1, "topY": 0.2, "bottomX": 0.4,
                                                             "bottomY": 0.7}, "label": "can", "score": 0.93,
                                                     "polygon": [[0.1, 0.2, 0.4, 0.2, 0.4, 0.7]]}]}]}}}}},
    400: {"description": "Not JSON, not base64, or not an image", **_ERROR},
    401: {"description": "No API key, or a wrong one", **_ERROR},
    413: {"description": "The body is over --max-body-mb, or an image over the model's max_image_pixels", **_ERROR},
    415: {"description": "A Content-Type other than image/*, application/octet-stream or application/json",
          **_ERROR},
    422: {"description": "JSON of another shape, or a setting a request may not change or an invalid value",
          **_ERROR},
    503: {"description": "The model is still loading", **_ERROR},
}
READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The model, its runtime, and the batching counts of this worker process"},
    503: {"description": "The model is loading (or could not be loaded: error)"},
}
