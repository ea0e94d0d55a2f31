"""The training and validation records of a run, read, checked and split."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from visionsweep.data.detection_labels import check_detection_data
from visionsweep.data.images import DEFAULT_MAX_IMAGE_PIXELS
from visionsweep.data.jsonl import read_labeled_data
from visionsweep.data.records import ImageRecord, LabeledData
from visionsweep.data.report import DataReport
from visionsweep.data.split import split_train_validation
from visionsweep.data.tiling import Tiling
from visionsweep.errors import DataError
from visionsweep.tasks import Task


@dataclass
class TrainingData:
    train: list[ImageRecord]
    validation: list[ImageRecord]
    classes: list[str]  # the sorted union of training and validation classes: index i is class i
    reports: list[DataReport]
    split_from_training: bool  # True when validation was held out of the training data


def load_training_data(task: Task, data: str | Path, validation_data: str | Path | None, *,
                       validation_size: float, seed: int, ignore_data_errors: bool,
                       label_column: str = "label", max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                       decode_images: bool = False, tiling: Tiling | None = None) -> TrainingData:
    """Read the training data and either read the validation data or hold out ``validation_size``
    of the training images (stratified, seeded). Images are checked as ``read_labeled_data`` does;
    with ``tiling``, images too small for its grid are skipped as bad records. Raises ``DataError``
    when the data cannot train the task: no validation image, one class for multi-class, no training
    image with a label (multi-label), or training or validation images without any object (detection)."""
    def read(source: str | Path) -> LabeledData:
        return read_labeled_data(source, task, ignore_data_errors=ignore_data_errors, label_column=label_column,
                                 max_image_pixels=max_image_pixels, decode_images=decode_images, tiling=tiling)

    train = read(data)
    reports = [train.report]
    if validation_data is not None:
        validation = read(validation_data)
        reports.append(validation.report)
        train_records, val_records = train.records, validation.records
    else:
        train_records, val_records = split_train_validation(train.records, validation_size, seed)
    if not val_records:
        raise DataError(f"no validation image: {len(train_records)} training images are too few to hold out "
                        f"validation_size={validation_size} of each class; pass validation data or add images")
    classes = sorted({name for r in train_records + val_records for name in r.class_names()})
    if task is Task.CLASSIFICATION and len(classes) < 2:
        raise DataError(f"the data has a single class ({', '.join(classes)}); multi-class classification needs "
                        "at least two")
    if task.is_classification and not any(r.labels for r in train_records):
        raise DataError(_no_label(train_records, val_records))
    if not task.is_classification:  # here, before a model is built for zero classes
        for stage, records, report in (("training", train_records, reports[0]),
                                       ("validation", val_records, reports[-1])):
            named = replace(report, source=f"the {stage} images of {report.source}")
            check_detection_data(LabeledData(records, named))
    return TrainingData(train_records, val_records, classes, reports, validation_data is None)


def _no_label(train: list[ImageRecord], validation: list[ImageRecord]) -> str:
    elsewhere = sum(1 for r in validation if r.labels)
    where = (f"; {elsewhere} validation images have one, but training needs them" if elsewhere
             else "; no validation image has one either")
    return (f"none of the {len(train)} training images has a label: all have empty label lists{where}. This is a "
            "data problem: multi-label classification learns from labelled classes; check the label column "
            "(target_column_name) and that the annotations were converted")
