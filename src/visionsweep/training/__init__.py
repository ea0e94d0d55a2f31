"""Training: the shared loop, optimizers, schedules, early stopping and one-run orchestration."""
from visionsweep.training.run import TrainResult, train

__all__ = ["TrainResult", "train"]
