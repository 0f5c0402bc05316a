"""``serve``: the serving API (bind address, model choice, limits, batching)."""

from __future__ import annotations

from pydantic import Field

from pillsnap.config.base import Section


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
