"""Every error leaves the front-end as `{"error": "..."}` with a fitting status, never a traceback."""
from __future__ import annotations

import contextlib
import logging
import socket

from flask import Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

try:  # gunicorn's body readers raise its own parse errors from wsgi.input
    from gunicorn.http.errors import NoMoreData, ParseException
    _BODY_ERRORS: tuple[type[BaseException], ...] = (ParseException, NoMoreData, ValueError, OSError)
except ImportError:                          # pragma: no cover - gunicorn is a dependency
    _BODY_ERRORS = (ValueError, OSError)

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


class _BodyTimeout(Exception):
    """The client did not send its whole body within body_timeout."""


def _body_deadline(seconds: float):
    """A deadline over every read of the body: real under gevent (the production worker); without
    it (threads, Werkzeug's server) reads are bounded by the server's own socket timeouts only."""
    try:
        from gevent import Timeout
        from gevent.monkey import is_module_patched
    except ImportError:                      # pragma: no cover - gevent is a dependency
        return contextlib.nullcontext()
    if not is_module_patched("socket"):
        return contextlib.nullcontext()
    return Timeout(seconds, _BodyTimeout)


def read_body() -> bytes:
    """Return the request body, at most MAX_CONTENT_LENGTH bytes, chunked bodies included (413 past it).

    A body not received within body_timeout is a 408, a malformed one (bad chunk framing, the
    client gone mid-body) a 400; both close the connection, whose remaining bytes are unusable.
    """
    cached = getattr(request, "_frontend_body", None)
    if cached is not None:
        return cached
    limit = request.max_content_length
    if request.content_length is not None and limit is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    timeout = current_app.config.get("BODY_TIMEOUT") or 10.0
    close = {"Connection": "close"}
    try:
        with _body_deadline(timeout):
            if request.content_length is not None:
                body = request.get_data(cache=True)
            else:
                body = _read_stream(request.stream, limit)
    except _BodyTimeout:
        _stop_reading()
        raise ApiError(408, f"request body not received within {timeout:g} s", headers=close) from None
    except RequestEntityTooLarge:
        raise
    except HTTPException as exc:           # Werkzeug: ClientDisconnected and friends
        _stop_reading()
        raise ApiError(400, f"malformed request body: {exc.description or exc.name}", headers=close) from None
    except _BODY_ERRORS as exc:
        _stop_reading()
        raise ApiError(400, f"malformed request body: {_describe(exc)}", headers=close) from None
    request._frontend_body = body       # type: ignore[attr-defined]
    return body


def _stop_reading() -> None:
    """End the connection after this answer: the rest of a broken body cannot be parsed as a request.

    Gunicorn drops an app's `Connection: close`; shutting the socket's read side makes its next
    read see end of stream, so it sends this answer and closes quietly.
    """
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass


def _read_stream(stream, limit: int | None) -> bytes:
    """Read a body of unknown length (chunked): Werkzeug hands over the raw stream, count here."""
    chunks, size = [], 0
    while True:
        chunk = stream.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if limit is not None and size > limit:
            raise RequestEntityTooLarge()
        chunks.append(chunk)


def _describe(exc: Exception) -> str:
    name = type(exc).__name__
    text = str(exc).strip()
    if isinstance(exc, (ValueError, OSError)) and not text:
        return "connection broke mid-body"
    words = {"InvalidChunkSize": "bad chunk size", "ChunkMissingTerminator": "chunk not terminated by CRLF",
             "InvalidChunkExtension": "bad chunk extension", "NoMoreData": "the body ended early"}
    what = words.get(name, "cannot be read")
    return what if name in words else f"{what} ({name})"


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
