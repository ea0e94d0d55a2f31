"""Errors that visionsweep raises for problems the user can fix.

Every message names what is wrong and what to do instead. Anything else that escapes is a bug.
"""
from __future__ import annotations


class VisionSweepError(Exception):
    """Base class: a problem with the user's settings, data, files or environment."""


class SettingsError(VisionSweepError):
    """One or more settings are invalid. ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str], *, context: str = "settings"):
        self.problems = list(problems)
        count = len(self.problems)
        header = f"{count} invalid {context} value{'s' if count != 1 else ''}:"
        super().__init__("\n".join([header, *(f"  - {p}" for p in self.problems)]))


class DataError(VisionSweepError):
    """The data cannot be used as given (no usable image, bad file, bad record with ignore_data_errors off)."""


class WeightsUnavailableError(VisionSweepError):
    """Pretrained weights were asked for but could be found neither in a file, the cache, nor online."""


class CheckpointError(VisionSweepError):
    """A checkpoint for incremental training or prediction is missing or does not fit the model."""


class TrainingError(VisionSweepError):
    """Training cannot go on (for example the loss exploded)."""


class RunFolderError(VisionSweepError):
    """The output folder cannot take this run (it holds an earlier run, or is a file)."""


class ExportError(VisionSweepError):
    """A trained model cannot be exported as asked, or an exported file cannot be used."""
