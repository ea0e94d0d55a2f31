"""``visionsweep.serve``: the scoring endpoint on uvicorn, in this process or in worker processes.

The server listens before the model loads (``/health`` answers, ``/ready`` says 503 until it is
loaded). SIGTERM stops it gracefully: no new connections, requests in flight are answered (for up to
``GRACEFUL_SHUTDOWN_SECONDS``), then ``serve`` returns. Ctrl-C does the same, then raises
KeyboardInterrupt.
"""
from __future__ import annotations

import logging
import signal
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import uvicorn
from uvicorn.supervisors import Multiprocess

from visionsweep.errors import VisionSweepError
from visionsweep.serving.app import create_app
from visionsweep.serving.config import (
    DEFAULT_HOST,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BODY_MB,
    DEFAULT_MAX_WAIT_MS,
    DEFAULT_PORT,
    GRACEFUL_SHUTDOWN_SECONDS,
    ServeConfig,
)

WORKER_APP = "visionsweep.serving.app:app_from_environment"


class ServeError(VisionSweepError):
    """The server cannot start or run (the address is taken, the model cannot be loaded)."""


def serve(model: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, runtime: str | None = None,
          settings: Mapping[str, Any] | None = None, workers: int = 1, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
          max_wait_ms: float = DEFAULT_MAX_WAIT_MS, max_body_mb: float = DEFAULT_MAX_BODY_MB,
          api_key_env: str | None = None, log_level: str = "info") -> None:
    """Serve ``model`` (a run, model or sweep folder, a checkpoint or an ``.onnx`` file) over HTTP until
    stopped; blocks. docs/deployment.md describes the endpoint.

    ``runtime`` and ``settings`` are as for ``predict``. ``workers`` processes each load the model and
    take connections from one socket. Concurrent requests are scored together, up to ``max_batch_size``
    images per forward, waiting at most ``max_wait_ms`` for others to join (1: one request at a time).
    Bodies over ``max_body_mb`` MiB are refused. With ``api_key_env``, the environment variable of that
    name holds the API key that every request but ``/health`` and the OpenAPI page must send as
    ``Authorization: Bearer``.
    """
    config = ServeConfig(model=str(model), host=host, port=port, runtime=runtime, settings=dict(settings or {}),
                         workers=workers, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                         max_body_mb=max_body_mb, api_key_env=api_key_env, log_level=log_level)
    config.check()
    if workers == 1:
        _serve_here(config)
    else:
        _serve_in_workers(config)


def _serve_here(config: ServeConfig) -> None:
    failures: list[BaseException] = []
    server: uvicorn.Server

    def stop(error: BaseException) -> None:
        failures.append(error)
        server.should_exit = True

    listening = _listen(config)
    try:
        server = uvicorn.Server(uvicorn.Config(create_app(config, on_load_failure=stop), **_uvicorn_options(config)))
        _announce(config)
        with _stop_signals_end_normally():
            server.run(sockets=[listening])
    finally:
        listening.close()
    if failures:
        error = failures[0]
        raise error if isinstance(error, VisionSweepError) else ServeError(
            f"cannot load {config.model}: {error}") from error


def _serve_in_workers(config: ServeConfig) -> None:
    from visionsweep.api import load_model

    # A model that cannot be loaded would fail every worker, over and over: check it once here.
    load_model(config.model, config.settings or None, config.runtime)
    config.to_environment()  # the workers' configuration (they are started from an import string)
    listening = _listen(config)
    try:
        uvicorn_config = uvicorn.Config(WORKER_APP, factory=True, workers=config.workers, **_uvicorn_options(config))
        _announce(config)
        Multiprocess(uvicorn_config, sockets=[listening]).run()  # stops its workers on SIGTERM or Ctrl-C
    finally:
        listening.close()


def _uvicorn_options(config: ServeConfig) -> dict[str, Any]:
    # host and port only name the address in uvicorn's log: the socket is ours (_listen)
    return {"host": config.host, "port": config.port, "log_level": config.log_level,
            "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS}


def _announce(config: ServeConfig) -> None:
    # uvicorn says where it listens only for sockets it made itself; uvicorn.Config has set up its logger
    host = f"[{config.host}]" if ":" in config.host else config.host
    logging.getLogger("uvicorn.error").info(
        "visionsweep serve: listening on http://%s:%d (GET /ready answers 200 once the model is loaded)", host,
        config.port)


def _listen(config: ServeConfig) -> socket.socket:
    """The listening socket, made here so that a taken address is a clear error rather than uvicorn's exit.
    Its protocol is named: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections of a
    socket whose protocol is IPPROTO_TCP, and with it on, an answer written in two parts waits for the
    client's delayed acknowledgement, 40 ms on Linux."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((config.host, config.port))
        listening.listen(2048)
    except OSError as error:
        listening.close()
        raise ServeError(f"cannot listen on {config.host}:{config.port}: {error.strerror or error}; choose another "
                         "--port, or stop what uses it") from None
    listening.set_inheritable(True)  # worker processes take connections from it
    return listening


@contextmanager
def _stop_signals_end_normally() -> Iterator[None]:
    """Once uvicorn has stopped on SIGTERM it raises the signal again, for whatever handled it before; a
    stop asked for is this command's normal end (exit status 0), so that handler does nothing."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
