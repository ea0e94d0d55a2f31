"""The scoring server's options, checked all at once before anything starts, and handed to uvicorn's
worker processes through an environment variable (a worker is started from an import string, so it
cannot be given objects). Importing it loads neither torch nor the web stack."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from visionsweep.errors import SettingsError

DEFAULT_HOST = "127.0.0.1"  # loopback: reachable from this machine only, unless --host says otherwise
DEFAULT_PORT = 5001
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_WAIT_MS = 10.0
DEFAULT_MAX_BODY_MB = 32.0
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# The longest the server waits for requests in flight to be answered once told to stop.
GRACEFUL_SHUTDOWN_SECONDS = 30
# Where a worker process finds its options (ServeConfig.to_environment).
CONFIG_VARIABLE = "VISIONSWEEP_SERVE_CONFIG"
_MAX_WAIT_LIMIT_MS = 10_000.0


@dataclass(frozen=True)
class ServeConfig:
    """What ``visionsweep serve`` runs: the model (a run, model or sweep folder, a checkpoint or an
    ``.onnx`` file) with ``settings`` overriding its inference settings, and how it is served."""

    model: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    runtime: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_body_mb: float = DEFAULT_MAX_BODY_MB
    # The name of the environment variable that holds the API key, never the key itself.
    api_key_env: str | None = None
    log_level: str = "info"

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    def check(self) -> None:
        """``SettingsError`` with one line per option that cannot work."""
        from visionsweep.inference.model_folder import RUNTIMES  # here: the command's parser reads this module

        problems = []
        if not 1 <= self.port <= 65535:
            problems.append(f"port: got {self.port}; use a TCP port from 1 to 65535")
        if self.runtime is not None and self.runtime not in RUNTIMES:
            problems.append(f"runtime: got {self.runtime!r}; use {' or '.join(RUNTIMES)}")
        if self.workers < 1:
            problems.append(f"workers: got {self.workers}; use 1 or more worker processes")
        if self.max_batch_size < 1:
            problems.append(f"max_batch_size: got {self.max_batch_size}; use 1 (no batching) or more images")
        if not 0 <= self.max_wait_ms <= _MAX_WAIT_LIMIT_MS:
            problems.append(f"max_wait_ms: got {self.max_wait_ms}; use 0 to {_MAX_WAIT_LIMIT_MS:.0f} milliseconds")
        if not self.max_body_mb > 0:
            problems.append(f"max_body_mb: got {self.max_body_mb}; use a positive number of MiB")
        if self.log_level not in LOG_LEVELS:
            problems.append(f"log_level: got {self.log_level!r}; use one of {', '.join(LOG_LEVELS)}")
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            problems.append(f"api_key_env: the environment variable {self.api_key_env} is "
                            f"{'empty' if self.api_key_env in os.environ else 'not set'}; put the API key in it "
                            f"(export {self.api_key_env}=...), or serve without --api-key-env")
        if problems:
            raise SettingsError(problems, context="serve option")

    def api_key(self) -> str | None:
        """The key every request must present (read from the environment at each start), or None."""
        return os.environ[self.api_key_env] if self.api_key_env is not None else None

    def to_environment(self) -> None:
        os.environ[CONFIG_VARIABLE] = json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> ServeConfig:
        text = os.environ.get(CONFIG_VARIABLE)
        if text is None:
            raise SettingsError([f"{CONFIG_VARIABLE} is not set: start worker processes with visionsweep serve"],
                                context="serve option")
        return cls(**json.loads(text))
