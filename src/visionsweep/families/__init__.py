"""Model families: what differs between classifiers, R-CNN detectors and YOLOv5, behind one contract.

``base.ModelFamily`` is the contract the training loop and inference rely on; ``selection.family_for``
is the one place that picks a family (and tiling) for a run or a trained model. Each family package
holds its datasets and transforms, its training step and validation, and its prediction; no family
imports another.
"""
