"""Every error leaves the front-end as `{"error": "..."}` with a fitting status, never a traceback."""
from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

__all__ = ["ApiError", "init_app", "error_response", "read_body"]

log = logging.getLogger("frontend")


class ApiError(Exception):
    """An answer other than success: status, message and optional extra headers/fields."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}


def error_response(status: int, message: str, *, headers: dict[str, str] | None = None,
                   extra: dict | None = None) -> Response:
    """Build the JSON error answer."""
    response = jsonify({"error": message, **(extra or {})})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def read_body() -> bytes:
    """Return the request body, at most MAX_CONTENT_LENGTH bytes, chunked bodies included (413 past it)."""
    limit = request.max_content_length
    if request.content_length is not None:
        if limit is not None and request.content_length > limit:
            raise RequestEntityTooLarge()
        return request.get_data(cache=True)
    # No Content-Length (chunked): Werkzeug hands over the raw stream, so count the bytes here.
    cached = getattr(request, "_frontend_body", None)
    if cached is not None:
        return cached
    chunks, size = [], 0
    stream = request.stream
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if limit is not None and size > limit:
            raise RequestEntityTooLarge()
        chunks.append(chunk)
    body = b"".join(chunks)
    request._frontend_body = body       # type: ignore[attr-defined]
    return body


def init_app(app: Flask) -> None:
    """Register the JSON error handlers."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, headers=exc.headers, extra=exc.extra)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return error_response(413, f"request body larger than {limit} bytes")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        headers = {}
        if exc.code == 405 and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        return error_response(exc.code or 500, exc.description or exc.name, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error", extra={"event": "error"})
        return error_response(500, "internal error")
