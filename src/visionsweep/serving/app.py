"""The scoring endpoint as a FastAPI app: ``POST /score``, ``GET /health``, ``GET /ready`` and the
OpenAPI page (``/docs``).

The model loads in a thread once the server listens: ``/health`` answers at once, ``/ready`` and
``/score`` answer 503 until the model is loaded. Every error is JSON ``{"error": "<what to change>"}``
(with ``expected`` or ``images`` where they help); a user's mistake is a 4xx without a traceback, and
the server goes on serving.
"""
from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from visionsweep import __version__
from visionsweep.api import load_model
from visionsweep.data.report import IMAGE_TOO_LARGE
from visionsweep.errors import SettingsError, VisionSweepError
from visionsweep.inference.model_folder import ONNXRUNTIME, TORCH, TrainedModel
from visionsweep.serving.auth import require_api_key
from visionsweep.serving.batching import DynamicBatcher
from visionsweep.serving.config import ServeConfig
from visionsweep.serving.openapi import READY_RESPONSES, SCORE_OPENAPI, SCORE_RESPONSES
from visionsweep.serving.requests import RequestError, read_scoring_request
from visionsweep.serving.scoring import REQUEST_SETTINGS, ImageError, Scorer, settings_key

# The server's messages go with uvicorn's own, in the server process and in every worker process.
log = logging.getLogger("uvicorn.error")

# The most of an over-long body read (and dropped) before answering 413, in multiples of the limit.
_DRAINED_LIMITS = 4
BATCH_SIZE_HEADER = "X-Batch-Size"  # images in the forward that scored this request (all requests in it)


@dataclass
class ServedModel:
    """The model behind the endpoint: ``loading``, then ``ready`` (with its scorer and batcher) or
    ``failed`` (with the error)."""

    status: str = "loading"
    error: str | None = None
    trained: TrainedModel | None = None
    scorer: Scorer | None = None
    batcher: DynamicBatcher | None = None


