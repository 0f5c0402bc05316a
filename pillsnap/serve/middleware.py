"""Pure-ASGI middlewares: a request id on everything, and a body limit answered early.

Pure ASGI (no ``BaseHTTPMiddleware``, which runs the app in a task group and wraps
errors): they work on any Starlette version and stream the body untouched.

``BodyLimitMiddleware`` answers 413 in our error shape *before* the body is read
whole: at once when ``Content-Length`` is too large (nothing read; a client sending
``Expect: 100-continue`` uploads nothing), else as soon as the streamed bytes pass
the limit. Before answering it reads and discards a bounded amount more (in bytes
and seconds), so a client still uploading reads the 413 instead of a TCP reset.
uvicorn itself has no body limit, and Starlette's multipart limits do not bound files.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
_RID_OK = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
Scope = dict[str, Any]


def error_body(message: str, request_id: str | None) -> bytes:
    return json.dumps({"error": message, "request_id": request_id}).encode()


async def send_error(
    scope: Scope, send: Any, status: int, message: str, close: bool = False
) -> None:
    """An error response straight from ASGI, with the request id of ``RequestIdMiddleware``."""
    rid = scope.get("state", {}).get("request_id")
    body = error_body(message, rid)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestIdMiddleware:
    """Accepts a sane incoming ``X-Request-ID`` or makes one; in scope state, logs and the response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                incoming = value.decode("latin-1")
        rid = incoming if _RID_OK.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 above ``limit_for(scope)`` bytes; the drain is capped at 4x the limit and 2 s."""

    def __init__(self, app: Any, limit_for: Callable[[Scope], int], drain_timeout_s: float = 2.0):
        self.app, self.limit_for, self.drain_timeout_s = app, limit_for, drain_timeout_s

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared, expect_continue = None, False
        for key, value in scope["headers"]:
            if key == b"expect" and value.lower() == b"100-continue":
                expect_continue = True
            elif key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_error(scope, send, 400, "invalid Content-Length header", close=True)
                    return
        message = (
            f"request body exceeds {limit} bytes (serve.max_upload_bytes); send a smaller photo"
        )
        if declared is not None and declared > limit:
            if declared <= 4 * limit and not expect_continue:
                await self._drain(receive, 4 * limit)
            await send_error(scope, send, 413, message, close=True)
            return

        seen, started, done = 0, False, False

        async def limited_receive() -> dict[str, Any]:
            nonlocal seen, done
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                done = not msg.get("more_body", False)
                if seen > limit:
                    raise BodyTooLarge()
            return msg

        async def tracking_send(msg: dict[str, Any]) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            if not done:
                await self._drain(receive, 4 * limit - seen)
            await send_error(scope, send, 413, message, close=True)

    async def _drain(self, receive: Any, budget: int) -> None:
        async def drain() -> None:
            got = 0
            while got <= budget:
                msg = await receive()
                if msg["type"] != "http.request":
                    return
                got += len(msg.get("body", b""))
                if not msg.get("more_body", False):
                    return

        try:
            await asyncio.wait_for(drain(), self.drain_timeout_s)  # slow-loris bound
        except TimeoutError:
            pass
