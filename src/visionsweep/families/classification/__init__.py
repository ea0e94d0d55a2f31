"""The classification family (multi-class and multi-label image classification)."""
from visionsweep.families.classification.family import ClassificationFamily, ImageScores

__all__ = ["ClassificationFamily", "ImageScores"]
