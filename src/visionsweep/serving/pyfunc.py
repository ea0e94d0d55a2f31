"""The MLflow pyfunc model of a trained visionsweep model (``mlflow-model/`` in a model folder, written
by ``exporting.mlflow_model``; docs/deployment.md).

``predict`` takes a DataFrame with an ``image`` column, one image per row: raw bytes, a base64 string,
or (as the reference accepts) a JSON string ``{"image_base64": "...", "model_explainability": true,
"xai_parameters": {...}}``, whose explanation options (docs/explainability.md) are the first row's, as
the reference reads them (another row may repeat them, not change them). It answers one row per image,
in order, with the columns of ``exporting.mlflow_model.output_columns``: ``probs`` and ``labels`` for
classification (and ``visualizations`` and ``attributions`` when explained), ``boxes`` for detection
and segmentation, as lists (the JSON values of the scoring endpoint, not JSON text). The images are
scored by ``Scorer``, the batch prediction path. An image that cannot be used fails the whole call with
an ``MlflowException`` (``INVALID_PARAMETER_VALUE``, so ``mlflow models serve`` answers 400) naming each
bad row and why: a row never vanishes from the answer.

Inference settings come from the model's ``model_config`` ``{"settings": {...}}`` (stored at export,
replaced by ``mlflow.pyfunc.load_model(..., model_config=...)`` or ``MLFLOW_PYFUNC_INFERENCE_CONFIG``);
``predict`` takes no ``params`` (the signature declares none, so MLflow drops any given).
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from visionsweep.api import load_model
from visionsweep.errors import SettingsError
from visionsweep.exporting.mlflow_model import INPUT_COLUMN, output_columns
from visionsweep.inference.explanations import EXPLANATION_FIELDS
from visionsweep.serving.requests import BASE64_KEY, EXPLAINABILITY_KEY, XAI_PARAMETERS_KEY, explanation_settings
from visionsweep.serving.scoring import ImageError, Scorer


class ImageModel(mlflow.pyfunc.PythonModel):
    """Scores the images of a DataFrame's ``image`` column with the model folder in the artifacts."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # model_config "settings": inference settings given at export (--set) or at mlflow.pyfunc.load_model
        settings = (context.model_config or {}).get("settings")
        self.scorer = Scorer(load_model(context.artifacts["model"], settings))
        self.columns = list(output_columns(self.scorer.task))

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if INPUT_COLUMN not in model_input.columns:
            raise _invalid(f"the input has no {INPUT_COLUMN!r} column (it has {list(model_input.columns)}); "
                           f"send one image per row in a column named {INPUT_COLUMN!r}")
        rows = list(model_input.index)
        images, problems, explanation = [], [], None
        for row, value in zip(rows, model_input[INPUT_COLUMN]):
            try:
                image, options = image_row(value)
            except ValueError as error:
                problems.append(f"row {row}: {error}")
                continue
            images.append(image)
            if explanation is None:  # the first row's options are the call's, as the reference reads them
                explanation = options
            elif options and options != explanation:
                problems.append(f"row {row}: asks for other explanation options than row {rows[0]} ({options} "
                                f"against {explanation}); the options are the first row's: give the same or none")
        if not problems:
            try:
                answers = self.scorer.score(images, explanation or None)
            except SettingsError as error:
                raise _invalid(f"the explanation options cannot be used: {error}") from None
            problems = [f"row {row}: {answer.reason} ({answer.detail})" for row, answer in zip(rows, answers)
                        if isinstance(answer, ImageError)]
        if problems:
            raise _invalid(f"{len(problems)} of {len(rows)} images cannot be scored, so none was: "
                           + "; ".join(problems))
        explained = [name for name in EXPLANATION_FIELDS if answers and name in answers[0]]
        return pd.DataFrame(answers, columns=self.columns + explained)


def image_bytes(value: Any) -> bytes:
    """The encoded image a row holds: raw bytes, a base64 string, or a JSON string with ``image_base64``.
    ``ValueError`` says what the value is instead."""
    return image_row(value)[0]


def image_row(value: Any) -> tuple[bytes, dict[str, Any]]:
    """The encoded image a row holds (see ``image_bytes``) and the explanation settings of a JSON string
    row (its ``model_explainability`` and ``xai_parameters``; empty for any other row)."""
    options: dict[str, Any] = {}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), options
    if not isinstance(value, str):
        raise ValueError(f"incompatible input format: got {type(value).__name__}; send the image as bytes or "
                         f'a base64 string (or a JSON string {{"{BASE64_KEY}": ...}})')
    text = value.strip()
    if text.startswith("{"):
        try:
            content = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"the value starts like JSON but is not JSON ({error})") from None
        if not isinstance(content, dict) or not isinstance(content.get(BASE64_KEY), str):
            raise ValueError(f'a JSON row must be an object with the image as a base64 string under "{BASE64_KEY}"')
        allowed = (BASE64_KEY, EXPLAINABILITY_KEY, XAI_PARAMETERS_KEY)
        unknown = sorted(set(content) - set(allowed))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} in the JSON row; it may hold "
                             f"{', '.join(map(repr, allowed))}")
        options = explanation_settings(content, "in the JSON row")
        text = content[BASE64_KEY]
    try:
        # line breaks as base64.encodebytes writes them
        return base64.b64decode("".join(text.split()), validate=True), options
    except binascii.Error as error:
        raise ValueError(f"not a base64 string ({error})") from None


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)
