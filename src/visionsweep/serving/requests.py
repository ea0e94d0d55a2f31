"""Reading a scoring request: its images and its settings from each body the reference's endpoints
accept, or a ``RequestError`` that names the problem and how to fix it.

Bodies (``POST /score``):

* raw image bytes, ``Content-Type: image/*`` or ``application/octet-stream``: one image;
* JSON ``{"image": "<base64>"}``: one image (the reference's online handler);
* JSON ``{"input_data": {"columns": ["image"], "index": [0, 1], "data": ["<base64>", "<base64>"]}}``:
  any number of images (the managed online endpoint's body; ``index`` is optional, and each entry of
  ``data`` may also be a one-element row ``["<base64>"]``).

Settings (``scoring.REQUEST_SETTINGS``) come as query parameters (``?box_score_thresh=0.5``, read like
``--set`` values) with any body, or as ``"parameters": {"box_score_thresh": 0.5}`` in a JSON body;
not both ways at once.

Explanations (docs/explainability.md) are asked for in the reference's fields:
``{"image": "<base64>", "model_explainability": true, "xai_parameters": {"xai_algorithm": "xrai"}}``,
or, in the managed endpoint's body, each entry of ``data`` a JSON string ``{"image_base64": "<base64>",
"model_explainability": true, "xai_parameters": {...}}`` (the reference's MLflow form; the options are
the first entry's, and another entry may repeat them, not change them). They become the settings of
the same names (``model_explainability`` and each key of ``xai_parameters``), validated as any setting.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Sequence

from visionsweep.errors import SettingsError
from visionsweep.settings import parse_set_options
from visionsweep.settings.schema import EXPLANATION_SETTINGS

IMAGE_BODY = '{"image": "<base64 image>", "parameters": {"box_score_thresh": 0.5}}'
MANAGED_BODY = ('{"input_data": {"columns": ["image"], "index": [0, 1], "data": ["<base64 image>", '
                '"<base64 image>"]}, "parameters": {"box_score_thresh": 0.5}}')
EXPLAINED_BODY = ('{"image": "<base64 image>", "model_explainability": true, "xai_parameters": '
                  '{"xai_algorithm": "integrated_gradients", "n_steps": 20, "attributions": true}}')
EXPECTED_BODIES = [IMAGE_BODY, MANAGED_BODY, EXPLAINED_BODY]
# The reference's explainability fields: a request's model_explainability, and its xai_parameters' keys.
EXPLAINABILITY_KEY = "model_explainability"
XAI_PARAMETERS_KEY = "xai_parameters"
XAI_PARAMETERS = tuple(name for name in EXPLANATION_SETTINGS if name != EXPLAINABILITY_KEY)
BASE64_KEY = "image_base64"  # the image of the reference's JSON string row (MLflow form)
RAW_MEDIA_TYPES = ("image/*", "application/octet-stream")
JSON_MEDIA_TYPE = "application/json"
_BASE64_HELP = "encode the image file's bytes with base64 (base64.b64encode(data).decode() in Python, base64 -w0 FILE)"


class RequestError(Exception):
    """A request that cannot be scored as sent: its HTTP ``status`` (4xx), a message that says what to
    change, and ``details`` for the JSON error body (``expected``, ``images``)."""

    def __init__(self, status: int, message: str, **details: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.details}


@dataclass(frozen=True)
class ScoringRequest:
    """The images of one request, in order, and the settings they are scored with."""

    images: list[bytes]
    settings: dict[str, Any]


def read_scoring_request(content_type: str | None, body: bytes, query: Sequence[tuple[str, str]]
                         ) -> ScoringRequest:
    """The images and settings of a ``POST /score`` with this ``Content-Type``, body and query."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    query_settings = _query_settings(query)
    if media_type == JSON_MEDIA_TYPE:
        images, body_settings, explanation = _read_json(body)
        if body_settings is not None and query_settings:
            raise RequestError(422, "settings came both as query parameters and as \"parameters\" in the body; "
                                    "give them one way")
        settings = query_settings if body_settings is None else body_settings
        twice = sorted(set(settings) & set(explanation))
        if twice:
            raise RequestError(422, f"{', '.join(twice)}: given both as a setting and in the request's "
                                    f"{EXPLAINABILITY_KEY}/{XAI_PARAMETERS_KEY}; give each once")
        return ScoringRequest(images, {**settings, **explanation})
    if media_type.startswith("image/") or media_type == "application/octet-stream":
        if not body:
            raise RequestError(400, "the body is empty; send the image file's bytes")
        return ScoringRequest([body], query_settings)
    shown = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
    raise RequestError(415, f"{shown} is not a body this endpoint reads; send the image's bytes as "
                            f"{' or '.join(RAW_MEDIA_TYPES)} (curl -H 'Content-Type: image/jpeg' --data-binary "
                            f"@image.jpg), or JSON as {JSON_MEDIA_TYPE}", expected=EXPECTED_BODIES)


