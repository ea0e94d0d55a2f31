"""The options of an explanation, named as the reference's settings (spec: classification §6.6)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from visionsweep.settings.schema import APPROXIMATION_METHODS, MAX_STEPS, XAI_ALGORITHMS  # the settings' bounds

__all__ = ["APPROXIMATION_METHODS", "MAX_STEPS", "XAI_ALGORITHMS", "ExplanationOptions"]


@dataclass(frozen=True)
class ExplanationOptions:
    """``algorithm`` one of ``XAI_ALGORITHMS``; ``visualizations``: return the 2 x 2 figure as PNG;
    ``attributions``: return the attribution array; ``multilabel_threshold``: a multi-label model explains
    every class whose probability is above it; ``n_steps`` (2 to ``MAX_STEPS``): integrated-gradient steps
    (also XRAI's); ``approximation_method``: integrated gradients' integral; ``xrai_fast``: XRAI's fast
    variant. Values are checked by the settings schema (``model_explainability`` and its neighbours)."""

    algorithm: str = "xrai"
    visualizations: bool = True
    attributions: bool = False
    multilabel_threshold: float = 0.5
    n_steps: int = 50
    approximation_method: str = "riemann_middle"
    xrai_fast: bool = True

    @classmethod
    def from_settings(cls, settings: Any) -> "ExplanationOptions":
        """From resolved settings (``xai_algorithm``, ``visualizations``, ``attributions``,
        ``confidence_score_threshold_multilabel``, ``n_steps``, ``approximation_method``, ``xrai_fast``)."""
        get = settings.get if isinstance(settings, Mapping) else lambda key: getattr(settings, key)
        return cls(algorithm=get("xai_algorithm"), visualizations=get("visualizations"),
                   attributions=get("attributions"), multilabel_threshold=get("confidence_score_threshold_multilabel"),
                   n_steps=get("n_steps"), approximation_method=get("approximation_method"), xrai_fast=get("xrai_fast"))
