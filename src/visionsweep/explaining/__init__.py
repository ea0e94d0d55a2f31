"""Explaining classification predictions: which pixels made the model give its answer.

``attributions.explain_image`` runs one of the reference's four methods (XRAI, integrated gradients,
guided backprop, guided Grad-CAM) on one preprocessed image; ``figure`` draws the reference's 2 x 2
picture of the result. The options are ``ExplanationOptions`` (settings of the same names).
"""
from visionsweep.explaining.options import (
    APPROXIMATION_METHODS,
    XAI_ALGORITHMS,
    ExplanationOptions,
)

__all__ = ["APPROXIMATION_METHODS", "XAI_ALGORITHMS", "ExplanationOptions"]