def _query_settings(query: Sequence[tuple[str, str]]) -> dict[str, Any]:
    try:
        return parse_set_options([f"{key}={value}" for key, value in query], "query parameter")
    except SettingsError as error:
        raise RequestError(422, str(error)) from None


def explanation_settings(content: dict[str, Any], where: str) -> dict[str, Any]:
    """The settings of the reference's explainability fields of ``content`` (a JSON body or row):
    ``model_explainability``, and each key of ``xai_parameters``. ``ValueError`` says what is wrong with
    them; their values are left to the settings' own checks."""
    settings: dict[str, Any] = {}
    if EXPLAINABILITY_KEY in content:
        settings[EXPLAINABILITY_KEY] = content[EXPLAINABILITY_KEY]
    parameters = content.get(XAI_PARAMETERS_KEY)
    if parameters is None:
        return settings
    if not isinstance(parameters, dict):
        raise ValueError(f"\"{XAI_PARAMETERS_KEY}\" {where} must be an object of explanation options, e.g. "
                         f"{{\"xai_algorithm\": \"xrai\", \"n_steps\": 50}}, not {type(parameters).__name__}")
    unknown = sorted(set(parameters) - set(XAI_PARAMETERS))
    if unknown:
        raise ValueError(f"unknown {XAI_PARAMETERS_KEY} option(s) {', '.join(map(repr, unknown))} {where}; the "
                         f"options are {', '.join(XAI_PARAMETERS)}")
    settings.update(parameters)
    return settings


def _read_json(body: bytes) -> tuple[list[bytes], dict[str, Any] | None, dict[str, Any]]:
    try:
        content = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise RequestError(400, f"the body is not JSON ({error}); send one of the expected bodies",
                           expected=EXPECTED_BODIES) from None
    if not isinstance(content, dict) or ("image" in content) == ("input_data" in content):
        raise RequestError(422, "the JSON body needs exactly one of \"image\" (one image) and \"input_data\" "
                                "(several)", expected=EXPECTED_BODIES)
    form = "image" if "image" in content else "input_data"
    allowed = [form, "parameters", *((EXPLAINABILITY_KEY, XAI_PARAMETERS_KEY) if form == "image" else ())]
    unknown = sorted(set(content) - set(allowed))
    if unknown:
        where = "" if form == "image" else (f" (the managed endpoint's body asks for explanations in each entry of "
                                            f"\"data\": {{\"{BASE64_KEY}\": ..., \"{EXPLAINABILITY_KEY}\": ..., "
                                            f"\"{XAI_PARAMETERS_KEY}\": ...}} as a JSON string)")
        raise RequestError(422, f"unknown key(s) {', '.join(map(repr, unknown))} in the JSON body; it may hold "
                                f"{', '.join(map(repr, allowed))}{where}", expected=EXPECTED_BODIES)
    settings = content.get("parameters")
    if settings is not None and not isinstance(settings, dict):
        raise RequestError(422, f"\"parameters\" must be an object of settings, e.g. {{\"box_score_thresh\": 0.5}}, "
                                f"not {type(settings).__name__}", expected=EXPECTED_BODIES)
    if form == "image":
        try:
            explanation = explanation_settings(content, "in the JSON body")
        except ValueError as error:
            raise RequestError(422, str(error), expected=EXPECTED_BODIES) from None
        return [_decode(content["image"], "image")], settings, explanation
    images, explanation = _managed_endpoint_images(content["input_data"])
    return images, settings, explanation


