"""``visionsweep.score``: send images to a scoring endpoint, get one answer per image back."""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from visionsweep.errors import VisionSweepError

# An image: its file's path, or the file's bytes.
Image = Union[str, Path, bytes]


class ScoringError(VisionSweepError):
    """The endpoint refused a request or failed: ``status`` (None when it could not be reached) and its
    message, which says what to change."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def score(url: str, images: Image | Sequence[Image], *, api_key: str | None = None,
          settings: Mapping[str, Any] | None = None, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The endpoint's answer for each image, in order (``{"probs", "labels"}`` or ``{"boxes"}``).

    ``url`` is the server (``http://127.0.0.1:5001``) or its ``/score`` URL; ``images`` one image or
    several, each a file path or the file's bytes, sent together in the managed online endpoint's body.
    ``settings`` are the request's own (``box_score_thresh``, ...); ``api_key`` is sent as the bearer
    token. A refusal or a failure raises ``ScoringError`` with the server's message.
    """
    listed = [images] if isinstance(images, (str, Path, bytes)) else list(images)
    body: dict[str, Any] = {"input_data": {"columns": ["image"], "index": list(range(len(listed))),
                                           "data": [base64.b64encode(_read(image)).decode("ascii")
                                                    for image in listed]}}
    if settings:
        body["parameters"] = dict(settings)
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    target = url if url.rstrip("/").endswith("/score") else url.rstrip("/") + "/score"
    request = urllib.request.Request(target, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise ScoringError(f"{target} answered {error.code}: {_message(error)}", error.code) from None
    except (urllib.error.URLError, OSError) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        raise ScoringError(f"no answer from {target}: {reason} (is 'visionsweep serve' running there?)") from None


def _read(image: Image) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def _message(error: urllib.error.HTTPError) -> str:
    text = error.read().decode("utf-8", "replace")
    try:
        return json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return text or str(error.reason)
