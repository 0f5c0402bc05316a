"""What a request carries, read and checked: photos (size, type), the reload JSON, the token.

The body limits per route are applied by ``BodyLimitMiddleware`` before any of this
runs; these functions add the per-photo limit inside a multipart body, the content
types accepted (415 otherwise) and the constant-time check of the admin token.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException

from pillsnap.serve.images import IMAGE_CONTENT_TYPES
from pillsnap.serve.settings import ServeSettings

log = logging.getLogger(__name__)
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the photo
SMALL_BODY = 64 * 1024  # JSON bodies (reload) and anything else
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


def body_limits(settings: ServeSettings) -> Callable[[dict[str, Any]], int]:
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
