"""The JSON reader for what users write or export: ``advanced_settings`` strings, JSON Lines records
(data and predictions files) and COCO annotation files.

It is ``json.loads`` with one more rule: an object that gives the same key twice is refused.
JSON says keys should be unique, and ``json.loads`` keeps the last value silently, so a record
with two ``image_url`` values, or a COCO file with two ``annotations`` lists, would quietly lose one
of them. The YAML reader (``visionsweep.yaml_files``), which also reads JSON settings and job files,
refuses duplicate keys in the same way.
"""
from __future__ import annotations

import json
from typing import Any

_SHOWN_CHARACTERS = 60  # of each value in the message: a duplicated COCO list can be megabytes


class DuplicateJsonKeyError(ValueError):
    """An object gives ``key`` twice; the message shows the start of both values."""

    def __init__(self, key: str, first: Any, second: Any):
        self.key = key
        super().__init__(f"the key {key!r} is given twice ({_shown(first)}, then {_shown(second)}); "
                         "give each key once")


def parse_json(text: str | bytes) -> Any:
    """``json.loads(text)``, refusing duplicate keys. Raises ``json.JSONDecodeError`` for text that
    is not JSON and ``DuplicateJsonKeyError`` for an object that repeats a key."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for key, value in pairs:
        if key in content:
            raise DuplicateJsonKeyError(key, content[key], value)
        content[key] = value
    return content


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _SHOWN_CHARACTERS else text[:_SHOWN_CHARACTERS - 3] + "..."
