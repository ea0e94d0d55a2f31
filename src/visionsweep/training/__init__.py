"""Training: the shared loop, optimizers, schedules, early stopping, checkpoints and one-run orchestration."""
from visionsweep.training.run import TrainResult, register_pipeline, train

__all__ = ["TrainResult", "register_pipeline", "train"]
