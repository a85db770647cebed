"""The model server's error vocabulary: one exception per HTTP status TF Serving answers with.

    ApiError(status, message)
    ├── BadRequest        400  malformed JSON, wrong shapes or types, both/neither formats
    ├── NotFound          404  unknown model, version, label, signature path
    ├── MethodNotAllowed  405  e.g. GET on :predict
    ├── PayloadTooLarge   413
    └── NotImplementedApi 501
Every error reaches the client as `{"error": "<message>"}`.
"""
from __future__ import annotations

__all__ = ["ApiError", "BadRequest", "NotFound", "MethodNotAllowed", "PayloadTooLarge", "NotImplementedApi"]


class ApiError(Exception):
    """An error with the HTTP status the client gets."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class PayloadTooLarge(ApiError):
    status = 413


class NotImplementedApi(ApiError):
    status = 501
