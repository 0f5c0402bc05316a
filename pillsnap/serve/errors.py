"""Every failure to one JSON shape, ``{"error", "request_id"}``; one place maps to HTTP.

Library errors keep their meaning (``BadImage`` -> 400, ``ModelRejected`` -> 400/403/422
by the step that refused, ``ReloadInProgress`` -> 409, not ready / overloaded -> 503 with
``Retry-After``); anything unexpected is logged with its request id and answered 500
without a trace.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from pillsnap.serve.batching import BatcherClosed, QueueFull
from pillsnap.serve.images import BadImage
from pillsnap.serve.manager import ReloadInProgress
from pillsnap.serve.metrics import Metrics
from pillsnap.serve.middleware import request_id_var
from pillsnap.serve.model import ModelRejected
from pillsnap.serve.service import NotReady

log = logging.getLogger(__name__)
_REJECTED_STATUS = {"forbidden": 403, "path": 400, "verify": 400, "load": 422, "warmup": 422}


def error_response(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    rid = getattr(request.state, "request_id", None) or request_id_var.get()
    return JSONResponse(
        {"error": message, "request_id": rid},
        status_code=status,
        headers={"x-request-id": rid, **(headers or {})},
    )


def add_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Every failure to one JSON shape; one place maps library errors to HTTP statuses."""

    @app.exception_handler(HTTPException)
    async def httperror_response(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code in (413, 415):
            metrics.rejected.labels(str(exc.status_code)).inc()
        return error_response(
            request, exc.status_code, str(exc.detail), getattr(exc, "headers", None)
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        return error_response(request, 422, "; ".join(parts) or "invalid request")

    @app.exception_handler(BadImage)
    async def bad_image(request: Request, exc: BadImage) -> JSONResponse:
        metrics.rejected.labels(exc.reason).inc()
        return error_response(request, 400, str(exc))

    @app.exception_handler(ModelRejected)
    async def rejected(request: Request, exc: ModelRejected) -> JSONResponse:
        model = request.app.state.manager.current
        still = f"; still serving {model.version}" if model is not None else ""
        return error_response(request, _REJECTED_STATUS[exc.step], f"{exc}{still}")

    @app.exception_handler(ReloadInProgress)
    async def busy(request: Request, exc: ReloadInProgress) -> JSONResponse:
        return error_response(request, 409, str(exc), {"Retry-After": "5"})

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return error_response(request, 503, f"not ready: {exc}", {"Retry-After": "5"})

    @app.exception_handler(QueueFull)
    async def overloaded(request: Request, exc: QueueFull) -> JSONResponse:
        return error_response(
            request, 503, f"overloaded: {exc}; retry shortly", {"Retry-After": "1"}
        )

    @app.exception_handler(BatcherClosed)
    async def closing(request: Request, exc: BatcherClosed) -> JSONResponse:
        return error_response(request, 503, str(exc))

    @app.exception_handler(TimeoutError)
    async def timeout(request: Request, exc: TimeoutError) -> JSONResponse:
        return error_response(
            request, 503, "the request timed out waiting for the model; retry", {"Retry-After": "1"}
        )

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        log.info("client hung up before its body arrived (request %s)", request.state.request_id)
        return error_response(request, 400, "the client disconnected before sending the whole body")

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "internal error, request_id=%s", getattr(request.state, "request_id", "-"), exc_info=exc
        )
        return error_response(request, 500, "internal error (the server log has the details)")
