"""visionsweep: local-first AutoML for computer vision, compatible with Azure AutoML for Images.

The Python API mirrors the ``visionsweep`` command::

    import visionsweep
    result = visionsweep.train("image_classification", "train.jsonl", settings={"model_name": "resnet18"})
    visionsweep.predict(result.run_dir, "images/", output="predictions.jsonl")
    visionsweep.explain(result.run_dir, "images/", settings={"xai_algorithm": "integrated_gradients"})  # + heat maps
    metrics, report = visionsweep.evaluate(result.run_dir, data="val.jsonl")
    visionsweep.export(result.run_dir)  # model.onnx in the model folder (train writes one too)
    visionsweep.report(result.run_dir)  # report.html in the run folder again (train writes one too)
    visionsweep.serve(result.run_dir, port=5001)  # an HTTP scoring endpoint; visionsweep.score is its client
"""
from importlib import import_module
from typing import Any

from visionsweep.errors import (
    CheckpointError,
    DataError,
    ExportError,
    SettingsError,
    TrainingError,
    VisionSweepError,
    WeightsUnavailableError,
)
from visionsweep.tasks import Task

__version__ = "0.1.0"

# Loaded on first use: torch, timm and scikit-learn take seconds to import, and `visionsweep models`
# or a settings check should not pay for them.
_LAZY = {
    "EvaluationResult": "visionsweep.api", "PredictionResult": "visionsweep.api", "convert": "visionsweep.api",
    "evaluate": "visionsweep.api", "explain": "visionsweep.api", "export": "visionsweep.api",
    "predict": "visionsweep.api",
    "report": "visionsweep.api", "validate_data": "visionsweep.api",
    "create_model": "visionsweep.models", "list_models": "visionsweep.models",
    "Settings": "visionsweep.settings", "resolve_settings": "visionsweep.settings",
    "serve": "visionsweep.serving.server", "score": "visionsweep.serving.client",
    "ScoringError": "visionsweep.serving.client",
    "TrainResult": "visionsweep.training", "train": "visionsweep.training",
}

__all__ = [
    "CheckpointError", "DataError", "ExportError", "SettingsError", "Task", "TrainingError", "VisionSweepError",
    "WeightsUnavailableError", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'visionsweep' has no attribute {name!r}")
