"""The HTTP layer: thin routes over ``PredictService`` and ``ModelManager``, one error shape.

``create_app`` is a factory (no module-level app or global state): the lifespan
builds the service, starts the batchers and loads the start-up model in the
background, so ``/health/live`` answers at once and ``/health/ready`` says 503 until
a verified model is loaded and warmed up. Every error is ``{"error", "request_id"}``;
stack traces go to the log only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from pillsnap.config import Config
from pillsnap.serve.batching import BatcherClosed, QueueFull
from pillsnap.serve.images import IMAGE_CONTENT_TYPES, BadImage
from pillsnap.serve.manager import ModelManager, ModelSource, ReloadInProgress
from pillsnap.serve.metrics import Metrics, MetricsMiddleware
from pillsnap.serve.middleware import BodyLimitMiddleware, RequestIdMiddleware, request_id_var
from pillsnap.serve.model import ModelRejected
from pillsnap.serve.schemas import (
    ERRORS,
    BatchResponse,
    Live,
    ModelInfo,
    PredictResponse,
    Ready,
    ReloadResponse,
)
from pillsnap.serve.service import NotReady, Prediction, PredictService
from pillsnap.serve.settings import ServeSettings, allowed_roots

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the photo
SMALL_BODY = 64 * 1024  # JSON bodies (reload) and anything else
_REJECTED_STATUS = {"forbidden": 403, "path": 400, "verify": 400, "load": 422, "warmup": 422}
ROUTES = frozenset(
    {"/", "/v1/predict", "/v1/predict/batch", "/health/live", "/health/ready", "/v1/model"}
    | {"/metrics", "/reload", "/v1/admin/reload"}
)
RAW_TYPES = (*IMAGE_CONTENT_TYPES, "application/octet-stream")
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            **{
                t: {"schema": {"type": "string", "format": "binary", "minLength": 1}}
                for t in RAW_TYPES
            },
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}
RELOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["model_path"],
                    "properties": {"model_path": {"type": "string", "minLength": 1}},
                }
            }
        },
    }
}


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
    app.add_middleware(BodyLimitMiddleware, limit_for=_body_limits(settings))
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=ROUTES)
    app.add_middleware(RequestIdMiddleware)
    _add_error_handlers(app, metrics)

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


def _body_limits(settings: ServeSettings) -> Callable[[dict[str, Any]], int]:
    """Per route: one photo (plus the multipart envelope around it), a batch, or a small JSON."""

    def limit(scope: dict[str, Any]) -> int:
        path = scope["path"]
        if path == "/v1/predict/batch":
            return settings.max_batch_upload_bytes
        if path != "/v1/predict":
            return SMALL_BODY
        ctype = dict(scope["headers"]).get(b"content-type", b"")
        multipart = ctype.lower().startswith(b"multipart/")
        return settings.max_upload_bytes + (MULTIPART_SLACK if multipart else 0)

    return limit


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_photo(request: Request, max_bytes: int) -> bytes:
    """The photo of a single-photo request, as bytes (size and type checked, format not yet)."""
    ctype = _content_type(request)
    if ctype == "multipart/form-data":
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "multipart body has no file field named 'file'")
            if upload.size is not None and upload.size > max_bytes:
                raise HTTPException(
                    413, f"photo exceeds {max_bytes} bytes (serve.max_upload_bytes)"
                )
            return await upload.read()
    if ctype in RAW_TYPES:
        return await request.body()
    raise HTTPException(
        415,
        f"unsupported content type {ctype or 'none'!r}; send multipart/form-data with a 'file' "
        f"field or a raw body of type {', '.join(RAW_TYPES)}",
    )


async def read_photos(request: Request, max_bytes: int, max_files: int) -> list[tuple[str, bytes]]:
    if _content_type(request) != "multipart/form-data":
        raise HTTPException(415, "send multipart/form-data with one 'files' field per photo")
    async with request.form(max_files=max_files, max_fields=max_files) as form:
        uploads = [u for key in ("files", "file") for u in form.getlist(key)]
        if not uploads or any(isinstance(u, str) for u in uploads):
            raise HTTPException(400, "multipart body needs one or more file fields named 'files'")
        out = []
        for i, upload in enumerate(uploads):
            name = upload.filename or f"file {i}"
            if upload.size is not None and upload.size > max_bytes:
                raise HTTPException(
                    413, f"{name} exceeds {max_bytes} bytes (serve.max_upload_bytes)"
                )
            out.append((name, await upload.read()))
        return out


async def read_json(request: Request) -> dict[str, Any]:
    if _content_type(request) != "application/json":
        raise HTTPException(415, 'send application/json: {"model_path": "..."}')
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or set(body) - {"model_path"}:
        raise HTTPException(400, 'expected exactly {"model_path": "<release folder>"}')
    return body


def check_admin(request: Request, settings: ServeSettings) -> None:
    """Reload is off without ``PILLSNAP_ADMIN_TOKEN``; the bearer token is compared in constant time."""
    if not settings.reload_enabled or settings.admin_token is None:
        raise HTTPException(
            403, "reload is disabled: start the server with PILLSNAP_ADMIN_TOKEN set to enable it"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = settings.admin_token.get_secret_value().encode()
    ok = secrets.compare_digest(given.strip().encode("utf-8", "replace"), expected)
    if not (ok and scheme.lower() == "bearer"):
        log.warning(
            "reload refused: missing or wrong admin token from %s",
            request.client.host if request.client else "?",
        )
        raise HTTPException(
            401,
            "missing or wrong admin token (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _error(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    rid = getattr(request.state, "request_id", None) or request_id_var.get()
    return JSONResponse(
        {"error": message, "request_id": rid},
        status_code=status,
        headers={"x-request-id": rid, **(headers or {})},
    )


def _add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every failure to one JSON shape; one place maps library errors to HTTP statuses."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code in (413, 415):
            metrics.rejected.labels(str(exc.status_code)).inc()
        return _error(request, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        return _error(request, 422, "; ".join(parts) or "invalid request")

    @app.exception_handler(BadImage)
    async def bad_image(request: Request, exc: BadImage) -> JSONResponse:
        metrics.rejected.labels(exc.reason).inc()
        return _error(request, 400, str(exc))

    @app.exception_handler(ModelRejected)
    async def rejected(request: Request, exc: ModelRejected) -> JSONResponse:
        model = request.app.state.manager.current
        still = f"; still serving {model.version}" if model is not None else ""
        return _error(request, _REJECTED_STATUS[exc.step], f"{exc}{still}")

    @app.exception_handler(ReloadInProgress)
    async def busy(request: Request, exc: ReloadInProgress) -> JSONResponse:
        return _error(request, 409, str(exc), {"Retry-After": "5"})

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return _error(request, 503, f"not ready: {exc}", {"Retry-After": "5"})

    @app.exception_handler(QueueFull)
    async def overloaded(request: Request, exc: QueueFull) -> JSONResponse:
        return _error(request, 503, f"overloaded: {exc}; retry shortly", {"Retry-After": "1"})

    @app.exception_handler(BatcherClosed)
    async def closing(request: Request, exc: BatcherClosed) -> JSONResponse:
        return _error(request, 503, str(exc))

    @app.exception_handler(TimeoutError)
    async def timeout(request: Request, exc: TimeoutError) -> JSONResponse:
        return _error(
            request, 503, "the request timed out waiting for the model; retry", {"Retry-After": "1"}
        )

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        log.info("client hung up before its body arrived (request %s)", request.state.request_id)
        return _error(request, 400, "the client disconnected before sending the whole body")

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "internal error, request_id=%s", getattr(request.state, "request_id", "-"), exc_info=exc
        )
        return _error(request, 500, "internal error (the server log has the details)")