def create_app(config: ServeConfig, *, on_load_failure: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The app serving ``config.model``. ``on_load_failure`` is told when the model cannot be loaded
    (``serve`` stops the server then)."""
    served = ServedModel()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(config, served, on_load_failure))
        try:
            yield
        finally:
            await loading  # a load under way runs to its end: its thread cannot be stopped
            if served.batcher is not None:
                await served.batcher.stop()  # what is queued is answered first

    key = config.api_key()
    protected = [Depends(require_api_key(key))] if key is not None else []
    app = FastAPI(title="visionsweep scoring endpoint", version=__version__, lifespan=lifespan,
                  description="Scores images with a model trained by visionsweep, in the request and response "
                              "formats of Azure AutoML for Images online endpoints (docs/deployment.md).")
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)

    @app.get("/health", summary="Liveness: the server answers (no API key needed)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: 200 once the model is loaded, 503 before", dependencies=protected,
             responses=READY_RESPONSES)
    async def ready() -> Response:
        if served.status != "ready":
            content = {"status": served.status, **({"error": served.error} if served.error else {})}
            return JSONResponse(content, status_code=503, headers={"Retry-After": "1"})
        trained = served.trained
        return JSONResponse({
            "status": "ready", "task": trained.task.value, "model_name": trained.model_name,
            "runtime": ONNXRUNTIME if trained.onnx is not None else TORCH, "labels": trained.labels,
            "request_settings": list(REQUEST_SETTINGS), "max_batch_size": config.max_batch_size,
            "max_wait_ms": config.max_wait_ms, "process_id": os.getpid(),
            "batching": asdict(served.batcher.counts)})

    @app.post("/score", summary="Score images: one answer per image, in request order", dependencies=protected,
              openapi_extra=SCORE_OPENAPI, responses=SCORE_RESPONSES)
    async def score(request: Request) -> Response:
        if served.status != "ready":
            problem = (f"the model could not be loaded: {served.error}" if served.error
                       else "the model is still loading; retry when GET /ready answers 200")
            return JSONResponse({"error": problem}, status_code=503, headers={"Retry-After": "1"})
        body = await _read_body(request, config.max_body_bytes, config.max_body_mb)
        scoring = read_scoring_request(request.headers.get("content-type"), body, request.query_params.multi_items())
        try:
            served.scorer.check_settings(scoring.settings)
            answer = await served.batcher.submit(scoring.images, scoring.settings, settings_key(scoring.settings))
        except SettingsError as error:  # also from the forward: settings an ONNX graph holds fixed
            raise RequestError(422, str(error), allowed=list(REQUEST_SETTINGS)) from None
        except VisionSweepError as error:
            raise RequestError(400, str(error)) from None
        problems = [{"index": index, "reason": item.reason, "detail": item.detail}
                    for index, item in enumerate(answer.answers) if isinstance(item, ImageError)]
        if problems:
            too_large = all(problem["reason"] == IMAGE_TOO_LARGE for problem in problems)
            raise RequestError(413 if too_large else 400, _image_problems(problems, len(scoring.images), too_large),
                               images=problems)
        return JSONResponse(answer.answers, headers={BATCH_SIZE_HEADER: str(answer.batch_size)})

    return app


def app_from_environment() -> FastAPI:
    """The app of a uvicorn worker process (``--workers``), from ``ServeConfig.to_environment``."""
    import torch

    config = ServeConfig.from_environment()
    # Each worker runs its own forwards: share the cores out instead of every worker using them all.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.workers))
    return create_app(config)


async def _load(config: ServeConfig, served: ServedModel,
                on_failure: Callable[[BaseException], None] | None) -> None:
    try:
        trained = await asyncio.to_thread(load_model, config.model, config.settings or None, config.runtime)
        scorer = Scorer(trained, batch_size=config.max_batch_size)
    except Exception as error:
        served.status, served.error = "failed", str(error)
        if not isinstance(error, (VisionSweepError, OSError)):
            log.exception("loading %s failed", config.model)  # a bug: its traceback
        if on_failure is not None:
            on_failure(error)  # serve() stops the server and raises the error
        elif isinstance(error, (VisionSweepError, OSError)):
            log.error("error: %s", error)  # a worker process: /ready says so too
        return
    batcher = DynamicBatcher(scorer.score, max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms)
    batcher.start()
    served.trained, served.scorer, served.batcher, served.status = trained, scorer, batcher, "ready"
    log.info("ready: %s (%s, %s) from %s; batches of up to %d images, waiting up to %g ms", trained.model_name,
             trained.task.value, ONNXRUNTIME if trained.onnx is not None else TORCH, trained.source,
             config.max_batch_size, config.max_wait_ms)


async def _read_body(request: Request, limit: int, limit_mb: float) -> bytes:
    """The body, or 413 when it is longer than ``limit`` bytes. The rest of a body a little too long is
    read and dropped before the answer: a client that is still sending when the connection closes sees a
    reset connection, not the 413 (a body over ``_DRAINED_LIMITS`` times the limit is cut off anyway)."""
    declared = request.headers.get("content-length", "")
    drained = limit * _DRAINED_LIMITS
    size = int(declared) if declared.isdigit() else 0
    if size <= drained:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > drained:
                break
        if size <= limit:
            return b"".join(chunks)
    shown = f"{size} bytes" if declared.isdigit() else f"more than {limit} bytes"
    raise RequestError(413, f"the body is {shown}, over this server's limit of {limit_mb:g} MiB; send fewer or "
                            "smaller images per request, or start the server with a larger --max-body-mb")


def _image_problems(problems: list[dict[str, Any]], count: int, too_large: bool) -> str:
    listed = "; ".join(f"image {p['index']}: {p['reason']}: {p['detail']}" for p in problems)
    fix = ("send images of fewer pixels (the model's max_image_pixels)" if too_large
           else "send each image's file bytes (JPEG, PNG, BMP, ...)")
    return f"{len(problems)} of the {count} images could not be scored ({listed}); {fix}"


async def _request_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, RequestError)
    return JSONResponse(error.body(), status_code=error.status)


async def _http_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    return JSONResponse({"error": error.detail}, status_code=error.status_code, headers=error.headers)


async def _internal_error(_: Request, error: Exception) -> Response:
    # A bug: uvicorn logs its traceback (Starlette raises the error again once this answer is sent).
    return JSONResponse({"error": f"internal error ({type(error).__name__}); the server log has the details"},
                        status_code=500)
