"""Response bodies of the API (pydantic): what clients may rely on, and the OpenAPI docs."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class TopK(BaseModel):
    index: int
    edi_code: str
    prob: float


class Pill(BaseModel):
    box: list[float]
    """x1, y1, x2, y2 in the pixels of the uploaded photo (after its EXIF rotation)."""
    det_conf: float
    class_index: int
    edi_code: str
    name: str
    cls_conf: float
    top5: list[TopK]


class ImageInfo(BaseModel):
    width: int
    height: int
    format: str


class PhotoResult(BaseModel):
    filename: str
    image: ImageInfo
    pills: list[Pill]
    timing_ms: dict[str, float]


class PredictResponse(BaseModel):
    request_id: str
    model_version: str
    degraded: bool
    image: ImageInfo
    pills: list[Pill]
    timing_ms: dict[str, float]
    """decode, detect (queue + model), crops, classify (queue + model), total."""


class BatchResponse(BaseModel):
    request_id: str
    model_version: str
    degraded: bool
    results: list[PhotoResult]
    timing_ms: dict[str, float]


class ErrorResponse(BaseModel):
    error: str
    request_id: str | None


class Live(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    """ready, or degraded (serving the Torch checkpoints, no verified release)."""
    model_version: str
    degraded: bool
    reloading: bool


class ModelInfo(BaseModel):
    version: str
    source: str
    release_dir: str | None
    degraded: bool
    engine: str
    providers: list[str]
    precision: dict[str, str]
    models: dict[str, str]
    files: dict[str, str]
    class_map: dict[str, str]
    loaded_at_utc: str
    load_seconds: float
    warnings: list[str]
    reloading: bool


class ReloadResponse(BaseModel):
    request_id: str
    model_version: str
    previous_version: str | None
    model: dict[str, Any]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "bad input (corrupt photo, bad path, malformed body)",
        401: "missing or wrong admin token",
        403: "forbidden (reload disabled, path outside the allowed roots)",
        404: "not found",
        409: "another reload is running",
        413: "body or photo too large",
        415: "unsupported content type",
        422: "invalid request / model fails to load",
        503: "not ready, overloaded or shutting down",
    }.items()
}
