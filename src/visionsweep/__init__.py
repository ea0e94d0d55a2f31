"""visionsweep: local-first AutoML for computer vision, compatible with Azure AutoML for Images.

The Python API mirrors the ``visionsweep`` command::

    import visionsweep
    result = visionsweep.train("image_classification", "train.jsonl", settings={"model_name": "resnet18"})
    visionsweep.predict(result.run_dir, "images/", output="predictions.jsonl")
    metrics, report = visionsweep.evaluate(result.run_dir, data="val.jsonl")
"""
from visionsweep.api import PredictionResult, convert, evaluate, predict, validate_data
from visionsweep.errors import (
    CheckpointError,
    DataError,
    SettingsError,
    TrainingError,
    VisionSweepError,
    WeightsUnavailableError,
)
from visionsweep.models import create_model, list_models
from visionsweep.settings import Settings, resolve_settings
from visionsweep.tasks import Task
from visionsweep.training import TrainResult, train

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "DataError", "PredictionResult", "SettingsError", "Settings", "Task", "TrainResult",
    "TrainingError", "VisionSweepError", "WeightsUnavailableError", "convert", "create_model", "evaluate",
    "list_models", "predict", "resolve_settings", "train", "validate_data",
]
