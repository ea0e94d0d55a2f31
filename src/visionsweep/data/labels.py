"""Parsing the ``label`` field of a JSONL record, per task.

A parser turns the raw value into labels and objects, or raises ``BadLabel`` with a sentence that
says what is wrong. Detection and segmentation parsers may also drop single annotations and say why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from visionsweep.data.records import ObjectAnnotation
from visionsweep.tasks import Task


class BadLabel(ValueError):
    """The label value of a record cannot be used; the message says why."""


@dataclass
class ParsedLabel:
    labels: tuple[str, ...] = ()
    objects: tuple[ObjectAnnotation, ...] = ()
    dropped: list[str] = field(default_factory=list)  # one sentence per annotation left out


LabelParser = Callable[[Any], ParsedLabel]


def parse_multiclass_label(value: Any) -> ParsedLabel:
    """One class per image: a non-empty string, or an integer class id."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadLabel(f"a multi-class label must be a string or an integer, got {_kind(value)}")
    name = str(value).strip()
    if not name:
        raise BadLabel("the label is an empty string")
    return ParsedLabel(labels=(name,))


def parse_multilabel_label(value: Any) -> ParsedLabel:
    """A list of class names (strings or integers). An empty list is an image with none of the classes."""
    if not isinstance(value, list):
        raise BadLabel(f"a multi-label label must be a list of strings or integers, got {_kind(value)}")
    names = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise BadLabel(f"a multi-label list may only hold strings or integers, found {_kind(item)}")
        name = str(item).strip()
        if not name:
            raise BadLabel("the label list holds an empty string")
        names.append(name)
    return ParsedLabel(labels=tuple(sorted(set(names))))


_PARSERS: dict[Task, LabelParser] = {
    Task.CLASSIFICATION: parse_multiclass_label,
    Task.MULTILABEL: parse_multilabel_label,
}


def register_label_parser(task: Task, parser: LabelParser) -> None:
    """Install the parser of a task (detection and segmentation register theirs)."""
    _PARSERS[task] = parser


def label_parser(task: Task) -> LabelParser:
    return _PARSERS[task]  # every task has one: visionsweep.data registers the detection parsers on import


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object (is this object-detection data?)"
    return f"{type(value).__name__} {value!r}"[:80]
