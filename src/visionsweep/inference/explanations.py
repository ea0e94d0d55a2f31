"""Explanations of classification predictions in the reference's scoring format (spec: classification
§6.5, §6.6): with ``model_explainability`` a prediction line also gets

* ``visualizations``: the 2 x 2 figure as a base64 PNG string (``visualizations`` setting true, else None);
* ``attributions``: the attribution array as nested lists ``[3][crop][crop]`` (``attributions`` setting
  true, else None).

A multi-class model explains its top class; a multi-label model each class whose probability is above
``confidence_score_threshold_multilabel``, and both fields are then lists with one entry per explained
class, in class order, or None when no class is above it (the reference's outputs stay null then).

The image explained is the record's image as the model saw it when predicting: decoded again and framed
by the validation transform (``valid_resize_size``, ``valid_crop_size``). Explaining needs the torch
network (gradients), so the onnxruntime runtime cannot explain; guided Grad-CAM needs a convolutional
layer (``models.gradcam_layer``). Both are refused before any image is read (``explanation_problems``).
"""
from __future__ import annotations

import base64
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from visionsweep.data.images import DECODE_ERRORS, describe_decode_error, load_record_rgb
from visionsweep.data.records import ImageRecord
from visionsweep.errors import DataError, SettingsError
from visionsweep.explaining.options import ExplanationOptions
from visionsweep.families.classification.transforms import validation_transform
from visionsweep.models import explanation_problem, get_model_spec, gradcam_layer
from visionsweep.settings import Settings

EXPLANATION_FIELDS = ("visualizations", "attributions")


def explanation_problems(settings: Settings, *, onnx: bool) -> list[str]:
    """Why the predictions of a model with ``settings`` cannot be explained as they ask (empty when they
    can, or ask no explanation): the onnxruntime runtime (``onnx``), an ``xai_algorithm`` the model does
    not support. (A detector's settings cannot ask: ``model_explainability`` is a classification setting.)"""
    if not (settings.task.is_classification and settings.model_explainability):
        return []
    if onnx:
        return ["model_explainability: explaining a prediction takes gradients through the torch network, and the "
                "onnxruntime runtime runs only the exported ONNX graph; explain with the torch runtime (the "
                "default) from the model folder that holds model.pt"]
    problem = explanation_problem(settings.model_name, settings.xai_algorithm)
    return [] if problem is None else [problem]


def check_explainable(settings: Settings, *, onnx: bool) -> None:
    """``SettingsError`` with ``explanation_problems``, if any."""
    problems = explanation_problems(settings, onnx=onnx)
    if problems:
        raise SettingsError(problems)


def explained_classes(probabilities: np.ndarray, multilabel: bool, threshold: float) -> list[int]:
    """The classes an explanation is about: the top class, or (multi-label) each one above ``threshold``."""
    if not multilabel:
        return [int(np.argmax(probabilities))]
    return [int(index) for index in np.flatnonzero(probabilities > threshold)]


class Explainer:
    """Explains the predictions of a torch classifier, one record at a time (``fields``)."""

    def __init__(self, model: nn.Module, settings: Settings, labels: Sequence[str], device: torch.device):
        self.model = model
        self.settings = settings
        self.labels = list(labels)
        self.device = device
        self.options = ExplanationOptions.from_settings(settings)
        self.multilabel = settings.task.is_multilabel
        spec = get_model_spec(settings.model_name)
        self.mean, self.std = spec.mean, spec.std
        self.transform = validation_transform(settings.valid_resize_size, settings.valid_crop_size, mean=spec.mean,
                                              std=spec.std)
        self.layer = gradcam_layer(spec, model)

    def fields(self, record: ImageRecord, probabilities: np.ndarray) -> dict[str, Any]:
        """``visualizations`` and ``attributions`` of one predicted image (``probabilities`` its prediction)."""
        from visionsweep.explaining.attributions import explain_image  # loads captum and saliency when used

        classes = explained_classes(probabilities, self.multilabel, self.options.multilabel_threshold)
        if not classes:  # a multi-label image with no class above the threshold: nothing to explain
            return dict.fromkeys(EXPLANATION_FIELDS)
        image = self._image(record)
        titles = [f"{self.labels[c]} ({round(float(probabilities[c]), 4)})" for c in classes]
        explanations = explain_image(self.model, image, classes, self.options, titles=titles, mean=self.mean,
                                     std=self.std, gradcam_layer=self.layer, multilabel=self.multilabel,
                                     seed=self.settings.seed)
        figures = [base64.b64encode(e.figure_png).decode("ascii") for e in explanations] \
            if self.options.visualizations else None
        arrays = [e.attributions.tolist() for e in explanations] if self.options.attributions else None
        if not self.multilabel:  # one class: the value itself, not a list of one
            figures = None if figures is None else figures[0]
            arrays = None if arrays is None else arrays[0]
        return {"visualizations": figures, "attributions": arrays}

    def _image(self, record: ImageRecord) -> torch.Tensor:
        try:
            pixels = load_record_rgb(record)
        except DECODE_ERRORS as error:  # it was read to predict on a moment ago: the file changed since
            raise DataError(f"{record.location or record.image_url}: the image could not be read again to explain "
                            f"its prediction ({describe_decode_error(error)})") from None
        return self.transform(pixels).to(self.device)
