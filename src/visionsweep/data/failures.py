"""Images that passed the up-front check but failed to decode later, while training or predicting."""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

from visionsweep.data import report as reasons
from visionsweep.data.records import ImageRecord
from visionsweep.data.report import DataReport
from visionsweep.errors import DataError

log = logging.getLogger("visionsweep")


class UnreadableImages:
    """The failure sink of a run or a prediction: ``sink(failures, stage)`` with (index, error) pairs.

    ``records`` maps each stage to the records its dataset indices point into. Each image is reported
    once in ``report``: as a skip of its own (``kept`` false: a run's report of images that failed
    during the run) or as a kept record now skipped (``kept`` true: the report of the data predicted
    on). Unless ``ignore_data_errors``, the first one is a ``DataError``.
    """

    def __init__(self, records: Mapping[str, Sequence[ImageRecord]], report: DataReport, *,
                 ignore_data_errors: bool, kept: bool):
        self.records = records
        self.report = report
        self.ignore = ignore_data_errors
        self.kept = kept
        self._seen: set[tuple[str, int]] = set()

    def __call__(self, failures: list[tuple[int, str]], stage: str) -> None:
        for index, error in failures:
            if (stage, index) in self._seen:
                continue
            self._seen.add((stage, index))
            record = self.records[stage][index]
            skip = self.report.skip_kept if self.kept else self.report.skip
            skip(record.location, reasons.UNREADABLE_IMAGE, f"{record.image_path}: {error}", record.image_url)
            log.warning("%s image could not be read and is left out: %s (%s)", stage, record.image_path, error)
            if not self.ignore:
                raise DataError(f"{stage} image {record.image_path} ({record.location}) could not be read: {error}. "
                                "Fix or remove it, or set ignore_data_errors=true to skip it.")
