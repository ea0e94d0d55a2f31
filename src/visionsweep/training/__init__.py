"""Training: the shared loop, optimizers, schedules, early stopping and one-run orchestration.

``train`` and ``TrainResult`` load on first use: the light modules of this package (``recovery``,
``launcher``, ``run_folder``) are imported by sweep trial processes, which must not pay for torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from visionsweep.training import run

        return getattr(run, name)
    raise AttributeError(f"module 'visionsweep.training' has no attribute {name!r}")
