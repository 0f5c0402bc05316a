"""``benchmark``: the provider benchmark stage (configurations, batch sizes, budgets)."""

from __future__ import annotations

from pydantic import Field

from pillsnap.config.base import Section


class BenchmarkConfig(Section):
    enabled: bool = False
    warmup: int = Field(3, ge=0)
    iterations: int = Field(20, gt=0)
    batch_sizes: list[int] = [1, 8]
