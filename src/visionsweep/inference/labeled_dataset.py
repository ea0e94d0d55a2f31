"""The reference's labelled-dataset file (``labeled_dataset.json``): the predictions again, as labels.

Azure AutoML for Images writes it beside the predictions file when it scores a dataset (spec, detection 6.2
and classification 6.2) and registers it as a dataset of the model's labels. One JSON line per predicted
image, in the order of the predictions file, derived from its line:

* classification: ``{"image_url": "AmlDatastore://<filename>", "label_confidence": probs, "label": labels}``,
  where ``probs`` and ``labels`` are the prediction line's (every class's probability and the full class
  list, not the predicted classes, as the reference);
* detection: ``{"image_url": ..., "label_confidence": [score of each box], "label": [{"topX": ..., "topY": ...,
  "bottomX": ..., "bottomY": ..., "label": "cat"}, ...]}``, boxes in the predictions' order and coordinates
  (fractions of the image); instance segmentation adds each box's ``"polygon"`` after ``"label"``.

``<filename>`` is the prediction line's ``filename`` URL-unquoted (``my%20cat.jpg`` becomes ``my cat.jpg``).
"""
from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import unquote

DATASTORE_PREFIX = "AmlDatastore://"
BOX_KEYS = ("topX", "topY", "bottomX", "bottomY")


def labeled_dataset_line(prediction: Mapping[str, Any]) -> dict[str, Any]:
    """The labelled-dataset line of one prediction line (classification, detection or segmentation)."""
    image_url = DATASTORE_PREFIX + unquote(str(prediction["filename"]))
    if "probs" in prediction:  # classification, multi-class or multi-label
        return {"image_url": image_url, "label_confidence": list(prediction["probs"]),
                "label": list(prediction["labels"])}
    labels = []
    for item in prediction["boxes"]:
        label = {key: item["box"][key] for key in BOX_KEYS}
        label["label"] = item["label"]
        if "polygon" in item:
            label["polygon"] = item["polygon"]
        labels.append(label)
    return {"image_url": image_url, "label_confidence": [item["score"] for item in prediction["boxes"]],
            "label": labels}
