"""Data: records, JSONL/MLTable reading and writing, importers, the data report, splits, datasets."""
from visionsweep.data import detection_formats, detection_labels  # noqa: F401  (register parsers, importers)
from visionsweep.data.importers import ImportResult, convert, importer_names
from visionsweep.data.jsonl import read_labeled_data, write_jsonl
from visionsweep.data.records import ImageRecord, LabeledData, ObjectAnnotation
from visionsweep.data.report import DataReport
from visionsweep.data.split import split_train_validation

__all__ = [
    "DataReport", "ImageRecord", "ImportResult", "LabeledData", "ObjectAnnotation", "convert", "importer_names",
    "read_labeled_data", "split_train_validation", "write_jsonl",
]
