"""Detection and segmentation evaluation: the one front door for a validation pass.

``DetectionEvaluation`` runs the metrics a ``validation_metric_type`` asks for: VOC
(``visionsweep.evaluation.voc``), COCO (``visionsweep.evaluation.coco``) or both; ``evaluate_detections``
evaluates all images at once. Their inputs are described in ``visionsweep.evaluation.detections``.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping, Sequence

from visionsweep.evaluation.coco import CocoEvaluator
from visionsweep.evaluation.detections import Detections, GroundTruth, IouType
from visionsweep.evaluation.voc import VocEvaluator

MetricType = Literal["voc", "coco", "coco_voc", "none"]
METRIC_TYPES: tuple[str, ...] = ("voc", "coco", "coco_voc", "none")


class DetectionEvaluation:
    """One validation pass for any metric type: ``add`` each batch, ``compute`` at the end.

    ``metric_type`` "voc" (VOC mAP is the primary metric), "coco" (COCO AP at IoU 0.50 is), "coco_voc"
    (both computed, VOC primary) or "none" (``enabled`` is false and ``compute`` returns {}; the training
    loop can skip the pass). ``add`` takes the frame sizes of the images and their original sizes, both
    (width, height), so that COCO's small/medium/large ranges use original pixels; VOC ignores them.
    ``coco_backend`` is "faster-coco-eval", "pycocotools" (the same numbers, slower) or None, the default:
    faster-coco-eval, or pycocotools with one logged warning when faster-coco-eval cannot be imported (coco.py).
    """

    def __init__(self, class_names: Sequence[str], metric_type: MetricType = "voc", *, iou_threshold: float = 0.5,
                 iou_type: IouType = "bbox", coco_backend: str | None = None):
        if metric_type not in METRIC_TYPES:
            raise ValueError(f"validation_metric_type must be one of {', '.join(METRIC_TYPES)}, got {metric_type!r}")
        self.metric_type = metric_type
        self.voc = VocEvaluator(class_names, iou_threshold=iou_threshold, iou_type=iou_type) \
            if metric_type in ("voc", "coco_voc") else None
        if metric_type in ("coco", "coco_voc"):
            self.coco = CocoEvaluator(class_names, iou_type=iou_type, backend=coco_backend)
        else:
            self.coco = None

    @property
    def enabled(self) -> bool:
        return self.metric_type != "none"

    def add(self, predictions: Sequence[Detections | Mapping[str, Any]],
            ground_truth: Sequence[GroundTruth | Mapping[str, Any]], *,
            image_sizes: Sequence[tuple[int, int]] | None = None,
            original_sizes: Sequence[tuple[int, int]] | None = None) -> None:
        if self.voc is not None:
            self.voc.add(predictions, ground_truth)
        if self.coco is not None:
            self.coco.add(predictions, ground_truth, image_sizes=image_sizes, original_sizes=original_sizes)

    def merge(self, other: DetectionEvaluation) -> None:
        if other.metric_type != self.metric_type:
            raise ValueError("cannot merge evaluations of different metric types")
        if self.voc is not None:
            self.voc.merge(other.voc)
        if self.coco is not None:
            self.coco.merge(other.coco)

    def state(self) -> dict[str, Any]:
        """What the evaluators kept, as plain data and arrays: another process's share to ``merge_state``."""
        return {"voc": None if self.voc is None else self.voc.state(),
                "coco": None if self.coco is None else self.coco.state()}

    def merge_state(self, state: Mapping[str, Any]) -> None:
        """Add the images of an evaluation of the same kind (its ``state()``) after ours."""
        if self.voc is not None:
            self.voc.merge_state(state["voc"])
        if self.coco is not None:
            self.coco.merge_state(state["coco"])

    def compute(self) -> dict[str, Any]:
        """The metrics dict: VOC keys (see ``VocEvaluator.compute``) and/or ``coco_metrics`` (twelve named
        COCO numbers); ``mean_average_precision`` is always the primary score when any metric ran."""
        metrics: dict[str, Any] = {}
        if self.coco is not None:
            coco = self.coco.compute()
            metrics["mean_average_precision"] = coco["AP50"]
            metrics["coco_metrics"] = coco
        if self.voc is not None:
            metrics.update(self.voc.compute())
        return metrics


def evaluate_detections(
    predictions: Sequence[Detections | Mapping[str, Any]],
    ground_truth: Sequence[GroundTruth | Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    metric_type: MetricType = "voc",
    iou_threshold: float = 0.5,
    iou_type: IouType = "bbox",
    image_sizes: Sequence[tuple[int, int]] | None = None,
    original_sizes: Sequence[tuple[int, int]] | None = None,
    coco_backend: str | None = None,
) -> dict[str, Any]:
    """Evaluate all images at once (e.g. a predictions file against labels); see ``DetectionEvaluation``."""
    evaluation = DetectionEvaluation(class_names, metric_type, iou_threshold=iou_threshold, iou_type=iou_type,
                                     coco_backend=coco_backend)
    evaluation.add(predictions, ground_truth, image_sizes=image_sizes, original_sizes=original_sizes)
    return evaluation.compute()

