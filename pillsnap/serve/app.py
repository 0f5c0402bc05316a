"""The HTTP layer: thin routes over ``PredictService`` and ``ModelManager``, one error shape.

``create_app`` is a factory (no module-level app or global state): the lifespan
builds the service, starts the batchers and loads the start-up model in the
background, so ``/health/live`` answers at once and ``/health/ready`` says 503 until
a verified model is loaded and warmed up. Every error is ``{"error", "request_id"}``;
stack traces go to the log only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from pillsnap.config import Config
from pillsnap.serve.bodies import (
    BATCH_BODY,
    IMAGE_BODY,
    RELOAD_BODY,
    body_limits,
    check_admin,
    read_json,
    read_photo,
    read_photos,
)
from pillsnap.serve.errors import add_error_handlers
from pillsnap.serve.manager import ModelManager, ModelSource
from pillsnap.serve.metrics import Metrics, MetricsMiddleware
from pillsnap.serve.middleware import BodyLimitMiddleware, RequestIdMiddleware
from pillsnap.serve.schemas import (
    ERRORS,
    BatchResponse,
    Live,
    ModelInfo,
    PredictResponse,
    Ready,
    ReloadResponse,
)
from pillsnap.serve.service import Prediction, PredictService
from pillsnap.serve.settings import ServeSettings, allowed_roots

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
ROUTES = frozenset(
    {"/", "/v1/predict", "/v1/predict/batch", "/health/live", "/health/ready", "/v1/model"}
    | {"/metrics", "/reload", "/v1/admin/reload"}
)


def create_app(
    cfg: Config,
    settings: ServeSettings,
    source: ModelSource,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app serving ``source`` (resolved by ``manager.resolve_source``) with ``settings``."""
    metrics = Metrics()
    manager = ModelManager(
        cfg, settings, allowed_roots(settings, cfg), metrics.model_changed, metrics.reloaded
    )
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = PredictService(manager, settings, metrics)
        app.state.service, app.state.manager = service, manager
        service.start()

        async def initial_load() -> None:
            try:
                await manager.start(source)
            except Exception as exc:  # noqa: BLE001 - reported, and the server stops (exit 1)
                manager.startup_error = f"the start-up model did not load: {exc}"
                log.error("%s", manager.startup_error)
                if on_fatal is not None:
                    on_fatal(exc)

        loading = asyncio.create_task(initial_load())
        try:
            yield
        finally:
            loading.cancel()
            await service.close()

    app = FastAPI(
        title="PillSnap",
        version="1",
        summary="Pills in a photo -> boxes, edi_codes, confidences (a verified release)",
        lifespan=lifespan,
        responses=ERRORS,
    )
    # Last added = outermost: RequestId > Metrics > BodyLimit > routes.
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limits(settings))
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=ROUTES)
    app.add_middleware(RequestIdMiddleware)
    add_error_handlers(app, metrics)

    def service_of(request: Request) -> PredictService:
        return request.app.state.service

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.post("/v1/predict", response_model=PredictResponse, openapi_extra=IMAGE_BODY)
    async def predict(request: Request) -> dict[str, Any]:
        """One photo: multipart field ``file``, or the raw bytes with an image content type."""
        start = time.perf_counter()
        result = await service_of(request).predict(
            lambda: read_photo(request, settings.max_upload_bytes)
        )
        request.state.model_version = result.model.version
        return {**_head(request, result.model), **photo_body(result, start)}

    @app.post("/v1/predict/batch", response_model=BatchResponse, openapi_extra=BATCH_BODY)
    async def predict_batch(request: Request) -> dict[str, Any]:
        """Several photos in one multipart request (repeated field ``files``)."""
        start = time.perf_counter()
        results = await service_of(request).predict_files(
            lambda: read_photos(request, settings.max_upload_bytes, settings.max_batch_files)
        )
        model = results[0].model
        request.state.model_version = model.version
        return {
            **_head(request, model),
            "results": [{"filename": r.name, **photo_body(r)} for r in results],
            "timing_ms": {"total": _ms_since(start)},
        }

    @app.get("/health/live", response_model=Live)
    async def live() -> dict[str, str]:
        """The process answers (touches no model)."""
        return {"status": "alive"}

    @app.get("/health/ready", response_model=Ready)
    async def ready(request: Request) -> dict[str, Any]:
        """200 once a verified model (or the degraded fallback) is loaded and warm; 503 before."""
        model = service_of(request).pin()
        request.state.model_version = model.version
        return {
            "status": "degraded" if model.degraded else "ready",
            "model_version": model.version,
            "degraded": model.degraded,
            "reloading": manager.reloading,
        }

    @app.get("/v1/model", response_model=ModelInfo)
    async def model_info(request: Request) -> dict[str, Any]:
        """Version, source, sha256 of every file, engine, providers, precision, degraded flag."""
        model = service_of(request).pin()
        request.state.model_version = model.version
        return {**model.describe(), "reloading": manager.reloading}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    async def reload(request: Request) -> dict[str, Any]:
        """Switch to the verified release ``model_path`` names (admin token required)."""
        check_admin(request, settings)
        body = await read_json(request)
        who = f"{request.client.host if request.client else '?'} request {request.state.request_id}"
        new, old = await manager.reload(body.get("model_path"), who)
        request.state.model_version = new.version
        return {
            "request_id": request.state.request_id,
            "model_version": new.version,
            "previous_version": old,
            "model": new.describe(),
        }

    for path in ("/reload", "/v1/admin/reload"):
        app.add_api_route(
            path, reload, methods=["POST"], response_model=ReloadResponse, openapi_extra=RELOAD_BODY
        )
    return app


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


def _head(request: Request, model: Any) -> dict[str, Any]:
    return {
        "request_id": request.state.request_id,
        "model_version": model.version,
        "degraded": model.degraded,
    }


def photo_body(result: Prediction, start: float | None = None) -> dict[str, Any]:
    photo = result.photo
    timing = dict(result.timing_ms)
    if start is not None:
        timing["total"] = _ms_since(start)
    return {
        "image": {"width": photo.image.width, "height": photo.image.height, "format": photo.format},
        "pills": [p.to_dict() for p in result.pills],
        "timing_ms": timing,
    }
