"""``quantize``: the static INT8 stage (calibration, recipes, the exclusion search)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pillsnap.config.base import Section


class QuantizeConfig(Section):
    enabled: bool = False
    method: Literal["static_qdq"] = "static_qdq"
    calibration_count: int = Field(128, gt=0)
    per_channel: bool = True