def _managed_endpoint_images(input_data: Any) -> tuple[list[bytes], dict[str, Any]]:
    """The images of the managed endpoint's ``input_data``, and the explanation settings of its rows."""
    if not isinstance(input_data, dict):
        raise RequestError(422, "\"input_data\" must be an object with \"columns\" and \"data\"",
                           expected=EXPECTED_BODIES)
    unknown = sorted(set(input_data) - {"columns", "index", "data"})
    if unknown:
        raise RequestError(422, f"unknown key(s) {', '.join(map(repr, unknown))} in \"input_data\"; it may hold "
                                "'columns', 'index' and 'data'", expected=EXPECTED_BODIES)
    columns = input_data.get("columns", ["image"])
    if columns != ["image"]:
        raise RequestError(422, f"\"input_data.columns\" must be [\"image\"], got {json.dumps(columns)[:100]}",
                           expected=EXPECTED_BODIES)
    data = input_data.get("data")
    if not isinstance(data, list) or not data:
        raise RequestError(422, "\"input_data.data\" must be a non-empty list of base64 images",
                           expected=EXPECTED_BODIES)
    index = input_data.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(data)):
        raise RequestError(422, f"\"input_data.index\" must be a list as long as \"data\" ({len(data)} entries), "
                                "or left out", expected=EXPECTED_BODIES)
    images = []
    explanation: dict[str, Any] = {}
    for position, entry in enumerate(data):
        where = f"input_data.data[{position}]"
        if isinstance(entry, list) and len(entry) == 1:  # a row of the one column
            entry = entry[0]
        if isinstance(entry, str) and entry.lstrip().startswith("{"):  # base64 never starts with "{"
            entry, options = _json_row(entry, where)
            if position == 0:
                explanation = options
            elif options and options != explanation:
                raise RequestError(422, f"\"{where}\" asks for other explanation options than input_data.data[0] "
                                        f"({json.dumps(options)[:200]} against {json.dumps(explanation)[:200]}); a "
                                        "request's options are its first entry's: give them there, and the same or "
                                        "none in the others", expected=EXPECTED_BODIES)
        images.append(_decode(entry, where))
    return images, explanation


def _json_row(text: str, where: str) -> tuple[Any, dict[str, Any]]:
    """The base64 image and the explanation settings of a JSON string entry ``{"image_base64": ...,
    "model_explainability": ..., "xai_parameters": {...}}`` (the reference's MLflow input)."""
    try:
        content = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise RequestError(400, f"\"{where}\" starts like JSON but is not JSON ({error}); send a base64 image, or "
                                f"a JSON string {{\"{BASE64_KEY}\": \"<base64>\", ...}}") from None
    allowed = (BASE64_KEY, EXPLAINABILITY_KEY, XAI_PARAMETERS_KEY)
    if not isinstance(content, dict) or BASE64_KEY not in content:
        raise RequestError(422, f"\"{where}\": a JSON entry must be an object with the image, base64, under "
                                f"\"{BASE64_KEY}\"", expected=EXPECTED_BODIES)
    unknown = sorted(set(content) - set(allowed))
    if unknown:
        raise RequestError(422, f"unknown key(s) {', '.join(map(repr, unknown))} in \"{where}\"; a JSON entry may "
                                f"hold {', '.join(map(repr, allowed))}", expected=EXPECTED_BODIES)
    try:
        return content[BASE64_KEY], explanation_settings(content, f"in \"{where}\"")
    except ValueError as error:
        raise RequestError(422, str(error), expected=EXPECTED_BODIES) from None


def _decode(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise RequestError(422, f"\"{where}\" must be a base64 string, not {type(text).__name__}",
                           expected=EXPECTED_BODIES)
    try:
        # Line breaks are allowed: base64.encodebytes, which the reference's samples use, writes them.
        content = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(400, f"\"{where}\" is not base64 ({error}); {_BASE64_HELP}") from None
    if not content:
        raise RequestError(400, f"\"{where}\" is empty; {_BASE64_HELP}")
    return content
