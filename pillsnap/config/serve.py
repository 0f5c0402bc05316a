"""``serve``: the serving API (bind address, model choice, limits, batching).

These are the config-file values of ``pillsnap serve``; the environment and ``.env``
(``PILLSNAP_SERVE_<KEY>``, ``MODEL_PATH``) and the command line override them
(``pillsnap.serve.settings``). The admin token is deliberately not a config key:
secrets live in the environment or ``.env`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pillsnap.config.base import Section


class ServeConfig(Section):
    host: str = "127.0.0.1"
    """Bind address; loopback unless you put a proxy with TLS and auth in front."""
    port: int = Field(8000, ge=0, lt=65536)
    """0 = any free port (the chosen one is printed)."""
    model_path: Path | None = None
    """A release folder or a file inside one; ``MODEL_PATH`` (env / .env) wins over it."""
    strict: bool = True
    """A ``MODEL_PATH`` that is missing or fails verification stops the start (false: log, fall through)."""
    precision: Literal["fp32", "int8"] = "fp32"
    """Which models of the release: float, or the INT8 ones (fp32 with a warning when absent)."""
    allowed_model_roots: list[Path] = []
    """Folders ``/reload`` may load from (resolved, symlinks followed); empty = ``paths.out_dir``."""
    max_upload_bytes: int = Field(8 * 1024 * 1024, gt=0)
    """Largest photo accepted (413 above it, before the body is read whole)."""
    max_batch_upload_bytes: int = Field(32 * 1024 * 1024, gt=0)
    """Largest body of ``/v1/predict/batch`` (each photo in it is also held to max_upload_bytes)."""
    max_batch_files: int = Field(16, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0)
    """Width x height above which a photo is refused before decoding (400): bounds memory."""
    max_batch: int = Field(8, gt=0)
    """Requests gathered into one detector batch / one classifier batch."""
    max_wait_ms: float = Field(5.0, ge=0)
    """How long a batch waits for more requests already on their way (never when none are)."""
    batching: bool = True
    """false: one photo at a time through the models (max_batch 1), for comparison."""
    max_queue: int = Field(64, gt=0)
    """Requests waiting for a model beyond which new ones get 503 + Retry-After."""
    decode_threads: int = Field(2, gt=0)
    """Threads decoding uploads and cutting crops (off the event loop and the model thread)."""
    request_timeout_s: float = Field(30.0, gt=0)
    limit_concurrency: int = Field(128, gt=1)
    """uvicorn's connection cap (plain 503 above it); the queue limit is the real overload control."""
    graceful_timeout_s: float = Field(30.0, gt=0)
    """On SIGTERM: stop accepting, let in-flight requests finish for at most this long."""
    warmup_image: Path | None = None
    """Photo used to warm a model up before it serves; None = the built-in demo photo."""
